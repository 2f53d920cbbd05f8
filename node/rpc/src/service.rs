//! The server side of the drive RPCs: this node's drives, served to its peers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::StatusCode;
use ringstore_store::Drive;
use serde_bytes::ByteBuf;

use crate::Caching;
use crate::drive::{CommitReq, GetReq, ScanKeysReq, ScanKeysResp, ScanReq, ShardReq};

/// For `get-with-data` (on the data channel, [`crate::data`]): given a record's value and how many bytes of the record's
/// object the reader wants from its start (`None`: all), the shard file the record names
/// and how many of that file's first bytes to attach (`None`: attach nothing). The object
/// layer knows what records hold; the drive service only serves the bytes.
pub type AttachData = Arc<dyn Fn(&[u8], Option<u64>) -> Option<(String, u64, Caching)> + Send + Sync>;

/// This node's drives by id. Replaceable, because a replacement drive takes over the
/// identity of the one it replaces once the node learns the layout.
#[derive(Clone)]
pub struct DriveService {
    drives: Arc<RwLock<HashMap<String, Arc<Drive>>>>,
    attach: Option<AttachData>,
}

impl DriveService {
    pub fn new(drives: impl IntoIterator<Item = Arc<Drive>>) -> Self {
        let s = Self {
            drives: Default::default(),
            attach: None,
        };
        s.set(drives);
        s
    }

    /// Serves `get-with-data` with `attach` choosing the bytes to attach (without it, that
    /// call answers the record alone).
    pub fn with_attach(mut self, attach: AttachData) -> Self {
        self.attach = Some(attach);
        self
    }

    pub fn set(&self, drives: impl IntoIterator<Item = Arc<Drive>>) {
        *self.drives.write().expect("not poisoned") =
            drives.into_iter().map(|d| (d.id().to_string(), d)).collect();
    }

    /// The drive `id` of this node, or why there is none as an HTTP status and message.
    pub(crate) fn find(&self, id: &str) -> Result<Arc<Drive>, (StatusCode, String)> {
        let drives = self.drives.read().expect("not poisoned");
        if drives.is_empty() {
            // not "missing": the drives are served once the node has joined its cluster
            return Err((StatusCode::SERVICE_UNAVAILABLE, "node is starting".into()));
        }
        drives
            .get(id)
            .cloned()
            .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no drive {id} on this node")))
    }

    #[expect(clippy::result_large_err, reason = "the error is the ready-made HTTP answer")]
    fn drive(&self, id: &str) -> Result<Arc<Drive>, Response> {
        self.find(id).map_err(IntoResponse::into_response)
    }

    /// The shard bytes to attach to the record `value` for a reader that wants `want` bytes
    /// of its object ([`AttachData`]); `None` without an attach function.
    pub(crate) fn attach(&self, value: &[u8], want: Option<u64>) -> Option<(String, u64, Caching)> {
        self.attach.as_ref().and_then(|f| f(value, want))
    }
}

/// The drive endpoints, with their full paths (`/rpc/v1/...`). Authentication is applied by
/// the caller around the whole RPC router.
pub fn router(service: DriveService) -> Router {
    let p = crate::PREFIX;
    Router::new()
        // liveness of the node process, for peers probing one they suspect is hung
        .route(&format!("{p}/ping"), axum::routing::get(|| async { "pong" }))
        .route(&format!("{p}/drive/commit"), post(commit))
        .route(&format!("{p}/drive/get"), post(get))
        .route(&format!("{p}/drive/scan"), post(scan))
        .route(&format!("{p}/drive/scan-keys"), post(scan_keys))
        .route(&format!("{p}/shard/patch"), post(patch))
        .route(&format!("{p}/shard/delete"), post(delete))
        .layer(DefaultBodyLimit::disable())
        .with_state(service)
}

fn storage_error(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, e.to_string()).into_response()
}

fn reply<T: serde::Serialize>(v: &T) -> Response {
    crate::encode(v).into_response()
}

/// A request naming one of this node's drives.
trait DriveRequest: serde::de::DeserializeOwned {
    fn drive(&self) -> &str;
}

macro_rules! drive_request {
    ($($t:ty),*) => {$(
        impl DriveRequest for $t {
            fn drive(&self) -> &str {
                &self.drive
            }
        }
    )*};
}
drive_request!(CommitReq, GetReq, ScanReq, ScanKeysReq, ShardReq);

/// Decodes a request and finds its drive; the error is the ready answer.
#[expect(clippy::result_large_err, reason = "the error is the ready-made HTTP answer")]
fn open<T: DriveRequest>(s: &DriveService, body: &[u8]) -> Result<(T, Arc<Drive>), Response> {
    let req: T = crate::decode(body).map_err(bad_request)?;
    let drive = s.drive(req.drive())?;
    Ok((req, drive))
}

/// The MessagePack answer of a storage call, or its error as a 500.
fn answer<T: serde::Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Response {
    match r {
        Ok(v) => reply(&v),
        Err(e) => storage_error(e),
    }
}

/// Runs a drive call that touches files on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ringstore_store::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn commit(State(s): State<DriveService>, body: Bytes) -> Response {
    match open::<CommitReq>(&s, &body) {
        Ok((req, drive)) if req.replaced => answer(
            drive
                .commit_replacing(req.ops)
                .await
                .map(|r| Some(r.into_iter().map(|v| v.map(ByteBuf::from)).collect::<Vec<_>>())),
        ),
        Ok((req, drive)) => answer(drive.commit(req.ops).await.map(|_| None::<Vec<Option<ByteBuf>>>)),
        Err(r) => r,
    }
}

async fn get(State(s): State<DriveService>, body: Bytes) -> Response {
    match open::<GetReq>(&s, &body) {
        Ok((req, drive)) => answer(drive.get(req.table, &req.key).map(|v| v.map(ByteBuf::from))),
        Err(r) => r,
    }
}

async fn scan(State(s): State<DriveService>, body: Bytes) -> Response {
    let (req, drive) = match open::<ScanReq>(&s, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
    let after = req.after.as_deref().map(|a| &a[..]);
    answer(drive.scan(req.table, &req.prefix, after, limit).map(|v| {
        v.into_iter()
            .map(|(k, v)| (ByteBuf::from(k), ByteBuf::from(v)))
            .collect::<Vec<_>>()
    }))
}

async fn scan_keys(State(s): State<DriveService>, body: Bytes) -> Response {
    let (req, drive) = match open::<ScanKeysReq>(&s, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    answer(
        blocking(move || {
            crate::drive::scan_partition_keys_local(
                &drive,
                req.table,
                req.after.as_deref().map(|a| &a[..]),
                &req.partitions,
            )
        })
        .await
        .map(|(keys, next)| ScanKeysResp {
            keys: keys.into_iter().map(ByteBuf::from).collect(),
            next: next.map(ByteBuf::from),
        }),
    )
}

async fn patch(State(s): State<DriveService>, body: Bytes) -> Response {
    match open::<ShardReq>(&s, &body) {
        Ok((req, drive)) => {
            answer(blocking(move || drive.patch_shard(&req.data_id, req.offset, &req.frame)).await)
        }
        Err(r) => r,
    }
}

async fn delete(State(s): State<DriveService>, body: Bytes) -> Response {
    match open::<ShardReq>(&s, &body) {
        Ok((req, drive)) => answer(blocking(move || drive.delete_shard(&req.data_id)).await),
        Err(r) => r,
    }
}
