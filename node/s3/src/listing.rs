//! ListObjects (v1 and v2), ListParts and ListMultipartUploads: delimiters, common
//! prefixes, markers and continuation tokens, and `encoding-type=url`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as TOKEN;
use ringstore_object::{ObjectRecord, ObjectStore};
use s3s::dto::*;
use s3s::{S3Result, s3_error};

use crate::convert::{s3_err, timestamp};

/// What one listing produced.
struct Listed {
    objects: Vec<(String, ObjectRecord)>,
    prefixes: Vec<String>,
    truncated: bool,
    /// The last key or common prefix returned.
    last: Option<String>,
    /// Where the next page starts (raw key bytes, exclusive).
    resume: Option<Vec<u8>>,
}

/// The cursor that skips every key under a common prefix.
fn past_prefix(cp: &str) -> Vec<u8> {
    let mut v = cp.as_bytes().to_vec();
    v.push(0xFF); // no UTF-8 key contains 0xFF, so this sorts after all keys under `cp`
    v
}

/// A marker that names a common prefix skips everything under it.
fn start_cursor(marker: &str, prefix: &str, delimiter: Option<&str>) -> Vec<u8> {
    if let Some(d) = delimiter
        && let Some(rest) = marker.strip_prefix(prefix)
        && let Some(pos) = rest.find(d)
        && pos + d.len() == rest.len()
    {
        return past_prefix(marker);
    }
    marker.as_bytes().to_vec()
}

async fn list(
    store: &ObjectStore,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    mut after: Option<Vec<u8>>,
    max_keys: usize,
) -> S3Result<Listed> {
    let delimiter = delimiter.filter(|d| !d.is_empty());
    let mut out = Listed {
        objects: vec![],
        prefixes: vec![],
        truncated: false,
        last: None,
        resume: None,
    };
    'pages: loop {
        let have = out.objects.len() + out.prefixes.len();
        let want = (max_keys.saturating_sub(have) + 1).min(1000);
        let page = store
            .list(bucket, prefix, after.as_deref(), want)
            .await
            .map_err(s3_err)?;
        for (key, rec) in page.entries {
            if out.objects.len() + out.prefixes.len() >= max_keys {
                out.truncated = true;
                break 'pages;
            }
            if let Some(d) = delimiter
                && let Some(pos) = key[prefix.len()..].find(d)
            {
                let cp = key[..prefix.len() + pos + d.len()].to_string();
                after = Some(past_prefix(&cp));
                out.resume = after.clone();
                out.last = Some(cp.clone());
                out.prefixes.push(cp);
                continue 'pages;
            }
            after = Some(key.as_bytes().to_vec());
            out.resume = after.clone();
            out.last = Some(key.clone());
            out.objects.push((key, rec));
        }
        if !page.truncated {
            break;
        }
    }
    Ok(out)
}

fn max_keys(v: Option<i32>) -> S3Result<usize> {
    match v {
        None => Ok(1000),
        Some(n) if n < 0 => Err(s3_error!(
            InvalidArgument,
            "max-keys must be a non-negative integer"
        )),
        Some(n) => Ok((n as usize).min(1000)),
    }
}

fn url_encoding(e: &Option<EncodingType>) -> S3Result<bool> {
    match e {
        None => Ok(false),
        Some(e) if e.as_str().eq_ignore_ascii_case("url") => Ok(true),
        Some(_) => Err(s3_error!(
            InvalidArgument,
            "Invalid Encoding Method specified in Request"
        )),
    }
}

/// Percent-encodes like S3 does for `encoding-type=url`.
fn enc(s: &str, url: bool) -> String {
    if !url {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn object(key: &str, rec: &ObjectRecord, url: bool, owner: bool) -> Object {
    Object {
        key: Some(enc(key, url)),
        size: Some(rec.size as i64),
        e_tag: Some(ETag::Strong(rec.etag.clone())),
        last_modified: Some(timestamp(rec.modified_nanos())),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        checksum_algorithm: rec
            .checksum
            .as_ref()
            .map(|c| vec![ChecksumAlgorithm::from(c.algorithm.clone())]),
        checksum_type: rec.checksum.as_ref().map(|c| ChecksumType::from(c.kind.clone())),
        owner: owner.then(|| Owner {
            display_name: Some("ringstore".into()),
            id: Some("ringstore".into()),
        }),
        ..Default::default()
    }
}

fn prefixes(list: &[String], url: bool) -> Option<Vec<CommonPrefix>> {
    Some(
        list.iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc(p, url)),
            })
            .collect(),
    )
}

pub async fn list_v1(store: &ObjectStore, input: ListObjectsInput) -> S3Result<ListObjectsOutput> {
    let url = url_encoding(&input.encoding_type)?;
    let max = max_keys(input.max_keys)?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let delimiter = input.delimiter.as_deref();
    let after = input
        .marker
        .as_deref()
        .filter(|m| !m.is_empty())
        .map(|m| start_cursor(m, &prefix, delimiter));
    let listed = list(store, &input.bucket, &prefix, delimiter, after, max).await?;
    Ok(ListObjectsOutput {
        name: Some(input.bucket),
        prefix: Some(enc(&prefix, url)),
        marker: Some(enc(input.marker.as_deref().unwrap_or(""), url)),
        max_keys: Some(max as i32),
        is_truncated: Some(listed.truncated),
        next_marker: (listed.truncated && delimiter.is_some())
            .then(|| enc(listed.last.as_deref().unwrap_or(""), url)),
        contents: Some(
            listed
                .objects
                .iter()
                .map(|(k, r)| object(k, r, url, true))
                .collect(),
        ),
        common_prefixes: prefixes(&listed.prefixes, url),
        delimiter: input.delimiter.map(|d| enc(&d, url)),
        encoding_type: input.encoding_type,
        ..Default::default()
    })
}

pub async fn list_v2(store: &ObjectStore, input: ListObjectsV2Input) -> S3Result<ListObjectsV2Output> {
    let url = url_encoding(&input.encoding_type)?;
    let max = max_keys(input.max_keys)?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let delimiter = input.delimiter.as_deref();
    let after = match (&input.continuation_token, &input.start_after) {
        (Some(t), _) => Some(
            TOKEN
                .decode(t)
                .map_err(|_| s3_error!(InvalidArgument, "The continuation token provided is incorrect"))?,
        ),
        (None, Some(s)) if !s.is_empty() => Some(start_cursor(s, &prefix, delimiter)),
        _ => None,
    };
    let listed = list(store, &input.bucket, &prefix, delimiter, after, max).await?;
    let owner = input.fetch_owner.unwrap_or(false);
    Ok(ListObjectsV2Output {
        name: Some(input.bucket),
        prefix: Some(enc(&prefix, url)),
        max_keys: Some(max as i32),
        key_count: Some((listed.objects.len() + listed.prefixes.len()) as i32),
        continuation_token: input.continuation_token,
        next_continuation_token: listed
            .truncated
            .then(|| TOKEN.encode(listed.resume.unwrap_or_default())),
        is_truncated: Some(listed.truncated),
        contents: Some(
            listed
                .objects
                .iter()
                .map(|(k, r)| object(k, r, url, owner))
                .collect(),
        ),
        common_prefixes: prefixes(&listed.prefixes, url),
        delimiter: input.delimiter.map(|d| enc(&d, url)),
        encoding_type: input.encoding_type,
        start_after: input.start_after.map(|s| enc(&s, url)),
        ..Default::default()
    })
}

pub async fn list_parts(store: &ObjectStore, input: ListPartsInput) -> S3Result<ListPartsOutput> {
    let max = match input.max_parts {
        None => 1000,
        Some(n) if n < 0 => {
            return Err(s3_error!(
                InvalidArgument,
                "max-parts must be a non-negative integer"
            ));
        }
        Some(n) => (n as usize).min(1000),
    };
    let marker = input.part_number_marker.unwrap_or(0).max(0) as u32;
    let all = store
        .list_parts(&input.bucket, &input.key, &input.upload_id)
        .await
        .map_err(s3_err)?;
    let mut rest = all.into_iter().filter(|p| p.number > marker);
    let page: Vec<_> = rest.by_ref().take(max).collect();
    let truncated = rest.next().is_some();
    Ok(ListPartsOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(input.upload_id),
        max_parts: Some(max as i32),
        part_number_marker: input.part_number_marker,
        next_part_number_marker: page.last().map(|p| p.number as i32),
        is_truncated: Some(truncated),
        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
        parts: Some(
            page.into_iter()
                .map(|p| {
                    let [crc32, crc32c, crc64nvme, sha1, sha256] =
                        crate::convert::checksum_fields(&p.checksum);
                    Part {
                        part_number: Some(p.number as i32),
                        size: Some(p.size as i64),
                        e_tag: Some(ETag::Strong(p.etag)),
                        last_modified: Some(timestamp(p.modified_nanos)),
                        checksum_crc32: crc32,
                        checksum_crc32c: crc32c,
                        checksum_crc64nvme: crc64nvme,
                        checksum_sha1: sha1,
                        checksum_sha256: sha256,
                    }
                })
                .collect(),
        ),
        ..Default::default()
    })
}

pub async fn list_uploads(
    store: &ObjectStore,
    input: ListMultipartUploadsInput,
) -> S3Result<ListMultipartUploadsOutput> {
    let url = url_encoding(&input.encoding_type)?;
    let max = match input.max_uploads {
        None => 1000,
        Some(n) if n < 0 => {
            return Err(s3_error!(
                InvalidArgument,
                "max-uploads must be a non-negative integer"
            ));
        }
        Some(n) => (n as usize).min(1000),
    };
    let prefix = input.prefix.clone().unwrap_or_default();
    let after = input
        .key_marker
        .as_deref()
        .filter(|k| !k.is_empty())
        .map(|k| (k, input.upload_id_marker.as_deref().unwrap_or("\u{10FFFF}")));
    let all = store
        .list_uploads(&input.bucket, &prefix, after, max + 1)
        .await
        .map_err(s3_err)?;
    let truncated = all.len() > max;
    let page = &all[..all.len().min(max)];
    Ok(ListMultipartUploadsOutput {
        bucket: Some(input.bucket),
        prefix: Some(enc(&prefix, url)),
        key_marker: input.key_marker.map(|k| enc(&k, url)),
        upload_id_marker: input.upload_id_marker,
        max_uploads: Some(max as i32),
        is_truncated: Some(truncated),
        next_key_marker: truncated.then(|| page.last().map(|u| enc(&u.key, url))).flatten(),
        next_upload_id_marker: truncated
            .then(|| page.last().map(|u| u.upload_id.clone()))
            .flatten(),
        encoding_type: input.encoding_type,
        uploads: Some(
            page.iter()
                .map(|u| MultipartUpload {
                    key: Some(enc(&u.key, url)),
                    upload_id: Some(u.upload_id.clone()),
                    initiated: Some(timestamp(u.initiated_nanos)),
                    storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    })
}
