//! The internal HTTP endpoints (Raft messages, hello, join, forwarded writes and read barriers)
//! and the messages they exchange.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use ringstore_meta::{Command, LogId, NodeId};
use ringstore_ring::DriveSpec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::network::{PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE};
use crate::node::Inner;

pub(crate) const PATH_HELLO: &str = "/cluster/hello";
pub(crate) const PATH_JOIN: &str = "/cluster/join";
pub(crate) const PATH_WRITE: &str = "/cluster/write";
pub(crate) const PATH_READ_BARRIER: &str = "/cluster/read-barrier";

/// A node introducing itself: the answer to hello, with what bootstrap needs to decide.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub name: String,
    pub node_id: NodeId,
    pub rpc_addr: String,
    pub zone: String,
    pub drives: Vec<DriveSpec>,
    /// Whether the node has a Raft membership, i.e. belongs to a cluster.
    pub initialized: bool,
    /// The leader's RPC address, if the node knows one.
    pub leader: Option<String>,
}

/// A node asking to become a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    pub name: String,
    pub node_id: NodeId,
    pub rpc_addr: String,
    pub zone: String,
    pub drives: Vec<DriveSpec>,
}

impl From<Hello> for Member {
    fn from(h: Hello) -> Self {
        Member {
            name: h.name,
            node_id: h.node_id,
            rpc_addr: h.rpc_addr,
            zone: h.zone,
            drives: h.drives,
        }
    }
}

/// Why a forwarded request was not served. Either way nothing was applied.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum WireError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<String> },
    #[error("{0}")]
    Failed(String),
    /// Final: retrying cannot help.
    #[error("{0}")]
    Refused(String),
}

pub(crate) type WireResult<T> = Result<T, WireError>;

/// Raft batches and snapshot chunks can exceed axum's 2 MiB default.
const BODY_LIMIT: usize = 64 << 20;

pub(crate) fn router(inner: Arc<Inner>) -> axum::Router {
    let p = |path: &str| format!("{}{path}", ringstore_rpc::PREFIX);
    axum::Router::new()
        .route(&p(PATH_APPEND), post(append))
        .route(&p(PATH_VOTE), post(vote))
        .route(&p(PATH_SNAPSHOT), post(snapshot))
        .route(&p(PATH_HELLO), post(hello))
        .route(&p(PATH_JOIN), post(join))
        .route(&p(PATH_WRITE), post(write))
        .route(&p(PATH_READ_BARRIER), post(read_barrier))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(inner)
}

/// Decodes the request, runs `f` and encodes its answer. A node that is shutting down answers
/// 503, which peers treat as unreachable rather than as a Raft answer.
async fn serve<Req, Resp, F, Fut>(inner: &Inner, body: &Bytes, f: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Resp>,
{
    if inner.is_shut() {
        return (StatusCode::SERVICE_UNAVAILABLE, "cluster node is shutting down").into_response();
    }
    let req = match ringstore_rpc::decode::<Req>(body) {
        Ok(req) => req,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let resp = f(req).await;
    (
        [(header::CONTENT_TYPE, "application/msgpack")],
        ringstore_rpc::encode(&resp),
    )
        .into_response()
}

async fn append(State(n): State<Arc<Inner>>, body: Bytes) -> Response {
    serve(&n, &body, |req| n.raft.append_entries(req)).await
}

async fn vote(State(n): State<Arc<Inner>>, body: Bytes) -> Response {
    serve(&n, &body, |req| n.raft.vote(req)).await
}

async fn snapshot(State(n): State<Arc<Inner>>, body: Bytes) -> Response {
    serve(&n, &body, |req| n.raft.install_snapshot(req)).await
}

async fn hello(State(n): State<Arc<Inner>>, body: Bytes) -> Response {
    serve(&n, &body, |()| async { n.hello() }).await
}

async fn join(State(n): State<Arc<Inner>>, body: Bytes) -> Response {
    let node = &n;
    serve(&n, &body, |m: Member| async move {
        tracing::info!(node = %m.name, addr = %m.rpc_addr, "join request");
        node.admit(&m).await.map_err(|e| match e {
            crate::Error::Refused(why) => WireError::Refused(why),
            e => WireError::Failed(e.to_string()),
        })
    })
    .await
}

async fn write(State(n): State<Arc<Inner>>, body: Bytes) -> Response {
    serve(&n, &body, |cmd: Command| n.write_local(cmd)).await
}

async fn read_barrier(State(n): State<Arc<Inner>>, body: Bytes) -> Response {
    serve(&n, &body, |()| async { n.read_barrier_local().await }).await
}

/// The read barrier's answer: the log id reads must wait for.
pub(crate) type ReadIndex = Option<LogId>;
