//! Multipart uploads: each part is its own erasure-coded data file; completing an upload
//! commits an object record that lists the chosen parts, so no data is copied.
//!
//! Across nodes, an upload ends exactly once. Its record is versioned: created open at the
//! upload id's version, it is finished (completed or aborted) by a compare-and-swap
//! ([`Op::PutIfVersion`] expecting the creation version) that only drives still holding
//! the open record (or none) take. A finisher goes on only once its kind of ending is on a
//! write quorum of the upload's drives, so a Complete and an Abort can never both go on: an
//! Abort removes data only after it won, and a Complete commits its object only after it
//! won. A Complete never removes data itself (parts not chosen, and parts replaced by a
//! later upload of their number, are left to the orphan sweep once no record names them),
//! so two Completes of one upload (a retry) cannot remove what the other chose. A finished
//! upload is never listed and takes no more parts; its record stays as a tombstone.

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use ringstore_store::{Op, Table, Version};
use serde::{Deserialize, Serialize};

use crate::record::{ObjectRecord, PartRef, StoredChecksum};
use crate::write::{BodyStream, NewObject, Verify};
use crate::{Error, MIN_PART_SIZE, ObjectStore, Result, object_key, rmp_decode, rmp_encode};

/// An upload in progress, stored on the drives of the object's partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UploadRecord {
    pub initiated_nanos: u64,
    pub headers: BTreeMap<String, String>,
    pub user_meta: BTreeMap<String, String>,
    pub checksum_algorithm: Option<String>,
    pub drives: Vec<String>,
    /// How the upload ended; `None` while it is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Finished>,
    /// For a completed upload: the object record its Complete commits, as stored (version
    /// first). A Complete that fails after its ending held leaves the object to a retry or
    /// to the healer, which commit exactly this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<serde_bytes::ByteBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Finished {
    Completed,
    Aborted,
}

/// An upload record as stored: its version (the creation version while open, a later one
/// once finished), then the record.
fn encode_upload(version: Version, rec: &UploadRecord) -> Vec<u8> {
    let mut v = version.to_bytes().to_vec();
    v.extend_from_slice(&rmp_encode(rec));
    v
}

/// The version and record of a stored upload record. Records written before uploads were
/// versioned hold the record alone: they are open, at the lowest version.
pub(crate) fn decode_upload(bytes: &[u8]) -> Option<(Version, UploadRecord)> {
    if let Some(v) = Version::from_bytes(bytes)
        && let Ok(rec) = rmp_decode::<UploadRecord>(&bytes[Version::LEN..])
    {
        return Some((v, rec));
    }
    rmp_decode::<UploadRecord>(bytes)
        .ok()
        .map(|r| (Version::default(), r))
}

/// Whether an upload's ending (at `version`) is over an hour old by this node's clock.
fn ended_long_ago(version: Version) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now.saturating_sub(version.ts_nanos) > 3600 * 1_000_000_000
}

/// What the drives of an upload hold of it.
struct UploadState {
    /// The creation version (what finishing compares against).
    created: Version,
    /// The newest record found.
    record: UploadRecord,
    /// Drives (indexes) holding each kind of ending.
    completed: usize,
    aborted: usize,
    /// The upload's drives in this layout.
    slots: Vec<usize>,
    /// The newest version found (an ending's, once the upload is finished).
    newest: Version,
    /// The object the completed endings found name, when they all name the same one.
    candidate: Option<ObjectRecord>,
}

impl UploadState {
    fn finished(&self) -> bool {
        self.completed + self.aborted > 0
    }
}

/// One uploaded part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PartRecord {
    pub size: u64,
    pub etag: String,
    pub data_id: String,
    pub modified_nanos: u64,
    pub checksum: Option<StoredChecksum>,
}

/// An upload as listed.
#[derive(Debug, Clone)]
pub struct UploadInfo {
    pub key: String,
    pub upload_id: String,
    pub initiated_nanos: u64,
    pub checksum_algorithm: Option<String>,
}

/// A part as listed.
#[derive(Debug, Clone)]
pub struct PartInfo {
    pub number: u32,
    pub size: u64,
    pub etag: String,
    pub modified_nanos: u64,
    pub checksum: Option<StoredChecksum>,
}

/// A part named in a CompleteMultipartUpload request.
#[derive(Debug, Clone)]
pub struct CompletedPart {
    pub number: u32,
    /// ETag as sent by the client; quotes are ignored.
    pub etag: String,
}

fn upload_key(bucket: &str, key: &str, upload_id: &str) -> Vec<u8> {
    let mut k = object_key(bucket, key);
    k.push(0);
    k.extend_from_slice(upload_id.as_bytes());
    k
}

fn part_key(upload_id: &str, number: u32) -> Vec<u8> {
    let mut k = upload_id.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&number.to_be_bytes());
    k
}

impl ObjectStore {
    pub async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        new: NewObject,
        checksum_algorithm: Option<String>,
    ) -> Result<String> {
        self.require_bucket(bucket).await?;
        let inner = &self.inner();
        let drives = inner.write_drives(bucket, key);
        let version = inner.now();
        let upload_id = version.hex();
        let rec = UploadRecord {
            initiated_nanos: version.ts_nanos,
            headers: new.headers,
            user_meta: new.user_meta,
            checksum_algorithm,
            drives: inner.drive_ids(&drives),
            finished: None,
            object: None,
        };
        let value = encode_upload(version, &rec);
        let ukey = upload_key(bucket, key, &upload_id);
        let writes = drives.iter().map(|d| {
            (
                *d,
                vec![Op::PutIfNewer {
                    table: Table::Uploads,
                    key: ukey.clone(),
                    value: value.clone(),
                }],
            )
        });
        inner
            .commit_quorum("upload", inner.codec.redundancy().write_quorum(), writes)
            .await?;
        Ok(upload_id)
    }

    /// What the drives of the upload hold, from at least a read quorum of them.
    async fn upload_state(&self, bucket: &str, key: &str, upload_id: &str) -> Result<UploadState> {
        self.require_bucket(bucket).await?;
        let inner = &self.inner();
        let ukey = upload_key(bucket, key, upload_id);
        let drives = inner.partition_drives(bucket, key);
        let reads = drives.iter().map(|d| inner.drives[*d].get(Table::Uploads, &ukey));
        let mut answered = 0;
        let mut newest: Option<(Version, UploadRecord)> = None;
        let (mut created, mut completed, mut aborted) = (None::<Version>, 0, 0);
        // the objects completed endings name: one each, `None` for an ending without one
        let mut objects: Vec<Option<ObjectRecord>> = Vec::new();
        for r in futures::future::join_all(reads).await {
            let Ok(found) = r else { continue };
            answered += 1;
            let Some((version, rec)) = found.as_deref().and_then(decode_upload) else {
                continue;
            };
            match rec.finished {
                None => created = Some(created.map_or(version, |c| c.min(version))),
                Some(Finished::Completed) => {
                    completed += 1;
                    objects.push(rec.object.as_deref().and_then(|b| ObjectRecord::decode(b).ok()));
                }
                Some(Finished::Aborted) => aborted += 1,
            }
            if newest.as_ref().is_none_or(|(v, _)| version > *v) {
                newest = Some((version, rec));
            }
        }
        let need = inner.codec.redundancy().read_quorum();
        if answered < need {
            return Err(Error::Quorum(format!(
                "{answered} drives of the upload answered, {need} needed"
            )));
        }
        let Some((newest, record)) = newest else {
            return Err(Error::NoSuchUpload);
        };
        // the creation version is the upload id's; records from before versioning have none
        let created = Version::from_hex(upload_id).or(created).unwrap_or_default();
        let slots = inner.present(&record.drives);
        let candidate = match objects.split_first() {
            Some((Some(first), rest))
                if rest
                    .iter()
                    .all(|o| o.as_ref().map(|o| o.version) == Some(first.version)) =>
            {
                Some(first.clone())
            }
            _ => None,
        };
        Ok(UploadState {
            created,
            record,
            completed,
            aborted,
            slots,
            newest,
            candidate,
        })
    }

    /// The upload, if it is open (as far as a read quorum of its drives knows).
    async fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<UploadRecord> {
        let state = self.upload_state(bucket, key, upload_id).await?;
        if state.finished() {
            return Err(Error::NoSuchUpload);
        }
        Ok(state.record)
    }

    /// Ends the upload as `how`, once: answers its state when `how` holds on a write quorum
    /// of its drives, and whether it was this call that ended it (rather than an earlier
    /// attempt); `NoSuchUpload` when the other ending holds, and a retryable error while
    /// neither does.
    async fn finish_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        how: Finished,
        object: Option<&ObjectRecord>,
    ) -> Result<(UploadState, bool)> {
        let mut state = self.upload_state(bucket, key, upload_id).await?;
        let inner = &self.inner();
        let need = inner.codec.redundancy().write_quorum();
        let count = |s: &UploadState, h: Finished| match h {
            Finished::Completed => s.completed,
            Finished::Aborted => s.aborted,
        };
        let other = match how {
            Finished::Completed => Finished::Aborted,
            Finished::Aborted => Finished::Completed,
        };
        if count(&state, how) >= need {
            return Ok((state, false));
        }
        if count(&state, other) >= need {
            return Err(Error::NoSuchUpload);
        }
        let mut rec = state.record.clone();
        rec.finished = Some(how);
        rec.object = object.map(|o| serde_bytes::ByteBuf::from(o.encode()));
        let value = encode_upload(inner.after(state.created), &rec);
        let ukey = upload_key(bucket, key, upload_id);
        let writes = state.slots.iter().map(|d| {
            inner.drives[*d].commit_replacing(vec![Op::PutIfVersion {
                table: Table::Uploads,
                key: ukey.clone(),
                value: value.clone(),
                expected: Some(state.created),
            }])
        });
        let mut took = 0;
        for r in futures::future::join_all(writes).await {
            match r {
                Ok(replaced) => {
                    let old = replaced.into_iter().next().flatten();
                    if old.as_deref().and_then(Version::from_bytes) <= Some(state.created) {
                        took += 1;
                    }
                }
                Err(e) => crate::drive_failure("upload record write failed on a drive", &e),
            }
        }
        // drives that held this ending before refused (their version is above the creation)
        let held = count(&state, how) + took;
        if held >= need {
            match how {
                Finished::Completed => state.completed = held,
                Finished::Aborted => state.aborted = held,
            }
            if how == Finished::Completed {
                state.candidate = object.cloned();
            }
            state.record = rec;
            return Ok((state, true));
        }
        // another attempt may have ended it meanwhile: judge again from what the drives hold
        let now = self.upload_state(bucket, key, upload_id).await?;
        if count(&now, how) >= need {
            return Ok((now, false));
        }
        if count(&now, other) >= need {
            return Err(Error::NoSuchUpload);
        }
        Err(Error::Quorum(format!(
            "the upload's ending reached {held} drives, {need} needed: retry"
        )))
    }

    /// Stores one part; a part uploaded again under the same number replaces the old one.
    pub async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: u32,
        body: BodyStream,
        verify: Verify,
    ) -> Result<PartInfo> {
        if !(1..=10_000).contains(&number) {
            return Err(Error::InvalidArgument(
                "part number must be an integer between 1 and 10000".into(),
            ));
        }
        let upload = self.upload(bucket, key, upload_id).await?;
        let inner = &self.inner();
        let slots: Vec<usize> = inner.present(&upload.drives);
        if slots.len() != upload.drives.len() {
            return Err(Error::Quorum(
                "a drive of this upload is no longer in the layout".into(),
            ));
        }
        let version = inner.now();
        let data_id = version.hex();
        let written = inner.write_data(&slots, &data_id, body, false).await?;
        let checksum = match verify(&written.md5, written.size) {
            Ok(c) => c,
            Err(e) => {
                inner.delete_data(&upload.drives, &data_id).await;
                return Err(e);
            }
        };
        let rec = PartRecord {
            size: written.size,
            etag: hex::encode(written.md5),
            data_id: data_id.clone(),
            modified_nanos: version.ts_nanos,
            checksum,
        };
        let pkey = part_key(upload_id, number);
        let mut value = version.to_bytes().to_vec();
        value.extend_from_slice(&rmp_encode(&rec));
        let _lock = inner.upload_lock(upload_id).await;
        // the upload may have been completed or aborted while the body streamed
        if let Err(e) = self.upload(bucket, key, upload_id).await {
            inner.delete_data(&upload.drives, &data_id).await;
            return Err(e);
        }
        // on its own, a node serves every request of the upload under the lock above, so the
        // part this one replaces can go at once (see below)
        let alone = inner.drives.iter().all(|d| d.local().is_some());
        let previous = match alone {
            true => self.part_of(&slots, upload_id, number).await,
            false => None,
        };
        let writes = slots
            .iter()
            .zip(&written.ok)
            .filter(|(_, ok)| **ok)
            .map(|(d, _)| {
                (
                    *d,
                    vec![Op::PutIfNewer {
                        table: Table::Parts,
                        key: pkey.clone(),
                        value: value.clone(),
                    }],
                )
            });
        // A part record that reached too few drives is left in place (a Complete may still
        // see it on one of them), and so is the data of a part this one replaces (a Complete
        // on another node may have chosen it just before): the orphan sweep removes data
        // once no record names it.
        inner
            .commit_quorum("part", inner.codec.redundancy().write_quorum(), writes)
            .await?;
        if let Some((old_version, old)) = previous
            && old_version < version
        {
            inner.delete_data(&upload.drives, &old.data_id).await;
        }
        Ok(PartInfo {
            number,
            size: rec.size,
            etag: rec.etag,
            modified_nanos: rec.modified_nanos,
            checksum: rec.checksum,
        })
    }

    /// The newest record of part `number` and its version.
    async fn part_of(&self, slots: &[usize], upload_id: &str, number: u32) -> Option<(Version, PartRecord)> {
        let pkey = part_key(upload_id, number);
        let inner = self.inner();
        let mut best: Option<(Version, PartRecord)> = None;
        for d in slots {
            if let Ok(Some(v)) = inner.drives[*d].get(Table::Parts, &pkey).await
                && let (Some(ver), Ok(rec)) = (
                    Version::from_bytes(&v),
                    rmp_decode::<PartRecord>(&v[Version::LEN..]),
                )
                && best.as_ref().is_none_or(|(b, _)| ver > *b)
            {
                best = Some((ver, rec));
            }
        }
        best
    }

    /// The newest record of every part of the upload, from at least a read quorum of its
    /// drives (so that every part acknowledged is seen).
    async fn all_parts(&self, slots: &[usize], upload_id: &str) -> Result<BTreeMap<u32, PartRecord>> {
        let mut prefix = upload_id.as_bytes().to_vec();
        prefix.push(0);
        let mut best: BTreeMap<u32, (Version, PartRecord)> = BTreeMap::new();
        let inner = self.inner();
        let mut answered = 0;
        for d in slots {
            let Ok(entries) = inner.drives[*d]
                .scan(Table::Parts, &prefix, None, usize::MAX)
                .await
            else {
                continue;
            };
            answered += 1;
            for (k, v) in entries {
                let Some(num) = k
                    .get(prefix.len()..)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                else {
                    continue;
                };
                let (Some(ver), Ok(rec)) = (
                    Version::from_bytes(&v),
                    rmp_decode::<PartRecord>(&v[Version::LEN..]),
                ) else {
                    continue;
                };
                if best.get(&num).is_none_or(|(b, _)| ver > *b) {
                    best.insert(num, (ver, rec));
                }
            }
        }
        let need = inner.codec.redundancy().read_quorum();
        if answered < need {
            return Err(Error::Quorum(format!(
                "{answered} drives of the upload listed its parts, {need} needed"
            )));
        }
        Ok(best.into_iter().map(|(n, (_, r))| (n, r)).collect())
    }

    pub async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        let upload = self.upload(bucket, key, upload_id).await?;
        let slots: Vec<usize> = self.inner().present(&upload.drives);
        Ok(self
            .all_parts(&slots, upload_id)
            .await?
            .into_iter()
            .map(|(number, r)| PartInfo {
                number,
                size: r.size,
                etag: r.etag,
                modified_nanos: r.modified_nanos,
                checksum: r.checksum,
            })
            .collect())
    }

    /// Completes an upload: validates the named parts and commits the object.
    /// `checksum` builds the object's additional checksum from the chosen parts.
    pub async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        chosen: &[CompletedPart],
        checksum: impl FnOnce(&[PartInfo]) -> Result<Option<StoredChecksum>>,
    ) -> Result<ObjectRecord> {
        let inner = &self.inner();
        let _lock = inner.upload_lock(upload_id).await;
        if chosen.is_empty() {
            return Err(Error::InvalidArgument(
                "you must specify at least one part".into(),
            ));
        }
        let state = self.upload_state(bucket, key, upload_id).await?;
        let need = inner.codec.redundancy().write_quorum();
        if state.aborted >= need {
            return Err(Error::NoSuchUpload);
        }
        // completed by an earlier attempt: that attempt commits the object, never this one
        // (a version drawn now would land above writes made since)
        if state.completed >= need {
            return self.completed_before(bucket, key, chosen, &state).await;
        }
        let (upload, slots) = (state.record, state.slots);
        let stored = self.all_parts(&slots, upload_id).await?;
        let mut parts = Vec::with_capacity(chosen.len());
        let mut infos = Vec::with_capacity(chosen.len());
        let mut md5s = Md5::new();
        let mut size = 0u64;
        let mut last = 0u32;
        for (i, c) in chosen.iter().enumerate() {
            if c.number <= last {
                return Err(Error::InvalidPartOrder);
            }
            last = c.number;
            let want = c.etag.trim_matches('"');
            let Some(p) = stored.get(&c.number).filter(|p| p.etag == want) else {
                return Err(Error::InvalidPart(format!(
                    "part {} was not uploaded or its ETag does not match",
                    c.number
                )));
            };
            if i + 1 < chosen.len() && p.size < MIN_PART_SIZE {
                return Err(Error::EntityTooSmall {
                    part: c.number,
                    size: p.size,
                });
            }
            md5s.update(hex::decode(&p.etag).map_err(|e| Error::Internal(e.to_string()))?);
            size += p.size;
            infos.push(PartInfo {
                number: c.number,
                size: p.size,
                etag: p.etag.clone(),
                modified_nanos: p.modified_nanos,
                checksum: p.checksum.clone(),
            });
            parts.push(PartRef {
                number: c.number,
                size: p.size,
                etag: p.etag.clone(),
                data_id: p.data_id.clone(),
                checksum: p.checksum.clone(),
            });
        }
        let object_checksum = checksum(&infos)?;
        // drawn above a version written where an older layout in use places the key (see
        // `put_object`)
        if !inner.older_partition_drives(bucket, key).is_empty() {
            self.lookup(bucket, key).await?;
        }
        let version = inner.now();
        let record = ObjectRecord {
            size,
            etag: format!("{}-{}", hex::encode(md5s.finalize()), parts.len()),
            headers: upload.headers.clone(),
            user_meta: upload.user_meta.clone(),
            checksum: object_checksum,
            parts,
            ..inner.new_record(version, upload.drives.clone())
        };
        // the upload ends here, once, as completed (naming this object): an Abort can no
        // longer remove its parts
        let (state, now) = self
            .finish_upload(bucket, key, upload_id, Finished::Completed, Some(&record))
            .await?;
        if !now {
            return self.completed_before(bucket, key, chosen, &state).await;
        }
        let ok = vec![true; upload.drives.len()];
        let record = self.commit_version(bucket, key, &record, None, &ok, true).await?;
        // In a cluster, parts not chosen keep their data until the orphan sweep (see the
        // module comment); on its own, a node serves every request of the upload under its
        // lock, so they can go now.
        if inner.drives.iter().all(|d| d.local().is_some()) {
            for p in stored
                .values()
                .filter(|p| !record.parts.iter().any(|r| r.data_id == p.data_id))
            {
                inner.delete_data(&upload.drives, &p.data_id).await;
            }
        }
        self.forget_parts(upload_id, &slots, stored.keys().copied()).await;
        Ok(record)
    }

    /// Brings the drives of an upload in line: a decided ending (on a write quorum) goes to
    /// the drives that still hold the upload open, and the part records go everywhere (an
    /// aborted upload's data too); an open upload's record and part records are copied to
    /// its drives that lack them. An ending on fewer drives is left to the client's retry.
    pub(crate) async fn heal_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        let state = self.upload_state(bucket, key, upload_id).await?;
        let inner = &self.inner();
        let need = inner.codec.redundancy().write_quorum();
        let ukey = upload_key(bucket, key, upload_id);
        let decided = if state.completed >= need {
            Some(Finished::Completed)
        } else if state.aborted >= need {
            Some(Finished::Aborted)
        } else {
            None
        };
        let parts = self.all_parts(&state.slots, upload_id).await?;
        let put = |op: Op| {
            let commits = state
                .slots
                .iter()
                .map(|d| inner.drives[*d].commit(vec![op.clone()]));
            futures::future::join_all(commits)
        };
        match decided {
            Some(how) => {
                let mut rec = state.record.clone();
                rec.finished = Some(how);
                // drives that hold an ending already refuse
                put(Op::PutIfVersion {
                    table: Table::Uploads,
                    key: ukey,
                    value: encode_upload(inner.after(state.created), &rec),
                    expected: Some(state.created),
                })
                .await;
                if how == Finished::Aborted {
                    for p in parts.values() {
                        inner.delete_data(&state.record.drives, &p.data_id).await;
                    }
                } else if !ended_long_ago(state.newest) {
                    // a Complete that failed after the ending held: its object is committed
                    if let Some(c) = &state.candidate {
                        let found = self.lookup(bucket, key).await?;
                        self.roll_forward(bucket, key, c, state.newest, found.as_ref())
                            .await?;
                    }
                    // the Complete that ended it may still be about to commit its object:
                    // until then only these part records keep the parts from the sweep
                    return Ok(());
                }
                self.forget_parts(upload_id, &state.slots, parts.keys().copied())
                    .await;
            }
            None if !state.finished() => {
                put(Op::PutIfNewer {
                    table: Table::Uploads,
                    key: ukey,
                    value: encode_upload(state.created, &state.record),
                })
                .await;
                for (n, p) in &parts {
                    let Some(version) = Version::from_hex(&p.data_id) else {
                        continue;
                    };
                    let mut value = version.to_bytes().to_vec();
                    value.extend_from_slice(&rmp_encode(p));
                    put(Op::PutIfNewer {
                        table: Table::Parts,
                        key: part_key(upload_id, *n),
                        value,
                    })
                    .await;
                }
            }
            None => {}
        }
        Ok(())
    }

    /// The answer to a Complete of an upload that an earlier attempt completed: the object
    /// it committed while that is still the key's current version with the ETag `chosen`
    /// gives (a client retrying a Complete that was answered); the object the ending names,
    /// committed now at its own version, when that attempt failed before committing it
    /// ([`ObjectStore::roll_forward`]); else `NoSuchUpload`.
    async fn completed_before(
        &self,
        bucket: &str,
        key: &str,
        chosen: &[CompletedPart],
        state: &UploadState,
    ) -> Result<ObjectRecord> {
        let mut md5s = Md5::new();
        for c in chosen {
            let md5 = hex::decode(c.etag.trim_matches('"')).map_err(|_| Error::NoSuchUpload)?;
            md5s.update(md5);
        }
        let etag = format!("{}-{}", hex::encode(md5s.finalize()), chosen.len());
        let found = self.lookup(bucket, key).await?;
        match &found {
            Some(f) if !f.record.deleted && f.record.etag == etag => return Ok(f.record.clone()),
            _ => {}
        }
        match &state.candidate {
            Some(c) if c.etag == etag => self
                .roll_forward(bucket, key, c, state.newest, found.as_ref())
                .await?
                .ok_or(Error::NoSuchUpload),
            _ => Err(Error::NoSuchUpload),
        }
    }

    /// Commits the object `c` that a completed upload's ending (at `ended`) names, when the
    /// Complete that ended it failed before its object was committed: the key's newest
    /// version (`found`) is below `c`'s, and the ending is recent. At `c`'s own version, never
    /// raised, so it orders as the failed Complete would have and never above writes made
    /// since; committing it twice (a retry and the healer) is the same write. An hour after
    /// the ending its part records go, and deletion markers of the key (kept a day) may
    /// have gone by then: an older ending is left alone, so that a deleted object never
    /// comes back. Answers the committed record, or `None` when there is nothing to do.
    pub(crate) async fn roll_forward(
        &self,
        bucket: &str,
        key: &str,
        c: &ObjectRecord,
        ended: Version,
        found: Option<&crate::Found>,
    ) -> Result<Option<ObjectRecord>> {
        if found.is_some_and(|f| f.record.version >= c.version) || ended_long_ago(ended) {
            return Ok(None);
        }
        let ok = vec![true; c.drives.len()];
        let record = self.commit_version(bucket, key, c, None, &ok, false).await?;
        tracing::info!(
            bucket,
            key,
            "committed the object of a Complete that failed after its upload ended"
        );
        Ok(Some(record))
    }

    pub async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        let _lock = self.shared.upload_lock(upload_id).await;
        // the upload ends here, once, as aborted: no Complete can use its parts any more
        let (state, now) = self
            .finish_upload(bucket, key, upload_id, Finished::Aborted, None)
            .await?;
        let parts = self.all_parts(&state.slots, upload_id).await?;
        for p in parts.values() {
            self.inner().delete_data(&state.record.drives, &p.data_id).await;
        }
        self.forget_parts(upload_id, &state.slots, parts.keys().copied())
            .await;
        // an Abort of an upload aborted before (its leftovers just removed) answers as S3 does
        if !now {
            return Err(Error::NoSuchUpload);
        }
        Ok(())
    }

    /// Removes the part records of a finished upload (its record stays, as a tombstone).
    async fn forget_parts(&self, upload_id: &str, slots: &[usize], parts: impl Iterator<Item = u32>) {
        let ops: Vec<Op> = parts
            .map(|n| Op::Delete {
                table: Table::Parts,
                key: part_key(upload_id, n),
            })
            .collect();
        if ops.is_empty() {
            return;
        }
        let inner = self.inner();
        let commits = slots.iter().map(|d| inner.drives[*d].commit(ops.clone()));
        for r in futures::future::join_all(commits).await {
            if let Err(e) = r {
                crate::drive_failure("could not remove a finished upload's part records", &e);
            }
        }
    }

    /// Uploads in progress in `bucket` with keys starting with `prefix`, ordered by key then
    /// upload id, after the `(key, upload id)` marker when given.
    pub async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<UploadInfo>> {
        self.require_bucket(bucket).await?;
        let scan_prefix = object_key(bucket, prefix);
        // newest record per upload: a drive that missed the ending still holds it open
        let mut all: BTreeMap<Vec<u8>, (Version, UploadRecord)> = BTreeMap::new();
        let inner = self.inner();
        let scans = inner
            .drives
            .iter()
            .map(|d| d.scan(Table::Uploads, &scan_prefix, None, usize::MAX));
        let mut failed = Vec::new();
        for (d, scanned) in futures::future::join_all(scans).await.into_iter().enumerate() {
            let Ok(entries) = scanned else {
                failed.push(d);
                continue;
            };
            for (k, v) in entries {
                if let Some((version, rec)) = decode_upload(&v)
                    && all.get(&k).is_none_or(|(seen, _)| version > *seen)
                {
                    all.insert(k, (version, rec));
                }
            }
        }
        // an upload's ending is on a write quorum: a read quorum of every partition answering
        // sees it
        inner.need_listing_quorum(&failed)?;
        let mut out = Vec::new();
        for (k, (_, rec)) in all {
            if rec.finished.is_some() {
                continue;
            }
            let rest = &k[bucket.len() + 1..];
            let Some(sep) = rest.iter().rposition(|b| *b == 0) else {
                continue;
            };
            let key = String::from_utf8_lossy(&rest[..sep]).into_owned();
            let upload_id = String::from_utf8_lossy(&rest[sep + 1..]).into_owned();
            if let Some((mk, mu)) = after
                && (key.as_str(), upload_id.as_str()) <= (mk, mu)
            {
                continue;
            }
            out.push(UploadInfo {
                key,
                upload_id,
                initiated_nanos: rec.initiated_nanos,
                checksum_algorithm: rec.checksum_algorithm,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
