//! The server's glue between the control plane and the object service: buckets in Raft,
//! drive handles for the committed layout, replacement drives, and the RPC listener.

use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;

use ringstore_cluster::{Cluster, Error as ClusterError, MemberInfo};
use ringstore_meta::Rejection;
use ringstore_object::{BucketRecord, Catalog, Error, ObjectStore, Result};
use ringstore_ring::Layout;
use ringstore_rpc::{Client, DriveHandle, RemoteDrive};
use ringstore_store::Drive;

/// Buckets kept in the Raft control plane; on a single node copied to every drive before a
/// change is acknowledged (see `mirror`).
pub struct RaftCatalog(pub Cluster, pub Option<Arc<crate::mirror::Mirror>>);

impl RaftCatalog {
    async fn copied(&self) {
        if let Some(m) = &self.1 {
            m.save().await;
        }
    }
}

fn map_err(e: ClusterError) -> Error {
    match e {
        ClusterError::Rejected(Rejection::BucketExists(_)) => Error::BucketExists,
        ClusterError::Rejected(Rejection::NoSuchBucket(_)) => Error::NoSuchBucket,
        e => Error::Quorum(format!("control plane: {e}")),
    }
}

#[async_trait::async_trait]
impl Catalog for RaftCatalog {
    async fn get(&self, name: &str) -> Result<Option<BucketRecord>> {
        let b = self.0.bucket(name).await.map_err(map_err)?;
        Ok(b.map(|b| BucketRecord {
            name: name.to_string(),
            created_nanos: b.created_nanos,
        }))
    }

    async fn list(&self) -> Result<Vec<BucketRecord>> {
        let all = self.0.list_buckets().await.map_err(map_err)?;
        Ok(all
            .into_iter()
            .map(|(name, b)| BucketRecord {
                name,
                created_nanos: b.created_nanos,
            })
            .collect())
    }

    async fn create(&self, rec: &BucketRecord) -> Result<()> {
        self.0
            .create_bucket(&rec.name, rec.created_nanos)
            .await
            .map_err(map_err)?;
        self.copied().await;
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.0.delete_bucket(name).await.map_err(map_err)?;
        self.copied().await;
        Ok(())
    }
}

/// One handle per drive of `layout`, in layout order, then one per drive that only the
/// `older` layouts still in use have (being drained): this node's drives locally, the others
/// through their node's RPC address.
pub fn handles(
    layout: &Layout,
    me: &str,
    local: &[Arc<Drive>],
    members: &[MemberInfo],
    client: &Client,
    older: &[Layout],
) -> Vec<DriveHandle> {
    let handle = |node: &str, id: &str| {
        let here = (node == me)
            .then(|| local.iter().find(|l| l.id() == id))
            .flatten();
        match here {
            Some(l) => DriveHandle::Local(l.clone()),
            None => {
                let addr = members
                    .iter()
                    .find(|m| m.name == node)
                    .map(|m| m.rpc_addr.clone())
                    .unwrap_or_default();
                DriveHandle::Remote(Arc::new(RemoteDrive::new(
                    id.to_string(),
                    node.to_string(),
                    addr,
                    client.clone(),
                )))
            }
        }
    };
    let mut out = Vec::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for node in &layout.nodes {
        for d in &node.drives {
            seen.insert(&d.id);
            out.push(handle(&node.name, &d.id));
        }
    }
    // drives being drained: older layouts in use still place data on them
    for old in older.iter().filter(|o| o.version < layout.version) {
        for node in &old.nodes {
            for d in &node.drives {
                if seen.insert(&d.id) {
                    out.push(handle(&node.name, &d.id));
                }
            }
        }
    }
    out
}

/// Gives empty local drives the identities of this node's drives that the layout names but
/// that are not here (disks replaced after a failure). Returns the drives and the adopted ids.
pub fn adopt_replacements(
    layout: &Layout,
    me: &str,
    drives: Vec<Drive>,
) -> anyhow::Result<(Vec<Drive>, Vec<String>)> {
    let Some(node) = layout.nodes.iter().find(|n| n.name == me) else {
        return Ok((drives, vec![]));
    };
    let mut missing: Vec<&str> = node
        .drives
        .iter()
        .map(|d| d.id.as_str())
        .filter(|id| !drives.iter().any(|l| l.id() == *id))
        .collect();
    let mut adopted = Vec::new();
    let mut out = Vec::with_capacity(drives.len());
    for drive in drives {
        let known = node.drives.iter().any(|d| d.id == drive.id());
        if missing.is_empty() || known || !drive.is_empty()? {
            out.push(drive);
            continue;
        }
        let id = missing.remove(0).to_string();
        let path = drive.root().display().to_string();
        out.push(drive.adopt_identity(&id)?);
        tracing::warn!(drive = %path, id = %id,
            "empty drive replaces a drive of this node that the layout names; its data will be rebuilt");
        adopted.push(id);
    }
    Ok((out, adopted))
}

/// Keeps the object service on the newest committed layout, and its drive handles on the
/// members' current addresses (a node may come back under a new address). `rx` is the
/// receiver the store's layout was read from, so no commit in between is missed.
pub fn follow_layout(
    store: ObjectStore,
    cluster: Cluster,
    me: String,
    client: Client,
    mut rx: tokio::sync::watch::Receiver<Option<Layout>>,
) {
    let addresses = |members: &[MemberInfo]| -> Vec<(String, String)> {
        let mut a: Vec<_> = members
            .iter()
            .map(|m| (m.name.clone(), m.rpc_addr.clone()))
            .collect();
        a.sort();
        a
    };
    tokio::spawn(async move {
        let mut known = addresses(&cluster.status().members);
        // what the view depends on besides the layout: the layouts kept, and where writes go
        let versions = |c: &Cluster, current: u64| -> (Vec<u64>, Option<u64>) {
            let kept = c.layout_history().iter().map(|l| l.version).collect();
            (kept, writes_on(c, current))
        };
        let mut kept = versions(&cluster, store.layout_version());
        // a layout committed after the store was built but before this task subscribed
        rx.mark_changed();
        loop {
            let changed = tokio::select! {
                r = rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    true
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            let members = cluster.status().members;
            let now = addresses(&members);
            let layout = rx.borrow_and_update().clone();
            let Some(layout) = layout else { continue };
            let newer = layout.version > store.layout_version();
            // a transition that syncs sends writes to the new layout's places, and one that
            // finishes retires older layouts: lookups stop asking their places
            let history = versions(&cluster, layout.version);
            if !newer && now == known && history == kept {
                continue;
            }
            if !changed && !newer && now != known {
                tracing::info!("a member's address changed; reconnecting its drives");
            }
            known = now;
            let writes = history.1;
            kept = history;
            let older = cluster.layout_history();
            let handles = handles(&layout, &me, store.local_drives(), &members, &client, &older);
            let version = layout.version;
            match store.set_layout(layout, handles, &older, writes) {
                Ok(()) if newer => tracing::info!(version, "now placing data with a new layout"),
                Ok(()) => {}
                Err(e) => tracing::error!(version, error = %e, "cannot use the committed layout"),
            }
        }
    });
}

/// Where a node placing data with layout `current` writes new versions: where the newest
/// older layout kept places them until the transition to `current` has synced (every node
/// reads both places), so that nodes that have seen `current` and nodes that have not yet
/// write to one set of drives; then where `current` places them. (See ARCHITECTURE.md,
/// Layout transitions.)
pub fn writes_on(cluster: &Cluster, current: u64) -> Option<u64> {
    let synced = cluster
        .transition()
        .is_some_and(|t| t.to == current && t.phase != ringstore_cluster::Phase::Syncing);
    if synced {
        return None;
    }
    cluster
        .layout_history()
        .iter()
        .map(|l| l.version)
        .filter(|v| *v < current)
        .max()
}

/// Asks every other member to walk its objects now, so that what this node missed (or lost
/// with a replaced drive) is rebuilt without waiting for the periodic scrub.
pub async fn request_heal_everywhere(cluster: &Cluster, client: &Client) {
    let me = cluster.status().node_name;
    ask_to_heal(cluster, client, |name, _| name != me).await
}

/// Asks the members that `ask(name, rpc address)` selects to walk their objects now.
async fn ask_to_heal(cluster: &Cluster, client: &Client, ask: impl Fn(&str, &str) -> bool) {
    for m in cluster
        .status()
        .members
        .into_iter()
        .filter(|m| ask(&m.name, &m.rpc_addr))
    {
        let r: std::result::Result<(), _> = client.call(&m.rpc_addr, "/heal/scrub", &()).await;
        if let Err(e) = r {
            tracing::warn!(node = %m.name, error = %e, "could not ask a node to heal");
        }
    }
}

/// Asks every member but the one at RPC address `except` (this node included; members
/// this node avoids are skipped too) to walk its objects now: what that node missed while
/// it was left out is rebuilt on it.
pub async fn request_heal(cluster: &Cluster, client: &Client, except: &str) {
    ask_to_heal(cluster, client, |_, addr| addr != except && !client.is_down(addr)).await
}

/// How long start-up waits between reports while the cluster forms.
pub const FORMING_REPORT: Duration = Duration::from_secs(10);

/// This node's own RPC endpoints beside the drives and Raft:
/// - `POST /rpc/v1/heal/scrub`: a peer asks this node to walk its objects now (a drive came
///   back empty); answers at once, the walk runs in the background, one at a time. A request
///   that arrives during a walk gets a walk of its own after it: the running one may have
///   passed the asking node's objects while it was still down;
/// - `POST /rpc/v1/node/drives`: this node's drives and their state, for `admin status`.
/// - `POST /rpc/v1/node/settled`: versions a peer saw settle on a write quorum
///   ([`share_settled`]).
pub fn node_router(target: Arc<std::sync::OnceLock<(ObjectStore, u32)>>) -> axum::Router {
    let running = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let again = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drives_target = target.clone();
    let settled_target = target.clone();
    axum::Router::new()
        .route(
            &format!("{}/heal/scrub", ringstore_rpc::PREFIX),
            axum::routing::post(move || {
                let (target, running, again) = (target.clone(), running.clone(), again.clone());
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    if let Some((store, rate)) = target.get().cloned() {
                        again.store(true, SeqCst);
                        if !running.swap(true, SeqCst) {
                            tokio::spawn(async move {
                                loop {
                                    while again.swap(false, SeqCst) {
                                        tracing::info!("healing pass requested by a peer");
                                        match store.scrub(rate).await {
                                            Ok(n) => tracing::info!(objects = n, stats = ?store.heal_stats(), "healing pass finished"),
                                            Err(e) => tracing::warn!(error = %e, "healing pass failed"),
                                        }
                                    }
                                    running.store(false, SeqCst);
                                    // a request between the last check and the store above
                                    if !again.load(SeqCst) || running.swap(true, SeqCst) {
                                        break;
                                    }
                                }
                            });
                        }
                    }
                    ringstore_rpc::encode(&())
                }
            }),
        )
        .route(
            &format!("{}/node/drives", ringstore_rpc::PREFIX),
            axum::routing::post(move || {
                let target = drives_target.clone();
                async move {
                    let drives = match target.get() {
                        Some((store, _)) => crate::admin::local_drives(store).await,
                        None => vec![],
                    };
                    ringstore_rpc::encode(&drives)
                }
            }),
        )
        .route(
            &format!("{}/node/settled", ringstore_rpc::PREFIX),
            axum::routing::post(move |body: bytes::Bytes| {
                let target = settled_target.clone();
                async move {
                    match ringstore_rpc::decode(&body) {
                        Ok(notes) => {
                            if let Some((store, _)) = target.get() {
                                store.accept_settled(notes);
                            }
                            ringstore_rpc::encode(&()).into_response()
                        }
                        Err(e) => (http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
                    }
                }
            }),
        )
}

/// How often a node shares the versions it saw settle on a write quorum. Every 10 ms cost
/// 4 KiB PUTs about a fifth more server CPU in the cluster benchmark (three calls a batch,
/// a hundred batches a second, beside some 1,500 drive calls); a read that comes sooner
/// than the note only asks a write quorum.
const SHARE_SETTLED_EVERY: Duration = Duration::from_millis(100);

/// Shares, every tenth of a second, the versions this node saw settle on a write quorum with
/// the other nodes (`POST /rpc/v1/node/settled`), so that their lookups of those keys can
/// stop at a read quorum. Best effort: a lost batch only makes some reads ask more drives.
pub fn share_settled(store: ObjectStore, client: Client) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SHARE_SETTLED_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // one call in flight per peer at most: a peer that hangs gets no pile of calls
        // (its notes are dropped meanwhile, which only costs its reads a larger quorum)
        let mut busy: std::collections::HashMap<String, Arc<std::sync::atomic::AtomicBool>> =
            Default::default();
        loop {
            tick.tick().await;
            let notes = store.take_settled();
            if notes.is_empty() {
                continue;
            }
            let body = ringstore_rpc::encode(&notes);
            for addr in store.peer_addrs().into_iter().filter(|a| !client.is_down(a)) {
                let flag = busy.entry(addr.clone()).or_default().clone();
                if flag.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    continue;
                }
                let (client, body) = (client.clone(), body.clone());
                tokio::spawn(async move {
                    if let Err(e) = client.call_raw(&addr, "/node/settled", body).await {
                        tracing::debug!(peer = %addr, error = %e, "could not share settled versions");
                    }
                    flag.store(false, std::sync::atomic::Ordering::Release);
                });
            }
        }
    });
}

/// Buckets that a single node kept in its drives' tables before the control plane held
/// them are copied into it once, so upgrading a single-node store keeps its buckets.
pub async fn import_legacy_buckets(store: &ObjectStore, local: &[Arc<Drive>]) {
    let mut legacy = std::collections::BTreeMap::new();
    for d in local {
        if let Ok(entries) = d.scan(ringstore_store::Table::Buckets, b"", None, usize::MAX) {
            for (k, _) in entries {
                legacy.insert(String::from_utf8_lossy(&k).into_owned(), k);
            }
        }
    }
    for (name, key) in legacy {
        match store.create_bucket(&name).await {
            Ok(_) | Err(Error::BucketExists) => {
                tracing::info!(bucket = %name, "bucket moved into the control plane");
                for d in local {
                    let _ = d
                        .commit(vec![ringstore_store::Op::Delete {
                            table: ringstore_store::Table::Buckets,
                            key: key.clone(),
                        }])
                        .await;
                }
            }
            Err(e) => {
                tracing::warn!(bucket = %name, error = %e, "could not move a bucket into the control plane")
            }
        }
    }
}

/// Serves the internal RPC: HTTP/2 (prior knowledge) with flow-control windows large enough
/// for many concurrent shard streams, and the peer address recorded for the auth log; and
/// on the same port the data channel, for connections that start with its magic (an
/// HTTP/2 connection starts with `PRI`).
pub async fn serve_rpc(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    data: ringstore_rpc::DataService,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(32 << 20)
        .max_frame_size(1 << 20)
        .max_concurrent_streams(1024)
        // a node resumed after a hang finds many calls its peers gave up on (reset streams)
        // queued on each connection: that is expected, not an attack to cut the line for
        .max_pending_accept_reset_streams(1024)
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "RPC accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (router, builder, data) = (router.clone(), builder.clone(), data.clone());
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await;
            if let Ok(Ok(1)) = peeked
                && first[0] == ringstore_rpc::data::MAGIC[0]
            {
                return data.serve(stream, peer).await;
            }
            let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                router.clone().oneshot(req.map(axum::body::Body::new))
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, %peer, "RPC connection ended with an error");
            }
        });
    }
}
