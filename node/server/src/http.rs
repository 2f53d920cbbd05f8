//! The HTTP surface: health endpoints beside the S3 service, request ids, and complete S3
//! error documents (Resource and RequestId added to every XML error).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use ringstore_object::ObjectStore;
use s3s::service::S3Service;

use crate::metrics::{self, Metrics, OperationSlot};

/// Whether the node is ready to serve (set once start-up has finished, cleared on shutdown).
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
}

/// What the non-S3 endpoints need.
#[derive(Clone)]
pub struct AppState {
    pub ready: Readiness,
    pub metrics: Arc<Metrics>,
    pub store: ObjectStore,
    /// The control plane (for status and layout changes).
    pub cluster: Option<ringstore_cluster::Cluster>,
    /// Client for peers (status fan-out).
    pub client: ringstore_rpc::Client,
    pub node_name: String,
    /// Bearer token of the admin API (the S3 secret key for now).
    pub admin_token: Arc<str>,
    /// This node's part of the running layout transition.
    pub transitions: Arc<crate::transition::Driver>,
}

/// Path of the Prometheus endpoint. Bucket names cannot contain `_`, so nothing under
/// `/_ringstore/` can shadow a bucket.
pub const METRICS_PATH: &str = "/_ringstore/metrics";

pub fn router(s3: S3Service, state: AppState) -> Router {
    let s3 = tower::service_fn(move |req: Request| {
        let s3 = s3.clone();
        async move {
            let slot = req.extensions().get::<OperationSlot>().cloned();
            let resp = match s3.call(req.map(s3s::Body::http_body_unsync)).await {
                Ok(resp) => resp.map(Body::new),
                Err(e) => {
                    tracing::error!(error = ?e, "S3 service failed");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            };
            // requests s3s answered before routing them (bad signature, malformed request)
            if let Some(slot) = slot {
                slot.set("Unknown");
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let shared = std::sync::Arc::new(state.clone());
    Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(health_ready))
        .route(METRICS_PATH, get(serve_metrics))
        .route("/_ringstore/admin/{*rest}", any(crate::admin::admin))
        .fallback_service(s3)
        // the middlewares get their state once per request: one shared handle, not a copy
        // of every field
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            metrics_alias,
        ))
        .layer(axum::middleware::from_fn_with_state(shared, request_id))
        .with_state(state)
}

/// What answers while the node starts (the cluster forming): health endpoints, and a
/// retryable S3 error for everything else.
pub fn starting_router(ready: Readiness) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route(
            "/health/ready",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.0.load(Ordering::SeqCst) {
                        "ready".into_response()
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: waiting for the cluster",
                        )
                            .into_response()
                    }
                }
            }),
        )
        .fallback(|| async {
            let id = new_request_id();
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code>\
                 <Message>The node is starting and waiting for its cluster; retry shortly.</Message>\
                 <RequestId>{id}</RequestId></Error>"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [
                    (http::header::CONTENT_TYPE, "application/xml"),
                    (http::header::RETRY_AFTER, "1"),
                ],
                xml,
            )
                .into_response()
        })
}

/// Serves with the full router once start-up has built it, with `starting` until then.
#[derive(Clone)]
pub struct Switch {
    app: Arc<std::sync::OnceLock<Router>>,
    starting: Router,
}

impl Switch {
    pub fn new(app: Arc<std::sync::OnceLock<Router>>, starting: Router) -> Self {
        Self { app, starting }
    }
}

impl tower::Service<http::Request<hyper::body::Incoming>> for Switch {
    type Response = Response;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        use tower::ServiceExt;
        let router = self.app.get().cloned().unwrap_or_else(|| self.starting.clone());
        Box::pin(async move { router.oneshot(req.map(Body::new)).await })
    }
}

async fn health_ready(State(state): State<AppState>) -> Response {
    if state.ready.0.load(Ordering::SeqCst) {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn serve_metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&state.store, state.cluster.as_ref()).await;
    ([(http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// `GET /metrics` without a signature is Prometheus' scrape (the path scrapers use by
/// default); a signed request to that path is S3's (listing a bucket named `metrics`), and
/// an anonymous S3 request would be refused anyway.
async fn metrics_alias(State(state): State<std::sync::Arc<AppState>>, req: Request, next: Next) -> Response {
    let scrape = req.method() == http::Method::GET
        && req.uri().path() == "/metrics"
        && !req.headers().contains_key(http::header::AUTHORIZATION)
        && !req
            .uri()
            .query()
            .is_some_and(|q| q.contains("X-Amz-Signature") || q.contains("Signature="));
    if scrape {
        return serve_metrics(State(AppState::clone(&state))).await;
    }
    next.run(req).await
}

fn new_request_id() -> String {
    hex::encode_upper(rand::random::<[u8; 8]>())
}

/// Tags every response with `x-amz-request-id`, completes XML error documents and records
/// the request metrics of S3 requests.
async fn request_id(State(state): State<std::sync::Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let id = new_request_id();
    let slot = OperationSlot::default();
    req.extensions_mut().insert(slot.clone());
    let received = declared_length(req.headers());
    let resource = req.uri().path().to_string();
    let is_head = req.method() == http::Method::HEAD;
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    let millis = seconds * 1000.0;
    // only requests that reached the S3 service have an operation
    if let Some(op) = slot.get() {
        let sent = if is_head {
            0
        } else {
            resp.headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .or_else(|| resp.body().size_hint().exact())
                .unwrap_or(0)
        };
        state.metrics.record_request(op, status, seconds, received, sent);
        state.transitions.pace.observe(seconds);
    }
    // 501 is the expected answer to operations we do not implement, not an incident
    if resp.status().is_server_error() && resp.status() != StatusCode::NOT_IMPLEMENTED {
        tracing::warn!(request_id = %id, %method, path = %resource, status, millis, "request failed");
    } else {
        tracing::debug!(request_id = %id, %method, path = %resource, status, millis, "request");
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    let is_xml = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/xml"));
    if !resp.status().is_client_error() && !resp.status().is_server_error() || !is_xml || is_head {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(collected) = http_body_util::Limited::new(body, 64 * 1024).collect().await else {
        return Response::from_parts(parts, Body::empty());
    };
    let xml = collected.to_bytes();
    let completed = complete_error(&xml, &resource, &id)
        .map(Bytes::from)
        .unwrap_or(xml);
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(completed.len()));
    Response::from_parts(parts, Body::from(completed))
}

/// Body bytes a request declares: the decoded length of aws-chunked uploads, else its
/// Content-Length.
fn declared_length(headers: &http::HeaderMap) -> u64 {
    ["x-amz-decoded-content-length", "content-length"]
        .iter()
        .find_map(|h| headers.get(*h)?.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// Adds `<Resource>` and `<RequestId>` to an S3 `<Error>` document when missing.
fn complete_error(xml: &[u8], resource: &str, id: &str) -> Option<String> {
    let text = std::str::from_utf8(xml).ok()?;
    let end = text.rfind("</Error>")?;
    let mut extra = String::new();
    if !text.contains("<Resource>") {
        extra.push_str(&format!("<Resource>{}</Resource>", escape(resource)));
    }
    if !text.contains("<RequestId>") {
        extra.push_str(&format!("<RequestId>{id}</RequestId>"));
    }
    Some(format!("{}{}{}", &text[..end], extra, &text[end..]))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_document_gets_resource_and_request_id() {
        let xml = b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>m</Message></Error>";
        let out = complete_error(xml, "/b/a&b", "ABC").unwrap();
        assert!(
            out.ends_with("<Resource>/b/a&amp;b</Resource><RequestId>ABC</RequestId></Error>"),
            "{out}"
        );
        assert!(complete_error(b"<ListBucketResult/>", "/", "x").is_none());
    }
}
