//! The S3 protocol on top of the object service.
//!
//! `s3s` parses every request (SigV4 in headers, presigned URLs, aws-chunked streaming
//! bodies with trailers, XML) into typed inputs and serialises outputs and errors; this crate
//! implements the operations Ringstore supports. Every operation not implemented here is
//! answered by `s3s` with a `NotImplemented` S3 error.

mod auth;
mod checksum;
mod convert;
mod host;
mod listing;

use std::sync::{Arc, Mutex};

use ringstore_object::{CompletedPart, Error, ObjectRecord, ObjectStore, StoredChecksum};
use s3s::dto::*;
use s3s::{S3, S3Error, S3Request, S3Response, S3Result, s3_error};

pub use crate::auth::KeyAuth;
pub use crate::host::VirtualHosts;

use crate::checksum::{Expectation, Given};
use crate::convert::{Conditions, Headers, checksum_fields, etag, s3_err, timestamp};

/// The S3 service of a node.
pub struct RingstoreS3 {
    store: ObjectStore,
    region: String,
}

impl RingstoreS3 {
    pub fn new(store: ObjectStore, region: impl Into<String>) -> Self {
        Self {
            store,
            region: region.into(),
        }
    }
}

type Failure = Arc<Mutex<Option<S3Error>>>;

/// The standard and user metadata fields every object-creating input carries.
macro_rules! new_object {
    ($input:expr) => {
        Headers {
            content_type: &$input.content_type,
            content_encoding: &$input.content_encoding,
            content_disposition: &$input.content_disposition,
            content_language: &$input.content_language,
            cache_control: &$input.cache_control,
            expires: &$input.expires,
            metadata: &$input.metadata,
        }
        .into_new_object()
    };
}

/// The checksum fields of a request that uploads a body.
macro_rules! given {
    ($input:expr, $algorithm:expr) => {
        Given {
            crc32: &$input.checksum_crc32,
            crc32c: &$input.checksum_crc32c,
            crc64nvme: &$input.checksum_crc64nvme,
            sha1: &$input.checksum_sha1,
            sha256: &$input.checksum_sha256,
            algorithm: $algorithm,
            content_md5: &$input.content_md5,
        }
    };
}

/// The conditional headers of GetObject and HeadObject.
macro_rules! read_conditions {
    ($input:expr) => {
        Conditions {
            if_match: &$input.if_match,
            if_none_match: &$input.if_none_match,
            if_modified_since: &$input.if_modified_since,
            if_unmodified_since: &$input.if_unmodified_since,
        }
    };
}

/// The conditions of a copy source.
macro_rules! copy_conditions {
    ($input:expr) => {
        Conditions {
            if_match: &$input.copy_source_if_match,
            if_none_match: &$input.copy_source_if_none_match,
            if_modified_since: &$input.copy_source_if_modified_since,
            if_unmodified_since: &$input.copy_source_if_unmodified_since,
        }
    };
}

/// What GetObject and HeadObject both say about an object; `$whole` tells whether the
/// response covers the whole object (checksums only describe the whole object).
macro_rules! object_output {
    ($ty:ident, $rec:expr, $whole:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let rec: &ObjectRecord = $rec;
        let whole: bool = $whole;
        let [crc32, crc32c, crc64nvme, sha1, sha256] =
            if whole { checksum_fields(&rec.checksum) } else { Default::default() };
        $ty {
            accept_ranges: Some("bytes".into()),
            e_tag: Some(etag(rec)),
            last_modified: Some(timestamp(rec.modified_nanos())),
            // S3 answers binary/octet-stream for objects stored without a type
            content_type: Some(rec.headers.get("content-type").cloned().unwrap_or_else(|| "binary/octet-stream".into())),
            content_encoding: rec.headers.get("content-encoding").cloned(),
            content_disposition: rec.headers.get("content-disposition").cloned(),
            content_language: rec.headers.get("content-language").cloned(),
            cache_control: rec.headers.get("cache-control").cloned(),
            expires: convert::expires(rec),
            metadata: convert::metadata(rec),
            checksum_crc32: crc32,
            checksum_crc32c: crc32c,
            checksum_crc64nvme: crc64nvme,
            checksum_sha1: sha1,
            checksum_sha256: sha256,
            checksum_type: rec.checksum.as_ref().filter(|_| whole).map(|c| ChecksumType::from(c.kind.clone())),
            parts_count: rec.etag.contains('-').then_some(rec.parts.len() as i32),
            $($field: $value,)*
            ..Default::default()
        }
    }};
}

/// Resolves a Range header against an object's size: `(start, end, Content-Range)`.
fn resolve_range(range: &Option<Range>, size: u64) -> S3Result<(u64, u64, Option<String>)> {
    match range {
        None => Ok((0, size, None)),
        Some(r) => {
            let range = r
                .check(size)
                .map_err(|_| s3_error!(InvalidRange, "The requested range is not satisfiable"))?;
            let cr = format!("bytes {}-{}/{}", range.start, range.end - 1, size);
            Ok((range.start, range.end, Some(cr)))
        }
    }
}

/// Prefers the precise checksum error recorded during verification.
fn body_err(failure: &Failure, e: Error) -> S3Error {
    failure
        .lock()
        .expect("not poisoned")
        .take()
        .unwrap_or_else(|| s3_err(e))
}

/// Largest single PUT or part, as in S3.
const MAX_PUT: i64 = 5 * 1024 * 1024 * 1024;

fn check_size(content_length: Option<i64>) -> S3Result<()> {
    match content_length {
        Some(n) if n > MAX_PUT => Err(s3_error!(
            EntityTooLarge,
            "Your proposed upload of {n} bytes exceeds the maximum allowed object size of {MAX_PUT} bytes; use a multipart upload"
        )),
        _ => Ok(()),
    }
}

fn ok<T>(output: T) -> S3Result<S3Response<T>> {
    Ok(S3Response::new(output))
}

fn copy_source(src: &CopySource) -> S3Result<(&str, &str)> {
    match src {
        CopySource::Bucket {
            bucket,
            key,
            version_id: None,
        } => Ok((bucket, key)),
        CopySource::Bucket {
            version_id: Some(_), ..
        } => Err(s3_error!(
            NotImplemented,
            "Copying a specific version is not supported: versioning is not enabled"
        )),
        _ => Err(s3_error!(
            NotImplemented,
            "Access point copy sources are not supported"
        )),
    }
}

fn parse_copy_range(range: &str, size: u64) -> S3Result<(u64, u64)> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy"
        )
    };
    let (a, b) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let first: u64 = a.parse().map_err(|_| bad())?;
    let last: u64 = b.parse().map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    if last >= size {
        return Err(s3_error!(InvalidRange, "The requested range is not satisfiable"));
    }
    Ok((first, last + 1))
}

impl RingstoreS3 {
    /// Reads a copy source after checking its conditions; returns its record and bytes.
    async fn open_source(
        &self,
        src: &CopySource,
        conds: Conditions<'_>,
        range: Option<&str>,
    ) -> S3Result<(ObjectRecord, ringstore_object::ObjectStream)> {
        let (bucket, key) = copy_source(src)?;
        let found = match range {
            None => self.store.head_for_read(bucket, key, None).await,
            Some(_) => self.store.head(bucket, key).await,
        }
        .map_err(s3_err)?;
        conds.check_copy(&found.record)?;
        let (start, end) = match range {
            Some(r) => parse_copy_range(r, found.record.size)?,
            None => (0, found.record.size),
        };
        let stream = self.store.read(&found, start, end).map_err(s3_err)?;
        Ok((found.record, stream))
    }

    fn source_body(stream: ringstore_object::ObjectStream) -> ringstore_object::BodyStream {
        use futures::StreamExt;
        Box::pin(stream.map(|r| r.map_err(|e| e.to_string())))
    }
}

#[async_trait::async_trait]
impl S3 for RingstoreS3 {
    // ---- buckets ------------------------------------------------------------------------

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self.store.list_buckets().await.map_err(s3_err)?;
        ok(ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .map(|b| Bucket {
                        name: Some(b.name),
                        creation_date: Some(timestamp(b.created_nanos)),
                        bucket_region: Some(self.region.clone()),
                    })
                    .collect(),
            ),
            owner: Some(Owner {
                display_name: Some("ringstore".into()),
                id: Some("ringstore".into()),
            }),
            ..Default::default()
        })
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let name = &req.input.bucket;
        if !s3s::path::check_bucket_name(name) {
            return Err(s3_error!(InvalidBucketName, "The specified bucket is not valid."));
        }
        if let Some(loc) = req
            .input
            .create_bucket_configuration
            .as_ref()
            .and_then(|c| c.location_constraint.as_ref())
            .filter(|l| !l.as_str().is_empty() && l.as_str() != self.region)
        {
            return Err(s3_error!(
                InvalidLocationConstraint,
                "The specified location-constraint {} is not valid for this endpoint (region {})",
                loc.as_str(),
                self.region
            ));
        }
        self.store.create_bucket(name).await.map_err(s3_err)?;
        ok(CreateBucketOutput {
            location: Some(format!("/{name}")),
        })
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.store
            .require_bucket(&req.input.bucket)
            .await
            .map_err(s3_err)?;
        ok(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        })
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.store
            .delete_bucket(&req.input.bucket)
            .await
            .map_err(s3_err)?;
        ok(DeleteBucketOutput {})
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.store
            .require_bucket(&req.input.bucket)
            .await
            .map_err(s3_err)?;
        // us-east-1 is reported as an empty constraint, as S3 does
        let constraint =
            (self.region != "us-east-1").then(|| BucketLocationConstraint::from(self.region.clone()));
        ok(GetBucketLocationOutput {
            location_constraint: constraint,
        })
    }

    // ---- objects ------------------------------------------------------------------------

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        check_size(input.content_length)?;
        let new = new_object!(input)?;
        let algorithm = input.checksum_algorithm.as_ref().map(|a| a.as_str().to_string());
        let expect = Expectation::from_request(given!(input, algorithm.as_deref()), &req.headers)?;
        let failure: Failure = Default::default();
        let (body, verify) = expect.attach(input.body, req.trailing_headers, failure.clone());
        let (if_match, if_none_match) = (input.if_match, input.if_none_match);
        let precondition: Option<ringstore_object::Precondition> = (if_match.is_some()
            || if_none_match.is_some())
        .then(|| {
            Box::new(move |current: Option<&ObjectRecord>| {
                let holds = match (&if_match, &if_none_match, current) {
                    (Some(_), _, None) => false,
                    (Some(m), _, Some(c)) => m.is_any() || m.as_etag().is_some_and(|e| e.value() == c.etag),
                    (None, Some(_), Some(_)) => false,
                    (None, _, None) => true,
                    (None, None, Some(_)) => true,
                };
                if holds {
                    Ok(())
                } else {
                    Err(Error::PreconditionFailed)
                }
            }) as ringstore_object::Precondition
        });
        let rec = self
            .store
            .put_object(&input.bucket, &input.key, new, body, verify, precondition)
            .await
            .map_err(|e| body_err(&failure, e))?;
        let [crc32, crc32c, crc64nvme, sha1, sha256] = checksum_fields(&rec.checksum);
        ok(PutObjectOutput {
            e_tag: Some(etag(&rec)),
            checksum_crc32: crc32,
            checksum_crc32c: crc32c,
            checksum_crc64nvme: crc64nvme,
            checksum_sha1: sha1,
            checksum_sha256: sha256,
            checksum_type: rec.checksum.as_ref().map(|c| ChecksumType::from(c.kind.clone())),
            ..Default::default()
        })
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        if input.part_number.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "GetObject by partNumber is not supported"
            ));
        }
        // a read from the start gets the first bytes of the data with the object's records
        let found = match input.range {
            None | Some(Range::Int { first: 0, last: None }) => {
                self.store.head_for_read(&input.bucket, &input.key, None).await
            }
            Some(Range::Int {
                first: 0,
                last: Some(last),
            }) => {
                let want = last.saturating_add(1);
                self.store
                    .head_for_read(&input.bucket, &input.key, Some(want))
                    .await
            }
            Some(_) => self.store.head(&input.bucket, &input.key).await,
        }
        .map_err(s3_err)?;
        let rec = &found.record;
        read_conditions!(input).check_read(rec)?;
        let (start, end, content_range) = resolve_range(&input.range, rec.size)?;
        let stream = self.store.read(&found, start, end).map_err(s3_err)?;
        let whole = content_range.is_none();
        ok(object_output!(GetObjectOutput, rec, whole, {
            body: Some(StreamingBlob::wrap(stream)),
            content_length: Some((end - start) as i64),
            content_range: content_range,
        }))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let found = self.store.head(&input.bucket, &input.key).await.map_err(s3_err)?;
        let rec = &found.record;
        read_conditions!(input).check_read(rec)?;
        let (start, end, content_range) = resolve_range(&input.range, rec.size)?;
        // HEAD describes the whole object; its checksum applies even when a range is asked
        ok(object_output!(HeadObjectOutput, rec, true, {
            content_length: Some((end - start) as i64),
            content_range: content_range,
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        match input.if_match {
            // a conditional delete compares and swaps like a conditional PUT
            Some(m) => {
                let pre: ringstore_object::Precondition =
                    Box::new(move |current: Option<&ObjectRecord>| match current {
                        Some(c) if m.is_any() || m.as_etag().is_some_and(|e| e.value() == c.etag) => Ok(()),
                        _ => Err(Error::PreconditionFailed),
                    });
                self.store
                    .delete_object_if(&input.bucket, &input.key, pre)
                    .await
                    .map_err(s3_err)?;
            }
            None => self
                .store
                .delete_object(&input.bucket, &input.key)
                .await
                .map_err(s3_err)?,
        }
        ok(DeleteObjectOutput::default())
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(
                MalformedXML,
                "A DeleteObjects request can name at most 1000 keys"
            ));
        }
        self.store.require_bucket(&input.bucket).await.map_err(s3_err)?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for obj in input.delete.objects {
            if obj.version_id.is_some() {
                errors.push(s3s::dto::Error {
                    code: Some("NotImplemented".into()),
                    key: Some(obj.key),
                    message: Some("Versioning is not enabled".into()),
                    version_id: obj.version_id,
                });
                continue;
            }
            match self.store.delete_object(&input.bucket, &obj.key).await {
                Ok(()) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(obj.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => {
                    let e = s3_err(e);
                    errors.push(s3s::dto::Error {
                        code: Some(e.code().as_str().to_string()),
                        key: Some(obj.key),
                        message: e.message().map(str::to_string),
                        version_id: None,
                    });
                }
            }
        }
        ok(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        })
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if !replace && src_bucket == input.bucket && src_key == input.key {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }
        self.store.require_bucket(&input.bucket).await.map_err(s3_err)?;
        let conds = copy_conditions!(input);
        let (src, stream) = self.open_source(&input.copy_source, conds, None).await?;
        let new = if replace {
            new_object!(input)?
        } else {
            ringstore_object::NewObject {
                headers: src.headers.clone(),
                user_meta: src.user_meta.clone(),
            }
        };
        let algorithm = input
            .checksum_algorithm
            .as_ref()
            .map(|a| a.as_str().to_string())
            .or_else(|| src.checksum.as_ref().map(|c| c.algorithm.clone()));
        let none = None;
        let expect = Expectation::from_request(
            Given {
                crc32: &none,
                crc32c: &none,
                crc64nvme: &none,
                sha1: &none,
                sha256: &none,
                algorithm: algorithm.as_deref(),
                content_md5: &none,
            },
            &http::HeaderMap::new(),
        )?;
        let failure: Failure = Default::default();
        let (body, verify) = expect.attach(Some(StreamingBlob::wrap(stream)), None, failure.clone());
        let rec = self
            .store
            .put_object(&input.bucket, &input.key, new, body, verify, None)
            .await
            .map_err(|e| body_err(&failure, e))?;
        let [crc32, crc32c, crc64nvme, sha1, sha256] = checksum_fields(&rec.checksum);
        ok(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&rec)),
                last_modified: Some(timestamp(rec.modified_nanos())),
                checksum_crc32: crc32,
                checksum_crc32c: crc32c,
                checksum_crc64nvme: crc64nvme,
                checksum_sha1: sha1,
                checksum_sha256: sha256,
                checksum_type: rec.checksum.as_ref().map(|c| ChecksumType::from(c.kind.clone())),
            }),
            ..Default::default()
        })
    }

    // ---- listing ------------------------------------------------------------------------

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        listing::list_v1(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        listing::list_v2(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    // ---- multipart ----------------------------------------------------------------------

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        let new = new_object!(input)?;
        let algorithm = input
            .checksum_algorithm
            .as_ref()
            .map(|a| a.as_str().to_ascii_uppercase());
        if let Some(a) = &algorithm
            && !checksum::ALGORITHMS.contains(&a.as_str())
        {
            return Err(s3_error!(
                InvalidRequest,
                "Checksum algorithm {a} is not supported"
            ));
        }
        let kind = input
            .checksum_type
            .as_ref()
            .map(|t| t.as_str().to_ascii_uppercase());
        let stored = algorithm.clone().map(|a| match &kind {
            Some(k) => format!("{a}:{k}"),
            None => a,
        });
        let upload_id = self
            .store
            .create_upload(&input.bucket, &input.key, new, stored)
            .await
            .map_err(s3_err)?;
        ok(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            checksum_algorithm: algorithm.map(ChecksumAlgorithm::from),
            checksum_type: kind.map(ChecksumType::from),
            ..Default::default()
        })
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        check_size(input.content_length)?;
        let algorithm = input.checksum_algorithm.as_ref().map(|a| a.as_str().to_string());
        let expect = Expectation::from_request(given!(input, algorithm.as_deref()), &req.headers)?;
        let failure: Failure = Default::default();
        let (body, verify) = expect.attach(input.body, req.trailing_headers, failure.clone());
        let number = u32::try_from(input.part_number).map_err(|_| {
            s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            )
        })?;
        let part = self
            .store
            .upload_part(&input.bucket, &input.key, &input.upload_id, number, body, verify)
            .await
            .map_err(|e| body_err(&failure, e))?;
        let [crc32, crc32c, crc64nvme, sha1, sha256] = checksum_fields(&part.checksum);
        ok(UploadPartOutput {
            e_tag: Some(ETag::Strong(part.etag)),
            checksum_crc32: crc32,
            checksum_crc32c: crc32c,
            checksum_crc64nvme: crc64nvme,
            checksum_sha1: sha1,
            checksum_sha256: sha256,
            ..Default::default()
        })
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        let conds = copy_conditions!(input);
        let (_, stream) = self
            .open_source(&input.copy_source, conds, input.copy_source_range.as_deref())
            .await?;
        let number = u32::try_from(input.part_number).map_err(|_| {
            s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            )
        })?;
        let part = self
            .store
            .upload_part(
                &input.bucket,
                &input.key,
                &input.upload_id,
                number,
                Self::source_body(stream),
                Box::new(|_, _| Ok(None)),
            )
            .await
            .map_err(s3_err)?;
        ok(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(part.etag)),
                last_modified: Some(timestamp(part.modified_nanos)),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let chosen: Vec<CompletedPart> = input
            .multipart_upload
            .as_ref()
            .and_then(|m| m.parts.as_ref())
            .map(|parts| {
                parts
                    .iter()
                    .map(|p| CompletedPart {
                        number: p.part_number.unwrap_or(0).max(0) as u32,
                        etag: p
                            .e_tag
                            .as_ref()
                            .map(|e| e.value().to_string())
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if chosen.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "The XML you provided was not well-formed or did not validate against our published schema"
            ));
        }
        let uploads = self
            .store
            .list_uploads(&input.bucket, &input.key, None, usize::MAX)
            .await
            .map_err(s3_err)?;
        let stored = uploads
            .iter()
            .find(|u| u.upload_id == input.upload_id && u.key == input.key)
            .and_then(|u| u.checksum_algorithm.clone());
        let (algorithm, kind) = match stored.as_deref().map(|s| s.split_once(':').unwrap_or((s, ""))) {
            Some((a, k)) => (Some(a.to_string()), (!k.is_empty()).then(|| k.to_string())),
            None => (None, input.checksum_type.as_ref().map(|t| t.as_str().to_string())),
        };
        let expected: Option<String> = {
            let [a, b, c, d, e] = [
                &input.checksum_crc32,
                &input.checksum_crc32c,
                &input.checksum_crc64nvme,
                &input.checksum_sha1,
                &input.checksum_sha256,
            ];
            a.clone().or(b.clone()).or(c.clone()).or(d.clone()).or(e.clone())
        };
        let rec = self
            .store
            .complete_upload(&input.bucket, &input.key, &input.upload_id, &chosen, |parts| {
                let computed: Option<StoredChecksum> =
                    checksum::multipart_checksum(parts, algorithm.as_deref(), kind.as_deref());
                if let (Some(want), Some(have)) = (&expected, &computed)
                    && want.split('-').next() != have.value.split('-').next()
                {
                    return Err(Error::BadDigest(format!(
                        "The {} you specified did not match the calculated checksum",
                        have.algorithm
                    )));
                }
                Ok(computed)
            })
            .await
            .map_err(s3_err)?;
        let [crc32, crc32c, crc64nvme, sha1, sha256] = checksum_fields(&rec.checksum);
        ok(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(etag(&rec)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            checksum_crc32: crc32,
            checksum_crc32c: crc32c,
            checksum_crc64nvme: crc64nvme,
            checksum_sha1: sha1,
            checksum_sha256: sha256,
            checksum_type: rec.checksum.as_ref().map(|c| ChecksumType::from(c.kind.clone())),
            ..Default::default()
        })
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.store
            .abort_upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(s3_err)?;
        ok(AbortMultipartUploadOutput::default())
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        listing::list_parts(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        listing::list_uploads(&self.store, req.input)
            .await
            .map(S3Response::new)
    }
}
