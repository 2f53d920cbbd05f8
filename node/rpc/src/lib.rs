//! Node-to-node RPC: every internal request (Raft messages, shard and metadata reads and
//! writes, node identity) travels over cleartext HTTP/2 with prior knowledge, one multiplexed
//! connection per peer, and carries a token derived from the cluster secret.
//!
//! The token is `sha256("ringstore-cluster-v1\0" + secret)` in hex, so the secret itself never
//! crosses the wire; a peer with a different secret presents a different token and is refused
//! with 401, and the refusal is logged with the peer's address. Without TLS the token can be
//! replayed by someone who can read the network: on Kubernetes the RPC port is only reachable
//! inside the namespace (headless Service), and TLS between nodes is a later step.
//!
//! Bodies are MessagePack (named fields) except shard data, which streams as raw bytes.
//! Reads of shard bytes take the data channel instead ([`data`]): plain TCP on the same
//! port, authenticated with the same token, the bytes sent with `sendfile` from the serving
//! node's page cache.

mod client;
pub mod data;
mod drive;
mod service;

use std::sync::Arc;

use axum::response::IntoResponse;

pub use client::{Client, RpcError};
pub use data::DataService;
pub use drive::{Caching, DriveHandle, RemoteDrive, ShardSink, ShardSource, WithShard};
pub use service::{AttachData, DriveService, router as drive_router};

/// Header carrying the cluster token on every internal request.
pub const AUTH_HEADER: &str = "x-ringstore-cluster";
/// Path prefix of every internal endpoint.
pub const PREFIX: &str = "/rpc/v1";

/// The cluster secret's derived token, shared by the client and the server side.
#[derive(Clone)]
pub struct ClusterAuth {
    token: Arc<str>,
}

impl std::fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterAuth(***)")
    }
}

impl ClusterAuth {
    pub fn new(secret: &str) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"ringstore-cluster-v1\0");
        h.update(secret.as_bytes());
        Self {
            token: hex::encode(h.finalize()).into(),
        }
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Whether a presented token matches, compared in constant time.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let want = self.token.as_bytes();
        presented.len() == want.len()
            && presented.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// An axum middleware refusing requests without this cluster's token (401, logged once
    /// per request with the peer address when the server records it).
    pub fn layer<S>(self, router: axum::Router<S>) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        router.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let auth = self.clone();
                async move {
                    let ok = req
                        .headers()
                        .get(AUTH_HEADER)
                        .is_some_and(|v| auth.accepts(v.as_bytes()));
                    if !ok {
                        let peer = req
                            .extensions()
                            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                            .map(|c| c.0.to_string())
                            .unwrap_or_else(|| "unknown".into());
                        tracing::warn!(%peer, path = %req.uri().path(),
                        "refused an internal request: missing or wrong cluster secret");
                        return (http::StatusCode::UNAUTHORIZED, "wrong cluster secret").into_response();
                    }
                    next.run(req).await
                }
            },
        ))
    }
}

/// Encodes an RPC message.
pub fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("RPC messages serialise")
}

/// Decodes an RPC message.
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, RpcError> {
    rmp_serde::from_slice(b).map_err(|e| RpcError::Decode(e.to_string()))
}
