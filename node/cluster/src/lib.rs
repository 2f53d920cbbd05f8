//! Cluster membership and the Raft control plane: openraft over the internal RPC, bootstrap
//! from a seed list, and the bucket/layout operations the server uses.
//!
//! Every node runs one openraft instance whose state machine (from `ringstore-meta`) holds
//! buckets, layouts, access keys and the member registry. Writes and linearizable reads are
//! served by the leader; any node forwards them there (`/rpc/v1/cluster/write`,
//! `/rpc/v1/cluster/read-barrier`) and retries across leader changes for about 10 s.
//!
//! Node ids are a stable hash of the node name, so a node that restarts, or is replaced under
//! the same name with empty disks, keeps its id. Voters grow to 3 then 5 as members join,
//! and members drained out of the layout hand their vote over to members that stay;
//! replacing a voter that is gone for good is not automated (an operator removes it).

mod api;
mod bootstrap;
mod error;
mod network;
mod node;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::{Config, ServerState, SnapshotPolicy};
use ringstore_meta::{BucketInfo, Command, NodeId};
use ringstore_ring::{DriveSpec, Layout, Redundancy};
use serde::Serialize;
use tokio::sync::watch;

pub use error::Error;
pub use ringstore_meta::{Phase, Rejection, Throttle, TransitionState};

use crate::network::Network;
use crate::node::Inner;

/// What a node needs to take part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Stable identity (the pod name).
    pub node_name: String,
    /// `HOST:PORT` other nodes use to reach this node's RPC listener.
    pub rpc_addr: String,
    pub zone: String,
    /// This node's drives (id, weight = capacity in GiB, at least 1).
    pub drives: Vec<DriveSpec>,
    /// RPC addresses of the initial members (may include our own; empty means single node).
    pub seeds: Vec<String>,
    /// Redundancy of the initial layout; by default `Redundancy::default_for` the number of
    /// seed nodes when there are several, else of the local drive count.
    pub redundancy: Option<Redundancy>,
    /// Folder for `raft.redb` (must exist).
    pub data_dir: PathBuf,
    /// For a single node whose Raft state was lost with its drive: the copy of the state
    /// kept on its other drives ([`Cluster::copy`]), restored when the node founds its
    /// cluster anew instead of an initial layout.
    pub restore: Option<ControlPlaneCopy>,
}

/// What a single node's control plane holds besides Raft's own bookkeeping: its layouts,
/// buckets and access keys. Kept on every drive of a single node (the Raft state lives on
/// the first one), so that losing that drive loses neither buckets nor keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ControlPlaneCopy {
    /// The index of the last Raft entry applied: the newest copy wins.
    pub revision: u64,
    pub layouts: BTreeMap<u64, String>,
    pub buckets: BTreeMap<String, BucketInfo>,
    pub access_keys: BTreeMap<String, ringstore_meta::AccessKey>,
}

/// A node's view of the cluster, for status pages.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub node_name: String,
    pub node_id: NodeId,
    pub role: Role,
    pub leader: Option<String>,
    pub current_term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub members: Vec<MemberInfo>,
    pub layout_version: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// A registered member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    pub name: String,
    pub rpc_addr: String,
    pub zone: String,
    pub drives: Vec<DriveSpec>,
}

/// A registered member's drives as layout drive specs.
pub(crate) fn drive_specs(info: &ringstore_meta::NodeInfo) -> Vec<DriveSpec> {
    info.drives
        .iter()
        .map(|(id, weight)| DriveSpec {
            id: id.clone(),
            weight: *weight,
        })
        .collect()
}

/// The node id of a node name: stable across restarts, releases and platforms.
pub fn node_id(name: &str) -> NodeId {
    ringstore_ring::hash64(name.as_bytes())
}

/// A running cluster node. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

/// How long to keep trying to open `raft.redb`: a node restarted in the same process may find
/// it still held by the previous instance's last tasks for a moment.
const OPEN_RETRY: Duration = Duration::from_secs(3);

impl Cluster {
    /// Opens the Raft store, starts Raft and returns; bootstrap continues in the background.
    pub async fn start(cfg: ClusterConfig, client: ringstore_rpc::Client) -> Result<Cluster, Error> {
        let id = node_id(&cfg.node_name);
        let restoring = cfg.restore.is_some();
        let path = cfg.data_dir.join("raft.redb");
        let deadline = tokio::time::Instant::now() + OPEN_RETRY;
        let (log_store, sm) = loop {
            let p = path.clone();
            // The error becomes a string right away: openraft's StorageError is large.
            let opened =
                tokio::task::spawn_blocking(move || ringstore_meta::open(p).map_err(|e| e.to_string()))
                    .await
                    .map_err(|e| Error::Storage(e.to_string()))?;
            match opened {
                Ok(stores) => break stores,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Storage(e));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let state = sm.state();
        let config = Config {
            cluster_name: "ringstore".into(),
            heartbeat_interval: 250,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 500,
            ..Config::default()
        }
        .validate()
        .map_err(|e| Error::Raft(e.to_string()))?;
        let network = Network {
            client: client.clone(),
            id,
        };
        let raft = openraft::Raft::new(id, Arc::new(config), network, log_store, sm)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let (layout_tx, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            cfg,
            id,
            raft,
            state,
            client,
            layout_tx,
            shut: AtomicBool::new(false),
            membership_lock: tokio::sync::Mutex::new(()),
            tasks: std::sync::Mutex::new(Vec::new()),
            refused: std::sync::Mutex::new(None),
            restoring: AtomicBool::new(restoring),
        });
        tracing::info!(node = %inner.cfg.node_name, id, addr = %inner.cfg.rpc_addr, "cluster node started");
        let watcher = tokio::spawn(watch_metrics(inner.clone()));
        let boot = tokio::spawn(bootstrap::run(inner.clone()));
        let votes = tokio::spawn(hand_over_votes(inner.clone()));
        inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([watcher, boot, votes]);
        Ok(Cluster { inner })
    }

    /// The internal endpoints (full paths under `/rpc/v1`); the caller adds authentication.
    pub fn router(&self) -> axum::Router {
        api::router(self.inner.clone())
    }

    /// The current committed layout.
    pub fn layout(&self) -> watch::Receiver<Option<Layout>> {
        self.inner.layout_tx.subscribe()
    }

    /// Every committed layout, oldest first (the last one is the current layout).
    pub fn layout_history(&self) -> Vec<Layout> {
        let all: Vec<(u64, String)> = self
            .inner
            .state
            .read(|s| s.layouts.iter().map(|(v, j)| (*v, j.clone())).collect());
        all.into_iter()
            .filter_map(|(version, json)| match serde_json::from_str::<Layout>(&json) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(version, error = %e, "committed layout does not decode");
                    None
                }
            })
            .collect()
    }

    /// Drives that a finished transition drained: what they hold is stale, and no layout may
    /// place data on them again.
    pub fn retired_drives(&self) -> std::collections::BTreeSet<String> {
        self.inner.state.read(|s| s.retired_drives.clone())
    }

    /// Whether the restore of the control-plane state from its copy is still running (a copy
    /// taken meanwhile would be partial).
    pub fn restoring(&self) -> bool {
        self.inner.restoring.load(Ordering::SeqCst)
    }

    /// A copy of the layouts, buckets and access keys (see [`ControlPlaneCopy`]).
    pub fn copy(&self) -> ControlPlaneCopy {
        self.inner.state.read(|s| ControlPlaneCopy {
            revision: s.last_applied.map_or(0, |l| l.index),
            layouts: s.layouts.clone(),
            buckets: s.buckets.clone(),
            access_keys: s.access_keys.clone(),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// Waits until a leader is known and a layout is committed.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let mut layout = self.layout();
        let mut metrics = self.inner.raft.metrics();
        let ready = async {
            loop {
                let has_leader = metrics.borrow_and_update().current_leader.is_some();
                if has_leader && layout.borrow_and_update().is_some() {
                    return Ok(());
                }
                tokio::select! {
                    r = metrics.changed() => r.map_err(|_| Error::ShuttingDown)?,
                    r = layout.changed() => r.map_err(|_| Error::ShuttingDown)?,
                }
            }
        };
        tokio::time::timeout(timeout, ready).await.unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "no leader and layout within {timeout:?}"
            )))
        })
    }

    /// Creates a bucket; `Error::Rejected(Rejection::BucketExists)` when it exists.
    pub async fn create_bucket(&self, name: &str, created_nanos: u64) -> Result<(), Error> {
        let cmd = Command::PutBucket {
            name: name.to_owned(),
            created_nanos,
        };
        Ok(self.inner.write(cmd).await?.into_result()?)
    }

    /// Deletes a bucket; `Error::Rejected(Rejection::NoSuchBucket)` when it does not exist.
    pub async fn delete_bucket(&self, name: &str) -> Result<(), Error> {
        let cmd = Command::DeleteBucket {
            name: name.to_owned(),
        };
        Ok(self.inner.write(cmd).await?.into_result()?)
    }

    /// A bucket's settings. Served locally when present; otherwise after a read barrier, so a
    /// bucket whose creation was acknowledged anywhere is found.
    pub async fn bucket(&self, name: &str) -> Result<Option<BucketInfo>, Error> {
        let local = || self.inner.state.read(|s| s.buckets.get(name).cloned());
        if let Some(b) = local() {
            return Ok(Some(b));
        }
        self.inner.read_barrier().await?;
        Ok(local())
    }

    /// Every bucket, linearizable.
    pub async fn list_buckets(&self) -> Result<Vec<(String, BucketInfo)>, Error> {
        self.inner.read_barrier().await?;
        Ok(self
            .inner
            .state
            .read(|s| s.buckets.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }

    /// Commits a new layout after checking that it can place data. Rejected with
    /// `Rejection::StaleLayout` unless its version is newer than the current one.
    pub async fn propose_layout(&self, layout: Layout) -> Result<(), Error> {
        layout.placement()?;
        let layout_json = serde_json::to_string(&layout).map_err(|e| Error::Decode(e.to_string()))?;
        let cmd = Command::SetLayout {
            version: layout.version,
            layout_json,
        };
        Ok(self.inner.write(cmd).await?.into_result()?)
    }

    /// Waits until this node has applied everything committed before the call (a restarted
    /// node must not serve with an older view of the layouts than the cluster has).
    pub async fn catch_up(&self) -> Result<(), Error> {
        self.inner.read_barrier().await
    }

    /// The layout transition in progress, or the last one (finished); `None` before any.
    pub fn transition(&self) -> Option<ringstore_meta::TransitionState> {
        self.inner.state.read(|s| s.transition.clone())
    }

    /// Starts moving data from layout `from` to the current layout `to` (see
    /// [`Command::StartTransition`]); the time is this node's.
    pub async fn start_transition(&self, from: u64, to: u64, kind: &str) -> Result<(), Error> {
        let started_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.run(Command::StartTransition {
            from,
            to,
            partitions: ringstore_ring::PARTITIONS,
            started_nanos,
            kind: kind.to_string(),
        })
        .await
    }

    /// Records that every node reads both layouts of the transition to `to` (writes may go
    /// where `to` places data from now on).
    pub async fn transition_synced(&self, to: u64) -> Result<(), Error> {
        self.run(Command::TransitionSynced { to }).await
    }

    /// Records partitions of the transition to `to` as moved and verified.
    pub async fn transition_done(&self, to: u64, partitions: Vec<u32>) -> Result<(), Error> {
        self.run(Command::PartitionsDone { to, partitions }).await
    }

    /// Pauses or resumes the transition to `to`.
    pub async fn pause_transition(&self, to: u64, paused: bool) -> Result<(), Error> {
        self.run(Command::PauseTransition { to, paused }).await
    }

    /// Changes how fast the transition to `to` moves data.
    pub async fn throttle_transition(
        &self,
        to: u64,
        throttle: ringstore_meta::Throttle,
    ) -> Result<(), Error> {
        self.run(Command::SetThrottle { to, throttle }).await
    }

    /// Ends the transition to `to` (rejected until every partition is done), retiring the
    /// layouts before it.
    pub async fn finish_transition(&self, to: u64) -> Result<(), Error> {
        self.run(Command::FinishTransition { to }).await
    }

    async fn run(&self, cmd: Command) -> Result<(), Error> {
        Ok(self.inner.write(cmd).await?.into_result()?)
    }

    /// Registers this node again with a new set of drives (after an empty drive took over
    /// the identity of the drive it replaces), through the leader.
    pub async fn register_drives(&self, drives: Vec<DriveSpec>) -> Result<(), Error> {
        let mut me = self.inner.me();
        me.drives = drives;
        self.inner.admit(&me).await
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let n = &self.inner;
        let m = n.metrics();
        let membership = m.membership_config.membership();
        let name_of = |id: NodeId| {
            membership
                .get_node(&id)
                .map(|node| node.name.clone())
                .unwrap_or_else(|| id.to_string())
        };
        let (members, layout_version) = n.state.read(|s| {
            let members = s
                .nodes
                .iter()
                .map(|(name, info)| MemberInfo {
                    name: name.clone(),
                    rpc_addr: info.rpc_addr.clone(),
                    zone: info.zone.clone(),
                    drives: drive_specs(info),
                })
                .collect();
            (members, s.current_layout().map(|(v, _)| v))
        });
        ClusterStatus {
            node_name: n.cfg.node_name.clone(),
            node_id: n.id,
            role: role(m.state),
            leader: m.current_leader.map(name_of),
            current_term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            voters: membership.voter_ids().map(name_of).collect(),
            learners: membership.learner_ids().map(name_of).collect(),
            members,
            layout_version,
        }
    }

    /// Stops Raft and the background tasks; the endpoints answer 503 from now on.
    pub async fn shutdown(&self) {
        if self.inner.shut.swap(true, Ordering::AcqRel) {
            return;
        }
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            t.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        tracing::info!(node = %self.inner.cfg.node_name, "cluster node stopped");
    }
}

fn role(s: ServerState) -> Role {
    match s {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}

/// On the leader, every few seconds: voters that leave the layout (drained) hand their vote
/// over to members that stay ([`Inner::promote`]), while they still run.
async fn hand_over_votes(n: Arc<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if n.shut.load(Ordering::SeqCst) {
            return;
        }
        if n.raft.metrics().borrow().current_leader != Some(n.id) {
            continue;
        }
        let _guard = n.membership_lock.lock().await;
        // bounded, so that a change that cannot commit does not hold up joins for ever
        match tokio::time::timeout(Duration::from_secs(10), n.promote()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not change the voter set"),
            Err(_) => tracing::warn!("a voter set change did not finish in 10 s"),
        }
    }
}

/// Follows Raft's metrics: publishes the layout when an applied entry changed it, and logs
/// leadership changes.
async fn watch_metrics(n: Arc<Inner>) {
    let mut rx = n.raft.metrics();
    let mut layout_version = n.publish_layout(None);
    let mut seen: Option<(Option<NodeId>, u64)> = None;
    loop {
        let (leader, term, state) = {
            let m = rx.borrow_and_update();
            let leader = m.current_leader.map(|id| {
                (
                    id,
                    m.membership_config
                        .membership()
                        .get_node(&id)
                        .map(|n| n.name.clone()),
                )
            });
            (leader, m.current_term, m.state)
        };
        let key = (leader.as_ref().map(|(id, _)| *id), term);
        if seen != Some(key) && leader.is_some() {
            let leader_name = leader.and_then(|(_, name)| name);
            tracing::info!(node = %n.cfg.node_name, leader = ?leader_name, term, role = ?role(state), "leader known");
            seen = Some(key);
        }
        layout_version = n.publish_layout(layout_version);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::node_id;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        // Pinned: a changed id would make a restarted node a stranger to its own cluster.
        assert_eq!(node_id("node-0"), 4_167_361_437_390_687_787);
        assert_eq!(node_id("node-0"), node_id("node-0"));
        assert_ne!(node_id("node-0"), node_id("node-1"));
    }
}
