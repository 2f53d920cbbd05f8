//! Command-line flags (each also settable from the environment) and logging set-up.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use ringstore_ring::Redundancy;

/// Ringstore: an S3-compatible object store.
#[derive(Debug, Parser)]
#[command(
    name = "ringstore",
    version,
    about = "Ringstore: an S3-compatible, erasure-coded object store"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the S3 API from local drive folders.
    Server(ServerArgs),
    /// Ask a running node about its state (admin API).
    Admin(AdminArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Show the cluster: nodes, drives, Raft, capacity and healing progress.
    Status(AdminStatusArgs),
    /// Show or change the cluster layout.
    Layout(LayoutArgs),
    /// Show, pause, resume or throttle the layout transition (data moving onto a new layout).
    Transition(TransitionArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct TransitionArgs {
    #[command(subcommand)]
    pub command: TransitionCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TransitionCommand {
    /// Show the running (or last) transition: kind, phase, progress, rate, ETA, per node.
    Status(AdminStatusArgs),
    /// Pause moving data (reads and writes go on; the transition stays unfinished).
    Pause(AdminStatusArgs),
    /// Resume a paused transition.
    Resume(AdminStatusArgs),
    /// Change how fast data moves, live.
    Throttle(ThrottleArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ThrottleArgs {
    #[command(flatten)]
    pub common: AdminStatusArgs,

    /// Bytes moved per second over the whole cluster (0: unbounded); suffixes K, M, G
    /// (powers of 1024) are accepted.
    #[arg(long, value_parser = parse_rate)]
    pub bytes_per_sec: Option<u64>,

    /// Objects each node moves at once (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a byte rate such as 104857600, 100M or 1G"))?;
    let mul: u64 = match unit
        .trim_end_matches(['B', 'i', '/', 's'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M or G)")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Debug, Clone, clap::Args)]
pub struct LayoutArgs {
    #[command(subcommand)]
    pub command: LayoutCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum LayoutCommand {
    /// Show the current layout: version, redundancy, nodes, zones and drives.
    Show(AdminStatusArgs),
    /// Commit a new layout version made of the registered nodes (or those named); a
    /// transition then moves the data onto it (see `ringstore admin transition`).
    Apply(LayoutApplyArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct LayoutApplyArgs {
    #[command(flatten)]
    pub common: AdminStatusArgs,

    /// Nodes to place data on, comma separated (default: every registered node).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,

    /// New redundancy as DATA+PARITY (default: unchanged).
    #[arg(long)]
    pub redundancy: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AdminStatusArgs {
    /// Base URL of the node (http only).
    #[arg(long, env = "RINGSTORE_ENDPOINT", default_value = "http://127.0.0.1:9000")]
    pub endpoint: String,

    /// Admin token (for now the node's S3 secret key).
    #[arg(long, env = "RINGSTORE_SECRET_KEY", hide_env_values = true)]
    pub token: Option<String>,

    /// Print the raw JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// A drive folder; repeat once per drive (created when missing). With several drives,
    /// objects are erasure coded across them.
    #[arg(
        long = "data",
        env = "RINGSTORE_DATA",
        value_delimiter = ',',
        default_value = "./data"
    )]
    pub data: Vec<PathBuf>,

    /// Address to serve S3 and the health endpoints on.
    #[arg(long, env = "RINGSTORE_ADDRESS", default_value = "127.0.0.1:9000")]
    pub address: SocketAddr,

    /// Base domain for virtual-hosted-style requests (`bucket.DOMAIN`); repeatable.
    /// Path-style requests are always accepted.
    #[arg(long = "domain", env = "RINGSTORE_DOMAIN", value_delimiter = ',')]
    pub domains: Vec<String>,

    /// Region reported to clients and expected in signatures' scope.
    #[arg(long, env = "RINGSTORE_REGION", default_value = "us-east-1")]
    pub region: String,

    /// Erasure code as DATA+PARITY shards (for example 2+2). Default: chosen from the
    /// number of drives (1 drive: 1+0, 2: 1+1, 3: 2+1, 4: 2+2, 6: 4+2, ...).
    #[arg(long, env = "RINGSTORE_REDUNDANCY", value_parser = parse_redundancy)]
    pub redundancy: Option<Redundancy>,

    /// This node's name: its identity in the cluster (stable across restarts; on
    /// Kubernetes the pod name).
    #[arg(long, env = "RINGSTORE_NODE_NAME", default_value = "ringstore-0")]
    pub node_name: String,

    /// Address to serve the internal node-to-node RPC on (Raft, shards). Required in a
    /// cluster; a single node without it runs on its own.
    #[arg(long, env = "RINGSTORE_RPC_ADDRESS")]
    pub rpc_address: Option<SocketAddr>,

    /// HOST:PORT other nodes use to reach this node's RPC (default: --rpc-address). On
    /// Kubernetes, the pod's stable DNS name and the RPC port.
    #[arg(long, env = "RINGSTORE_RPC_ADVERTISE")]
    pub rpc_advertise: Option<String>,

    /// RPC addresses (HOST:PORT) of the cluster's initial nodes, comma separated; the same
    /// list on every node (it may include this node). The first layout is formed from them
    /// once they have all answered.
    #[arg(long, env = "RINGSTORE_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,

    /// Failure domain of this node (for example the Kubernetes zone); shards of an object
    /// are spread over zones when there are several.
    #[arg(long, env = "RINGSTORE_ZONE", default_value = "default")]
    pub zone: String,

    /// Shared secret that authenticates nodes to each other; the same on every node.
    /// Required with --seeds.
    #[arg(long, env = "RINGSTORE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Seconds between background scrubs that verify every shard and repair damage
    /// (0 disables the periodic scrub; damage found by reads is still repaired).
    #[arg(long, env = "RINGSTORE_SCRUB_INTERVAL", default_value_t = 86_400)]
    pub scrub_interval: u64,

    /// Most objects the scrubber checks per second.
    #[arg(long, env = "RINGSTORE_SCRUB_RATE", default_value_t = 200)]
    pub scrub_rate: u32,

    /// Log format.
    #[arg(long, env = "RINGSTORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Seconds to let in-flight requests finish after SIGTERM before exiting.
    #[arg(long, env = "RINGSTORE_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
}

fn parse_redundancy(s: &str) -> Result<Redundancy, String> {
    s.parse().map_err(|e: ringstore_ring::Error| e.to_string())
}

/// Logs go to stderr; the level comes from `RUST_LOG` (default `info`). The s3s crate logs
/// every client error (a 404 is not an incident) at error level, so it is off by default;
/// requests are logged by our own middleware instead.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,s3s=off,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
