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
    let redundancy = args
        .redundancy
        .unwrap_or_else(|| ringstore_ring::Redundancy::default_for(drives.len()));
    if redundancy.width() > drives.len() {
        bail!(
            "redundancy {redundancy} needs {} drives but {} --data folders were given",
            redundancy.width(),
            drives.len()
        );
    }
    let creds = crate::credentials::load(&args.data[0])?;
    let store = ObjectStore::new(drives, Some(redundancy), &args.node_name)?;

    let mut builder = S3ServiceBuilder::new(RingstoreS3::new(store.clone(), args.region.clone()));
    builder.set_auth(ringstore_s3::KeyAuth::single(
        creds.access_key.as_str(),
        creds.secret_key.as_str(),
    ));
    builder.set_access(crate::metrics::OperationProbe);
    if !args.domains.is_empty() {
        let hosts = ringstore_s3::VirtualHosts::new(&args.domains).map_err(anyhow::Error::msg);
        builder.set_host(hosts.context("invalid --domain")?);
    }
    let ready = Readiness::default();
    let app = router(
        builder.build(),
        AppState {
            ready: ready.clone(),
            metrics: Arc::new(Metrics::new()),
            store: store.clone(),
            node_name: args.node_name.clone(),
            admin_token: creds.secret_key.as_str().into(),
        },
    );

    let listener = TcpListener::bind(args.address)
        .await
        .with_context(|| format!("cannot listen on {}", args.address))?;
    tracing::info!(
        address = %args.address,
        drives = args.data.len(),
        %redundancy,
        node = %args.node_name,
        "ringstore is serving S3"
    );

    spawn_background(&store, &args, started);
    ready.set(true);

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
    Ok(())
}

/// Orphan sweep at start, then the periodic scrubber.
fn spawn_background(store: &ObjectStore, args: &ServerArgs, started: SystemTime) {
    let sweeper = store.clone();
    tokio::spawn(async move {
        match sweeper.sweep_orphans(started).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed shard files left by an interrupted write"),
            Err(e) => tracing::warn!(error = %e, "orphan sweep failed"),
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
