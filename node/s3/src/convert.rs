//! Conversions between the object service and S3: errors, headers, times, conditions.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use ringstore_object::{Error, NewObject, ObjectRecord, StoredChecksum};
use s3s::dto::{ETag, ETagCondition, Metadata, Timestamp};
use s3s::{S3Error, S3ErrorCode, s3_error};

/// Maps an object-service error to the S3 error a client expects.
pub fn s3_err(e: Error) -> S3Error {
    match e {
        Error::NoSuchBucket => s3_error!(NoSuchBucket, "The specified bucket does not exist"),
        Error::NoSuchKey => s3_error!(NoSuchKey, "The specified key does not exist."),
        Error::BucketExists => s3_error!(
            BucketAlreadyOwnedByYou,
            "Your previous request to create the named bucket succeeded and you already own it."
        ),
        Error::BucketNotEmpty => s3_error!(BucketNotEmpty, "The bucket you tried to delete is not empty"),
        Error::NoSuchUpload => s3_error!(
            NoSuchUpload,
            "The specified multipart upload does not exist. The upload ID might be invalid, or the upload might have been aborted or completed."
        ),
        Error::InvalidPart(m) => S3Error::with_message(S3ErrorCode::InvalidPart, m),
        Error::InvalidPartOrder => {
            s3_error!(InvalidPartOrder, "The list of parts was not in ascending order.")
        }
        e @ Error::EntityTooSmall { .. } => S3Error::with_message(S3ErrorCode::EntityTooSmall, e.to_string()),
        Error::BadDigest(m) => S3Error::with_message(S3ErrorCode::BadDigest, m),
        Error::InvalidArgument(m) => S3Error::with_message(S3ErrorCode::InvalidArgument, m),
        Error::PreconditionFailed => {
            s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            )
        }
        Error::Body(m) => S3Error::with_message(S3ErrorCode::IncompleteBody, m),
        // (only the mover meets an open upload that waits: never an S3 request)
        Error::Quorum(m) | Error::UploadOpen(m) => S3Error::with_message(S3ErrorCode::ServiceUnavailable, m),
        e @ (Error::Storage(_) | Error::Decode(_) | Error::Internal(_)) => {
            tracing::error!(error = %e, "internal error");
            S3Error::with_message(
                S3ErrorCode::InternalError,
                "We encountered an internal error. Please try again.",
            )
        }
    }
}

pub fn timestamp(nanos: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// Whole seconds, as HTTP dates compare.
fn seconds(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

pub fn etag(rec: &ObjectRecord) -> ETag {
    ETag::Strong(rec.etag.clone())
}

/// The standard and user metadata of a new object.
pub struct Headers<'a> {
    pub content_type: &'a Option<String>,
    pub content_encoding: &'a Option<String>,
    pub content_disposition: &'a Option<String>,
    pub content_language: &'a Option<String>,
    pub cache_control: &'a Option<String>,
    pub expires: &'a Option<Timestamp>,
    pub metadata: &'a Option<Metadata>,
}

impl Headers<'_> {
    pub fn into_new_object(self) -> Result<NewObject, S3Error> {
        let mut headers = BTreeMap::new();
        let mut put = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                headers.insert(name.to_string(), v.clone());
            }
        };
        put("content-type", self.content_type);
        put("content-encoding", self.content_encoding);
        put("content-disposition", self.content_disposition);
        put("content-language", self.content_language);
        put("cache-control", self.cache_control);
        if let Some(e) = self.expires {
            let mut buf = Vec::new();
            e.format(s3s::dto::TimestampFormat::HttpDate, &mut buf)
                .map_err(|_| s3_error!(InvalidArgument, "invalid Expires"))?;
            headers.insert("expires".into(), String::from_utf8_lossy(&buf).into_owned());
        }
        let mut user_meta = BTreeMap::new();
        let mut total = 0;
        if let Some(m) = self.metadata {
            for (k, v) in m {
                total += k.len() + v.len();
                user_meta.insert(k.to_ascii_lowercase(), v.clone());
            }
        }
        if total > 2048 {
            return Err(s3_error!(
                MetadataTooLarge,
                "Your metadata headers exceed the maximum allowed metadata size"
            ));
        }
        Ok(NewObject { headers, user_meta })
    }
}

pub fn expires(rec: &ObjectRecord) -> Option<Timestamp> {
    rec.headers
        .get("expires")
        .and_then(|e| Timestamp::parse(s3s::dto::TimestampFormat::HttpDate, e).ok())
}

pub fn metadata(rec: &ObjectRecord) -> Option<Metadata> {
    (!rec.user_meta.is_empty()).then(|| {
        rec.user_meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

/// Fills the five checksum fields of an output from a stored checksum.
pub fn checksum_fields(c: &Option<StoredChecksum>) -> [Option<String>; 5] {
    let mut out: [Option<String>; 5] = Default::default();
    if let Some(c) = c
        && let Some(i) = crate::checksum::ALGORITHMS.iter().position(|a| *a == c.algorithm)
    {
        out[i] = Some(c.value.clone());
    }
    out
}

fn etag_matches(cond: &ETagCondition, rec: &ObjectRecord) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == rec.etag,
    }
}

/// The conditional request headers of GET, HEAD and copy sources.
pub struct Conditions<'a> {
    pub if_match: &'a Option<ETagCondition>,
    pub if_none_match: &'a Option<ETagCondition>,
    pub if_modified_since: &'a Option<Timestamp>,
    pub if_unmodified_since: &'a Option<Timestamp>,
}

/// Why a conditional request does not proceed.
pub enum Unmet {
    PreconditionFailed,
    NotModified,
}

impl Conditions<'_> {
    /// Evaluates the conditions in the order RFC 9110 and S3 use.
    pub fn check(&self, rec: &ObjectRecord) -> Result<(), Unmet> {
        let modified = (rec.modified_nanos() / 1_000_000_000) as i64;
        if let Some(m) = self.if_match {
            if !etag_matches(m, rec) {
                return Err(Unmet::PreconditionFailed);
            }
        } else if let Some(t) = self.if_unmodified_since
            && modified > seconds(t)
        {
            return Err(Unmet::PreconditionFailed);
        }
        if let Some(m) = self.if_none_match {
            if etag_matches(m, rec) {
                return Err(Unmet::NotModified);
            }
        } else if let Some(t) = self.if_modified_since
            && modified <= seconds(t)
        {
            return Err(Unmet::NotModified);
        }
        Ok(())
    }

    /// For GET and HEAD: 412 or 304.
    pub fn check_read(&self, rec: &ObjectRecord) -> Result<(), S3Error> {
        match self.check(rec) {
            Ok(()) => Ok(()),
            Err(Unmet::PreconditionFailed) => Err(s3_err(Error::PreconditionFailed)),
            Err(Unmet::NotModified) => {
                let mut e = S3Error::new(S3ErrorCode::NotModified);
                e.set_status_code(http::StatusCode::NOT_MODIFIED);
                let mut h = http::HeaderMap::new();
                if let Ok(v) = http::HeaderValue::from_str(&format!("\"{}\"", rec.etag)) {
                    h.insert(http::header::ETAG, v);
                }
                e.set_headers(h);
                Err(e)
            }
        }
    }

    /// For copy sources every unmet condition is 412.
    pub fn check_copy(&self, rec: &ObjectRecord) -> Result<(), S3Error> {
        self.check(rec).map_err(|_| s3_err(Error::PreconditionFailed))
    }
}
