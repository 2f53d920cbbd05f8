//! Listing: merge the sorted key streams of every drive, newest record per key wins.

use std::collections::BTreeMap;

use ringstore_store::Table;

use crate::read::newest_readable;
use crate::record::ObjectRecord;
use crate::{ObjectStore, Result, object_key};

/// One page of live objects in key order.
#[derive(Debug, Default)]
pub struct ListPage {
    pub entries: Vec<(String, ObjectRecord)>,
    /// Whether more keys may follow the last entry.
    pub truncated: bool,
}

impl ObjectStore {
    /// Lists up to `limit` live objects of `bucket` whose keys start with `prefix` and sort
    /// after `after` (raw key bytes, exclusive).
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage> {
        self.require_bucket(bucket).await?;
        let scan_prefix = object_key(bucket, prefix);
        let mut cursor: Option<Vec<u8>> = after.map(|a| {
            let mut c = object_key(bucket, "");
            c.extend_from_slice(a);
            c
        });
        let batch = (limit + 1).clamp(2, 1000);
        let mut entries = Vec::new();
        loop {
            let mut merged: BTreeMap<Vec<u8>, Vec<ObjectRecord>> = BTreeMap::new();
            // keys past the horizon may be missing from a drive that returned a full page
            let mut horizon: Option<Vec<u8>> = None;
            let inner = self.inner();
            let scans = inner
                .drives
                .iter()
                .map(|d| d.scan(Table::Objects, &scan_prefix, cursor.as_deref(), batch));
            let mut failed = Vec::new();
            for (d, scanned) in futures::future::join_all(scans).await.into_iter().enumerate() {
                let page = match scanned {
                    Ok(p) => p,
                    Err(e) => {
                        crate::drive_failure("listing failed on a drive", &e);
                        failed.push(d);
                        continue;
                    }
                };
                if page.len() == batch {
                    let last = page.last().expect("non-empty").0.clone();
                    if horizon.as_ref().is_none_or(|h| &last < h) {
                        horizon = Some(last);
                    }
                }
                for (k, v) in page {
                    let Ok(rec) = ObjectRecord::decode(&v) else {
                        continue;
                    };
                    merged.entry(k).or_default().push(rec);
                }
            }
            // drives that failed to answer may hold any version (see `newest_readable`)
            inner.need_listing_quorum(&failed)?;
            let bucket_len = bucket.len() + 1;
            for (k, records) in merged {
                if horizon.as_ref().is_some_and(|h| &k > h) {
                    break;
                }
                cursor = Some(k.clone());
                let key = String::from_utf8_lossy(&k[bucket_len..]).into_owned();
                let unknown = inner.failed_holders(bucket, &key, &failed);
                // a version that may have been acknowledged but cannot be decoded right now
                // (an overwrite in flight) is listed: the listing needs only its record
                let newest = match newest_readable(&records, unknown) {
                    Ok(Some(v)) | Err(v) => v,
                    Ok(None) => continue,
                };
                let rec = records
                    .into_iter()
                    .find(|r| r.version == newest)
                    .expect("a record of the version");
                if rec.deleted {
                    continue;
                }
                entries.push((key, rec));
                if entries.len() > limit {
                    entries.truncate(limit);
                    return Ok(ListPage {
                        entries,
                        truncated: true,
                    });
                }
            }
            if horizon.is_none() {
                return Ok(ListPage {
                    entries,
                    truncated: false,
                });
            }
        }
    }
}
