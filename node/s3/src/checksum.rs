//! Integrity checks of request bodies: Content-MD5, x-amz-content-sha256 and the
//! additional checksums (CRC32, CRC32C, CRC64NVME, SHA1, SHA256), sent as headers or as
//! aws-chunked trailers; plus the checksums of multipart objects built from their parts.

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt;
use http::HeaderMap;
use ringstore_object::{BodyStream, PartInfo, StoredChecksum, Verify};
use s3s::crypto::{Checksum, Crc32, Crc32c, Crc64Nvme, Sha1, Sha256};
use s3s::dto::StreamingBlob;
use s3s::{S3Error, S3ErrorCode, TrailingHeaders, s3_error};

pub const ALGORITHMS: [&str; 5] = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"];

enum Hasher {
    Crc32(Crc32),
    Crc32c(Crc32c),
    Crc64(Crc64Nvme),
    Sha1(Sha1),
    Sha256(Sha256),
}

impl Hasher {
    fn new(algorithm: &str) -> Option<Self> {
        Some(match algorithm {
            "CRC32" => Hasher::Crc32(Crc32::new()),
            "CRC32C" => Hasher::Crc32c(Crc32c::new()),
            "CRC64NVME" => Hasher::Crc64(Crc64Nvme::new()),
            "SHA1" => Hasher::Sha1(Sha1::new()),
            "SHA256" => Hasher::Sha256(Sha256::new()),
            _ => return None,
        })
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc32(h) => h.update(data),
            Hasher::Crc32c(h) => h.update(data),
            Hasher::Crc64(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    fn finalize(self) -> Vec<u8> {
        match self {
            Hasher::Crc32(h) => h.finalize().as_ref().to_vec(),
            Hasher::Crc32c(h) => h.finalize().as_ref().to_vec(),
            Hasher::Crc64(h) => h.finalize().as_ref().to_vec(),
            Hasher::Sha1(h) => h.finalize().as_ref().to_vec(),
            Hasher::Sha256(h) => h.finalize().as_ref().to_vec(),
        }
    }
}

/// The checksums a request asks us to verify and store.
#[derive(Default)]
pub struct Expectation {
    /// The additional checksum algorithm and its expected base64 value (None when it comes
    /// in a trailer).
    pub checksum: Option<(String, Option<String>)>,
    /// Expected MD5 from `Content-MD5`.
    pub content_md5: Option<[u8; 16]>,
    /// Expected SHA-256 from `x-amz-content-sha256` when the payload is signed whole.
    pub content_sha256: Option<String>,
}

/// The value of header `x-amz-checksum-<algo>` given the typed inputs of a request.
pub struct Given<'a> {
    pub crc32: &'a Option<String>,
    pub crc32c: &'a Option<String>,
    pub crc64nvme: &'a Option<String>,
    pub sha1: &'a Option<String>,
    pub sha256: &'a Option<String>,
    pub algorithm: Option<&'a str>,
    pub content_md5: &'a Option<String>,
}

impl Expectation {
    pub fn from_request(given: Given<'_>, headers: &HeaderMap) -> Result<Self, S3Error> {
        let mut e = Expectation::default();
        let values = [
            given.crc32,
            given.crc32c,
            given.crc64nvme,
            given.sha1,
            given.sha256,
        ];
        let sent: Vec<(&str, &String)> = ALGORITHMS
            .iter()
            .zip(values)
            .filter_map(|(a, v)| v.as_ref().map(|v| (*a, v)))
            .collect();
        if sent.len() > 1 {
            return Err(s3_error!(
                InvalidRequest,
                "Expecting a single x-amz-checksum- header"
            ));
        }
        if let Some((algo, value)) = sent.first() {
            e.checksum = Some((algo.to_string(), Some(value.to_string())));
        } else if let Some(trailer) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
            let algo = trailer
                .trim()
                .strip_prefix("x-amz-checksum-")
                .map(str::to_ascii_uppercase)
                .filter(|a| ALGORITHMS.contains(&a.as_str()))
                .ok_or_else(|| {
                    s3_error!(
                        InvalidRequest,
                        "The value specified in the x-amz-trailer header is not supported"
                    )
                })?;
            e.checksum = Some((algo, None));
        } else if let Some(algo) = given.algorithm {
            let algo = algo.to_ascii_uppercase();
            if !ALGORITHMS.contains(&algo.as_str()) {
                return Err(s3_error!(
                    InvalidRequest,
                    "Checksum algorithm {algo} is not supported"
                ));
            }
            // the algorithm was named but no value sent: we compute and store it
            e.checksum = Some((algo, None));
        }
        if let Some(md5) = given.content_md5 {
            let bytes = B64
                .decode(md5.trim())
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .ok_or_else(|| s3_error!(InvalidDigest, "The Content-MD5 you specified was invalid"))?;
            e.content_md5 = Some(bytes);
        }
        if let Some(sha) = headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok())
            && sha.len() == 64
            && sha.bytes().all(|b| b.is_ascii_hexdigit())
        {
            e.content_sha256 = Some(sha.to_ascii_lowercase());
        }
        Ok(e)
    }

    /// Wraps a body so the checksums are computed as it streams, and returns the closure
    /// that verifies them once it has been read. A verification failure is left in `failure`
    /// with its exact S3 error.
    pub fn attach(
        self,
        body: Option<StreamingBlob>,
        trailers: Option<TrailingHeaders>,
        failure: Arc<Mutex<Option<S3Error>>>,
    ) -> (BodyStream, Verify) {
        let checksum_hasher = self.checksum.as_ref().and_then(|(a, _)| Hasher::new(a));
        let sha_hasher = self.content_sha256.as_ref().map(|_| Sha256::new());
        let state = Arc::new(Mutex::new((checksum_hasher, sha_hasher)));
        let stream_state = state.clone();
        let body: BodyStream = match body {
            Some(blob) => Box::pin(blob.map(move |chunk| {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let mut s = stream_state.lock().expect("not poisoned");
                if let Some(h) = s.0.as_mut() {
                    h.update(&chunk);
                }
                if let Some(h) = s.1.as_mut() {
                    h.update(&chunk);
                }
                Ok(chunk)
            })),
            None => Box::pin(futures::stream::empty()),
        };
        let verify: Verify = Box::new(move |md5, _size| {
            let fail = |err: S3Error| {
                *failure.lock().expect("not poisoned") = Some(err);
                Err(ringstore_object::Error::BadDigest("checksum mismatch".into()))
            };
            let (checksum_hasher, sha_hasher) = std::mem::take(&mut *state.lock().expect("not poisoned"));
            if let Some(want) = self.content_md5
                && &want != md5
            {
                return fail(s3_error!(
                    BadDigest,
                    "The Content-MD5 you specified did not match what we received"
                ));
            }
            if let (Some(want), Some(h)) = (&self.content_sha256, sha_hasher)
                && hex::encode(h.finalize().as_ref()) != *want
            {
                return fail(S3Error::with_message(
                    S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
                    "The provided 'x-amz-content-sha256' header does not match what was computed",
                ));
            }
            let Some((algorithm, expected)) = self.checksum else {
                return Ok(None);
            };
            let computed = B64.encode(checksum_hasher.expect("hasher for a known algorithm").finalize());
            let header = format!("x-amz-checksum-{}", algorithm.to_ascii_lowercase());
            let expected = expected.or_else(|| {
                trailers.as_ref().and_then(|t| {
                    t.read(|h| h.get(&header).and_then(|v| v.to_str().ok()).map(str::to_string))
                        .flatten()
                })
            });
            if let Some(expected) = expected
                && expected.trim() != computed
            {
                return fail(s3_error!(
                    BadDigest,
                    "The {algorithm} you specified did not match the calculated checksum"
                ));
            }
            Ok(Some(StoredChecksum {
                algorithm,
                value: computed,
                kind: "FULL_OBJECT".into(),
            }))
        });
        (body, verify)
    }
}

/// The checksum of a multipart object from its parts' checksums: `FULL_OBJECT` combines
/// CRCs over the whole object; `COMPOSITE` hashes the concatenated part checksums.
pub fn multipart_checksum(
    parts: &[PartInfo],
    algorithm: Option<&str>,
    kind: Option<&str>,
) -> Option<StoredChecksum> {
    let first = parts.first()?.checksum.as_ref()?;
    let algorithm = algorithm
        .map(str::to_ascii_uppercase)
        .unwrap_or_else(|| first.algorithm.clone());
    if parts
        .iter()
        .any(|p| p.checksum.as_ref().is_none_or(|c| c.algorithm != algorithm))
    {
        return None;
    }
    let decoded: Vec<Vec<u8>> = parts
        .iter()
        .map(|p| {
            B64.decode(&p.checksum.as_ref().expect("checked").value)
                .unwrap_or_default()
        })
        .collect();
    let kind = kind.map(str::to_ascii_uppercase).unwrap_or_else(|| {
        if algorithm == "CRC64NVME" {
            "FULL_OBJECT".into()
        } else {
            "COMPOSITE".into()
        }
    });
    if kind == "FULL_OBJECT" {
        let crc = match algorithm.as_str() {
            "CRC32" => crc_fast::CrcAlgorithm::Crc32IsoHdlc,
            "CRC32C" => crc_fast::CrcAlgorithm::Crc32Iscsi,
            "CRC64NVME" => crc_fast::CrcAlgorithm::Crc64Nvme,
            _ => return None,
        };
        let mut acc: Option<u64> = None;
        for (bytes, p) in decoded.iter().zip(parts) {
            let mut v = 0u64;
            for b in bytes {
                v = (v << 8) | *b as u64;
            }
            acc = Some(match acc {
                None => v,
                Some(a) => crc_fast::checksum_combine(crc, a, v, p.size),
            });
        }
        let width = decoded[0].len();
        let value = acc?.to_be_bytes()[8 - width..].to_vec();
        return Some(StoredChecksum {
            algorithm,
            value: B64.encode(value),
            kind,
        });
    }
    let mut h = Hasher::new(&algorithm)?;
    for d in &decoded {
        h.update(d);
    }
    Some(StoredChecksum {
        algorithm,
        value: format!("{}-{}", B64.encode(h.finalize()), parts.len()),
        kind: "COMPOSITE".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(data: &[u8], algo: &str) -> PartInfo {
        let mut h = Hasher::new(algo).unwrap();
        h.update(data);
        PartInfo {
            number: 1,
            size: data.len() as u64,
            etag: String::new(),
            modified_nanos: 0,
            checksum: Some(StoredChecksum {
                algorithm: algo.into(),
                value: B64.encode(h.finalize()),
                kind: "FULL_OBJECT".into(),
            }),
        }
    }

    #[test]
    fn full_object_crc_of_parts_equals_crc_of_whole() {
        for algo in ["CRC32", "CRC32C", "CRC64NVME"] {
            let (a, b) = (vec![7u8; 1000], vec![9u8; 333]);
            let whole = [a.clone(), b.clone()].concat();
            let mut h = Hasher::new(algo).unwrap();
            h.update(&whole);
            let want = B64.encode(h.finalize());
            let got =
                multipart_checksum(&[part(&a, algo), part(&b, algo)], None, Some("FULL_OBJECT")).unwrap();
            assert_eq!(got.value, want, "{algo}");
        }
    }

    #[test]
    fn composite_checksum_has_part_count() {
        let got = multipart_checksum(&[part(b"abc", "SHA256"), part(b"def", "SHA256")], None, None).unwrap();
        assert!(got.value.ends_with("-2"));
        assert_eq!(got.kind, "COMPOSITE");
    }
}
