//! Durability of a real single-node server: crashes (SIGKILL) under concurrent writes,
//! graceful shutdown, bit rot and lost shards repaired by reads and by the scrubber, a lost
//! drive, and bounded memory for very large objects.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use common::{Server, content_for, get_bytes, md5_hex, no_retry, pattern};
use md5::{Digest, Md5};

/// Objects up to this size live inside the metadata records (no shard files).
const INLINE_MAX: usize = 128 * 1024;
const MIB: usize = 1024 * 1024;

// ---- helpers ------------------------------------------------------------------------------

async fn put_bytes(c: &Client, bucket: &str, key: &str, data: Vec<u8>) {
    let md5 = md5_hex(&data);
    let out = c
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {key}: {e:?}"));
    assert_eq!(out.e_tag(), Some(format!("\"{md5}\"").as_str()), "ETag of {key}");
}

/// Every key of a bucket with its listed size (follows continuation tokens).
async fn list_all(c: &Client, bucket: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = c
            .list_objects_v2()
            .bucket(bucket)
            .max_keys(250)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("ListObjectsV2");
        for o in page.contents() {
            let key = o.key().expect("listed key").to_string();
            assert!(
                out.insert(key.clone(), o.size().expect("listed size")).is_none(),
                "{key} listed twice"
            );
        }
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => {
                assert_ne!(page.is_truncated(), Some(true), "truncated page without a token");
                break;
            }
        }
    }
    out
}

/// GETs every key concurrently and checks it against `content_for`; returns the failures.
async fn verify_all(c: &Client, bucket: &str, keys: &[String]) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for group in keys.chunks(keys.len().div_ceil(8).max(1)) {
        let (c, bucket, group) = (c.clone(), bucket.to_string(), group.to_vec());
        tasks.spawn(async move {
            let mut failures = Vec::new();
            for key in group {
                match get_bytes(&c, &bucket, &key).await {
                    Ok(got) => {
                        let want = content_for(&key);
                        if got != want {
                            failures.push(format!(
                                "{key}: {} bytes read, {} expected, content differs",
                                got.len(),
                                want.len()
                            ));
                        }
                    }
                    Err(e) => failures.push(e),
                }
            }
            failures
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        failures.extend(r.expect("verifier task"));
    }
    failures
}

/// Names of the shard files of one drive.
fn shard_names(server: &Server, drive: usize) -> BTreeSet<String> {
    server
        .shard_files(drive)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Files anywhere under the drives that a finished operation must not leave behind:
/// repair temporaries and `*.tmp` files.
fn leftovers(server: &Server) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains(".repair-") || name.ends_with(".tmp") {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    for d in &server.drives {
        walk(d, &mut out);
    }
    out
}

/// Polls `check` until it returns `Ok`, or panics with its last error after `timeout`.
async fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{what}: still failing after {timeout:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The one shard file of drive `d` (the bucket holds a single non-inline object).
fn only_shard(server: &Server, d: usize) -> PathBuf {
    let files = server.shard_files(d);
    assert_eq!(files.len(), 1, "drive {d}: {files:?}");
    files[0].clone()
}

/// Flips `n` bytes in the middle of a file.
fn flip_middle(path: &Path, n: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let at = len / 2;
    let mut buf = vec![0u8; n];
    f.read_exact_at(&mut buf, at).unwrap();
    for b in &mut buf {
        *b ^= 0xA5;
    }
    f.write_all_at(&buf, at).unwrap();
    f.sync_all().unwrap();
}

/// Checks a shard file's length for a `size`-byte object under `data` data shards: the
/// object's `data`-th part (rounded up) plus one 4-byte CRC32C per frame, frames being at
/// least 64 KiB; so at most a small fraction more than that part, whatever the stripe size.
fn check_shard_len(len: u64, size: u64, data: u64) {
    let part = size.div_ceil(data);
    let max_overhead = 4 * part.div_ceil(64 * 1024) + 8 * data;
    assert!(
        len >= part && len <= part + max_overhead,
        "shard file of {len} bytes for a {size}-byte object (expected {part}..={})",
        part + max_overhead
    );
}

/// For an object of a few MiB under 2+2: which drive holds which data shard (parity shards
/// give `None`). The code is systematic: data shard 0 starts with the object's first bytes,
/// data shard 1 with the bytes right after the first chunk, wherever that is.
fn shard_index_by_drive(server: &Server, object: &[u8]) -> Vec<Option<usize>> {
    const PROBE: usize = 256;
    (0..server.drives.len())
        .map(|d| {
            let file = std::fs::read(only_shard(server, d)).unwrap();
            let head = &file[..PROBE];
            match object.windows(PROBE).position(|w| w == head) {
                Some(0) => Some(0),
                Some(at) if at >= 4096 => Some(1),
                _ => None,
            }
        })
        .collect()
}

/// A request body generated on the fly: `len` bytes of `pattern` in chunks, hashed (MD5)
/// as it is produced, optionally pausing before each chunk.
struct GenBody {
    remaining: u64,
    chunk: usize,
    index: u64,
    seed: u64,
    md5: Arc<Mutex<Md5>>,
    produced: Arc<AtomicU64>,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl GenBody {
    fn new(len: u64, chunk: usize, seed: u64, delay: Option<Duration>) -> Self {
        Self {
            remaining: len,
            chunk,
            index: 0,
            seed,
            md5: Arc::new(Mutex::new(Md5::new())),
            produced: Arc::new(AtomicU64::new(0)),
            delay,
            sleep: None,
        }
    }
}

impl http_body::Body for GenBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if let Some(delay) = this.delay {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let n = (this.chunk as u64).min(this.remaining) as usize;
        let data = pattern(n, this.seed ^ this.index.wrapping_mul(0x2545_F491_4F6C_DD1D));
        this.md5.lock().unwrap().update(&data);
        this.remaining -= n as u64;
        this.index += 1;
        this.produced.fetch_add(n as u64, Ordering::SeqCst);
        Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(data)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// GETs an object streaming, returning its size and hex MD5, never holding it in memory.
async fn get_md5(c: &Client, bucket: &str, key: &str) -> (u64, String) {
    let out = c.get_object().bucket(bucket).key(key).send().await.expect("GET");
    let mut body = out.body;
    let mut h = Md5::new();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("GET body");
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    (n, hex::encode(h.finalize()))
}

// ---- 1. crashes under concurrent writes -----------------------------------------------------

const SIZES: [usize; 3] = [1024, 200 * 1024, 2 * MIB + 17];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_during_concurrent_puts() {
    let mut server = Server::start(4);
    let bucket = "crash";
    server
        .client()
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let mut acked_all: Vec<String> = Vec::new();
    for cycle in 0..3 {
        let c = no_retry(&server.client());
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let killing = Arc::new(AtomicBool::new(false));
        let early_errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let interrupted = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut writers = Vec::new();
        for w in 0..16usize {
            let (c, acked, killing, early_errors, interrupted) = (
                c.clone(),
                acked.clone(),
                killing.clone(),
                early_errors.clone(),
                interrupted.clone(),
            );
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let size = SIZES[(w + i) % SIZES.len()];
                    let key = format!("c{cycle}/w{w:02}/{i:05}-{size}");
                    let data = content_for(&key);
                    let md5 = md5_hex(&data);
                    let sent = c
                        .put_object()
                        .bucket(bucket)
                        .key(&key)
                        .body(ByteStream::from(data))
                        .send()
                        .await;
                    match sent {
                        Ok(out) => {
                            assert_eq!(out.e_tag(), Some(format!("\"{md5}\"").as_str()), "{key}");
                            acked.lock().unwrap().push(key);
                        }
                        Err(e) => {
                            if !killing.load(Ordering::SeqCst) {
                                early_errors.lock().unwrap().push(format!("{key}: {e:?}"));
                            }
                            interrupted.lock().unwrap().push(key);
                            return;
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        killing.store(true, Ordering::SeqCst);
        server.kill9();
        for w in writers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("writer stops once the server is gone")
                .expect("writer task");
        }
        let early = early_errors.lock().unwrap().clone();
        assert!(early.is_empty(), "PUTs failed before the crash: {early:?}");
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(
            acked.len() >= 16,
            "cycle {cycle}: only {} PUTs acknowledged",
            acked.len()
        );
        acked_all.extend(acked.iter().cloned());

        server.restart();
        let c = server.client();
        let listed = list_all(&c, bucket).await;
        let missing: Vec<_> = acked_all.iter().filter(|k| !listed.contains_key(*k)).collect();
        assert!(missing.is_empty(), "acknowledged objects lost: {missing:?}");
        for (k, size) in &listed {
            assert_eq!(*size as usize, content_for(k).len(), "listed size of {k}");
        }
        let keys: Vec<String> = listed.keys().cloned().collect();
        let failures = verify_all(&c, bucket, &keys).await;
        assert!(
            failures.is_empty(),
            "listed objects that do not read back: {failures:?}"
        );
        // a write cut short is either complete (checked above) or absent, never an error
        let interrupted = std::mem::take(&mut *interrupted.lock().unwrap());
        for k in interrupted.iter().filter(|k| !listed.contains_key(*k)) {
            match c.get_object().bucket(bucket).key(k).send().await {
                Err(e) => assert_eq!(common::code(&e), "NoSuchKey", "{k}"),
                Ok(_) => panic!("{k} reads back but is not listed"),
            }
        }
        let in_flight = listed.len() - acked_all.len();
        let large = listed.values().filter(|s| **s as usize > INLINE_MAX).count();
        println!(
            "cycle {cycle}: {} acknowledged this cycle, {} listed in total ({in_flight} were in flight), \
             {large} with shard files",
            acked.len(),
            listed.len()
        );
        // every large object has exactly one shard file per drive (2+2 on 4 drives), and
        // nothing else is left: interrupted writes are swept at start
        eventually(Duration::from_secs(15), "shard files match the objects", || {
            let names: Vec<_> = (0..4).map(|d| shard_names(&server, d)).collect();
            for (d, n) in names.iter().enumerate() {
                if n.len() != large {
                    return Err(format!(
                        "drive {d} has {} shard files, {large} objects need them",
                        n.len()
                    ));
                }
                if n != &names[0] {
                    return Err(format!("drive {d} holds other shard files than drive 0"));
                }
                if let Some(bad) = n.iter().find(|s| !s.bytes().all(|b| b.is_ascii_hexdigit())) {
                    return Err(format!("drive {d}: unexpected file {bad}"));
                }
            }
            let left = leftovers(&server);
            if !left.is_empty() {
                return Err(format!("left behind: {left:?}"));
            }
            Ok(())
        })
        .await;
    }
}

/// Writes interrupted after their record reached only some drives (the crash window between
/// the per-drive commits) must leave the store consistent: an object whose data lives in
/// shard files stays readable (the shard files on the drives that missed the record are
/// still needed); a small inline object whose frames reached too few drives to be decoded
/// is not visible, and does not hide the acknowledged version it was replacing. The on-disk
/// state is produced exactly by restoring older metadata files on three of the four drives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn record_on_one_drive_after_crash() {
    let mut server = Server::start(4);
    let c = server.client();
    let b = "partial";
    c.create_bucket().bucket(b).send().await.unwrap();
    let (anchor, over) = ("anchor-1000".to_string(), format!("over-{}", 20 * 1024));
    put_bytes(&c, b, &anchor, content_for(&anchor)).await;
    put_bytes(&c, b, &over, content_for(&over)).await;
    server.kill9();
    let drives = server.drives.clone();
    let meta = |d: usize| drives[d].join(".ringstore").join("meta.redb");
    let saved: Vec<Vec<u8>> = (1..4).map(|d| std::fs::read(meta(d)).unwrap()).collect();

    server.restart();
    let c = server.client();
    let large = format!("large-{}", 2 * MIB + 17);
    let small = "small-1000".to_string();
    put_bytes(&c, b, &large, content_for(&large)).await;
    put_bytes(&c, b, &small, content_for(&small)).await;
    // a newer version of `over` with other content
    put_bytes(&c, b, &over, pattern(20 * 1024, 999)).await;
    server.kill9();
    // drives 1..3 lose the three records, as if the crash came right after drive 0 committed
    for (i, d) in (1..4).enumerate() {
        std::fs::write(meta(d), &saved[i]).unwrap();
        assert_eq!(
            server.shard_files(d).len(),
            1,
            "drive {d} holds the large object's shard"
        );
    }

    server.restart();
    // let the start-up sweep run
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = server.client();
    let listed = list_all(&c, b).await;
    println!(
        "listed after the interrupted commits: {:?}",
        listed.keys().collect::<Vec<_>>()
    );
    for k in [&anchor, &over, &large] {
        assert!(listed.contains_key(k), "{k} listed: {listed:?}");
    }
    let keys: Vec<String> = listed.keys().cloned().collect();
    // `over` must read back as its first, acknowledged, version
    let failures = verify_all(&c, b, &keys).await;
    assert!(failures.is_empty(), "{failures:?}");
    if !listed.contains_key(&small) {
        let e = c.get_object().bucket(b).key(&small).send().await.unwrap_err();
        assert_eq!(common::code(&e), "NoSuchKey");
    }
    // the read spreads the large object's record again; all four shards stay
    eventually(Duration::from_secs(10), "shards on every drive", || {
        let n: Vec<_> = (0..4).map(|d| server.shard_files(d).len()).collect();
        (n == [1, 1, 1, 1]).then_some(()).ok_or(format!("{n:?}"))
    })
    .await;
    // the same after one more crash and restart
    server.restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = server.client();
    assert_eq!(list_all(&c, b).await, listed);
    let failures = verify_all(&c, b, &keys).await;
    assert!(failures.is_empty(), "{failures:?}");
    let n: Vec<_> = (0..4).map(|d| server.shard_files(d).len()).collect();
    assert_eq!(n, [1, 1, 1, 1]);
    // a later write of the interrupted keys works normally
    put_bytes(&c, b, &small, content_for(&small)).await;
    put_bytes(&c, b, &over, content_for(&over)).await;
    let failures = verify_all(&c, b, &[small.clone(), over.clone()]).await;
    assert!(failures.is_empty(), "{failures:?}");
}

// ---- 2. graceful shutdown -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_sigterm() {
    const GRACE: u64 = 20;
    let grace = GRACE.to_string();
    let mut server = Server::start_with(4, &["--shutdown-grace", &grace], &[]);
    let c = no_retry(&server.client());
    c.create_bucket().bucket("term").send().await.unwrap();
    let len = 64 * MIB as u64;
    // 64 chunks of 1 MiB, 30 ms apart: about two seconds of upload
    let body = GenBody::new(len, MIB, 0x5157, Some(Duration::from_millis(30)));
    let (md5, produced) = (body.md5.clone(), body.produced.clone());
    let upload = {
        let c = c.clone();
        tokio::spawn(async move {
            c.put_object()
                .bucket("term")
                .key("big")
                .content_length(len as i64)
                .body(ByteStream::from_body_1_x(body))
                .send()
                .await
        })
    };
    while produced.load(Ordering::SeqCst) < 4 * MIB as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent_at_term = produced.load(Ordering::SeqCst);
    let t = Instant::now();
    let status = tokio::task::block_in_place(|| server.terminate());
    let took = t.elapsed();
    let result = upload.await.unwrap();
    println!(
        "SIGTERM after {} MiB of {} MiB; exit {status} after {took:?}; upload {}",
        sent_at_term / MIB as u64,
        len / MIB as u64,
        if result.is_ok() { "completed" } else { "failed" }
    );
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(GRACE),
        "exit took {took:?}, grace is {GRACE} s (the in-flight upload should have finished first)"
    );
    // the request was in flight when SIGTERM came: graceful shutdown lets it finish
    let out = result.expect("the in-flight upload completes during the grace period");
    let want = hex::encode(md5.lock().unwrap().clone().finalize());
    assert_eq!(out.e_tag(), Some(format!("\"{want}\"").as_str()));
    assert_eq!(produced.load(Ordering::SeqCst), len);

    server.restart();
    let c = server.client();
    assert_eq!(get_md5(&c, "term", "big").await, (len, want));
    let listed = list_all(&c, "term").await;
    assert_eq!(
        listed.into_iter().collect::<Vec<_>>(),
        vec![("big".to_string(), len as i64)]
    );
    assert!(leftovers(&server).is_empty());
}

// ---- 3. bit rot and lost shards, repaired after a read ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bit_rot_is_detected_and_repaired() {
    let mut server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("rot").send().await.unwrap();
    let big_key = format!("big-{}", 3 * MIB + 5);
    let small_key = format!("small-{}", 10 * 1024);
    let (big, small) = (content_for(&big_key), content_for(&small_key));
    put_bytes(&c, "rot", &big_key, big.clone()).await;
    put_bytes(&c, "rot", &small_key, small.clone()).await;

    let files: Vec<PathBuf> = (0..4).map(|d| only_shard(&server, d)).collect();
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for o in &originals {
        check_shard_len(o.len() as u64, big.len() as u64, 2);
    }
    // damage both data shards so that every stripe must be rebuilt from parity somewhere:
    // shard 0 rots in the middle, shard 1 disappears
    let shards = shard_index_by_drive(&server, &big);
    let d0 = shards
        .iter()
        .position(|s| *s == Some(0))
        .expect("a drive holds data shard 0");
    let d1 = shards
        .iter()
        .position(|s| *s == Some(1))
        .expect("a drive holds data shard 1");
    flip_middle(&files[d0], 64);
    std::fs::remove_file(&files[d1]).unwrap();
    assert_ne!(std::fs::read(&files[d0]).unwrap(), originals[d0]);

    assert!(
        get_bytes(&c, "rot", &big_key).await.unwrap() == big,
        "big object reads back"
    );
    assert!(
        get_bytes(&c, "rot", &small_key).await.unwrap() == small,
        "small object reads back"
    );

    eventually(Duration::from_secs(10), "damaged shards rewritten", || {
        for d in [d0, d1] {
            match std::fs::read(&files[d]) {
                Ok(now) if now == originals[d] => {}
                Ok(_) => return Err(format!("drive {d}: shard still differs")),
                Err(e) => return Err(format!("drive {d}: {e}")),
            }
        }
        Ok(())
    })
    .await;
    for d in 0..4 {
        assert_eq!(server.shard_files(d), vec![files[d].clone()], "drive {d}");
        assert!(std::fs::read(&files[d]).unwrap() == originals[d], "drive {d}");
    }
    assert!(leftovers(&server).is_empty(), "{:?}", leftovers(&server));

    // both survive a crash and a restart, and the repaired data is read without parity
    server.restart();
    let c = server.client();
    assert!(get_bytes(&c, "rot", &big_key).await.unwrap() == big);
    assert!(get_bytes(&c, "rot", &small_key).await.unwrap() == small);
    // with the data shards now intact, the parity shards alone also reproduce the object:
    // remove the two data shards again, which a read must survive
    server.kill9();
    std::fs::remove_file(&files[d0]).unwrap();
    std::fs::remove_file(&files[d1]).unwrap();
    server.restart();
    let c = server.client();
    assert!(get_bytes(&c, "rot", &big_key).await.unwrap() == big);
    eventually(Duration::from_secs(10), "removed shards rewritten", || {
        for d in [d0, d1] {
            if std::fs::read(&files[d]).ok().as_ref() != Some(&originals[d]) {
                return Err(format!("drive {d}: shard not restored"));
            }
        }
        Ok(())
    })
    .await;
    assert!(get_bytes(&c, "rot", &small_key).await.unwrap() == small);
}

// ---- 4. the scrubber repairs without reads --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrubber_repairs_without_reads() {
    let server = Server::start_with(4, &["--scrub-interval", "1"], &[]);
    let c = server.client();
    c.create_bucket().bucket("scrub").send().await.unwrap();
    let key = format!("obj-{}", 3 * MIB + 5);
    put_bytes(&c, "scrub", &key, content_for(&key)).await;
    let files: Vec<PathBuf> = (0..4).map(|d| only_shard(&server, d)).collect();
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    std::fs::remove_file(&files[2]).unwrap();
    flip_middle(&files[0], 16);
    let t = Instant::now();
    eventually(Duration::from_secs(15), "scrubber restores the shards", || {
        for d in [0, 2] {
            if std::fs::read(&files[d]).ok().as_ref() != Some(&originals[d]) {
                return Err(format!("drive {d}: shard not restored"));
            }
        }
        Ok(())
    })
    .await;
    println!(
        "scrubber restored a deleted and a corrupt shard in {:?}",
        t.elapsed()
    );
    for d in 0..4 {
        assert_eq!(server.shard_files(d), vec![files[d].clone()]);
        assert!(std::fs::read(&files[d]).unwrap() == originals[d], "drive {d}");
    }
    assert!(leftovers(&server).is_empty());
    assert!(get_bytes(&c, "scrub", &key).await.unwrap() == content_for(&key));
}

// ---- 5. a lost drive ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_drive_is_replaced_and_rebuilt() {
    let mut server = Server::start_with(4, &["--scrub-interval", "1"], &[]);
    let c = server.client();
    c.create_bucket().bucket("lost").send().await.unwrap();
    let keys: Vec<String> = (0..6)
        .map(|i| {
            format!(
                "obj{i}-{}",
                [1000, 10 * 1024, 200 * 1024, MIB, 3 * MIB + 5, 5 * MIB][i]
            )
        })
        .collect();
    for k in &keys {
        put_bytes(&c, "lost", k, content_for(k)).await;
    }
    let large = keys.iter().filter(|k| content_for(k).len() > INLINE_MAX).count();
    let drive_json = server.drives[2].join(".ringstore").join("drive.json");
    let old_id = std::fs::read_to_string(&drive_json).unwrap();
    server.kill9();
    std::fs::remove_dir_all(&server.drives[2]).unwrap();
    server.restart();
    let new_id = std::fs::read_to_string(&drive_json).unwrap();
    assert_eq!(
        old_id, new_id,
        "the empty drive takes over the lost drive's identity"
    );

    let c = server.client();
    let listed = list_all(&c, "lost").await;
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), keys);
    let failures = verify_all(&c, "lost", &keys).await;
    assert!(failures.is_empty(), "reads after losing a drive: {failures:?}");

    // the scrubber re-protects every object onto the replacement drive
    eventually(
        Duration::from_secs(20),
        "the replacement drive is rebuilt",
        || {
            let n = server.shard_files(2).len();
            (n == large)
                .then_some(())
                .ok_or(format!("{n} of {large} shard files"))
        },
    )
    .await;
    let on_new = server.shard_files(2).len();
    println!(
        "lost drive: {large} large objects; shard files on the replacement drive after scrubs: \
         {on_new}; on the others: {:?}",
        [0, 1, 3].map(|d| server.shard_files(d).len())
    );
    for d in [0, 1, 3] {
        assert_eq!(server.shard_files(d).len(), large, "drive {d} keeps its shards");
    }

    // new writes use the replacement drive
    let fresh = format!("fresh-{}", 2 * MIB + 17);
    put_bytes(&c, "lost", &fresh, content_for(&fresh)).await;
    for d in 0..4 {
        assert!(
            shard_names(&server, d).len() > if d == 2 { on_new } else { large },
            "drive {d} holds a shard of the new object"
        );
    }
    let mut all = keys.clone();
    all.push(fresh);
    server.restart();
    let failures = verify_all(&server.client(), "lost", &all).await;
    assert!(failures.is_empty(), "after restart: {failures:?}");
    assert!(leftovers(&server).is_empty());
}

// ---- 6. memory stays bounded for very large objects ------------------------------------

/// Streams a `size`-byte object in and out of one node with four drives under 3+1 (the
/// smallest footprint with parity on four drives: 4/3 of the object on disk).
async fn large_object_round_trip(size: u64) {
    let server = Server::start_with(4, &["--redundancy", "3+1"], &[]);
    let need = size / 3 * 4 + 512 * MIB as u64;
    let (_, free) = ringstore_store::fs_usage(&server.drives[0]).expect("df reports free space");
    assert!(
        free >= need,
        "this test stores {} MiB (a {} MiB object under 3+1) but the temporary folder's file \
         system has only {} MiB free; set TMPDIR to a larger one",
        need / MIB as u64,
        size / MIB as u64,
        free / MIB as u64
    );
    let c = server.client();
    c.create_bucket().bucket("huge").send().await.unwrap();
    let rss_idle = server.peak_rss_kib();
    let body = GenBody::new(size, MIB, 0xB16, None);
    let md5 = body.md5.clone();
    let t = Instant::now();
    let out = c
        .put_object()
        .bucket("huge")
        .key("huge")
        .content_length(size as i64)
        .body(ByteStream::from_body_1_x(body))
        .send()
        .await
        .expect("PUT of the large object");
    let put_time = t.elapsed();
    let want = hex::encode(md5.lock().unwrap().clone().finalize());
    assert_eq!(out.e_tag(), Some(format!("\"{want}\"").as_str()));
    let rss_after_put = server.peak_rss_kib();

    let head = c.head_object().bucket("huge").key("huge").send().await.unwrap();
    assert_eq!(head.content_length(), Some(size as i64));
    let t = Instant::now();
    let (n, got) = get_md5(&c, "huge", "huge").await;
    let get_time = t.elapsed();
    assert_eq!((n, got), (size, want));
    let peak = server.peak_rss_kib();
    let mib = size as f64 / MIB as f64;
    println!(
        "{mib:.0} MiB object: PUT {put_time:.1?} ({:.0} MiB/s), GET {get_time:.1?} ({:.0} MiB/s); \
         server peak RSS: idle {} MiB, after PUT {} MiB, after GET {} MiB",
        mib / put_time.as_secs_f64(),
        mib / get_time.as_secs_f64(),
        rss_idle / 1024,
        rss_after_put / 1024,
        peak / 1024
    );
    assert!(peak > 0, "VmHWM readable");
    assert!(
        peak < 256 * 1024,
        "server peak RSS {} MiB exceeds 256 MiB",
        peak / 1024
    );
    // 3+1: each of the four drives holds a third of the object plus checksums
    for d in 0..4 {
        let files = server.shard_files(d);
        assert_eq!(files.len(), 1);
        let len = std::fs::metadata(&files[0]).unwrap().len();
        check_shard_len(len, size, 3);
    }
}

/// The figure: a 5 GiB upload and download under 256 MiB of server memory.
/// Writes 6.7 GiB (EC 3+1) to the temporary folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_bounded_5gib_object() {
    large_object_round_trip(5 * 1024 * MIB as u64).await;
}

// ---- 7. a client that goes away mid-upload ------------------------------------------------

/// A body that sends `ok` bytes and then fails, as a client that crashes or loses its
/// connection mid-upload.
struct BrokenBody {
    ok: u64,
}

impl http_body::Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.ok == 0 {
            return Poll::Ready(Some(Err(std::io::Error::other("client went away"))));
        }
        let n = this.ok.min(MIB as u64);
        this.ok -= n;
        Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(pattern(
            n as usize, n,
        ))))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(16 * MIB as u64)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_abort_mid_upload_leaves_nothing() {
    let server = Server::start(4);
    let c = no_retry(&server.client());
    c.create_bucket().bucket("cut").send().await.unwrap();
    put_bytes(&c, "cut", "kept-3000000", content_for("kept-3000000")).await;
    for key in ["new", "kept-3000000"] {
        let r = c
            .put_object()
            .bucket("cut")
            .key(key)
            .content_length(16 * MIB as i64)
            .body(ByteStream::from_body_1_x(BrokenBody {
                ok: 5 * MIB as u64 + 3,
            }))
            .send()
            .await;
        assert!(r.is_err(), "an upload whose body failed must not succeed");
    }
    // the new key never appears; the old version of an overwritten key is untouched
    let e = c.get_object().bucket("cut").key("new").send().await.unwrap_err();
    assert_eq!(common::code(&e), "NoSuchKey");
    assert_eq!(
        get_bytes(&c, "cut", "kept-3000000").await.unwrap(),
        content_for("kept-3000000")
    );
    let listed = list_all(&c, "cut").await;
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["kept-3000000"]);
    // the aborted uploads' shards are removed as soon as the server sees the body end
    eventually(Duration::from_secs(10), "aborted shards removed", || {
        let files: usize = (0..4).map(|d| server.shard_files(d).len()).sum();
        // one shard file per drive: the kept object's
        if files == 4 {
            Ok(())
        } else {
            Err(format!("{files} shard files, want 4"))
        }
    })
    .await;
    assert!(leftovers(&server).is_empty());
}

/// The reported defect: a single node kept its Raft state (every bucket) and its generated
/// S3 keys on the first drive only, so replacing that drive lost the buckets and changed
/// the keys. Both are now on every drive: with the first drive emptied, the node comes
/// back with its buckets, its keys and its objects (rebuilt onto the new drive).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_the_first_drive_keeps_buckets_and_keys() {
    // no keys from the environment: the node generates its own
    let mut server = Server::start_with(
        4,
        &[],
        &[("RINGSTORE_ACCESS_KEY", ""), ("RINGSTORE_SECRET_KEY", "")],
    );
    let keys = |server: &Server, drive: usize| -> (String, String) {
        let path = server.drives[drive].join(".ringstore").join("credentials.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let get = |k: &str| v[k].as_str().unwrap().to_string();
        (get("access_key"), get("secret_key"))
    };
    let (access, secret) = keys(&server, 0);
    let c = common::client_for(&server.endpoint(), &access, &secret);
    for b in ["first", "second"] {
        c.create_bucket().bucket(b).send().await.unwrap();
    }
    let small = pattern(1000, 1);
    let large = pattern(3 << 20, 2);
    put_bytes(&c, "first", "small", small.clone()).await;
    put_bytes(&c, "first", "large", large.clone()).await;
    c.create_bucket().bucket("gone").send().await.unwrap();
    c.delete_bucket().bucket("gone").send().await.unwrap();

    server.kill9();
    std::fs::remove_dir_all(&server.drives[0]).unwrap();
    std::fs::create_dir(&server.drives[0]).unwrap();
    server.restart();
    assert_eq!(
        keys(&server, 0),
        (access.clone(), secret.clone()),
        "the same keys on the new drive"
    );
    let c = common::client_for(&server.endpoint(), &access, &secret);
    let listed = c.list_buckets().send().await.expect("the old keys still sign");
    let names: Vec<&str> = listed.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["first", "second"]);
    assert_eq!(get_bytes(&c, "first", "small").await.unwrap(), small);
    assert_eq!(get_bytes(&c, "first", "large").await.unwrap(), large);
    // the restore finished: no longer pending, and every drive holds the whole copy again
    let pending = server.drives[0].join(".ringstore").join("restore-pending");
    let copy_of =
        |d: usize| std::fs::read_to_string(server.drives[d].join(".ringstore").join("control-plane.json"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending.exists() || !copy_of(0).is_ok_and(|c| c.contains("second")) {
        assert!(Instant::now() < deadline, "the restore never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(copy_of(3).unwrap().contains("second") && !copy_of(3).unwrap().contains("gone"));
    // and the restored control plane takes changes, and keeps them across restarts
    c.create_bucket().bucket("third").send().await.unwrap();
    server.restart();
    let listed = c.list_buckets().send().await.unwrap();
    let names: Vec<&str> = listed.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["first", "second", "third"]);
}
