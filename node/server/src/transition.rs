//! Drives layout transitions on this node: starts one when a new layout is committed, waits
//! until every member places data with it (and runs nothing placed by an older one), moves
//! the objects of the partitions this node is the mover of, records them done in Raft, and
//! finishes the transition when every partition is done.
//!
//! A partition's mover is the node holding slot 0 of it in the new layout. It reads the keys
//! of the partition from every drive where an older layout in use placed it, moves each
//! object ([`ObjectStore::move_object`]) at most `concurrency` at a time and within the
//! throttle's bytes per second, and marks the partition done only when every one of its
//! objects moved. A node that restarts reads the progress from Raft and starts again with
//! the partitions not done, redoing at most the objects it had in flight.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ringstore_cluster::{Cluster, TransitionState};
use ringstore_object::{MoveStats, ObjectStore};
use ringstore_rpc::Client;
use serde::{Deserialize, Serialize};

/// Partitions moved per round: their keys are read in one pass over each drive.
const BATCH: usize = 64;
/// How often the driver looks at the transition's state when there is nothing to do.
const POLL: Duration = Duration::from_secs(1);

/// What a node answers `POST /rpc/v1/node/layout`: the layout it places data with, whether
/// nothing it runs still uses an older one, and what its mover did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeLayout {
    pub version: u64,
    /// The layout new versions are written by (an older one while a transition syncs).
    #[serde(default)]
    pub writes_on: u64,
    pub drained: bool,
    pub moved: MoveStats,
    /// Partitions this node is the mover of in the running transition, and how many of them
    /// are done.
    pub partitions: u32,
    pub partitions_done: u32,
    /// What the mover waits for, if anything.
    pub waiting: Option<String>,
    /// How long this node wishes movers to wait before each object, in milliseconds,
    /// because its S3 requests are slower than before the transition ([`crate::pace`]).
    #[serde(default)]
    pub backoff_ms: u64,
}

/// This node's view of its part of the running transition, for `node/layout` and status.
#[derive(Default)]
pub struct Driver {
    state: Mutex<DriverState>,
    /// Foreground latency, which moving backs off from.
    pub pace: crate::pace::Pace,
}

#[derive(Default, Clone)]
struct DriverState {
    partitions: u32,
    done: u32,
    waiting: Option<String>,
    /// The transition this node last took part in and its mover's counters when this
    /// process first saw it: what it moved for that transition is the difference (since
    /// the process started, if it restarted during the transition). Kept once the
    /// transition finished, so that its figures stay readable.
    baseline: Option<(u64, MoveStats)>,
}

impl Driver {
    pub fn report(&self, store: &ObjectStore) -> NodeLayout {
        let s = self.state.lock().expect("not poisoned").clone();
        NodeLayout {
            version: store.layout_version(),
            writes_on: store.writes_on(),
            drained: store.older_views_drained(),
            moved: match &s.baseline {
                Some((_, base)) => store.move_stats().since(base),
                None => MoveStats::default(),
            },
            partitions: s.partitions,
            partitions_done: s.done,
            waiting: s.waiting,
            backoff_ms: self.pace.delay().as_millis() as u64,
        }
    }

    fn set(&self, f: impl FnOnce(&mut DriverState)) {
        f(&mut self.state.lock().expect("not poisoned"))
    }
}

/// `POST /rpc/v1/node/layout`: this node's [`NodeLayout`], once its object service runs.
pub fn router(target: Arc<std::sync::OnceLock<(ObjectStore, u32)>>, driver: Arc<Driver>) -> axum::Router {
    axum::Router::new().route(
        &format!("{}/node/layout", ringstore_rpc::PREFIX),
        axum::routing::post(move || {
            let (target, driver) = (target.clone(), driver.clone());
            async move {
                use axum::response::IntoResponse;
                match target.get() {
                    Some((store, _)) => ringstore_rpc::encode(&driver.report(store)).into_response(),
                    None => (http::StatusCode::SERVICE_UNAVAILABLE, "starting").into_response(),
                }
            }
        }),
    )
}

/// Runs the transition driver of this node in the background.
pub fn spawn(store: ObjectStore, cluster: Cluster, client: Client, me: String, driver: Arc<Driver>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            if let Err(e) = step(&store, &cluster, &client, &me, &driver).await {
                tracing::warn!(error = %e, "layout transition: will try again");
                driver.set(|s| s.waiting = Some(e));
            }
        }
    });
}

/// One look at the transition: start it, wait, move a batch, or finish it.
async fn step(
    store: &ObjectStore,
    cluster: &Cluster,
    client: &Client,
    me: &str,
    driver: &Driver,
) -> Result<(), String> {
    let current = store.layout_version();
    let transition = cluster.transition();
    let Some(t) = transition.filter(|t| t.to >= current) else {
        // a layout newer than the last transition: start moving onto it from the one before,
        // if an older layout is still kept (the first layout has none)
        let history = cluster.layout_history();
        let Some(from) = history.iter().rev().find(|l| l.version < current) else {
            return Ok(());
        };
        if history.last().map(|l| l.version) != Some(current) {
            return Ok(()); // this node has not switched to the newest layout yet
        }
        if cluster.status().role != ringstore_cluster::Role::Leader {
            return Ok(()); // one node proposes it; a rejected duplicate would be harmless
        }
        let kind = match history
            .last()
            .map(|to| ringstore_ring::Transition::between(from, to))
        {
            Some(Ok(plan)) => {
                tracing::info!(
                    from = from.version,
                    to = current,
                    kind = ?plan.kind,
                    slots = plan.moved_slots(),
                    minimum = plan.minimum_slots(),
                    "starting a layout transition"
                );
                serde_json::to_value(plan.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        return cluster
            .start_transition(from.version, current, &kind)
            .await
            .map_err(|e| format!("could not start the transition: {e}"));
    };
    if driver
        .state
        .lock()
        .expect("not poisoned")
        .baseline
        .as_ref()
        .map(|b| b.0)
        != Some(t.to)
    {
        let base = store.move_stats();
        driver.set(|s| s.baseline = Some((t.to, base)));
    }
    if !t.is_running() {
        driver.set(|s| {
            *s = DriverState {
                baseline: s.baseline.take(),
                ..Default::default()
            }
        });
        return Ok(());
    }
    if t.to != current {
        return Ok(()); // this node does not place data with the new layout yet
    }
    if t.done_count() == t.partitions {
        if cluster.status().role == ringstore_cluster::Role::Leader {
            tracing::info!(to = t.to, "every partition is moved; finishing the transition");
            cluster
                .finish_transition(t.to)
                .await
                .map_err(|e| format!("could not finish the transition: {e}"))?;
        }
        return Ok(());
    }
    let mine: Vec<u32> = (0..t.partitions)
        .filter(|p| store.partition_mover(*p) == me)
        .collect();
    let done = mine.iter().filter(|p| t.is_done(**p)).count() as u32;
    driver.set(|s| {
        s.partitions = mine.len() as u32;
        s.done = done;
    });
    if t.phase == ringstore_cluster::Phase::Syncing {
        // every node must read both layouts' places before any writes where `to` does
        if let Err(why) = not_synced(store, cluster, client, me, t.to, t.from).await {
            driver.set(|s| s.waiting = Some(why));
            return Ok(());
        }
        driver.set(|s| s.waiting = None);
        if cluster.status().role == ringstore_cluster::Role::Leader {
            tracing::info!(
                to = t.to,
                "every node reads both layouts; writes move to the new one"
            );
            cluster
                .transition_synced(t.to)
                .await
                .map_err(|e| format!("could not record the transition synced: {e}"))?;
        }
        return Ok(());
    }
    if t.paused {
        driver.set(|s| s.waiting = Some("paused".into()));
        return Ok(());
    }
    // and nothing moves before every node writes where `to` places data
    if let Err(why) = not_synced(store, cluster, client, me, t.to, t.to).await {
        driver.set(|s| s.waiting = Some(why));
        return Ok(());
    }
    driver.set(|s| s.waiting = None);
    let todo: Vec<u32> = mine.into_iter().filter(|p| !t.is_done(*p)).collect();
    if todo.is_empty() {
        return Ok(());
    }
    // partitions no layout in use places elsewhere have nothing to move
    let (quiet, busy): (Vec<u32>, Vec<u32>) = todo.into_iter().partition(|p| !store.partition_moves(*p));
    if !quiet.is_empty() {
        cluster
            .transition_done(t.to, quiet)
            .await
            .map_err(|e| format!("could not record partitions done: {e}"))?;
    }
    // partitions are moved by nodes of the current layout only
    let movers = store.layout().nodes.len().max(1) as u64;
    for batch in busy.chunks(BATCH) {
        // a node that restarted meanwhile may have come back on an older view (found in
        // review): nothing moves until every node writes by `to` again
        let wish = match not_synced(store, cluster, client, me, t.to, t.to).await {
            Ok(wish) => wish,
            Err(why) => {
                driver.set(|s| s.waiting = Some(why));
                return Ok(());
            }
        };
        driver.pace.set_moving(true);
        let (moved, uploads) = move_batch(store, &t, batch, movers, &driver.pace, wish).await;
        driver.pace.set_moving(false);
        if uploads > 0 {
            driver.set(|s| {
                s.waiting = Some(format!(
                    "{uploads} open multipart uploads stored with the old redundancy: their \
                     partitions are re-encoded once they are completed or aborted"
                ))
            });
        }
        if !moved.is_empty() {
            cluster
                .transition_done(t.to, moved)
                .await
                .map_err(|e| format!("could not record partitions done: {e}"))?;
        }
        // pause, throttle and a finished or replaced transition take effect between batches
        match cluster.transition() {
            Some(now) if now.to == t.to && now.is_running() && !now.paused => {}
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// Why the transition cannot go on yet: a member does not answer, has another view than
/// layout `to` with writes on layout `writes`, or still runs operations that started with
/// an older view. A node stopped across the start of a transition thus holds it up instead
/// of writing where the old layout placed data after objects moved. When it can go on: the
/// longest wait before each object that a member wishes ([`crate::pace`]).
async fn not_synced(
    store: &ObjectStore,
    cluster: &Cluster,
    client: &Client,
    me: &str,
    to: u64,
    writes: u64,
) -> Result<Duration, String> {
    let check = |name: &str, l: &NodeLayout| -> Option<String> {
        if l.version != to || l.writes_on != writes {
            return Some(format!(
                "{name} places data with layout {} writing by {}, not {to} writing by {writes}",
                l.version, l.writes_on
            ));
        }
        (!l.drained).then(|| format!("{name} still runs operations that started with an older layout view"))
    };
    let mine = NodeLayout {
        version: store.layout_version(),
        writes_on: store.writes_on(),
        drained: store.older_views_drained(),
        moved: Default::default(),
        partitions: 0,
        partitions_done: 0,
        waiting: None,
        backoff_ms: 0,
    };
    if let Some(why) = check(me, &mine) {
        return Err(why);
    }
    let mut wish = Duration::ZERO;
    // members no layout in use places data on (drained, or not added yet) take no part
    let placed = placed_nodes(store, cluster);
    for m in cluster
        .status()
        .members
        .into_iter()
        .filter(|m| m.name != me && placed.contains(&m.name))
    {
        let r: Result<NodeLayout, _> = client.call(&m.rpc_addr, "/node/layout", &()).await;
        match r {
            Ok(l) => {
                if let Some(why) = check(&m.name, &l) {
                    return Err(why);
                }
                wish = wish.max(Duration::from_millis(l.backoff_ms));
            }
            Err(e) => return Err(format!("{} does not answer ({e})", m.name)),
        }
    }
    Ok(wish)
}

/// Names of the nodes that the current layout or an older one still in use places data on.
fn placed_nodes(store: &ObjectStore, cluster: &Cluster) -> BTreeSet<String> {
    let mut layouts = cluster.layout_history();
    layouts.push(store.layout());
    layouts
        .iter()
        .flat_map(|l| l.nodes.iter().map(|n| n.name.clone()))
        .collect()
}

/// Moves every object of `partitions`, within this node's share (one of `movers`) of the
/// throttle's bytes per second; returns the partitions whose objects all moved, and how
/// many open uploads a re-encoding waits for.
async fn move_batch(
    store: &ObjectStore,
    t: &TransitionState,
    partitions: &[u32],
    movers: u64,
    pace: &crate::pace::Pace,
    wish: Duration,
) -> (Vec<u32>, usize) {
    let mut bitmap = vec![0u8; t.partitions.div_ceil(8) as usize];
    let mut drives: BTreeSet<String> = BTreeSet::new();
    for p in partitions {
        bitmap[(p / 8) as usize] |= 1 << (p % 8);
        drives.extend(store.older_drives_of(*p));
    }
    let mut failed: BTreeSet<u32> = BTreeSet::new();
    // objects, then open multipart uploads (`Some(upload id)`), which move too
    let mut keys: BTreeSet<(String, String, Option<String>)> = BTreeSet::new();
    for d in &drives {
        let listed = async {
            let objects = store.partition_keys(d, &bitmap).await?;
            let uploads = store.partition_uploads(d, &bitmap).await?;
            Ok::<_, ringstore_object::Error>((objects, uploads))
        };
        match listed.await {
            Ok((objects, uploads)) => {
                keys.extend(objects.into_iter().map(|(b, k)| (b, k, None)));
                keys.extend(uploads.into_iter().map(|(b, k, u)| (b, k, Some(u))));
            }
            Err(e) => {
                // without this drive's keys no partition of the batch can be called done
                tracing::warn!(drive = %d, error = %e, "layout transition: could not list a drive's keys");
                return (vec![], 0);
            }
        }
    }
    let throttle = t.throttle;
    // (a bounded rate stays bounded however many nodes share it)
    let rate = match throttle.bytes_per_sec {
        0 => 0,
        r => (r / movers).max(1),
    };
    let started = Instant::now();
    let moved_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let results = futures::stream::iter(keys)
        .map(|(bucket, key, upload)| {
            let moved_bytes = moved_bytes.clone();
            async move {
                // back off while foreground requests here, or on the nodes asked before the
                // batch, are slower than before the transition
                let wait = wish.max(pace.delay());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let r = store.move_counted(&bucket, &key, upload.as_deref()).await;
                if let Ok(m) = &r {
                    let total =
                        moved_bytes.fetch_add(m.bytes, std::sync::atomic::Ordering::Relaxed) + m.bytes;
                    // within the bytes per second: wait until the bytes so far are due
                    if rate > 0 {
                        let due = Duration::from_secs_f64(total as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                (bucket, key, r)
            }
        })
        .buffer_unordered(throttle.concurrency.max(1) as usize)
        .collect::<Vec<_>>()
        .await;
    let (mut looked, mut switched, mut bytes, mut uploads) = (0usize, 0usize, 0u64, 0usize);
    for (bucket, key, r) in results {
        looked += 1;
        match r {
            Ok(m) => {
                switched += usize::from(m.switched);
                bytes += m.bytes;
            }
            Err(ringstore_object::Error::UploadOpen(e)) => {
                tracing::info!(%bucket, %key, "layout transition: {e}");
                uploads += 1;
                failed.insert(ringstore_ring::partition_of(&bucket, &key));
            }
            Err(e) => {
                tracing::warn!(%bucket, %key, error = %e, "layout transition: object not moved yet");
                failed.insert(ringstore_ring::partition_of(&bucket, &key));
            }
        }
    }
    if looked > 0 {
        tracing::info!(
            partitions = partitions.len(),
            objects = looked,
            switched,
            bytes,
            failed = failed.len(),
            "layout transition: moved a batch of partitions"
        );
    }
    let done = partitions
        .iter()
        .copied()
        .filter(|p| !failed.contains(p))
        .collect();
    (done, uploads)
}
