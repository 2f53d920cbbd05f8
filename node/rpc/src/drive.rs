//! A drive as the object service sees it: local (this node's folder) or remote (a drive of
//! another node, reached over RPC). Metadata calls are async; shard I/O is synchronous and
//! meant for blocking threads (`spawn_blocking`), where the remote variant drives its calls
//! (data-channel requests for shard reads and writes) with the runtime
//! handle it captured, so the erasure-coding loops stay the same for both.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringstore_store::{Drive, Error, Op, Result, ShardWriter, Table, UncachedShard};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::data::{CHUNK_HEAD, DataConn, DataReq};
use crate::{Client, RpcError};

/// How long a remote shard write may wait for the peer to take the next frame, and for its
/// final fsync answer.
const SHARD_STALL: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
pub enum DriveHandle {
    Local(Arc<Drive>),
    Remote(Arc<RemoteDrive>),
}

/// A drive of another node.
#[derive(Debug)]
pub struct RemoteDrive {
    pub id: String,
    /// The owning node's name and RPC address.
    pub node: String,
    pub addr: String,
    client: Client,
}

impl RemoteDrive {
    pub fn new(id: String, node: String, addr: String, client: Client) -> Self {
        Self {
            id,
            node,
            addr,
            client,
        }
    }

    fn err(&self, e: RpcError) -> Error {
        Error::Remote {
            drive: format!("{} (node {})", self.id, self.node),
            reason: e.to_string(),
        }
    }

    async fn call<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp> {
        self.client
            .call(&self.addr, path, req)
            .await
            .map_err(|e| self.err(e))
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct CommitReq {
    pub drive: String,
    pub ops: Vec<Op>,
    /// Answer the values replaced (see [`DriveHandle::commit_replacing`]) instead of nothing.
    #[serde(default)]
    pub replaced: bool,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct GetReq {
    pub drive: String,
    pub table: Table,
    pub key: ByteBuf,
    /// For `get-with-data`: the bytes of the object the reader wants from its start
    /// (`None`: all).
    #[serde(default)]
    pub want: Option<u64>,
}

/// A record value, and when the drive attached them, the first bytes of the shard file it
/// names (`(data_id, bytes)`).
pub type WithShard = (Option<Vec<u8>>, Option<(String, Bytes)>);

#[derive(Serialize, Deserialize)]
pub(crate) struct ScanReq {
    pub drive: String,
    pub table: Table,
    pub prefix: ByteBuf,
    pub after: Option<ByteBuf>,
    pub limit: u64,
}

/// Keys of a table in some partitions ([`DriveHandle::scan_partition_keys`]).
#[derive(Serialize, Deserialize)]
pub(crate) struct ScanKeysReq {
    pub drive: String,
    pub table: Table,
    pub after: Option<ByteBuf>,
    /// One bit per partition (bit `p % 8` of byte `p / 8`).
    pub partitions: ByteBuf,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ScanKeysResp {
    pub keys: Vec<ByteBuf>,
    /// Where the next call starts; `None` at the end of the table.
    pub next: Option<ByteBuf>,
}

/// Keys a drive looks at per [`DriveHandle::scan_partition_keys`] call at most, and the
/// most it answers.
const SCAN_BUDGET: usize = 20_000;
const SCAN_KEYS_MAX: usize = 2_000;

/// Whether a table key (`bucket \0 key`, optionally followed by `\0 ...`) belongs to one
/// of the partitions set in `bitmap`.
pub fn key_in_partitions(key: &[u8], bitmap: &[u8]) -> bool {
    let Some(a) = key.iter().position(|b| *b == 0) else {
        return false;
    };
    let rest = &key[a + 1..];
    let object = &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())];
    let (Ok(bucket), Ok(object)) = (std::str::from_utf8(&key[..a]), std::str::from_utf8(object)) else {
        return false;
    };
    let p = ringstore_ring::partition_of(bucket, object) as usize;
    bitmap.get(p / 8).is_some_and(|b| b & (1 << (p % 8)) != 0)
}

/// [`Drive::scan_keys`] filtered by [`key_in_partitions`], with the budget every caller uses.
pub(crate) fn scan_partition_keys_local(
    drive: &Drive,
    table: Table,
    after: Option<&[u8]>,
    bitmap: &[u8],
) -> Result<ringstore_store::KeyPage> {
    drive.scan_keys(table, after, SCAN_KEYS_MAX, SCAN_BUDGET, |k| {
        key_in_partitions(k, bitmap)
    })
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ShardReq {
    pub drive: String,
    pub data_id: String,
    /// For patches: where the frame goes and the frame itself.
    pub offset: u64,
    pub frame: ByteBuf,
}

impl DriveHandle {
    pub fn id(&self) -> &str {
        match self {
            DriveHandle::Local(d) => d.id(),
            DriveHandle::Remote(r) => &r.id,
        }
    }

    pub fn local(&self) -> Option<&Arc<Drive>> {
        match self {
            DriveHandle::Local(d) => Some(d),
            DriveHandle::Remote(_) => None,
        }
    }

    /// Commits `ops` atomically on the drive (durable when this returns).
    pub async fn commit(&self, ops: Vec<Op>) -> Result<()> {
        match self {
            DriveHandle::Local(d) => d.commit(ops).await,
            DriveHandle::Remote(r) => {
                let req = CommitReq {
                    drive: r.id.clone(),
                    ops,
                    replaced: false,
                };
                r.call::<_, Option<Vec<Option<ByteBuf>>>>("/drive/commit", &req)
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Commits `ops` and answers, per operation, the value a `PutIfNewer` found before it.
    pub async fn commit_replacing(&self, ops: Vec<Op>) -> Result<ringstore_store::Replaced> {
        match self {
            DriveHandle::Local(d) => d.commit_replacing(ops).await,
            DriveHandle::Remote(r) => {
                let req = CommitReq {
                    drive: r.id.clone(),
                    ops,
                    replaced: true,
                };
                let got: Option<Vec<Option<ByteBuf>>> = r.call("/drive/commit", &req).await?;
                Ok(got
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| v.map(ByteBuf::into_vec))
                    .collect())
            }
        }
    }

    /// Whether the drive is this node's own (no network between it and the caller).
    pub fn is_local(&self) -> bool {
        matches!(self, DriveHandle::Local(_))
    }

    /// Whether the drive's node could not be reached moments ago (a hint: see
    /// [`Client::is_down`]).
    pub fn is_down(&self) -> bool {
        match self {
            DriveHandle::Local(_) => false,
            DriveHandle::Remote(r) => r.client.is_down(&r.addr),
        }
    }

    pub async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            DriveHandle::Local(d) => d.get(table, key),
            DriveHandle::Remote(r) => {
                let v: Option<ByteBuf> = r
                    .call(
                        "/drive/get",
                        &GetReq {
                            drive: r.id.clone(),
                            table,
                            key: ByteBuf::from(key.to_vec()),
                            want: None,
                        },
                    )
                    .await?;
                Ok(v.map(ByteBuf::into_vec))
            }
        }
    }

    /// Like [`DriveHandle::get`], for a reader that will go on to read the data the record
    /// names: a remote drive attaches the first bytes of that shard to its answer (what the
    /// serving node's [`crate::AttachData`] picks), saving the reader a round trip. A local
    /// drive attaches nothing (its shard is read straight from the file).
    /// `want` is how many bytes of the object the reader wants from its start (`None`: all),
    /// so a short range does not bring a whole window along.
    pub async fn get_with_data(&self, table: Table, key: &[u8], want: Option<u64>) -> Result<WithShard> {
        match self {
            DriveHandle::Local(d) => Ok((d.get(table, key)?, None)),
            DriveHandle::Remote(r) => {
                let req = DataReq::GetWithData(GetReq {
                    drive: r.id.clone(),
                    table,
                    key: ByteBuf::from(key.to_vec()),
                    want,
                });
                let (head, data) = r
                    .client
                    .data_call(&r.addr, &req, r.client.timeout)
                    .await
                    .map_err(|e| r.err(e))?;
                Ok((
                    head.value.map(ByteBuf::into_vec),
                    head.data_id.map(|id| (id, data)),
                ))
            }
        }
    }

    /// Up to `limit` entries with keys starting with `prefix`, strictly after `after`.
    pub async fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match self {
            DriveHandle::Local(d) => d.scan(table, prefix, after, limit),
            DriveHandle::Remote(r) => {
                let v: Vec<(ByteBuf, ByteBuf)> = r
                    .call(
                        "/drive/scan",
                        &ScanReq {
                            drive: r.id.clone(),
                            table,
                            prefix: ByteBuf::from(prefix.to_vec()),
                            after: after.map(|a| ByteBuf::from(a.to_vec())),
                            limit: limit as u64,
                        },
                    )
                    .await?;
                Ok(v.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())).collect())
            }
        }
    }

    /// Keys of `table` in the partitions set in `bitmap` (see [`key_in_partitions`]), a
    /// page at a time: the keys after `after`, and where the next page starts (`None` once
    /// the whole table was looked at). A page may be empty before the end.
    pub async fn scan_partition_keys(
        &self,
        table: Table,
        after: Option<&[u8]>,
        bitmap: &[u8],
    ) -> Result<ringstore_store::KeyPage> {
        match self {
            DriveHandle::Local(d) => {
                let (d, after, bitmap) = (d.clone(), after.map(<[u8]>::to_vec), bitmap.to_vec());
                tokio::task::spawn_blocking(move || {
                    scan_partition_keys_local(&d, table, after.as_deref(), &bitmap)
                })
                .await
                .map_err(|e| Error::Closed(format!("{}: {e}", self.id())))?
            }
            DriveHandle::Remote(r) => {
                let v: ScanKeysResp = r
                    .call(
                        "/drive/scan-keys",
                        &ScanKeysReq {
                            drive: r.id.clone(),
                            table,
                            after: after.map(|a| ByteBuf::from(a.to_vec())),
                            partitions: ByteBuf::from(bitmap.to_vec()),
                        },
                    )
                    .await?;
                Ok((
                    v.keys.into_iter().map(ByteBuf::into_vec).collect(),
                    v.next.map(ByteBuf::into_vec),
                ))
            }
        }
    }

    /// Starts a new shard file (`replace`: atomically replacing an existing one). Blocking.
    pub fn create_shard(&self, data_id: &str, replace: bool) -> Result<ShardSink> {
        match self {
            DriveHandle::Local(d) => {
                let w = if replace {
                    d.replace_shard(data_id)?
                } else {
                    d.create_shard(data_id)?
                };
                Ok(ShardSink::Local(w))
            }
            DriveHandle::Remote(r) => {
                let handle = tokio::runtime::Handle::current();
                let req = DataReq::Write {
                    drive: r.id.clone(),
                    data_id: data_id.to_string(),
                    replace,
                };
                let conn = handle.block_on(async {
                    let started = async {
                        // an idle connection the peer has just closed fails here: then a
                        // new one is tried (nothing of the shard was sent yet)
                        if let Some(mut conn) = r.client.data_pooled(&r.addr)
                            && conn.start(&req).await.is_ok()
                        {
                            return Ok(conn);
                        }
                        let mut conn = r.client.data_conn(&r.addr).await?;
                        conn.start(&req).await.map_err(|e| r.client.lost(&r.addr, e))?;
                        Ok::<_, RpcError>(conn)
                    };
                    match tokio::time::timeout(SHARD_STALL, started).await {
                        Ok(started) => started.map_err(|e| r.err(e)),
                        Err(_) => Err(Error::Remote {
                            drive: format!("{} (node {})", r.id, r.node),
                            reason: stalled(r, "took no shard"),
                        }),
                    }
                })?;
                Ok(ShardSink::Remote(RemoteSink {
                    conn: Some(conn),
                    buf: chunk_buffer(),
                    handle,
                    drive: r.clone(),
                }))
            }
        }
    }

    /// Opens a shard for reading; `None` when it does not exist. Blocking.
    pub fn open_shard(&self, data_id: &str) -> Result<Option<ShardSource>> {
        self.open_shard_seeded(data_id, None, Caching::Cached)
    }

    /// Like [`DriveHandle::open_shard`], with the shard's first bytes already at hand (from
    /// [`DriveHandle::get_with_data`]): a remote shard serves reads within them without
    /// asking its node again. With [`Caching::Uncached`] the shard is read around the page
    /// cache, here or on its node.
    pub fn open_shard_seeded(
        &self,
        data_id: &str,
        first: Option<Bytes>,
        caching: Caching,
    ) -> Result<Option<ShardSource>> {
        match self {
            DriveHandle::Local(d) => Ok(match caching {
                Caching::Cached => d.open_shard(data_id)?.map(ShardSource::Local),
                Caching::Uncached => d.open_shard_uncached(data_id)?.map(ShardSource::LocalUncached),
            }),
            // opened lazily: a missing remote shard shows up as missing frames
            DriveHandle::Remote(r) => Ok(Some(ShardSource::Remote(RemoteSource {
                drive: r.clone(),
                data_id: data_id.to_string(),
                uncached: caching == Caching::Uncached,
                handle: tokio::runtime::Handle::current(),
                ahead: std::sync::Mutex::new(ReadAhead {
                    cached: first.map(|b| (0, b)),
                    pending: Default::default(),
                }),
            }))),
        }
    }

    /// Overwrites one frame of an existing shard durably. Blocking.
    pub fn patch_shard(&self, data_id: &str, offset: u64, frame: &[u8]) -> Result<()> {
        match self {
            DriveHandle::Local(d) => d.patch_shard(data_id, offset, frame),
            DriveHandle::Remote(r) => {
                let req = ShardReq {
                    drive: r.id.clone(),
                    data_id: data_id.to_string(),
                    offset,
                    frame: ByteBuf::from(frame.to_vec()),
                };
                tokio::runtime::Handle::current().block_on(r.call::<_, ()>("/shard/patch", &req))
            }
        }
    }

    /// Removes a shard file (missing is fine). Async.
    pub async fn delete_shard(&self, data_id: &str) -> Result<()> {
        match self {
            DriveHandle::Local(d) => {
                let (d, id) = (d.clone(), data_id.to_string());
                tokio::task::spawn_blocking(move || d.delete_shard(&id))
                    .await
                    .map_err(|e| Error::Closed(e.to_string()))?
            }
            DriveHandle::Remote(r) => {
                let req = ShardReq {
                    drive: r.id.clone(),
                    data_id: data_id.to_string(),
                    offset: 0,
                    frame: ByteBuf::new(),
                };
                r.call("/shard/delete", &req).await
            }
        }
    }
}

/// A shard being written.
pub enum ShardSink {
    Local(ShardWriter),
    Remote(RemoteSink),
}

/// A shard being written on another node, over a data connection ([`crate::data`]);
/// dropped unfinished, it closes the connection and the peer removes the partial file.
pub struct RemoteSink {
    conn: Option<DataConn>,
    /// Written bytes not sent yet, after room for the chunk's length: frames and their
    /// checksums leave in one chunk.
    buf: Vec<u8>,
    handle: tokio::runtime::Handle,
    drive: Arc<RemoteDrive>,
}

/// Bytes gathered before a remote shard write sends them (one frame).
const SEND_AT: usize = 256 * 1024;

fn chunk_buffer() -> Vec<u8> {
    let mut buf = Vec::with_capacity(CHUNK_HEAD + SEND_AT + 64);
    buf.resize(CHUNK_HEAD, 0);
    buf
}

/// What went wrong with a peer that did not keep up with a shard write within
/// [`SHARD_STALL`]; it is suspected of hanging. Within the runtime.
fn stalled(drive: &RemoteDrive, what: &str) -> String {
    drive.client.suspect(&drive.addr);
    format!("node {} {what} for {} s", drive.node, SHARD_STALL.as_secs())
}

/// Runs one step of a remote shard write on `conn`, waiting at most [`SHARD_STALL`].
fn remote_step<T>(
    handle: &tokio::runtime::Handle,
    conn: &mut Option<DataConn>,
    drive: &RemoteDrive,
    what: &str,
    step: impl AsyncFnOnce(&mut DataConn) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let c = conn
        .as_mut()
        .ok_or_else(|| std::io::Error::other("shard write already failed"))?;
    // the timer is created inside `block_on`: callers may be plain threads
    let done = handle.block_on(async { tokio::time::timeout(SHARD_STALL, step(c)).await });
    match done {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            *conn = None;
            Err(std::io::Error::other(format!(
                "node {} stopped taking the shard: {e}",
                drive.node
            )))
        }
        Err(_) => {
            *conn = None;
            let _runtime = handle.enter();
            Err(std::io::Error::other(stalled(drive, what)))
        }
    }
}

impl ShardSink {
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            ShardSink::Local(w) => w.write(data),
            ShardSink::Remote(RemoteSink {
                conn,
                buf,
                handle,
                drive,
            }) => {
                // in pieces, so that no chunk grows past twice `SEND_AT`, whatever the
                // caller hands over at once
                for piece in data.chunks(SEND_AT) {
                    buf.extend_from_slice(piece);
                    if buf.len() >= CHUNK_HEAD + SEND_AT {
                        remote_step(handle, conn, drive, "took no data", async |c| c.chunk(buf).await)?;
                        buf.truncate(CHUNK_HEAD);
                    }
                }
                Ok(())
            }
        }
    }

    /// Makes the shard durable; for a remote drive, waits until the peer fsynced it.
    pub fn finish(self) -> std::io::Result<()> {
        match self {
            ShardSink::Local(w) => w.finish(),
            ShardSink::Remote(RemoteSink {
                mut conn,
                mut buf,
                handle,
                drive,
            }) => {
                if buf.len() > CHUNK_HEAD {
                    remote_step(&handle, &mut conn, &drive, "took no data", async |c| {
                        c.chunk(&mut buf).await
                    })?;
                }
                let head = remote_step(
                    &handle,
                    &mut conn,
                    &drive,
                    "did not confirm the shard",
                    async |c| c.end().await,
                )?;
                if head.status != 200 {
                    // (the peer read every chunk, so the connection is in step, but only
                    // one whose last exchange went as planned is kept)
                    return Err(std::io::Error::other(format!(
                        "node {} could not write the shard: {}",
                        drive.node, head.message
                    )));
                }
                if let Some(c) = conn {
                    drive.client.data_idle(&drive.addr, c);
                }
                Ok(())
            }
        }
    }
}

/// How a shard is read: through the page cache, or around it for shards that are read
/// rarely and not again soon (parity: see `ringstore_object`'s read path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caching {
    Cached,
    Uncached,
}

/// A shard open for reading.
pub enum ShardSource {
    Local(File),
    LocalUncached(UncachedShard),
    Remote(RemoteSource),
}

/// A remote shard: frames are fetched one range per request, and ranges announced with
/// [`ShardSource::prefetch`] are fetched ahead in the background, so that a GET waits for the
/// network once per window rather than once per frame, with every shard fetched in parallel.
pub struct RemoteSource {
    drive: Arc<RemoteDrive>,
    data_id: String,
    /// Whether its node reads the shard around its page cache.
    uncached: bool,
    handle: tokio::runtime::Handle,
    ahead: std::sync::Mutex<ReadAhead>,
}

type Fetch = tokio::task::JoinHandle<Result<Bytes, RpcError>>;

#[derive(Default)]
struct ReadAhead {
    /// Bytes starting at an offset (a short answer means the shard ends there).
    cached: Option<(u64, Bytes)>,
    /// Ranges being fetched, in order: (start, end, fetch).
    pending: std::collections::VecDeque<(u64, u64, Fetch)>,
}

impl RemoteSource {
    fn fetch(&self, offset: u64, len: u64, partial: bool) -> Fetch {
        let drive = self.drive.clone();
        let req = DataReq::Read {
            drive: drive.id.clone(),
            data_id: self.data_id.clone(),
            offset,
            len,
            partial,
            uncached: self.uncached,
        };
        self.handle.spawn(async move {
            let client = &drive.client;
            let (_, bytes) = client.data_call(&drive.addr, &req, client.timeout).await?;
            Ok(bytes)
        })
    }

    /// `len` bytes at `offset`, as a slice of the fetched range (no copy); `None` when the
    /// shard is missing or too short.
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Option<Bytes>> {
        let mut ahead = self.ahead.lock().expect("not poisoned");
        if let Some(v) = slice_of(&ahead.cached, offset, len) {
            return Ok(Some(v));
        }
        let end = offset + len as u64;
        if let Some(i) = ahead
            .pending
            .iter()
            .position(|(s, e, _)| *s <= offset && end <= *e)
        {
            let (start, _, fetch) = ahead.pending.remove(i).expect("found");
            // fetches of ranges before this one will not be read any more
            ahead.pending.retain(|(s, _, f)| {
                let keep = *s > start;
                if !keep {
                    f.abort();
                }
                keep
            });
            return match self.handle.block_on(fetch) {
                Ok(Ok(bytes)) => {
                    ahead.cached = Some((start, bytes));
                    // shorter than asked: the shard ends before this frame
                    Ok(slice_of(&ahead.cached, offset, len))
                }
                Ok(Err(e)) => remote_result(Err(e), len),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
        }
        drop(ahead);
        let fetch = self.fetch(offset, len as u64, false);
        let got = self
            .handle
            .block_on(fetch)
            .unwrap_or_else(|e| Err(RpcError::Decode(e.to_string())));
        remote_result(got, len)
    }
}

/// The bytes `offset..offset + len` if the cached range holds all of them.
fn slice_of(cached: &Option<(u64, Bytes)>, offset: u64, len: usize) -> Option<Bytes> {
    let (start, bytes) = cached.as_ref()?;
    let at = usize::try_from(offset.checked_sub(*start)?).ok()?;
    (at + len <= bytes.len()).then(|| bytes.slice(at..at + len))
}

fn remote_result(got: Result<Bytes, RpcError>, len: usize) -> std::io::Result<Option<Bytes>> {
    match got {
        Ok(b) if b.len() == len => Ok(Some(b)),
        Ok(_) => Ok(None),
        Err(RpcError::Remote {
            status: 404 | 416, ..
        }) => Ok(None),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

impl ShardSource {
    /// Whether the shard lives on another node (a failed read then means "out of reach").
    pub fn is_remote(&self) -> bool {
        matches!(self, ShardSource::Remote(_))
    }

    /// The length of a shard file on this node (an error for a remote one).
    pub fn local_len(&self) -> std::io::Result<u64> {
        match self {
            ShardSource::Local(f) => Ok(f.metadata()?.len()),
            ShardSource::LocalUncached(f) => f.file_len(),
            ShardSource::Remote(_) => Err(std::io::Error::other("the shard is on another node")),
        }
    }

    /// Announces that `offset..offset + len` will be read soon: a remote shard starts
    /// fetching it now (unless it is already cached or on its way); a local one does nothing.
    pub fn prefetch(&self, offset: u64, len: u64) {
        let ShardSource::Remote(r) = self else { return };
        let mut ahead = r.ahead.lock().expect("not poisoned");
        let end = offset + len;
        let cached = ahead
            .cached
            .as_ref()
            .is_some_and(|(s, b)| *s <= offset && end <= s + b.len() as u64);
        let coming = ahead.pending.iter().any(|(s, e, _)| *s <= offset && end <= *e);
        if !cached && !coming {
            let fetch = r.fetch(offset, len, true);
            ahead.pending.push_back((offset, end, fetch));
        }
    }

    /// `len` bytes at `offset`; `None` when the shard is missing or too short.
    pub fn read_frame(&self, offset: u64, len: usize) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            ShardSource::Local(f) => Drive::read_frame(f, offset, len),
            ShardSource::LocalUncached(f) => f.read_frame(offset, len),
            ShardSource::Remote(r) => Ok(r.read(offset, len)?.map(Vec::from)),
        }
    }

    /// `len` bytes at `offset` as shared bytes (a remote shard's are a slice of the fetched
    /// range, not a copy); `None` when the shard is missing or too short.
    pub fn read_bytes(&self, offset: u64, len: usize) -> std::io::Result<Option<Bytes>> {
        match self {
            ShardSource::Local(f) => Ok(Drive::read_frame(f, offset, len)?.map(Bytes::from)),
            ShardSource::LocalUncached(f) => Ok(f.read_frame(offset, len)?.map(Bytes::from)),
            ShardSource::Remote(r) => r.read(offset, len),
        }
    }
}

impl Drop for RemoteSource {
    fn drop(&mut self) {
        // a reader that goes away early leaves no fetches running
        if let Ok(mut ahead) = self.ahead.lock() {
            for (_, _, f) in ahead.pending.drain(..) {
                f.abort();
            }
        }
    }
}
