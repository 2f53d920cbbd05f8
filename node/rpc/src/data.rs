//! The data channel: shard bytes between nodes, sent from the page cache with `sendfile(2)`.
//!
//! Reads of shard bytes (a record with the first window of its shard, and ranges of a
//! shard) are most of what nodes send each other while serving GETs. Over HTTP/2 each of
//! them cost the serving node a copy of the bytes from its page cache into its memory and
//! another into the socket, plus framing and flow control on both ends. On the data
//! channel the serving node answers with a short head and hands the shard file's pages to
//! the socket (`sendfile`), as HDFS's DataNode does; the reader verifies every frame's
//! checksum as for any read, so nothing is trusted that was not checked before.
//!
//! The channel shares the RPC port: a connection that starts with [`MAGIC`] is a data
//! connection, anything else is HTTP/2. After the magic the client sends the cluster token
//! (64 hex characters) and the server answers one byte: [`ACCEPTED`], [`REFUSED`] (a wrong
//! token, logged) or [`BUSY`] (too many data connections open), and closes unless accepted.
//! Then any number of requests, one at a time: a 4-byte big-endian length and a MessagePack
//! [`DataReq`]; each answer is a 4-byte length and a MessagePack [`DataHead`], followed by
//! `DataHead::len` raw bytes.
//!
//! Shard writes take the channel the other way: a [`DataReq::Write`] head, then the shard's
//! bytes in chunks (a 4-byte big-endian length, then that many bytes), ended by an empty
//! chunk; the server writes them as they come and answers one head once the shard is
//! fsynced. A connection that closes before the empty chunk leaves nothing behind (the
//! writer went away, and its unfinished file is removed).
//!
//! The server gives each data connection a thread of its own: `sendfile` blocks on a disk
//! read when the pages are not cached, a shard write blocks on the drive, and a connection
//! carries one request at a time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use ringstore_store::Drive;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::drive::GetReq;
use crate::{Caching, ClusterAuth, DriveService, RpcError};

/// The first bytes of a data connection (an HTTP/2 connection starts with `PRI * HT`).
pub const MAGIC: &[u8; 8] = b"RSDATA01";

/// Longest request or answer head accepted (keys are at most 1 KiB).
const MAX_HEAD: usize = 1 << 20;

/// How long a server thread waits for the next request before closing an idle connection
/// (clients keep idle connections for reuse and reconnect when one was closed).
const IDLE: Duration = Duration::from_secs(120);

/// How long the server waits for a reader to take the bytes of an answer.
const SEND_STALL: Duration = Duration::from_secs(20);

/// How long a new connection may take to present its token (all of it).
const HELLO: Duration = Duration::from_secs(5);

/// The server's answers to a connection's token.
pub const ACCEPTED: u8 = 1;
pub const REFUSED: u8 = 0;
pub const BUSY: u8 = 2;

/// Data connections a node serves at once (each has a thread); more are closed at once.
const MAX_CONNECTIONS: usize = 1024;

/// Longest chunk of a shard write accepted.
const MAX_CHUNK: usize = 16 << 20;

/// Idle connections a client keeps per peer.
const POOL: usize = 64;

/// How long a client keeps an idle connection: well within the server's [`IDLE`], so a
/// pooled connection is rarely one the server already closed.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// What a data connection asks.
#[derive(Serialize, Deserialize)]
pub(crate) enum DataReq {
    /// A record and the first bytes of the shard it names (see
    /// [`crate::DriveHandle::get_with_data`]).
    GetWithData(GetReq),
    /// `len` bytes of a shard from `offset`: all of them, or with `partial` as many as the
    /// shard holds; with `uncached` read around the node's page cache.
    Read {
        drive: String,
        data_id: String,
        offset: u64,
        len: u64,
        partial: bool,
        uncached: bool,
    },
    /// A new shard file (`replace`: a replacement that takes the old one's place atomically
    /// when finished); its bytes follow in chunks (see the module's documentation).
    Write {
        drive: String,
        data_id: String,
        replace: bool,
    },
}

impl DataReq {
    /// The most bytes a sound answer can carry: what a read asked for, a read-ahead window
    /// (a few frames) for a record with data, none for a write. A peer that announces more
    /// is not believed, and nothing is allocated for it.
    fn most_answered(&self) -> u64 {
        match self {
            DataReq::Read { len, .. } => *len,
            DataReq::GetWithData(_) => MAX_ATTACHED,
            DataReq::Write { .. } => 0,
        }
    }
}

/// The most shard bytes a record may come with (its first read-ahead window is about 1 MiB).
const MAX_ATTACHED: u64 = 64 << 20;

/// The head of an answer; `len` raw bytes follow it.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct DataHead {
    /// An HTTP status code, with the same meanings as the HTTP routes.
    pub status: u16,
    /// What went wrong, when `status` is not 200.
    pub message: String,
    /// For `GetWithData`: the record's value, and the shard whose first bytes follow.
    pub value: Option<ByteBuf>,
    pub data_id: Option<String>,
    pub len: u64,
}

impl DataHead {
    fn error(status: StatusCode, message: impl std::fmt::Display) -> Self {
        Self {
            status: status.as_u16(),
            message: message.to_string(),
            ..Default::default()
        }
    }
}

/// Counts the requests a data connection serves, by the route and method of the HTTP
/// call it stands for (the node's RPC metrics count both kinds the same way).
pub type CountRequest = Arc<dyn Fn(&'static str, &'static str) + Send + Sync>;

/// The server side: this node's drives, served on data connections.
#[derive(Clone)]
pub struct DataService {
    drives: DriveService,
    auth: ClusterAuth,
    count: Option<CountRequest>,
    /// Connections being served, and how many may be.
    open: Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
}

impl DataService {
    pub fn new(drives: DriveService, auth: ClusterAuth) -> Self {
        Self {
            drives,
            auth,
            count: None,
            open: Default::default(),
            limit: MAX_CONNECTIONS,
        }
    }

    /// Serves at most `limit` connections at once (default [`MAX_CONNECTIONS`]).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Calls `count` for every request served.
    pub fn counting(mut self, count: CountRequest) -> Self {
        self.count = Some(count);
        self
    }

    /// Serves a connection whose first bytes were [`MAGIC`]: checks its token (within
    /// [`HELLO`]), then serves its requests on a thread of its own.
    pub async fn serve(&self, mut stream: tokio::net::TcpStream, peer: SocketAddr) {
        use std::sync::atomic::Ordering;
        let mut hello = [0u8; MAGIC.len() + 64];
        match tokio::time::timeout(HELLO, stream.read_exact(&mut hello)).await {
            Ok(Ok(_)) if hello[..MAGIC.len()] == MAGIC[..] => {}
            _ => return tracing::debug!(%peer, "a data connection without a hello"),
        }
        let answer = if !self.auth.accepts(&hello[MAGIC.len()..]) {
            tracing::warn!(%peer, "refused an internal data connection: wrong cluster secret");
            REFUSED
        } else if self.open.fetch_add(1, Ordering::Relaxed) >= self.limit {
            self.open.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%peer, "refused a data connection: {} are open", self.limit);
            BUSY
        } else {
            ACCEPTED
        };
        let sent = tokio::time::timeout(SEND_STALL, stream.write_all(&[answer])).await;
        if answer != ACCEPTED {
            return;
        }
        let stream = match sent
            .map_err(std::io::Error::other)
            .and_then(|sent| sent)
            .and_then(|_| stream.into_std())
            .and_then(|s| s.set_nonblocking(false).map(|_| s))
        {
            Ok(s) => s,
            Err(e) => {
                self.open.fetch_sub(1, Ordering::Relaxed);
                return tracing::debug!(%peer, error = %e, "data connection lost at the start");
            }
        };
        // the connection's slot comes free however its thread ends, a panic included
        let slot = Slot(self.open.clone());
        let service = self.clone();
        let spawned = std::thread::Builder::new()
            .name("ringstore-data".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = service.requests(stream) {
                    tracing::debug!(%peer, error = %e, "data connection ended");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(%peer, error = %e, "no thread for a data connection");
        }
    }

    /// Serves an accepted connection's requests until it closes or sits idle.
    fn requests(&self, mut s: TcpStream) -> std::io::Result<()> {
        s.set_read_timeout(Some(IDLE))?;
        s.set_write_timeout(Some(SEND_STALL))?;
        loop {
            let mut len = [0u8; 4];
            match s.read_exact(&mut len) {
                Ok(()) => {}
                // the client closed it, or it sat idle
                Err(_) => return Ok(()),
            }
            let mut req = vec![0u8; head_len(len)?];
            s.read_exact(&mut req)?;
            match crate::decode::<DataReq>(&req) {
                Ok(req) => self.answer(req, &mut s)?,
                // a request from a newer peer, say: answered, then the connection is closed,
                // since a body (a shard write's chunks) may follow that would be taken for
                // requests
                Err(e) => {
                    send(&mut s, &DataHead::error(StatusCode::BAD_REQUEST, e), None)?;
                    return Ok(());
                }
            }
        }
    }

    fn count(&self, route: &'static str, method: &'static str) {
        if let Some(c) = &self.count {
            c(route, method);
        }
    }

    fn answer(&self, req: DataReq, s: &mut TcpStream) -> std::io::Result<()> {
        match req {
            DataReq::GetWithData(req) => {
                self.count("/rpc/v1/drive/get-with-data", "POST");
                let (head, body) = self.get_with_data(req);
                send(s, &head, body)
            }
            DataReq::Read {
                drive,
                data_id,
                offset,
                len,
                partial,
                uncached,
            } => {
                self.count("/rpc/v1/shard/{drive}/{data_id}", "GET");
                let caching = if uncached {
                    Caching::Uncached
                } else {
                    Caching::Cached
                };
                let read = self
                    .drives
                    .find(&drive)
                    .map_err(|(status, m)| DataHead::error(status, m))
                    .and_then(|d| {
                        Body::open(&d, &data_id, offset, len, partial, caching)
                            .map_err(|e| DataHead::error(StatusCode::INTERNAL_SERVER_ERROR, e))
                    });
                match read {
                    Ok(Opened::Body(body)) => {
                        let head = DataHead {
                            status: 200,
                            len: body.len(),
                            ..Default::default()
                        };
                        send(s, &head, Some(body))
                    }
                    Ok(Opened::Missing) => {
                        send(s, &DataHead::error(StatusCode::NOT_FOUND, "no such shard"), None)
                    }
                    Ok(Opened::Short) => send(
                        s,
                        &DataHead::error(StatusCode::RANGE_NOT_SATISFIABLE, "shard is shorter"),
                        None,
                    ),
                    Err(head) => send(s, &head, None),
                }
            }
            DataReq::Write {
                drive,
                data_id,
                replace,
            } => {
                self.count("/rpc/v1/shard/{drive}/{data_id}", "PUT");
                let head = self.write_shard(&drive, &data_id, replace, s)?;
                send(s, &head, None)
            }
        }
    }

    /// Takes a shard's chunks into a new file until the empty chunk, then fsyncs it. A drive
    /// that cannot take them does not end the connection: the rest of the chunks are read
    /// and dropped, and the answer says what failed. An `Err` (the connection broke or sent
    /// an absurd chunk) drops the unfinished file.
    fn write_shard(
        &self,
        drive: &str,
        data_id: &str,
        replace: bool,
        s: &mut TcpStream,
    ) -> std::io::Result<DataHead> {
        let mut writer = self
            .drives
            .find(drive)
            .map_err(|(status, m)| DataHead::error(status, m))
            .and_then(|d| {
                if replace {
                    d.replace_shard(data_id)
                } else {
                    d.create_shard(data_id)
                }
                .map_err(|e| DataHead::error(StatusCode::INTERNAL_SERVER_ERROR, e))
            });
        // one buffer for every chunk: grown once, never cleared again
        let mut buf = Vec::new();
        loop {
            let mut prefix = [0u8; 4];
            s.read_exact(&mut prefix)?;
            let len = u32::from_be_bytes(prefix) as usize;
            if len == 0 {
                break;
            }
            if len > MAX_CHUNK {
                return Err(std::io::Error::other(format!("a {len}-byte shard chunk")));
            }
            if buf.len() < len {
                buf.resize(len, 0);
            }
            s.read_exact(&mut buf[..len])?;
            if let Ok(w) = &mut writer
                && let Err(e) = w.write(&buf[..len])
            {
                writer = Err(DataHead::error(StatusCode::INTERNAL_SERVER_ERROR, e));
            }
        }
        Ok(match writer.map(ringstore_store::ShardWriter::finish) {
            Ok(Ok(())) => DataHead {
                status: 200,
                ..Default::default()
            },
            Ok(Err(e)) => DataHead::error(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(head) => head,
        })
    }

    /// A record with the first bytes of the shard it names. The bytes are a help, not part
    /// of the answer's meaning: a shard that is missing, shorter or unreadable is simply
    /// not attached, and the reader finds out on its own.
    fn get_with_data(&self, req: GetReq) -> (DataHead, Option<Body>) {
        let drive = match self.drives.find(&req.drive) {
            Ok(d) => d,
            Err((status, m)) => return (DataHead::error(status, m), None),
        };
        let value = match drive.get(req.table, &req.key) {
            Ok(v) => v,
            Err(e) => return (DataHead::error(StatusCode::INTERNAL_SERVER_ERROR, e), None),
        };
        let body = value
            .as_deref()
            .and_then(|v| self.drives.attach(v, req.want))
            .and_then(
                |(id, len, caching)| match Body::open(&drive, &id, 0, len, false, caching) {
                    Ok(Opened::Body(b)) => Some((id, b)),
                    _ => None,
                },
            );
        let (data_id, body) = body.unzip();
        let head = DataHead {
            status: 200,
            value: value.map(ByteBuf::from),
            data_id,
            len: body.as_ref().map_or(0, Body::len),
            ..Default::default()
        };
        (head, body)
    }
}

/// The bytes of an answer: a range of a shard file, sent from the page cache, or bytes
/// read around it.
enum Body {
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
    Read(Vec<u8>),
}

enum Opened {
    Body(Body),
    Missing,
    /// The shard ends before the range does (and the reader wanted all of it).
    Short,
}

impl Body {
    fn open(
        drive: &Drive,
        data_id: &str,
        offset: u64,
        len: u64,
        partial: bool,
        caching: Caching,
    ) -> Result<Opened, Box<dyn std::error::Error + Send + Sync>> {
        let fit = |size: u64| {
            let held = size.saturating_sub(offset);
            if partial {
                Some(len.min(held))
            } else {
                (held >= len).then_some(len)
            }
        };
        Ok(match caching {
            Caching::Cached => match drive.open_shard(data_id)? {
                None => Opened::Missing,
                Some(file) => match fit(file.metadata()?.len()) {
                    Some(len) => Opened::Body(Body::File { file, offset, len }),
                    None => Opened::Short,
                },
            },
            Caching::Uncached => match drive.open_shard_uncached(data_id)? {
                None => Opened::Missing,
                Some(shard) => match fit(shard.file_len()?) {
                    Some(len) => match shard.read_frame(offset, len as usize)? {
                        Some(bytes) => Opened::Body(Body::Read(bytes)),
                        None => Opened::Short,
                    },
                    None => Opened::Short,
                },
            },
        })
    }

    fn len(&self) -> u64 {
        match self {
            Body::File { len, .. } => *len,
            Body::Read(b) => b.len() as u64,
        }
    }
}

/// Writes an answer: its head, then its bytes.
fn send(s: &mut TcpStream, head: &DataHead, body: Option<Body>) -> std::io::Result<()> {
    write_head(s, head)?;
    match body {
        None => Ok(()),
        Some(Body::Read(b)) => s.write_all(&b),
        Some(Body::File {
            file,
            mut offset,
            len,
        }) => {
            let end = offset + len;
            while offset < end {
                let count = usize::try_from(end - offset).unwrap_or(usize::MAX);
                let sent = match rustix::fs::sendfile(&*s, &file, Some(&mut offset), count) {
                    Err(rustix::io::Errno::INTR) => continue,
                    sent => sent?,
                };
                if sent == 0 {
                    // the file shrank under us: the reader cannot be told otherwise
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "shard file ended early",
                    ));
                }
            }
            Ok(())
        }
    }
}

/// One of [`DataService`]'s connection slots, given back when dropped.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn write_head(s: &mut TcpStream, head: &DataHead) -> std::io::Result<()> {
    s.write_all(&framed(head))
}

/// A message as it goes on the wire: its length (4 bytes, big endian), then MessagePack.
fn framed<T: Serialize>(message: &T) -> Vec<u8> {
    let message = crate::encode(message);
    let mut out = Vec::with_capacity(4 + message.len());
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(&message);
    out
}

/// The length of the message that follows a length prefix, if it is not absurd.
fn head_len(prefix: [u8; 4]) -> std::io::Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_HEAD {
        return Err(std::io::Error::other(format!("a {len}-byte message head")));
    }
    Ok(len)
}

/// A client's data connection to one peer.
pub(crate) struct DataConn(tokio::net::TcpStream);

impl DataConn {
    /// Connects and presents the cluster token.
    pub(crate) async fn open(addr: &str, auth: &ClusterAuth) -> Result<Self, RpcError> {
        let unreachable = |reason: String| RpcError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(auth.token().as_bytes());
        tcp.write_all(&hello)
            .await
            .map_err(|e| unreachable(format!("data channel: {e}")))?;
        match tcp.read_u8().await {
            Ok(ACCEPTED) => Ok(Self(tcp)),
            Ok(BUSY) => Err(RpcError::Remote {
                addr: addr.to_string(),
                status: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
                message: "too many data connections are open".into(),
            }),
            Ok(_) => Err(RpcError::Unauthorized(addr.to_string())),
            Err(e) => Err(unreachable(format!("data channel refused: {e}"))),
        }
    }

    /// One request and its answer. An error leaves the connection unusable.
    pub(crate) async fn call(&mut self, req: &DataReq) -> std::io::Result<(DataHead, Bytes)> {
        self.0.write_all(&framed(req)).await?;
        let head = self.head().await?;
        let most = req.most_answered();
        if head.len > most {
            return Err(std::io::Error::other(format!(
                "a {}-byte answer to a request for at most {most}",
                head.len
            )));
        }
        let len = usize::try_from(head.len).map_err(std::io::Error::other)?;
        let mut body = BytesMut::with_capacity(len);
        while body.len() < len {
            let want = len - body.len();
            let mut rest = (&mut body).limit(want);
            if self.0.read_buf(&mut rest).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok((head, body.freeze()))
    }

    async fn head(&mut self) -> std::io::Result<DataHead> {
        let mut prefix = [0u8; 4];
        self.0.read_exact(&mut prefix).await?;
        let mut head = vec![0u8; head_len(prefix)?];
        self.0.read_exact(&mut head).await?;
        crate::decode(&head).map_err(std::io::Error::other)
    }

    /// Starts a shard write ([`DataReq::Write`]); its chunks follow.
    pub(crate) async fn start(&mut self, req: &DataReq) -> std::io::Result<()> {
        self.0.write_all(&framed(req)).await
    }

    /// Sends a chunk of a shard write: `chunk` starts with [`CHUNK_HEAD`] bytes that this
    /// fills with its length, so that it leaves in one write.
    pub(crate) async fn chunk(&mut self, chunk: &mut [u8]) -> std::io::Result<()> {
        let len = u32::try_from(chunk.len() - CHUNK_HEAD).map_err(std::io::Error::other)?;
        chunk[..CHUNK_HEAD].copy_from_slice(&len.to_be_bytes());
        self.0.write_all(chunk).await
    }

    /// Ends a shard write and waits for the server's answer (after its fsync).
    pub(crate) async fn end(&mut self) -> std::io::Result<DataHead> {
        self.0.write_all(&[0u8; CHUNK_HEAD]).await?;
        self.head().await
    }

    /// Whether the peer closed this idle connection (or it broke): it has nothing to read
    /// while idle, so anything but "would block" means it is not usable.
    fn closed(&self) -> bool {
        let mut byte = [0u8; 1];
        !matches!(self.0.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// The bytes a shard-write chunk starts with (its length).
pub(crate) const CHUNK_HEAD: usize = 4;

/// Idle data connections by peer address, with when each was last used.
#[derive(Default, Debug)]
pub(crate) struct DataPool(std::sync::Mutex<Idle>);

#[derive(Default, Debug)]
struct Idle {
    /// Per peer, oldest first (each is put back as it is used).
    by_peer: std::collections::HashMap<String, Vec<(DataConn, Instant)>>,
    /// When connections older than [`POOL_IDLE`] were last closed for every peer.
    swept: Option<Instant>,
}

impl DataPool {
    /// The most recently used idle connection to `addr` that is still open. One older
    /// than [`POOL_IDLE`] is closed, and so are all before it.
    pub(crate) fn take(&self, addr: &str) -> Option<DataConn> {
        let mut idle = self.0.lock().expect("not poisoned");
        let conns = idle.by_peer.get_mut(addr)?;
        while let Some((conn, used)) = conns.pop() {
            if used.elapsed() >= POOL_IDLE {
                conns.clear();
                return None;
            }
            if !conn.closed() {
                return Some(conn);
            }
        }
        None
    }

    pub(crate) fn put(&self, addr: &str, conn: DataConn) {
        let now = Instant::now();
        let mut idle = self.0.lock().expect("not poisoned");
        // connections to peers no longer called would otherwise stay open for good
        if idle.swept.is_none_or(|at| now - at >= POOL_IDLE) {
            idle.by_peer.retain(|_, conns| {
                conns.retain(|(_, used)| now - *used < POOL_IDLE);
                !conns.is_empty()
            });
            idle.swept = Some(now);
        }
        let conns = idle.by_peer.entry(addr.to_string()).or_default();
        if conns.len() < POOL {
            conns.push((conn, now));
        }
    }
}

impl std::fmt::Debug for DataConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataConn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Client, DriveHandle, RemoteDrive};
    use ringstore_store::{Op, Table};

    /// A node serving one drive on the data channel, and a handle on that drive as another
    /// node sees it.
    async fn serve(secret: &str) -> (tempfile::TempDir, Arc<Drive>, String, Vec<u8>) {
        serve_at_most(secret, MAX_CONNECTIONS).await
    }

    async fn serve_at_most(secret: &str, limit: usize) -> (tempfile::TempDir, Arc<Drive>, String, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let drive = Arc::new(Drive::open(dir.path()).unwrap());
        let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = drive.create_shard("d1").unwrap();
        w.write(&content).unwrap();
        w.finish().unwrap();
        let put = |key: &[u8], value: &[u8]| Op::Put {
            table: Table::Objects,
            key: key.to_vec(),
            value: value.to_vec(),
        };
        drive
            .commit(vec![
                put(b"k", b"data"),
                put(b"p", b"parity"),
                put(b"gone", b"lost"),
            ])
            .await
            .unwrap();
        // records name shard d1 (or a missing one); the first 200 000 bytes are attached
        let attach: crate::AttachData = Arc::new(|value: &[u8], want: Option<u64>| {
            let (id, caching) = match value {
                b"data" => ("d1", Caching::Cached),
                b"parity" => ("d1", Caching::Uncached),
                _ => ("d2", Caching::Cached),
            };
            Some((id.to_string(), want.unwrap_or(200_000), caching))
        });
        let service = DriveService::new([drive.clone()]).with_attach(attach);
        let data = DataService::new(service, ClusterAuth::new(secret)).limit(limit);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let data = data.clone();
                tokio::spawn(async move { data.serve(stream, peer).await });
            }
        });
        (dir, drive, addr, content)
    }

    fn remote(drive: &Drive, addr: &str, secret: &str) -> DriveHandle {
        let client = Client::new(ClusterAuth::new(secret));
        DriveHandle::Remote(Arc::new(RemoteDrive::new(
            drive.id().to_string(),
            "node-a".into(),
            addr.to_string(),
            client,
        )))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_come_with_their_first_shard_bytes() {
        let (_dir, drive, addr, content) = serve("s3cret").await;
        let remote = remote(&drive, &addr, "s3cret");
        for key in [&b"k"[..], b"p"] {
            let (value, data) = remote.get_with_data(Table::Objects, key, None).await.unwrap();
            assert!(value.is_some());
            let (id, bytes) = data.expect("attached");
            assert_eq!(id, "d1");
            assert_eq!(&bytes[..], &content[..200_000], "cached and uncached alike");
        }
        // a shard that is shorter than the window, or missing, is simply not attached
        let (value, data) = remote
            .get_with_data(Table::Objects, b"k", Some(400_000))
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some(&b"data"[..]));
        assert!(data.is_none());
        let (value, data) = remote.get_with_data(Table::Objects, b"gone", None).await.unwrap();
        assert_eq!(value.as_deref(), Some(&b"lost"[..]));
        assert!(data.is_none());
        let (value, data) = remote
            .get_with_data(Table::Objects, b"nothing", None)
            .await
            .unwrap();
        assert!(value.is_none() && data.is_none());
        // many calls in parallel, over pooled connections
        let calls = (0..40).map(|_| remote.get_with_data(Table::Objects, b"k", Some(1000)));
        for (_, data) in futures::future::try_join_all(calls).await.unwrap() {
            assert_eq!(&data.unwrap().1[..], &content[..1000]);
        }
        // an unknown drive is named in the error
        let other = DriveHandle::Remote(Arc::new(RemoteDrive::new(
            "no-such-drive".into(),
            "node-a".into(),
            addr.clone(),
            Client::new(ClusterAuth::new("s3cret")),
        )));
        let e = other.get_with_data(Table::Objects, b"k", None).await.unwrap_err();
        assert!(e.to_string().contains("no drive no-such-drive"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shard_ranges_are_read_exactly_or_as_far_as_they_go() {
        let (_dir, drive, addr, content) = serve("s3cret").await;
        let remote = remote(&drive, &addr, "s3cret");
        tokio::task::spawn_blocking(move || {
            for caching in [Caching::Cached, Caching::Uncached] {
                let src = remote.open_shard_seeded("d1", None, caching).unwrap().unwrap();
                let got = src.read_bytes(4095, 100_001).unwrap().unwrap();
                assert_eq!(&got[..], &content[4095..104_096]);
                // past the end: missing, not an error
                assert!(src.read_bytes(250_000, 60_000).unwrap().is_none());
                // read-ahead asks for as much as there is
                src.prefetch(250_000, 100_000);
                let got = src.read_bytes(250_000, 50_000).unwrap().unwrap();
                assert_eq!(&got[..], &content[250_000..]);
            }
            let missing = remote
                .open_shard_seeded("d2", None, Caching::Cached)
                .unwrap()
                .unwrap();
            assert!(missing.read_bytes(0, 10).unwrap().is_none());
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shards_are_written_whole_or_not_at_all() {
        let (_dir, drive, addr, _) = serve("s3cret").await;
        let remote = remote(&drive, &addr, "s3cret");
        let unknown = DriveHandle::Remote(Arc::new(RemoteDrive::new(
            "no-such-drive".into(),
            "node-a".into(),
            addr.clone(),
            Client::new(ClusterAuth::new("s3cret")),
        )));
        let d = drive.clone();
        tokio::task::spawn_blocking(move || {
            let stored = |id: &str| {
                d.open_shard(id).unwrap().map(|mut f| {
                    let mut v = Vec::new();
                    f.read_to_end(&mut v).unwrap();
                    v
                })
            };
            let bytes: Vec<u8> = (0..700_000u32).map(|i| (i * 13 % 241) as u8).collect();
            // pieces smaller and larger than a chunk, and a checksum-sized one
            let write = |id: &str, replace: bool, data: &[u8]| {
                let mut w = remote.create_shard(id, replace).unwrap();
                for piece in [&data[..4], &data[4..100_000], &data[100_000..]] {
                    w.write(piece).unwrap();
                }
                w
            };
            write("s0001", false, &bytes).finish().unwrap();
            assert_eq!(stored("s0001").as_deref(), Some(&bytes[..]));
            // a replacement takes the old shard's place once finished
            let other: Vec<u8> = bytes.iter().rev().copied().collect();
            write("s0001", true, &other[..300_000]).finish().unwrap();
            assert_eq!(stored("s0001").as_deref(), Some(&other[..300_000]));
            // a writer that goes away leaves nothing behind, and an unfinished
            // replacement leaves the old shard as it was
            drop(write("s0002", false, &bytes));
            drop(write("s0001", true, &bytes));
            let files = |dir: &str| {
                let dir = d.root().join(".ringstore").join("data").join(dir);
                std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
            };
            let mut tries = 0;
            while files("02") > 0 || files("01") > 1 {
                tries += 1;
                assert!(tries < 100, "an abandoned write left a file behind");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(files("01"), 1, "the shard itself is where it is looked for");
            assert_eq!(stored("s0001").as_deref(), Some(&other[..300_000]));
            // one piece larger than the largest chunk the peer takes goes in several
            let huge: Vec<u8> = (0..(17u32 << 20)).map(|i| (i % 239) as u8).collect();
            let mut w = remote.create_shard("s0004", false).unwrap();
            w.write(&huge).unwrap();
            w.finish().unwrap();
            assert!(stored("s0004").as_deref() == Some(&huge[..]), "a 17 MiB piece");
            // a drive the node does not have: the whole shard is taken and the answer says so
            let e = write_err(&unknown, &bytes);
            assert!(e.contains("no drive no-such-drive"), "{e}");
            // ids that are not plain names are refused by the peer's drive
            let mut w = remote.create_shard("../../escape", false).unwrap();
            w.write(&bytes[..10]).unwrap();
            let e = w.finish().unwrap_err().to_string();
            assert!(e.contains("not a shard id"), "{e}");
        })
        .await
        .unwrap();
    }

    fn write_err(drive: &DriveHandle, data: &[u8]) -> String {
        let mut w = drive.create_shard("s0003", false).unwrap();
        w.write(data).unwrap();
        w.finish().unwrap_err().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_cluster_secret_is_refused() {
        let (_dir, drive, addr, _) = serve("s3cret").await;
        let remote = remote(&drive, &addr, "guess");
        let e = remote
            .get_with_data(Table::Objects, b"k", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("refused our cluster secret"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_node_says_so_and_is_not_taken_for_down() {
        let (_dir, drive, addr, _) = serve_at_most("s3cret", 1).await;
        let holder = DataConn::open(&addr, &ClusterAuth::new("s3cret")).await.unwrap();
        let remote = remote(&drive, &addr, "s3cret");
        let e = remote
            .get_with_data(Table::Objects, b"k", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("too many data connections"), "{e}");
        assert!(!remote.is_down());
        drop(holder);
        // the slot comes free once the server sees the connection close
        let mut tries = 0;
        while remote.get_with_data(Table::Objects, b"k", None).await.is_err() {
            tries += 1;
            assert!(tries < 100, "the slot never came free");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_hands_out_the_newest_open_connection() {
        let (_dir, drive, addr, _) = serve("s3cret").await;
        let auth = ClusterAuth::new("s3cret");
        let open = DataConn::open(&addr, &auth).await.unwrap();
        // a connection the server closed: it answers an undecodable request, then closes
        let mut shut = DataConn::open(&addr, &auth).await.unwrap();
        shut.0.write_all(&[0, 0, 0, 1, 0xc1]).await.unwrap();
        assert_eq!(shut.head().await.unwrap().status, 400);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let pool = DataPool::default();
        pool.put(&addr, open);
        pool.put(&addr, shut);
        let mut conn = pool.take(&addr).expect("the open connection");
        let req = DataReq::GetWithData(GetReq {
            drive: drive.id().to_string(),
            table: Table::Objects,
            key: ByteBuf::from(b"k".to_vec()),
            want: Some(10),
        });
        assert_eq!(conn.call(&req).await.unwrap().0.status, 200);
        assert!(pool.take(&addr).is_none(), "the closed one is not handed out");
        assert!(pool.take("127.0.0.1:1").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_undecodable_request_gets_400_and_the_connection_is_closed() {
        let (_dir, drive, addr, _) = serve("s3cret").await;
        let mut conn = DataConn::open(&addr, &ClusterAuth::new("s3cret")).await.unwrap();
        conn.0.write_all(&[0, 0, 0, 1, 0xc1]).await.unwrap();
        let mut prefix = [0u8; 4];
        conn.0.read_exact(&mut prefix).await.unwrap();
        let mut head = vec![0u8; head_len(prefix).unwrap()];
        conn.0.read_exact(&mut head).await.unwrap();
        let head: DataHead = crate::decode(&head).unwrap();
        assert_eq!(head.status, 400);
        assert_eq!(head.len, 0);
        // closed: what follows might have been a body, not requests
        let after = conn.0.read_u8().await;
        assert!(after.is_err(), "the connection goes on: {after:?}");
        let mut conn = DataConn::open(&addr, &ClusterAuth::new("s3cret")).await.unwrap();
        let req = DataReq::GetWithData(GetReq {
            drive: drive.id().to_string(),
            table: Table::Objects,
            key: ByteBuf::from(b"k".to_vec()),
            want: Some(10),
        });
        let (head, bytes) = conn.call(&req).await.unwrap();
        assert_eq!(
            (head.status, head.data_id.as_deref(), bytes.len()),
            (200, Some("d1"), 10)
        );
    }
}
