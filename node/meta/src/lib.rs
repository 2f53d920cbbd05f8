//! Control-plane storage: the Raft log store and state machine (openraft 0.9, persisted in redb).
//!
//! The cluster's control plane (membership, layout history, buckets, access keys) is a small
//! replicated state machine driven by openraft. This crate holds the two storage halves openraft
//! needs and nothing else: the network, the `Raft` instance and the policy of who votes live in
//! the layers above.
//!
//! # Types
//! [`TypeConfig`] binds openraft to our types: node ids are `u64`, a node is a [`MetaNode`]
//! (name and RPC address), log payloads are [`Command`]s and their results are [`Response`]s.
//! A command that is valid Raft-wise but wrong for the state (deleting a missing bucket, a
//! layout that is not newer than the current one) is still committed and applied: it just
//! yields [`Response::Rejected`], identically on every node. [`StateMachineData::apply`] is a
//! pure function (no clock, no I/O), so every replica computes the same state from the same log;
//! that is why commands carry their own timestamps (`created_nanos`).
//!
//! # On disk
//! One redb database file (path given to [`open`]) with three tables:
//! - `raft_log`: log entries, key = log index (redb's `u64` key type, ordered numerically),
//!   value = the entry as JSON;
//! - `raft_meta`: the vote, the last purged log id and the committed log id (JSON);
//! - `raft_snapshot`: the single current snapshot, its metadata and its data (JSON of
//!   [`StateMachineData`]) written in the same transaction so they never disagree.
//!
//! The file holds the S3 secret keys in clear (they are needed to verify signatures): keep it
//! private to the server (the data folder's permissions).
//!
//! JSON rather than a compact binary encoding: control-plane volumes are tiny, and JSON keeps
//! old logs and snapshots readable when fields are added (`#[serde(default)]`).
//!
//! # Durability
//! Every write (append, truncate, purge, vote, snapshot) is one redb transaction committed with
//! redb's default `Durability::Immediate`, i.e. fsynced before the call returns; `append` calls
//! openraft's `LogFlushed` callback only after that commit. The one exception is the committed
//! log id, written without fsync (`Durability::None`): it is only a hint that lets a restarting
//! node re-apply committed entries early, a stale value is safe, and it becomes durable with the
//! next fsynced write anyway. This saves one fsync per commit advance. Writes run on tokio's
//! blocking pool so an fsync never stalls the async workers; each call awaits its own commit,
//! which keeps the writes serialized in call order as openraft requires. Reads are served inline.
//!
//! The state machine itself lives in memory and is persisted only through snapshots: on
//! [`open`] it is restored from the last snapshot, and openraft re-applies the log entries after
//! it up to the persisted committed log id (`save_committed` is implemented for that reason);
//! openraft never purges log entries that are not covered by a snapshot, so nothing is lost.
//!
//! # Errors
//! redb, serde and task failures are mapped into openraft's `StorageError::IO` with the subject
//! (logs, vote, snapshot, ...) and verb (read, write, delete) of the failed operation. openraft
//! treats any storage error as fatal and shuts the Raft node down, which is what we want for a
//! broken disk.

mod command;
mod db;
mod log_store;
mod state;
mod state_machine;
mod transition;

use std::path::Path;
use std::sync::Arc;

pub use command::{Command, Rejection, Response, Secret};
pub use log_store::LogStore;
pub use state::{AccessKey, BucketInfo, NodeInfo, StateMachineData};
pub use state_machine::{SharedState, SnapshotBuilder, StateMachineStore};
pub use transition::{Phase, Throttle, TransitionState};

/// A Raft node id. Assigned by the layer above and stable across restarts.
pub type NodeId = u64;

/// What the cluster knows about a Raft member: enough to reach it and to show it to an operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetaNode {
    /// The node's name (`--node-name`), stable across restarts.
    pub name: String,
    /// Where the node's internal RPC listens (`--rpc-address`), `HOST:PORT`.
    pub rpc_addr: String,
}

openraft::declare_raft_types!(
    /// The openraft type configuration of the control plane.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = MetaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry of the control plane.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (leader term and node, index).
pub type LogId = openraft::LogId<NodeId>;
/// A persisted vote.
pub type Vote = openraft::Vote<NodeId>;
/// The membership config with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<NodeId, MetaNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MetaNode>;
/// A snapshot: metadata plus a reader over its data.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// The storage error openraft expects from both storage halves.
pub type StorageError = openraft::StorageError<NodeId>;

/// Opens (creating if needed) the control-plane database at `path` and returns its two halves.
///
/// Both halves share the one database file; it is closed when the last handle (including log
/// readers handed to openraft) is dropped. Opening a file that is still open in this process
/// fails (redb holds an exclusive lock), so drop the previous handles before reopening.
/// This blocks while redb opens (and, after a crash, repairs) the file: call it at startup.
#[expect(
    clippy::result_large_err,
    reason = "openraft's StorageError is the error type of every storage call, so open returns it too"
)]
pub fn open(path: impl AsRef<Path>) -> Result<(LogStore, StateMachineStore), StorageError> {
    let path = path.as_ref();
    let database =
        redb::Database::create(path).map_err(|e| db::store_open(path, &db::Fault::Db(e.into())))?;
    let database = Arc::new(database);
    // Create every table up front so that read transactions never meet a missing table.
    db::write_txn(&database, |txn| {
        log_store::create_tables(txn)?;
        state_machine::create_tables(txn)
    })
    .map_err(|e| db::store_open(path, &e))?;
    let logs = LogStore::new(database.clone());
    let sm = StateMachineStore::load(database).map_err(|e| db::store_open(path, &e))?;
    Ok((logs, sm))
}
