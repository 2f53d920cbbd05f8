//! Leader election with a Lease: only the replica holding it runs the controller; a replica
//! that loses it stops reconciling at once.

use std::future::Future;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::cli::Args;
use crate::metrics::Metrics;

/// Seconds a lease is valid after its last renewal.
const LEASE_SECONDS: u64 = 30;
/// Seconds before expiry the holder renews it.
const GRACE_SECONDS: u64 = 10;

/// Runs `controller()` while this replica leads, until SIGTERM/SIGINT or the controller ends.
pub async fn run_while_leading<F, Fut>(
    client: Client,
    args: &Args,
    metrics: Metrics,
    controller: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into());
        let suffix: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(6)
            .map(char::from)
            .collect();
        format!("{host}-{}", suffix.to_ascii_lowercase())
    });
    tracing::info!(lease = %args.lease_name, namespace = %args.namespace, %identity, "waiting for the leader lease");
    let manager = LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    let mut running: Option<tokio::task::JoinHandle<()>> = None;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let finished = async {
            match running.as_mut() {
                Some(h) => {
                    let _ = h.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    anyhow::bail!("leader election stopped");
                }
                let lead = *leading.borrow_and_update();
                metrics.set_leader(lead);
                if lead && running.is_none() {
                    tracing::info!("acquired the leader lease: reconciling");
                    running = Some(tokio::spawn(controller()));
                } else if !lead && let Some(h) = running.take() {
                    tracing::warn!("lost the leader lease: stopped reconciling");
                    h.abort();
                }
            }
            _ = finished => {
                tracing::info!("controller stopped");
                break;
            }
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                if let Some(h) = running.take() {
                    h.abort();
                }
                break;
            }
        }
    }
    metrics.set_leader(false);
    // closing the channel releases the lease, so that another replica takes over at once
    drop(leading);
    let _ = lease_task.await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
