//! Pure decisions from what was observed: whether to change the cluster layout, which pod a
//! rolling upgrade restarts next, and the status of a Tenant and of its Pools.
//!
//! Everything here is deterministic in its inputs (no clock: the caller stamps transition
//! times), so that the same observation gives the same status and a quiet cluster gets no
//! status writes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use ringstore_crds::{
    Capacity, Condition, Pool, PoolStatus, PoolSummary, Tenant, TenantStatus, TransitionStatus, UpgradeStatus,
};

use crate::admin::AdminStatus;
use crate::desired::{self, POOL_LABEL};
use crate::validate::Invalid;

/// The label the StatefulSet controller puts on each pod: the revision of its template.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What the operator needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodView {
    pub name: String,
    pub pool: String,
    pub ready: bool,
    pub terminating: bool,
    pub revision: Option<String>,
    pub ip: Option<String>,
}

impl PodView {
    pub fn from_pod(p: &Pod) -> Self {
        let status = p.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Self {
            name: p.name_any(),
            pool: p.labels().get(POOL_LABEL).cloned().unwrap_or_default(),
            ready,
            terminating: p.metadata.deletion_timestamp.is_some(),
            revision: p.labels().get(REVISION_LABEL).cloned(),
            ip: status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()),
        }
    }

    /// Ready and not on its way out.
    pub fn serving(&self) -> bool {
        self.ready && !self.terminating
    }
}

/// What the operator needs of a StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StsView {
    pub name: String,
    pub pool: String,
    pub replicas: i32,
    /// The revision new pods get (`status.updateRevision`).
    pub update_revision: Option<String>,
    /// The StatefulSet controller has seen the current spec (its revisions are current).
    pub settled: bool,
}

impl StsView {
    pub fn from_sts(s: &StatefulSet) -> Self {
        let st = s.status.as_ref();
        Self {
            name: s.name_any(),
            pool: s.labels().get(POOL_LABEL).cloned().unwrap_or_default(),
            replicas: s.spec.as_ref().and_then(|sp| sp.replicas).unwrap_or(1),
            update_revision: st.and_then(|st| st.update_revision.clone()),
            settled: st
                .and_then(|st| st.observed_generation)
                .is_some_and(|g| Some(g) >= s.metadata.generation),
        }
    }
}

/// Everything observed about a valid Tenant.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Pods that should exist now, by pool: each Pool's servers, plus the servers still
    /// running until their data has moved away (the highest ordinals of a shrunk pool, and
    /// every server of a pool that is leaving).
    pub expected: BTreeMap<String, Vec<String>>,
    /// The servers the cluster's layout should hold: the Pools' servers, without the pools
    /// that leave.
    pub members: BTreeSet<String>,
    /// Pools whose servers all leave (decommissioned, deleted, or a StatefulSet whose Pool
    /// is gone) while their StatefulSet is still there.
    pub leaving: Vec<String>,
    pub statefulsets: Vec<StsView>,
    pub pods: Vec<PodView>,
    /// The status document of one ready server, or why there is none.
    pub admin: Result<AdminStatus, String>,
    /// The highest layout version seen before (the Tenant's `status.layoutVersion`): an
    /// admin status older than it comes from a lagging node.
    pub known_layout: Option<u64>,
    /// The movers' figures of the transition, asked for while one runs.
    pub transition: Option<crate::admin::TransitionDetail>,
    /// How long this operator has seen the transition into the current layout finished.
    pub finished_for: Option<std::time::Duration>,
}

/// How long a transition must have been seen finished before the servers it drained go:
/// reads that started before its end may still be reading from them.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

impl Observation {
    pub fn expected_pods(&self) -> BTreeSet<String> {
        self.expected.values().flatten().cloned().collect()
    }

    fn pod(&self, name: &str) -> Option<&PodView> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Expected pods that are ready, by pool.
    pub fn ready_in(&self, pool: &str) -> i32 {
        self.expected
            .get(pool)
            .map(|names| {
                names
                    .iter()
                    .filter(|n| self.pod(n).is_some_and(PodView::serving))
                    .count() as i32
            })
            .unwrap_or(0)
    }

    pub fn ready_total(&self) -> i32 {
        self.expected.keys().map(|p| self.ready_in(p)).sum()
    }

    pub fn all_ready(&self) -> bool {
        let expected = self.expected_pods();
        !expected.is_empty() && expected.iter().all(|n| self.pod(n).is_some_and(PodView::serving))
    }

    /// Ready pods with an IP, in name order: who to ask about the cluster.
    pub fn serving_ips(&self) -> Vec<(String, String)> {
        let expected = self.expected_pods();
        let mut v: Vec<_> = self
            .pods
            .iter()
            .filter(|p| p.serving() && expected.contains(&p.name))
            .filter_map(|p| p.ip.clone().map(|ip| (p.name.clone(), ip)))
            .collect();
        v.sort();
        v
    }
}

/// Rollout state: how many pods run the current template, which do not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rollout {
    pub updated: i32,
    pub total: i32,
    /// Pods on an older revision, in the order they are to be restarted.
    pub outdated: Vec<String>,
    /// Some StatefulSet has not processed its new spec yet: the revisions cannot be judged.
    pub unsettled: bool,
}

/// Compares each pod's revision with its StatefulSet's update revision. Only pools with a Pool
/// object roll (a kept StatefulSet of a deleted Pool is not updated).
pub fn rollout(obs: &Observation, pools: &[String]) -> Rollout {
    let mut r = Rollout::default();
    for pool in pools {
        let Some(sts) = obs.statefulsets.iter().find(|s| &s.pool == pool) else {
            r.unsettled = true;
            continue;
        };
        let names = obs.expected.get(pool).cloned().unwrap_or_default();
        r.total += names.len() as i32;
        let Some(update) = sts.update_revision.as_ref().filter(|_| sts.settled) else {
            r.unsettled = true;
            continue;
        };
        for n in names {
            match obs.pod(&n).and_then(|p| p.revision.as_ref()) {
                Some(rev) if rev == update => r.updated += 1,
                Some(_) => r.outdated.push(n),
                // not created yet: it will get the update revision
                None => {}
            }
        }
    }
    r.outdated.sort();
    r
}

/// A layout to commit: exactly these nodes, and the redundancy when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutChange {
    pub nodes: Vec<String>,
    /// `data+parity`, when the Tenant's differs from the cluster's (the change re-encodes).
    pub redundancy: Option<String>,
}

/// The next thing to do to the cluster, at most one per reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Commit a layout made of exactly these nodes.
    ApplyLayout(Vec<String>),
    /// Restart this pod (delete it; the StatefulSet recreates it on the new template).
    RestartPod(String),
}

/// The layout to apply, if the layout's nodes differ from the members or its redundancy
/// from the Tenant's `redundancy` (`data+parity`), and every expected pod (the members and
/// the servers about to leave, which must be online for their data to move) is ready and
/// registered, and no layout transition runs (one change at a time). The first layout
/// forms by itself from the seeds; only changes are applied.
pub fn layout_step(obs: &Observation, redundancy: &str) -> Option<LayoutChange> {
    let admin = obs.admin.as_ref().ok()?;
    if admin.layout_version == 0 || !obs.all_ready() {
        return None;
    }
    if admin.transition.as_ref().is_some_and(|t| t.running()) {
        return None;
    }
    let members: Vec<String> = obs.members.iter().cloned().collect();
    let redundancy = (admin.redundancy != redundancy).then(|| redundancy.to_string());
    if members.is_empty()
        || (admin.layout_nodes() == members && redundancy.is_none())
        || !stranded(obs).is_empty()
    {
        return None;
    }
    let online: BTreeSet<&str> = admin
        .nodes
        .iter()
        .filter(|n| n.online())
        .map(|n| n.name.as_str())
        .collect();
    obs.expected_pods()
        .iter()
        .all(|n| online.contains(n.as_str()))
        .then_some(LayoutChange {
            nodes: members,
            redundancy,
        })
}

/// Whether every one of `servers` is out of the cluster: not in its layout, no layout
/// transition running (a finished one has moved everything off the servers it drained,
/// and a running one may still read from them), and none of them a Raft voter (the leader
/// hands a drained voter's vote to a server that stays). Only then may their pods and
/// volumes go. Unknown (no admin status, no layout yet) is not drained.
pub fn drained(obs: &Observation, servers: &[String]) -> bool {
    let Ok(admin) = &obs.admin else {
        return false;
    };
    // The transition must be the one into the current layout: a new layout and the start of
    // its transition are two Raft entries, and between them the status shows the new
    // layout beside the previous, finished transition while nothing has moved yet. The
    // first layout (formed from the seeds) has no transition.
    let settled = match &admin.transition {
        Some(t) => t.to == admin.layout_version && !t.running(),
        None => admin.layout_version == 1,
    };
    // the node's data path and its Raft state agree, and neither is older than a layout
    // seen before: a lagging node's view could show a layout without servers that a newer
    // one holds again
    let current = admin.cluster.as_ref().and_then(|c| c.layout_version) == Some(admin.layout_version)
        && obs.known_layout.is_none_or(|k| admin.layout_version >= k);
    // and for a while: reads that began before the end may still be reading from them
    let quiet = admin.transition.is_none() || obs.finished_for.is_some_and(|d| d >= DRAIN_GRACE);
    if !settled || !current || !quiet {
        return false;
    }
    let in_layout = admin.layout_nodes();
    let voters = admin
        .cluster
        .as_ref()
        .map(|c| c.voters.as_slice())
        .unwrap_or_default();
    servers
        .iter()
        .all(|s| !in_layout.contains(s) && !voters.contains(s))
}

/// The servers of `pool` that must be drained before its StatefulSet may go: those whose
/// pods run, and any the layout still holds (a StatefulSet scaled down by hand leaves its
/// servers in the layout without pods).
pub fn pool_servers(obs: &Observation, tenant: &str, pool: &str) -> Vec<String> {
    let mut servers: BTreeSet<String> = obs
        .expected
        .get(pool)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    if let Ok(a) = &obs.admin {
        let prefix = format!("{}-", desired::statefulset(tenant, pool));
        servers.extend(a.layout_nodes().into_iter().filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        }));
    }
    servers.into_iter().collect()
}

/// The server (pod) a volume claim of `pool` belongs to: the StatefulSet controller names
/// claims `data-<volume>-<tenant>-<pool>-<ordinal>`.
pub fn claim_server(claim: &str, tenant: &str, pool: &str) -> Option<String> {
    let (volume, server) = claim.strip_prefix("data-")?.split_once('-')?;
    volume.parse::<u32>().ok()?;
    let ordinal = server.strip_prefix(&format!("{}-", desired::statefulset(tenant, pool)))?;
    ordinal.parse::<u32>().ok()?;
    Some(server.to_string())
}

/// Whether the volumes of `server` (a pod of `pool`, which wants `wanted` servers: 0 when
/// it leaves) may be deleted: its ordinal is beyond both the servers wanted and its
/// StatefulSet's replicas (or the pool leaves and its StatefulSet is gone), its pod is
/// gone, and it is drained out of the cluster.
pub fn volume_released(obs: &Observation, pool: &str, wanted: i32, server: &str) -> bool {
    let Some(ordinal) = server.rsplit_once('-').and_then(|(_, o)| o.parse::<i32>().ok()) else {
        return false;
    };
    let replicas = match obs.statefulsets.iter().find(|v| v.pool == pool) {
        Some(v) => v.replicas,
        None if wanted == 0 => 0,
        // a staying pool's StatefulSet not created yet (or deleted by hand): keep
        None => return false,
    };
    ordinal >= wanted.max(replicas) && obs.pod(server).is_none() && drained(obs, &[server.to_string()])
}

/// Why the cluster is not healthy enough to restart a server, or `None` when it is.
pub fn unhealthy(obs: &Observation, scrubbing: &[String]) -> Option<String> {
    if !obs.all_ready() {
        let waiting: Vec<String> = obs
            .expected_pods()
            .into_iter()
            .filter(|n| !obs.pod(n).is_some_and(PodView::serving))
            .collect();
        return Some(format!("waiting for {} to be ready", waiting.join(", ")));
    }
    let admin = match &obs.admin {
        Ok(a) => a,
        Err(e) => return Some(format!("the admin API did not answer: {e}")),
    };
    let offline = admin.offline_nodes(&obs.expected_pods());
    if !offline.is_empty() {
        return Some(format!("waiting for {} to be online", offline.join(", ")));
    }
    let drives = admin.offline_drives();
    if !drives.is_empty() {
        return Some(format!("waiting for drives {} to be online", drives.join(", ")));
    }
    if admin.layout_nodes() != obs.members.iter().cloned().collect::<Vec<_>>() {
        return Some("waiting for the layout to hold exactly the pools' servers".into());
    }
    if !scrubbing.is_empty() {
        return Some(format!(
            "waiting for healing to finish on {}",
            scrubbing.join(", ")
        ));
    }
    // a transition's sync waits for every node; restarting one then would hold it up
    if let Some(t) = admin.transition.as_ref().filter(|t| t.phase == "syncing") {
        return Some(format!(
            "waiting for the layout transition to {} to sync on every node",
            t.to
        ));
    }
    None
}

/// Servers in the cluster's layout whose pod is not expected any more (its StatefulSet was
/// scaled down or deleted by hand before it was drained). Its data cannot be moved off a
/// server that is gone, so the layout is left as it is and the status says why.
pub fn stranded(obs: &Observation) -> Vec<String> {
    let Ok(admin) = &obs.admin else {
        return vec![];
    };
    let expected = obs.expected_pods();
    admin
        .layout_nodes()
        .into_iter()
        .filter(|n| !expected.contains(n))
        .collect()
}

/// The pod a rolling upgrade restarts next: the first outdated pod, the Raft leader last (to
/// cause one election instead of several).
pub fn next_restart(rollout: &Rollout, leader: Option<&str>) -> Option<String> {
    rollout
        .outdated
        .iter()
        .find(|p| Some(p.as_str()) != leader)
        .or(rollout.outdated.first())
        .cloned()
}

fn cond(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: None,
        observed_generation: generation,
    }
}

/// Keeps the transition time of conditions whose status did not change; stamps `now` on the
/// others.
pub fn carry_transitions(old: &[Condition], new: &mut [Condition], now: &Time) {
    for c in new {
        c.last_transition_time = match old.iter().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status && o.last_transition_time.is_some() => {
                o.last_transition_time.clone()
            }
            _ => Some(now.clone()),
        };
    }
}

/// Byte counts move by at most this share of the total before the status is refreshed.
const CAPACITY_SLACK_PERCENT: u64 = 1;

/// Capacity from the admin status; the previous figures are kept while the drive counts are
/// the same and the bytes moved by at most 1% of the total (a quiet cluster's file systems
/// still move a little, and a status write every period would be churn).
pub fn capacity(prev: Option<&Capacity>, admin: &AdminStatus) -> Capacity {
    let online = admin.capacity.drives_online as u32;
    let offline = admin.drives.iter().filter(|d| d.state != "online").count() as u32;
    let (used, available) = (admin.capacity.bytes_used, admin.capacity.bytes_available);
    if let Some(p) = prev
        && p.drives_online == online
        && p.drives_offline == offline
    {
        let total = (p.bytes_used + p.bytes_available).max(used + available).max(1);
        let close = |a: u64, b: u64| a.abs_diff(b).saturating_mul(100) <= total * CAPACITY_SLACK_PERCENT;
        if close(p.bytes_used, used) && close(p.bytes_available, available) {
            return p.clone();
        }
    }
    Capacity {
        bytes_available: available,
        bytes_used: used,
        total: human_bytes(used + available),
        drives_online: online,
        drives_offline: offline,
    }
}

/// `1.5Ti`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// What the driver did or is waiting for in this reconcile, for the Progressing condition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Activity {
    /// Layout just applied.
    pub layout_applied: Option<LayoutChange>,
    /// Why the rolling upgrade waits, when it does.
    pub upgrade_waiting: Option<String>,
    /// Drained servers just removed (a shrunk pool scaled down, a leaving pool's
    /// StatefulSet deleted).
    pub servers_removed: Option<String>,
    /// The cluster refused the layout the operator proposed: its message.
    pub layout_refused: Option<String>,
}

/// The status of a valid Tenant. Transition times are left empty (see [`carry_transitions`]).
pub fn tenant_status(
    tenant: &Tenant,
    pools: &[Pool],
    (seeds, formed): (&[String], &str),
    obs: &Observation,
    rollout: &Rollout,
    activity: &Activity,
) -> TenantStatus {
    let prev = tenant.status.clone().unwrap_or_default();
    // until the Tenant has been ready once, servers that are not ready yet are starting,
    // not failing: that is Provisioning, not Degraded
    let first_start = matches!(prev.phase.as_deref(), None | Some("Provisioning"));
    let generation = tenant.metadata.generation;
    let admin = obs.admin.as_ref().ok();
    let expected = obs.expected_pods();
    let servers = expected.len() as i32;
    let ready = obs.ready_total();
    let all_ready = obs.all_ready();
    // never backwards: a lagging node may answer with an older layout
    let layout_version = admin
        .map(|a| a.layout_version)
        .filter(|v| *v > 0)
        .max(prev.layout_version);
    let layout_matches =
        admin.is_some_and(|a| a.layout_nodes() == obs.members.iter().cloned().collect::<Vec<_>>());

    let transition = transition_status(prev.transition.as_ref(), obs);
    let mut problems: Vec<(String, String)> = Vec::new();
    if let Some(message) = &activity.layout_refused {
        problems.push((
            "LayoutRefused".into(),
            format!(
                "the cluster refused the layout with the pools' servers: {message} (a server drained \
                 earlier cannot come back on the volumes it was drained from: delete its \
                 PersistentVolumeClaims so that it starts empty)"
            ),
        ));
    }
    if let Some(a) = admin {
        let offline = a.offline_nodes(&obs.expected_pods());
        if !offline.is_empty() {
            problems.push((
                "NodesOffline".into(),
                format!(
                    "{} do not answer their peers: check those pods and their logs",
                    offline.join(", ")
                ),
            ));
        }
        let drives = a.offline_drives();
        if !drives.is_empty() {
            problems.push((
                "DrivesOffline".into(),
                format!(
                    "{} drive(s) offline ({}): check the volume and the server's logs",
                    drives.len(),
                    drives.join(", ")
                ),
            ));
        }
        let in_layout: BTreeSet<String> = a.layout_nodes().into_iter().collect();
        let down: Vec<String> = in_layout
            .iter()
            .filter(|n| expected.contains(*n) && !obs.pod(n).is_some_and(PodView::serving))
            .cloned()
            .collect();
        if !down.is_empty() && !first_start && rollout.outdated.is_empty() && rollout.updated == rollout.total
        {
            problems.push((
                "ServersNotReady".into(),
                format!("{} not ready: check those pods and their logs", down.join(", ")),
            ));
        }
    }

    let ready_cond = match (&obs.admin, all_ready) {
        (_, false) => cond(
            "Ready",
            false,
            "ServersNotReady",
            format!("{ready} of {servers} servers ready"),
            generation,
        ),
        (Err(e), true) => cond(
            "Ready",
            false,
            "AdminUnreachable",
            format!("no server answered the admin API: {e}"),
            generation,
        ),
        (Ok(a), true)
            if !a.offline_nodes(&obs.expected_pods()).is_empty() || !a.offline_drives().is_empty() =>
        {
            cond(
                "Ready",
                false,
                "ClusterDegraded",
                "the cluster reports nodes or drives offline (see Degraded)",
                generation,
            )
        }
        (Ok(_), true) if !stranded(obs).is_empty() => cond(
            "Ready",
            false,
            "ServersGone",
            format!(
                "{} are in the cluster's layout but their pods are gone (removed before they \
                 were drained): their data cannot move; restore their StatefulSet and volumes",
                stranded(obs).join(", ")
            ),
            generation,
        ),
        (Ok(_), true) if !layout_matches => cond(
            "Ready",
            false,
            "LayoutPending",
            "the layout does not contain every server yet",
            generation,
        ),
        (Ok(_), true) => cond(
            "Ready",
            true,
            "ClusterReady",
            format!("{servers} servers ready, every node and drive online"),
            generation,
        ),
    };

    let on_image = format!(
        "{} of {} pods on image {}",
        rollout.updated, rollout.total, tenant.spec.image
    );
    let progressing = if !rollout.outdated.is_empty() {
        let msg = match &activity.upgrade_waiting {
            Some(w) => format!("{on_image}; {w}"),
            None => on_image.clone(),
        };
        cond("Progressing", true, "RollingUpgrade", msg, generation)
    } else if layout_version.is_none() {
        cond(
            "Progressing",
            true,
            "Provisioning",
            format!("{ready} of {servers} servers ready; the cluster forms once every seed answers"),
            generation,
        )
    } else if let Some(change) = &activity.layout_applied {
        let reencode = match &change.redundancy {
            Some(r) => format!(", re-encoding every object to {r}"),
            None => String::new(),
        };
        cond(
            "Progressing",
            true,
            "LayoutChange",
            format!("applied a layout with {} servers{reencode}", change.nodes.len()),
            generation,
        )
    } else if let Some(note) = &activity.servers_removed {
        cond("Progressing", true, "Draining", note.clone(), generation)
    } else if let Some(t) = admin.and_then(|a| a.transition.as_ref()).filter(|t| t.running()) {
        let figures = transition.as_ref().filter(|s| s.to == t.to);
        let moved = figures
            .filter(|s| s.objects_moved > 0)
            .map(|s| {
                format!(
                    ", {} objects ({}B) moved",
                    s.objects_moved,
                    human_bytes(s.bytes_moved)
                )
            })
            .unwrap_or_default();
        let eta = figures
            .and_then(|s| s.eta_seconds)
            .map(|e| format!(", about {} left", human_seconds(e)))
            .unwrap_or_default();
        let what = match t.phase.as_str() {
            "syncing" => "waiting for every node to read both layouts".to_string(),
            "paused" => format!("paused at {}%{moved}", t.percent),
            _ => format!(
                "{}% ({} of {} partitions){moved}{eta}",
                t.percent, t.partitions_done, t.partitions
            ),
        };
        cond(
            "Progressing",
            true,
            t.reason(),
            format!("moving data from layout {} to {}: {what}", t.from, t.to),
            generation,
        )
    } else if obs.expected_pods().len() > obs.members.len() && layout_matches {
        let leaving: Vec<String> = obs
            .expected_pods()
            .into_iter()
            .filter(|n| !obs.members.contains(n))
            .collect();
        cond(
            "Progressing",
            true,
            "Draining",
            format!(
                "{}: data moved away; removed once the transition has been over for {} s and none \
                 of them votes in Raft",
                leaving.join(", "),
                DRAIN_GRACE.as_secs()
            ),
            generation,
        )
    } else if !layout_matches && admin.is_some() {
        cond(
            "Progressing",
            true,
            "Scaling",
            format!("{ready} of {servers} servers ready; the layout changes once all are ready"),
            generation,
        )
    } else if rollout.unsettled {
        cond(
            "Progressing",
            true,
            "Updating",
            "waiting for the StatefulSets to take the new spec",
            generation,
        )
    } else {
        cond(
            "Progressing",
            false,
            "UpToDate",
            "every server runs the current spec",
            generation,
        )
    };

    let degraded = if problems.is_empty() {
        cond(
            "Degraded",
            false,
            "Healthy",
            "nothing needs attention",
            generation,
        )
    } else {
        let reason = if problems.len() == 1 {
            problems[0].0.clone()
        } else {
            "Several".into()
        };
        let message = problems
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        cond("Degraded", true, &reason, message, generation)
    };

    let phase = if !rollout.outdated.is_empty() {
        "Upgrading"
    } else if layout_version.is_none() || (first_start && ready_cond.status != "True" && problems.is_empty())
    {
        "Provisioning"
    } else if progressing.status == "True" {
        "Scaling"
    } else if !problems.is_empty() || ready_cond.status != "True" {
        "Degraded"
    } else {
        "Ready"
    };

    let image = if rollout.outdated.is_empty() && !rollout.unsettled && rollout.updated == rollout.total {
        Some(tenant.spec.image.clone())
    } else {
        prev.image.clone()
    };
    let upgrade = (!rollout.outdated.is_empty()).then(|| UpgradeStatus {
        image: tenant.spec.image.clone(),
        updated_servers: rollout.updated,
        servers: rollout.total,
    });

    let mut pool_summaries: Vec<PoolSummary> = pools
        .iter()
        .map(|p| p.name_any())
        .chain(
            obs.leaving
                .iter()
                .filter(|l| !pools.iter().any(|p| &p.name_any() == *l))
                .cloned(),
        )
        .map(|name| PoolSummary {
            servers: obs.expected.get(&name).map(|v| v.len() as i32).unwrap_or(0),
            ready_servers: obs.ready_in(&name),
            name,
        })
        .collect();
    pool_summaries.sort_by(|a, b| a.name.cmp(&b.name));

    TenantStatus {
        observed_generation: generation,
        phase: Some(phase.into()),
        conditions: vec![ready_cond, progressing, degraded],
        layout_version,
        redundancy: match admin {
            Some(a) if !a.redundancy.is_empty() => Some(a.redundancy.clone()),
            _ => prev.redundancy.clone(),
        },
        seeds: seeds.to_vec(),
        initial_redundancy: Some(formed.to_string()),
        pools: pool_summaries,
        ready_servers: Some(ready),
        servers: Some(servers),
        capacity: match admin {
            Some(a) => Some(capacity(prev.capacity.as_ref(), a)),
            None => prev.capacity.clone(),
        },
        image,
        transition,
        upgrade,
    }
}

/// The status of a Tenant whose spec cannot be reconciled: the previous figures stay, the
/// conditions say what is wrong.
pub fn invalid_status(tenant: &Tenant, invalid: &Invalid) -> TenantStatus {
    let prev = tenant.status.clone().unwrap_or_default();
    let generation = tenant.metadata.generation;
    TenantStatus {
        observed_generation: generation,
        phase: Some("Invalid".into()),
        conditions: vec![
            cond(
                "Ready",
                false,
                invalid.reason,
                invalid.message.clone(),
                generation,
            ),
            cond(
                "Progressing",
                false,
                invalid.reason,
                "waiting for the spec to be fixed",
                generation,
            ),
            cond(
                "Degraded",
                true,
                invalid.reason,
                invalid.message.clone(),
                generation,
            ),
        ],
        ..prev
    }
}

/// The transition for the status: the cluster's running (or last) one, with the movers'
/// figures when they were asked for (`obs.transition`), else the ones recorded before for
/// the same transition. A finished one keeps its figures, so a quiet cluster's status
/// stays still.
pub fn transition_status(prev: Option<&TransitionStatus>, obs: &Observation) -> Option<TransitionStatus> {
    let Some(t) = obs.admin.as_ref().ok().and_then(|a| a.transition.as_ref()) else {
        return prev.cloned();
    };
    let same = prev.filter(|p| p.to == t.to);
    let detail = obs.transition.as_ref().filter(|d| d.to == t.to);
    let figure = |d: fn(&crate::admin::TransitionDetail) -> u64, p: fn(&TransitionStatus) -> u64| {
        detail.map(d).or(same.map(p)).unwrap_or(0)
    };
    Some(TransitionStatus {
        from: t.from,
        to: t.to,
        kind: t.kind.clone(),
        phase: t.phase.clone(),
        percent: t.percent,
        objects_moved: figure(|d| d.objects_moved, |p| p.objects_moved),
        bytes_moved: figure(|d| d.bytes_moved, |p| p.bytes_moved),
        eta_seconds: (t.phase == "moving")
            .then(|| detail.and_then(|d| d.eta_seconds))
            .flatten()
            .map(|e| e.max(0.0).round() as u64),
    })
}

/// The Events a change of the status's transition calls for: `(reason, note)`.
pub fn transition_events(
    old: Option<&TransitionStatus>,
    new: Option<&TransitionStatus>,
) -> Vec<(&'static str, String)> {
    let Some(n) = new else {
        return vec![];
    };
    let what = format!("{} from layout {} to {}", n.kind, n.from, n.to);
    let same = old.filter(|o| o.to == n.to);
    // (a transition that started and ended between two looks gets its Finished Event only;
    // so does the last one when the status recorded none before, after an operator upgrade)
    let mut events = Vec::new();
    if same.is_none() && n.phase != "finished" {
        events.push(("TransitionStarted", format!("{what}: data moves")));
    }
    let was = same.map(|o| o.phase.as_str()).unwrap_or("");
    match (was, n.phase.as_str()) {
        (w, "paused") if w != "paused" => {
            events.push(("TransitionPaused", format!("{what} paused at {}%", n.percent)))
        }
        ("paused", "moving" | "syncing") => {
            events.push(("TransitionResumed", format!("{what} resumed at {}%", n.percent)))
        }
        (w, "finished") if w != "finished" => events.push((
            "TransitionFinished",
            format!(
                "{what} finished: {} objects ({}B) moved",
                n.objects_moved,
                human_bytes(n.bytes_moved)
            ),
        )),
        _ => {}
    }
    events
}

/// Whether the movers' figures are worth asking for: a transition runs, or the status does
/// not have the final figures of the one that finished.
pub fn wants_transition_figures(prev: Option<&TransitionStatus>, admin: &AdminStatus) -> bool {
    admin
        .transition
        .as_ref()
        .is_some_and(|t| t.running() || prev.is_none_or(|p| p.to != t.to || p.phase != "finished"))
}

/// `3m20s`-style durations for messages.
pub fn human_seconds(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `: 42% moved` while a transition runs, for the status of a pool whose servers leave.
fn drain_progress(obs: &Observation) -> String {
    obs.admin
        .as_ref()
        .ok()
        .and_then(|a| a.transition.as_ref())
        .filter(|t| t.running())
        .map(|t| match t.phase.as_str() {
            "syncing" => ": the transition is starting".to_string(),
            "paused" => format!(": paused at {}%", t.percent),
            _ => format!(": {}% moved", t.percent),
        })
        .unwrap_or_default()
}

/// Whether a Pool's servers all leave the cluster: it is decommissioned or being deleted.
pub fn pool_leaves(pool: &Pool) -> bool {
    pool.spec.decommission || pool.metadata.deletion_timestamp.is_some()
}

/// The status of a Pool.
pub fn pool_status(pool: &Pool, tenant_invalid: Option<&Invalid>, obs: Option<&Observation>) -> PoolStatus {
    let generation = pool.metadata.generation;
    let name = pool.name_any();
    let servers = pool.spec.servers;
    let mut conditions = Vec::new();
    let leaves = pool_leaves(pool);
    let (phase, ready) = match obs {
        Some(obs) if tenant_invalid.is_none() && leaves => {
            let ready = obs.ready_in(&name);
            let running = obs.expected.get(&name).map(Vec::len).unwrap_or(0);
            let (phase, done, reason, msg) = if obs.leaving.contains(&name) {
                (
                    "Draining",
                    false,
                    "Draining",
                    format!(
                        "moving the data of {running} servers to the other pools{}",
                        drain_progress(obs)
                    ),
                )
            } else {
                (
                    "Decommissioned",
                    true,
                    "Drained",
                    "the pool's data has moved to the other pools and its servers are gone".to_string(),
                )
            };
            conditions.push(cond("Ready", false, reason, msg.clone(), generation));
            conditions.push(cond("Decommissioned", done, reason, msg, generation));
            (phase, ready)
        }
        Some(obs) if tenant_invalid.is_none() => {
            let ready = obs.ready_in(&name);
            let running = obs.expected.get(&name).map(Vec::len).unwrap_or(0) as i32;
            let all = ready >= servers && running <= servers;
            let in_layout = obs
                .admin
                .as_ref()
                .ok()
                .map(|a| {
                    let nodes: BTreeSet<String> = a.layout_nodes().into_iter().collect();
                    desired::pod_names(&pool.spec.tenant, &name, servers)
                        .iter()
                        .all(|p| nodes.contains(p))
                })
                .unwrap_or(false);
            let reason = if running > servers {
                "Draining"
            } else if !all {
                "ServersNotReady"
            } else if !in_layout {
                "LayoutPending"
            } else {
                "ServersReady"
            };
            let message = if running > servers {
                format!(
                    "{} of {servers} servers ready; {} leaving once their data has moved{}",
                    ready.min(servers),
                    running - servers,
                    drain_progress(obs)
                )
            } else {
                format!("{ready} of {servers} servers ready")
            };
            conditions.push(cond("Ready", all && in_layout, reason, message, generation));
            let phase = if running > servers {
                "Draining"
            } else if all && in_layout {
                "Ready"
            } else if in_layout {
                "Degraded"
            } else {
                "Provisioning"
            };
            (phase, ready)
        }
        _ => {
            let msg = match tenant_invalid {
                Some(inv) => format!("tenant {}: {}", pool.spec.tenant, inv.message),
                None => format!("waiting for tenant {}", pool.spec.tenant),
            };
            conditions.push(cond("Ready", false, "TenantNotReady", msg, generation));
            ("Pending", 0)
        }
    };
    PoolStatus {
        observed_generation: generation,
        phase: Some(phase.into()),
        servers: Some(if leaves { 0 } else { servers }),
        ready_servers: Some(ready),
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{CapacityDoc, DriveState, NodeState};

    fn t() -> (Tenant, Vec<Pool>) {
        let t = Tenant::test("t");
        let pools = vec![t.pool("a", 4)];
        (t, pools)
    }

    fn pod(name: &str, ready: bool, rev: &str) -> PodView {
        PodView {
            name: name.into(),
            pool: "a".into(),
            ready,
            terminating: false,
            revision: Some(rev.into()),
            ip: Some(format!("10.0.0.{}", name.len())),
        }
    }

    fn admin(nodes: &[(&str, bool, bool)], version: u64) -> AdminStatus {
        AdminStatus {
            node: "t-a-0".into(),
            redundancy: "2+2".into(),
            layout_version: version,
            nodes: nodes
                .iter()
                .map(|(n, online, in_layout)| NodeState {
                    name: (*n).into(),
                    state: if *online { "online" } else { "offline" }.into(),
                    in_layout: *in_layout,
                })
                .collect(),
            drives: nodes
                .iter()
                .map(|(n, online, _)| DriveState {
                    id: format!("d-{n}"),
                    node: (*n).into(),
                    path: Some("/data/0".into()),
                    state: if *online { "online" } else { "offline" }.into(),
                })
                .collect(),
            capacity: CapacityDoc {
                drives_total: nodes.len() as u64,
                drives_online: nodes.iter().filter(|n| n.1).count() as u64,
                bytes_used: 1 << 30,
                bytes_available: 99 << 30,
            },
            ..Default::default()
        }
    }

    fn obs(pods: Vec<PodView>, admin: Result<AdminStatus, String>) -> Observation {
        Observation {
            expected: BTreeMap::from([("a".into(), desired::pod_names("t", "a", 4))]),
            members: desired::pod_names("t", "a", 4).into_iter().collect(),
            leaving: vec![],
            known_layout: None,
            transition: None,
            finished_for: Some(DRAIN_GRACE),
            statefulsets: vec![StsView {
                name: "t-a".into(),
                pool: "a".into(),
                replicas: 4,
                update_revision: Some("r2".into()),
                settled: true,
            }],
            pods,
            admin,
        }
    }

    fn healthy() -> Observation {
        let pods = (0..4).map(|i| pod(&format!("t-a-{i}"), true, "r2")).collect();
        let nodes: Vec<(String, bool, bool)> = (0..4).map(|i| (format!("t-a-{i}"), true, true)).collect();
        let refs: Vec<(&str, bool, bool)> = nodes.iter().map(|(n, a, b)| (n.as_str(), *a, *b)).collect();
        obs(pods, Ok(admin(&refs, 1)))
    }

    #[test]
    fn healthy_cluster_is_ready_and_stable() {
        let (mut tenant, pools) = t();
        let o = healthy();
        let r = rollout(&o, &["a".into()]);
        assert_eq!((r.updated, r.total, r.outdated.len()), (4, 4, 0));
        assert_eq!(layout_step(&o, "2+2"), None);
        let s = tenant_status(
            &tenant,
            &pools,
            (&["s".into()], "2+2"),
            &o,
            &r,
            &Activity::default(),
        );
        assert_eq!(s.phase.as_deref(), Some("Ready"));
        assert_eq!(s.conditions[0].status, "True", "{:?}", s.conditions[0]);
        assert_eq!(s.conditions[1].status, "False");
        assert_eq!(s.conditions[2].status, "False");
        assert_eq!(s.image.as_deref(), Some("ringstore:test"));
        assert_eq!(s.capacity.as_ref().unwrap().total, "100.0Gi");

        // writing it and observing the same again gives the same status: no write
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let mut written = s.clone();
        carry_transitions(&[], &mut written.conditions, &now);
        tenant.status = Some(written.clone());
        let mut again = tenant_status(
            &tenant,
            &pools,
            (&["s".into()], "2+2"),
            &o,
            &r,
            &Activity::default(),
        );
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_100).unwrap());
        carry_transitions(&written.conditions, &mut again.conditions, &later);
        assert_eq!(again, written);

        // a little disk movement does not change it either
        let mut o2 = healthy();
        if let Ok(a) = &mut o2.admin {
            a.capacity.bytes_used += 1 << 20;
            a.capacity.bytes_available -= 1 << 20;
        }
        let mut again = tenant_status(
            &tenant,
            &pools,
            (&["s".into()], "2+2"),
            &o2,
            &r,
            &Activity::default(),
        );
        carry_transitions(&written.conditions, &mut again.conditions, &later);
        assert_eq!(again, written);
    }

    #[test]
    fn transition_time_changes_only_with_status() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2).unwrap());
        let mut old = vec![cond("Ready", true, "A", "x", Some(1))];
        carry_transitions(&[], &mut old, &t0);
        let mut same = vec![cond("Ready", true, "B", "y", Some(2))];
        carry_transitions(&old, &mut same, &t1);
        assert_eq!(same[0].last_transition_time, Some(t0));
        let mut flipped = vec![cond("Ready", false, "B", "y", Some(2))];
        carry_transitions(&old, &mut flipped, &t1);
        assert_eq!(flipped[0].last_transition_time, Some(t1));
    }

    #[test]
    fn layout_applied_when_a_pool_grew_and_all_are_ready() {
        let pods: Vec<PodView> = (0..4).map(|i| pod(&format!("t-a-{i}"), true, "r2")).collect();
        let a = admin(
            &[
                ("t-a-0", true, true),
                ("t-a-1", true, true),
                ("t-a-2", true, false),
                ("t-a-3", true, false),
            ],
            1,
        );
        let o = obs(pods.clone(), Ok(a.clone()));
        assert_eq!(
            layout_step(&o, "2+2"),
            Some(LayoutChange {
                nodes: desired::pod_names("t", "a", 4),
                redundancy: None
            })
        );
        // not while a pod is not ready
        let mut p2 = pods.clone();
        p2[3].ready = false;
        assert_eq!(layout_step(&obs(p2, Ok(a.clone())), "2+2"), None);
        // never the first layout
        assert_eq!(
            layout_step(&obs(pods.clone(), Ok(admin(&[("t-a-0", true, false)], 0))), "2+2"),
            None
        );
        // not before every pod is a registered, online member
        let a3 = admin(
            &[
                ("t-a-0", true, true),
                ("t-a-1", true, true),
                ("t-a-2", true, false),
            ],
            1,
        );
        assert_eq!(layout_step(&obs(pods, Ok(a3)), "2+2"), None);
    }

    #[test]
    fn a_redundancy_change_is_applied_once_every_server_is_ready_and_no_transition_runs() {
        let four = healthy();
        let nodes = desired::pod_names("t", "a", 4);
        // the same nodes, another redundancy: the layout carries it
        assert_eq!(
            layout_step(&four, "3+1"),
            Some(LayoutChange {
                nodes: nodes.clone(),
                redundancy: Some("3+1".into())
            })
        );
        assert_eq!(layout_step(&four, "2+2"), None, "nothing to change");
        // one change at a time: not while a transition runs, again once it finished
        let mut busy = four.clone();
        if let Ok(a) = &mut busy.admin {
            a.transition = Some(crate::admin::TransitionDoc {
                from: 1,
                to: 2,
                kind: "rebalance".into(),
                phase: "moving".into(),
                ..Default::default()
            });
        }
        assert_eq!(layout_step(&busy, "3+1"), None);
        if let Ok(a) = &mut busy.admin {
            a.transition.as_mut().unwrap().phase = "finished".into();
        }
        assert!(layout_step(&busy, "3+1").is_some());
        // and not while a server is not ready
        let mut waiting = four;
        waiting.pods[3].ready = false;
        assert_eq!(layout_step(&waiting, "3+1"), None);
    }

    #[test]
    fn servers_gone_before_they_were_drained_stay_in_the_layout_and_status_says_why() {
        let (tenant, pools) = t();
        let pods: Vec<PodView> = (0..4).map(|i| pod(&format!("t-a-{i}"), true, "r2")).collect();
        let nodes: Vec<String> = (0..6).map(|i| format!("t-a-{i}")).collect();
        let refs: Vec<(&str, bool, bool)> = nodes.iter().map(|n| (n.as_str(), true, true)).collect();
        let o = obs(pods, Ok(admin(&refs, 2)));
        assert_eq!(stranded(&o), ["t-a-4", "t-a-5"]);
        assert_eq!(
            layout_step(&o, "2+2"),
            None,
            "no layout that drops servers is proposed"
        );
        let r = rollout(&o, &["a".into()]);
        let s = tenant_status(
            &tenant,
            &pools,
            (&["s".into()], "2+2"),
            &o,
            &r,
            &Activity::default(),
        );
        let ready = &s.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ServersGone")
        );
        assert!(ready.message.contains("t-a-4, t-a-5"), "{}", ready.message);
        assert!(stranded(&healthy()).is_empty());
    }

    /// A pool shrinks from 6 servers to 4: the layout drops t-a-4 and t-a-5 while they
    /// still run (their data moves), and they count as drained only once no transition runs
    /// and neither is in the layout or a voter.
    #[test]
    fn a_shrink_drains_the_servers_it_removes_before_they_go() {
        let pods: Vec<PodView> = (0..6).map(|i| pod(&format!("t-a-{i}"), true, "r2")).collect();
        let names: Vec<String> = (0..6).map(|i| format!("t-a-{i}")).collect();
        let refs: Vec<(&str, bool, bool)> = names.iter().map(|n| (n.as_str(), true, true)).collect();
        let mut o = obs(pods, Ok(admin(&refs, 2)));
        o.expected.insert("a".into(), names.clone());
        let leaving = names[4..].to_vec();
        assert!(stranded(&o).is_empty(), "servers that still run are not stranded");
        assert_eq!(
            layout_step(&o, "2+2"),
            Some(LayoutChange {
                nodes: names[..4].to_vec(),
                redundancy: None
            }),
            "the layout holds the members only"
        );
        assert!(!drained(&o, &leaving), "still in the layout");
        // the layout without them, moving
        let refs: Vec<(&str, bool, bool)> = names
            .iter()
            .map(|n| (n.as_str(), true, !leaving.contains(n)))
            .collect();
        let mut a = admin(&refs, 3);
        a.transition = Some(crate::admin::TransitionDoc {
            from: 2,
            to: 3,
            kind: "drain".into(),
            phase: "moving".into(),
            ..Default::default()
        });
        a.cluster = Some(crate::admin::ClusterDoc {
            leader: Some("t-a-0".into()),
            voters: vec!["t-a-0".into(), "t-a-1".into(), "t-a-4".into()],
            layout_version: Some(3),
        });
        o.admin = Ok(a.clone());
        assert_eq!(layout_step(&o, "2+2"), None, "one change at a time");
        assert!(!drained(&o, &leaving), "data still moving");
        a.transition.as_mut().unwrap().phase = "finished".into();
        a.cluster = Some(crate::admin::ClusterDoc {
            leader: Some("t-a-0".into()),
            voters: vec!["t-a-0".into(), "t-a-1".into(), "t-a-2".into()],
            layout_version: Some(3),
        });
        // a node whose data path lags behind its Raft state (layout 4 may hold them again),
        // or a status older than a layout seen before: not judged
        let mut lagging = a.clone();
        lagging.cluster.as_mut().unwrap().layout_version = Some(4);
        o.admin = Ok(lagging);
        assert!(!drained(&o, &leaving), "the data path lags behind Raft");
        o.admin = Ok(a.clone());
        o.known_layout = Some(4);
        assert!(!drained(&o, &leaving), "older than a layout seen before");
        o.known_layout = Some(3);
        o.finished_for = Some(DRAIN_GRACE / 2);
        assert!(!drained(&o, &leaving), "finished moments ago");
        o.finished_for = Some(DRAIN_GRACE);
        // the layout committed, its transition not started yet: the status shows the
        // previous transition, finished (two Raft entries; seen in the e2e scenario)
        let mut before_start = a.clone();
        before_start.transition.as_mut().unwrap().to = 2;
        before_start.transition.as_mut().unwrap().from = 1;
        o.admin = Ok(before_start);
        assert!(
            !drained(&o, &leaving),
            "the transition into layout 3 has not started"
        );
        let mut no_transition = a.clone();
        no_transition.transition = None;
        o.admin = Ok(no_transition);
        assert!(
            !drained(&o, &leaving),
            "a layout after the first has a transition"
        );
        a.cluster.as_mut().unwrap().voters[2] = "t-a-4".into();
        o.admin = Ok(a.clone());
        assert!(!drained(&o, &leaving), "t-a-4 still votes");
        assert!(drained(&o, &leaving[1..]));
        a.cluster.as_mut().unwrap().voters = vec!["t-a-0".into(), "t-a-1".into(), "t-a-2".into()];
        o.admin = Ok(a.clone());
        assert!(drained(&o, &leaving));
        assert!(
            !drained(&obs(vec![], Err("no answer".into())), &leaving),
            "unknown is not drained"
        );
        // their volumes go only once their pods are gone and the StatefulSet is scaled down
        assert!(!volume_released(&o, "a", 4, "t-a-4"), "pod still there");
        o.statefulsets[0].replicas = 6;
        o.pods.retain(|p| p.name != "t-a-4" && p.name != "t-a-5");
        assert!(
            !volume_released(&o, "a", 4, "t-a-4"),
            "the StatefulSet still has 6 replicas"
        );
        o.statefulsets[0].replicas = 4;
        assert!(volume_released(&o, "a", 4, "t-a-4"));
        assert!(
            !volume_released(&o, "a", 6, "t-a-4"),
            "the pool grew again: its pod comes back"
        );
        assert!(!volume_released(&o, "a", 4, "t-a-3"));
        let mut moving = o.clone();
        if let Ok(a) = &mut moving.admin {
            a.transition.as_mut().unwrap().phase = "moving".into();
        }
        assert!(
            !volume_released(&moving, "a", 4, "t-a-4"),
            "not while a transition runs"
        );
        // a pool that leaves: its StatefulSet gone, every volume goes
        o.statefulsets.clear();
        assert!(volume_released(&o, "a", 0, "t-a-4"));
        assert!(
            !volume_released(&o, "a", 4, "t-a-4"),
            "a staying pool without its StatefulSet keeps them"
        );
    }

    /// A leaving pool whose StatefulSet was scaled to 0 by hand still has servers in the
    /// layout: they are what must be drained, so it does not count as drained.
    #[test]
    fn a_leaving_pool_scaled_to_zero_by_hand_is_not_drained() {
        let mut o = healthy();
        o.expected.insert("b".into(), vec![]);
        o.leaving = vec!["b".into()];
        if let Ok(a) = &mut o.admin {
            a.nodes.push(NodeState {
                name: "t-b-0".into(),
                state: "offline".into(),
                in_layout: true,
            });
            a.nodes.push(NodeState {
                name: "t-bc-0".into(),
                state: "online".into(),
                in_layout: true,
            });
            a.cluster = Some(crate::admin::ClusterDoc {
                layout_version: Some(a.layout_version),
                ..Default::default()
            });
        }
        assert_eq!(pool_servers(&o, "t", "b"), ["t-b-0"]);
        assert!(drained(&o, &[]), "nothing named");
        assert!(!drained(&o, &pool_servers(&o, "t", "b")));
    }

    #[test]
    fn transitions_show_their_figures_and_publish_events_on_changes() {
        let mut o = healthy();
        let doc = |phase: &str, done: u32| crate::admin::TransitionDoc {
            from: 1,
            to: 2,
            kind: "drain".into(),
            phase: phase.into(),
            partitions: 4,
            partitions_done: done,
            percent: f64::from(done) * 25.0,
        };
        if let Ok(a) = &mut o.admin {
            a.transition = Some(doc("moving", 1));
            assert!(wants_transition_figures(None, a));
        }
        o.transition = Some(crate::admin::TransitionDetail {
            to: 2,
            objects_moved: 10,
            bytes_moved: 2048,
            eta_seconds: Some(90.4),
        });
        let moving = transition_status(None, &o).unwrap();
        assert_eq!(
            (
                moving.percent,
                moving.objects_moved,
                moving.bytes_moved,
                moving.eta_seconds
            ),
            (25.0, 10, 2048, Some(90))
        );
        let events = transition_events(None, Some(&moving));
        assert_eq!(
            events.iter().map(|e| e.0).collect::<Vec<_>>(),
            ["TransitionStarted"]
        );
        // no figures this time (the call failed): the recorded ones stay
        o.transition = None;
        if let Ok(a) = &mut o.admin {
            a.transition = Some(doc("paused", 2));
        }
        let paused = transition_status(Some(&moving), &o).unwrap();
        assert_eq!((paused.objects_moved, paused.eta_seconds), (10, None));
        assert_eq!(
            transition_events(Some(&moving), Some(&paused))[0].0,
            "TransitionPaused"
        );
        if let Ok(a) = &mut o.admin {
            a.transition = Some(doc("finished", 4));
        }
        o.transition = Some(crate::admin::TransitionDetail {
            to: 2,
            objects_moved: 40,
            bytes_moved: 8192,
            eta_seconds: None,
        });
        let done = transition_status(Some(&paused), &o).unwrap();
        let events = transition_events(Some(&paused), Some(&done));
        assert_eq!(events[0].0, "TransitionFinished");
        assert!(events[0].1.contains("40 objects (8.0KiB)"), "{events:?}");
        // finished and recorded: no more calls, no more events, the status stays still
        if let Ok(a) = &o.admin {
            assert!(!wants_transition_figures(Some(&done), a));
        }
        o.transition = None;
        assert_eq!(transition_status(Some(&done), &o).as_ref(), Some(&done));
        assert!(transition_events(Some(&done), Some(&done)).is_empty());
        let quick = transition_events(None, Some(&done));
        assert_eq!(
            quick.iter().map(|e| e.0).collect::<Vec<_>>(),
            ["TransitionFinished"],
            "started and ended between two looks"
        );
        assert_eq!(human_seconds(200), "3m20s");
    }

    #[test]
    fn volume_claims_name_their_server() {
        assert_eq!(claim_server("data-0-t-a-4", "t", "a").as_deref(), Some("t-a-4"));
        assert_eq!(
            claim_server("data-12-t-a-b-3", "t", "a-b").as_deref(),
            Some("t-a-b-3")
        );
        assert_eq!(claim_server("data-0-t-ab-4", "t", "a"), None, "another pool");
        assert_eq!(claim_server("data-x-t-a-4", "t", "a"), None);
        assert_eq!(claim_server("other-0-t-a-4", "t", "a"), None);
    }

    #[test]
    fn upgrade_restarts_one_outdated_pod_on_a_healthy_cluster_leader_last() {
        let mut o = healthy();
        o.pods[0].revision = Some("r1".into());
        o.pods[2].revision = Some("r1".into());
        let r = rollout(&o, &["a".into()]);
        assert_eq!(r.outdated, ["t-a-0", "t-a-2"]);
        assert_eq!((r.updated, r.total), (2, 4));
        assert_eq!(unhealthy(&o, &[]), None);
        assert_eq!(next_restart(&r, Some("t-a-0")).as_deref(), Some("t-a-2"));
        assert_eq!(next_restart(&r, Some("t-a-1")).as_deref(), Some("t-a-0"));
        let r1 = Rollout {
            outdated: vec!["t-a-0".into()],
            ..r.clone()
        };
        assert_eq!(next_restart(&r1, Some("t-a-0")).as_deref(), Some("t-a-0"));

        // gates: a pod not ready, a node offline, a drive offline, healing
        assert!(unhealthy(&o, &["t-a-1".into()]).unwrap().contains("healing"));
        let mut o2 = healthy();
        o2.pods[1].terminating = true;
        assert!(unhealthy(&o2, &[]).unwrap().contains("t-a-1 to be ready"));
        let mut o3 = healthy();
        if let Ok(a) = &mut o3.admin {
            a.drives[3].state = "offline".into();
        }
        assert!(unhealthy(&o3, &[]).unwrap().contains("drives"));

        let (tenant, pools) = t();
        let act = Activity {
            upgrade_waiting: None,
            ..Default::default()
        };
        let s = tenant_status(&tenant, &pools, (&[], "2+2"), &o, &r, &act);
        assert_eq!(s.phase.as_deref(), Some("Upgrading"));
        assert_eq!(s.conditions[1].reason, "RollingUpgrade");
        assert_eq!(s.conditions[1].message, "2 of 4 pods on image ringstore:test");
        assert_eq!(s.upgrade.as_ref().unwrap().updated_servers, 2);
    }

    #[test]
    fn a_layout_transition_shows_as_progressing_and_its_sync_holds_up_restarts() {
        let (tenant, pools) = t();
        let with = |phase: &str| {
            let mut o = healthy();
            if let Ok(a) = &mut o.admin {
                a.transition = Some(crate::admin::TransitionDoc {
                    from: 1,
                    to: 2,
                    kind: "rebalance".into(),
                    phase: phase.into(),
                    partitions: 4096,
                    partitions_done: 1024,
                    percent: 25.0,
                });
            }
            o
        };
        let o = with("moving");
        let r = rollout(&o, &["a".into()]);
        let s = tenant_status(&tenant, &pools, (&[], "2+2"), &o, &r, &Activity::default());
        assert_eq!(s.phase.as_deref(), Some("Scaling"));
        assert_eq!(s.conditions[0].status, "True", "it serves meanwhile");
        let p = &s.conditions[1];
        assert_eq!(
            (p.type_.as_str(), p.status.as_str(), p.reason.as_str()),
            ("Progressing", "True", "Rebalancing")
        );
        assert_eq!(
            p.message,
            "moving data from layout 1 to 2: 25% (1024 of 4096 partitions)"
        );
        assert_eq!(unhealthy(&o, &[]), None, "an upgrade may go on while data moves");

        let o = with("syncing");
        assert!(unhealthy(&o, &[]).unwrap().contains("transition to 2 to sync"));
        let s = tenant_status(&tenant, &pools, (&[], "2+2"), &o, &r, &Activity::default());
        assert!(
            s.conditions[1]
                .message
                .ends_with("waiting for every node to read both layouts")
        );

        let o = with("finished");
        let s = tenant_status(&tenant, &pools, (&[], "2+2"), &o, &r, &Activity::default());
        assert_eq!(s.conditions[1].reason, "UpToDate");
    }

    #[test]
    fn unsettled_statefulset_is_not_judged() {
        let mut o = healthy();
        o.statefulsets[0].settled = false;
        o.pods[0].revision = Some("r1".into());
        let r = rollout(&o, &["a".into()]);
        assert!(r.unsettled && r.outdated.is_empty());
    }

    #[test]
    fn degraded_says_what_is_offline() {
        let (tenant, pools) = t();
        let mut o = healthy();
        if let Ok(a) = &mut o.admin {
            a.nodes[1].state = "offline".into();
            a.drives[1].state = "offline".into();
        }
        let r = rollout(&o, &["a".into()]);
        let s = tenant_status(&tenant, &pools, (&[], "2+2"), &o, &r, &Activity::default());
        let d = &s.conditions[2];
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "Several"));
        assert!(d.message.contains("t-a-1 do not answer"), "{}", d.message);
        assert!(d.message.contains("t-a-1:/data/0"), "{}", d.message);
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(s.conditions[0].reason, "ClusterDegraded");
    }

    #[test]
    fn provisioning_until_the_first_layout() {
        let (tenant, pools) = t();
        let pods = vec![pod("t-a-0", true, "r2"), pod("t-a-1", false, "r2")];
        let o = obs(pods, Err("no ready server".into()));
        let r = rollout(&o, &["a".into()]);
        let s = tenant_status(&tenant, &pools, (&[], "2+2"), &o, &r, &Activity::default());
        assert_eq!(s.phase.as_deref(), Some("Provisioning"));
        assert_eq!(s.ready_servers, Some(1));
        assert_eq!(s.servers, Some(4));
        assert_eq!(s.conditions[0].message, "1 of 4 servers ready");
    }

    #[test]
    fn servers_still_starting_are_provisioning_until_ready_once() {
        let (mut tenant, pools) = t();
        let mut o = healthy();
        o.pods[2].ready = false;
        let r = rollout(&o, &["a".into()]);
        // first start: the layout formed, one server's probe has not passed yet
        let s = tenant_status(&tenant, &pools, (&[], "2+2"), &o, &r, &Activity::default());
        assert_eq!(s.phase.as_deref(), Some("Provisioning"));
        assert_eq!(s.conditions[2].status, "False", "{:?}", s.conditions[2]);
        // once it has been Ready, the same observation is a degraded cluster
        tenant.status = Some(TenantStatus {
            phase: Some("Ready".into()),
            ..Default::default()
        });
        let s = tenant_status(&tenant, &pools, (&[], "2+2"), &o, &r, &Activity::default());
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(s.conditions[2].reason, "ServersNotReady");
    }

    #[test]
    fn pool_status_and_decommission() {
        let (tenant, _) = t();
        let mut p = tenant.pool("a", 4);
        p.spec.decommission = true;
        // its StatefulSet is still there: draining
        let mut o = healthy();
        o.leaving = vec!["a".into()];
        o.members.clear();
        let s = pool_status(&p, None, Some(&o));
        assert_eq!(s.phase.as_deref(), Some("Draining"));
        assert_eq!((s.servers, s.ready_servers), (Some(0), Some(4)));
        assert_eq!(s.conditions[1].type_, "Decommissioned");
        assert_eq!(s.conditions[1].status, "False");
        // with the transition's progress while data moves
        if let Ok(a) = &mut o.admin {
            a.transition = Some(crate::admin::TransitionDoc {
                from: 1,
                to: 2,
                kind: "drain".into(),
                phase: "moving".into(),
                partitions: 4,
                partitions_done: 1,
                percent: 25.0,
            });
        }
        let s = pool_status(&p, None, Some(&o));
        assert_eq!(
            s.conditions[1].message,
            "moving the data of 4 servers to the other pools: 25% moved"
        );
        if let Ok(a) = &mut o.admin {
            a.transition = None;
        }
        // its StatefulSet is gone: decommissioned
        o.leaving.clear();
        o.expected.clear();
        let s = pool_status(&p, None, Some(&o));
        assert_eq!(s.phase.as_deref(), Some("Decommissioned"));
        assert_eq!(
            (s.conditions[1].status.as_str(), s.conditions[1].reason.as_str()),
            ("True", "Drained")
        );
        // a shrinking pool drains the servers it removes
        let mut o = healthy();
        o.expected.insert("a".into(), desired::pod_names("t", "a", 6));
        let s = pool_status(&tenant.pool("a", 4), None, Some(&o));
        assert_eq!(s.phase.as_deref(), Some("Draining"));
        assert!(
            s.conditions[0].message.contains("2 leaving"),
            "{}",
            s.conditions[0].message
        );
        let inv = Invalid {
            reason: "NotEnoughServers",
            message: "too few".into(),
        };
        let s = pool_status(&p, Some(&inv), None);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(s.conditions[0].message, "tenant t: too few");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512");
        assert_eq!(human_bytes(3 << 40), "3.0Ti");
        assert_eq!(human_bytes(1536 << 20), "1.5Gi");
    }
}
