//! The object service: buckets, erasure-coded objects, listing and multipart uploads over
//! a set of drives placed on the hash ring.
//!
//! Write path: the body streams into stripes; each stripe is hashed (MD5 for the ETag),
//! encoded into `k + m` checksummed frames and appended to one shard file per drive of the
//! object's partition; shard files are fsynced, then the object record is committed on every
//! drive of the partition and the write is acknowledged once a write quorum holds it.
//! Small objects keep their shard frame inside the record instead of a file.
//!
//! Read path: records are read from the partition's drives, the newest version among at
//! least a read quorum of answers wins, data shards are read and verified, and parity is
//! used only when a data shard is missing or corrupt. Damage found on the way is repaired in
//! the background.

#[cfg(feature = "faults")]
pub(crate) mod faults;
mod heal;
mod list;
mod mover;
mod multipart;
mod read;
mod record;
mod settled;
mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ringstore_erasure::Codec;
use ringstore_ring::{Layout, Placement, Redundancy};
use ringstore_rpc::DriveHandle;
use ringstore_store::{Drive, Op, Table, Version};

pub use heal::HealStats;
pub use list::ListPage;
pub use mover::{MoveStats, Moved};
pub use multipart::{CompletedPart, PartInfo, UploadInfo};
pub use read::{Found, ObjectStream, first_window};
pub use record::{BucketRecord, ObjectRecord, PartRef, StoredChecksum};
pub use ringstore_store::Drive as StoreDrive;
pub use settled::SettledNote;
pub use write::{BodyStream, NewObject, Precondition, Verify};

/// Objects up to this size keep their shard frames inside the metadata record.
pub const INLINE_MAX: u64 = 128 * 1024;
/// Smallest size of a multipart part other than the last.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// Errors of the object service, each with an S3 meaning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the specified bucket does not exist")]
    NoSuchBucket,
    #[error("the specified key does not exist")]
    NoSuchKey,
    #[error("the bucket already exists and is owned by you")]
    BucketExists,
    #[error("the bucket is not empty")]
    BucketNotEmpty,
    #[error("the specified multipart upload does not exist")]
    NoSuchUpload,
    #[error("{0}")]
    InvalidPart(String),
    #[error("the list of parts was not in ascending order")]
    InvalidPartOrder,
    #[error("part {part} is {size} bytes; every part but the last must be at least {MIN_PART_SIZE} bytes")]
    EntityTooSmall { part: u32, size: u64 },
    #[error("{0}")]
    BadDigest(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("at least one of the preconditions you specified did not hold")]
    PreconditionFailed,
    #[error("the request body ended early or could not be read: {0}")]
    Body(String),
    #[error("not enough drives answered: {0}")]
    Quorum(String),
    #[error(transparent)]
    Storage(#[from] ringstore_store::Error),
    #[error("data could not be decoded: {0}")]
    Decode(#[from] ringstore_erasure::Error),
    #[error("internal error: {0}")]
    Internal(String),
    /// A layout transition that changes the redundancy waits for an open multipart upload
    /// to end (its parts are not re-encoded).
    #[error("{0}")]
    UploadOpen(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where bucket records live: the drives' own tables for a store used on its own (tests,
/// tools), the Raft control plane in a server.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    async fn get(&self, name: &str) -> Result<Option<BucketRecord>>;
    async fn list(&self) -> Result<Vec<BucketRecord>>;
    /// Fails with [`Error::BucketExists`] when the bucket exists.
    async fn create(&self, rec: &BucketRecord) -> Result<()>;
    async fn delete(&self, name: &str) -> Result<()>;
}

/// The object service of one node.
#[derive(Clone)]
pub struct ObjectStore {
    current: Arc<RwLock<Arc<Inner>>>,
    shared: Arc<Shared>,
}

/// What stays across layout changes.
pub(crate) struct Shared {
    clock: AtomicU64,
    pub(crate) healing: Mutex<std::collections::HashSet<Vec<u8>>>,
    pub(crate) stats: heal::Counters,
    /// Serialises the commit steps of UploadPart, Complete and Abort of one upload (striped
    /// by upload id), so that a part replaced while its upload completes is not removed
    /// from under the completed object. In-process only: uploads of one key are coordinated
    /// by the node that serves them.
    upload_locks: Vec<tokio::sync::Mutex<()>>,
    catalog: Arc<dyn Catalog>,
    /// This node's own drives (sweeps and scrubs walk these).
    pub(crate) local: Vec<Arc<Drive>>,
    /// Versions known to be on a write quorum ([`settled`]).
    pub(crate) settled: settled::Settled,
    /// Layout views replaced by a newer one, while operations that started with them run.
    replaced: Mutex<Vec<std::sync::Weak<Inner>>>,
    /// The `switch-commits` fault point (see `faults.rs`), settable per store in tests.
    #[cfg(feature = "faults")]
    pub(crate) switch_commits: AtomicU64,
}

/// An older layout's placement, with each of its drives' index in the current view.
pub(crate) struct OlderPlacement {
    version: u64,
    /// The layout's redundancy: objects it placed are stored with it, unless a transition
    /// re-encoded them already.
    pub(crate) redundancy: Redundancy,
    codec: Arc<Codec>,
    placement: Placement,
    /// Index of each node's first drive in `index`.
    offsets: Vec<usize>,
    /// Flat drive number in the old layout to index in the current view (`None` when the
    /// drive left the cluster).
    index: Vec<Option<usize>>,
}

/// One layout's view of the cluster: every drive of the layout, local or remote, and the
/// placement computed from it. Replaced whole when the layout changes; an operation keeps
/// the view it started with.
pub(crate) struct Inner {
    /// The layout's drives in its order, then those only older layouts in use have.
    pub(crate) drives: Vec<DriveHandle>,
    pub(crate) by_id: HashMap<String, usize>,
    pub(crate) layout: Layout,
    pub(crate) placement: Placement,
    pub(crate) codec: Arc<Codec>,
    pub(crate) shared: Arc<Shared>,
    /// Placements of older layouts (newest first) whose data may not have moved yet.
    pub(crate) older: Vec<OlderPlacement>,
    /// While a transition syncs, new versions are written where this older layout (an index
    /// into `older`) places them, not the current one (see ARCHITECTURE.md, Layout
    /// transitions).
    pub(crate) write_older: Option<usize>,
}

impl std::ops::Deref for Inner {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl ObjectStore {
    /// A store on its own over already opened local drives, with buckets kept in the drives'
    /// tables. `redundancy` defaults to the standard scheme for the number of drives.
    pub fn new(drives: Vec<Drive>, redundancy: Option<Redundancy>, node: &str) -> Result<Self> {
        let redundancy = redundancy.unwrap_or_else(|| Redundancy::default_for(drives.len()));
        let drives: Vec<Arc<Drive>> = drives.into_iter().map(Arc::new).collect();
        let layout = Layout {
            version: 1,
            redundancy,
            nodes: vec![ringstore_ring::NodeSpec {
                name: node.to_string(),
                zone: "default".to_string(),
                drives: drives
                    .iter()
                    .map(|d| ringstore_ring::DriveSpec {
                        id: d.id().to_string(),
                        weight: 1,
                    })
                    .collect(),
            }],
            slots: None,
        };
        let catalog = Arc::new(DriveCatalog {
            drives: drives.clone(),
        });
        let handles = drives.iter().cloned().map(DriveHandle::Local).collect();
        Self::with_layout(drives, catalog, layout, handles, &[], None)
    }

    /// A store placing data by `layout`, whose drives are `handles` (in the layout's
    /// order: node by node, drive by drive), followed by the drives of the `older` layouts
    /// that `layout` no longer has (drives being drained, which keep their data until a
    /// transition moved it); `local` are this node's own drives. Objects
    /// not found where `layout` places them are looked for where the `older` layouts placed
    /// them (any order; versions at or above `layout`'s are ignored). New versions are
    /// written where `layout` places them, or where the older layout of version
    /// `writes_on` does (while a transition syncs).
    pub fn with_layout(
        local: Vec<Arc<Drive>>,
        catalog: Arc<dyn Catalog>,
        layout: Layout,
        handles: Vec<DriveHandle>,
        older: &[Layout],
        writes_on: Option<u64>,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            clock: AtomicU64::new(0),
            healing: Mutex::new(Default::default()),
            stats: Default::default(),
            upload_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            catalog,
            local,
            settled: Default::default(),
            replaced: Mutex::new(Vec::new()),
            #[cfg(feature = "faults")]
            switch_commits: AtomicU64::new(faults::get().switch_commits.map_or(u64::MAX, |n| n as u64)),
        });
        let inner = Inner::build(shared.clone(), layout, handles, older, writes_on)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(inner))),
            shared,
        })
    }

    /// Switches to a new layout (see [`ObjectStore::with_layout`] for `handles`, `older` and
    /// `writes_on`).
    pub fn set_layout(
        &self,
        layout: Layout,
        handles: Vec<DriveHandle>,
        older: &[Layout],
        writes_on: Option<u64>,
    ) -> Result<()> {
        let inner = Inner::build(self.shared.clone(), layout, handles, older, writes_on)?;
        let old = std::mem::replace(&mut *self.current.write().expect("not poisoned"), Arc::new(inner));
        let mut replaced = self.shared.replaced.lock().expect("not poisoned");
        replaced.retain(|w| w.strong_count() > 0);
        replaced.push(Arc::downgrade(&old));
        Ok(())
    }

    /// Whether no operation that started with an older layout view is still running: once
    /// this node places data with a new layout and this holds, nothing it does writes where
    /// an older layout placed data (a transition waits for this on every node before it
    /// moves anything).
    pub fn older_views_drained(&self) -> bool {
        let mut replaced = self.shared.replaced.lock().expect("not poisoned");
        let current = self.inner();
        let writes = current.writes_on();
        replaced.retain(|w| {
            w.upgrade()
                .is_some_and(|i| i.layout.version < current.layout.version || i.writes_on() != writes)
        });
        replaced.is_empty()
    }

    /// The layout version new versions are written by: the current one, or an older one
    /// while a transition syncs.
    pub fn writes_on(&self) -> u64 {
        self.inner().writes_on()
    }

    /// The current layout view.
    pub(crate) fn inner(&self) -> Arc<Inner> {
        self.current.read().expect("not poisoned").clone()
    }

    pub fn redundancy(&self) -> Redundancy {
        self.inner().layout.redundancy
    }

    /// Version of the layout the node places data with.
    pub fn layout_version(&self) -> u64 {
        self.inner().layout.version
    }

    pub fn layout(&self) -> Layout {
        self.inner().layout.clone()
    }

    /// Versions this node saw settle on a write quorum since the last call, for the other
    /// nodes ([`ObjectStore::accept_settled`]): their lookups can then stop at a read quorum.
    pub fn take_settled(&self) -> Vec<SettledNote> {
        self.shared.settled.take_outbox()
    }

    /// Notes from another node's [`ObjectStore::take_settled`].
    pub fn accept_settled(&self, notes: Vec<SettledNote>) {
        self.shared.settled.accept(notes)
    }

    /// RPC addresses of the other nodes with drives in the layout.
    pub fn peer_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self
            .inner()
            .drives
            .iter()
            .filter_map(|d| match d {
                DriveHandle::Remote(r) => Some(r.addr.clone()),
                DriveHandle::Local(_) => None,
            })
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// This node's own drives.
    pub fn local_drives(&self) -> &[Arc<Drive>] {
        &self.shared.local
    }

    /// Object bytes per stripe with this node's redundancy.
    pub fn block_size(&self) -> usize {
        self.inner().block_size()
    }

    // ---- buckets -------------------------------------------------------------------------

    pub async fn create_bucket(&self, name: &str) -> Result<BucketRecord> {
        let rec = BucketRecord {
            name: name.to_string(),
            created_nanos: self.inner().now().ts_nanos,
        };
        self.shared.catalog.create(&rec).await?;
        Ok(rec)
    }

    pub async fn bucket(&self, name: &str) -> Result<Option<BucketRecord>> {
        self.shared.catalog.get(name).await
    }

    pub async fn require_bucket(&self, name: &str) -> Result<()> {
        self.bucket(name).await?.map(|_| ()).ok_or(Error::NoSuchBucket)
    }

    pub async fn list_buckets(&self) -> Result<Vec<BucketRecord>> {
        self.shared.catalog.list().await
    }

    pub async fn delete_bucket(&self, name: &str) -> Result<()> {
        self.require_bucket(name).await?;
        let page = self.list(name, "", None, 1).await?;
        if !page.entries.is_empty() {
            return Err(Error::BucketNotEmpty);
        }
        // pending multipart uploads go with the bucket
        for upload in self.list_uploads(name, "", None, usize::MAX).await? {
            self.abort_upload(name, &upload.key, &upload.upload_id).await?;
        }
        self.shared.catalog.delete(name).await
    }
}

/// Buckets kept in the tables of a single node's drives, written to all and read from a
/// majority.
struct DriveCatalog {
    drives: Vec<Arc<Drive>>,
}

impl DriveCatalog {
    fn need_majority(&self, answered: usize) -> Result<()> {
        let need = self.drives.len() / 2 + 1;
        if answered < need {
            return Err(Error::Quorum(format!(
                "{answered} of {} drives answered, {need} needed",
                self.drives.len()
            )));
        }
        Ok(())
    }

    async fn commit_all(&self, op: Op) -> Result<()> {
        let results = futures::future::join_all(self.drives.iter().map(|d| d.commit(vec![op.clone()]))).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        for e in results.into_iter().filter_map(|r| r.err()) {
            tracing::warn!(error = %e, "bucket write failed on a drive");
        }
        self.need_majority(ok)
    }
}

#[async_trait::async_trait]
impl Catalog for DriveCatalog {
    async fn get(&self, name: &str) -> Result<Option<BucketRecord>> {
        let mut found = None;
        let mut answered = 0;
        for d in &self.drives {
            match d.get(Table::Buckets, name.as_bytes()) {
                Ok(v) => {
                    answered += 1;
                    if let Some(v) = v {
                        found = Some(rmp_decode::<BucketRecord>(&v)?);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "bucket lookup failed on a drive"),
            }
        }
        self.need_majority(answered)?;
        Ok(found)
    }

    async fn list(&self) -> Result<Vec<BucketRecord>> {
        let mut all = std::collections::BTreeMap::new();
        for d in &self.drives {
            match d.scan(Table::Buckets, b"", None, usize::MAX) {
                Ok(entries) => {
                    for (k, v) in entries {
                        all.insert(k, rmp_decode::<BucketRecord>(&v)?);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "bucket listing failed on a drive"),
            }
        }
        Ok(all.into_values().collect())
    }

    async fn create(&self, rec: &BucketRecord) -> Result<()> {
        if self.get(&rec.name).await?.is_some() {
            return Err(Error::BucketExists);
        }
        self.commit_all(Op::Put {
            table: Table::Buckets,
            key: rec.name.as_bytes().to_vec(),
            value: rmp_encode(rec),
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.commit_all(Op::Delete {
            table: Table::Buckets,
            key: name.as_bytes().to_vec(),
        })
        .await
    }
}

impl Shared {
    /// The lock of `upload_id` (see `upload_locks`).
    pub(crate) async fn upload_lock(&self, upload_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        upload_id.hash(&mut h);
        let i = (h.finish() % self.upload_locks.len() as u64) as usize;
        self.upload_locks[i].lock().await
    }
}

impl Inner {
    fn build(
        shared: Arc<Shared>,
        layout: Layout,
        drives: Vec<DriveHandle>,
        older: &[Layout],
        writes_on: Option<u64>,
    ) -> Result<Self> {
        let placement = layout
            .placement()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let ids: Vec<&str> = layout
            .nodes
            .iter()
            .flat_map(|n| n.drives.iter().map(|d| d.id.as_str()))
            .collect();
        // the layout's drives first, in its order; drives only older layouts have after them
        if ids.len() > drives.len() || ids.iter().zip(&drives).any(|(a, b)| *a != b.id()) {
            return Err(Error::Internal("drive handles do not match the layout".into()));
        }
        let codec = Arc::new(Codec::new(layout.redundancy)?);
        let by_id: HashMap<String, usize> = drives
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id().to_string(), i))
            .collect();
        let mut older: Vec<&Layout> = older.iter().filter(|o| o.version < layout.version).collect();
        older.sort_by_key(|o| std::cmp::Reverse(o.version));
        let older: Vec<OlderPlacement> = older
            .into_iter()
            .filter_map(|o| {
                // a layout that cannot be placed (never committed as such) holds no data
                let placement = o.placement().ok()?;
                let codec = match o.redundancy == layout.redundancy {
                    true => codec.clone(),
                    false => Arc::new(Codec::new(o.redundancy).ok()?),
                };
                let index = o
                    .nodes
                    .iter()
                    .flat_map(|n| n.drives.iter().map(|d| by_id.get(&d.id).copied()))
                    .collect();
                Some(OlderPlacement {
                    version: o.version,
                    redundancy: o.redundancy,
                    codec,
                    placement,
                    offsets: node_offsets(o),
                    index,
                })
            })
            .collect();
        let write_older = writes_on
            .filter(|v| *v != layout.version)
            .and_then(|v| older.iter().position(|o| o.version == v));
        Ok(Inner {
            drives,
            by_id,
            layout,
            placement,
            codec,
            shared,
            older,
            write_older,
        })
    }

    /// The layout version new versions are written by.
    pub(crate) fn writes_on(&self) -> u64 {
        self.write_older
            .map_or(self.layout.version, |i| self.older[i].version)
    }

    /// Where a new version of `bucket/key` is written, in shard order: the current
    /// placement, or while a transition syncs the older one writes still go to (when every
    /// drive of it is still in the cluster); with the codec a new version is encoded with
    /// there (the redundancy of the layout that places it).
    pub(crate) fn write_placement(&self, bucket: &str, key: &str) -> (Vec<usize>, Arc<Codec>) {
        if let Some(old) = self.write_older.map(|i| &self.older[i]) {
            let p = ringstore_ring::partition_of(bucket, key);
            let drives: Option<Vec<usize>> = old
                .placement
                .drives(p)
                .iter()
                .map(|d| old.index[old.offsets[d.node] + d.drive])
                .collect();
            if let Some(drives) = drives {
                return (drives, old.codec.clone());
            }
        }
        (self.partition_drives(bucket, key), self.codec.clone())
    }

    /// The codec for objects stored with `redundancy` (an object's record says which it was
    /// written with; a layout may have a different one).
    pub(crate) fn codec_for(&self, redundancy: Redundancy) -> Result<Arc<Codec>> {
        if self.codec.redundancy() == redundancy {
            return Ok(self.codec.clone());
        }
        if let Some(old) = self.older.iter().find(|o| o.redundancy == redundancy) {
            return Ok(old.codec.clone());
        }
        Ok(Arc::new(Codec::new(redundancy)?))
    }

    /// The redundancy of the oldest layout in this view. Records written before uploads
    /// recorded theirs were stored with it: no redundancy change existed then, and none can
    /// finish while such an upload is open (a re-encoding waits for open uploads).
    pub(crate) fn oldest_redundancy(&self) -> Redundancy {
        self.older.last().map_or(self.layout.redundancy, |o| o.redundancy)
    }

    /// Object bytes per stripe with the current layout's redundancy.
    pub(crate) fn block_size(&self) -> usize {
        ringstore_erasure::block_size(self.codec.redundancy().k)
    }

    /// A fresh version: above every version this node drew or saw, and at least its wall
    /// clock (a hybrid logical clock). Clocks only break ties between writes that never met:
    /// a write raises its version above what it replaces when a drive answers with a newer
    /// one (see `commit_version`), so a clock that is behind, or stepped back across a
    /// restart, cannot order a later write before an acknowledged one.
    pub(crate) fn now(&self) -> Version {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut prev = self.clock.load(Ordering::Relaxed);
        loop {
            let next = wall.max(prev + 1);
            match self
                .clock
                .compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Version {
                        ts_nanos: next,
                        id: rand::random(),
                    };
                }
                Err(p) => prev = p,
            }
        }
    }

    /// A fresh version above `seen` (and above everything else this node saw).
    pub(crate) fn after(&self, seen: Version) -> Version {
        self.observe(seen);
        self.now()
    }

    /// The version of a conditional write replacing `expected`: the lowest versions above
    /// it (same time, a larger id drawn at random), so that any write which saw `expected`
    /// and landed before the compare-and-swap orders above it, and a compare-and-swap that
    /// lost on some drives cannot later win over such a write. `None` (no record at all)
    /// gives the lowest versions there are.
    pub(crate) fn successor(expected: Option<Version>) -> Version {
        let base = expected.unwrap_or_default();
        let step = 1 + (rand::random::<u64>() >> 1) as u128;
        Version {
            ts_nanos: base.ts_nanos,
            id: base.id.saturating_add(step),
        }
    }

    /// Moves the clock past a version read from a drive, so that versions drawn later order
    /// after it whatever this node's wall clock says.
    pub(crate) fn observe(&self, seen: Version) {
        self.clock.fetch_max(seen.ts_nanos, Ordering::Relaxed);
    }

    /// A listing asks every drive; it is complete when no partition can have lost a read
    /// quorum, i.e. when at most `width - read quorum` drives of each partition (in the
    /// current layout and in every older one still in use) did not answer: a key written
    /// with a write quorum then has at least one answering holder. `failed` are the drives
    /// that did not answer.
    pub(crate) fn need_listing_quorum(&self, failed: &[usize]) -> Result<()> {
        if failed.is_empty() {
            return Ok(());
        }
        let tolerated = |r: Redundancy| r.width() - r.read_quorum();
        let mut down = vec![false; self.drives.len()];
        for d in failed {
            down[*d] = true;
        }
        let offsets = node_offsets(&self.layout);
        let current = (self.layout.redundancy, &self.placement, &offsets, None);
        let older = self
            .older
            .iter()
            .map(|o| (o.redundancy, &o.placement, &o.offsets, Some(&o.index)));
        for (redundancy, placement, offsets, index) in std::iter::once(current).chain(older) {
            let tolerated = tolerated(redundancy);
            for p in 0..ringstore_ring::PARTITIONS {
                let missing = placement
                    .drives(p)
                    .iter()
                    .filter(|d| {
                        let flat = offsets[d.node] + d.drive;
                        let at = match index {
                            None => Some(flat),
                            Some(index) => index[flat],
                        };
                        at.is_some_and(|i| down[i])
                    })
                    .count();
                if missing > tolerated {
                    return Err(Error::Quorum(format!(
                        "{missing} drives of partition {p} did not answer the listing, at most \
                         {tolerated} may be missing ({} of {} drives did not answer)",
                        failed.len(),
                        self.drives.len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// How many of `failed` drives can hold `bucket/key` (its partition's drives in the
    /// current layout and the older ones still in use).
    pub(crate) fn failed_holders(&self, bucket: &str, key: &str, failed: &[usize]) -> usize {
        if failed.is_empty() {
            return 0;
        }
        let mut holders = self.partition_drives(bucket, key);
        holders.extend(self.older_partition_drives(bucket, key).into_iter().flatten());
        failed.iter().filter(|d| holders.contains(d)).count()
    }

    /// Commits per-drive writes (`(drive index, ops)`) in parallel; succeeds with the count of
    /// drives that committed when it reaches `need`.
    pub(crate) async fn commit_quorum(
        &self,
        what: &str,
        need: usize,
        writes: impl IntoIterator<Item = (usize, Vec<Op>)>,
    ) -> Result<usize> {
        // collected first: an iterator of closures held across the await trips rustc's
        // `Send` inference for the S3 handlers' futures
        let commits: Vec<_> = self
            .reachable(writes.into_iter().collect(), need)
            .into_iter()
            .map(|(d, ops)| self.drives[d].commit(ops))
            .collect();
        Ok(quorum(what, need, commits).await?.len())
    }

    /// The writes to make: all of `writes`, but those to drives of peers that are down
    /// (could not be reached moments ago, or timed out and do not answer since) while the
    /// others are at least `need`. Such a write would only hold the request until its
    /// timeout; the drive gets the data from the healer when its node is back.
    pub(crate) fn reachable<T>(&self, writes: Vec<(usize, T)>, need: usize) -> Vec<(usize, T)> {
        // one look at each drive's hint (a lock per remote drive), on every write's path
        let down: Vec<bool> = writes.iter().map(|(d, _)| self.drives[*d].is_down()).collect();
        let up = down.iter().filter(|d| !**d).count();
        if up < need || up == writes.len() {
            return writes;
        }
        writes
            .into_iter()
            .zip(down)
            .filter_map(|(w, down)| (!down).then_some(w))
            .collect()
    }

    /// [`Inner::commit_quorum`] with one operation per drive, answering the values those
    /// operations replaced (from the drives that committed).
    pub(crate) async fn commit_quorum_replacing(
        &self,
        what: &str,
        need: usize,
        writes: impl IntoIterator<Item = (usize, Vec<Op>)>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let writes = self.reachable(writes.into_iter().collect(), need);
        #[cfg(feature = "faults")]
        if what == "object record" {
            return self.faulty_record_commit(what, need, writes).await;
        }
        let commits: Vec<_> = writes
            .into_iter()
            .map(|(d, ops)| self.drives[d].commit_replacing(ops))
            .collect();
        Ok(quorum(what, need, commits).await?.into_iter().flatten().collect())
    }

    /// A record commit with the fault points of `RINGSTORE_FAULTS` (see `faults.rs`): the
    /// drives are written one after another so that the point where it stops is exact.
    #[cfg(feature = "faults")]
    async fn faulty_record_commit(
        &self,
        what: &str,
        need: usize,
        writes: Vec<(usize, Vec<Op>)>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let f = faults::get();
        let mut results = Vec::new();
        let mut committed = 0;
        for (at, (d, ops)) in writes.into_iter().enumerate() {
            if at < f.record_commit_offset || f.record_commits.is_some_and(|n| committed >= n) {
                results.push(Err(ringstore_store::Error::Unusable {
                    path: self.drives[d].id().to_string(),
                    reason: "fault injected: record commit refused".into(),
                }));
                continue;
            }
            let r = self.drives[d].commit_replacing(ops).await;
            if r.is_ok() {
                committed += 1;
                if f.crash_after_record_commits == Some(committed) {
                    tracing::error!("fault injected: crash after {committed} record commits");
                    std::process::abort();
                }
            }
            results.push(r);
        }
        let ready: Vec<_> = results.into_iter().map(futures::future::ready).collect();
        Ok(quorum(what, need, ready).await?.into_iter().flatten().collect())
    }

    /// Whether other nodes hold drives of this layout (settled notes are shared with them).
    pub(crate) fn has_peers(&self) -> bool {
        self.drives.iter().any(|d| matches!(d, DriveHandle::Remote(_)))
    }

    /// Drive indexes of the ids a record names that this layout knows.
    pub(crate) fn present(&self, ids: &[String]) -> Vec<usize> {
        self.resolve(ids).into_iter().flatten().collect()
    }

    /// A record for a new version stored on `drives` with `codec`; the caller fills in what
    /// the version holds.
    pub(crate) fn new_record(&self, version: Version, drives: Vec<String>, codec: &Codec) -> ObjectRecord {
        let r = codec.redundancy();
        ObjectRecord {
            version,
            deleted: false,
            size: 0,
            etag: String::new(),
            headers: Default::default(),
            user_meta: Default::default(),
            checksum: None,
            k: r.k,
            m: r.m,
            block_size: ringstore_erasure::block_size(r.k),
            codec: ringstore_erasure::CODEC_ID.to_string(),
            drives,
            parts: vec![],
            shard: 0,
            inline: None,
            modified: None,
            swap: None,
        }
    }

    /// Ids of drives given by index.
    pub(crate) fn drive_ids(&self, drives: &[usize]) -> Vec<String> {
        drives.iter().map(|d| self.drives[*d].id().to_string()).collect()
    }

    /// The drives of `bucket/key`'s partition, in shard order.
    pub(crate) fn partition_drives(&self, bucket: &str, key: &str) -> Vec<usize> {
        let p = ringstore_ring::partition_of(bucket, key);
        let offsets = node_offsets(&self.layout);
        self.placement
            .drives(p)
            .iter()
            .map(|d| offsets[d.node] + d.drive)
            .collect()
    }

    /// Where older layouts placed `bucket/key`, newest first, for each one that placed it
    /// elsewhere or with another redundancy: the slots whose drives are still in the cluster.
    pub(crate) fn older_partition_drives(&self, bucket: &str, key: &str) -> Vec<Vec<usize>> {
        self.older_partition_sets(bucket, key)
            .into_iter()
            .map(|(_, drives)| drives)
            .collect()
    }

    /// [`Inner::older_partition_drives`] with the redundancy each of those layouts stored
    /// objects with.
    pub(crate) fn older_partition_sets(&self, bucket: &str, key: &str) -> Vec<(Redundancy, Vec<usize>)> {
        if self.older.is_empty() {
            return vec![];
        }
        let p = ringstore_ring::partition_of(bucket, key);
        let current = (self.layout.redundancy, self.partition_drives(bucket, key));
        let mut out: Vec<(Redundancy, Vec<usize>)> = Vec::new();
        for old in &self.older {
            let drives: Vec<usize> = old
                .placement
                .drives(p)
                .iter()
                .filter_map(|d| old.index[old.offsets[d.node] + d.drive])
                .collect();
            let set = (old.redundancy, drives);
            if set != current && !out.contains(&set) {
                out.push(set);
            }
        }
        out
    }

    /// Drive indexes of the ids a record names; unknown ids map to `None`.
    pub(crate) fn resolve(&self, ids: &[String]) -> Vec<Option<usize>> {
        ids.iter().map(|id| self.by_id.get(id).copied()).collect()
    }
}

/// Index of each node's first drive in the flat list of `layout`'s drives.
fn node_offsets(layout: &Layout) -> Vec<usize> {
    let mut at = 0;
    layout
        .nodes
        .iter()
        .map(|n| {
            let o = at;
            at += n.drives.len();
            o
        })
        .collect()
}

/// Runs per-drive commits in parallel; the answers of those that succeeded, when at least
/// `need` did.
async fn quorum<T>(
    what: &str,
    need: usize,
    commits: Vec<impl std::future::Future<Output = ringstore_store::Result<T>>>,
) -> Result<Vec<T>> {
    let results = futures::future::join_all(commits).await;
    let acked = results.iter().filter(|r| r.is_ok()).count();
    if acked < need {
        for e in results.into_iter().filter_map(|r| r.err()) {
            drive_failure(&format!("{what} write failed on a drive"), &e);
        }
        return Err(Error::Quorum(format!(
            "{what} recorded on {acked} drives, {need} needed"
        )));
    }
    Ok(results.into_iter().flatten().collect())
}

/// Logs a drive operation that failed. A peer that is down is expected while it is down
/// (requests carry on with the other shards, and `admin status` shows the node offline), so
/// that is logged at debug level rather than once per request.
pub(crate) fn drive_failure(what: &str, e: &dyn std::fmt::Display) {
    let text = e.to_string();
    const PEER_TROUBLE: [&str; 6] = [
        " is unreachable",
        "node is starting",
        " did not answer",
        "stopped taking the shard",
        "took no data for",
        "did not confirm the shard",
    ];
    if PEER_TROUBLE.iter().any(|p| text.contains(p)) {
        tracing::debug!(error = %text, "{what}");
    } else {
        tracing::warn!(error = %text, "{what}");
    }
}

pub(crate) fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + key.len() + 1);
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn rmp_encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("records serialise")
}

pub(crate) fn rmp_decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    rmp_serde::from_slice(b).map_err(|e| Error::Internal(format!("damaged metadata record: {e}")))
}
