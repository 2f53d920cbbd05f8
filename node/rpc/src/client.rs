//! The client side: one multiplexed HTTP/2 connection per peer, pooled data-channel
//! connections for shard reads, and timeouts on every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::data::{DataConn, DataHead, DataPool, DataReq};
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
///
/// Each peer gets one HTTP/2 connection that every call multiplexes over (hyper's
/// connection-level API: no pool checkout per request); a connection that closed is
/// replaced by the next call. Shard reads take data-channel connections ([`crate::data`]),
/// one per call in flight, kept idle for reuse.
#[derive(Clone, Debug)]
pub struct Client {
    conns: Arc<Mutex<HashMap<String, Peer>>>,
    auth: ClusterAuth,
    /// Bound on a whole unary call (connect, request, response).
    pub timeout: Duration,
    /// Peers to avoid, and until when: a hint for callers that can choose whom to ask (see
    /// [`Client::is_down`]).
    down: Arc<Mutex<HashMap<String, Instant>>>,
    /// Called with a peer's address when a peer suspected of hanging answers again.
    recovered: Arc<Hook>,
    /// Peers being probed.
    probing: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Idle data-channel connections ([`crate::data`]).
    data: Arc<DataPool>,
}

/// What to do when a peer answers again.
type OnRecovered = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct Hook(std::sync::OnceLock<OnRecovered>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Hook(set)"
        } else {
            "Hook(none)"
        })
    }
}

/// One peer: its connection, and a gate so that concurrent first calls connect once.
#[derive(Clone, Debug, Default)]
struct Peer {
    sender: Option<SendRequest<Body>>,
    connecting: Arc<tokio::sync::Mutex<()>>,
}

/// How long a failed connection marks a peer as down.
pub const DOWN_HINT: Duration = Duration::from_secs(1);

/// How long a call that timed out marks a peer as down at most: a peer that accepts
/// connections but does not answer (hung, stopped, overloaded) would cost every request a
/// whole timeout, so it is avoided until a probe sees it answer again.
pub const HUNG_HINT: Duration = Duration::from_secs(60);

/// How often, and how patiently, a peer suspected of hanging is probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bound on establishing a connection (TCP and the HTTP/2 handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Client {
    pub fn new(auth: ClusterAuth) -> Self {
        Self {
            conns: Default::default(),
            auth,
            timeout: Duration::from_secs(10),
            down: Default::default(),
            recovered: Default::default(),
            probing: Default::default(),
            data: Default::default(),
        }
    }

    /// Sets what to do when a peer that was avoided because its calls timed out answers
    /// again (it missed the writes that left it out). Once per client; later calls are
    /// ignored.
    pub fn on_recovered(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.recovered.0.set(Box::new(f));
    }

    /// The open connection to `addr`, connecting first when there is none.
    async fn sender(&self, addr: &str) -> Result<SendRequest<Body>, RpcError> {
        let gate = {
            let mut conns = self.conns.lock().expect("not poisoned");
            let peer = conns.entry(addr.to_string()).or_default();
            if let Some(s) = &peer.sender
                && !s.is_closed()
            {
                return Ok(s.clone());
            }
            peer.connecting.clone()
        };
        let _connecting = gate.lock().await;
        // another call may have connected while this one waited
        if let Some(s) = self
            .conns
            .lock()
            .expect("not poisoned")
            .get(addr)
            .and_then(|p| p.sender.clone())
            .filter(|s| !s.is_closed())
        {
            return Ok(s);
        }
        let unreachable = |reason: String| RpcError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| unreachable(format!("connect: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                // shard data moves in 256 KiB-1 MiB bodies: big frames cut per-frame overhead
                .max_frame_size(1 << 20)
                .keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| unreachable(format!("HTTP/2 handshake: {}", error_chain(&e))))?;
            let peer = addr.to_string();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(peer, error = %error_chain(&e), "RPC connection ended");
                }
            });
            Ok::<_, RpcError>(sender)
        };
        let sender = self.connecting(addr, connect).await?;
        self.conns
            .lock()
            .expect("not poisoned")
            .entry(addr.to_string())
            .or_default()
            .sender = Some(sender.clone());
        Ok(sender)
    }

    /// Bounds establishing a connection to `addr`: an attempt that fails to reach the peer
    /// (refused, reset) marks it down for [`DOWN_HINT`]; one that neither completes nor is refused within
    /// [`CONNECT_TIMEOUT`] (a peer that accepts connections but never answers) is a hang,
    /// probed until it answers.
    async fn connecting<T>(
        &self,
        addr: &str,
        connect: impl Future<Output = Result<T, RpcError>>,
    ) -> Result<T, RpcError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                // (a peer that answered, if only to refuse, is not down)
                if matches!(e, RpcError::Unreachable { .. }) {
                    self.mark(addr, true);
                }
                Err(e)
            }
            Err(_) => {
                self.suspect(addr);
                Err(RpcError::Unreachable {
                    addr: addr.to_string(),
                    reason: format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
                })
            }
        }
    }

    /// An idle data connection to `addr` from the pool, if there is one.
    pub(crate) fn data_pooled(&self, addr: &str) -> Option<DataConn> {
        self.data.take(addr)
    }

    /// A new data connection to `addr`.
    pub(crate) async fn data_conn(&self, addr: &str) -> Result<DataConn, RpcError> {
        self.connecting(addr, DataConn::open(addr, &self.auth)).await
    }

    /// Keeps a data connection whose last request was answered, for reuse.
    pub(crate) fn data_idle(&self, addr: &str, conn: DataConn) {
        self.data.put(addr, conn);
    }

    /// The error of a data connection to `addr` that broke.
    pub(crate) fn lost(&self, addr: &str, e: std::io::Error) -> RpcError {
        RpcError::Unreachable {
            addr: addr.to_string(),
            reason: format!("data channel: {e}"),
        }
    }

    /// A request on a data connection to `addr` ([`crate::data`]), bounded by `timeout` like
    /// any call; answers other than 200 become errors. Idle connections are reused; one
    /// that fails (its peer may have closed it) is dropped and the request, a read, is
    /// sent again on a new connection.
    pub(crate) async fn data_call(
        &self,
        addr: &str,
        req: &DataReq,
        timeout: Duration,
    ) -> Result<(DataHead, Bytes), RpcError> {
        let call = async {
            if let Some(mut conn) = self.data_pooled(addr)
                && let Ok(answer) = conn.call(req).await
            {
                self.data.put(addr, conn);
                return Ok(answer);
            }
            let mut conn = self.data_conn(addr).await?;
            let answer = conn.call(req).await.map_err(|e| self.lost(addr, e))?;
            self.data.put(addr, conn);
            Ok(answer)
        };
        let (head, body) = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                self.suspect(addr);
                return Err(RpcError::Timeout {
                    addr: addr.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            Ok(answer) => answer?,
        };
        self.mark(addr, false);
        if head.status != 200 {
            return Err(RpcError::Remote {
                addr: addr.to_string(),
                status: head.status,
                message: head.message,
            });
        }
        Ok((head, body))
    }

    /// Whether connecting to `addr` failed within the last [`DOWN_HINT`]. Calls to it are
    /// still made; callers that can pick among peers (reads, which need only some of the
    /// shards) ask the others first instead of paying a failed attempt per request.
    ///
    /// A call that timed out marks its peer too, until a background probe sees the peer
    /// answer again (at most [`HUNG_HINT`]).
    pub fn is_down(&self, addr: &str) -> bool {
        let down = self.down.lock().expect("not poisoned");
        down.get(addr).is_some_and(|until| Instant::now() < *until)
    }

    fn mark(&self, addr: &str, failed: bool) {
        let mut down = self.down.lock().expect("not poisoned");
        if failed {
            // a longer mark (a suspected hang being probed) is not shortened
            let until = Instant::now() + DOWN_HINT;
            let at = down.entry(addr.to_string()).or_insert(until);
            *at = (*at).max(until);
        } else if !down.is_empty() {
            down.remove(addr);
        }
    }

    /// After a call to `addr` timed out: avoid the peer, and probe it until it answers.
    /// Needs a tokio runtime context.
    pub(crate) fn suspect(&self, addr: &str) {
        self.down
            .lock()
            .expect("not poisoned")
            .insert(addr.to_string(), Instant::now() + HUNG_HINT);
        if !self
            .probing
            .lock()
            .expect("not poisoned")
            .insert(addr.to_string())
        {
            return; // a probe runs already
        }
        tracing::warn!(
            peer = addr,
            "a call timed out: avoiding the peer until it answers again"
        );
        let (client, addr) = (self.clone(), addr.to_string());
        tokio::spawn(async move {
            // probes go on until the peer answers one, even when another call that got
            // through cleared the mark first (calls queued during the hang complete at
            // the resume): the recovery hook must run either way. A peer still silent
            // when its mark expires is given up; its next timed-out call starts over.
            let started = Instant::now();
            let mut answered = false;
            while !answered && started.elapsed() < HUNG_HINT {
                tokio::time::sleep(PROBE_EVERY).await;
                let ping = client.send(&addr, http::Method::GET, "/ping", empty(), PROBE_TIMEOUT);
                // a successful `send` clears the mark
                answered = ping.await.is_ok();
            }
            client.probing.lock().expect("not poisoned").remove(&addr);
            if answered {
                tracing::info!(peer = addr, "the peer answers again");
                if let Some(f) = client.recovered.0.get() {
                    f(&addr);
                }
            }
        });
    }

    /// Drops the connection to `addr` if it closed (the next call reconnects).
    fn forget_closed(&self, addr: &str) {
        let mut conns = self.conns.lock().expect("not poisoned");
        if let Some(peer) = conns.get_mut(addr)
            && peer.sender.as_ref().is_some_and(SendRequest::is_closed)
        {
            peer.sender = None;
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
        let call = async {
            let mut sender = self.sender(addr).await?;
            let resp = sender.send_request(req).await.map_err(|e| {
                // the connection's keep-alive pings went unanswered: the peer hangs
                if e.is_timeout() && !path_and_query.starts_with("/ping") {
                    self.suspect(addr);
                }
                RpcError::Unreachable {
                    addr: addr.to_string(),
                    reason: error_chain(&e),
                }
            });
            if resp.is_err() && sender.is_closed() {
                self.forget_closed(addr);
            }
            resp
        };
        let resp = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                // probes have a short timeout of their own and do not restart probing
                if !path_and_query.starts_with("/ping") {
                    self.suspect(addr);
                }
                return Err(RpcError::Timeout {
                    addr: addr.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            Ok(Err(e)) => return Err(e),
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
            self.suspect(addr);
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

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
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
