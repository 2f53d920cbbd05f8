//! The write path: stream a body into erasure-coded shards, then commit its record.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use ringstore_rpc::{DriveHandle, ShardSink};
use ringstore_store::{Op, Table};

use crate::record::{ObjectRecord, PartRef, StoredChecksum};
use crate::{Error, INLINE_MAX, Inner, ObjectStore, Result, object_key};

/// A request body: chunks of bytes, or the reason reading failed.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// Called once the whole body has been read, with its MD5 and size, before anything is
/// committed. Returns the additional checksum to store, or an error that aborts the write.
pub type Verify = Box<dyn FnOnce(&[u8; 16], u64) -> Result<Option<StoredChecksum>> + Send>;

/// Checked against the current version right before commit (conditional writes).
pub type Precondition = Box<dyn FnOnce(Option<&ObjectRecord>) -> Result<()> + Send>;

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
const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

enum Msg {
    Stripe(Vec<u8>),
    Finish,
}

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
        let drives = inner.partition_drives(bucket, key);
        let version = inner.now();
        let data_id = version.hex();
        let written = inner.write_data(&drives, &data_id, body, true).await?;
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
            ..inner.new_record(version, inner.drive_ids(&drives))
        };
        let checked = match verify(&written.md5, written.size) {
            Ok(checksum) => match precondition {
                Some(pre) => match self.lookup(bucket, key).await {
                    Ok(current) => {
                        let current = current.filter(|f| !f.record.deleted);
                        pre(current.as_ref().map(|f| &f.record)).map(|_| checksum)
                    }
                    Err(e) => Err(e),
                },
                None => Ok(checksum),
            },
            Err(e) => Err(e),
        };
        let checksum = match checked {
            Ok(c) => c,
            Err(e) => {
                if written.inline.is_none() {
                    inner.delete_data(&record.drives, &data_id).await;
                }
                return Err(e);
            }
        };
        let record = ObjectRecord { checksum, ..record };
        self.commit_version(bucket, key, &record, written.inline, &written.ok)
            .await?;
        Ok(record)
    }

    /// Commits `record` as the newest version of `bucket/key` and retires what it replaced.
    pub(crate) async fn commit_version(
        &self,
        bucket: &str,
        key: &str,
        record: &ObjectRecord,
        inline: Option<Vec<Vec<u8>>>,
        ok: &[bool],
    ) -> Result<()> {
        let inner = &self.inner();
        let okey = object_key(bucket, key);
        let slots = inner.resolve(&record.drives);
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
        let need = record.redundancy().write_quorum();
        // each drive answers the record it held, so no read is needed before or after
        let replaced = match inner.commit_quorum_replacing("object record", need, writes).await {
            Ok(r) => r,
            Err(e) => {
                // A failed PUT's shards are garbage; a failed Complete's parts still belong to
                // the upload, which a retried Complete will use.
                if record.parts.iter().all(|p| p.number == 0) {
                    for p in &record.parts {
                        inner.delete_data(&record.drives, &p.data_id).await;
                    }
                }
                return Err(e);
            }
        };
        let mut olds: Vec<ObjectRecord> = replaced
            .iter()
            .flatten()
            .filter_map(|b| ObjectRecord::decode(b).ok())
            .collect();
        olds.sort_by_key(|r| r.version);
        olds.dedup_by_key(|r| r.version);
        // The data of the versions this one replaced is no longer reachable by new readers;
        // GETs already streaming it keep going (see `retire_data`).
        // Versions can share data files (concurrent Completes of one multipart upload), so
        // only data the other version does not reference is removed.
        for prev in olds.iter().filter(|p| p.version < record.version) {
            inner.retire_data(&without_data_of(prev, record));
        }
        // A concurrent writer with a newer version reached some drive first: if it won
        // overall, ours is garbage. (One that commits after us retires ours itself.)
        if olds.iter().any(|r| r.version > record.version)
            && let Ok(Some(now)) = self.lookup(bucket, key).await
            && now.record.version > record.version
        {
            for p in &without_data_of(record, &now.record).parts {
                inner.delete_data(&record.drives, &p.data_id).await;
            }
        }
        Ok(())
    }
}

impl Inner {
    /// Streams `body` into shards of `data_id` on `drives` (in shard order).
    pub(crate) async fn write_data(
        &self,
        drives: &[usize],
        data_id: &str,
        mut body: BodyStream,
        allow_inline: bool,
    ) -> Result<Written> {
        let block = self.block_size();
        let mut stripe = Vec::with_capacity(block);
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
        let width = self.codec.redundancy().width();
        if !first_full && allow_inline && stripe.len() as u64 <= INLINE_MAX {
            let md5: [u8; 16] = Md5::digest(&stripe).into();
            let frames = if stripe.is_empty() {
                vec![Vec::new(); width]
            } else {
                self.codec.encode(&stripe)
            };
            return Ok(Written {
                size: stripe.len() as u64,
                md5,
                inline: Some(frames),
                ok: vec![true; width],
            });
        }

        let need = self.codec.redundancy().write_quorum();
        // shards for drives of peers that are down are not attempted while enough others are
        // up (the record then names the drive without a record on it: the healer fills it)
        let mut targets: Vec<Option<DriveHandle>> = vec![None; drives.len()];
        let slots: Vec<(usize, usize)> = drives.iter().enumerate().map(|(i, d)| (*d, i)).collect();
        for (d, i) in self.reachable(slots, need) {
            targets[i] = Some(self.drives[d].clone());
        }
        let codec = self.codec.clone();
        let id = data_id.to_string();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(2);
        let writer = tokio::task::spawn_blocking(move || {
            let mut writers: Vec<Option<ShardSink>> = targets
                .iter()
                .map(|d| {
                    d.as_ref()?
                        .create_shard(&id, false)
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
    /// cut it off mid-stream. If the process stops first, the start-up orphan sweep removes
    /// what is left.
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
        let drives = inner.partition_drives(bucket, key);
        let marker = ObjectRecord {
            deleted: true,
            ..inner.new_record(inner.now(), inner.drive_ids(&drives))
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
        let acked = inner
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
        // the marker only needs to outlive drives that missed it; drop it once all have it
        if acked == drives.len() && older.is_empty() {
            self.drop_marker_everywhere(&okey, &marker).await;
        }
        Ok(())
    }
}
