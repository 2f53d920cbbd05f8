//! Bootstrap: turning a set of nodes that know each other's addresses into exactly one cluster.
//!
//! Every decision is made from facts all nodes can observe (hello answers), so nodes may start
//! in any order: a node joins an existing cluster if any seed belongs to one; otherwise, once
//! every seed has answered, the seed with the smallest name creates the cluster and all others
//! wait to be contacted by it. Restarting with Raft state skips all of this.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use ringstore_meta::{Command, MetaNode, NodeId, Rejection};
use ringstore_ring::{Layout, NodeSpec, Redundancy};
use tokio::time::Instant;

use crate::api::{Hello, Member};
use crate::node::{Inner, target_voters};
use crate::{Cluster, Error};

const POLL: Duration = Duration::from_millis(300);
const REPORT_EVERY: Duration = Duration::from_secs(3);

pub(crate) async fn run(n: Arc<Inner>) {
    let initialized = n.raft.is_initialized().await.unwrap_or(false);
    let own = n.cfg.rpc_addr.as_str();
    let mut seeds: Vec<String> = n
        .cfg
        .seeds
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    seeds.sort();
    seeds.dedup();
    if initialized {
        tracing::info!(node = %n.cfg.node_name, id = n.id, "raft state found: rejoining as a member");
        rejoin(&n, &seeds).await;
        // a restore that a crash cut short runs again (what it already did is refused)
        if let Some(copy) = n.cfg.restore.as_ref().filter(|_| seeds.iter().all(|s| s == own)) {
            restore(&n, copy).await;
        }
    } else if seeds.iter().all(|s| s == own) {
        tracing::info!(node = %n.cfg.node_name, id = n.id, "no other seeds: initializing a single-node cluster");
        let me = n.me();
        let members = BTreeMap::from([(me.name.clone(), me)]);
        found_cluster(&n, members).await;
    } else {
        discover(&n, &seeds).await;
    }
    // whoever leads while no layout exists proposes one: covers a founder that crashed
    // between initializing Raft and committing the first layout, then lost the election
    while !n.is_shut() && !n.state.read(|s| s.current_layout().is_some()) {
        ensure_layout(&n).await;
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the seeds until this node belongs to a cluster, creating it if it is our turn.
async fn discover(n: &Arc<Inner>, seeds: &[String]) {
    let me = n.me();
    let mut last_report = Instant::now();
    loop {
        if n.is_shut() {
            return;
        }
        if n.has_membership() {
            tracing::info!(node = %me.name, "contacted by the cluster leader");
            rejoin(n, seeds).await;
            return;
        }
        let answers = join_all(seeds.iter().map(|s| n.hello_from(s))).await;
        let mut answered: BTreeMap<String, Hello> = BTreeMap::new();
        // answers whose name another answer already took: a second node of that name
        let mut others: Vec<Hello> = Vec::new();
        let mut missing = Vec::new();
        let mut refused = Vec::new();
        for (seed, answer) in seeds.iter().zip(answers) {
            match answer {
                Ok(h) => match answered.get(&h.name) {
                    Some(first) if first.rpc_addr != h.rpc_addr => others.push(h),
                    _ => {
                        answered.insert(h.name.clone(), h);
                    }
                },
                Err(e) => {
                    if matches!(e, Error::Rpc(ringstore_rpc::RpcError::Unauthorized(_))) {
                        refused.push(seed.clone());
                    }
                    missing.push(format!("{seed} ({e})"));
                }
            }
        }
        if let Some((name, a, b)) = duplicate_name(&me, &answered, &others) {
            if last_report.elapsed() >= REPORT_EVERY {
                tracing::error!(node = %me.name, first = %a, second = %b,
                    "two nodes are named {name} (at {a} and {b}): refusing to form a cluster; \
                     give each node its own --node-name");
                last_report = Instant::now();
            }
            tokio::time::sleep(POLL).await;
            continue;
        }
        let member_of_cluster = answered.values().find(|h| h.initialized && h.name != me.name);
        if let Some(h) = member_of_cluster {
            let target = h.leader.clone().unwrap_or_else(|| h.rpc_addr.clone());
            tracing::info!(node = %me.name, via = %target, "a cluster exists: asking to join");
            match n.join_via(&target, &me).await {
                Ok(()) => {
                    tracing::info!(node = %me.name, "joined the cluster");
                    return;
                }
                // a refusal (a second node of our name) is the operator's to fix
                Err(e @ Error::Refused(_)) => {
                    tracing::error!(node = %me.name, via = %target, error = %e, "the cluster refuses this node");
                    tokio::time::sleep(REPORT_EVERY).await;
                }
                Err(e) => tracing::info!(node = %me.name, via = %target, error = %e, "join failed; retrying"),
            }
        } else if missing.is_empty() {
            let smallest = answered.keys().next().cloned();
            if smallest.as_deref() == Some(me.name.as_str()) {
                let members = answered
                    .into_iter()
                    .map(|(name, h)| (name, Member::from(h)))
                    .collect();
                found_cluster(n, members).await;
                return;
            }
            if last_report.elapsed() >= REPORT_EVERY {
                tracing::info!(node = %me.name, initializer = ?smallest,
                    "all seeds answered; waiting for the seed with the smallest name to create the cluster");
                last_report = Instant::now();
            }
        } else if last_report.elapsed() >= REPORT_EVERY {
            if !refused.is_empty() {
                tracing::warn!(node = %me.name, seeds = ?refused,
                    "seeds refuse our cluster secret: is the secret the same on every node?");
            }
            tracing::info!(node = %me.name, waiting_for = ?missing, "waiting for every seed to answer");
            last_report = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A name two different nodes answered with (the name and both addresses), this node's
/// own included: two nodes of one name would each take the other's place in Raft and in
/// the layout, or found two clusters.
fn duplicate_name(
    me: &Member,
    answered: &BTreeMap<String, Hello>,
    others: &[Hello],
) -> Option<(String, String, String)> {
    if let Some(h) = answered.get(&me.name).filter(|h| h.rpc_addr != me.rpc_addr) {
        return Some((me.name.clone(), me.rpc_addr.clone(), h.rpc_addr.clone()));
    }
    let h = others.first()?;
    let first = answered
        .get(&h.name)
        .map(|f| f.rpc_addr.clone())
        .unwrap_or_default();
    Some((h.name.clone(), first, h.rpc_addr.clone()))
}

/// Creates the cluster: the first voters by name, the rest learners, every member registered
/// and the first layout made of all of them.
async fn found_cluster(n: &Arc<Inner>, members: BTreeMap<String, Member>) {
    let v = target_voters(members.len());
    let voters: BTreeMap<NodeId, MetaNode> = members
        .values()
        .take(v)
        .map(|m| {
            (
                m.node_id,
                MetaNode {
                    name: m.name.clone(),
                    rpc_addr: m.rpc_addr.clone(),
                },
            )
        })
        .collect();
    let names: Vec<&String> = members.keys().collect();
    tracing::info!(node = %n.cfg.node_name, voters = ?&names[..v], learners = ?&names[v..],
        "initializing the cluster");
    if let Err(e) = n.raft.initialize(voters).await {
        // Only this node initializes, so this is a restart race at worst: carry on as member.
        tracing::warn!(error = %e, "raft initialize refused");
    }
    for m in members.values() {
        retry_until_shut(n, "registering a member", || n.admit(m)).await;
    }
    if let Some(copy) = n.cfg.restore.as_ref().filter(|_| members.len() == 1) {
        restore(n, copy).await;
        return;
    }
    let redundancy = initial_redundancy(n, members.len());
    let layout = Layout {
        version: 1,
        redundancy,
        nodes: members
            .values()
            .map(|m| NodeSpec {
                name: m.name.clone(),
                zone: m.zone.clone(),
                drives: m.drives.clone(),
            })
            .collect(),
        slots: None,
    };
    propose_initial_layout(n, layout).await;
}

/// Puts a single node's lost control-plane state back from its copy: layouts oldest first
/// (the last one is current), then buckets and access keys.
async fn restore(n: &Arc<Inner>, copy: &crate::ControlPlaneCopy) {
    tracing::warn!(node = %n.cfg.node_name, layouts = copy.layouts.len(), buckets = copy.buckets.len(),
        revision = copy.revision, "the control-plane state was lost with its drive: restoring it from the copy on the other drives");
    let mut commands: Vec<Command> = copy
        .layouts
        .iter()
        .map(|(version, json)| Command::SetLayout {
            version: *version,
            layout_json: json.clone(),
        })
        .collect();
    commands.extend(copy.buckets.iter().map(|(name, b)| Command::PutBucket {
        name: name.clone(),
        created_nanos: b.created_nanos,
    }));
    commands.extend(copy.access_keys.iter().map(|(id, k)| Command::PutAccessKey {
        access_key: id.clone(),
        secret_key: k.secret_key.clone(),
    }));
    for cmd in commands {
        // a rejection (already there) is fine: a restore cut short by a crash runs again
        retry_until_shut(n, "restoring the control plane", || async {
            n.write(cmd.clone()).await.map(|_| ())
        })
        .await;
    }
    if !n.is_shut() {
        n.restoring.store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(node = %n.cfg.node_name, "control-plane state restored");
    }
}

/// The configured redundancy, else one shard per node, else (one node) one per local drive.
fn initial_redundancy(n: &Inner, nodes: usize) -> Redundancy {
    n.cfg.redundancy.unwrap_or_else(|| {
        if nodes > 1 {
            Redundancy::default_for(nodes)
        } else {
            Redundancy::default_for(n.cfg.drives.len())
        }
    })
}

async fn propose_initial_layout(n: &Arc<Inner>, layout: Layout) {
    let cluster = Cluster { inner: n.clone() };
    retry_until_shut(n, "committing the initial layout", || async {
        match cluster.propose_layout(layout.clone()).await {
            Err(Error::Rejected(Rejection::StaleLayout { .. })) => Ok(()),
            Err(e @ Error::InvalidLayout(_)) => {
                tracing::error!(error = %e, "the initial layout cannot place data; set a layout through the admin API");
                Ok(())
            }
            other => other,
        }
    })
    .await;
}

/// A node with Raft state (restart, or just contacted by the leader): re-register so the
/// registry and the membership carry our current address and drives.
async fn rejoin(n: &Arc<Inner>, seeds: &[String]) {
    let me = n.me();
    let mut last_report = Instant::now();
    loop {
        if n.is_shut() {
            return;
        }
        let result = if n.leader().is_some() {
            n.admit(&me).await
        } else {
            // Our peers may not reach us yet (a new address): find the leader ourselves.
            match find_leader(n, seeds).await {
                Some(addr) => n.join_via(&addr, &me).await,
                None => Err(Error::Unavailable("no leader found yet".into())),
            }
        };
        match result {
            Ok(()) => break,
            Err(e) if last_report.elapsed() >= REPORT_EVERY => {
                tracing::info!(node = %me.name, error = %e, "waiting to re-register with the leader");
                last_report = Instant::now();
            }
            Err(_) => {}
        }
        tokio::time::sleep(POLL).await;
    }
    tracing::info!(node = %me.name, "registered with the cluster");
    ensure_layout(n).await;
}

/// Asks the seeds and the known members who leads.
async fn find_leader(n: &Inner, seeds: &[String]) -> Option<String> {
    let mut addrs: Vec<String> = seeds.to_vec();
    addrs.extend(
        n.metrics()
            .membership_config
            .membership()
            .nodes()
            .map(|(_, node)| node.rpc_addr.clone()),
    );
    addrs.sort();
    addrs.dedup();
    addrs.retain(|a| *a != n.cfg.rpc_addr);
    let answers = join_all(addrs.iter().map(|a| n.hello_from(a))).await;
    answers.into_iter().flatten().find_map(|h| h.leader)
}

/// Covers a crash of the founder between initializing Raft and committing the first layout:
/// the founder, restarted, builds it from the Raft members once they registered (they do so
/// as they find the cluster), waiting a bounded time for stragglers.
async fn ensure_layout(n: &Arc<Inner>) {
    const WAIT_FOR_MEMBERS: Duration = Duration::from_secs(30);
    let deadline = Instant::now() + WAIT_FOR_MEMBERS;
    let nodes = loop {
        if n.is_shut() || n.state.read(|s| s.current_layout().is_some()) {
            return;
        }
        if n.leader().map(|(id, _)| id) != Some(n.id) {
            return;
        }
        let metrics = n.metrics();
        let names: Vec<String> = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(_, node)| node.name.clone())
            .collect();
        let registered: Vec<NodeSpec> = n.state.read(|s| {
            names
                .iter()
                .filter_map(|name| {
                    s.nodes.get(name).map(|info| NodeSpec {
                        name: name.clone(),
                        zone: info.zone.clone(),
                        drives: crate::drive_specs(info),
                    })
                })
                .collect()
        });
        if registered.len() == names.len() || Instant::now() >= deadline {
            break registered;
        }
        tokio::time::sleep(POLL).await;
    };
    let redundancy = initial_redundancy(n, nodes.len());
    tracing::info!(
        nodes = nodes.len(),
        "no layout committed yet: proposing the initial layout"
    );
    propose_initial_layout(
        n,
        Layout {
            version: 1,
            redundancy,
            nodes,
            slots: None,
        },
    )
    .await;
}

async fn retry_until_shut<F, Fut>(n: &Inner, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    while !n.is_shut() {
        match f().await {
            Ok(()) => return,
            Err(e) => tracing::info!(error = %e, "{what}: retrying"),
        }
        tokio::time::sleep(POLL).await;
    }
}
