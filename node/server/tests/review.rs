//! Review tests: listing across deletions and pages, concurrent writes of one key,
//! multipart edge cases and ranges. Every test starts its own 4-drive (2+2) server.

mod common;

use std::collections::BTreeSet;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use common::{Server, md5_hex, pattern};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

async fn put(c: &Client, bucket: &str, key: &str, body: Vec<u8>) {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap();
}

async fn get(c: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = c.get_object().bucket(bucket).key(key).send().await.unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

async fn get_range(c: &Client, bucket: &str, key: &str, range: &str) -> Vec<u8> {
    let out = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .range(range)
        .send()
        .await
        .unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

fn total_shards(server: &Server) -> Vec<usize> {
    (0..server.drives.len())
        .map(|d| server.shard_files(d).len())
        .collect()
}

/// Lists everything with ListObjectsV2 pages of `max` keys; returns keys and prefixes in
/// the order returned, checking IsTruncated on every page.
async fn list_all_v2(c: &Client, bucket: &str, max: i32, delimiter: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = c.list_objects_v2().bucket(bucket).max_keys(max);
        if let Some(d) = delimiter {
            req = req.delimiter(d);
        }
        if let Some(t) = &token {
            req = req.continuation_token(t);
        }
        let page = req.send().await.unwrap();
        pages += 1;
        assert!(pages < 10_000, "listing does not end");
        let mut items: Vec<String> = page
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        items.extend(
            page.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_string)),
        );
        items.sort();
        assert!(items.len() <= max as usize, "page larger than max-keys");
        assert_eq!(page.key_count(), Some(items.len() as i32));
        out.extend(items);
        if page.is_truncated() == Some(true) {
            token = Some(
                page.next_continuation_token()
                    .expect("token when truncated")
                    .to_string(),
            );
        } else {
            assert!(page.next_continuation_token().is_none());
            break;
        }
    }
    out
}

async fn list_all_v1(c: &Client, bucket: &str, max: i32, delimiter: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut req = c.list_objects().bucket(bucket).max_keys(max);
        if let Some(d) = delimiter {
            req = req.delimiter(d);
        }
        if let Some(m) = &marker {
            req = req.marker(m);
        }
        let page = req.send().await.unwrap();
        let mut items: Vec<String> = page
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        items.extend(
            page.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_string)),
        );
        items.sort();
        assert!(items.len() <= max as usize);
        out.extend(items.iter().cloned());
        if page.is_truncated() == Some(true) {
            marker = Some(
                page.next_marker()
                    .map(str::to_string)
                    .unwrap_or_else(|| items.last().expect("non-empty truncated page").clone()),
            );
        } else {
            break;
        }
    }
    out
}

#[tokio::test]
async fn listing_with_many_deleted_keys() {
    listing_check(Server::start(4)).await;
}

/// With 1+1 on 4 drives every key lives on 2 of the 4 drives, so the merge's horizon
/// across drives' pages decides whether keys are skipped.
#[tokio::test]
async fn listing_with_many_deleted_keys_partial_placement() {
    listing_check(Server::start_with(4, &["--redundancy", "1+1"], &[])).await;
}

async fn listing_check(server: Server) {
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let keys: Vec<String> = (0..2500)
        .map(|i| match i % 5 {
            0 => format!("dir{}/{i:05}", i % 3),
            _ => format!("{i:05}"),
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in keys.chunks(40) {
        let (c, chunk) = (c.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for k in chunk {
                put(&c, "bkt", &k, k.as_bytes().to_vec()).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // delete every other key, partly through DeleteObjects
    let doomed: Vec<String> = keys.iter().step_by(2).cloned().collect();
    for batch in doomed.chunks(500) {
        let ids: Vec<ObjectIdentifier> = batch
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build().unwrap())
            .collect();
        let out = c
            .delete_objects()
            .bucket("bkt")
            .delete(Delete::builder().set_objects(Some(ids)).build().unwrap())
            .send()
            .await
            .unwrap();
        assert!(out.errors().is_empty());
    }
    let live: BTreeSet<String> = keys.iter().skip(1).step_by(2).cloned().collect();
    let flat: Vec<String> = live.iter().cloned().collect();
    let mut rolled: BTreeSet<String> = live.iter().filter(|k| !k.contains('/')).cloned().collect();
    for k in &live {
        if let Some((p, _)) = k.split_once('/') {
            rolled.insert(format!("{p}/"));
        }
    }
    let rolled: Vec<String> = rolled.into_iter().collect();
    for max in [1000, 7, 1] {
        assert_eq!(list_all_v2(&c, "bkt", max, None).await, flat, "v2 max-keys {max}");
        assert_eq!(
            list_all_v2(&c, "bkt", max, Some("/")).await,
            rolled,
            "v2 / max-keys {max}"
        );
    }
    for max in [1000, 7] {
        assert_eq!(list_all_v1(&c, "bkt", max, None).await, flat, "v1 max-keys {max}");
        assert_eq!(
            list_all_v1(&c, "bkt", max, Some("/")).await,
            rolled,
            "v1 / max-keys {max}"
        );
    }
    // exactly max-keys live keys left: not truncated
    let page = c
        .list_objects_v2()
        .bucket("bkt")
        .prefix("dir1/")
        .send()
        .await
        .unwrap();
    let n = page.contents().len() as i32;
    let exact = c
        .list_objects_v2()
        .bucket("bkt")
        .prefix("dir1/")
        .max_keys(n)
        .send()
        .await
        .unwrap();
    assert_eq!(exact.is_truncated(), Some(false));
    assert_eq!(exact.contents().len() as i32, n);
}

#[tokio::test]
async fn concurrent_puts_of_one_key() {
    let server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    for round in 0..3u64 {
        // mix inline (small) and shard-file (large) writes
        let bodies: Vec<Vec<u8>> = (0..16u64)
            .map(|i| {
                let len = if (i + round) % 3 == 0 {
                    10 * KIB
                } else {
                    MIB + i as usize
                };
                pattern(len, round * 100 + i)
            })
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for b in bodies.clone() {
            let c = c.clone();
            tasks.spawn(async move { put(&c, "bkt", "hot", b).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let data = get(&c, "bkt", "hot").await;
        assert!(
            bodies.contains(&data),
            "round {round}: GET returned none of the written bodies"
        );
        let head = c.head_object().bucket("bkt").key("hot").send().await.unwrap();
        assert_eq!(head.e_tag(), Some(format!("\"{}\"", md5_hex(&data)).as_str()));
        // losers' shards are removed at once; at most the winner and retired versions stay
        for n in total_shards(&server) {
            assert!(n <= 16 * (round as usize + 1));
        }
        // still readable a moment later
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(get(&c, "bkt", "hot").await, data);
    }
}

async fn upload_part(c: &Client, key: &str, id: &str, n: i32, body: Vec<u8>) -> String {
    c.upload_part()
        .bucket("bkt")
        .key(key)
        .upload_id(id)
        .part_number(n)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_string()
}

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

async fn create(c: &Client, key: &str) -> String {
    c.create_multipart_upload()
        .bucket("bkt")
        .key(key)
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn concurrent_completes_keep_the_data() {
    let server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    for round in 0..3u64 {
        let key = format!("mp{round}");
        let p1 = pattern(5 * MIB, round + 1);
        let p2 = pattern(700 * KIB, round + 50);
        let id = create(&c, &key).await;
        let e1 = upload_part(&c, &key, &id, 1, p1.clone()).await;
        let e2 = upload_part(&c, &key, &id, 2, p2.clone()).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (c, key, id, e1, e2) = (c.clone(), key.clone(), id.clone(), e1.clone(), e2.clone());
            tasks.spawn(async move {
                c.complete_multipart_upload()
                    .bucket("bkt")
                    .key(&key)
                    .upload_id(&id)
                    .multipart_upload(completed(&[(1, &e1), (2, &e2)]))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| common::code(&e))
            });
        }
        let mut ok = 0;
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(()) => ok += 1,
                Err(code) => assert_eq!(code, "NoSuchUpload"),
            }
        }
        assert!(ok >= 1);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut want = p1.clone();
        want.extend_from_slice(&p2);
        let got = get(&c, "bkt", &key).await;
        assert!(
            got == want,
            "round {round}: object damaged after concurrent completes"
        );
    }
}

#[tokio::test]
async fn concurrent_reuploads_of_one_part() {
    let server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    for round in 0..3u64 {
        let key = format!("rp{round}");
        let id = create(&c, &key).await;
        let bodies: Vec<Vec<u8>> = (0..8).map(|i| pattern(MIB + i, round * 10 + i as u64)).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for b in bodies.clone() {
            let (c, key, id) = (c.clone(), key.clone(), id.clone());
            tasks.spawn(async move { upload_part(&c, &key, &id, 1, b).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let parts = c
            .list_parts()
            .bucket("bkt")
            .key(&key)
            .upload_id(&id)
            .send()
            .await
            .unwrap();
        assert_eq!(parts.parts().len(), 1);
        let etag = parts.parts()[0].e_tag().unwrap().to_string();
        let done = c
            .complete_multipart_upload()
            .bucket("bkt")
            .key(&key)
            .upload_id(&id)
            .multipart_upload(completed(&[(1, &etag)]))
            .send()
            .await;
        done.unwrap();
        let got = c.get_object().bucket("bkt").key(&key).send().await;
        let got = got
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"))
            .body
            .collect()
            .await;
        let got = got
            .unwrap_or_else(|e| panic!("round {round}: winning part's data is gone: {e:?}"))
            .into_bytes()
            .to_vec();
        assert!(bodies.contains(&got));
        assert_eq!(format!("\"{}\"", md5_hex(&got)), etag);
    }
}

#[tokio::test]
async fn multipart_edge_cases() {
    let server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let base = total_shards(&server);

    // re-upload a part: complete uses the new data; the old part's shards are removed
    let id = create(&c, "re").await;
    let old = pattern(5 * MIB, 1);
    let new = pattern(5 * MIB, 2);
    let _e_old = upload_part(&c, "re", &id, 1, old).await;
    let e_new = upload_part(&c, "re", &id, 1, new.clone()).await;
    let tail = pattern(300 * KIB, 3);
    let e2 = upload_part(&c, "re", &id, 2, tail.clone()).await;
    let unused = upload_part(&c, "re", &id, 3, pattern(200 * KIB, 4)).await;
    let _ = unused;
    assert_eq!(
        total_shards(&server)
            .iter()
            .zip(&base)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
        vec![3; 4]
    );
    // a subset of the parts
    c.complete_multipart_upload()
        .bucket("bkt")
        .key("re")
        .upload_id(&id)
        .multipart_upload(completed(&[(1, &e_new), (2, &e2)]))
        .send()
        .await
        .unwrap();
    let mut want = new.clone();
    want.extend_from_slice(&tail);
    assert!(get(&c, "bkt", "re").await == want);
    assert_eq!(
        total_shards(&server)
            .iter()
            .zip(&base)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
        vec![2; 4],
        "unused part not removed"
    );
    // complete again (a client retrying a Complete that was answered): the same answer
    // while the object is current, and nothing changes
    let again = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("re")
        .upload_id(&id)
        .multipart_upload(completed(&[(1, &e_new), (2, &e2)]))
        .send()
        .await
        .unwrap();
    let head = c.head_object().bucket("bkt").key("re").send().await.unwrap();
    assert_eq!(again.e_tag(), head.e_tag());
    assert!(get(&c, "bkt", "re").await == want);
    // with other parts it is no longer an upload
    let e = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("re")
        .upload_id(&id)
        .multipart_upload(completed(&[(2, &e2)]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::code(&e), "NoSuchUpload");
    assert_eq!(common::status(&e), 404);

    // ranges across the part boundary
    let b = 5 * MIB;
    assert!(get_range(&c, "bkt", "re", &format!("bytes={}-{}", b - 1, b)).await == want[b - 1..=b]);
    assert!(get_range(&c, "bkt", "re", &format!("bytes={}-{}", b - 1, b - 1)).await == want[b - 1..b]);
    assert!(get_range(&c, "bkt", "re", &format!("bytes={b}-{b}")).await == want[b..=b]);
    assert!(get_range(&c, "bkt", "re", &format!("bytes={}-", b - 10)).await == want[b - 10..]);
    assert!(get_range(&c, "bkt", "re", "bytes=-5").await == want[want.len() - 5..]);
    let e = c
        .get_object()
        .bucket("bkt")
        .key("re")
        .range(format!("bytes={}-", want.len()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::code(&e), "InvalidRange");

    // upload part to an aborted upload
    let id2 = create(&c, "ab").await;
    upload_part(&c, "ab", &id2, 1, pattern(MIB, 9)).await;
    c.abort_multipart_upload()
        .bucket("bkt")
        .key("ab")
        .upload_id(&id2)
        .send()
        .await
        .unwrap();
    let before = total_shards(&server);
    let e = c
        .upload_part()
        .bucket("bkt")
        .key("ab")
        .upload_id(&id2)
        .part_number(1)
        .body(ByteStream::from(pattern(MIB, 10)))
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::code(&e), "NoSuchUpload");
    assert_eq!(total_shards(&server), before);

    // overwrite the multipart object with an inline one and back
    put(&c, "bkt", "re", b"small".to_vec()).await;
    assert_eq!(get(&c, "bkt", "re").await, b"small");
    let id3 = create(&c, "re").await;
    let e = upload_part(&c, "re", &id3, 1, pattern(KIB, 11)).await;
    c.complete_multipart_upload()
        .bucket("bkt")
        .key("re")
        .upload_id(&id3)
        .multipart_upload(completed(&[(1, &e)]))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "bkt", "re").await, pattern(KIB, 11));
    put(&c, "bkt", "re", b"small again".to_vec()).await;
    assert_eq!(get(&c, "bkt", "re").await, b"small again");
}

#[tokio::test]
async fn deletes_and_ranges() {
    let server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();

    // zero-length object with a range
    put(&c, "bkt", "empty", vec![]).await;
    let e = c
        .get_object()
        .bucket("bkt")
        .key("empty")
        .range("bytes=0-0")
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::code(&e), "InvalidRange");
    assert_eq!(common::status(&e), 416);
    assert!(get(&c, "bkt", "empty").await.is_empty());

    // delete then put at once, large and small
    for (i, len) in [(0u64, MIB), (1, 10), (2, 2 * MIB)] {
        put(&c, "bkt", "k", pattern(len, i)).await;
        c.delete_object().bucket("bkt").key("k").send().await.unwrap();
        put(&c, "bkt", "k", pattern(len + 1, i + 10)).await;
        assert_eq!(get(&c, "bkt", "k").await, pattern(len + 1, i + 10));
    }

    // DeleteObjects with duplicate keys
    put(&c, "bkt", "dup", pattern(MIB, 5)).await;
    let ids: Vec<ObjectIdentifier> = ["dup", "dup", "missing", "dup"]
        .iter()
        .map(|k| ObjectIdentifier::builder().key(*k).build().unwrap())
        .collect();
    let out = c
        .delete_objects()
        .bucket("bkt")
        .delete(Delete::builder().set_objects(Some(ids)).build().unwrap())
        .send()
        .await
        .unwrap();
    assert!(out.errors().is_empty());
    let e = c.head_object().bucket("bkt").key("dup").send().await.unwrap_err();
    assert_eq!(common::status(&e), 404);
    let list = c.list_objects_v2().bucket("bkt").send().await.unwrap();
    let keys: Vec<_> = list.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["empty", "k"]);
}

/// An UploadPart that replaces a part while CompleteMultipartUpload commits must not remove
/// the replaced part's data from under the completed object.
#[tokio::test]
async fn complete_racing_part_reupload() {
    let server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let mut broken = 0;
    for round in 0..12u64 {
        let key = format!("race{round}");
        let id = create(&c, &key).await;
        let old = pattern(MIB, round);
        let e1 = upload_part(&c, &key, &id, 1, old.clone()).await;
        let new = pattern(64 * KIB, round + 100);
        let (c2, k2, id2) = (c.clone(), key.clone(), id.clone());
        let reupload = tokio::spawn(async move {
            c2.upload_part()
                .bucket("bkt")
                .key(&k2)
                .upload_id(&id2)
                .part_number(1)
                .body(ByteStream::from(new))
                .send()
                .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(round % 4)).await;
        let done = c
            .complete_multipart_upload()
            .bucket("bkt")
            .key(&key)
            .upload_id(&id)
            .multipart_upload(completed(&[(1, &e1)]))
            .send()
            .await;
        let _ = reupload.await;
        if done.is_ok() {
            let out = c.get_object().bucket("bkt").key(&key).send().await;
            let ok = match out {
                Ok(o) => o
                    .body
                    .collect()
                    .await
                    .map(|b| b.into_bytes().to_vec() == old)
                    .unwrap_or(false),
                Err(_) => false,
            };
            if !ok {
                broken += 1;
            }
        }
    }
    assert_eq!(broken, 0, "completed objects whose data was removed");
}
