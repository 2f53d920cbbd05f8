//! Healing: rebuild missing or corrupt shards and stale records, on demand (after a read
//! found damage), by the background scrubber, and sweeping orphaned shard files at start.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ringstore_rpc::ShardSink;
use ringstore_store::{Op, Table};
use serde::Serialize;

use crate::read::PartReader;
use crate::record::ObjectRecord;
use crate::{Error, Inner, ObjectStore, Result, object_key};

/// How long a deletion marker is kept after the delete (by the version's clock).
pub(crate) const MARKER_GRACE: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
pub(crate) struct Counters {
    objects_checked: AtomicU64,
    shards_healed: AtomicU64,
    records_healed: AtomicU64,
    orphans_removed: AtomicU64,
    heal_errors: AtomicU64,
    scrubs_running: AtomicU64,
    scrub_passes: AtomicU64,
    scrub_checked: AtomicU64,
    orphan_sweeps: AtomicU64,
    pub(crate) objects_moved: AtomicU64,
    pub(crate) bytes_moved: AtomicU64,
    pub(crate) move_errors: AtomicU64,
}

/// Totals since the node started, for status and metrics.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct HealStats {
    pub objects_checked: u64,
    pub shards_healed: u64,
    pub records_healed: u64,
    pub orphans_removed: u64,
    pub heal_errors: u64,
    /// Whether a scrub (a walk over this node's objects) is running now.
    pub scrub_running: bool,
    /// Scrubs finished since the node started.
    pub scrub_passes: u64,
    /// Objects checked by the running scrub, or by the last one.
    pub scrub_checked: u64,
    /// Orphan sweeps finished since the node started.
    pub orphan_sweeps: u64,
}

impl ObjectStore {
    pub fn heal_stats(&self) -> HealStats {
        let c = &self.shared.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HealStats {
            objects_checked: get(&c.objects_checked),
            shards_healed: get(&c.shards_healed),
            records_healed: get(&c.records_healed),
            orphans_removed: get(&c.orphans_removed),
            heal_errors: get(&c.heal_errors),
            scrub_running: get(&c.scrubs_running) > 0,
            scrub_passes: get(&c.scrub_passes),
            scrub_checked: get(&c.scrub_checked),
            orphan_sweeps: get(&c.orphan_sweeps),
        }
    }

    /// Verifies one object on every drive of its partition and repairs what is missing or
    /// corrupt: shard files, inline frames and records. Returns whether anything was fixed.
    pub async fn heal_object(&self, bucket: &str, key: &str) -> Result<bool> {
        let inner = &self.inner();
        inner.stats.objects_checked.fetch_add(1, Ordering::Relaxed);
        let Some(found) = self
            .find(
                bucket,
                key,
                crate::read::Reading {
                    everywhere: true,
                    with_data: None,
                },
            )
            .await?
        else {
            return Ok(false);
        };
        let rec = found.record;
        let slots = inner.resolve(&rec.drives);
        let okey = object_key(bucket, key);
        // which drives lack the newest record; a drive holding a newer record that cannot be
        // read (an interrupted write that `lookup` passed over) cannot take this one
        let mut stale = Vec::new();
        let mut ahead = Vec::new();
        let mut unreachable = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            let Some(d) = slot else { continue };
            // a drive that does not answer (its node is down) is left for a later pass
            let current = match inner.drives[*d].get(Table::Objects, &okey).await {
                Ok(c) => c,
                Err(e) => {
                    crate::drive_failure("heal: record read failed", &e);
                    unreachable.push(i);
                    continue;
                }
            };
            match current
                .and_then(|b| ObjectRecord::decode(&b).ok())
                .map(|r| r.version)
            {
                Some(v) if v == rec.version => {}
                Some(v) if v > rec.version => ahead.push(i),
                _ => stale.push(i),
            }
        }
        if rec.deleted {
            // spread the deletion marker, then drop it once every drive has it: a drive that
            // did not answer, or holds a newer version we cannot read, may hold the deleted
            // object still, and without the marker it would bring the object back
            let marker = rec.for_shard(0, None).encode();
            for &i in &stale {
                let d = slots[i].expect("resolved");
                inner.drives[d]
                    .commit(vec![rec.copy_op(&okey, marker.clone())])
                    .await?;
            }
            let age = inner.now().ts_nanos.saturating_sub(rec.version.ts_nanos);
            if unreachable.is_empty() && ahead.is_empty() && age > MARKER_GRACE.as_nanos() as u64 {
                self.drop_marker_everywhere(bucket, key, &rec).await;
            }
            return Ok(!stale.is_empty());
        }
        let mut fixed = false;
        let mut inline = found.inline;
        if rec.parts.len() == 1 && inline.iter().any(Option::is_some) {
            let part = &rec.parts[0];
            if part.size > 0 {
                let decoded = inner
                    .codec_for(rec.redundancy())?
                    .decode(part.size as usize, inline.clone())?;
                for (i, frame) in decoded.repaired {
                    inline[i] = Some(frame);
                    if !stale.contains(&i) && !ahead.contains(&i) && !unreachable.contains(&i) {
                        stale.push(i);
                    }
                }
            }
        } else {
            for part in &rec.parts {
                let repaired = inner.repair_data(&rec, part).await?;
                if !repaired.is_empty() {
                    fixed = true;
                    inner
                        .stats
                        .shards_healed
                        .fetch_add(repaired.len() as u64, Ordering::Relaxed);
                }
            }
        }
        for i in stale {
            let Some(d) = slots[i] else { continue };
            let value = rec.for_shard(i, inline[i].clone()).encode();
            // (a conditional write only by its own compare-and-swap, as read repair does)
            inner.drives[d].commit(vec![rec.copy_op(&okey, value)]).await?;
            inner.stats.records_healed.fetch_add(1, Ordering::Relaxed);
            fixed = true;
        }
        Ok(fixed)
    }

    /// Removes a deletion marker that every drive of its set holds (the caller knows they
    /// do). Kept while older layouts place the key elsewhere (their drives may hold the
    /// deleted version) or a drive of the set left the cluster.
    ///
    /// Removing a marker is the only thing that lowers the version a drive holds for a key:
    /// a write still in flight with a version below the marker (drawn before the delete, its
    /// commit delayed) would then land and bring back data the delete retired. So markers
    /// are kept for [`MARKER_GRACE`] after the delete, far longer than any request runs,
    /// like the grace period of tombstones elsewhere.
    pub(crate) async fn drop_marker_everywhere(&self, bucket: &str, key: &str, marker: &ObjectRecord) {
        let inner = self.inner();
        let slots = inner.resolve(&marker.drives);
        if slots.iter().any(Option::is_none) || !inner.older_partition_drives(bucket, key).is_empty() {
            return;
        }
        let okey = object_key(bucket, key);
        let ops = slots.iter().flatten().map(|d| {
            inner.drives[*d].commit(vec![Op::DeleteIfVersion {
                table: Table::Objects,
                key: okey.clone(),
                version: marker.version,
            }])
        });
        let _ = futures::future::join_all(ops).await;
    }

    /// Walks every object stored on this node's drives once, healing as it goes, at most
    /// `per_second` objects a second. Each node checks the objects its own drives hold, once
    /// per node (from the first of its drives in the object's set), so an object is checked
    /// by every node holding a shard of it: a drive that lost everything is rebuilt by its
    /// peers.
    pub async fn scrub(&self, per_second: u32) -> Result<u64> {
        let stats = &self.shared.stats;
        stats.scrubs_running.fetch_add(1, Ordering::SeqCst);
        stats.scrub_checked.store(0, Ordering::Relaxed);
        let result = self.scrub_pass(per_second).await;
        stats.scrubs_running.fetch_sub(1, Ordering::SeqCst);
        stats.scrub_passes.fetch_add(1, Ordering::SeqCst);
        result
    }

    async fn scrub_pass(&self, per_second: u32) -> Result<u64> {
        let mut checked = 0u64;
        let pause = Duration::from_secs(1) / per_second.max(1);
        let local: Vec<Arc<ringstore_store::Drive>> = self.shared.local.clone();
        let local_ids: HashSet<String> = local.iter().map(|d| d.id().to_string()).collect();
        for drive in &local {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = drive.scan(Table::Objects, b"", after.as_deref(), 256)?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                for (k, v) in &page {
                    let Ok(rec) = ObjectRecord::decode(v) else {
                        continue;
                    };
                    let Some(sep) = k.iter().position(|b| *b == 0) else {
                        continue;
                    };
                    let bucket = String::from_utf8_lossy(&k[..sep]).into_owned();
                    let key = String::from_utf8_lossy(&k[sep + 1..]).into_owned();
                    if let Err(e) = self.drop_left_behind(drive, &bucket, &key, &rec).await {
                        tracing::debug!(%bucket, %key, error = %e, "a record left behind stays for now");
                    }
                    let first = rec.drives.iter().find(|id| local_ids.contains(*id));
                    if first.map(String::as_str) != Some(drive.id()) {
                        continue;
                    }
                    if let Err(e) = self.heal_object(&bucket, &key).await {
                        self.shared.stats.heal_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%bucket, %key, error = %e, "scrub could not heal object");
                    }
                    checked += 1;
                    self.shared.stats.scrub_checked.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                }
            }
            checked += self.scrub_uploads(drive, &local_ids, pause).await?;
        }
        Ok(checked)
    }

    /// Removes `rec` from `drive` when it was left behind by a layout transition: no layout
    /// in use places the key on the drive, and the newest version of the key (at or above
    /// this one) lives on drives that do not include it. Such a copy is never read, but
    /// listings merge every drive, so it would show the key again once a later delete's
    /// marker is dropped (a heal that read the record just before the mover switched it can
    /// write it back after the mover removed it; found in review). Kept when the set holds
    /// nothing or only older versions: then it may be the one copy of an object that was
    /// placed where an upload started (see ARCHITECTURE.md).
    async fn drop_left_behind(
        &self,
        drive: &ringstore_store::Drive,
        bucket: &str,
        key: &str,
        rec: &ObjectRecord,
    ) -> Result<()> {
        let inner = self.inner();
        let Some(&d) = inner.by_id.get(drive.id()) else {
            return Ok(());
        };
        let placed_here = inner.partition_drives(bucket, key).contains(&d)
            || inner
                .older_partition_drives(bucket, key)
                .iter()
                .any(|old| old.contains(&d));
        if placed_here {
            return Ok(());
        }
        let reading = crate::read::Reading {
            everywhere: true,
            with_data: None,
        };
        let Some(found) = self.find(bucket, key, reading).await? else {
            return Ok(());
        };
        let theirs = &found.record;
        if theirs.version < rec.version || theirs.drives.iter().any(|id| id == drive.id()) {
            return Ok(());
        }
        tracing::info!(%bucket, %key, drive = drive.id(), "removing a record left outside the key's drives");
        inner.drives[d]
            .commit(vec![Op::DeleteIfVersion {
                table: Table::Objects,
                key: object_key(bucket, key),
                version: rec.version,
            }])
            .await?;
        crate::mover::retire_copy(&inner.drives[d], rec);
        Ok(())
    }

    /// The uploads part of a scrub: each upload this drive holds is brought in line on all
    /// its drives (see `heal_upload`), from the first of this node's drives it names.
    async fn scrub_uploads(
        &self,
        drive: &ringstore_store::Drive,
        local_ids: &HashSet<String>,
        pause: Duration,
    ) -> Result<u64> {
        let mut checked = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = drive.scan(Table::Uploads, b"", after.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, v) in &page {
                let Some((_, rec)) = crate::multipart::decode_upload(v) else {
                    continue;
                };
                let first = rec.drives.iter().find(|id| local_ids.contains(*id));
                if first.map(String::as_str) != Some(drive.id()) {
                    continue;
                }
                // `bucket \0 key \0 upload-id`; keys hold no NUL
                let (Some(a), Some(b)) = (k.iter().position(|b| *b == 0), k.iter().rposition(|b| *b == 0))
                else {
                    continue;
                };
                if a == b {
                    continue;
                }
                let text = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
                let (bucket, key, id) = (text(&k[..a]), text(&k[a + 1..b]), text(&k[b + 1..]));
                if let Err(e) = self.heal_upload(&bucket, &key, &id).await {
                    self.shared.stats.heal_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%bucket, %key, upload = %id, error = %e, "scrub could not heal an upload");
                }
                checked += 1;
                tokio::time::sleep(pause).await;
            }
        }
        Ok(checked)
    }

    /// Removes shard files on this node's drives that no record in the cluster names: left
    /// by a crash between writing shards and committing their record, by a write whose
    /// record reached no drive, or by the deferred removal of a replaced version that a
    /// restart cut short (see `retire_data`). Only files last written before `before` are
    /// considered, so writes in flight are never touched.
    ///
    /// A shard is kept while a record on *any* drive of the layout names it: a crash
    /// between the per-drive record commits leaves drives holding the shard but not the
    /// record, which healing spreads to them later. So every drive must answer; when one
    /// does not, nothing is removed and the sweep fails with a quorum error (to be tried
    /// again later).
    pub async fn sweep_orphans(&self, before: SystemTime) -> Result<u64> {
        // the cheap pass first: shard files no record on this node's own drives names
        let store = self.clone();
        let candidates = tokio::task::spawn_blocking(move || -> Result<Vec<(usize, String)>> {
            let mut referenced = HashSet::new();
            for drive in &store.shared.local {
                for (table, v) in records_of(drive)? {
                    referenced.extend(data_ids(table, &v));
                }
            }
            let mut candidates = Vec::new();
            for (i, drive) in store.shared.local.iter().enumerate() {
                for id in drive.shards_older_than(before)? {
                    if !referenced.contains(&id) {
                        candidates.push((i, id));
                    }
                }
            }
            Ok(candidates)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        // while a transition re-encodes, the new data of an object is named by no record
        // until its switch, which may come long after its first parts were written (a large
        // object, a slow throttle): the running transition's data ids are kept (found in
        // review); those its failed attempts left go once it has finished
        let inner = self.inner();
        let in_flight = format!("r{}-", inner.layout.version);
        let candidates: Vec<(usize, String)> = match inner.older.is_empty() {
            true => candidates,
            false => candidates
                .into_iter()
                .filter(|(_, id)| !id.starts_with(&in_flight))
                .collect(),
        };
        let mut unnamed: HashSet<String> = candidates.iter().map(|(_, id)| id.clone()).collect();
        if !unnamed.is_empty() {
            // then what every drive of the cluster names. Parts are read before objects:
            // completing an upload commits the object record before it drops the part
            // records, so a part cannot slip between the two scans.
            for table in [Table::Parts, Table::Objects] {
                for d in &inner.drives {
                    let mut after: Option<Vec<u8>> = None;
                    loop {
                        let page = d
                            .scan(table, b"", after.as_deref(), SWEEP_PAGE)
                            .await
                            .map_err(|e| {
                                Error::Quorum(format!(
                                    "orphan sweep postponed: drive {} did not answer ({e})",
                                    d.id()
                                ))
                            })?;
                        for (_, v) in &page {
                            for id in data_ids(table, v) {
                                unnamed.remove(&id);
                            }
                        }
                        if page.len() < SWEEP_PAGE {
                            break;
                        }
                        after = page.last().map(|(k, _)| k.clone());
                    }
                }
            }
        }
        let store = self.clone();
        let removed = tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut removed = 0;
            for (i, id) in candidates {
                if unnamed.contains(&id) {
                    store.shared.local[i].delete_shard(&id)?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        let stats = &self.shared.stats;
        stats.orphans_removed.fetch_add(removed, Ordering::Relaxed);
        stats.orphan_sweeps.fetch_add(1, Ordering::Relaxed);
        Ok(removed)
    }
}

/// Records per page when a sweep reads another drive's tables.
const SWEEP_PAGE: usize = 1000;

/// Every part and object record of a local drive, parts first (see `sweep_orphans`).
fn records_of(drive: &ringstore_store::Drive) -> Result<Vec<(Table, Vec<u8>)>> {
    let mut out = Vec::new();
    for table in [Table::Parts, Table::Objects] {
        out.extend(
            drive
                .scan(table, b"", None, usize::MAX)?
                .into_iter()
                .map(|(_, v)| (table, v)),
        );
    }
    Ok(out)
}

/// The data files a record of `table` names (none for a record that does not decode).
fn data_ids(table: Table, value: &[u8]) -> Vec<String> {
    match table {
        Table::Parts => value
            .get(ringstore_store::Version::LEN..)
            .and_then(|v| crate::rmp_decode::<crate::multipart::PartRecord>(v).ok())
            .map(|p| vec![p.data_id])
            .unwrap_or_default(),
        Table::Objects => ObjectRecord::decode(value)
            .map(|rec| rec.parts.into_iter().map(|p| p.data_id).collect())
            .unwrap_or_default(),
        _ => vec![],
    }
}

impl Inner {
    /// Starts a background heal of an object unless one is already running.
    pub(crate) fn request_heal(&self, store: &ObjectStore, bucket: &str, key: &str) {
        let key = object_key(bucket, key);
        if !self.healing.lock().expect("not poisoned").insert(key.clone()) {
            return;
        }
        let store = store.clone();
        tokio::spawn(async move {
            let sep = key.iter().position(|b| *b == 0).unwrap_or(0);
            let bucket = String::from_utf8_lossy(&key[..sep]).into_owned();
            let object = String::from_utf8_lossy(&key[sep + 1..]).into_owned();
            match store.heal_object(&bucket, &object).await {
                Ok(true) => tracing::info!(%bucket, key = %object, "healed object"),
                Ok(false) => {}
                Err(e) => {
                    store.shared.stats.heal_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%bucket, key = %object, error = %e, "heal failed");
                }
            }
            store.shared.healing.lock().expect("not poisoned").remove(&key);
        });
    }

    /// Verifies every frame of one data file and rewrites the shards that are missing or
    /// damaged. Returns the repaired shard indexes.
    async fn repair_data(self: &Arc<Self>, rec: &ObjectRecord, part: &crate::PartRef) -> Result<Vec<usize>> {
        let inner = self.clone();
        let rec = rec.clone();
        let part = part.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = PartReader::for_repair(&inner, &rec, &part);
            let geometry = reader.geometry();
            let width = rec.k + rec.m;
            // pass 1: find damaged shards
            let mut damaged = HashSet::new();
            reader.prepare(geometry.stripes());
            for s in 0..geometry.stripes() {
                reader.ahead(s);
                for (i, f) in reader.all_frames(s).iter().enumerate() {
                    if !f.as_deref().is_some_and(ringstore_erasure::frame_is_intact) {
                        damaged.insert(i);
                    }
                }
            }
            // an empty data file has no frames; its shards need only exist
            let slots = inner.resolve(&rec.drives);
            if geometry.stripes() == 0 {
                return Ok(vec![]);
            }
            // shards on drives that failed to answer are not damaged, just out of reach
            let mut damaged: Vec<usize> = damaged
                .into_iter()
                .filter(|i| slots[*i].is_some() && !reader.unreachable.contains(i))
                .collect();
            damaged.sort_unstable();
            if damaged.is_empty() {
                return Ok(damaged);
            }
            if damaged.len() > rec.m {
                return Err(Error::Decode(ringstore_erasure::Error::TooFewShards {
                    have: width - damaged.len(),
                    need: rec.k,
                }));
            }
            // pass 2: rebuild the damaged shards into replacement files
            let mut writers: Vec<(usize, ShardSink)> = Vec::new();
            for &i in &damaged {
                let d = slots[i].expect("filtered");
                writers.push((i, inner.drives[d].create_shard(&part.data_id, true)?));
            }
            reader.prepare(geometry.stripes());
            for s in 0..geometry.stripes() {
                reader.ahead(s);
                let frames = reader.all_frames(s);
                let decoded = reader.codec().decode(geometry.stripe_len(s), frames.clone())?;
                for (i, w) in writers.iter_mut() {
                    let rebuilt = decoded
                        .repaired
                        .iter()
                        .find(|(r, _)| r == i)
                        .map(|(_, f)| f.as_slice());
                    let frame = rebuilt
                        .or(frames[*i].as_deref())
                        .expect("either intact or rebuilt");
                    w.write(frame)
                        .map_err(|e| Error::Internal(format!("repair write: {e}")))?;
                }
            }
            for (_, w) in writers {
                w.finish()
                    .map_err(|e| Error::Internal(format!("repair fsync: {e}")))?;
            }
            Ok(damaged)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }
}
