//! Command-line flags of the operator (each also settable from the environment).

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

/// The Ringstore operator: turns Tenants and Pools into running Ringstore clusters.
#[derive(Debug, Clone, Parser)]
#[command(name = "ringstore-operator", version, about)]
pub struct Args {
    /// Address of the `/metrics` and `/healthz` endpoints.
    #[arg(
        long,
        env = "RINGSTORE_OPERATOR_METRICS_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_address: SocketAddr,

    /// Log format.
    #[arg(long, env = "RINGSTORE_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Elect a leader among replicas with a Lease; only the leader reconciles. Turn off only
    /// when exactly one replica runs.
    #[arg(long, env = "RINGSTORE_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "RINGSTORE_OPERATOR_LEASE_NAME",
        default_value = "ringstore-operator"
    )]
    pub lease_name: String,

    /// Identity of this replica in the Lease (default: the host name plus a random suffix).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Watch Tenants, Pools and their children in this namespace only (default: all
    /// namespaces, which needs cluster-wide permissions).
    #[arg(long, env = "RINGSTORE_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Seconds between refreshes of a healthy Tenant's status from its cluster.
    #[arg(long, env = "RINGSTORE_OPERATOR_RESYNC_SECONDS", default_value_t = 30)]
    pub resync_seconds: u64,

    /// Port of the servers' admin API (their S3 port).
    #[arg(long, env = "RINGSTORE_OPERATOR_ADMIN_PORT", default_value_t = 9000)]
    pub admin_port: u16,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs go to stderr; the level comes from `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
