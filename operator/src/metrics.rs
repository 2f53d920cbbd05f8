//! Prometheus metrics of the operator and the HTTP server for `/metrics` and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric the operator exports. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    writes: Family<Labels, Counter>,
    duration: Histogram,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ringstore_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let writes = Family::<Labels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles of Tenants by result (ok, invalid, error)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error kind",
            errors.clone(),
        );
        registry.register(
            "api_writes",
            "Write requests sent to the Kubernetes API or to a cluster's admin API, by verb and kind",
            writes.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time taken by one reconcile",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciles,
            errors,
            writes,
            duration,
            leader,
        }
    }

    pub fn reconciled(&self, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: &str) {
        self.errors.get_or_create(&vec![("kind", kind.to_owned())]).inc();
    }

    pub fn wrote(&self, verb: &str, kind: &str) {
        self.writes
            .get_or_create(&vec![("verb", verb.to_owned()), ("kind", kind.to_owned())])
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // writing into a String cannot fail
        let _ = encode(&mut out, &self.registry);
        out
    }
}

async fn metrics(State(m): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

/// Serves `/metrics` and `/healthz` until the task is dropped.
pub async fn serve(address: SocketAddr, m: Metrics) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .with_state(m);
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "serving /metrics and /healthz");
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_counters() {
        let m = Metrics::new();
        m.reconciled("ok", Duration::from_millis(20));
        m.wrote("apply", "StatefulSet");
        m.set_leader(true);
        let text = m.render();
        assert!(
            text.contains(r#"ringstore_operator_reconciles_total{result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ringstore_operator_api_writes_total{verb="apply",kind="StatefulSet"} 1"#),
            "{text}"
        );
        assert!(text.contains("ringstore_operator_leader 1"), "{text}");
        assert!(
            text.contains("ringstore_operator_reconcile_duration_seconds_bucket"),
            "{text}"
        );
    }
}
