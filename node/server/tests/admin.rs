//! The admin API, the Prometheus endpoint and `ringstore admin status`, against a real
//! single-node server.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};

use aws_sdk_s3::primitives::ByteStream;
use common::{SECRET_KEY, Server, http_get, raw_request};
use serde_json::Value;

const STATUS: &str = "/_ringstore/admin/v1/status";

fn get_with_token(addr: SocketAddr, path: &str, token: &str) -> (u16, String) {
    raw_request(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    )
    .expect("an answer")
}

/// The value of the sample whose line starts with `series` (name and labels as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn cli(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringstore"));
    cmd.arg("admin")
        .arg("status")
        .args(args)
        .env_remove("RINGSTORE_SECRET_KEY")
        .env_remove("RINGSTORE_ENDPOINT");
    if let Some(t) = token {
        cmd.env("RINGSTORE_SECRET_KEY", t);
    }
    cmd.output().expect("run ringstore admin status")
}

#[tokio::test]
async fn metrics_count_s3_requests() {
    let server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("metered").send().await.unwrap();
    for i in 0..3 {
        c.put_object()
            .bucket("metered")
            .key(format!("k{i}"))
            .body(ByteStream::from(vec![7u8; 1000]))
            .send()
            .await
            .unwrap();
    }
    let got = c.get_object().bucket("metered").key("k0").send().await.unwrap();
    assert_eq!(got.body.collect().await.unwrap().into_bytes().len(), 1000);
    let missing = c.get_object().bucket("metered").key("nope").send().await;
    assert_eq!(common::status(&missing.unwrap_err()), 404);

    // no S3 signature needed, and the scrape itself is not an S3 request
    let (code, text) = http_get(server.addr, "/metrics").expect("metrics answer");
    assert_eq!(code, 200, "{text}");
    // the same document under the path no bucket can have
    let (code, other) = http_get(server.addr, "/_ringstore/metrics").expect("metrics answer");
    assert_eq!(code, 200, "{other}");
    assert!(other.contains("ringstore_s3_requests_total"), "{other}");

    let count = |op: &str, status: u16| {
        sample(
            &text,
            &format!("ringstore_s3_requests_total{{operation=\"{op}\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(count("CreateBucket", 200), Some(1.0), "{text}");
    assert_eq!(count("PutObject", 200), Some(3.0), "{text}");
    assert_eq!(count("GetObject", 200), Some(1.0), "{text}");
    assert_eq!(count("GetObject", 404), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "ringstore_s3_request_duration_seconds_count{operation=\"PutObject\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        sample(&text, "ringstore_s3_bytes_received_total").unwrap() >= 3000.0,
        "{text}"
    );
    assert!(
        sample(&text, "ringstore_s3_bytes_sent_total").unwrap() >= 1000.0,
        "{text}"
    );
    for family in [
        "ringstore_drive_bytes_used{",
        "ringstore_drive_bytes_available{",
        "ringstore_drive_online{",
        "ringstore_heal_objects_checked_total ",
        "ringstore_heal_shards_healed_total ",
        "ringstore_heal_records_healed_total ",
        "ringstore_heal_orphans_removed_total ",
        "ringstore_heal_errors_total ",
    ] {
        let n = text.lines().filter(|l| l.starts_with(family)).count();
        let want = if family.ends_with('{') { 4 } else { 1 };
        assert_eq!(n, want, "{family} in {text}");
    }
    assert!(
        !text.contains("/_ringstore"),
        "internal endpoints are not S3 requests"
    );

    // a bucket literally named "metrics" still works: signed requests to /metrics are S3's
    c.create_bucket().bucket("metrics").send().await.unwrap();
    c.head_bucket().bucket("metrics").send().await.unwrap();
    let listed = c.list_objects_v2().bucket("metrics").send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0));
}

#[tokio::test]
async fn status_requires_the_token_and_describes_the_node() {
    let server = Server::start(4);
    let (code, body) = http_get(server.addr, STATUS).unwrap();
    assert_eq!(code, 401, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "Unauthorized");
    let (code, _) = get_with_token(server.addr, STATUS, "wrong-token");
    assert_eq!(code, 401);

    let (code, body) = get_with_token(server.addr, STATUS, SECRET_KEY);
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["node"], "ringstore-0");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["redundancy"], "2+2");
    assert_eq!(doc["layout_version"], 1);
    let drives = doc["drives"].as_array().unwrap();
    assert_eq!(drives.len(), 4);
    for d in drives {
        assert_eq!(d["state"], "online", "{d}");
        assert_eq!(d["node"], "ringstore-0");
        assert_eq!(d["id"].as_str().unwrap().len(), 32);
        assert!(d["bytes_available"].as_u64().unwrap() > 0, "{d}");
    }
    assert_eq!(doc["capacity"]["drives_total"], 4);
    assert_eq!(doc["capacity"]["drives_online"], 4);
    assert_eq!(doc["healing"]["shards_healed"], 0);
    assert_eq!(doc["healing"]["heal_errors"], 0);

    let (code, _) = get_with_token(server.addr, "/_ringstore/admin/v1/nothing", SECRET_KEY);
    assert_eq!(code, 404);

    // a drive whose folder disappears under the running node shows as offline; moved away in
    // one step, since the node's background tasks may write into it while a recursive
    // removal runs (which then fails with "directory not empty")
    let gone = server.drives[3].with_extension("gone");
    std::fs::rename(server.drives[3].join(".ringstore"), &gone).unwrap();
    let (_, body) = get_with_token(server.addr, STATUS, SECRET_KEY);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["drives"][3]["state"], "offline", "{doc}");
    assert_eq!(doc["capacity"]["drives_online"], 3);
}

#[test]
fn cli_status_prints_json_and_a_table_and_fails_clearly() {
    let server = Server::start(4);
    let endpoint = server.endpoint();

    let out = cli(&["--endpoint", &endpoint, "--json"], Some(SECRET_KEY));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["redundancy"], "2+2");
    assert_eq!(doc["drives"].as_array().unwrap().len(), 4);

    let out = cli(&["--endpoint", &endpoint, "--token", SECRET_KEY], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("redundancy:      2+2"), "{table}");
    assert!(table.contains("layout version:  1"), "{table}");
    assert!(table.contains("4 of 4 online"), "{table}");
    // one row for the node and one per drive
    assert_eq!(table.matches(" online ").count(), 5, "{table}");
    assert!(
        table.contains("raft:            leader (leader ringstore-0"),
        "{table}"
    );
    assert!(table.contains("shards healed"), "{table}");

    let out = cli(&["--endpoint", &endpoint], Some("not-the-secret"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the admin token") && err.contains(&endpoint),
        "{err}"
    );

    let out = cli(&["--endpoint", &endpoint], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no admin token"));

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let out = cli(&["--endpoint", &dead], Some(SECRET_KEY));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach ringstore at") && err.contains(&dead),
        "{err}"
    );
}
