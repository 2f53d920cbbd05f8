//! The client side: one HTTP/2 connection pool for all peers, with timeouts on every call.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::client::legacy::{Client as HyperClient, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

use crate::{AUTH_HEADER, ClusterAuth, PREFIX};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Why an internal call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("peer {addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("peer {addr} did not answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("peer {0} refused our cluster secret")]
    Unauthorized(String),
    #[error("peer {addr} answered {status}: {message}")]
    Remote {
        addr: String,
        status: u16,
        message: String,
    },
    #[error("undecodable RPC message: {0}")]
    Decode(String),
}

impl RpcError {
    /// The HTTP status the peer answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RpcError::Remote { status, .. } => Some(*status),
            RpcError::Unauthorized(_) => Some(401),
            _ => None,
        }
    }
}

/// A client for every peer of the cluster. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    http: HyperClient<HttpConnector, Body>,
    auth: ClusterAuth,
    /// Bound on a whole unary call (connect, request, response).
    pub timeout: Duration,
    /// Peers whose last connection attempt failed, and when: a hint for callers that can
    /// choose whom to ask (see [`Client::is_down`]).
    down: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
}

/// How long a failed connection marks a peer as down.
pub const DOWN_HINT: Duration = Duration::from_secs(1);

impl Client {
    pub fn new(auth: ClusterAuth) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let http = HyperClient::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .http2_initial_stream_window_size(4 << 20)
            .http2_initial_connection_window_size(16 << 20)
            // shard data moves in 256 KiB-1 MiB bodies: big frames cut per-frame overhead
            .http2_max_frame_size(1 << 20)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .http2_keep_alive_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            http,
            auth,
            timeout: Duration::from_secs(10),
            down: Default::default(),
        }
    }

    /// Whether connecting to `addr` failed within the last [`DOWN_HINT`]. Calls to it are
    /// still made; callers that can pick among peers (reads, which need only some of the
    /// shards) ask the others first instead of paying a failed attempt per request.
    pub fn is_down(&self, addr: &str) -> bool {
        let down = self.down.lock().expect("not poisoned");
        down.get(addr).is_some_and(|at| at.elapsed() < DOWN_HINT)
    }

    fn mark(&self, addr: &str, failed: bool) {
        let mut down = self.down.lock().expect("not poisoned");
        if failed {
            down.insert(addr.to_string(), std::time::Instant::now());
        } else if !down.is_empty() {
            down.remove(addr);
        }
    }

    pub fn auth(&self) -> &ClusterAuth {
        &self.auth
    }

    /// Sends a request with any body and returns the response head and body once the head
    /// arrived (bounded by `timeout`); non-2xx answers become errors.
    pub async fn send(
        &self,
        addr: &str,
        method: http::Method,
        path_and_query: &str,
        body: Body,
        timeout: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, RpcError> {
        let uri = format!("http://{addr}{PREFIX}{path_and_query}");
        let req = http::Request::builder()
            .method(method)
            .uri(&uri)
            .header(AUTH_HEADER, self.auth.token())
            .body(body)
            .map_err(|e| RpcError::Unreachable {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let resp = match tokio::time::timeout(timeout, self.http.request(req)).await {
            Err(_) => {
                return Err(RpcError::Timeout {
                    addr: addr.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            Ok(Err(e)) => {
                if e.is_connect() {
                    self.mark(addr, true);
                }
                return Err(RpcError::Unreachable {
                    addr: addr.to_string(),
                    reason: error_chain(&e),
                });
            }
            Ok(Ok(r)) => {
                self.mark(addr, false);
                r
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == http::StatusCode::UNAUTHORIZED {
            return Err(RpcError::Unauthorized(addr.to_string()));
        }
        let body = tokio::time::timeout(timeout, resp.into_body().collect())
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Err(RpcError::Remote {
            addr: addr.to_string(),
            status: status.as_u16(),
            message: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// A unary call: POSTs `body` to `path` and returns the whole response body.
    pub async fn call_raw(&self, addr: &str, path: &str, body: Vec<u8>) -> Result<Bytes, RpcError> {
        self.call_raw_with(addr, http::Method::POST, path, body, self.timeout)
            .await
    }

    pub async fn call_raw_with(
        &self,
        addr: &str,
        method: http::Method,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let fut = async {
            let body = Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed();
            let resp = self.send(addr, method, path, body, timeout).await?;
            resp.into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| RpcError::Unreachable {
                    addr: addr.to_string(),
                    reason: error_chain(&e),
                })
        };
        tokio::time::timeout(timeout, fut).await.unwrap_or_else(|_| {
            Err(RpcError::Timeout {
                addr: addr.to_string(),
                secs: timeout.as_secs(),
            })
        })
    }

    /// A unary call with MessagePack request and response.
    pub async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
    ) -> Result<Resp, RpcError> {
        let bytes = self.call_raw(addr, path, crate::encode(req)).await?;
        crate::decode(&bytes)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
