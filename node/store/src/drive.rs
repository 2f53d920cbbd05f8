//! One drive: its identity, its metadata index with group commit, and its shard files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::SystemTime;

use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::table::{Op, Table, Version};
use crate::{Error, Result};

const FORMAT: u32 = 1;
/// Most operations one group commit applies in a single transaction.
const MAX_BATCH: usize = 512;

/// What is written on a drive when it is formatted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DriveInfo {
    pub format: u32,
    pub drive_id: String,
}

/// What a commit answers: per operation, the value a `PutIfNewer` or `PutIfVersion` found before it (`None`
/// for other operations and for keys that were absent).
pub type Replaced = Vec<Option<Vec<u8>>>;

/// A page of keys from [`Drive::scan_keys`], and where the next page starts (`None` at the
/// end of the table).
pub type KeyPage = (Vec<Vec<u8>>, Option<Vec<u8>>);
type Reply = tokio_oneshot::Sender<Result<Replaced>>;

/// A formatted drive, open for reads and writes.
pub struct Drive {
    root: PathBuf,
    info: DriveInfo,
    /// Whether this open formatted the drive (it held no Ringstore data before).
    formatted: bool,
    db: std::sync::Arc<Database>,
    commits: Option<mpsc::SyncSender<(Vec<Op>, Reply)>>,
    committer: Option<std::thread::JoinHandle<()>>,
    /// Leases on object keys ([`Op::Lease`]): owner and expiry.
    leases: std::sync::Mutex<std::collections::HashMap<Vec<u8>, (u128, std::time::Instant)>>,
    /// Shards read lately, and open handles of those removed since (see [`Readers`]).
    readers: std::sync::Mutex<Readers>,
}

/// A shard file removed while a reader may still be streaming it stays readable, as an
/// unlinked file stays readable through a handle opened before: a reader on another node
/// opens the shard again for every read-ahead window, so removing the file would cut off a
/// GET that started before an overwrite. So the drive remembers which shards were opened
/// for reading lately, keeps a handle of such a shard when it is removed, and answers
/// opens of that shard from it while reads keep coming (until [`RETAIN_IDLE`] passes
/// without one). Records decide what is visible; these handles only serve readers that
/// already had the shard's name.
#[derive(Default)]
struct Readers {
    /// Data id to when it was last opened for reading.
    recent: std::collections::HashMap<String, std::time::Instant>,
    /// Removed shards still being read: their handle, and when it was last used.
    removed: std::collections::HashMap<String, (File, std::time::Instant)>,
}

/// A removal keeps a shard readable when it was opened for reading this recently (a
/// streaming reader opens it every window, but a client may pause; the data of a replaced
/// version is removed a minute after the overwrite)...
const READ_LATELY: std::time::Duration = std::time::Duration::from_secs(600);
/// ...and it stays readable until this long passes without a read.
const RETAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(600);
/// Most shards remembered as read lately (the oldest are forgotten first).
const RECENT_MAX: usize = 65_536;
/// Most removed shards kept open at once (each holds a file descriptor).
const REMOVED_MAX: usize = 256;

impl Readers {
    fn forget_idle(&mut self, now: std::time::Instant) {
        self.removed
            .retain(|_, (_, at)| now.duration_since(*at) < RETAIN_IDLE);
        if self.recent.len() > RECENT_MAX {
            self.recent.retain(|_, at| now.duration_since(*at) < READ_LATELY);
            if self.recent.len() > RECENT_MAX {
                let mut by_age: Vec<_> = self.recent.iter().map(|(id, at)| (*at, id.clone())).collect();
                by_age.sort();
                for (_, id) in by_age.into_iter().take(self.recent.len() - RECENT_MAX / 2) {
                    self.recent.remove(&id);
                }
            }
        }
    }
}

impl Drop for Drive {
    /// Stops the committer after it has applied what was queued, so the index is closed
    /// (and can be opened again) when the drive is dropped.
    fn drop(&mut self) {
        self.commits.take();
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive")
            .field("root", &self.root)
            .field("id", &self.info.drive_id)
            .finish()
    }
}

impl Drive {
    /// Opens the drive at `root`, formatting it when it holds no Ringstore data yet.
    pub fn open(root: impl AsRef<Path>) -> Result<Drive> {
        let root = root.as_ref().to_path_buf();
        let display = root.display().to_string();
        let io_err = |source| Error::Io {
            path: display.clone(),
            source,
        };
        let sys = root.join(".ringstore");
        fs::create_dir_all(sys.join("data")).map_err(io_err)?;
        let info_path = sys.join("drive.json");
        let mut formatted = false;
        let info = match fs::read(&info_path) {
            Ok(bytes) => {
                let info: DriveInfo = serde_json::from_slice(&bytes).map_err(|e| Error::Unusable {
                    path: display.clone(),
                    reason: format!("drive.json is damaged: {e}"),
                })?;
                if info.format != FORMAT {
                    return Err(Error::Unusable {
                        path: display,
                        reason: format!("unknown drive format {}", info.format),
                    });
                }
                info
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let info = DriveInfo {
                    format: FORMAT,
                    drive_id: hex::encode(rand::random::<[u8; 16]>()),
                };
                for i in 0..=255u8 {
                    fs::create_dir_all(sys.join("data").join(format!("{i:02x}"))).map_err(io_err)?;
                }
                sync_dir(&sys.join("data")).map_err(io_err)?;
                write_atomic(
                    &info_path,
                    &serde_json::to_vec_pretty(&info).expect("serialisable"),
                )
                .map_err(io_err)?;
                formatted = true;
                info
            }
            Err(e) => return Err(io_err(e)),
        };
        let index_err = |e: redb::Error| Error::Index {
            path: display.clone(),
            source: Box::new(e),
        };
        let db = Database::create(sys.join("meta.redb")).map_err(|e| index_err(e.into()))?;
        {
            let txn = db.begin_write().map_err(|e| index_err(e.into()))?;
            for t in Table::ALL {
                txn.open_table(t.def()).map_err(|e| index_err(e.into()))?;
            }
            txn.commit().map_err(|e| index_err(e.into()))?;
        }
        let db = std::sync::Arc::new(db);
        let (tx, rx) = mpsc::sync_channel(4096);
        let committer_db = db.clone();
        let committer_path = display.clone();
        let committer = std::thread::Builder::new()
            .name(format!("commit-{}", &info.drive_id[..8]))
            .spawn(move || group_commit(&committer_db, &committer_path, rx))
            .map_err(io_err)?;
        Ok(Drive {
            root,
            info,
            formatted,
            db,
            commits: Some(tx),
            committer: Some(committer),
            leases: Default::default(),
            readers: Default::default(),
        })
    }

    /// Whether [`Drive::open`] formatted this drive: no Ringstore process used it before, so
    /// no layout can name it yet and no write can have missed it.
    pub fn formatted_now(&self) -> bool {
        self.formatted
    }

    pub fn id(&self) -> &str {
        &self.info.drive_id
    }

    /// Whether the drive holds no data at all (no records, no shard files).
    pub fn is_empty(&self) -> Result<bool> {
        for t in Table::ALL {
            if !self.scan(t, b"", None, 1)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(self
            .shards_older_than(SystemTime::now() + std::time::Duration::from_secs(3600))?
            .is_empty())
    }

    /// Gives an empty drive the identity of a drive it replaces (a dead disk swapped for a
    /// new one), so that the data placed on the old drive is rebuilt onto it. Refused when
    /// the drive holds anything: an identity is never taken from live data.
    pub fn adopt_identity(self, drive_id: &str) -> Result<Drive> {
        if !self.is_empty()? {
            return Err(Error::Unusable {
                path: self.root.display().to_string(),
                reason: format!("cannot take over drive id {drive_id}: the drive is not empty"),
            });
        }
        let root = self.root.clone();
        let info = DriveInfo {
            format: FORMAT,
            drive_id: drive_id.to_string(),
        };
        drop(self);
        write_atomic(
            &root.join(".ringstore").join("drive.json"),
            &serde_json::to_vec_pretty(&info).expect("serialisable"),
        )
        .map_err(|source| Error::Io {
            path: root.display().to_string(),
            source,
        })?;
        Drive::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index_err(&self, e: impl Into<redb::Error>) -> Error {
        Error::Index {
            path: self.root.display().to_string(),
            source: Box::new(e.into()),
        }
    }

    fn io_err(&self, source: io::Error) -> Error {
        Error::Io {
            path: self.root.display().to_string(),
            source,
        }
    }

    /// Commits `ops` atomically and durably. Concurrent callers share transactions.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<()> {
        self.commit_replacing(ops).await.map(|_| ())
    }

    /// [`Drive::commit`], answering what each `PutIfNewer` found before it, so a writer
    /// learns which version it replaced (or that a newer one was already there) without
    /// reading first.
    pub async fn commit_replacing(&self, ops: Vec<Op>) -> Result<Replaced> {
        if let [op @ (Op::Lease { .. } | Op::Release { .. })] = ops.as_slice() {
            return Ok(vec![self.lease(op)]);
        }
        if ops
            .iter()
            .any(|o| matches!(o, Op::Lease { .. } | Op::Release { .. }))
        {
            return Err(Error::Unusable {
                path: self.root.display().to_string(),
                reason: "a lease must be the only operation of its commit".into(),
            });
        }
        let (tx, rx) = tokio_oneshot::channel();
        let closed = || Error::Closed(self.root.display().to_string());
        self.commits
            .as_ref()
            .ok_or_else(closed)?
            .send((ops, tx))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Applies a lease operation: `None` when granted or released, the holder's id when
    /// another owner holds the key.
    fn lease(&self, op: &Op) -> Option<Vec<u8>> {
        let now = std::time::Instant::now();
        let mut leases = self.leases.lock().expect("not poisoned");
        if leases.len() > 4096 {
            leases.retain(|_, (_, until)| *until > now);
        }
        match op {
            Op::Lease { key, owner, ttl_ms } => match leases.get(key) {
                Some((holder, until)) if holder != owner && *until > now => {
                    Some(holder.to_be_bytes().to_vec())
                }
                _ => {
                    let until = now + std::time::Duration::from_millis((*ttl_ms).min(60_000));
                    leases.insert(key.clone(), (*owner, until));
                    None
                }
            },
            Op::Release { key, owner } => {
                if leases.get(key).is_some_and(|(holder, _)| holder == owner) {
                    leases.remove(key);
                }
                None
            }
            _ => None,
        }
    }

    /// Reads one value.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(|e| self.index_err(e))?;
        let t = txn.open_table(table.def()).map_err(|e| self.index_err(e))?;
        let v = t.get(key).map_err(|e| self.index_err(e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    /// Reads up to `limit` entries with keys starting with `prefix`, beginning after `after`
    /// (exclusive) when given, in key order.
    pub fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let txn = self.db.begin_read().map_err(|e| self.index_err(e))?;
        let t = txn.open_table(table.def()).map_err(|e| self.index_err(e))?;
        let start: &[u8] = match after {
            Some(a) if a > prefix => a,
            _ => prefix,
        };
        let mut out = Vec::new();
        for entry in t.range::<&[u8]>(start..).map_err(|e| self.index_err(e))? {
            let (k, v) = entry.map_err(|e| self.index_err(e))?;
            let k = k.value();
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if after.is_some_and(|a| k <= a) {
                continue;
            }
            out.push((k.to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Keys of `table` after `after` (exclusive) that `keep` accepts, in key order: at most
    /// `limit` of them, looking at no more than `budget` keys. Answers the keys and where
    /// the next call starts (`None` once the table's end is reached), so a caller can walk
    /// a large table for a few keys without holding one read transaction for long.
    pub fn scan_keys(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
        budget: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<KeyPage> {
        // (at least one key per call, so that a walk always advances)
        let (limit, budget) = (limit.max(1), budget.max(1));
        let txn = self.db.begin_read().map_err(|e| self.index_err(e))?;
        let t = txn.open_table(table.def()).map_err(|e| self.index_err(e))?;
        let start: &[u8] = after.unwrap_or(b"");
        let mut out = Vec::new();
        let mut looked = 0;
        let mut last: Option<Vec<u8>> = after.map(<[u8]>::to_vec);
        for entry in t.range::<&[u8]>(start..).map_err(|e| self.index_err(e))? {
            let (k, _) = entry.map_err(|e| self.index_err(e))?;
            let k = k.value();
            if after.is_some_and(|a| k <= a) {
                continue;
            }
            if out.len() >= limit || looked >= budget {
                return Ok((out, Some(last.unwrap_or_default())));
            }
            looked += 1;
            if keep(k) {
                out.push(k.to_vec());
            }
            last = Some(k.to_vec());
        }
        Ok((out, None))
    }

    /// Where shard `data_id` lives. Ids come from peers too, so anything but a plain name
    /// (letters, digits, `-`, `_`; at most 128 bytes) is refused: no `..` or `/` can reach
    /// outside the data folder.
    fn shard_path(&self, data_id: &str) -> Result<PathBuf> {
        let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if data_id.is_empty() || data_id.len() > 128 || !data_id.bytes().all(plain) {
            return Err(self.io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a shard id: {data_id:?}"),
            )));
        }
        let dir = &data_id[data_id.len().saturating_sub(2)..];
        Ok(self.root.join(".ringstore").join("data").join(dir).join(data_id))
    }

    /// Starts writing the shard of data file `data_id` held by this drive.
    pub fn create_shard(&self, data_id: &str) -> Result<ShardWriter> {
        let path = self.shard_path(data_id)?;
        ShardWriter::create(path, None).map_err(|e| self.io_err(e))
    }

    /// Starts writing a replacement for a shard; it takes the shard's place atomically
    /// when finished, and leaves the old one untouched when not.
    pub fn replace_shard(&self, data_id: &str) -> Result<ShardWriter> {
        let target = self.shard_path(data_id)?;
        let path = target.with_extension(format!("repair-{}", hex::encode(rand::random::<[u8; 6]>())));
        ShardWriter::create(path, Some(target)).map_err(|e| self.io_err(e))
    }

    /// Opens a shard for reading; `Ok(None)` when the file does not exist (or was removed
    /// and is no longer read, see [`Readers`]).
    pub fn open_shard(&self, data_id: &str) -> Result<Option<File>> {
        match File::open(self.shard_path(data_id)?) {
            Ok(f) => {
                self.read_lately(data_id);
                Ok(Some(f))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.removed_shard(data_id),
            Err(e) => Err(self.io_err(e)),
        }
    }

    fn read_lately(&self, data_id: &str) {
        let now = std::time::Instant::now();
        let mut r = self.readers.lock().expect("readers lock");
        r.recent.insert(data_id.to_string(), now);
        r.forget_idle(now);
    }

    /// A handle of a removed shard that is still being read.
    fn removed_shard(&self, data_id: &str) -> Result<Option<File>> {
        let now = std::time::Instant::now();
        let mut r = self.readers.lock().expect("readers lock");
        r.forget_idle(now);
        let Some((file, at)) = r.removed.get_mut(data_id) else {
            return Ok(None);
        };
        *at = now;
        // a handle of its own: readers move their file's cursor
        file.try_clone().map(Some).map_err(|e| self.io_err(e))
    }

    /// Opens a shard for reads that go around the page cache (`O_DIRECT`, where the file
    /// system allows it); `Ok(None)` when the file does not exist. For shards that are
    /// read rarely and not again soon, such as parity: bringing them into the cache would
    /// cost new page-cache pages and push out data that is read.
    pub fn open_shard_uncached(&self, data_id: &str) -> Result<Option<UncachedShard>> {
        match open_direct(OpenOptions::new().read(true), &self.shard_path(data_id)?) {
            Ok((file, direct)) => {
                self.read_lately(data_id);
                Ok(Some(UncachedShard { file, direct }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(self
                .removed_shard(data_id)?
                .map(|file| UncachedShard { file, direct: false })),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Reads `len` bytes at `offset` of an open shard; `None` when the file is too short.
    pub fn read_frame(file: &File, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::with_capacity(len);
        Ok(Self::append_frame(file, offset, len, &mut buf)?.then_some(buf))
    }

    /// Appends `len` bytes at `offset` of an open shard to `buf`; `false` when the file is
    /// too short (`buf` then holds what there was).
    ///
    /// The bytes land in fresh memory without zeroing it first (frames are up to a few
    /// hundred KiB, read once per stripe), which moves the file's cursor: `file` must be
    /// this reader's own handle, not one shared across threads. The price: std's
    /// `read_to_end` without a size hint grows its reads from 8 KiB, so a 256 KiB frame
    /// takes about 6 `read` calls instead of one `pread` (measured with `perf stat`; in an
    /// A/B run the single node's GET throughput did not change either way).
    pub fn append_frame(file: &File, offset: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<bool> {
        use std::io::{Read, Seek, SeekFrom};
        let start = buf.len();
        buf.reserve_exact(len);
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        file.take(len as u64).read_to_end(buf)?;
        Ok(buf.len() - start == len)
    }

    /// Writes a single frame at `offset` of an existing shard (used by repair of one stripe).
    pub fn patch_shard(&self, data_id: &str, offset: u64, frame: &[u8]) -> Result<()> {
        let path = self.shard_path(data_id)?;
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| self.io_err(e))?;
        f.write_all_at(frame, offset).map_err(|e| self.io_err(e))?;
        f.sync_data().map_err(|e| self.io_err(e))
    }

    /// Removes a shard file; missing files are fine. A shard read lately stays readable
    /// through [`Drive::open_shard`] while reads of it keep coming (see [`Readers`]).
    pub fn delete_shard(&self, data_id: &str) -> Result<()> {
        let path = self.shard_path(data_id)?;
        {
            let now = std::time::Instant::now();
            let mut r = self.readers.lock().expect("readers lock");
            let read = r.recent.remove(data_id);
            r.forget_idle(now);
            if read.is_some_and(|at| now.duration_since(at) < READ_LATELY)
                && r.removed.len() < REMOVED_MAX
                && let Ok(file) = File::open(&path)
            {
                r.removed.insert(data_id.to_string(), (file, now));
            }
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Every shard file on the drive older than `before`, as data ids. Repair temporaries
    /// left by a crash are removed on the way.
    pub fn shards_older_than(&self, before: SystemTime) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let data = self.root.join(".ringstore").join("data");
        for dir in fs::read_dir(&data).map_err(|e| self.io_err(e))? {
            let dir = dir.map_err(|e| self.io_err(e))?;
            if !dir.file_type().map_err(|e| self.io_err(e))?.is_dir() {
                continue;
            }
            for f in fs::read_dir(dir.path()).map_err(|e| self.io_err(e))? {
                let f = f.map_err(|e| self.io_err(e))?;
                let name = f.file_name().to_string_lossy().into_owned();
                let modified = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_err(|e| self.io_err(e))?;
                if modified >= before {
                    continue;
                }
                if name.contains(".repair-") {
                    let _ = fs::remove_file(f.path());
                } else {
                    ids.push(name);
                }
            }
        }
        Ok(ids)
    }

    /// Whether the drive answers: its identity file is still there and its metadata index
    /// serves a read. Cheap enough to run for every status request.
    pub fn check(&self) -> Result<()> {
        let info = self.root.join(".ringstore").join("drive.json");
        fs::metadata(&info).map_err(|e| self.io_err(e))?;
        self.get(Table::Buckets, b"").map(|_| ())
    }

    /// Bytes used and available on the file system holding the drive.
    pub fn usage(&self) -> Option<(u64, u64)> {
        fs_usage(&self.root)
    }
}

/// Bytes used and available on the file system holding `path`, as `df` reports them (used:
/// blocks not free; available: blocks free to unprivileged users), from `statvfs(3)`: no
/// `df` is needed, so it works in a minimal container image.
pub fn fs_usage(path: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(path).ok()?;
    let unit = st.f_frsize.max(1);
    let used = st.f_blocks.saturating_sub(st.f_bfree) * unit;
    Some((used, st.f_bavail * unit))
}

/// Alignment of direct I/O buffers, offsets and lengths.
const ALIGN: usize = 4096;
/// Bytes staged before a direct write (one full frame).
const STAGE: usize = 256 * 1024;

/// Stage buffers are recycled: allocating and faulting in fresh ones for every shard of
/// every PUT cost more than the data copy itself.
static STAGE_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
const STAGE_POOL_MAX: usize = 64;

fn take_stage() -> Vec<u8> {
    STAGE_POOL
        .lock()
        .ok()
        .and_then(|mut p| p.pop())
        .unwrap_or_else(|| vec![0u8; STAGE + ALIGN])
}

fn return_stage(buf: Vec<u8>) {
    if buf.len() == STAGE + ALIGN
        && let Ok(mut p) = STAGE_POOL.lock()
        && p.len() < STAGE_POOL_MAX
    {
        p.push(buf);
    }
}

/// Opens `path` with `O_DIRECT` where the file system allows it, the ordinary way where it
/// does not (tmpfs and some others refuse it); says which.
fn open_direct(options: &OpenOptions, path: &Path) -> io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    match options.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((options.open(path)?, false)),
        Err(e) => Err(e),
    }
}

/// A shard open for reads around the page cache ([`Drive::open_shard_uncached`]).
pub struct UncachedShard {
    file: File,
    /// Whether the file system took `O_DIRECT` (otherwise reads are ordinary ones).
    direct: bool,
}

impl UncachedShard {
    /// The shard file's length.
    pub fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Reads `len` bytes at `offset`; `None` when the file is too short.
    ///
    /// Direct reads need aligned offsets, lengths and memory: the bytes go through a
    /// recycled page-aligned stage buffer in aligned blocks (the last one may end past the
    /// file's end, which `pread` answers with what there is) and are copied out from there,
    /// so no read faults in new memory for the transfer. Frames start at multiples of their
    /// 256 KiB size; any other offset reads from the block that holds it.
    pub fn read_frame(&self, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::with_capacity(len);
        Ok(self.append_frame(offset, len, &mut buf)?.then_some(buf))
    }

    /// Appends `len` bytes at `offset` to `out`; `false` when the file is too short (`out`
    /// then holds what there was).
    pub fn append_frame(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> io::Result<bool> {
        if !self.direct {
            return Drive::append_frame(&self.file, offset, len, out);
        }
        let mut stage = take_stage();
        let base = stage.as_ptr().align_offset(ALIGN).min(ALIGN);
        let end = out.len() + len;
        out.reserve_exact(len);
        let mut at = offset / ALIGN as u64 * ALIGN as u64;
        // bytes of the first block before `offset`
        let mut skip = (offset - at) as usize;
        let read = (|| {
            while out.len() < end {
                let want = (skip + end - out.len()).next_multiple_of(ALIGN).min(STAGE);
                let n = self.file.read_at(&mut stage[base..base + want], at)?;
                let take = n.saturating_sub(skip).min(end - out.len());
                out.extend_from_slice(&stage[base + skip..base + skip + take]);
                if n < want {
                    break; // the file ends here
                }
                at += n as u64;
                skip = 0;
            }
            Ok::<_, io::Error>(())
        })();
        return_stage(stage);
        read?;
        Ok(out.len() == end)
    }
}

/// A shard being written. Dropping it without [`ShardWriter::finish`] removes the file.
///
/// Shard files are written with `O_DIRECT` where the file system supports it: on the
/// machines we measured, copying into the page cache cost more CPU than everything else a
/// PUT does, and the data is not read back soon anyway. Bytes are staged in a page-aligned
/// buffer and written in aligned blocks; the tail is padded and the file truncated back to
/// its logical length before the final `fdatasync`.
pub struct ShardWriter {
    file: Option<File>,
    path: PathBuf,
    rename_to: Option<PathBuf>,
    done: bool,
    direct: bool,
    stage: Vec<u8>,
    /// Start of the aligned region inside `stage`.
    offset: usize,
    staged: usize,
    written: u64,
}

impl ShardWriter {
    fn create(path: PathBuf, rename_to: Option<PathBuf>) -> io::Result<Self> {
        let (file, direct) = open_direct(OpenOptions::new().write(true).create_new(true), &path)?;
        let stage = if direct { take_stage() } else { Vec::new() };
        let offset = stage.as_ptr().align_offset(ALIGN).min(ALIGN);
        Ok(Self {
            file: Some(file),
            path,
            rename_to,
            done: false,
            direct,
            stage,
            offset,
            staged: 0,
            written: 0,
        })
    }

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if !self.direct {
            return self.file.as_mut().expect("open until finished").write_all(data);
        }
        while !data.is_empty() {
            let room = STAGE - self.staged;
            let take = room.min(data.len());
            let at = self.offset + self.staged;
            self.stage[at..at + take].copy_from_slice(&data[..take]);
            self.staged += take;
            data = &data[take..];
            if self.staged == STAGE {
                self.flush_aligned()?;
            }
        }
        Ok(())
    }

    /// Writes every whole aligned block staged so far.
    fn flush_aligned(&mut self) -> io::Result<()> {
        let whole = self.staged / ALIGN * ALIGN;
        if whole == 0 {
            return Ok(());
        }
        let file = self.file.as_ref().expect("open until finished");
        file.write_all_at(&self.stage[self.offset..self.offset + whole], self.written)?;
        self.written += whole as u64;
        self.stage
            .copy_within(self.offset + whole..self.offset + self.staged, self.offset);
        self.staged -= whole;
        Ok(())
    }

    /// Makes the shard durable: data, then the directory entry.
    pub fn finish(mut self) -> io::Result<()> {
        if self.direct {
            self.flush_aligned()?;
            if self.staged > 0 {
                let tail = self.staged;
                let padded = tail.div_ceil(ALIGN) * ALIGN;
                self.stage[self.offset + tail..self.offset + padded].fill(0);
                let file = self.file.as_ref().expect("open until finished");
                file.write_all_at(&self.stage[self.offset..self.offset + padded], self.written)?;
                file.set_len(self.written + tail as u64)?;
            }
        }
        let file = self.file.take().expect("finished once");
        file.sync_data()?;
        drop(file);
        if let Some(target) = &self.rename_to {
            fs::rename(&self.path, target)?;
        }
        sync_dir(self.path.parent().expect("shard has a parent"))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        return_stage(std::mem::take(&mut self.stage));
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn group_commit(db: &Database, path: &str, rx: mpsc::Receiver<(Vec<Op>, Reply)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut ops = batch[0].0.len();
        while ops < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => {
                    ops += next.0.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let mut result = apply(db, batch.iter().flat_map(|(ops, _)| ops.iter())).map(Vec::into_iter);
        for (ops, reply) in batch {
            let r = match &mut result {
                Ok(replaced) => Ok(replaced.by_ref().take(ops.len()).collect()),
                Err(e) => Err(Error::Unusable {
                    path: path.to_string(),
                    reason: format!("metadata commit failed: {e}"),
                }),
            };
            let _ = reply.send(r);
        }
    }
}

fn apply<'a>(db: &Database, ops: impl Iterator<Item = &'a Op>) -> Result<Replaced, redb::Error> {
    let txn = db.begin_write()?;
    let mut replaced = Vec::new();
    {
        let mut tables: Vec<redb::Table<&[u8], &[u8]>> = Table::ALL
            .iter()
            .map(|t| txn.open_table(t.def()))
            .collect::<Result<_, _>>()?;
        let idx = |t: &Table| Table::ALL.iter().position(|x| x == t).expect("known table");
        for op in ops {
            match op {
                Op::PutIfNewer { table, key, value } => {
                    let t = &mut tables[idx(table)];
                    let old = t.get(key.as_slice())?.map(|v| v.value().to_vec());
                    let newer = match &old {
                        Some(old) => Version::from_bytes(old) < Version::from_bytes(value),
                        None => true,
                    };
                    if newer {
                        t.insert(key.as_slice(), value.as_slice())?;
                    }
                    replaced.push(old);
                    continue;
                }
                Op::PutIfVersion {
                    table,
                    key,
                    value,
                    expected,
                } => {
                    let t = &mut tables[idx(table)];
                    let old = t.get(key.as_slice())?.map(|v| v.value().to_vec());
                    let take = match &old {
                        Some(old) => Version::from_bytes(old) <= *expected,
                        None => true,
                    };
                    if take {
                        t.insert(key.as_slice(), value.as_slice())?;
                    }
                    replaced.push(old);
                    continue;
                }
                Op::Put { table, key, value } => {
                    tables[idx(table)].insert(key.as_slice(), value.as_slice())?;
                }
                // handled in memory by `Drive::lease` before anything is queued
                Op::Lease { .. } | Op::Release { .. } => {}
                Op::Delete { table, key } => {
                    tables[idx(table)].remove(key.as_slice())?;
                }
                Op::DeleteIfVersion { table, key, version } => {
                    let t = &mut tables[idx(table)];
                    let same = t
                        .get(key.as_slice())?
                        .is_some_and(|v| Version::from_bytes(v.value()) == Some(*version));
                    if same {
                        t.remove(key.as_slice())?;
                    }
                }
            }
            replaced.push(None);
        }
    }
    txn.commit()?;
    Ok(replaced)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_atomic(path: &Path, content: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    f.write_all(content)?;
    f.sync_data()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().expect("has a parent"))
}

/// A minimal one-shot channel so the storage layer does not depend on an async runtime.
mod tokio_oneshot {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    struct Slot<T> {
        value: Option<T>,
        closed: bool,
        waker: Option<Waker>,
    }

    pub struct Sender<T>(Arc<Mutex<Slot<T>>>);
    pub struct Receiver<T>(Arc<Mutex<Slot<T>>>);

    pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let slot = Arc::new(Mutex::new(Slot {
            value: None,
            closed: false,
            waker: None,
        }));
        (Sender(slot.clone()), Receiver(slot))
    }

    impl<T> Sender<T> {
        pub fn send(self, value: T) -> Result<(), T> {
            let mut s = self.0.lock().expect("not poisoned");
            s.value = Some(value);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
            Ok(())
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            let mut s = self.0.lock().expect("not poisoned");
            s.closed = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }

    impl<T> Future for Receiver<T> {
        type Output = Result<T, ()>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut s = self.0.lock().expect("not poisoned");
            if let Some(v) = s.value.take() {
                return Poll::Ready(Ok(v));
            }
            if s.closed {
                return Poll::Ready(Err(()));
            }
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versioned(ts: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = Version { ts_nanos: ts, id: 7 }.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // the commit future only needs a waker that unparks this thread
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    #[test]
    fn identity_survives_reopen_and_newest_version_wins() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let d = Drive::open(dir.path()).unwrap();
            assert!(d.formatted_now(), "a new folder is formatted");
            let put = |ts, p: &[u8]| Op::PutIfNewer {
                table: Table::Objects,
                key: b"b\0k".to_vec(),
                value: versioned(ts, p),
            };
            block_on(d.commit(vec![put(5, b"five")])).unwrap();
            block_on(d.commit(vec![put(3, b"three")])).unwrap();
            assert_eq!(&d.get(Table::Objects, b"b\0k").unwrap().unwrap()[24..], b"five");
            d.id().to_string()
        };
        let d = Drive::open(dir.path()).unwrap();
        assert_eq!(d.id(), id);
        assert!(!d.formatted_now(), "a drive in use is not formatted again");
        assert_eq!(&d.get(Table::Objects, b"b\0k").unwrap().unwrap()[24..], b"five");
    }

    #[test]
    fn put_if_version_takes_only_over_the_expected_version_or_older() {
        let dir = tempfile::tempdir().unwrap();
        let d = Drive::open(dir.path()).unwrap();
        let v = |ts| Version { ts_nanos: ts, id: 7 };
        let cas = |ts, expected: Option<u64>| Op::PutIfVersion {
            table: Table::Objects,
            key: b"b\0k".to_vec(),
            value: versioned(ts, format!("v{ts}").as_bytes()),
            expected: expected.map(v),
        };
        let held = || d.get(Table::Objects, b"b\0k").unwrap().map(|b| b[24..].to_vec());
        // absent: only "expected absent" or any expectation takes it
        assert_eq!(
            block_on(d.commit_replacing(vec![cas(5, None)])).unwrap(),
            vec![None]
        );
        assert_eq!(held().as_deref(), Some(&b"v5"[..]));
        // another create of the same key is refused, and told what is there
        let answer = block_on(d.commit_replacing(vec![cas(6, None)])).unwrap();
        assert_eq!(answer[0].as_deref().map(|b| &b[24..]), Some(&b"v5"[..]));
        assert_eq!(held().as_deref(), Some(&b"v5"[..]));
        // a swap expecting an older version than the one held is refused
        block_on(d.commit(vec![cas(7, Some(4))])).unwrap();
        assert_eq!(held().as_deref(), Some(&b"v5"[..]));
        // expecting the held version, or a newer one this drive missed, takes it
        block_on(d.commit(vec![cas(8, Some(5))])).unwrap();
        assert_eq!(held().as_deref(), Some(&b"v8"[..]));
        block_on(d.commit(vec![cas(10, Some(9))])).unwrap();
        assert_eq!(held().as_deref(), Some(&b"v10"[..]));
    }

    #[test]
    fn a_lease_has_one_owner_until_released_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let d = Drive::open(dir.path()).unwrap();
        let lease = |owner, ttl_ms| {
            block_on(d.commit_replacing(vec![Op::Lease {
                key: b"b\0k".to_vec(),
                owner,
                ttl_ms,
            }]))
            .unwrap()[0]
                .is_none()
        };
        let release = |owner| {
            block_on(d.commit(vec![Op::Release {
                key: b"b\0k".to_vec(),
                owner,
            }]))
            .unwrap()
        };
        assert!(lease(1, 10_000), "a free key is granted");
        assert!(!lease(2, 10_000), "a held key is refused");
        assert!(lease(1, 10_000), "the holder renews");
        release(2);
        assert!(!lease(2, 10_000), "only the holder releases");
        release(1);
        assert!(lease(2, 1), "released, the key is granted to the next");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(lease(3, 10_000), "an expired lease is taken over");
        let mixed = block_on(d.commit(vec![
            Op::Release {
                key: b"b\0k".to_vec(),
                owner: 3,
            },
            Op::Delete {
                table: Table::Objects,
                key: b"b\0k".to_vec(),
            },
        ]));
        assert!(mixed.is_err(), "a lease cannot share a commit");
    }

    #[test]
    fn scan_respects_prefix_after_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let d = Drive::open(dir.path()).unwrap();
        let ops = ["a\0x", "b\0a", "b\0b", "b\0c", "c\0a"]
            .iter()
            .map(|k| Op::Put {
                table: Table::Objects,
                key: k.as_bytes().to_vec(),
                value: vec![],
            })
            .collect();
        block_on(d.commit(ops)).unwrap();
        let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(d.scan(Table::Objects, b"b\0", None, 10).unwrap()),
            vec![b"b\0a".to_vec(), b"b\0b".to_vec(), b"b\0c".to_vec()]
        );
        assert_eq!(
            keys(d.scan(Table::Objects, b"b\0", Some(b"b\0a"), 1).unwrap()),
            vec![b"b\0b".to_vec()]
        );
    }

    /// A walk in small pages, with a filter and a budget of keys looked at per page, sees
    /// every kept key once and ends.
    #[test]
    fn scan_keys_walks_the_whole_table_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let d = Drive::open(dir.path()).unwrap();
        let all: Vec<Vec<u8>> = (0..100).map(|i| format!("b\0k{i:03}").into_bytes()).collect();
        let ops = all
            .iter()
            .map(|k| Op::Put {
                table: Table::Objects,
                key: k.clone(),
                value: vec![],
            })
            .collect();
        block_on(d.commit(ops)).unwrap();
        let keep = |k: &[u8]| k.last().is_some_and(|b| (b - b'0').is_multiple_of(3));
        for (limit, budget) in [(1, 1), (2, 7), (5, 1000), (1000, 3)] {
            let mut seen = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            let mut pages = 0;
            loop {
                let (keys, next) = d
                    .scan_keys(Table::Objects, after.as_deref(), limit, budget, keep)
                    .unwrap();
                assert!(keys.len() <= limit);
                seen.extend(keys);
                pages += 1;
                assert!(pages <= 200, "the walk ends");
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            let want: Vec<Vec<u8>> = all.iter().filter(|k| keep(k)).cloned().collect();
            assert_eq!(seen, want, "limit {limit}, budget {budget}");
        }
    }

    #[test]
    fn shard_ids_that_are_not_plain_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = Drive::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("outside"), b"not a shard").unwrap();
        let long = "a".repeat(129);
        for bad in ["", "../../outside", "a/b", "..", "x.y", long.as_str()] {
            let refused = |r: Result<()>| {
                let e = r.expect_err(bad).to_string();
                assert!(e.contains("not a shard id"), "{bad:?}: {e}");
            };
            refused(d.create_shard(bad).map(|_| ()));
            refused(d.replace_shard(bad).map(|_| ()));
            refused(d.open_shard(bad).map(|_| ()));
            refused(d.open_shard_uncached(bad).map(|_| ()));
            refused(d.patch_shard(bad, 0, b"x"));
            refused(d.delete_shard(bad));
        }
        assert_eq!(std::fs::read(dir.path().join("outside")).unwrap(), b"not a shard");
        let ok = "0123456789abcdef_p-1a";
        d.create_shard(ok).unwrap().finish().unwrap();
        assert!(d.open_shard(ok).unwrap().is_some());
    }

    #[test]
    fn a_shard_removed_while_being_read_stays_readable_for_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let d = Drive::open(dir.path()).unwrap();
        for id in ["bb01", "bb02"] {
            let mut w = d.create_shard(id).unwrap();
            w.write(b"old version").unwrap();
            w.finish().unwrap();
        }
        // bb01 is being read (a reader opens it once per window), bb02 is not
        let f = d.open_shard("bb01").unwrap().unwrap();
        assert_eq!(Drive::read_frame(&f, 0, 3).unwrap().unwrap(), b"old");
        d.delete_shard("bb01").unwrap();
        d.delete_shard("bb02").unwrap();
        assert!(
            !d.shard_path("bb01").unwrap().exists(),
            "the file is gone from the folder"
        );
        let again = d.open_shard("bb01").unwrap().expect("its readers still get it");
        assert_eq!(Drive::read_frame(&again, 4, 7).unwrap().unwrap(), b"version");
        let uncached = d.open_shard_uncached("bb01").unwrap().expect("uncached too");
        assert_eq!(uncached.read_frame(0, 3).unwrap().unwrap(), b"old");
        assert!(
            d.open_shard("bb02").unwrap().is_none(),
            "a shard nobody read just goes"
        );
        assert!(
            d.shards_older_than(SystemTime::now() + std::time::Duration::from_secs(60))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn unfinished_shard_is_removed_and_finished_one_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = Drive::open(dir.path()).unwrap();
        {
            let mut w = d.create_shard("aa01").unwrap();
            w.write(b"partial").unwrap();
        }
        assert!(d.open_shard("aa01").unwrap().is_none());
        let mut w = d.create_shard("aa02").unwrap();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        w.finish().unwrap();
        // direct I/O pads the tail; the file must still have its logical length
        assert_eq!(
            std::fs::metadata(d.shard_path("aa02").unwrap()).unwrap().len(),
            11
        );
        let big: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
        let mut w = d.create_shard("aa03").unwrap();
        for piece in big.chunks(262_143) {
            w.write(piece).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(std::fs::read(d.shard_path("aa03").unwrap()).unwrap(), big);
        let f = d.open_shard("aa02").unwrap().unwrap();
        assert_eq!(Drive::read_frame(&f, 6, 5).unwrap().unwrap(), b"world");
        assert_eq!(Drive::read_frame(&f, 6, 50).unwrap(), None);
        d.patch_shard("aa02", 0, b"HELLO").unwrap();
        assert_eq!(Drive::read_frame(&f, 0, 5).unwrap().unwrap(), b"HELLO");
        // frames are appended after what the buffer holds; a short one says so
        let mut buf = b"head:".to_vec();
        assert!(Drive::append_frame(&f, 6, 5, &mut buf).unwrap());
        assert!(!Drive::append_frame(&f, 9, 4, &mut buf).unwrap());
        assert_eq!(buf, b"head:worldld");
        let f = d.open_shard("aa03").unwrap().unwrap();
        assert_eq!(
            Drive::read_frame(&f, 1_000_000, 262_148).unwrap().unwrap(),
            big[1_000_000..1_262_148]
        );
        // around the page cache: aligned frames, a read longer than the stage buffer, the
        // last (short) frame, past the end, an unaligned offset, and a patched frame
        let u = d.open_shard_uncached("aa03").unwrap().unwrap();
        assert_eq!(u.file_len().unwrap(), big.len() as u64);
        let frame = 262_144;
        for (at, len) in [
            (0, frame),
            (4096, 600_000),
            (11 * frame, big.len() - 11 * frame),
            (7, 5),
            (4095, 300_000),
        ] {
            assert!(
                u.read_frame(at as u64, len).unwrap().unwrap() == big[at..at + len],
                "{len} bytes at {at}"
            );
        }
        assert_eq!(
            u.read_frame(11 * frame as u64, big.len() - 11 * frame + 1)
                .unwrap(),
            None
        );
        assert_eq!(u.read_frame(16 * frame as u64, 10).unwrap(), None);
        d.patch_shard("aa03", frame as u64, b"PATCHED").unwrap();
        assert_eq!(u.read_frame(frame as u64, 7).unwrap().unwrap(), b"PATCHED");
        assert!(d.open_shard_uncached("zz99").unwrap().is_none());
    }

    /// The usage read with `statvfs` is what `df` prints for the same file system (the
    /// command the node used before, which minimal images lack).
    #[test]
    fn fs_usage_matches_df() {
        let dir = tempfile::tempdir().unwrap();
        let Ok(out) = std::process::Command::new("df")
            .arg("-Pk")
            .arg(dir.path())
            .output()
        else {
            eprintln!("no df here: nothing to compare with");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<u64> = text
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let (df_used, df_avail) = (fields[1] * 1024, fields[2] * 1024);
        let (used, avail) = fs_usage(dir.path()).expect("statvfs answers");
        // other processes write meanwhile: equal within 64 MiB
        let close = |a: u64, b: u64| a.abs_diff(b) < 64 << 20;
        assert!(close(used, df_used), "used {used}, df says {df_used}");
        assert!(close(avail, df_avail), "available {avail}, df says {df_avail}");
    }
}
