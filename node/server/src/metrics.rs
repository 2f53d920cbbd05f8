//! Prometheus metrics, served at `/_ringstore/metrics` in the OpenMetrics text format.
//!
//! Request metrics are recorded by the request middleware; drive usage and healing totals
//! are sampled when the endpoint is scraped.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use ringstore_object::{HealStats, ObjectStore};

/// The OpenMetrics content type the text encoder produces (Prometheus accepts it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriveLabels {
    drive: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    route: String,
    method: String,
}

type HistogramFamily = Family<OperationLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The S3 operation of a request, filled in by [`OperationProbe`] once s3s has routed it.
/// The request middleware puts one in every request's extensions.
#[derive(Clone, Default)]
pub struct OperationSlot(Arc<OnceLock<String>>);

impl OperationSlot {
    pub fn set(&self, name: &str) {
        let _ = self.0.set(name.to_string());
    }

    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// An s3s access check that records the operation name s3s resolved (in the request's
/// [`OperationSlot`]) and otherwise behaves as the default check: signed requests pass,
/// anonymous ones are denied.
pub struct OperationProbe;

#[async_trait::async_trait]
impl s3s::access::S3Access for OperationProbe {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        let name = cx.s3_op().name().to_string();
        if let Some(slot) = cx.extensions_mut().get::<OperationSlot>() {
            slot.set(&name);
        }
        match cx.credentials() {
            Some(_) => Ok(()),
            None => Err(s3s::s3_error!(AccessDenied, "Signature is required")),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily,
    bytes_received: Counter,
    bytes_sent: Counter,
    rpc_served: Family<RpcLabels, Counter>,
    drive_used: Family<DriveLabels, Gauge>,
    drive_available: Family<DriveLabels, Gauge>,
    drive_online: Family<DriveLabels, Gauge>,
    heal: [Counter; 5],
    /// Control plane: [term, this node leads, last applied index, members, layout version].
    raft: [Gauge; 5],
    /// This node's mover: [objects, bytes, errors].
    moved: [Counter; 3],
    /// The layout transition: [running, paused, partitions done, partitions].
    transition: [Gauge; 4],
    /// Serialises scrapes: healing counters are advanced by the difference since the last one.
    scrape: tokio::sync::Mutex<()>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        // counters get their `_total` suffix from the encoder
        registry.register(
            "ringstore_s3_requests",
            "S3 requests by operation and HTTP status",
            requests.clone(),
        );
        let durations: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "ringstore_s3_request_duration_seconds",
            "Time to answer S3 requests (until the response head), by operation",
            durations.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "ringstore_s3_bytes_received",
            "Request body bytes received by the S3 API (where the length is declared)",
            bytes_received.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register(
            "ringstore_s3_bytes_sent",
            "Response body bytes sent by the S3 API (where the length is known)",
            bytes_sent.clone(),
        );
        let rpc_served = Family::<RpcLabels, Counter>::default();
        registry.register(
            "ringstore_rpc_served_requests",
            "Internal RPC requests this node served to its peers, by route and method",
            rpc_served.clone(),
        );
        let drive_used = Family::<DriveLabels, Gauge>::default();
        registry.register(
            "ringstore_drive_bytes_used",
            "Bytes used on the file system holding the drive",
            drive_used.clone(),
        );
        let drive_available = Family::<DriveLabels, Gauge>::default();
        registry.register(
            "ringstore_drive_bytes_available",
            "Bytes available on the file system holding the drive",
            drive_available.clone(),
        );
        let drive_online = Family::<DriveLabels, Gauge>::default();
        registry.register(
            "ringstore_drive_online",
            "1 when the drive's metadata index answers, 0 otherwise",
            drive_online.clone(),
        );
        let heal: [Counter; 5] = Default::default();
        let heal_help = [
            (
                "ringstore_heal_objects_checked",
                "Objects verified by healing and scrubbing",
            ),
            ("ringstore_heal_shards_healed", "Shards rebuilt"),
            ("ringstore_heal_records_healed", "Metadata records repaired"),
            ("ringstore_heal_orphans_removed", "Orphaned shard files removed"),
            ("ringstore_heal_errors", "Heal attempts that failed"),
        ];
        for ((name, help), c) in heal_help.into_iter().zip(&heal) {
            registry.register(name, help, c.clone());
        }
        let raft: [Gauge; 5] = Default::default();
        let raft_help = [
            ("ringstore_raft_term", "Current Raft term seen by this node"),
            ("ringstore_raft_leader", "1 when this node is the Raft leader"),
            (
                "ringstore_raft_last_applied",
                "Index of the last control-plane entry applied here",
            ),
            ("ringstore_cluster_members", "Nodes registered in the cluster"),
            (
                "ringstore_layout_version",
                "Version of the layout this node places data with",
            ),
        ];
        for ((name, help), g) in raft_help.into_iter().zip(&raft) {
            registry.register(name, help, g.clone());
        }
        let moved: [Counter; 3] = Default::default();
        let moved_help = [
            (
                "ringstore_transition_objects_moved",
                "Objects this node moved onto a new layout's placement",
            ),
            (
                "ringstore_transition_bytes_moved",
                "Shard bytes this node wrote onto new drives in layout transitions",
            ),
            (
                "ringstore_transition_move_errors",
                "Objects this node failed to move (tried again later)",
            ),
        ];
        for ((name, help), c) in moved_help.into_iter().zip(&moved) {
            registry.register(name, help, c.clone());
        }
        let transition: [Gauge; 4] = Default::default();
        let transition_help = [
            (
                "ringstore_transition_running",
                "1 while a layout transition is unfinished",
            ),
            (
                "ringstore_transition_paused",
                "1 while the layout transition is paused",
            ),
            (
                "ringstore_transition_partitions_done",
                "Partitions the running (or last) transition has moved",
            ),
            (
                "ringstore_transition_partitions",
                "Partitions of the ring (the transition's total)",
            ),
        ];
        for ((name, help), g) in transition_help.into_iter().zip(&transition) {
            registry.register(name, help, g.clone());
        }
        Self {
            registry,
            requests,
            durations,
            bytes_received,
            bytes_sent,
            rpc_served,
            drive_used,
            drive_available,
            drive_online,
            heal,
            raft,
            moved,
            transition,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// Records one S3 request.
    pub fn record_request(&self, operation: &str, status: u16, seconds: f64, received: u64, sent: u64) {
        self.requests
            .get_or_create(&RequestLabels {
                operation: operation.to_string(),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&OperationLabels {
                operation: operation.to_string(),
            })
            .observe(seconds);
        self.bytes_received.inc_by(received);
        self.bytes_sent.inc_by(sent);
    }

    /// Counts the internal RPC requests served, by route template (not by path: paths
    /// name drives and shard files). Put around the RPC router with `route_layer`.
    pub async fn count_rpc(
        axum::extract::State(m): axum::extract::State<Arc<Metrics>>,
        req: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        if let Some(route) = req.extensions().get::<axum::extract::MatchedPath>() {
            m.count_rpc_route(route.as_str(), req.method().as_str());
        }
        next.run(req).await
    }

    /// Counts an internal request served, by the route and method it came on (or, for the
    /// data channel, those of the HTTP call it stands for).
    pub fn count_rpc_route(&self, route: &str, method: &str) {
        self.rpc_served
            .get_or_create(&RpcLabels {
                route: route.to_string(),
                method: method.to_string(),
            })
            .inc();
    }

    /// Samples drives and healing totals, then encodes every metric.
    pub async fn render(&self, store: &ObjectStore, cluster: Option<&ringstore_cluster::Cluster>) -> String {
        let _guard = self.scrape.lock().await;
        for d in crate::admin::drive_states(store).await {
            let labels = DriveLabels { drive: d.id.clone() };
            self.drive_online.get_or_create(&labels).set(i64::from(d.online));
            if let Some((used, available)) = d.usage {
                self.drive_used.get_or_create(&labels).set(clamp(used));
                self.drive_available.get_or_create(&labels).set(clamp(available));
            }
        }
        let HealStats {
            objects_checked,
            shards_healed,
            records_healed,
            orphans_removed,
            heal_errors,
            ..
        } = store.heal_stats();
        let totals = [
            objects_checked,
            shards_healed,
            records_healed,
            orphans_removed,
            heal_errors,
        ];
        for (c, total) in self.heal.iter().zip(totals) {
            let seen = c.get();
            if total > seen {
                c.inc_by(total - seen);
            }
        }
        let m = store.move_stats();
        for (c, total) in self
            .moved
            .iter()
            .zip([m.objects_moved, m.bytes_moved, m.move_errors])
        {
            let seen = c.get();
            if total > seen {
                c.inc_by(total - seen);
            }
        }
        if let Some(t) = cluster.and_then(ringstore_cluster::Cluster::transition) {
            let values = [
                u64::from(t.is_running()),
                u64::from(t.paused),
                u64::from(t.done_count()),
                u64::from(t.partitions),
            ];
            for (g, v) in self.transition.iter().zip(values) {
                g.set(clamp(v));
            }
        }
        if let Some(c) = cluster {
            let st = c.status();
            let values = [
                st.current_term,
                u64::from(st.role == ringstore_cluster::Role::Leader),
                st.last_applied.unwrap_or(0),
                st.members.len() as u64,
                store.layout_version(),
            ];
            for (g, v) in self.raft.iter().zip(values) {
                g.set(clamp(v));
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
