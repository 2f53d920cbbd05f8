//! The S3 API against a real single-node server, driven by the AWS SDK for Rust.
//!
//! Every test starts its own `ringstore` process on temporary folders (4 drives, erasure
//! code 2+2 unless stated) and talks to it as a user would: through the SDK, presigned
//! URLs, or raw HTTP where the SDK cannot express a request.

mod common;

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextMut,
};
use aws_sdk_s3::config::{BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents};
use aws_sdk_s3::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, ChecksumAlgorithm, ChecksumMode,
    CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration, Delete, EncodingType,
    MetadataDirective, ObjectIdentifier, VersioningConfiguration,
};
use common::{Server, md5_hex, pattern};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---- helpers ------------------------------------------------------------------------------

/// Asserts that an SDK call failed with exactly this S3 error code and HTTP status.
#[track_caller]
fn expect_err<T: Debug, E: ProvideErrorMetadata + Debug>(
    r: Result<T, SdkError<E, HttpResponse>>,
    want_code: &str,
    want_status: u16,
) -> SdkError<E, HttpResponse> {
    let e = match r {
        Ok(v) => panic!("expected {want_code} ({want_status}) but the call succeeded: {v:?}"),
        Err(e) => e,
    };
    assert_eq!(
        (common::code(&e).as_str(), common::status(&e)),
        (want_code, want_status),
        "unexpected error: {e:?}"
    );
    e
}

fn quoted_md5(data: &[u8]) -> String {
    format!("\"{}\"", md5_hex(data))
}

async fn create_bucket(c: &Client, name: &str) {
    c.create_bucket().bucket(name).send().await.unwrap();
}

async fn put(
    c: &Client,
    bucket: &str,
    key: &str,
    data: &[u8],
) -> aws_sdk_s3::operation::put_object::PutObjectOutput {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"))
}

async fn get_bytes(c: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {bucket}/{key}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

/// Puts every key concurrently, each with its own name as content.
async fn put_keys(c: &Client, bucket: &str, keys: &[&str]) {
    let mut set = tokio::task::JoinSet::new();
    for k in keys {
        let (c, b, k) = (c.clone(), bucket.to_string(), k.to_string());
        set.spawn(async move {
            c.put_object()
                .bucket(b)
                .key(&k)
                .body(ByteStream::from(k.clone().into_bytes()))
                .send()
                .await
                .map_err(|e| format!("{k}: {e:?}"))
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
}

/// Asserts the bytes of a body with a useful message instead of dumping megabytes.
#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

/// The status and headers of an HTTP response.
type Seen = (u16, HashMap<String, String>);

/// Records the status and headers of the last HTTP response an SDK call received.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Option<Seen>>>);

impl Recorder {
    fn status(&self) -> u16 {
        self.0.lock().unwrap().as_ref().expect("a response").0
    }

    fn header(&self, name: &str) -> Option<String> {
        self.0.lock().unwrap().as_ref()?.1.get(name).cloned()
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "Recorder"
    }

    fn read_after_transmit(
        &self,
        ctx: &BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let resp = ctx.response();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        *self.0.lock().unwrap() = Some((resp.status().as_u16(), headers));
        Ok(())
    }
}

/// Sends every request to `addr` while keeping the Host header (and so the signature) of
/// the endpoint the SDK resolved; records the authorities the SDK addressed.
#[derive(Debug, Clone)]
struct ConnectTo {
    addr: SocketAddr,
    hosts: Arc<Mutex<Vec<String>>>,
}

impl Intercept for ConnectTo {
    fn name(&self) -> &'static str {
        "ConnectTo"
    }

    fn modify_before_transmit(
        &self,
        ctx: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = ctx.request_mut();
        let uri = req.uri().to_string();
        let rest = uri
            .strip_prefix("http://")
            .ok_or("expected an http:// endpoint")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        self.hosts.lock().unwrap().push(authority.to_string());
        req.headers_mut().insert("host", authority.to_string());
        req.set_uri(format!("http://{}{}", self.addr, path))?;
        Ok(())
    }
}

/// Decodes `%XX` escapes (as in `encoding-type=url` listings).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad escape in {s}")));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (chunk.get(1).copied().unwrap_or(0) as u32) << 8
            | chunk.get(2).copied().unwrap_or(0) as u32;
        for i in 0..4 {
            if i <= n {
                out.push(A[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn md5_bytes(data: &[u8]) -> Vec<u8> {
    hex::decode(md5_hex(data)).unwrap()
}

/// Reflected CRC of `width` bits (init and final xor all ones), bit by bit.
fn crc_reflected(data: &[u8], poly: u64, width: u32) -> u64 {
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    let mut crc = mask;
    for &b in data {
        crc ^= b as u64;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ poly } else { crc >> 1 };
        }
    }
    crc ^ mask
}

fn crc32(data: &[u8]) -> u32 {
    crc_reflected(data, 0xEDB8_8320, 32) as u32
}

fn crc32c(data: &[u8]) -> u32 {
    crc_reflected(data, 0x82F6_3B78, 32) as u32
}

fn crc64nvme(data: &[u8]) -> u64 {
    crc_reflected(data, 0x9A6C_9329_AC4B_C9B5, 64)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(v);
        }
    }
    let mut out = [0u8; 32];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// The request line and headers of a presigned request, ready for `raw_exchange`.
fn presigned_raw(
    server: &Server,
    req: &aws_sdk_s3::presigning::PresignedRequest,
    extra: &str,
    body: &[u8],
) -> Vec<u8> {
    let base = server.endpoint();
    let target = req
        .uri()
        .strip_prefix(base.as_str())
        .unwrap_or_else(|| panic!("{} is not under {base}", req.uri()));
    let mut head = format!("{} {target} HTTP/1.1\r\nHost: {}\r\n", req.method(), server.addr);
    for (k, v) in req.headers() {
        if !k.eq_ignore_ascii_case("host") {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if !body.is_empty() || req.method() == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str(extra);
    head.push_str("Connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

// ---- buckets ------------------------------------------------------------------------------

#[tokio::test]
async fn bucket_lifecycle() {
    let server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("alpha").send().await.unwrap();
    let list = c.list_buckets().send().await.unwrap();
    let names: Vec<_> = list.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["alpha"]);
    c.head_bucket().bucket("alpha").send().await.unwrap();
    c.delete_bucket().bucket("alpha").send().await.unwrap();
    let e = c.head_bucket().bucket("alpha").send().await.unwrap_err();
    assert_eq!(common::status(&e), 404);
}

#[tokio::test]
async fn list_buckets_and_location() {
    let server = Server::start(4);
    let c = server.client();
    let empty = c.list_buckets().send().await.unwrap();
    assert!(empty.buckets().is_empty());
    for name in ["gamma-3", "alpha", "beta.2"] {
        let out = c.create_bucket().bucket(name).send().await.unwrap();
        assert_eq!(out.location(), Some(format!("/{name}").as_str()));
    }
    let list = c.list_buckets().send().await.unwrap();
    let names: Vec<_> = list.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["alpha", "beta.2", "gamma-3"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for b in list.buckets() {
        let created = b.creation_date().expect("creation date").secs();
        assert!(
            (now - created).abs() < 120,
            "creation date {created} vs now {now}"
        );
    }
    assert!(list.owner().and_then(|o| o.id()).is_some());

    // us-east-1 is reported as an empty location constraint
    let loc = c.get_bucket_location().bucket("alpha").send().await.unwrap();
    assert_eq!(loc.location_constraint().map(|l| l.as_str()).unwrap_or(""), "");
    expect_err(
        c.get_bucket_location().bucket("missing").send().await,
        "NoSuchBucket",
        404,
    );

    // a location constraint for the server's own region is accepted, another is not
    c.create_bucket()
        .bucket("east")
        .create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from("us-east-1"))
                .build(),
        )
        .send()
        .await
        .unwrap();
    expect_err(
        c.create_bucket()
            .bucket("west")
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::UsWest2)
                    .build(),
            )
            .send()
            .await,
        "InvalidLocationConstraint",
        400,
    );
    expect_err(c.head_bucket().bucket("west").send().await, "NotFound", 404);
}

#[tokio::test]
async fn create_bucket_errors() {
    let server = Server::start(4);
    let c = server.client();
    for bad in [
        "UPPER",
        "ab",
        "a..b",
        "-dash",
        "dash-",
        "192.168.1.1",
        "under_score",
    ] {
        expect_err(
            c.create_bucket().bucket(bad).send().await,
            "InvalidBucketName",
            400,
        );
    }
    assert!(c.list_buckets().send().await.unwrap().buckets().is_empty());
    create_bucket(&c, "taken").await;
    expect_err(
        c.create_bucket().bucket("taken").send().await,
        "BucketAlreadyOwnedByYou",
        409,
    );
    // the failed attempt did not disturb the existing bucket
    put(&c, "taken", "k", b"v").await;
    assert_eq!(get_bytes(&c, "taken", "k").await, b"v");
}

#[tokio::test]
async fn head_and_delete_bucket_errors() {
    let server = Server::start(4);
    let c = server.client();
    expect_err(c.head_bucket().bucket("missing").send().await, "NotFound", 404);
    expect_err(
        c.delete_bucket().bucket("missing").send().await,
        "NoSuchBucket",
        404,
    );

    create_bucket(&c, "full").await;
    let head = c.head_bucket().bucket("full").send().await.unwrap();
    assert_eq!(head.bucket_region(), Some("us-east-1"));
    put(&c, "full", "dir/object", b"data").await;
    expect_err(
        c.delete_bucket().bucket("full").send().await,
        "BucketNotEmpty",
        409,
    );
    // still there, content intact
    assert_eq!(get_bytes(&c, "full", "dir/object").await, b"data");
    c.delete_object()
        .bucket("full")
        .key("dir/object")
        .send()
        .await
        .unwrap();
    c.delete_bucket().bucket("full").send().await.unwrap();
    expect_err(c.head_bucket().bucket("full").send().await, "NotFound", 404);
    expect_err(c.delete_bucket().bucket("full").send().await, "NoSuchBucket", 404);
    // the name is free again
    create_bucket(&c, "full").await;
    let listed = c.list_objects_v2().bucket("full").send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0));
}

// ---- objects ------------------------------------------------------------------------------

#[tokio::test]
async fn put_get_round_trip_at_many_sizes() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "sizes").await;
    let sizes = [0, 1, 4 * KIB, 128 * KIB, 128 * KIB + 1, MIB, 3 * MIB + 123];
    for (i, size) in sizes.into_iter().enumerate() {
        let data = pattern(size, 100 + i as u64);
        let key = format!("obj-{size}");
        let out = put(&c, "sizes", &key, &data).await;
        assert_eq!(
            out.e_tag(),
            Some(quoted_md5(&data).as_str()),
            "PUT ETag of {size} bytes"
        );

        let head = c.head_object().bucket("sizes").key(&key).send().await.unwrap();
        assert_eq!(
            head.content_length(),
            Some(size as i64),
            "HEAD length of {size} bytes"
        );
        assert_eq!(head.e_tag(), Some(quoted_md5(&data).as_str()));
        assert_eq!(head.accept_ranges(), Some("bytes"));
        assert!(head.last_modified().is_some());

        let got = c.get_object().bucket("sizes").key(&key).send().await.unwrap();
        assert_eq!(got.content_length(), Some(size as i64));
        assert_eq!(got.e_tag(), Some(quoted_md5(&data).as_str()));
        assert_eq!(got.content_range(), None);
        let body = got.body.collect().await.unwrap().into_bytes();
        assert_bytes(&body, &data, &format!("GET of {size} bytes"));
    }
    // listing reports the same sizes and ETags
    let listed = c.list_objects_v2().bucket("sizes").send().await.unwrap();
    assert_eq!(listed.contents().len(), sizes.len());
    for o in listed.contents() {
        let size: usize = o.key().unwrap().strip_prefix("obj-").unwrap().parse().unwrap();
        assert_eq!(o.size(), Some(size as i64));
        let i = sizes.iter().position(|s| *s == size).unwrap();
        assert_eq!(
            o.e_tag(),
            Some(quoted_md5(&pattern(size, 100 + i as u64)).as_str())
        );
    }
}

#[tokio::test]
async fn range_requests() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "ranges").await;
    let size = 3 * MIB + 123;
    let data = pattern(size, 7);
    put(&c, "ranges", "big", &data).await;
    let small = pattern(4 * KIB, 8);
    put(&c, "ranges", "small", &small).await;

    let clamped = format!("bytes={}-{}", size - 1, size + 1000);
    // (key, range header, expected start, expected end exclusive)
    let cases: Vec<(&str, &str, usize, usize)> = vec![
        ("big", "bytes=0-0", 0, 1),
        ("big", "bytes=1048000-1049999", 1_048_000, 1_050_000), // crosses the 1 MiB stripe
        ("big", "bytes=1000000-2200000", 1_000_000, 2_200_001), // crosses two stripes
        ("big", "bytes=-100", size - 100, size),
        ("big", "bytes=2097000-", 2_097_000, size),
        ("big", clamped.as_str(), size - 1, size), // clamped
        ("small", "bytes=10-19", 10, 20),
        ("small", "bytes=-5000", 0, 4 * KIB), // suffix longer than the object
    ];
    for (key, range, start, end) in cases {
        let total = if key == "big" { size } else { small.len() };
        let want = if key == "big" {
            &data[start..end]
        } else {
            &small[start..end]
        };
        let rec = Recorder::default();
        let out = c
            .get_object()
            .bucket("ranges")
            .key(key)
            .range(range)
            .customize()
            .interceptor(rec.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{range}: {e:?}"));
        assert_eq!(rec.status(), 206, "{range}");
        let content_range = format!("bytes {}-{}/{}", start, end - 1, total);
        assert_eq!(out.content_range(), Some(content_range.as_str()), "{range}");
        assert_eq!(
            rec.header("content-range").as_deref(),
            Some(content_range.as_str())
        );
        assert_eq!(out.content_length(), Some((end - start) as i64), "{range}");
        let body = out.body.collect().await.unwrap().into_bytes();
        assert_bytes(&body, want, range);
    }

    // HEAD with a range reports the part's length and Content-Range
    let head = c
        .head_object()
        .bucket("ranges")
        .key("big")
        .range("bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(100));
    assert_eq!(
        head.content_range(),
        Some(format!("bytes 100-199/{size}").as_str())
    );

    // a whole-object GET is 200
    let rec = Recorder::default();
    c.get_object()
        .bucket("ranges")
        .key("small")
        .customize()
        .interceptor(rec.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(rec.status(), 200);

    for bad in [
        format!("bytes={size}-"),
        format!("bytes={}-{}", size + 10, size + 20),
    ] {
        expect_err(
            c.get_object()
                .bucket("ranges")
                .key("big")
                .range(&bad)
                .send()
                .await,
            "InvalidRange",
            416,
        );
    }
    expect_err(
        c.get_object()
            .bucket("ranges")
            .key("small")
            .range("bytes=4096-")
            .send()
            .await,
        "InvalidRange",
        416,
    );
}

#[tokio::test]
async fn conditional_get_and_head() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "cond").await;
    let data = pattern(1000, 3);
    let etag = put(&c, "cond", "k", &data).await.e_tag().unwrap().to_string();
    let head = c.head_object().bucket("cond").key("k").send().await.unwrap();
    let modified = head.last_modified().unwrap().secs();
    let before = DateTime::from_secs(modified - 3600);
    let after = DateTime::from_secs(modified + 3600);
    let at = DateTime::from_secs(modified);

    // If-Match
    let out = c
        .get_object()
        .bucket("cond")
        .key("k")
        .if_match(&etag)
        .send()
        .await
        .unwrap();
    assert_bytes(
        &out.body.collect().await.unwrap().into_bytes(),
        &data,
        "If-Match hit",
    );
    c.get_object()
        .bucket("cond")
        .key("k")
        .if_match("*")
        .send()
        .await
        .unwrap();
    expect_err(
        c.get_object()
            .bucket("cond")
            .key("k")
            .if_match("\"0123456789abcdef0123456789abcdef\"")
            .send()
            .await,
        "PreconditionFailed",
        412,
    );

    // If-None-Match: 304 with the ETag when it matches
    let e = c
        .get_object()
        .bucket("cond")
        .key("k")
        .if_none_match(&etag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::status(&e), 304, "{e:?}");
    if let SdkError::ServiceError(s) = &e {
        assert_eq!(s.raw().headers().get("etag"), Some(etag.as_str()));
    }
    let e = c
        .get_object()
        .bucket("cond")
        .key("k")
        .if_none_match("*")
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::status(&e), 304, "{e:?}");
    c.get_object()
        .bucket("cond")
        .key("k")
        .if_none_match("\"0123456789abcdef0123456789abcdef\"")
        .send()
        .await
        .unwrap();

    // If-Modified-Since
    c.get_object()
        .bucket("cond")
        .key("k")
        .if_modified_since(before)
        .send()
        .await
        .unwrap();
    for t in [at, after] {
        let e = c
            .get_object()
            .bucket("cond")
            .key("k")
            .if_modified_since(t)
            .send()
            .await
            .unwrap_err();
        assert_eq!(common::status(&e), 304, "{e:?}");
    }

    // If-Unmodified-Since
    c.get_object()
        .bucket("cond")
        .key("k")
        .if_unmodified_since(after)
        .send()
        .await
        .unwrap();
    c.get_object()
        .bucket("cond")
        .key("k")
        .if_unmodified_since(at)
        .send()
        .await
        .unwrap();
    expect_err(
        c.get_object()
            .bucket("cond")
            .key("k")
            .if_unmodified_since(before)
            .send()
            .await,
        "PreconditionFailed",
        412,
    );

    // RFC 9110 precedence: If-Match that holds overrides a failing If-Unmodified-Since,
    // If-None-Match that does not match overrides If-Modified-Since
    c.get_object()
        .bucket("cond")
        .key("k")
        .if_match(&etag)
        .if_unmodified_since(before)
        .send()
        .await
        .unwrap();
    c.get_object()
        .bucket("cond")
        .key("k")
        .if_none_match("\"ffffffffffffffffffffffffffffffff\"")
        .if_modified_since(after)
        .send()
        .await
        .unwrap();

    // HEAD honours the same conditions (no body, so the SDK only sees the status)
    let e = c
        .head_object()
        .bucket("cond")
        .key("k")
        .if_none_match(&etag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::status(&e), 304);
    let e = c
        .head_object()
        .bucket("cond")
        .key("k")
        .if_match("\"beef\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::status(&e), 412);
    c.head_object()
        .bucket("cond")
        .key("k")
        .if_match(&etag)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn standard_headers_user_metadata_and_overrides() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "meta").await;
    let data = pattern(200 * KIB, 11);
    let expires = DateTime::from_secs(4_102_444_800); // 2100-01-01
    c.put_object()
        .bucket("meta")
        .key("doc")
        .body(ByteStream::from(data.clone()))
        .content_type("application/x-ringstore-test")
        .content_encoding("gzip")
        .content_disposition("attachment; filename=\"doc.bin\"")
        .content_language("fr-CA")
        .cache_control("max-age=3600, must-revalidate")
        .expires(expires)
        .metadata("color", "blue")
        .metadata("Mixed-Case", "Value With Spaces")
        .metadata("empty", "")
        .send()
        .await
        .unwrap();

    let want_meta: HashMap<String, String> = [
        ("color", "blue"),
        ("mixed-case", "Value With Spaces"),
        ("empty", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    let head = c.head_object().bucket("meta").key("doc").send().await.unwrap();
    assert_eq!(head.content_type(), Some("application/x-ringstore-test"));
    assert_eq!(head.content_encoding(), Some("gzip"));
    assert_eq!(
        head.content_disposition(),
        Some("attachment; filename=\"doc.bin\"")
    );
    assert_eq!(head.content_language(), Some("fr-CA"));
    assert_eq!(head.cache_control(), Some("max-age=3600, must-revalidate"));
    assert_eq!(head.expires_string(), Some("Fri, 01 Jan 2100 00:00:00 GMT"));
    assert_eq!(head.metadata(), Some(&want_meta));
    assert_eq!(head.content_length(), Some(data.len() as i64));

    let got = c.get_object().bucket("meta").key("doc").send().await.unwrap();
    assert_eq!(got.content_type(), Some("application/x-ringstore-test"));
    assert_eq!(got.content_encoding(), Some("gzip"));
    assert_eq!(
        got.content_disposition(),
        Some("attachment; filename=\"doc.bin\"")
    );
    assert_eq!(got.content_language(), Some("fr-CA"));
    assert_eq!(got.cache_control(), Some("max-age=3600, must-revalidate"));
    assert_eq!(got.expires_string(), Some("Fri, 01 Jan 2100 00:00:00 GMT"));
    assert_eq!(got.metadata(), Some(&want_meta));
    assert_bytes(
        &got.body.collect().await.unwrap().into_bytes(),
        &data,
        "GET with metadata",
    );

    // response-* query parameters override the stored headers for one GET
    let over = c
        .get_object()
        .bucket("meta")
        .key("doc")
        .response_content_type("text/plain; charset=utf-8")
        .response_content_disposition("inline")
        .response_content_encoding("identity")
        .response_content_language("de")
        .response_cache_control("no-store")
        .response_expires(DateTime::from_secs(0))
        .send()
        .await
        .unwrap();
    assert_eq!(over.content_type(), Some("text/plain; charset=utf-8"));
    assert_eq!(over.content_disposition(), Some("inline"));
    assert_eq!(over.content_encoding(), Some("identity"));
    assert_eq!(over.content_language(), Some("de"));
    assert_eq!(over.cache_control(), Some("no-store"));
    assert_eq!(over.expires_string(), Some("Thu, 01 Jan 1970 00:00:00 GMT"));
    assert_eq!(over.metadata(), Some(&want_meta));
    assert_bytes(
        &over.body.collect().await.unwrap().into_bytes(),
        &data,
        "GET with overrides",
    );

    // the overrides changed nothing stored
    let head = c.head_object().bucket("meta").key("doc").send().await.unwrap();
    assert_eq!(head.content_type(), Some("application/x-ringstore-test"));

    // an object stored without headers answers without user metadata
    put(&c, "meta", "plain", b"x").await;
    let head = c.head_object().bucket("meta").key("plain").send().await.unwrap();
    assert!(
        head.metadata().is_none_or(|m| m.is_empty()),
        "{:?}",
        head.metadata()
    );
    assert!(head.content_type().is_some());

    // user metadata is limited to 2 KiB
    expect_err(
        c.put_object()
            .bucket("meta")
            .key("too-much")
            .metadata("big", "x".repeat(2100))
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        "MetadataTooLarge",
        400,
    );
    expect_err(
        c.head_object().bucket("meta").key("too-much").send().await,
        "NotFound",
        404,
    );
}

#[tokio::test]
async fn delete_overwrite_and_missing_objects() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "del").await;

    // overwrite, across the inline/striped boundary in both directions
    let v1 = pattern(2 * MIB + 5, 1);
    let v2 = pattern(10, 2);
    let v3 = pattern(300 * KIB, 3);
    put(&c, "del", "k", &v1).await;
    assert_bytes(&get_bytes(&c, "del", "k").await, &v1, "v1");
    let out = put(&c, "del", "k", &v2).await;
    assert_eq!(out.e_tag(), Some(quoted_md5(&v2).as_str()));
    assert_bytes(&get_bytes(&c, "del", "k").await, &v2, "v2");
    put(&c, "del", "k", &v3).await;
    assert_bytes(&get_bytes(&c, "del", "k").await, &v3, "v3");
    let head = c.head_object().bucket("del").key("k").send().await.unwrap();
    assert_eq!(head.e_tag(), Some(quoted_md5(&v3).as_str()));
    let listed = c.list_objects_v2().bucket("del").send().await.unwrap();
    assert_eq!(listed.contents().len(), 1);
    assert_eq!(listed.contents()[0].size(), Some(v3.len() as i64));

    // delete, then the key is gone everywhere
    let rec = Recorder::default();
    c.delete_object()
        .bucket("del")
        .key("k")
        .customize()
        .interceptor(rec.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(rec.status(), 204);
    expect_err(
        c.get_object().bucket("del").key("k").send().await,
        "NoSuchKey",
        404,
    );
    expect_err(
        c.head_object().bucket("del").key("k").send().await,
        "NotFound",
        404,
    );
    assert_eq!(
        c.list_objects_v2()
            .bucket("del")
            .send()
            .await
            .unwrap()
            .key_count(),
        Some(0)
    );

    // deleting a missing key succeeds, as in S3
    c.delete_object().bucket("del").key("k").send().await.unwrap();
    c.delete_object()
        .bucket("del")
        .key("never-existed")
        .send()
        .await
        .unwrap();

    // a deleted key can be written again
    put(&c, "del", "k", b"again").await;
    assert_eq!(get_bytes(&c, "del", "k").await, b"again");

    // keys up to 1024 bytes
    let longest = "k".repeat(1024);
    put(&c, "del", &longest, b"long key").await;
    assert_eq!(get_bytes(&c, "del", &longest).await, b"long key");
    expect_err(
        c.put_object()
            .bucket("del")
            .key("k".repeat(1025))
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        "KeyTooLongError",
        400,
    );

    // missing bucket
    expect_err(
        c.put_object()
            .bucket("nobucket")
            .key("k")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        "NoSuchBucket",
        404,
    );
    expect_err(
        c.get_object().bucket("nobucket").key("k").send().await,
        "NoSuchBucket",
        404,
    );
    expect_err(
        c.delete_object().bucket("nobucket").key("k").send().await,
        "NoSuchBucket",
        404,
    );
    expect_err(
        c.get_object().bucket("del").key("nokey").send().await,
        "NoSuchKey",
        404,
    );
}

#[tokio::test]
async fn delete_objects_quiet_and_verbose() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "multi").await;
    put_keys(&c, "multi", &["a", "b", "c", "d", "e", "keep"]).await;
    let ids = |keys: &[&str], quiet: bool| -> Delete {
        Delete::builder()
            .set_objects(Some(
                keys.iter()
                    .map(|k| ObjectIdentifier::builder().key(*k).build().unwrap())
                    .collect(),
            ))
            .quiet(quiet)
            .build()
            .unwrap()
    };

    // verbose: every key is reported, including one that did not exist
    let out = c
        .delete_objects()
        .bucket("multi")
        .delete(ids(&["a", "b", "missing"], false))
        .send()
        .await
        .unwrap();
    let mut deleted: Vec<_> = out.deleted().iter().filter_map(|d| d.key()).collect();
    deleted.sort();
    assert_eq!(deleted, ["a", "b", "missing"]);
    assert!(out.errors().is_empty(), "{:?}", out.errors());

    // quiet: only errors are reported
    let out = c
        .delete_objects()
        .bucket("multi")
        .delete(ids(&["c", "d", "e"], true))
        .send()
        .await
        .unwrap();
    assert!(out.deleted().is_empty(), "{:?}", out.deleted());
    assert!(out.errors().is_empty(), "{:?}", out.errors());

    let listed = c.list_objects_v2().bucket("multi").send().await.unwrap();
    let keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["keep"]);
    for k in ["a", "b", "c", "d", "e"] {
        expect_err(
            c.get_object().bucket("multi").key(k).send().await,
            "NoSuchKey",
            404,
        );
    }
    expect_err(
        c.delete_objects()
            .bucket("nobucket")
            .delete(ids(&["a"], false))
            .send()
            .await,
        "NoSuchBucket",
        404,
    );
}

#[tokio::test]
async fn conditional_put() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "cput").await;
    c.put_object()
        .bucket("cput")
        .key("once")
        .if_none_match("*")
        .body(ByteStream::from_static(b"first"))
        .send()
        .await
        .unwrap();
    expect_err(
        c.put_object()
            .bucket("cput")
            .key("once")
            .if_none_match("*")
            .body(ByteStream::from_static(b"second"))
            .send()
            .await,
        "PreconditionFailed",
        412,
    );
    assert_eq!(get_bytes(&c, "cput", "once").await, b"first");

    // a large body is refused the same way, and leaves the object untouched
    let big = pattern(2 * MIB, 9);
    expect_err(
        c.put_object()
            .bucket("cput")
            .key("once")
            .if_none_match("*")
            .body(ByteStream::from(big))
            .send()
            .await,
        "PreconditionFailed",
        412,
    );
    assert_eq!(get_bytes(&c, "cput", "once").await, b"first");

    // If-Match on PUT: replaces only the expected version
    let etag = quoted_md5(b"first");
    expect_err(
        c.put_object()
            .bucket("cput")
            .key("once")
            .if_match("\"00000000000000000000000000000000\"")
            .body(ByteStream::from_static(b"nope"))
            .send()
            .await,
        "PreconditionFailed",
        412,
    );
    c.put_object()
        .bucket("cput")
        .key("once")
        .if_match(&etag)
        .body(ByteStream::from_static(b"third"))
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "cput", "once").await, b"third");
    expect_err(
        c.put_object()
            .bucket("cput")
            .key("absent")
            .if_match(&etag)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        "PreconditionFailed",
        412,
    );
    // after a delete, If-None-Match: * succeeds again
    c.delete_object().bucket("cput").key("once").send().await.unwrap();
    c.put_object()
        .bucket("cput")
        .key("once")
        .if_none_match("*")
        .body(ByteStream::from_static(b"fourth"))
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "cput", "once").await, b"fourth");
}

// ---- copy ---------------------------------------------------------------------------------

#[tokio::test]
async fn copy_object_metadata_directives() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "src").await;
    create_bucket(&c, "dst").await;
    let data = pattern(50 * KIB, 21);
    let src_etag = c
        .put_object()
        .bucket("src")
        .key("orig")
        .body(ByteStream::from(data.clone()))
        .content_type("image/png")
        .content_disposition("inline")
        .cache_control("no-cache")
        .metadata("origin", "source")
        .metadata("n", "1")
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_string();

    // COPY (the default): bytes and every header carried over
    let out = c
        .copy_object()
        .bucket("dst")
        .key("copied")
        .copy_source("src/orig")
        .send()
        .await
        .unwrap();
    let result = out.copy_object_result().unwrap();
    assert_eq!(result.e_tag(), Some(src_etag.as_str()));
    assert!(result.last_modified().is_some());
    let head = c.head_object().bucket("dst").key("copied").send().await.unwrap();
    assert_eq!(head.content_type(), Some("image/png"));
    assert_eq!(head.content_disposition(), Some("inline"));
    assert_eq!(head.cache_control(), Some("no-cache"));
    let meta = head.metadata().unwrap();
    assert_eq!(meta.len(), 2);
    assert_eq!(meta.get("origin").map(String::as_str), Some("source"));
    assert_eq!(meta.get("n").map(String::as_str), Some("1"));
    assert_bytes(&get_bytes(&c, "dst", "copied").await, &data, "COPY");

    // an explicit COPY directive ignores new metadata in the request
    c.copy_object()
        .bucket("dst")
        .key("copied-explicit")
        .copy_source("src/orig")
        .metadata_directive(MetadataDirective::Copy)
        .metadata("ignored", "yes")
        .send()
        .await
        .unwrap();
    let head = c
        .head_object()
        .bucket("dst")
        .key("copied-explicit")
        .send()
        .await
        .unwrap();
    assert_eq!(head.metadata().unwrap().get("ignored"), None);
    assert_eq!(
        head.metadata().unwrap().get("origin").map(String::as_str),
        Some("source")
    );

    // REPLACE: new headers and metadata only
    c.copy_object()
        .bucket("dst")
        .key("replaced")
        .copy_source("src/orig")
        .metadata_directive(MetadataDirective::Replace)
        .content_type("text/csv")
        .metadata("fresh", "new")
        .send()
        .await
        .unwrap();
    let head = c
        .head_object()
        .bucket("dst")
        .key("replaced")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("text/csv"));
    assert_eq!(head.content_disposition(), None);
    assert_eq!(head.cache_control(), None);
    let meta = head.metadata().unwrap();
    assert_eq!(meta.len(), 1, "{meta:?}");
    assert_eq!(meta.get("fresh").map(String::as_str), Some("new"));
    assert_eq!(head.e_tag(), Some(src_etag.as_str()));
    assert_bytes(&get_bytes(&c, "dst", "replaced").await, &data, "REPLACE");

    // to itself: only with REPLACE
    expect_err(
        c.copy_object()
            .bucket("src")
            .key("orig")
            .copy_source("src/orig")
            .send()
            .await,
        "InvalidRequest",
        400,
    );
    c.copy_object()
        .bucket("src")
        .key("orig")
        .copy_source("src/orig")
        .metadata_directive(MetadataDirective::Replace)
        .metadata("origin", "rewritten")
        .send()
        .await
        .unwrap();
    let head = c.head_object().bucket("src").key("orig").send().await.unwrap();
    assert_eq!(
        head.metadata().unwrap().get("origin").map(String::as_str),
        Some("rewritten")
    );
    // REPLACE without a type drops the old one; S3 then reports the default
    assert_eq!(head.content_type(), Some("binary/octet-stream"));
    assert_bytes(&get_bytes(&c, "src", "orig").await, &data, "copy onto itself");

    // the source key and bucket must exist, and so must the target bucket
    expect_err(
        c.copy_object()
            .bucket("dst")
            .key("x")
            .copy_source("src/missing")
            .send()
            .await,
        "NoSuchKey",
        404,
    );
    expect_err(
        c.copy_object()
            .bucket("dst")
            .key("x")
            .copy_source("nobucket/orig")
            .send()
            .await,
        "NoSuchBucket",
        404,
    );
    expect_err(
        c.copy_object()
            .bucket("nobucket")
            .key("x")
            .copy_source("src/orig")
            .send()
            .await,
        "NoSuchBucket",
        404,
    );
}

#[tokio::test]
async fn copy_object_conditions_and_large_objects() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "cpy").await;
    let data = pattern(3 * MIB + 123, 31);
    let etag = put(&c, "cpy", "big", &data).await.e_tag().unwrap().to_string();

    expect_err(
        c.copy_object()
            .bucket("cpy")
            .key("x")
            .copy_source("cpy/big")
            .copy_source_if_match("\"00000000000000000000000000000000\"")
            .send()
            .await,
        "PreconditionFailed",
        412,
    );
    expect_err(
        c.copy_object()
            .bucket("cpy")
            .key("x")
            .copy_source("cpy/big")
            .copy_source_if_none_match(&etag)
            .send()
            .await,
        "PreconditionFailed",
        412,
    );
    let modified = c
        .head_object()
        .bucket("cpy")
        .key("big")
        .send()
        .await
        .unwrap()
        .last_modified()
        .unwrap()
        .secs();
    expect_err(
        c.copy_object()
            .bucket("cpy")
            .key("x")
            .copy_source("cpy/big")
            .copy_source_if_unmodified_since(DateTime::from_secs(modified - 3600))
            .send()
            .await,
        "PreconditionFailed",
        412,
    );
    expect_err(
        c.copy_object()
            .bucket("cpy")
            .key("x")
            .copy_source("cpy/big")
            .copy_source_if_modified_since(DateTime::from_secs(modified + 3600))
            .send()
            .await,
        "PreconditionFailed",
        412,
    );
    expect_err(
        c.head_object().bucket("cpy").key("x").send().await,
        "NotFound",
        404,
    );

    // conditions that hold let the copy through; the multi-stripe copy is byte-exact
    let out = c
        .copy_object()
        .bucket("cpy")
        .key("x")
        .copy_source("cpy/big")
        .copy_source_if_match(&etag)
        .copy_source_if_unmodified_since(DateTime::from_secs(modified + 3600))
        .send()
        .await
        .unwrap();
    assert_eq!(out.copy_object_result().unwrap().e_tag(), Some(etag.as_str()));
    assert_bytes(&get_bytes(&c, "cpy", "x").await, &data, "multi-stripe copy");
    // a range of the copy crossing a stripe boundary
    let part = c
        .get_object()
        .bucket("cpy")
        .key("x")
        .range("bytes=2097100-2097200")
        .send()
        .await
        .unwrap();
    assert_bytes(
        &part.body.collect().await.unwrap().into_bytes(),
        &data[2_097_100..2_097_201],
        "range of copy",
    );
    // a key with characters that need escaping in x-amz-copy-source
    put(&c, "cpy", "dir/with space+plus", b"odd key").await;
    c.copy_object()
        .bucket("cpy")
        .key("odd-copy")
        .copy_source("cpy/dir/with%20space%2Bplus")
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "cpy", "odd-copy").await, b"odd key");
}

// ---- listing ------------------------------------------------------------------------------

#[tokio::test]
async fn list_prefix_delimiter_and_ordering() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "tree").await;
    let keys = [
        "docs/readme",
        "photos/2023/a.jpg",
        "photos/2023/b.jpg",
        "photos/2024/c.jpg",
        "photos/index.html",
        "photos0",
        "top.txt",
        "A",
        "B",
        "_",
        "a",
        "a-",
        "a/b",
        "a0",
        "~",
        "é",
    ];
    put_keys(&c, "tree", &keys).await;
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort(); // byte order of UTF-8, as S3 lists

    let all = c.list_objects_v2().bucket("tree").send().await.unwrap();
    let got: Vec<_> = all.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(got, sorted);
    assert_eq!(all.key_count(), Some(keys.len() as i32));
    assert_eq!(all.is_truncated(), Some(false));
    assert_eq!(all.next_continuation_token(), None);
    for o in all.contents() {
        assert_eq!(o.size(), Some(o.key().unwrap().len() as i64));
        assert_eq!(o.e_tag(), Some(quoted_md5(o.key().unwrap().as_bytes()).as_str()));
        assert!(o.last_modified().is_some());
    }
    // v1 agrees
    let v1 = c.list_objects().bucket("tree").send().await.unwrap();
    let got: Vec<_> = v1.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(got, sorted);
    assert_eq!(v1.is_truncated(), Some(false));

    let list = |prefix: &'static str, delimiter: Option<&'static str>| {
        let c = c.clone();
        async move {
            let out = c
                .list_objects_v2()
                .bucket("tree")
                .prefix(prefix)
                .set_delimiter(delimiter.map(str::to_string))
                .send()
                .await
                .unwrap();
            let objects: Vec<String> = out
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .map(String::from)
                .collect();
            let prefixes: Vec<String> = out
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix())
                .map(String::from)
                .collect();
            assert_eq!(out.key_count(), Some((objects.len() + prefixes.len()) as i32));
            assert_eq!(out.prefix().unwrap_or(""), prefix);
            assert_eq!(out.delimiter(), delimiter);
            (objects, prefixes)
        }
    };

    let (objects, prefixes) = list("", Some("/")).await;
    assert_eq!(prefixes, ["a/", "docs/", "photos/"]);
    assert_eq!(
        objects,
        ["A", "B", "_", "a", "a-", "a0", "photos0", "top.txt", "~", "é"]
    );

    let (objects, prefixes) = list("photos/", Some("/")).await;
    assert_eq!(prefixes, ["photos/2023/", "photos/2024/"]);
    assert_eq!(objects, ["photos/index.html"]);

    let (objects, prefixes) = list("photos/2023/", None).await;
    assert!(prefixes.is_empty());
    assert_eq!(objects, ["photos/2023/a.jpg", "photos/2023/b.jpg"]);

    let (objects, prefixes) = list("photos", None).await;
    assert!(prefixes.is_empty());
    assert_eq!(
        objects,
        [
            "photos/2023/a.jpg",
            "photos/2023/b.jpg",
            "photos/2024/c.jpg",
            "photos/index.html",
            "photos0"
        ]
    );

    let (objects, prefixes) = list("photos", Some("/")).await;
    assert_eq!(prefixes, ["photos/"]);
    assert_eq!(objects, ["photos0"]);

    let (objects, prefixes) = list("nothing-here", Some("/")).await;
    assert!(objects.is_empty() && prefixes.is_empty());

    // a delimiter other than "/"
    let (objects, prefixes) = list("photos/", Some(".")).await;
    assert_eq!(
        prefixes,
        [
            "photos/2023/a.",
            "photos/2023/b.",
            "photos/2024/c.",
            "photos/index."
        ]
    );
    assert!(objects.is_empty());

    // paging one entry at a time walks over whole common prefixes (v2 tokens)
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = c
            .list_objects_v2()
            .bucket("tree")
            .delimiter("/")
            .max_keys(1)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(out.key_count(), Some(1));
        assert_eq!(out.continuation_token(), token.as_deref());
        seen.extend(
            out.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix())
                .map(String::from),
        );
        seen.extend(out.contents().iter().filter_map(|o| o.key()).map(String::from));
        if out.is_truncated() != Some(true) {
            assert_eq!(out.next_continuation_token(), None);
            break;
        }
        token = Some(
            out.next_continuation_token()
                .expect("token when truncated")
                .to_string(),
        );
    }
    let want = [
        "A", "B", "_", "a", "a-", "a/", "a0", "docs/", "photos/", "photos0", "top.txt", "~", "é",
    ];
    assert_eq!(seen, want);

    // ... and v1 markers: NextMarker is the last key or prefix of the page
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = c
            .list_objects()
            .bucket("tree")
            .delimiter("/")
            .max_keys(2)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        let mut page: Vec<String> = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix())
            .map(String::from)
            .collect();
        page.extend(out.contents().iter().filter_map(|o| o.key()).map(String::from));
        page.sort();
        assert!(!page.is_empty() && page.len() <= 2, "{page:?}");
        if out.is_truncated() != Some(true) {
            assert_eq!(out.next_marker(), None);
            seen.extend(page);
            break;
        }
        let next = out
            .next_marker()
            .expect("NextMarker with a delimiter")
            .to_string();
        assert_eq!(Some(&next), page.last());
        seen.extend(page);
        marker = Some(next);
    }
    assert_eq!(seen, want);
}

#[tokio::test]
async fn list_paging_tokens_markers_and_start_after() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "pages").await;
    let keys: Vec<String> = (0..25).rev().map(|i| format!("item-{i:02}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    put_keys(&c, "pages", &refs).await;
    let mut all = keys.clone();
    all.sort();

    // v2 with continuation tokens, 7 per page
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let out = c
            .list_objects_v2()
            .bucket("pages")
            .max_keys(7)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        assert_eq!(out.max_keys(), Some(7));
        let page: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(String::from)
            .collect();
        assert_eq!(out.key_count(), Some(page.len() as i32));
        seen.extend(page.clone());
        if out.is_truncated() == Some(true) {
            assert_eq!(page.len(), 7);
            token = Some(out.next_continuation_token().expect("token").to_string());
        } else {
            assert_eq!(page.len(), 4);
            assert_eq!(out.next_continuation_token(), None);
            break;
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, all, "every key exactly once, in order");

    // start-after
    let out = c
        .list_objects_v2()
        .bucket("pages")
        .start_after("item-10")
        .send()
        .await
        .unwrap();
    let got: Vec<_> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(got, all[11..]);
    assert_eq!(out.start_after(), Some("item-10"));
    // start-after between keys, with paging
    let out = c
        .list_objects_v2()
        .bucket("pages")
        .start_after("item-19x")
        .max_keys(3)
        .send()
        .await
        .unwrap();
    let got: Vec<_> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(got, ["item-20", "item-21", "item-22"]);
    assert_eq!(out.is_truncated(), Some(true));
    let next = c
        .list_objects_v2()
        .bucket("pages")
        .start_after("item-19x")
        .continuation_token(out.next_continuation_token().unwrap())
        .send()
        .await
        .unwrap();
    let got: Vec<_> = next.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(got, ["item-23", "item-24"]);
    assert_eq!(next.is_truncated(), Some(false));
    // start-after past the end
    let out = c
        .list_objects_v2()
        .bucket("pages")
        .start_after("zzz")
        .send()
        .await
        .unwrap();
    assert_eq!(out.key_count(), Some(0));
    assert_eq!(out.is_truncated(), Some(false));

    // v1 markers without a delimiter: no NextMarker, the client continues from the last key
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = c
            .list_objects()
            .bucket("pages")
            .max_keys(7)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(out.marker().unwrap_or(""), marker.as_deref().unwrap_or(""));
        assert_eq!(out.next_marker(), None);
        let page: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(String::from)
            .collect();
        seen.extend(page.clone());
        if out.is_truncated() != Some(true) {
            break;
        }
        assert_eq!(page.len(), 7);
        marker = page.last().cloned();
    }
    assert_eq!(seen, all);
    // a v1 marker between keys
    let out = c
        .list_objects()
        .bucket("pages")
        .marker("item-23a")
        .send()
        .await
        .unwrap();
    let got: Vec<_> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(got, ["item-24"]);

    // max-keys 0 lists nothing; a bad token is rejected
    let out = c
        .list_objects_v2()
        .bucket("pages")
        .max_keys(0)
        .send()
        .await
        .unwrap();
    assert_eq!(out.key_count(), Some(0));
    expect_err(
        c.list_objects_v2()
            .bucket("pages")
            .continuation_token("%%%not-a-token")
            .send()
            .await,
        "InvalidArgument",
        400,
    );
    expect_err(
        c.list_objects_v2().bucket("nobucket").send().await,
        "NoSuchBucket",
        404,
    );
    expect_err(
        c.list_objects().bucket("nobucket").send().await,
        "NoSuchBucket",
        404,
    );
}

#[tokio::test]
async fn list_with_url_encoding() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "enc").await;
    let keys = [
        "with space.txt",
        "dir one/ü file+x.txt",
        "日本語/キー",
        "percent%20literal",
        "x&y<z>'\".txt",
        "plain/key",
    ];
    put_keys(&c, "enc", &keys).await;
    let mut sorted = keys.to_vec();
    sorted.sort();

    // without encoding the keys come back exactly (XML escaping included)
    let out = c.list_objects_v2().bucket("enc").send().await.unwrap();
    let got: Vec<_> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(got, sorted);
    for k in keys {
        assert_eq!(get_bytes(&c, "enc", k).await, k.as_bytes(), "{k}");
    }

    // with encoding-type=url the SDK hands over the encoded form; decoding restores the keys
    let out = c
        .list_objects_v2()
        .bucket("enc")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    assert_eq!(out.encoding_type(), Some(&EncodingType::Url));
    let raw: Vec<_> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert!(raw.contains(&"with%20space.txt"), "{raw:?}");
    assert!(raw.contains(&"dir%20one/%C3%BC%20file%2Bx.txt"), "{raw:?}");
    assert!(raw.contains(&"percent%2520literal"), "{raw:?}");
    assert!(raw.contains(&"plain/key"), "{raw:?}");
    let decoded: Vec<String> = raw.iter().map(|k| url_decode(k)).collect();
    assert_eq!(decoded, sorted);

    // common prefixes and the echoed prefix are encoded too
    let out = c
        .list_objects_v2()
        .bucket("enc")
        .delimiter("/")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    let prefixes: Vec<String> = out
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .map(url_decode)
        .collect();
    assert_eq!(prefixes, ["dir one/", "plain/", "日本語/"]);
    let out = c
        .list_objects_v2()
        .bucket("enc")
        .prefix("dir one/")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    assert_eq!(out.prefix(), Some("dir%20one/"));
    let got: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .map(url_decode)
        .collect();
    assert_eq!(got, ["dir one/ü file+x.txt"]);

    // v1 as well, with a unicode prefix
    let out = c
        .list_objects()
        .bucket("enc")
        .prefix("日本語/")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    let got: Vec<_> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(got, ["%E6%97%A5%E6%9C%AC%E8%AA%9E/%E3%82%AD%E3%83%BC"]);
    assert_eq!(url_decode(got[0]), "日本語/キー");
    // paging with encoded keys: tokens are opaque and still resume correctly
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = c
            .list_objects_v2()
            .bucket("enc")
            .max_keys(2)
            .encoding_type(EncodingType::Url)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        seen.extend(out.contents().iter().filter_map(|o| o.key()).map(url_decode));
        match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    assert_eq!(seen, sorted);
}

// ---- multipart ----------------------------------------------------------------------------

fn completed(parts: &[(i32, &str)]) -> CompletedMultipartUpload {
    CompletedMultipartUpload::builder()
        .set_parts(Some(
            parts
                .iter()
                .map(|(n, e)| CompletedPart::builder().part_number(*n).e_tag(*e).build())
                .collect(),
        ))
        .build()
}

#[tokio::test]
async fn multipart_upload_end_to_end() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "mpu").await;
    let key = "large/object.bin";
    let parts = [pattern(5 * MIB, 41), pattern(5 * MIB, 42), pattern(MIB + 7, 43)];
    let whole: Vec<u8> = parts.concat();

    let created = c
        .create_multipart_upload()
        .bucket("mpu")
        .key(key)
        .content_type("application/x-multipart-test")
        .metadata("kind", "multipart")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .unwrap();
    assert_eq!(created.bucket(), Some("mpu"));
    assert_eq!(created.key(), Some(key));
    let upload_id = created.upload_id().unwrap().to_string();

    let mut etags = Vec::new();
    for (i, data) in parts.iter().enumerate() {
        let out = c
            .upload_part()
            .bucket("mpu")
            .key(key)
            .upload_id(&upload_id)
            .part_number(i as i32 + 1)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(out.e_tag(), Some(quoted_md5(data).as_str()), "part {}", i + 1);
        assert_eq!(
            out.checksum_crc32(),
            Some(b64(&crc32(data).to_be_bytes()).as_str()),
            "part {}",
            i + 1
        );
        etags.push(out.e_tag().unwrap().to_string());
    }

    let listed = c
        .list_parts()
        .bucket("mpu")
        .key(key)
        .upload_id(&upload_id)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.upload_id(), Some(upload_id.as_str()));
    assert_eq!(listed.is_truncated(), Some(false));
    let got: Vec<(i32, i64, &str)> = listed
        .parts()
        .iter()
        .map(|p| (p.part_number().unwrap(), p.size().unwrap(), p.e_tag().unwrap()))
        .collect();
    let want: Vec<(i32, i64, &str)> = parts
        .iter()
        .zip(&etags)
        .enumerate()
        .map(|(i, (d, e))| (i as i32 + 1, d.len() as i64, e.as_str()))
        .collect();
    assert_eq!(got, want);
    for (p, data) in listed.parts().iter().zip(&parts) {
        assert_eq!(p.checksum_crc32(), Some(b64(&crc32(data).to_be_bytes()).as_str()));
    }
    // ListParts paging
    let first = c
        .list_parts()
        .bucket("mpu")
        .key(key)
        .upload_id(&upload_id)
        .max_parts(2)
        .send()
        .await
        .unwrap();
    assert_eq!(first.parts().len(), 2);
    assert_eq!(first.is_truncated(), Some(true));
    let marker = first.next_part_number_marker().unwrap();
    assert_eq!(marker, "2");
    let rest = c
        .list_parts()
        .bucket("mpu")
        .key(key)
        .upload_id(&upload_id)
        .part_number_marker(marker)
        .send()
        .await
        .unwrap();
    assert_eq!(rest.parts().len(), 1);
    assert_eq!(rest.parts()[0].part_number(), Some(3));

    let uploads = c.list_multipart_uploads().bucket("mpu").send().await.unwrap();
    let got: Vec<_> = uploads
        .uploads()
        .iter()
        .map(|u| (u.key().unwrap(), u.upload_id().unwrap()))
        .collect();
    assert_eq!(got, [(key, upload_id.as_str())]);
    // the object does not exist until completed
    expect_err(
        c.head_object().bucket("mpu").key(key).send().await,
        "NotFound",
        404,
    );

    // failing completions leave the upload intact
    expect_err(
        c.complete_multipart_upload()
            .bucket("mpu")
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(completed(&[(2, &etags[1]), (1, &etags[0]), (3, &etags[2])]))
            .send()
            .await,
        "InvalidPartOrder",
        400,
    );
    expect_err(
        c.complete_multipart_upload()
            .bucket("mpu")
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(completed(&[
                (1, &etags[0]),
                (2, "\"00000000000000000000000000000000\""),
                (3, &etags[2]),
            ]))
            .send()
            .await,
        "InvalidPart",
        400,
    );
    expect_err(
        c.complete_multipart_upload()
            .bucket("mpu")
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(completed(&[(1, &etags[0]), (2, &etags[1]), (4, &etags[2])]))
            .send()
            .await,
        "InvalidPart",
        400,
    );

    let done = c
        .complete_multipart_upload()
        .bucket("mpu")
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(completed(&[(1, &etags[0]), (2, &etags[1]), (3, &etags[2])]))
        .send()
        .await
        .unwrap();
    let md5s: Vec<u8> = parts.iter().flat_map(|p| md5_bytes(p)).collect();
    let want_etag = format!("\"{}-3\"", md5_hex(&md5s));
    assert_eq!(done.e_tag(), Some(want_etag.as_str()));
    assert_eq!(done.bucket(), Some("mpu"));
    assert_eq!(done.key(), Some(key));
    // the object's CRC32 is composite: the CRC32 of the parts' CRC32s, with the part count
    let part_crcs: Vec<u8> = parts.iter().flat_map(|p| crc32(p).to_be_bytes()).collect();
    let want_crc = format!("{}-3", b64(&crc32(&part_crcs).to_be_bytes()));
    assert_eq!(done.checksum_crc32(), Some(want_crc.as_str()));
    let head = c
        .head_object()
        .bucket("mpu")
        .key(key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(head.checksum_crc32(), Some(want_crc.as_str()));
    assert_eq!(head.checksum_type().map(|t| t.as_str()), Some("COMPOSITE"));

    let head = c.head_object().bucket("mpu").key(key).send().await.unwrap();
    assert_eq!(head.e_tag(), Some(want_etag.as_str()));
    assert_eq!(head.content_length(), Some(whole.len() as i64));
    assert_eq!(head.content_type(), Some("application/x-multipart-test"));
    assert_eq!(
        head.metadata().unwrap().get("kind").map(String::as_str),
        Some("multipart")
    );

    assert_bytes(&get_bytes(&c, "mpu", key).await, &whole, "completed object");
    // a range spanning all three parts
    let (start, end) = (5 * MIB - 100, 10 * MIB + 100);
    let out = c
        .get_object()
        .bucket("mpu")
        .key(key)
        .range(format!("bytes={start}-{end}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.content_range(),
        Some(format!("bytes {start}-{end}/{}", whole.len()).as_str())
    );
    assert_bytes(
        &out.body.collect().await.unwrap().into_bytes(),
        &whole[start..=end],
        "range across parts",
    );
    // the tail of the last part
    let out = c
        .get_object()
        .bucket("mpu")
        .key(key)
        .range("bytes=-10")
        .send()
        .await
        .unwrap();
    assert_bytes(
        &out.body.collect().await.unwrap().into_bytes(),
        &whole[whole.len() - 10..],
        "suffix of multipart",
    );

    let listed = c.list_objects_v2().bucket("mpu").send().await.unwrap();
    assert_eq!(listed.contents().len(), 1);
    assert_eq!(listed.contents()[0].e_tag(), Some(want_etag.as_str()));
    assert_eq!(listed.contents()[0].size(), Some(whole.len() as i64));
    let uploads = c.list_multipart_uploads().bucket("mpu").send().await.unwrap();
    assert!(uploads.uploads().is_empty());
    // the upload is finished
    expect_err(
        c.list_parts()
            .bucket("mpu")
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await,
        "NoSuchUpload",
        404,
    );
}

#[tokio::test]
async fn multipart_errors_and_abort() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "mperr").await;
    let small = [pattern(64 * KIB, 51), pattern(64 * KIB, 52)];

    let upload = |key: &'static str| {
        let c = c.clone();
        async move {
            c.create_multipart_upload()
                .bucket("mperr")
                .key(key)
                .send()
                .await
                .unwrap()
                .upload_id()
                .unwrap()
                .to_string()
        }
    };
    let put_part = |key: &'static str, id: String, n: i32, data: Vec<u8>| {
        let c = c.clone();
        async move {
            c.upload_part()
                .bucket("mperr")
                .key(key)
                .upload_id(id)
                .part_number(n)
                .body(ByteStream::from(data))
                .send()
                .await
                .unwrap()
                .e_tag()
                .unwrap()
                .to_string()
        }
    };

    // a part other than the last below 5 MiB
    let id = upload("small").await;
    let e1 = put_part("small", id.clone(), 1, small[0].clone()).await;
    let e2 = put_part("small", id.clone(), 2, small[1].clone()).await;
    expect_err(
        c.complete_multipart_upload()
            .bucket("mperr")
            .key("small")
            .upload_id(&id)
            .multipart_upload(completed(&[(1, &e1), (2, &e2)]))
            .send()
            .await,
        "EntityTooSmall",
        400,
    );
    // no parts at all
    expect_err(
        c.complete_multipart_upload()
            .bucket("mperr")
            .key("small")
            .upload_id(&id)
            .multipart_upload(CompletedMultipartUpload::builder().build())
            .send()
            .await,
        "MalformedXML",
        400,
    );
    // the last part alone may be small: complete with part 2 only
    let done = c
        .complete_multipart_upload()
        .bucket("mperr")
        .key("small")
        .upload_id(&id)
        .multipart_upload(completed(&[(2, &e2)]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        done.e_tag(),
        Some(format!("\"{}-1\"", md5_hex(&md5_bytes(&small[1]))).as_str())
    );
    assert_bytes(
        &get_bytes(&c, "mperr", "small").await,
        &small[1],
        "single-part upload",
    );

    // uploading a part number again replaces it
    let id = upload("redo").await;
    put_part("redo", id.clone(), 1, b"old content".to_vec()).await;
    let new_etag = put_part("redo", id.clone(), 1, b"new content".to_vec()).await;
    let parts = c
        .list_parts()
        .bucket("mperr")
        .key("redo")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(parts.parts().len(), 1);
    assert_eq!(parts.parts()[0].e_tag(), Some(new_etag.as_str()));
    assert_eq!(parts.parts()[0].size(), Some(11));
    c.complete_multipart_upload()
        .bucket("mperr")
        .key("redo")
        .upload_id(&id)
        .multipart_upload(completed(&[(1, &new_etag)]))
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "mperr", "redo").await, b"new content");

    // part numbers outside 1..=10000
    let id = upload("aborted").await;
    for n in [0, 10_001] {
        expect_err(
            c.upload_part()
                .bucket("mperr")
                .key("aborted")
                .upload_id(&id)
                .part_number(n)
                .body(ByteStream::from_static(b"x"))
                .send()
                .await,
            "InvalidArgument",
            400,
        );
    }

    // abort: the upload and its parts are gone
    let etag = put_part("aborted", id.clone(), 1, small[0].clone()).await;
    let uploads = c.list_multipart_uploads().bucket("mperr").send().await.unwrap();
    assert_eq!(uploads.uploads().len(), 1);
    let rec = Recorder::default();
    c.abort_multipart_upload()
        .bucket("mperr")
        .key("aborted")
        .upload_id(&id)
        .customize()
        .interceptor(rec.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(rec.status(), 204);
    let uploads = c.list_multipart_uploads().bucket("mperr").send().await.unwrap();
    assert!(uploads.uploads().is_empty());
    expect_err(
        c.upload_part()
            .bucket("mperr")
            .key("aborted")
            .upload_id(&id)
            .part_number(2)
            .body(ByteStream::from_static(b"late"))
            .send()
            .await,
        "NoSuchUpload",
        404,
    );
    expect_err(
        c.list_parts()
            .bucket("mperr")
            .key("aborted")
            .upload_id(&id)
            .send()
            .await,
        "NoSuchUpload",
        404,
    );
    expect_err(
        c.complete_multipart_upload()
            .bucket("mperr")
            .key("aborted")
            .upload_id(&id)
            .multipart_upload(completed(&[(1, &etag)]))
            .send()
            .await,
        "NoSuchUpload",
        404,
    );
    expect_err(
        c.abort_multipart_upload()
            .bucket("mperr")
            .key("aborted")
            .upload_id(&id)
            .send()
            .await,
        "NoSuchUpload",
        404,
    );
    expect_err(
        c.head_object().bucket("mperr").key("aborted").send().await,
        "NotFound",
        404,
    );
    // an upload id of another key is not valid for this key
    let other = upload("other").await;
    expect_err(
        c.list_parts()
            .bucket("mperr")
            .key("small")
            .upload_id(&other)
            .send()
            .await,
        "NoSuchUpload",
        404,
    );
    expect_err(
        c.create_multipart_upload()
            .bucket("nobucket")
            .key("k")
            .send()
            .await,
        "NoSuchBucket",
        404,
    );

    // ListMultipartUploads filters by prefix and pages with markers
    let more = [upload("p/1").await, upload("p/2").await, upload("p/3").await];
    let out = c
        .list_multipart_uploads()
        .bucket("mperr")
        .prefix("p/")
        .max_uploads(2)
        .send()
        .await
        .unwrap();
    let got: Vec<_> = out.uploads().iter().map(|u| u.key().unwrap()).collect();
    assert_eq!(got, ["p/1", "p/2"]);
    assert_eq!(out.is_truncated(), Some(true));
    assert_eq!(out.next_key_marker(), Some("p/2"));
    assert_eq!(out.next_upload_id_marker(), Some(more[1].as_str()));
    let out = c
        .list_multipart_uploads()
        .bucket("mperr")
        .prefix("p/")
        .key_marker("p/2")
        .upload_id_marker(&more[1])
        .send()
        .await
        .unwrap();
    let got: Vec<_> = out
        .uploads()
        .iter()
        .map(|u| (u.key().unwrap(), u.upload_id().unwrap()))
        .collect();
    assert_eq!(got, [("p/3", more[2].as_str())]);
    assert_eq!(out.is_truncated(), Some(false));
}

#[tokio::test]
async fn upload_part_copy_with_ranges() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "upc").await;
    let src = pattern(5 * MIB + 2000, 61);
    let src_etag = put(&c, "upc", "source", &src).await.e_tag().unwrap().to_string();
    let id = c
        .create_multipart_upload()
        .bucket("upc")
        .key("assembled")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();

    // part 1: 5 MiB from offset 1000 (crosses stripes); part 2: 100 bytes near the start
    let r1 = (1000, 1000 + 5 * MIB); // [start, end)
    let r2 = (10, 110);
    let mut etags = Vec::new();
    for (n, (a, b)) in [(1, r1), (2, r2)] {
        let out = c
            .upload_part_copy()
            .bucket("upc")
            .key("assembled")
            .upload_id(&id)
            .part_number(n)
            .copy_source("upc/source")
            .copy_source_range(format!("bytes={}-{}", a, b - 1))
            .copy_source_if_match(&src_etag)
            .send()
            .await
            .unwrap();
        let result = out.copy_part_result().unwrap();
        assert_eq!(result.e_tag(), Some(quoted_md5(&src[a..b]).as_str()), "part {n}");
        assert!(result.last_modified().is_some());
        etags.push(result.e_tag().unwrap().to_string());
    }
    // failing copies
    expect_err(
        c.upload_part_copy()
            .bucket("upc")
            .key("assembled")
            .upload_id(&id)
            .part_number(3)
            .copy_source("upc/source")
            .copy_source_range(format!("bytes=0-{}", src.len()))
            .send()
            .await,
        "InvalidRange",
        416,
    );
    expect_err(
        c.upload_part_copy()
            .bucket("upc")
            .key("assembled")
            .upload_id(&id)
            .part_number(3)
            .copy_source("upc/source")
            .copy_source_if_match("\"00000000000000000000000000000000\"")
            .send()
            .await,
        "PreconditionFailed",
        412,
    );
    expect_err(
        c.upload_part_copy()
            .bucket("upc")
            .key("assembled")
            .upload_id(&id)
            .part_number(3)
            .copy_source("upc/missing")
            .send()
            .await,
        "NoSuchKey",
        404,
    );
    let parts = c
        .list_parts()
        .bucket("upc")
        .key("assembled")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    let sizes: Vec<_> = parts
        .parts()
        .iter()
        .map(|p| (p.part_number().unwrap(), p.size().unwrap()))
        .collect();
    assert_eq!(sizes, [(1, 5 * MIB as i64), (2, 100)]);

    c.complete_multipart_upload()
        .bucket("upc")
        .key("assembled")
        .upload_id(&id)
        .multipart_upload(completed(&[(1, &etags[0]), (2, &etags[1])]))
        .send()
        .await
        .unwrap();
    let want = [&src[r1.0..r1.1], &src[r2.0..r2.1]].concat();
    assert_bytes(
        &get_bytes(&c, "upc", "assembled").await,
        &want,
        "assembled by copy",
    );
    // the source is untouched
    assert_bytes(&get_bytes(&c, "upc", "source").await, &src, "copy source");
}

// ---- checksums ----------------------------------------------------------------------------

#[tokio::test]
async fn additional_checksums_round_trip() {
    // the reference implementations agree with the published check values
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc64nvme(b"123456789"), 0xAE8B_1486_0A79_9888);
    assert_eq!(
        hex::encode(sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );

    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "sums").await;
    for (size, seed) in [(100, 71), (300 * KIB + 3, 72)] {
        let data = pattern(size, seed);
        let cases = [
            (ChecksumAlgorithm::Crc32, b64(&crc32(&data).to_be_bytes())),
            (ChecksumAlgorithm::Crc32C, b64(&crc32c(&data).to_be_bytes())),
            (ChecksumAlgorithm::Sha256, b64(&sha256(&data))),
            (ChecksumAlgorithm::Crc64Nvme, b64(&crc64nvme(&data).to_be_bytes())),
        ];
        for (algo, want) in cases {
            let key = format!("{}-{size}", algo.as_str());
            let pick = |v: [Option<&str>; 4]| -> Option<String> {
                let i = match algo {
                    ChecksumAlgorithm::Crc32 => 0,
                    ChecksumAlgorithm::Crc32C => 1,
                    ChecksumAlgorithm::Sha256 => 2,
                    _ => 3,
                };
                v[i].map(str::to_string)
            };
            let out = c
                .put_object()
                .bucket("sums")
                .key(&key)
                .checksum_algorithm(algo.clone())
                .body(ByteStream::from(data.clone()))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{key}: {e:?}"));
            let put_sum = pick([
                out.checksum_crc32(),
                out.checksum_crc32_c(),
                out.checksum_sha256(),
                out.checksum_crc64_nvme(),
            ]);
            assert_eq!(put_sum.as_deref(), Some(want.as_str()), "PUT {key}");
            assert_eq!(out.e_tag(), Some(quoted_md5(&data).as_str()));

            let got = c
                .get_object()
                .bucket("sums")
                .key(&key)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await
                .unwrap();
            let get_sum = pick([
                got.checksum_crc32(),
                got.checksum_crc32_c(),
                got.checksum_sha256(),
                got.checksum_crc64_nvme(),
            ]);
            assert_eq!(get_sum.as_deref(), Some(want.as_str()), "GET {key}");
            assert_eq!(
                got.checksum_type().map(|t| t.as_str()),
                Some("FULL_OBJECT"),
                "GET {key}"
            );
            // the SDK validates the body against the returned checksum while reading
            assert_bytes(&got.body.collect().await.unwrap().into_bytes(), &data, &key);

            let head = c
                .head_object()
                .bucket("sums")
                .key(&key)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await
                .unwrap();
            let head_sum = pick([
                head.checksum_crc32(),
                head.checksum_crc32_c(),
                head.checksum_sha256(),
                head.checksum_crc64_nvme(),
            ]);
            assert_eq!(head_sum.as_deref(), Some(want.as_str()), "HEAD {key}");
        }
    }

    // a checksum sent as a header (not a trailer) with the right value is accepted
    let data = b"header checksum".to_vec();
    let out = c
        .put_object()
        .bucket("sums")
        .key("by-header")
        .checksum_crc32_c(b64(&crc32c(&data).to_be_bytes()))
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.checksum_crc32_c(),
        Some(b64(&crc32c(&data).to_be_bytes()).as_str())
    );
}

#[tokio::test]
async fn checksum_and_content_md5_mismatches() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "bad").await;
    let data = pattern(10 * KIB, 81);

    expect_err(
        c.put_object()
            .bucket("bad")
            .key("crc32")
            .checksum_crc32("AAAAAA==")
            .body(ByteStream::from(data.clone()))
            .send()
            .await,
        "BadDigest",
        400,
    );
    expect_err(
        c.put_object()
            .bucket("bad")
            .key("sha256")
            .checksum_sha256(b64(&[0u8; 32]))
            .body(ByteStream::from(data.clone()))
            .send()
            .await,
        "BadDigest",
        400,
    );
    // a large body (striped, not inline) too
    let big = pattern(2 * MIB + 1, 82);
    expect_err(
        c.put_object()
            .bucket("bad")
            .key("crc32c-big")
            .checksum_crc32_c(b64(&crc32c(b"something else").to_be_bytes()))
            .body(ByteStream::from(big))
            .send()
            .await,
        "BadDigest",
        400,
    );
    expect_err(
        c.put_object()
            .bucket("bad")
            .key("md5")
            .content_md5(b64(&md5_bytes(b"other data")))
            .body(ByteStream::from(data.clone()))
            .send()
            .await,
        "BadDigest",
        400,
    );
    expect_err(
        c.put_object()
            .bucket("bad")
            .key("md5-malformed")
            .content_md5("not-an-md5")
            .body(ByteStream::from(data.clone()))
            .send()
            .await,
        "InvalidDigest",
        400,
    );
    // nothing was stored by the refused writes
    let listed = c.list_objects_v2().bucket("bad").send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0), "{:?}", listed.contents());

    // a correct Content-MD5 is accepted
    let out = c
        .put_object()
        .bucket("bad")
        .key("md5-ok")
        .content_md5(b64(&md5_bytes(&data)))
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.e_tag(), Some(quoted_md5(&data).as_str()));
    // a failed overwrite keeps the previous content
    expect_err(
        c.put_object()
            .bucket("bad")
            .key("md5-ok")
            .checksum_crc32("AAAAAA==")
            .body(ByteStream::from_static(b"replacement"))
            .send()
            .await,
        "BadDigest",
        400,
    );
    assert_bytes(
        &get_bytes(&c, "bad", "md5-ok").await,
        &data,
        "after failed overwrite",
    );

    // UploadPart verifies checksums as well
    let id = c
        .create_multipart_upload()
        .bucket("bad")
        .key("mp")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    expect_err(
        c.upload_part()
            .bucket("bad")
            .key("mp")
            .upload_id(&id)
            .part_number(1)
            .checksum_crc32("AAAAAA==")
            .body(ByteStream::from(data.clone()))
            .send()
            .await,
        "BadDigest",
        400,
    );
    let parts = c
        .list_parts()
        .bucket("bad")
        .key("mp")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert!(parts.parts().is_empty());
}

// ---- authentication -----------------------------------------------------------------------

#[tokio::test]
async fn wrong_credentials_are_rejected() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "auth").await;

    let wrong_secret = common::client_for(&server.endpoint(), common::ACCESS_KEY, "not-the-secret-key");
    expect_err(
        wrong_secret.list_buckets().send().await,
        "SignatureDoesNotMatch",
        403,
    );
    expect_err(
        wrong_secret
            .put_object()
            .bucket("auth")
            .key("k")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        "SignatureDoesNotMatch",
        403,
    );
    expect_err(
        wrong_secret.get_object().bucket("auth").key("k").send().await,
        "SignatureDoesNotMatch",
        403,
    );

    let unknown = common::client_for(&server.endpoint(), "NOSUCHACCESSKEY", common::SECRET_KEY);
    expect_err(unknown.list_buckets().send().await, "InvalidAccessKeyId", 403);
    expect_err(
        unknown.create_bucket().bucket("intruder").send().await,
        "InvalidAccessKeyId",
        403,
    );

    // nothing was written by the refused requests
    assert_eq!(
        c.list_objects_v2()
            .bucket("auth")
            .send()
            .await
            .unwrap()
            .key_count(),
        Some(0)
    );
    let names: Vec<_> = c
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(String::from))
        .collect();
    assert_eq!(names, ["auth"]);
}

#[tokio::test]
async fn anonymous_requests_get_access_denied_xml() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "private").await;
    put(&c, "private", "secret.txt", b"top secret").await;

    let req = format!(
        "GET /private/secret.txt HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let resp = common::raw_exchange(server.addr, req.as_bytes()).expect("a response");
    assert_eq!(resp.status, 403);
    assert!(
        resp.header("content-type")
            .is_some_and(|t| t.starts_with("application/xml")),
        "{:?}",
        resp.headers
    );
    let body = resp.text();
    assert!(!body.contains("top secret"));
    assert_eq!(xml_field(&body, "Code"), Some("AccessDenied"), "{body}");
    assert!(
        xml_field(&body, "Message").is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(
        xml_field(&body, "Resource"),
        Some("/private/secret.txt"),
        "{body}"
    );
    let request_id = xml_field(&body, "RequestId").expect("RequestId");
    assert!(!request_id.is_empty());
    assert_eq!(
        resp.header("x-amz-request-id"),
        Some(request_id),
        "{:?}",
        resp.headers
    );
    assert_eq!(
        resp.header("content-length").map(|l| l.parse::<usize>().unwrap()),
        Some(resp.body.len())
    );

    // also for the service root, for writes, and through the small helper
    let (code, body) = common::raw_request(
        server.addr,
        &format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        ),
    )
    .unwrap();
    assert_eq!(code, 403);
    assert_eq!(xml_field(&body, "Code"), Some("AccessDenied"), "{body}");
    let resp = common::raw_exchange(
        server.addr,
        format!(
            "PUT /private/new HTTP/1.1\r\nHost: {}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            server.addr
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(resp.status, 403);
    assert_eq!(xml_field(&resp.text(), "Code"), Some("AccessDenied"));
    expect_err(
        c.head_object().bucket("private").key("new").send().await,
        "NotFound",
        404,
    );

    // health endpoints need no credentials
    assert_eq!(
        common::http_get(server.addr, "/health/live").map(|(s, _)| s),
        Some(200)
    );
    assert_eq!(
        common::http_get(server.addr, "/health/ready").map(|(s, _)| s),
        Some(200)
    );
}

#[tokio::test]
async fn presigned_urls() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "share").await;
    let data = pattern(300 * KIB, 91);
    put(&c, "share", "file.bin", &data).await;

    // GET
    let p = c
        .get_object()
        .bucket("share")
        .key("file.bin")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    assert!(p.uri().contains("X-Amz-Signature="), "{}", p.uri());
    let resp = common::raw_exchange(server.addr, &presigned_raw(&server, &p, "", b"")).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("etag"), Some(quoted_md5(&data).as_str()));
    assert_bytes(&resp.body, &data, "presigned GET");

    // the same URL with a Range header (not signed, allowed)
    let resp = common::raw_exchange(
        server.addr,
        &presigned_raw(&server, &p, "Range: bytes=100-199\r\n", b""),
    )
    .unwrap();
    assert_eq!(resp.status, 206);
    assert_eq!(
        resp.header("content-range"),
        Some(format!("bytes 100-199/{}", data.len()).as_str())
    );
    assert_bytes(&resp.body, &data[100..200], "presigned ranged GET");

    // tampering with the signed URL breaks the signature
    let tampered = String::from_utf8(presigned_raw(&server, &p, "", b""))
        .unwrap()
        .replacen("/share/file.bin", "/share/other.bin", 1);
    let resp = common::raw_exchange(server.addr, tampered.as_bytes()).unwrap();
    assert_eq!(resp.status, 403);
    assert_eq!(
        xml_field(&resp.text(), "Code"),
        Some("SignatureDoesNotMatch"),
        "{}",
        resp.text()
    );

    // PUT
    let p = c
        .put_object()
        .bucket("share")
        .key("uploaded.txt")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let body = b"uploaded through a presigned URL";
    let resp = common::raw_exchange(server.addr, &presigned_raw(&server, &p, "", body)).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("etag"), Some(quoted_md5(body).as_str()));
    assert_eq!(get_bytes(&c, "share", "uploaded.txt").await, body);

    // an expired URL is refused
    let p = c
        .get_object()
        .bucket("share")
        .key("file.bin")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(1)).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = common::raw_exchange(server.addr, &presigned_raw(&server, &p, "", b"")).unwrap();
    assert_eq!(resp.status, 403);
    let text = resp.text();
    assert_eq!(xml_field(&text, "Code"), Some("AccessDenied"), "{text}");
    assert!(!resp.body.starts_with(&data[..16]));
}

// ---- virtual-hosted-style addressing --------------------------------------------------------

/// `*.localhost` does not resolve on every machine, so the SDK addresses
/// `http://BUCKET.s3.local:PORT` (signing that Host) while an interceptor connects to the
/// server's real address.
fn vhost_client(server: &Server, port: u16, hosts: Arc<Mutex<Vec<String>>>) -> Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(format!("http://s3.local:{port}"))
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            common::ACCESS_KEY,
            common::SECRET_KEY,
            None,
            None,
            "test",
        ))
        .force_path_style(false)
        .interceptor(ConnectTo {
            addr: server.addr,
            hosts,
        })
        .build();
    Client::from_conf(conf)
}

#[tokio::test]
async fn virtual_hosted_style_requests_with_the_sdk() {
    let server = Server::start_with(4, &["--domain", "s3.local"], &[]);
    let port = server.addr.port();
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let vc = vhost_client(&server, port, hosts.clone());

    // bucket operations through the bucket's own host name
    vc.create_bucket().bucket("vbucket").send().await.unwrap();
    let data = pattern(200 * KIB, 101);
    vc.put_object()
        .bucket("vbucket")
        .key("dir/v.bin")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    let got = vc
        .get_object()
        .bucket("vbucket")
        .key("dir/v.bin")
        .send()
        .await
        .unwrap();
    assert_bytes(
        &got.body.collect().await.unwrap().into_bytes(),
        &data,
        "virtual-hosted GET",
    );
    let listed = vc.list_objects_v2().bucket("vbucket").send().await.unwrap();
    let keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["dir/v.bin"]);
    // the service endpoint itself (no bucket in the host) lists buckets
    let names: Vec<_> = vc
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(String::from))
        .collect();
    assert_eq!(names, ["vbucket"]);
    {
        let hosts = hosts.lock().unwrap();
        let want_bucket_host = format!("vbucket.s3.local:{port}");
        assert!(
            hosts.iter().filter(|h| **h == want_bucket_host).count() >= 4,
            "{hosts:?}"
        );
        assert_eq!(
            hosts.last().map(String::as_str),
            Some(format!("s3.local:{port}").as_str())
        );
    }

    // path-style clients keep working on the same server: by IP address ...
    let pc = server.client();
    assert_bytes(
        &get_bytes(&pc, "vbucket", "dir/v.bin").await,
        &data,
        "path-style by IP",
    );
    // ... and through the base domain
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(format!("http://s3.local:{port}"))
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            common::ACCESS_KEY,
            common::SECRET_KEY,
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .interceptor(ConnectTo {
            addr: server.addr,
            hosts: Default::default(),
        })
        .build();
    let named = Client::from_conf(conf);
    assert_bytes(
        &get_bytes(&named, "vbucket", "dir/v.bin").await,
        &data,
        "path-style by name",
    );
    expect_err(
        vc.get_object().bucket("vbucket").key("missing").send().await,
        "NoSuchKey",
        404,
    );
    expect_err(
        vc.get_object().bucket("nobucket").key("k").send().await,
        "NoSuchBucket",
        404,
    );
}

#[tokio::test]
async fn virtual_hosted_style_routing_raw() {
    let server = Server::start_with(4, &["--domain", "s3.local"], &[]);
    let c = server.client();
    create_bucket(&c, "vraw").await;
    put(&c, "vraw", "key.txt", b"hello").await;

    // Unsigned requests get as far as authentication (AccessDenied rather than
    // InvalidBucketName or NoSuchBucket), so each Host was routed to a valid bucket:
    // virtual-hosted with and without a port, and path-style through the base domain, through
    // another host name, and through the IP address.
    let port = server.addr.port();
    let cases = [
        ("vraw.s3.local".to_string(), "/key.txt"),
        (format!("vraw.s3.local:{port}"), "/key.txt"),
        (format!("VRAW.S3.LOCAL:{port}"), "/key.txt"),
        (format!("s3.local:{port}"), "/vraw/key.txt"),
        (format!("localhost:{port}"), "/vraw/key.txt"),
        (server.addr.to_string(), "/vraw/key.txt"),
    ];
    for (host, path) in cases {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let resp = common::raw_exchange(server.addr, req.as_bytes()).unwrap();
        let text = resp.text();
        assert_eq!(resp.status, 403, "Host: {host}: {text}");
        assert_eq!(
            xml_field(&text, "Code"),
            Some("AccessDenied"),
            "Host: {host}: {text}"
        );
        assert!(!text.contains("hello"));
    }
}

// ---- unsupported operations ---------------------------------------------------------------

#[tokio::test]
async fn unsupported_operations_answer_not_implemented() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "plain").await;
    put(&c, "plain", "k", b"v").await;

    let started = std::time::Instant::now();
    expect_err(
        c.get_bucket_policy().bucket("plain").send().await,
        "NotImplemented",
        501,
    );
    expect_err(
        c.put_bucket_versioning()
            .bucket("plain")
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await,
        "NotImplemented",
        501,
    );
    expect_err(
        c.get_object_tagging().bucket("plain").key("k").send().await,
        "NotImplemented",
        501,
    );
    expect_err(
        c.get_bucket_acl().bucket("plain").send().await,
        "NotImplemented",
        501,
    );
    // GetObject of a specific version / part number is refused rather than ignored
    expect_err(
        c.get_object()
            .bucket("plain")
            .key("k")
            .part_number(1)
            .send()
            .await,
        "NotImplemented",
        501,
    );
    assert!(started.elapsed() < Duration::from_secs(20), "answers promptly");
    // the server is still healthy afterwards
    assert_eq!(get_bytes(&c, "plain", "k").await, b"v");
}

#[tokio::test]
async fn single_put_larger_than_5_gib_is_refused() {
    let server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("big").send().await.unwrap();
    let p = c
        .put_object()
        .bucket("big")
        .key("huge")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    // announce 6 GiB but send nothing: the server must refuse from the header alone
    let request = String::from_utf8(presigned_raw(&server, &p, "", b""))
        .unwrap()
        .replace("Content-Length: 0\r\n", "Content-Length: 6442450944\r\n");
    let resp = common::raw_exchange(server.addr, request.as_bytes()).unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(
        resp.text().contains("<Code>EntityTooLarge</Code>"),
        "{}",
        resp.text()
    );
    let e = c
        .head_object()
        .bucket("big")
        .key("huge")
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::status(&e), 404);
}

/// A GET that started before an overwrite (or delete) returns the old version whole, even
/// for a multipart object whose later parts the reader has not opened yet.
#[tokio::test]
async fn get_in_flight_survives_overwrite_and_delete() {
    let server = Server::start(4);
    let c = server.client();
    create_bucket(&c, "race").await;
    let parts = [pattern(5 * MIB, 71), pattern(5 * MIB, 72), pattern(3 * MIB, 73)];
    let whole: Vec<u8> = parts.concat();
    for action in ["overwrite", "delete"] {
        let up = c
            .create_multipart_upload()
            .bucket("race")
            .key("obj")
            .send()
            .await
            .unwrap();
        let id = up.upload_id().unwrap();
        let mut done = Vec::new();
        for (i, data) in parts.iter().enumerate() {
            let n = i as i32 + 1;
            let out = c
                .upload_part()
                .bucket("race")
                .key("obj")
                .upload_id(id)
                .part_number(n)
                .body(ByteStream::from(data.clone()))
                .send()
                .await
                .unwrap();
            done.push(
                CompletedPart::builder()
                    .part_number(n)
                    .e_tag(out.e_tag().unwrap())
                    .build(),
            );
        }
        c.complete_multipart_upload()
            .bucket("race")
            .key("obj")
            .upload_id(id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
            .send()
            .await
            .unwrap();

        let mut body = c
            .get_object()
            .bucket("race")
            .key("obj")
            .send()
            .await
            .unwrap()
            .body;
        let mut got = body.next().await.unwrap().unwrap().to_vec();
        match action {
            "overwrite" => {
                put(&c, "race", "obj", b"new content").await;
            }
            _ => {
                c.delete_object().bucket("race").key("obj").send().await.unwrap();
            }
        }
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_bytes(&got, &whole, action);
    }
}

#[tokio::test]
async fn objects_without_a_type_are_binary_octet_stream() {
    let server = Server::start(1);
    let c = server.client();
    create_bucket(&c, "types").await;
    // a presigned PUT sends exactly the headers we give it: no Content-Type
    let p = c
        .put_object()
        .bucket("types")
        .key("untyped")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let resp = common::raw_exchange(server.addr, &presigned_raw(&server, &p, "", b"raw bytes")).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = c
        .get_object()
        .bucket("types")
        .key("untyped")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("binary/octet-stream"));
    let head = c
        .head_object()
        .bucket("types")
        .key("untyped")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("binary/octet-stream"));
}
