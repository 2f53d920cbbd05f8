//! The write path: stream a body into erasure-coded shards, then commit its record.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use ringstore_erasure::Codec;
use ringstore_rpc::{DriveHandle, ShardSink};
use ringstore_store::{Op, Table};

use crate::record::{ObjectRecord, PartRef, StoredChecksum};
use crate::{Error, INLINE_MAX, Inner, ObjectStore, Result, object_key};

/// A request body: chunks of bytes, or the reason reading failed.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// Called once the whole body has been read, with its MD5 and size, before anything is
/// committed. Returns the additional checksum to store, or an error that aborts the write.
pub type Verify = Box<dyn FnOnce(&[u8; 16], u64) -> Result<Option<StoredChecksum>> + Send>;

/// Checked against the current live version (`None`: the key has none) of a conditional
/// write; an error (usually [`Error::PreconditionFailed`]) refuses the write. It may be
/// called again when a concurrent write changed the key in between.
pub type Precondition = Box<dyn Fn(Option<&ObjectRecord>) -> Result<()> + Send + Sync>;

/// The metadata of an object being written.
#[derive(Debug, Clone, Default)]
pub struct NewObject {
    pub headers: BTreeMap<String, String>,
    pub user_meta: BTreeMap<String, String>,
}

/// What the data writer produced.
pub(crate) struct Written {
    pub size: u64,
    pub md5: [u8; 16],
    /// Frames per shard when the data is small enough to live in the records.
    pub inline: Option<Vec<Vec<u8>>>,
    /// Which shards were durably written.
    pub ok: Vec<bool>,
}

/// How long the data of a replaced or deleted version stays readable for GETs in flight.
pub(crate) const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

enum Msg {
    Stripe(Vec<u8>),
    Finish,
}

/// What the first stripe of a write reserves before the body shows how big it is.
const FIRST_STRIPE_CAPACITY: usize = 64 * 1024;

impl ObjectStore {
    /// Stores an object, replacing any older version of the key.
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        new: NewObject,
        body: BodyStream,
        verify: Verify,
        precondition: Option<Precondition>,
    ) -> Result<ObjectRecord> {
        self.require_bucket(bucket).await?;
        let inner = &self.inner();
        let (drives, codec) = inner.write_placement(bucket, key);
        // while older layouts are in use, another node may have written a newer version
        // where one of them places the key, on drives this write's quorum need not meet:
        // the new version is drawn above anything found there
        if !inner.older_partition_drives(bucket, key).is_empty() {
            self.lookup(bucket, key).await?;
        }
        let version = inner.now();
        let data_id = version.hex();
        let written = inner
            .write_data(&codec, &drives, &data_id, body, true, false)
            .await?;
        let record = ObjectRecord {
            size: written.size,
            etag: hex::encode(written.md5),
            headers: new.headers,
            user_meta: new.user_meta,
            parts: vec![PartRef {
                number: 0,
                size: written.size,
                etag: hex::encode(written.md5),
                data_id: data_id.clone(),
                checksum: None,
            }],
            ..inner.new_record(version, inner.drive_ids(&drives), &codec)
        };
        let checksum = match verify(&written.md5, written.size) {
            Ok(c) => c,
            Err(e) => {
                if written.inline.is_none() {
                    inner.delete_data(&record.drives, &data_id).await;
                }
                return Err(e);
            }
        };
        let record = ObjectRecord { checksum, ..record };
        match precondition {
            None => {
                self.commit_version(bucket, key, &record, written.inline, &written.ok, true)
                    .await
            }
            Some(pre) => {
                let result = self
                    .commit_conditional(
                        bucket,
                        key,
                        record.clone(),
                        written.inline.as_ref(),
                        &written.ok,
                        &pre,
                    )
                    .await;
                if let Err(Conditional::Refused(_)) = &result
                    && written.inline.is_none()
                {
                    // no record of this write exists anywhere: its shards are garbage
                    inner.delete_data(&record.drives, &data_id).await;
                }
                result.map_err(Conditional::into_error)
            }
        }
    }

    /// Commits `record` as the newest version of `bucket/key` and retires what it replaced;
    /// answers the record as committed (its version may have been raised).
    ///
    /// Versions do not trust clocks. Each drive's commit answers the record it held before,
    /// and when so many drives held a newer version that ours is not on a write quorum, the
    /// record is committed again with a version above the newest one seen. Every acknowledged write is on a write
    /// quorum, which meets the write quorum this commit needs, so a write that starts after
    /// another was acknowledged always ends above it, however far behind this node's clock
    /// is. Only a version still newer than the raised one, from a write that overlapped
    /// ours, wins over it. The raise happens once: two overlapping writers cannot outbid
    /// each other for ever.
    ///
    /// A commit that reaches fewer than `W` drives fails with a retryable error and leaves
    /// the shards in place: the drives that did commit may hold the newest record, which a
    /// later read or heal completes (the write then took effect) or a newer version
    /// replaces (its data is retired then).
    ///
    /// With `may_raise` false the version is never raised: for a write that must order
    /// where it was drawn (the object of a Complete that failed part way).
    pub(crate) async fn commit_version(
        &self,
        bucket: &str,
        key: &str,
        record: &ObjectRecord,
        inline: Option<Vec<Vec<u8>>>,
        ok: &[bool],
        may_raise: bool,
    ) -> Result<ObjectRecord> {
        let inner = &self.inner();
        let okey = object_key(bucket, key);
        let slots = inner.resolve(&record.drives);
        let need = record.redundancy().write_quorum();
        let mut record = record.clone();
        let mut olds: Vec<ObjectRecord> = Vec::new();
        let mut on_quorum = false;
        for raise in [may_raise, false] {
            let writes = slots
                .iter()
                .enumerate()
                .filter(|(i, d)| d.is_some() && ok[*i])
                .map(|(i, d)| {
                    let frame = inline.as_ref().map(|f| f[i].clone());
                    let value = record.for_shard(i, frame).encode();
                    (
                        d.expect("filtered"),
                        vec![Op::PutIfNewer {
                            table: Table::Objects,
                            key: okey.clone(),
                            value,
                        }],
                    )
                });
            // each drive answers the record it held, so no read is needed before or after
            let replaced = inner
                .commit_quorum_replacing("object record", need, writes)
                .await?;
            let found: Vec<ObjectRecord> = replaced
                .iter()
                .flatten()
                .filter_map(|b| ObjectRecord::decode(b).ok())
                .collect();
            let newest = found.iter().map(|r| r.version).max();
            // drives that stored this version: those that held nothing or an older one
            // (judged by the version in front of each record, so that a record this build
            // cannot decode still counts as the newer one it may be)
            let took = replaced
                .iter()
                .filter(|b| {
                    b.as_deref()
                        .and_then(ringstore_store::Version::from_bytes)
                        .is_none_or(|v| v <= record.version)
                })
                .count();
            on_quorum = took >= need;
            olds.extend(found);
            // Raised only when this version lost on so many drives that it cannot be on a
            // write quorum: then newer versions sit on a quorum (an acknowledged write this
            // node's clock is behind). A version that won a quorum stays as it is, even if
            // some drive holds a newer one (an overlapping write, which orders after it):
            // raising it then would make it win again over writes acknowledged after it was
            // already visible (the nemesis run found exactly that).
            match newest {
                Some(v) if raise && took < need && v > record.version => record.version = inner.after(v),
                _ => break,
            }
        }
        if on_quorum {
            let set = crate::settled::set_hash(&record.drives);
            inner.settled.note(&okey, record.version, set, inner.has_peers());
        }
        olds.sort_by_key(|r| r.version);
        olds.dedup_by_key(|r| r.version);
        // The data of the versions this one replaced is no longer reachable by new readers;
        // GETs already streaming it keep going (see `retire_data`).
        // Versions can share data files (concurrent Completes of one multipart upload, and
        // this write's own record before its version was raised), so only data the other
        // version does not reference is removed.
        for prev in olds.iter().filter(|p| p.version < record.version) {
            inner.retire_data(&without_data_of(prev, &record));
        }
        // A concurrent writer with a newer version reached some drive first: if it won
        // overall, ours is garbage. (One that commits after us retires ours itself.)
        if olds.iter().any(|r| r.version > record.version)
            && let Ok(Some(now)) = self.lookup(bucket, key).await
            && now.record.version > record.version
        {
            for p in &without_data_of(&record, &now.record).parts {
                inner.delete_data(&record.drives, &p.data_id).await;
            }
        }
        Ok(record)
    }
}

/// How long a conditional writer holds its lease on a key at most, and how long it waits
/// for one.
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(8);

/// How a conditional commit failed.
#[derive(Debug)]
pub(crate) enum Conditional {
    /// Nothing of this write was committed anywhere (the precondition failed, or the key
    /// was busy): its data may be removed.
    Refused(Error),
    /// Some drives may hold the new record: the write may or may not take effect.
    Maybe(Error),
}

impl Conditional {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Conditional::Refused(e) | Conditional::Maybe(e) => e,
        }
    }
}

impl ObjectStore {
    /// Commits `record` as the newest version of `bucket/key` only if `pre` holds for the
    /// current version, atomically across the cluster (If-None-Match and If-Match PUTs and
    /// DELETEs, which lock files such as Terraform's depend on).
    ///
    /// Two layers. Correctness: a compare-and-swap on every drive of the set
    /// ([`Op::PutIfVersion`], expecting the version the lookup found, which is confirmed on a
    /// write quorum); the write succeeds when a write quorum took it. Two writes expecting
    /// the same version cannot both reach a write quorum, and one that landed in between
    /// makes the drives refuse. A write that no drive took is retried from the lookup (the
    /// precondition is judged again, usually failing now); a write that some drives took
    /// but not a quorum is reported as a retryable error and left in place, because a
    /// reader may already have seen it (and repaired it onto a quorum). Liveness: writers of
    /// one key first take a lease on a write quorum of its drives, so concurrent
    /// conditional writers take turns instead of splitting the drives between them. Leases
    /// live in the drives' memory and expire on their own monotonic clocks; a lost lease
    /// costs only a retry, never correctness.
    pub(crate) async fn commit_conditional(
        &self,
        bucket: &str,
        key: &str,
        record: ObjectRecord,
        inline: Option<&Vec<Vec<u8>>>,
        ok: &[bool],
        pre: &Precondition,
    ) -> Result<ObjectRecord, Conditional> {
        let inner = &self.inner();
        let okey = object_key(bucket, key);
        let slots = inner.resolve(&record.drives);
        let present: Vec<usize> = slots.iter().flatten().copied().collect();
        let need = record.redundancy().write_quorum();
        let owner = inner
            .lease(&okey, &present, need)
            .await
            .map_err(Conditional::Refused)?;
        let result = async {
            for _ in 0..4 {
                let current = self.lookup(bucket, key).await.map_err(Conditional::Refused)?;
                #[cfg(feature = "faults")]
                if crate::faults::get().conditional_pause_ms > 0 {
                    let pause = crate::faults::get().conditional_pause_ms;
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                let live = current.as_ref().filter(|f| !f.record.deleted);
                pre(live.map(|f| &f.record)).map_err(Conditional::Refused)?;
                let expected = current.as_ref().map(|f| f.record.version);
                let mut rec = record.clone();
                rec.version = Inner::successor(expected);
                rec.modified = Some(inner.now().ts_nanos);
                rec.swap = Some(expected.unwrap_or_default());
                let writes = slots.iter().enumerate().filter_map(|(i, d)| {
                    let d = (*d).filter(|_| ok[i])?;
                    let frame = inline.map(|f| f[i].clone());
                    Some(inner.drives[d].commit_replacing(vec![Op::PutIfVersion {
                        table: Table::Objects,
                        key: okey.clone(),
                        value: rec.for_shard(i, frame).encode(),
                        expected,
                    }]))
                });
                let (mut took, mut unknown) = (0, 0);
                let mut olds = Vec::new();
                for r in futures::future::join_all(writes).await {
                    match r {
                        Ok(replaced) => {
                            let old = replaced.into_iter().next().flatten();
                            let version = old.as_deref().and_then(ringstore_store::Version::from_bytes);
                            if version <= expected {
                                took += 1;
                                olds.extend(old.and_then(|b| ObjectRecord::decode(&b).ok()));
                            } else if let Some(v) = version {
                                inner.observe(v);
                            }
                        }
                        Err(e) => {
                            crate::drive_failure("conditional record write failed on a drive", &e);
                            unknown += 1;
                        }
                    }
                }
                if took >= need {
                    let set = crate::settled::set_hash(&rec.drives);
                    inner.settled.note(&okey, rec.version, set, inner.has_peers());
                    olds.sort_by_key(|r| r.version);
                    olds.dedup_by_key(|r| r.version);
                    for prev in &olds {
                        inner.retire_data(&without_data_of(prev, &rec));
                    }
                    return Ok(rec);
                }
                if took > 0 || unknown > 0 {
                    return Err(Conditional::Maybe(Error::Quorum(format!(
                        "the conditional write reached {took} drives, {need} needed; it may \
                         or may not take effect"
                    ))));
                }
                // every drive holds a write that landed after the lookup: judge again
            }
            Err(Conditional::Refused(Error::Quorum(
                "the key kept changing under the conditional write".into(),
            )))
        }
        .await;
        inner.release(&okey, &present, owner).await;
        result
    }

    /// Deletes `bucket/key` only if `pre` holds for its current version (If-Match), as
    /// atomically as [`ObjectStore::commit_conditional`].
    pub async fn delete_object_if(&self, bucket: &str, key: &str, pre: Precondition) -> Result<()> {
        self.require_bucket(bucket).await?;
        let inner = &self.inner();
        let (drives, codec) = inner.write_placement(bucket, key);
        let marker = ObjectRecord {
            deleted: true,
            ..inner.new_record(inner.now(), inner.drive_ids(&drives), &codec)
        };
        let ok = vec![true; drives.len()];
        self.commit_conditional(bucket, key, marker, None, &ok, &pre)
            .await
            .map(|_| ())
            .map_err(Conditional::into_error)
    }
}

impl Inner {
    /// Takes the lease on `okey` on at least `need` of `drives` (see
    /// [`ObjectStore::commit_conditional`]), waiting in randomised turns while others hold it.
    async fn lease(&self, okey: &[u8], drives: &[usize], need: usize) -> Result<u128> {
        let owner: u128 = rand::random();
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            let asks = drives.iter().map(|d| {
                self.drives[*d].commit_replacing(vec![Op::Lease {
                    key: okey.to_vec(),
                    owner,
                    ttl_ms: LEASE_TTL.as_millis() as u64,
                }])
            });
            let granted = futures::future::join_all(asks)
                .await
                .iter()
                .filter(|r| r.as_ref().is_ok_and(|r| r.first().is_some_and(Option::is_none)))
                .count();
            if granted >= need {
                return Ok(owner);
            }
            // give back what we got, so that one of the others can finish
            self.release(okey, drives, owner).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Quorum(
                    "another conditional write of this key is in progress; retry".into(),
                ));
            }
            let jitter = rand::random::<u64>() % (pause.as_micros() as u64 + 1);
            tokio::time::sleep(pause + std::time::Duration::from_micros(jitter)).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(100));
        }
    }

    async fn release(&self, okey: &[u8], drives: &[usize], owner: u128) {
        let releases = drives.iter().map(|d| {
            self.drives[*d].commit(vec![Op::Release {
                key: okey.to_vec(),
                owner,
            }])
        });
        let _ = futures::future::join_all(releases).await;
    }
}

impl Inner {
    /// Streams `body` into shards of `data_id` on `drives` (in shard order), encoded with
    /// `codec`; with `replace`, each shard file takes the place of one of the same name only
    /// once it is complete (a re-encoding, which other nodes may write at the same time).
    pub(crate) async fn write_data(
        &self,
        codec: &Arc<Codec>,
        drives: &[usize],
        data_id: &str,
        mut body: BodyStream,
        allow_inline: bool,
        replace: bool,
    ) -> Result<Written> {
        let block = ringstore_erasure::block_size(codec.redundancy().k);
        // Most objects are small: the first stripe grows as the body comes instead of taking
        // a whole block (1 MiB and up) for a 4 KiB PUT. A request of that size costs more
        // than the copy: glibc serves it by consolidating its free lists first.
        let mut stripe = Vec::with_capacity(block.min(FIRST_STRIPE_CAPACITY));
        let mut first_full = false;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Error::Body)?;
            if stripe.len() + chunk.len() > block {
                first_full = true;
                let take = block - stripe.len();
                stripe.extend_from_slice(&chunk[..take]);
                let rest = chunk.slice(take..);
                body = Box::pin(futures::stream::once(async move { Ok(rest) }).chain(body));
                break;
            }
            stripe.extend_from_slice(&chunk);
        }
        let width = codec.redundancy().width();
        if !first_full && allow_inline && stripe.len() as u64 <= INLINE_MAX {
            let md5: [u8; 16] = Md5::digest(&stripe).into();
            let frames = if stripe.is_empty() {
                vec![Vec::new(); width]
            } else {
                codec.encode(&stripe)
            };
            return Ok(Written {
                size: stripe.len() as u64,
                md5,
                inline: Some(frames),
                ok: vec![true; width],
            });
        }

        let need = codec.redundancy().write_quorum();
        // shards for drives of peers that are down are not attempted while enough others are
        // up (the record then names the drive without a record on it: the healer fills it)
        let mut targets: Vec<Option<DriveHandle>> = vec![None; drives.len()];
        let slots: Vec<(usize, usize)> = drives.iter().enumerate().map(|(i, d)| (*d, i)).collect();
        for (d, i) in self.reachable(slots, need) {
            targets[i] = Some(self.drives[d].clone());
        }
        let codec = codec.clone();
        let id = data_id.to_string();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(2);
        let writer = tokio::task::spawn_blocking(move || {
            let mut writers: Vec<Option<ShardSink>> = targets
                .iter()
                .map(|d| {
                    d.as_ref()?
                        .create_shard(&id, replace)
                        .map_err(|e| crate::drive_failure("cannot create shard", &e))
                        .ok()
                })
                .collect();
            let mut md5 = Md5::new();
            let mut size = 0u64;
            let mut parity = Vec::new();
            loop {
                match rx.blocking_recv() {
                    Some(Msg::Stripe(mut data)) => {
                        md5.update(&data);
                        size += data.len() as u64;
                        let frames = codec.encode_stripe(&mut data, &mut parity);
                        for (w, (chunk, crc)) in writers.iter_mut().zip(frames) {
                            if let Some(sw) = w
                                && let Err(e) = sw.write(chunk).and_then(|_| sw.write(&crc))
                            {
                                crate::drive_failure("shard write failed", &e);
                                *w = None;
                            }
                        }
                    }
                    Some(Msg::Finish) => break,
                    None => return Err(Error::Body("request body aborted".into())),
                }
            }
            let ok = finish_all(writers);
            let acked = ok.iter().filter(|o| **o).count();
            if acked < need {
                return Err(Error::Quorum(format!(
                    "{acked} shards written durably, {need} needed"
                )));
            }
            Ok(Written {
                size,
                md5: md5.finalize().into(),
                inline: None,
                ok,
            })
        });

        let fed: Result<()> = async {
            let send = |m| async {
                tx.send(m)
                    .await
                    .map_err(|_| Error::Internal("shard writer stopped".into()))
            };
            if !stripe.is_empty() {
                let full = std::mem::replace(&mut stripe, Vec::with_capacity(block));
                send(Msg::Stripe(full)).await?;
            }
            while let Some(chunk) = body.next().await {
                let mut chunk = chunk.map_err(Error::Body)?;
                while !chunk.is_empty() {
                    let take = (block - stripe.len()).min(chunk.len());
                    stripe.extend_from_slice(&chunk.split_to(take));
                    if stripe.len() == block {
                        let full = std::mem::replace(&mut stripe, Vec::with_capacity(block));
                        send(Msg::Stripe(full)).await?;
                    }
                }
            }
            if !stripe.is_empty() {
                send(Msg::Stripe(std::mem::take(&mut stripe))).await?;
            }
            send(Msg::Finish).await
        }
        .await;
        drop(tx);
        let written = writer.await.map_err(|e| Error::Internal(e.to_string()))?;
        match fed {
            // the writer's own error explains a stopped writer better than the send failure
            Err(Error::Internal(_)) => written.and(Err(Error::Internal("shard writer stopped".into()))),
            Err(e) => Err(e),
            Ok(()) => written,
        }
    }

    /// Removes a replaced or deleted version's data after a grace period, so that a GET that
    /// started before the overwrite returns the old version whole, as S3 promises: a reader
    /// opens a multipart object's parts one after another, so unlinking them at once could
    /// cut it off mid-stream. If the process stops first, the orphan sweeps of the nodes
    /// holding the shards (soon after each start, then daily) remove what is left.
    pub(crate) fn retire_data(self: &Arc<Self>, rec: &ObjectRecord) {
        let inline = rec.parts.len() == 1 && rec.parts[0].number == 0 && rec.size <= INLINE_MAX;
        if rec.parts.is_empty() || inline {
            return; // nothing on disk besides the records
        }
        let inner = self.clone();
        let rec = rec.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETIRE_GRACE).await;
            for p in &rec.parts {
                inner.delete_data(&rec.drives, &p.data_id).await;
            }
        });
    }

    /// Removes the shards of `data_id` from the drives named by `drive_ids`.
    pub(crate) async fn delete_data(&self, drive_ids: &[String], data_id: &str) {
        let deletes = self
            .resolve(drive_ids)
            .into_iter()
            .flatten()
            .map(|d| self.drives[d].delete_shard(data_id));
        for r in futures::future::join_all(deletes).await {
            if let Err(e) = r {
                crate::drive_failure("could not remove a shard", &e);
            }
        }
    }
}

/// `rec` without the parts whose data files `other` also references.
fn without_data_of(rec: &ObjectRecord, other: &ObjectRecord) -> ObjectRecord {
    let mut out = rec.clone();
    out.parts
        .retain(|p| !other.parts.iter().any(|o| o.data_id == p.data_id));
    out
}

/// Makes every open shard durable in parallel; returns which ones succeeded.
fn finish_all(writers: Vec<Option<ShardSink>>) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = writers
            .into_iter()
            .map(|w| {
                s.spawn(move || match w {
                    Some(w) => w
                        .finish()
                        .map_err(|e| crate::drive_failure("shard fsync failed", &e))
                        .is_ok(),
                    None => false,
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(false)).collect()
    })
}

impl ObjectStore {
    /// Deletes the newest version of an object. Deleting a missing key succeeds, as in S3.
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<()> {
        self.require_bucket(bucket).await?;
        let Some(prev) = self.lookup(bucket, key).await? else {
            return Ok(());
        };
        if prev.record.deleted {
            return Ok(());
        }
        let inner = &self.inner();
        // (while a transition syncs, where writes still go: nodes that have not seen the
        // new layout read there; found in review)
        let (drives, codec) = inner.write_placement(bucket, key);
        // above the version it deletes, whatever this node's clock says (the lookup read a
        // read quorum, so that version is at least the newest acknowledged one)
        let marker = ObjectRecord {
            deleted: true,
            ..inner.new_record(inner.after(prev.record.version), inner.drive_ids(&drives), &codec)
        };
        let okey = object_key(bucket, key);
        let value = marker.encode();
        let writes = drives.iter().map(|d| {
            (
                *d,
                vec![Op::PutIfNewer {
                    table: Table::Objects,
                    key: okey.clone(),
                    value: value.clone(),
                }],
            )
        });
        inner
            .commit_quorum("deletion", marker.redundancy().write_quorum(), writes)
            .await?;
        // where older layouts placed the key, records of it may remain (layout changes do not
        // move data yet): they get the marker too, and the marker is kept, so that no older
        // version shows through once it is gone
        let older = inner.older_partition_drives(bucket, key);
        let old_writes = older.iter().flatten().map(|d| {
            inner.drives[*d].commit(vec![Op::PutIfNewer {
                table: Table::Objects,
                key: okey.clone(),
                value: value.clone(),
            }])
        });
        for r in futures::future::join_all(old_writes).await {
            if let Err(e) = r {
                crate::drive_failure("deletion marker on an older layout's drive failed", &e);
            }
        }
        inner.retire_data(&prev.record);
        // the marker stays (the scrubber drops it after a grace period): see
        // `drop_marker_everywhere`
        Ok(())
    }
}
