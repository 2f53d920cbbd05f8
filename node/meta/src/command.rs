//! Control-plane commands (the Raft log payload) and their responses.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A change to the control-plane state, proposed through Raft and applied on every node.
///
/// Commands must be deterministic: anything that varies between nodes (the time, a random id)
/// is decided by the proposer and carried in the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a bucket. Rejected if it already exists.
    PutBucket {
        name: String,
        /// Creation time, nanoseconds since the Unix epoch, chosen by the proposer.
        created_nanos: u64,
    },
    /// Delete a bucket. Rejected if it does not exist. Whether the bucket is empty is checked by
    /// the caller: object metadata does not live in the control plane.
    DeleteBucket { name: String },
    /// Record a new cluster layout. `layout_json` is the ring layout serialized by the caller,
    /// kept opaque here so this crate does not depend on the ring. Rejected unless `version` is
    /// greater than the current layout's version.
    SetLayout { version: u64, layout_json: String },
    /// Add an S3 access key. Rejected if the access key id is already in use (rotating a secret
    /// is a delete then a put, so a typo can not silently replace someone's secret).
    PutAccessKey { access_key: String, secret_key: Secret },
    /// Remove an S3 access key. Rejected if it does not exist.
    DeleteAccessKey { access_key: String },
    /// Start moving data from layout `from` to layout `to`, which must be the current layout
    /// (recorded just before) and newer than `from`, over a ring of `partitions` partitions.
    /// Rejected while another transition is unfinished; a new layout is refused then too.
    StartTransition {
        from: u64,
        to: u64,
        partitions: u32,
        /// Chosen by the proposer, nanoseconds since the Unix epoch.
        started_nanos: u64,
        /// What the change does (`rebalance`, `drain`, `reencode`), for status.
        #[serde(default)]
        kind: String,
    },
    /// Every node reads from both layouts of the transition to `to`: writes may now go where
    /// `to` places them (phase `Syncing` to `Moving`; again is harmless).
    TransitionSynced { to: u64 },
    /// Partitions of the transition to layout `to` whose data is moved and verified. Marking
    /// a partition again is fine (a mover that restarts redoes at most what was in flight).
    PartitionsDone { to: u64, partitions: Vec<u32> },
    /// Pause (`true`) or resume the transition to layout `to`.
    PauseTransition { to: u64, paused: bool },
    /// Change how fast the transition to layout `to` moves data.
    SetThrottle { to: u64, throttle: crate::Throttle },
    /// End the transition to layout `to`: rejected until every partition is done. Layouts
    /// older than `to` are retired (forgotten) then: nothing is placed by them any more.
    FinishTransition { to: u64 },
    /// Register a cluster member (or update it: a node that restarts or is replaced under the
    /// same name re-registers with its current address and drives). Never rejected.
    PutNode {
        name: String,
        rpc_addr: String,
        zone: String,
        /// The node's drives as (permanent drive id, capacity weight).
        drives: Vec<(String, u64)>,
    },
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The command was applied (also the response to blank and membership entries).
    Ok,
    /// The command was committed but had no effect because the state forbids it. Every node
    /// reaches the same verdict, so this is an answer for the client, not a failure of the node.
    Rejected(Rejection),
}

impl Response {
    /// `Ok(())` for [`Response::Ok`], the rejection otherwise.
    pub fn into_result(self) -> Result<(), Rejection> {
        match self {
            Response::Ok => Ok(()),
            Response::Rejected(r) => Err(r),
        }
    }
}

/// Why a command was rejected. Typed, so that the S3 and admin layers can map each case to
/// the right protocol error (e.g. `BucketAlreadyOwnedByYou`, `NoSuchBucket`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("bucket {0} already exists")]
    BucketExists(String),
    #[error("bucket {0} does not exist")]
    NoSuchBucket(String),
    #[error("layout version {proposed} is not newer than the current version {current}")]
    StaleLayout { current: u64, proposed: u64 },
    #[error("access key {0} already exists")]
    AccessKeyExists(String),
    #[error("access key {0} does not exist")]
    NoSuchAccessKey(String),
    #[error(
        "a layout transition from version {from} to {to} is still running: wait for it to \
         finish (a second layout change is not queued)"
    )]
    TransitionRunning { from: u64, to: u64 },
    #[error("no layout transition to version {to} is running")]
    NoSuchTransition { to: u64 },
    #[error("a transition must go from a recorded layout to the current one: {reason}")]
    InvalidTransition { reason: String },
    #[error("the transition to version {to} has {left} partitions left to move")]
    TransitionUnfinished { to: u64, left: u32 },
    #[error("partition {partition} is out of range (the ring has {partitions})")]
    NoSuchPartition { partition: u32, partitions: u32 },
}

/// A secret string (an S3 secret key). Its `Debug` output is redacted because openraft logs
/// log entries, and entries carry commands.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for signing and verifying requests.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_in_debug_but_kept_in_json() {
        let cmd = Command::PutAccessKey {
            access_key: "AK".into(),
            secret_key: Secret::new("hunter2"),
        };
        assert!(!format!("{cmd:?}").contains("hunter2"));
        let json = serde_json::to_string(&cmd).unwrap();
        assert!(json.contains("hunter2"));
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
    }
}
