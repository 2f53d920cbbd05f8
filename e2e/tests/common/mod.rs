//! Helpers shared by the end-to-end test binaries.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use ringstore_e2e::S3Target;

/// An S3 client for one endpoint (path style, us-east-1).
pub fn s3(target: &S3Target) -> Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&target.endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            &target.access_key,
            &target.secret_key,
            None,
            None,
            "ringstore-e2e",
        ))
        .force_path_style(true)
        .build();
    Client::from_conf(conf)
}

/// Deterministic test bytes.
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 32) as u8
                ^ seed
        })
        .collect()
}

/// Creates the bucket, retrying while the store is still settling (503s right after Ready).
pub async fn create_bucket(s3: &Client, bucket: &str) -> Result<()> {
    let mut last = None;
    for _ in 0..30 {
        match s3.create_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) => {
                let text = format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e));
                if text.contains("BucketAlreadyOwnedByYou") {
                    return Ok(());
                }
                last = Some(text);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    anyhow::bail!("create bucket {bucket}: {}", last.unwrap_or_default())
}

pub async fn put(s3: &Client, bucket: &str, key: &str, body: &[u8]) -> Result<()> {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .with_context(|| format!("PUT {bucket}/{key}"))?;
    Ok(())
}

pub async fn get(s3: &Client, bucket: &str, key: &str) -> Result<Vec<u8>> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .with_context(|| format!("GET {bucket}/{key}"))?;
    Ok(out.body.collect().await?.into_bytes().to_vec())
}

/// GET with retries (a cluster that just re-formed may answer 503 for a moment).
pub async fn get_eventually(s3: &Client, bucket: &str, key: &str, timeout: Duration) -> Result<Vec<u8>> {
    let started = std::time::Instant::now();
    loop {
        match get(s3, bucket, key).await {
            Ok(b) => return Ok(b),
            Err(e) if started.elapsed() < timeout => {
                eprintln!("[ringstore-e2e] retrying GET {bucket}/{key}: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Pids of `ringstore` processes whose working folder is `cwd` (the stand-in runs each pod
/// in its own folder).
pub fn ringstore_pids_in(cwd: &std::path::Path) -> Vec<u32> {
    let mut pids = vec![];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "ringstore" && std::fs::read_link(entry.path().join("cwd")).is_ok_and(|p| p == cwd)
        {
            pids.push(pid);
        }
    }
    pids
}
