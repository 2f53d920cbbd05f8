//! Multipart uploads: each part is its own erasure-coded data file; completing an upload
//! commits an object record that lists the chosen parts, so no data is copied.

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
        let drives = inner.partition_drives(bucket, key);
        let version = inner.now();
        let upload_id = version.hex();
        let rec = UploadRecord {
            initiated_nanos: version.ts_nanos,
            headers: new.headers,
            user_meta: new.user_meta,
            checksum_algorithm,
            drives: inner.drive_ids(&drives),
        };
        let value = rmp_encode(&rec);
        let ukey = upload_key(bucket, key, &upload_id);
        let writes = drives.iter().map(|d| {
            (
                *d,
                vec![Op::Put {
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

    async fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<UploadRecord> {
        self.require_bucket(bucket).await?;
        let inner = &self.inner();
        let ukey = upload_key(bucket, key, upload_id);
        for d in inner.partition_drives(bucket, key) {
            if let Ok(Some(v)) = inner.drives[d].get(Table::Uploads, &ukey).await {
                return rmp_decode(&v);
            }
        }
        Err(Error::NoSuchUpload)
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
        let previous = self.read_part(&slots, upload_id, number).await;
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
        if let Err(e) = inner
            .commit_quorum("part", inner.codec.redundancy().write_quorum(), writes)
            .await
        {
            inner.delete_data(&upload.drives, &data_id).await;
            return Err(e);
        }
        // A concurrent upload of the same number may have committed a newer version: then
        // it is the part and ours is garbage, and its data must not be removed as "previous".
        if let Some((old_version, old)) = previous
            && old_version < version
        {
            inner.delete_data(&upload.drives, &old.data_id).await;
        }
        if let Some((now, _)) = self.read_part(&slots, upload_id, number).await
            && now > version
        {
            inner.delete_data(&upload.drives, &data_id).await;
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
    async fn read_part(
        &self,
        slots: &[usize],
        upload_id: &str,
        number: u32,
    ) -> Option<(Version, PartRecord)> {
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

    async fn all_parts(&self, slots: &[usize], upload_id: &str) -> BTreeMap<u32, PartRecord> {
        let mut prefix = upload_id.as_bytes().to_vec();
        prefix.push(0);
        let mut best: BTreeMap<u32, (Version, PartRecord)> = BTreeMap::new();
        let inner = self.inner();
        for d in slots {
            let Ok(entries) = inner.drives[*d]
                .scan(Table::Parts, &prefix, None, usize::MAX)
                .await
            else {
                continue;
            };
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
        best.into_iter().map(|(n, (_, r))| (n, r)).collect()
    }

    pub async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        let upload = self.upload(bucket, key, upload_id).await?;
        let slots: Vec<usize> = self.inner().present(&upload.drives);
        Ok(self
            .all_parts(&slots, upload_id)
            .await
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
        let upload = self.upload(bucket, key, upload_id).await?;
        let slots: Vec<usize> = inner.present(&upload.drives);
        if chosen.is_empty() {
            return Err(Error::InvalidArgument(
                "you must specify at least one part".into(),
            ));
        }
        let mut stored = self.all_parts(&slots, upload_id).await;
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
        let ok = vec![true; upload.drives.len()];
        // parts not chosen are removed with the upload
        for p in &record.parts {
            stored.remove(&p.number);
        }
        let record = self.commit_version(bucket, key, &record, None, &ok).await?;
        for p in stored.values() {
            inner.delete_data(&upload.drives, &p.data_id).await;
        }
        self.forget_upload(bucket, key, upload_id, &slots).await;
        Ok(record)
    }

    pub async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        let _lock = self.shared.upload_lock(upload_id).await;
        let upload = self.upload(bucket, key, upload_id).await?;
        let slots: Vec<usize> = self.inner().present(&upload.drives);
        for p in self.all_parts(&slots, upload_id).await.values() {
            self.inner().delete_data(&upload.drives, &p.data_id).await;
        }
        self.forget_upload(bucket, key, upload_id, &slots).await;
        Ok(())
    }

    async fn forget_upload(&self, bucket: &str, key: &str, upload_id: &str, slots: &[usize]) {
        let parts: Vec<u32> = self.all_parts(slots, upload_id).await.into_keys().collect();
        let ukey = upload_key(bucket, key, upload_id);
        let inner = self.inner();
        let ops = slots.iter().map(|d| {
            let mut ops = vec![Op::Delete {
                table: Table::Uploads,
                key: ukey.clone(),
            }];
            ops.extend(parts.iter().map(|n| Op::Delete {
                table: Table::Parts,
                key: part_key(upload_id, *n),
            }));
            inner.drives[*d].commit(ops)
        });
        for r in futures::future::join_all(ops).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not remove a finished upload's records");
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
        let mut all: BTreeMap<Vec<u8>, UploadRecord> = BTreeMap::new();
        let inner = self.inner();
        let scans = inner
            .drives
            .iter()
            .map(|d| d.scan(Table::Uploads, &scan_prefix, None, usize::MAX));
        for scanned in futures::future::join_all(scans).await {
            let Ok(entries) = scanned else {
                continue;
            };
            for (k, v) in entries {
                if let Ok(rec) = rmp_decode::<UploadRecord>(&v) {
                    all.insert(k, rec);
                }
            }
        }
        let mut out = Vec::new();
        for (k, rec) in all {
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
