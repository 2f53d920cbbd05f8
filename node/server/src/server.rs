//! `ringstore server`: open the drives, start background healing, serve until SIGTERM.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ringstore_object::ObjectStore;
use ringstore_s3::RingstoreS3;
use ringstore_store::Drive;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

use crate::config::ServerArgs;
use crate::http::{AppState, Readiness, router};
use crate::metrics::Metrics;

pub async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let started = SystemTime::now();
    if args.data.is_empty() {
        bail!("at least one --data folder is required");
    }
    let mut seen = std::collections::HashSet::new();
    for d in &args.data {
        let canonical = std::fs::create_dir_all(d).and_then(|_| d.canonicalize());
        let canonical = canonical.with_context(|| format!("cannot use data folder {}", d.display()))?;
        if !seen.insert(canonical) {
            bail!("data folder {} is given twice", d.display());
        }
    }
    let mut drives = Vec::with_capacity(args.data.len());
    let mut ids = std::collections::HashSet::new();
    for d in &args.data {
        let drive = Drive::open(d).with_context(|| format!("cannot open drive {}", d.display()))?;
        if !ids.insert(drive.id().to_string()) {
            bail!(
                "drive {} is a copy of another drive (same drive id {})",
                d.display(),
                drive.id()
            );
        }
        drives.push(drive);
    }
    let clustered = !args.seeds.is_empty();
    if clustered && args.rpc_address.is_none() {
        bail!("--seeds needs --rpc-address: the address this node serves cluster traffic on");
    }
    let advertise = advertised_rpc(&args)?;
    let secret = match (&args.cluster_secret, clustered || args.rpc_address.is_some()) {
        (Some(s), _) if s.len() < 16 => bail!("RINGSTORE_CLUSTER_SECRET must be at least 16 characters"),
        (Some(s), _) => s.clone(),
        (None, true) => {
            bail!("a cluster needs a shared secret: set RINGSTORE_CLUSTER_SECRET (the same on every node)")
        }
        (None, false) => hex::encode(rand::random::<[u8; 16]>()),
    };
    if !clustered
        && let Some(r) = args.redundancy
        && r.width() > drives.len()
    {
        bail!(
            "redundancy {r} needs {} drives but {} --data folders were given",
            r.width(),
            drives.len()
        );
    }
    let creds = if clustered {
        crate::credentials::from_env()?.context(
            "in a cluster every node needs the same S3 keys: set RINGSTORE_ACCESS_KEY and RINGSTORE_SECRET_KEY",
        )?
    } else {
        crate::credentials::load(&args.data)?
    };

    // the HTTP listener comes up first so that liveness probes pass while the cluster forms
    let ready = Readiness::default();
    let metrics = Arc::new(Metrics::new());
    let app: Arc<std::sync::OnceLock<axum::Router>> = Default::default();
    let starting = crate::http::starting_router(ready.clone());
    let listener = TcpListener::bind(args.address)
        .await
        .with_context(|| format!("cannot listen on {}", args.address))?;

    let client = ringstore_rpc::Client::new(ringstore_rpc::ClusterAuth::new(&secret));
    let drive_service =
        ringstore_rpc::DriveService::new([]).with_attach(std::sync::Arc::new(ringstore_object::first_window));
    let cluster = ringstore_cluster::Cluster::start(
        ringstore_cluster::ClusterConfig {
            node_name: args.node_name.clone(),
            rpc_addr: advertise.clone(),
            zone: args.zone.clone(),
            drives: drives
                .iter()
                .map(|d| ringstore_ring::DriveSpec {
                    id: d.id().to_string(),
                    weight: capacity_weight(d),
                })
                .collect(),
            seeds: args.seeds.clone(),
            redundancy: args.redundancy,
            data_dir: args.data[0].join(".ringstore"),
            restore: lost_control_plane(&args),
        },
        // Raft gets its own connections, so heartbeats never queue behind shard streams
        ringstore_rpc::Client::new(client.auth().clone()),
    )
    .await
    .context("cannot start the control plane")?;
    let heal_target: Arc<std::sync::OnceLock<(ObjectStore, u32)>> = Default::default();
    let transitions: Arc<crate::transition::Driver> = Default::default();
    if let Some(rpc) = args.rpc_address {
        let router = ringstore_rpc::drive_router(drive_service.clone())
            .merge(cluster.router())
            .merge(crate::cluster::node_router(heal_target.clone()))
            .merge(crate::transition::router(
                heal_target.clone(),
                transitions.clone(),
            ))
            .route_layer(axum::middleware::from_fn_with_state(
                metrics.clone(),
                Metrics::count_rpc,
            ));
        let router = client.auth().clone().layer(router);
        let rpc_listener = TcpListener::bind(rpc)
            .await
            .with_context(|| format!("cannot listen on --rpc-address {rpc}"))?;
        let counted = metrics.clone();
        let data = ringstore_rpc::DataService::new(drive_service.clone(), client.auth().clone()).counting(
            Arc::new(move |route, method| counted.count_rpc_route(route, method)),
        );
        tokio::spawn(crate::cluster::serve_rpc(rpc_listener, router, data));
        tracing::info!(rpc = %rpc, advertise = %advertise, seeds = ?args.seeds, "serving cluster RPC");
        // a peer that hung and answers again missed the writes that left it out: every
        // other node (this one included) walks its objects, which rebuilds them there
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        client.on_recovered(move |peer| {
            let _ = tx.send(peer.to_string());
        });
        let (cluster, client) = (cluster.clone(), client.clone());
        tokio::spawn(async move {
            while let Some(peer) = rx.recv().await {
                tracing::info!(peer, "a peer that hung answers again: healing what it missed");
                crate::cluster::request_heal(&cluster, &client, &peer).await;
            }
        });
    }

    let startup = {
        let (args, ready, metrics, app, cluster, client) = (
            args.clone(),
            ready.clone(),
            metrics.clone(),
            app.clone(),
            cluster.clone(),
            client.clone(),
        );
        tokio::spawn(async move {
            let built = join_cluster(&args, drives, &cluster, &client, &drive_service).await;
            let store = match built {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "cannot start the object service");
                    std::process::exit(1);
                }
            };
            let _ = heal_target.set((store.clone(), args.scrub_rate));
            let mut builder = S3ServiceBuilder::new(RingstoreS3::new(store.clone(), args.region.clone()));
            builder.set_auth(ringstore_s3::KeyAuth::single(
                creds.access_key.as_str(),
                creds.secret_key.as_str(),
            ));
            builder.set_access(crate::metrics::OperationProbe);
            if !args.domains.is_empty()
                && let Ok(hosts) = ringstore_s3::VirtualHosts::new(&args.domains)
            {
                builder.set_host(hosts);
            }
            let _ = app.set(router(
                builder.build(),
                AppState {
                    ready: ready.clone(),
                    metrics,
                    store: store.clone(),
                    cluster: Some(cluster.clone()),
                    client: client.clone(),
                    node_name: args.node_name.clone(),
                    admin_token: creds.secret_key.as_str().into(),
                    transitions: transitions.clone(),
                },
            ));
            spawn_background(&store, &args, started);
            crate::transition::spawn(
                store.clone(),
                cluster.clone(),
                client.clone(),
                args.node_name.clone(),
                transitions,
            );
            if args.rpc_address.is_some() {
                crate::cluster::share_settled(store.clone(), client.clone());
            }
            ready.set(true);
            tracing::info!(
                address = %args.address,
                drives = args.data.len(),
                redundancy = %store.redundancy(),
                layout_version = store.layout_version(),
                node = %args.node_name,
                "ringstore is serving S3"
            );
        })
    };
    if !args.domains.is_empty() {
        ringstore_s3::VirtualHosts::new(&args.domains)
            .map_err(anyhow::Error::msg)
            .context("invalid --domain")?;
    }
    let app = crate::http::Switch::new(app, starting);

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // small responses must not wait for delayed ACKs (Nagle)
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    ready.set(false);
    startup.abort();
    drop(listener);
    tracing::info!(
        grace_seconds = args.shutdown_grace,
        "shutting down: finishing in-flight requests"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(Duration::from_secs(args.shutdown_grace)) => {
            tracing::warn!("grace period over; exiting with requests still in flight");
        }
    }
    cluster.shutdown().await;
    Ok(())
}

/// On a single node whose first drive (with the Raft state) was replaced: the newest copy
/// of the control-plane state on the other drives.
fn lost_control_plane(args: &ServerArgs) -> Option<ringstore_cluster::ControlPlaneCopy> {
    if !args.seeds.is_empty() {
        return None;
    }
    let state = args.data[0].join(".ringstore");
    // a restore that a crash cut short is run again
    let pending = crate::mirror::restore_pending(&args.data[0]);
    if state.join("raft.redb").exists() && !pending.exists() {
        return None;
    }
    let copy = crate::mirror::newest(&args.data[1..])?;
    if let Err(e) = std::fs::write(&pending, b"") {
        tracing::warn!(error = %e, "cannot mark the control-plane restore as pending");
    }
    Some(copy)
}

/// A drive's weight in the layout: its file system's size in GiB (at least 1).
fn capacity_weight(d: &Drive) -> u64 {
    d.usage()
        .map(|(used, free)| (used + free) >> 30)
        .unwrap_or(1)
        .max(1)
}

/// Waits for the cluster to have a leader and a layout, takes over the identity of drives
/// this one replaces, and builds the object service on the committed layout.
async fn join_cluster(
    args: &ServerArgs,
    drives: Vec<Drive>,
    cluster: &ringstore_cluster::Cluster,
    client: &ringstore_rpc::Client,
    drive_service: &ringstore_rpc::DriveService,
) -> anyhow::Result<ObjectStore> {
    loop {
        match cluster.wait_ready(crate::cluster::FORMING_REPORT).await {
            Ok(()) => break,
            Err(e) => tracing::info!(reason = %e, seeds = ?args.seeds, "waiting for the cluster to form"),
        }
    }
    // a node that restarts may have applied less than it had before (the commit index is
    // not synced on every commit): it serves only once it has caught up with the cluster,
    // so that it never writes by a layout view the cluster has left behind (found in review
    // of layout transitions)
    loop {
        match cluster.catch_up().await {
            Ok(()) => break,
            Err(e) => {
                tracing::info!(reason = %e, "catching up with the control plane");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let mut layout_rx = cluster.layout();
    let layout = layout_rx
        .borrow_and_update()
        .clone()
        .context("the cluster is ready but has no layout")?;
    let (drives, adopted) = crate::cluster::adopt_replacements(&layout, &args.node_name, drives)?;
    let local: Vec<Arc<Drive>> = drives.into_iter().map(Arc::new).collect();
    drive_service.set(local.iter().cloned());
    if !adopted.is_empty() {
        cluster
            .register_drives(
                local
                    .iter()
                    .map(|d| ringstore_ring::DriveSpec {
                        id: d.id().to_string(),
                        weight: capacity_weight(d),
                    })
                    .collect(),
            )
            .await
            .context("cannot register the replacement drives")?;
    }
    let members = cluster.status().members;
    let older = cluster.layout_history();
    let handles = crate::cluster::handles(&layout, &args.node_name, &local, &members, client, &older);
    if handles.iter().all(|h| h.local().is_none()) {
        tracing::warn!("this node holds no drive of the current layout; it serves requests for the others");
    }
    // a single node keeps a copy of its control-plane state on every drive
    let mirror = args
        .seeds
        .is_empty()
        .then(|| crate::mirror::Mirror::start(cluster.clone(), &args.data));
    let catalog = Arc::new(crate::cluster::RaftCatalog(cluster.clone(), mirror));
    let writes = crate::cluster::writes_on(cluster, layout.version);
    let store = ObjectStore::with_layout(local.clone(), catalog, layout, handles, &older, writes)?;
    crate::cluster::import_legacy_buckets(&store, &local).await;
    crate::cluster::follow_layout(
        store.clone(),
        cluster.clone(),
        args.node_name.clone(),
        client.clone(),
        layout_rx,
    );
    // Writes this node missed while it was down (or everything, on a replaced drive) are
    // rebuilt by its peers: each walks the objects it holds and repairs what this node lacks.
    // A node whose drives are all new (formatted by this start, none taking over a lost
    // drive's identity) cannot have missed a write: no layout named its drives before. It
    // asks for nothing, so a new cluster (or a new node) taking traffic at once does not
    // have every peer walking the objects being written.
    let new_node = adopted.is_empty() && local.iter().all(|d| d.formatted_now());
    if !args.seeds.is_empty() && !new_node {
        let (cluster, client) = (cluster.clone(), client.clone());
        tokio::spawn(async move {
            // give the peers' drive handles a moment to see this node's address
            tokio::time::sleep(Duration::from_secs(1)).await;
            crate::cluster::request_heal_everywhere(&cluster, &client).await
        });
    }
    Ok(store)
}

/// Shard files written this long ago at least may be swept when no record names them: a
/// write coordinated by another node may still commit the record of shards it wrote here
/// before this node restarted (that node may have been stopped meanwhile).
const ORPHAN_AGE: Duration = Duration::from_secs(3600);
/// Between orphan sweeps (each reads every record of the cluster once).
const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The orphan sweep (soon after start once every drive answers, then daily) and the
/// periodic scrubber.
fn spawn_background(store: &ObjectStore, args: &ServerArgs, started: SystemTime) {
    let sweeper = store.clone();
    // on its own, a node that starts has no write in flight: what it wrote before it
    // started is done or dead, so its first sweep need not wait for shards to age
    let layout = store.layout();
    let alone = layout.nodes.len() == 1 && store.local_drives().len() == layout.drive_count();
    let mut first = alone.then_some(started);
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(2);
        loop {
            tokio::time::sleep(wait).await;
            let before = first.unwrap_or_else(|| SystemTime::now() - ORPHAN_AGE);
            match sweeper.sweep_orphans(before).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(removed = n, "removed shard files that no record names");
                    }
                    first = None;
                    wait = ORPHAN_SWEEP_EVERY;
                }
                Err(e) => {
                    // a peer still starting, or down: try again soon, then less often
                    tracing::debug!(error = %e, "orphan sweep not done");
                    wait = (wait * 2).min(Duration::from_secs(600));
                }
            }
        }
    });
    if args.scrub_interval == 0 {
        return;
    }
    let scrubber = store.clone();
    let (interval, rate) = (Duration::from_secs(args.scrub_interval), args.scrub_rate);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            match scrubber.scrub(rate).await {
                Ok(n) => tracing::info!(objects = n, stats = ?scrubber.heal_stats(), "scrub finished"),
                Err(e) => tracing::warn!(error = %e, "scrub failed"),
            }
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The RPC address peers reach this node on: `--rpc-advertise`, else `--rpc-address`
/// (`local` for a node on its own). A wildcard address (`0.0.0.0`, `::`) or port 0 would be
/// handed to peers as is and reach nothing, so it is refused here.
fn advertised_rpc(args: &ServerArgs) -> anyhow::Result<String> {
    if let Some(adv) = &args.rpc_advertise {
        let (host, port) = adv
            .rsplit_once(':')
            .with_context(|| format!("--rpc-advertise {adv} is not HOST:PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let wildcard = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if host.is_empty() || wildcard || port.parse::<u16>().map_or(true, |p| p == 0) {
            bail!("--rpc-advertise {adv} is not an address peers can reach: give this node's HOST:PORT");
        }
        return Ok(adv.clone());
    }
    match args.rpc_address {
        None => Ok("local".to_string()),
        Some(a) if a.ip().is_unspecified() || a.port() == 0 => bail!(
            "--rpc-address {a} cannot be advertised to peers (it is not an address they can \
             reach): set --rpc-advertise to the HOST:PORT other nodes reach this node on"
        ),
        Some(a) => Ok(a.to_string()),
    }
}
