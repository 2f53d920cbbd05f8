//! Test support: start real `ringstore server` processes on temporary folders and talk to
//! them with the AWS SDK for Rust, as users do.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

pub const ACCESS_KEY: &str = "ringstore-test-access";
pub const SECRET_KEY: &str = "ringstore-test-secret-key";

/// A running server process with its own data folders.
pub struct Server {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub drives: Vec<PathBuf>,
    pub addr: SocketAddr,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    /// Where the process's log goes (see [`Server::capture_log`]); inherited when `None`.
    log: Option<PathBuf>,
}

fn free_addr() -> SocketAddr {
    free_addr_on("127.0.0.1")
}

/// An unused port on a loopback address (any of 127.0.0.0/8 works on Linux).
pub fn free_addr_on(ip: &str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
    l.local_addr().unwrap()
}

impl Server {
    /// Starts a server with `drives` drive folders and default settings.
    pub fn start(drives: usize) -> Server {
        Self::start_with(drives, &[], &[])
    }

    pub fn start_with(drives: usize, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut s = Self::configure(drives, free_addr(), args, env);
        s.spawn();
        s
    }

    /// A server that is not started yet (see [`Server::launch`]).
    pub fn configure(drives: usize, addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let drives = (1..=drives)
            .map(|i| dir.path().join(format!("drive{i}")))
            .collect();
        Server {
            child: None,
            dir,
            drives,
            addr,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log: None,
        }
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_ready();
    }

    /// Starts the process without waiting for it to become ready.
    pub fn launch(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringstore"));
        cmd.arg("server").arg("--address").arg(self.addr.to_string());
        for d in &self.drives {
            cmd.arg("--data").arg(d);
        }
        cmd.args(&self.extra_args)
            .env("RINGSTORE_ACCESS_KEY", ACCESS_KEY)
            .env("RINGSTORE_SECRET_KEY", SECRET_KEY)
            .env(
                "RUST_LOG",
                std::env::var("RINGSTORE_TEST_LOG").unwrap_or_else(|_| "warn,s3s=off,openraft=off".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        if let Some(path) = &self.log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open the log file");
            cmd.stderr(file);
        }
        self.child = Some(cmd.spawn().expect("start ringstore"));
    }

    /// The value given to `flag` among the extra arguments.
    pub fn extra_arg(&self, flag: &str) -> Option<&str> {
        let at = self.extra_args.iter().position(|a| a == flag)?;
        self.extra_args.get(at + 1).map(String::as_str)
    }

    /// Sets `flag` to `value` for the next start (replacing a value given before).
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        match self.extra_args.iter().position(|a| a == flag) {
            Some(at) => self.extra_args[at + 1] = value.to_string(),
            None => self.extra_args.extend([flag.to_string(), value.to_string()]),
        }
    }

    /// Sends the process's log (from its next start on) to a file in its folder, read back
    /// with [`Server::log`].
    pub fn capture_log(&mut self) {
        self.log = Some(self.dir.path().join("server.log"));
    }

    /// What the process logged since [`Server::capture_log`].
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Whether the process is running (it may have exited on its own).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits until `/health/ready` answers 200.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("ringstore exited during start-up: {status}");
            }
            if http_get(self.addr, "/health/ready").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ringstore did not become ready");
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        c.wait().expect("wait")
    }

    /// Sets an environment variable for the next start (replacing an earlier value).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.remove_env(key);
        self.extra_env.push((key.to_string(), value.to_string()));
    }

    /// Removes an environment variable set for this server.
    pub fn remove_env(&mut self, key: &str) {
        self.extra_env.retain(|(k, _)| k != key);
    }

    /// Runs the server with its wall clock moved by `seconds` (libfaketime preloaded into
    /// the server process itself; timers keep real time). 0 gives it the true clock.
    pub fn set_clock_offset(&mut self, seconds: i64) {
        for k in ["LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_FAKE_MONOTONIC"] {
            self.remove_env(k);
        }
        if seconds != 0 {
            self.set_env("LD_PRELOAD", libfaketime());
            self.set_env("FAKETIME", &format!("{seconds:+}"));
            self.set_env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
    }

    /// Starts the process again on the same folders and address.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// GET an admin API path with the test token; the parsed JSON body.
    pub fn admin_get(&self, path: &str) -> Option<serde_json::Value> {
        let req = format!(
            "GET /_ringstore/admin/v1/{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET_KEY}\r\nConnection: close\r\n\r\n"
        );
        let resp = raw_exchange(self.addr, req.as_bytes())?;
        if resp.status != 200 {
            return None;
        }
        serde_json::from_str(&resp.text()).ok()
    }

    /// POSTs JSON to the admin API; the status and the answer.
    pub fn admin_post(&self, path: &str, body: &str) -> Option<(u16, serde_json::Value)> {
        let req = format!(
            "POST /_ringstore/admin/v1/{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let resp = raw_exchange(self.addr, req.as_bytes())?;
        Some((resp.status, serde_json::from_str(&resp.text()).ok()?))
    }

    /// Peak resident memory of the server process in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:").or(None))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn client(&self) -> Client {
        client_for(&self.endpoint(), ACCESS_KEY, SECRET_KEY)
    }

    /// Every shard file under a drive.
    pub fn shard_files(&self, drive: usize) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let data = self.drives[drive].join(".ringstore").join("data");
        for d in std::fs::read_dir(data).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                out.push(f.path());
            }
        }
        out.sort();
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts a multipart upload of `bucket/key`; its upload id.
pub async fn create_upload(c: &Client, bucket: &str, key: &str) -> String {
    let created = c.create_multipart_upload().bucket(bucket).key(key).send().await;
    created.unwrap().upload_id().unwrap().to_string()
}

/// Uploads part `n` of an upload of `bucket/key`; the part as a Complete names it.
pub async fn upload_part(
    c: &Client,
    bucket: &str,
    key: &str,
    id: &str,
    n: i32,
    body: Vec<u8>,
) -> aws_sdk_s3::types::CompletedPart {
    let sent = c
        .upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .part_number(n)
        .body(aws_sdk_s3::primitives::ByteStream::from(body))
        .send()
        .await;
    let etag = sent.unwrap().e_tag().unwrap().to_string();
    aws_sdk_s3::types::CompletedPart::builder()
        .part_number(n)
        .e_tag(etag)
        .build()
}

/// Completes a multipart upload of `bucket/key` with `parts`; the HTTP status of a failure.
pub async fn complete_upload(
    c: &Client,
    bucket: &str,
    key: &str,
    id: &str,
    parts: &[aws_sdk_s3::types::CompletedPart],
) -> Result<(), u16> {
    c.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts.to_vec()))
                .build(),
        )
        .send()
        .await
        .map(|_| ())
        .map_err(|e| status(&e))
}

/// The same client without retries, so a dead server fails requests at once.
pub fn no_retry(c: &Client) -> Client {
    Client::from_conf(
        c.config()
            .to_builder()
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build(),
    )
}

/// The libfaketime library (Debian package `faketime`), which moves a process's wall clock.
pub fn libfaketime() -> &'static str {
    const PLACES: [&str; 3] = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    PLACES
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("clock tests need libfaketime: install the Debian package faketime")
}

/// An S3 client for any endpoint, path-style, as a user would configure it.
pub fn client_for(endpoint: &str, access: &str, secret: &str) -> Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(access, secret, None, None, "test"))
        .force_path_style(true)
        .build();
    Client::from_conf(conf)
}

/// A minimal HTTP/1.1 GET returning the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    raw_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends raw bytes and returns the status code and body of the response.
pub fn raw_request(addr: SocketAddr, request: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The content of a test object is fully determined by its key, which ends in `-SIZE`.
pub fn content_for(key: &str) -> Vec<u8> {
    let size: usize = key
        .rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("key {key} does not end in -SIZE"));
    pattern(size, fnv1a(key))
}

/// GETs a whole object; the error names the key and the S3 error code.
pub async fn get_bytes(c: &Client, bucket: &str, key: &str) -> Result<Vec<u8>, String> {
    let out = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("GET {key}: {}", code(&e)))?;
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| format!("GET {key} body: {e}"))?;
    Ok(body.into_bytes().to_vec())
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(data))
}

/// The S3 error code of an SDK error.
pub fn code<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => s.err().code().unwrap_or("").to_string(),
        other => format!("{other:?}"),
    }
}

/// The HTTP status of an SDK error.
pub fn status<E>(e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> u16 {
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => s.raw().status().as_u16(),
        _ => 0,
    }
}

/// A complete HTTP response read by [`raw_exchange`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw request bytes (which should ask for `Connection: close`) and reads the whole
/// response: status, headers and body as bytes (chunked bodies are decoded).
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Option<RawResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(request).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

pub const CLUSTER_SECRET: &str = "ringstore-test-cluster-secret";

/// Several server processes forming one cluster, each on its own loopback address.
pub struct TestCluster {
    pub nodes: Vec<Server>,
}

impl TestCluster {
    /// Configures `n` nodes with `drives` drives each; none is started.
    pub fn configure(n: usize, drives: usize, extra: &[&str]) -> TestCluster {
        Self::configure_seeded(n, n, drives, extra)
    }

    /// Configures `n` nodes of which the first `seeds` are the seeds (the others join
    /// later, as a grown cluster's new nodes do); none is started.
    pub fn configure_seeded(n: usize, seeds: usize, drives: usize, extra: &[&str]) -> TestCluster {
        let ips: Vec<String> = (0..n).map(|i| format!("127.0.0.{}", 11 + i)).collect();
        let rpcs: Vec<SocketAddr> = ips.iter().map(|ip| free_addr_on(ip)).collect();
        let seeds = rpcs[..seeds]
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..n)
            .map(|i| {
                let name = format!("node-{i}");
                let rpc = rpcs[i].to_string();
                let mut args = vec!["--node-name", &name, "--rpc-address", &rpc, "--seeds", &seeds];
                if !extra.contains(&"--scrub-interval") {
                    args.extend_from_slice(&["--scrub-interval", "0"]);
                }
                args.extend_from_slice(extra);
                Server::configure(
                    drives,
                    free_addr_on(&ips[i]),
                    &args,
                    &[("RINGSTORE_CLUSTER_SECRET", CLUSTER_SECRET)],
                )
            })
            .collect();
        TestCluster { nodes }
    }

    /// Starts every node at once and waits until all are ready.
    pub fn start(n: usize, drives: usize, extra: &[&str]) -> TestCluster {
        let mut c = Self::configure(n, drives, extra);
        for node in &mut c.nodes {
            node.launch();
        }
        for node in &mut c.nodes {
            node.wait_ready();
        }
        c
    }

    /// The admin status of node `i`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        self.nodes[i].admin_get("status").expect("admin status answers")
    }

    /// Index of the node that is the Raft leader, as node `asking` sees it.
    pub fn leader(&self, asking: usize) -> Option<usize> {
        let s = self.status(asking);
        let name = s["cluster"]["leader"].as_str()?.to_string();
        name.strip_prefix("node-")?.parse().ok()
    }
}
