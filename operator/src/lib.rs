//! The Ringstore operator: reconciles `Tenant` and `Pool` resources into Ringstore clusters
//! (Secrets, Services, a PodDisruptionBudget and one StatefulSet per Pool), grows the
//! cluster layout when servers are added and rolls image changes one server at a time.
//!
//! Layers: `desired` (build, pure), `validate` (pure), `assess` (decisions and status, pure),
//! `admin` (the nodes' admin API), `controller` (the only module that talks to Kubernetes),
//! `leader` (leader election) and `metrics`.

pub mod admin;
pub mod assess;
pub mod cli;
pub mod controller;
pub mod desired;
pub mod error;
#[cfg(test)]
mod fake_api;
pub mod leader;
pub mod metrics;
pub mod secrets;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

pub use cli::Args;

/// Runs the operator: metrics server, leader election, and the controller while leading.
pub async fn run(args: Args) -> anyhow::Result<()> {
    cli::init_logging(args.log_format);
    // several rustls providers may be compiled in (the workspace also builds aws-lc-rs):
    // choose ring, kube's default, explicitly
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await?;
    let metrics = metrics::Metrics::new();
    let (address, m) = (args.metrics_address, metrics.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = metrics::serve(address, m).await {
            tracing::error!(%address, error = %e, "cannot serve metrics");
        }
    });
    let ctx = Arc::new(controller::Context::new(
        client.clone(),
        admin::AdminClient::new(args.admin_port),
        metrics.clone(),
        Duration::from_secs(args.resync_seconds.max(1)),
    ));
    let watch = args.watch_namespace.clone().filter(|n| !n.is_empty());
    tracing::info!(version = env!("CARGO_PKG_VERSION"), namespace = ?watch, "ringstore-operator starting");
    let result = if args.leader_election {
        leader::run_while_leading(client, &args, metrics.clone(), move || {
            controller::run(ctx.clone(), watch.clone())
        })
        .await
    } else {
        metrics.set_leader(true);
        controller::run(ctx, watch).await;
        Ok(())
    };
    server.abort();
    result
}
