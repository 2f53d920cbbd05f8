//! Consistency under faults, on real server processes: clocks that disagree or step back
//! (libfaketime), record commits that reach too few drives or stop half way (fault points
//! of the test build), deletes missed by a node that was down, and layouts the data plane
//! cannot serve yet. Each test reproduces a defect that once lost, hid or resurrected data.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use common::{Server, TestCluster, get_bytes, no_retry, pattern, status};

/// Above the inline limit (128 KiB): the object has shard files.
const LARGE: usize = 300 * 1024;

async fn put(c: &Client, bucket: &str, key: &str, data: &[u8]) -> Result<(), String> {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// The object's bytes, `None` for NoSuchKey; panics on any other error.
async fn read(c: &Client, bucket: &str, key: &str) -> Option<Vec<u8>> {
    match c.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => Some(o.body.collect().await.expect("body").into_bytes().to_vec()),
        Err(e) if status(&e) == 404 => None,
        Err(e) => panic!("GET {key}: {e:?}"),
    }
}

/// Reads `key` after a write of `new` over `old` failed or was cut short: it must read as
/// one of them, whole, and the same again (a read never goes back).
async fn old_or_new(c: &Client, key: &str, old: &[u8], new: &[u8]) -> Vec<u8> {
    let got = read(c, "bkt", key).await.expect("the key still exists");
    assert!(
        got == old || got == new,
        "{key}: neither the old nor the new version ({} bytes)",
        got.len()
    );
    assert_eq!(
        read(c, "bkt", key).await.as_ref(),
        Some(&got),
        "{key} reads the same twice"
    );
    got
}

/// A value that tells which write it came from, small or large.
fn value(tag: u64, len: usize) -> Vec<u8> {
    let mut v = pattern(len, tag);
    v[..8].copy_from_slice(&tag.to_be_bytes());
    v
}

// ---- clocks -----------------------------------------------------------------------------

/// The reported defect: PUT v1, restart with the clock 120 s behind, PUT v2 answered 200
/// but GET returned v1; DELETE answered 204 and GET still returned v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clock_set_back_across_a_restart_does_not_hide_later_writes() {
    let mut server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    for (key, len) in [("small", 1000), ("large", LARGE)] {
        put(&c, "bkt", key, &value(1, len)).await.unwrap();
    }

    server.set_clock_offset(-120);
    server.restart();
    let c = server.client();
    for (key, len) in [("small", 1000), ("large", LARGE)] {
        put(&c, "bkt", key, &value(2, len)).await.unwrap();
        assert_eq!(
            read(&c, "bkt", key).await,
            Some(value(2, len)),
            "{key}: the later PUT wins"
        );
        c.delete_object().bucket("bkt").key(key).send().await.unwrap();
        assert_eq!(read(&c, "bkt", key).await, None, "{key}: the DELETE wins");
        put(&c, "bkt", key, &value(3, len)).await.unwrap();
        assert_eq!(
            read(&c, "bkt", key).await,
            Some(value(3, len)),
            "{key}: a PUT after the DELETE wins"
        );
    }
    // stepped forward again, then back once more: still in order
    server.set_clock_offset(300);
    server.restart();
    put(&server.client(), "bkt", "small", &value(4, 1000))
        .await
        .unwrap();
    server.set_clock_offset(-300);
    server.restart();
    let c = server.client();
    put(&c, "bkt", "small", &value(5, 1000)).await.unwrap();
    assert_eq!(read(&c, "bkt", "small").await, Some(value(5, 1000)));
    let listed = c.list_objects_v2().bucket("bkt").send().await.unwrap();
    assert_eq!(listed.contents().len(), 2, "both keys listed once");
}

/// Three nodes whose clocks are 10 minutes apart each way: every write that starts after
/// the previous one was acknowledged wins, through whichever node, and every node reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_ten_minutes_apart_keep_the_order_of_writes() {
    let mut cluster = TestCluster::configure(3, 1, &[]);
    cluster.nodes[0].set_clock_offset(600);
    cluster.nodes[1].set_clock_offset(-600);
    for n in &mut cluster.nodes {
        n.launch();
    }
    for n in &mut cluster.nodes {
        n.wait_ready();
    }
    let clients: Vec<Client> = cluster.nodes.iter().map(|n| n.client()).collect();
    clients[0].create_bucket().bucket("bkt").send().await.unwrap();
    let mut tag = 0;
    for round in 0..3 {
        for (key, len) in [("small", 2000), ("large", LARGE)] {
            // the fast clock first, then the slow one, then the true one
            for via in [0, 1, 2, 1, 0] {
                tag += 1;
                put(&clients[via], "bkt", key, &value(tag, len))
                    .await
                    .unwrap_or_else(|e| panic!("PUT {key} #{tag} via node {via}: {e}"));
                for (i, c) in clients.iter().enumerate() {
                    assert_eq!(
                        read(c, "bkt", key).await.map(|v| v[..8].to_vec()),
                        Some(tag.to_be_bytes().to_vec()),
                        "round {round}: {key} #{tag} written via node {via}, read via node {i}"
                    );
                }
            }
            // a delete through the slow node hides the write from the fast one
            clients[1]
                .delete_object()
                .bucket("bkt")
                .key(key)
                .send()
                .await
                .unwrap();
            for (i, c) in clients.iter().enumerate() {
                assert_eq!(
                    read(c, "bkt", key).await,
                    None,
                    "round {round}: {key} deleted, via node {i}"
                );
            }
        }
    }
}

// ---- failed and interrupted record commits ----------------------------------------------

/// A PUT whose record commit reaches fewer than W drives fails with a retryable error, and
/// the key then reads as the old version or the new one, whole, never as an error.
/// Before the fix the PUT removed its shards while the record on one drive stayed, so the
/// key named data that no longer existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_commit_on_too_few_drives_leaves_old_or_new_readable() {
    let mut server = Server::start(4); // 2+2: W = 3
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    for (key, len) in [("small", 1000), ("large", LARGE)] {
        put(&c, "bkt", key, &value(1, len)).await.unwrap();
    }

    server.set_env("RINGSTORE_FAULTS", "record-commits=1");
    server.restart();
    let c = no_retry(&server.client());
    for (key, len) in [("small", 1000), ("large", LARGE)] {
        let e = put(&c, "bkt", key, &value(2, len))
            .await
            .expect_err("a commit on 1 of 4 drives fails");
        assert!(
            e.contains("503") || e.contains("ServiceUnavailable"),
            "{key}: {e}"
        );
    }

    server.remove_env("RINGSTORE_FAULTS");
    server.restart();
    let c = server.client();
    for (key, len) in [("small", 1000), ("large", LARGE)] {
        old_or_new(&c, key, &value(1, len), &value(2, len)).await;
        put(&c, "bkt", key, &value(3, len)).await.unwrap();
        assert_eq!(
            read(&c, "bkt", key).await,
            Some(value(3, len)),
            "{key}: a retry converges"
        );
    }
}

/// The process dies after the first of the per-drive record commits: after the restart the
/// key reads as the old or the new version, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_record_commits_leaves_old_or_new_readable() {
    let mut server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    for (key, len) in [("small", 1000), ("large", LARGE)] {
        put(&c, "bkt", key, &value(1, len)).await.unwrap();
        server.set_env("RINGSTORE_FAULTS", "crash-after-record-commits=1");
        server.restart();
        let e = put(&no_retry(&server.client()), "bkt", key, &value(2, len)).await;
        assert!(e.is_err(), "{key}: the server crashed mid-commit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!server.running(), "the fault point aborted the process");
        server.remove_env("RINGSTORE_FAULTS");
        server.restart();
        old_or_new(&server.client(), key, &value(1, len), &value(2, len)).await;
    }
}

/// Two inline PUTs cut short on different drives (v2 on the first, v3 on the second of
/// four, 2+2) leave v1 on two drives only, and the two newer versions, one frame each,
/// cannot be decoded. Reads pass over them and answer v1: its read repair is refused by the
/// drives holding the newer versions, but a write quorum then holds v1 or something newer,
/// so no later read can go below v1. Before, the key answered 503 until overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_cut_short_on_different_drives_do_not_block_the_key() {
    let mut server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    put(&c, "bkt", "k", &value(1, 1000)).await.unwrap();
    for (tag, faults) in [
        (2, "record-commits=1"),
        (3, "record-commits=1,record-commit-offset=1"),
    ] {
        server.set_env("RINGSTORE_FAULTS", faults);
        server.restart();
        let e = put(&no_retry(&server.client()), "bkt", "k", &value(tag, 1000)).await;
        assert!(e.is_err(), "v{tag} reached one drive only");
    }
    server.remove_env("RINGSTORE_FAULTS");
    server.restart();
    let c = server.client();
    assert_eq!(
        old_or_new(&c, "k", &value(1, 1000), &value(1, 1000)).await,
        value(1, 1000)
    );
    c.delete_object().bucket("bkt").key("k").send().await.unwrap();
    assert_eq!(read(&c, "bkt", "k").await, None);
}

/// A conditional PUT whose compare-and-swap lost on three drives (a plain PUT landed there
/// after its lookup) but took on the fourth, which had missed that PUT, must not win over
/// the acknowledged PUT later. Before, its version was drawn after the PUT's, and reads
/// copied it over the PUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conditional_write_that_lost_never_wins_later() {
    let mut server = Server::start(4); // 2+2: W = 3
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    // several keys: which drives a read asks first depends on the key
    let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    let mut etags = Vec::new();
    for k in &keys {
        put(&c, "bkt", k, &value(1, LARGE)).await.unwrap();
        etags.push(
            c.head_object()
                .bucket("bkt")
                .key(k)
                .send()
                .await
                .unwrap()
                .e_tag()
                .unwrap()
                .to_string(),
        );
    }
    // plain PUTs commit on the first three drives only; a conditional write waits between
    // its lookup and its compare-and-swap
    server.set_env("RINGSTORE_FAULTS", "record-commits=3,conditional-pause-ms=1000");
    server.restart();
    let c = no_retry(&server.client());
    let mut answers = Vec::new();
    for (k, etag) in keys.iter().zip(&etags) {
        let conditional = {
            let (c, k, etag) = (c.clone(), k.clone(), etag.clone());
            tokio::spawn(async move {
                c.put_object()
                    .bucket("bkt")
                    .key(&k)
                    .if_match(etag)
                    .body(ByteStream::from(value(2, LARGE)))
                    .send()
                    .await
                    .map(|_| 200)
                    .unwrap_or_else(|e| status(&e))
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        put(&c, "bkt", k, &value(3, LARGE))
            .await
            .expect("the plain PUT reaches W");
        let answer = conditional.await.unwrap();
        assert_ne!(
            answer, 200,
            "{k}: the compare-and-swap found the key changed on three drives"
        );
        answers.push(answer);
    }
    server.remove_env("RINGSTORE_FAULTS");
    server.restart();
    let c = server.client();
    let listed = c.list_objects_v2().bucket("bkt").send().await.unwrap();
    for (k, answer) in keys.iter().zip(&answers) {
        assert_eq!(
            read(&c, "bkt", k).await.map(|v| v[..8].to_vec()),
            Some(3u64.to_be_bytes().to_vec()),
            "{k}: the acknowledged plain PUT stays (the conditional one answered {answer})"
        );
        let etag = listed
            .contents()
            .iter()
            .find(|o| o.key() == Some(k.as_str()))
            .and_then(|o| o.e_tag());
        assert_eq!(
            etag,
            Some(common::md5_hex(&value(3, LARGE)).as_str())
                .map(|e| format!("\"{e}\""))
                .as_deref(),
            "{k} listed"
        );
    }
}

// ---- deletes ----------------------------------------------------------------------------

/// The reported defect: 4 nodes (2+2), scrubbing every 3 s; 40 keys written, one node
/// killed, all 40 deleted, 12 s of scrubbing, the node restarted: some deleted keys were
/// found again. The scrubber dropped deletion markers while the dead node's drive, which
/// still held the objects, could not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_missed_by_a_dead_node_do_not_come_back() {
    let mut cluster = TestCluster::start(4, 1, &["--scrub-interval", "3"]);
    let c = cluster.nodes[0].client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i:02}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let len = if i % 4 == 0 { LARGE } else { 500 };
        put(&c, "bkt", k, &value(i as u64, len)).await.unwrap();
    }
    cluster.nodes[3].kill9();
    for k in &keys {
        c.delete_object().bucket("bkt").key(k).send().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    cluster.nodes[3].restart();
    tokio::time::sleep(Duration::from_secs(8)).await; // its healing pass and a scrub or two
    for (i, n) in cluster.nodes.iter().enumerate() {
        let c = n.client();
        for k in &keys {
            match c.head_object().bucket("bkt").key(k).send().await {
                Err(e) if status(&e) == 404 => {}
                other => panic!("{k} came back through node {i}: {other:?}"),
            }
        }
        let listed = c.list_objects_v2().bucket("bkt").send().await.unwrap();
        assert!(
            listed.contents().is_empty(),
            "listed through node {i}: {:?}",
            listed.contents().iter().map(|o| o.key()).collect::<Vec<_>>()
        );
    }
    // and the markers still go once every drive has them
    for k in &keys[..4] {
        assert!(get_bytes(&c, "bkt", k).await.is_err());
    }
}

// ---- reads in flight ----------------------------------------------------------------------

/// The reported defect: in a cluster a GET still streaming when the data of the version it
/// reads was removed (60 s after an overwrite or a delete) was cut off, because a reader
/// opens a remote shard again for every read-ahead window. On one node the open file
/// stays readable; in a cluster it must too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gets_in_flight_finish_across_overwrites_and_deletes() {
    const SIZE: usize = 24 << 20;
    let cluster = TestCluster::start(3, 1, &[]); // 2+1: every read needs a remote shard
    let c = cluster.nodes[0].client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    for (i, key) in ["overwritten", "deleted"].into_iter().enumerate() {
        put(&c, "bkt", key, &value(i as u64, SIZE)).await.unwrap();
    }
    let mut streams = Vec::new();
    for key in ["overwritten", "deleted"] {
        let o = c.get_object().bucket("bkt").key(key).send().await.unwrap();
        let mut body = o.body;
        let mut got = Vec::new();
        while got.len() < 1 << 20 {
            got.extend_from_slice(&body.try_next().await.unwrap().expect("more bytes"));
        }
        streams.push((key, got, body));
    }
    let other = cluster.nodes[1].client();
    put(&other, "bkt", "overwritten", &value(7, SIZE)).await.unwrap();
    other
        .delete_object()
        .bucket("bkt")
        .key("deleted")
        .send()
        .await
        .unwrap();
    // past the 60 s after which the replaced versions' data is removed
    tokio::time::sleep(Duration::from_secs(70)).await;
    for (i, (key, mut got, body)) in streams.into_iter().enumerate() {
        let rest = body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{key}: cut off: {e:?}"));
        got.extend_from_slice(&rest.into_bytes());
        assert!(
            got == value(i as u64, SIZE),
            "{key}: the old version, whole ({} bytes)",
            got.len()
        );
    }
    assert_eq!(read(&c, "bkt", "overwritten").await, Some(value(7, SIZE)));
    assert_eq!(read(&c, "bkt", "deleted").await, None);
}

// ---- multipart uploads across nodes -----------------------------------------------------

async fn start_upload(
    c: &Client,
    key: &str,
    parts: &[Vec<u8>],
) -> (String, Vec<aws_sdk_s3::types::CompletedPart>) {
    let id = common::create_upload(c, "bkt", key).await;
    let mut done = Vec::new();
    for (i, body) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        done.push(common::upload_part(c, "bkt", key, &id, n, body.clone()).await);
    }
    (id, done)
}

async fn no_uploads_listed(c: &Client, what: &str) {
    let listed = c.list_multipart_uploads().bucket("bkt").send().await.unwrap();
    assert!(listed.uploads().is_empty(), "{what}: {:?}", listed.uploads());
}

async fn complete(
    c: &Client,
    key: &str,
    id: &str,
    parts: &[aws_sdk_s3::types::CompletedPart],
) -> Result<(), u16> {
    common::complete_upload(c, "bkt", key, id, parts).await
}

async fn abort(c: &Client, key: &str, id: &str) -> Result<(), u16> {
    c.abort_multipart_upload()
        .bucket("bkt")
        .key(key)
        .upload_id(id)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| status(&e))
}

/// The reported defect: a Complete while a node was down left the upload and part records
/// on that node's drive; the upload was then listed, and an Abort (or an UploadPart) of it
/// through that node deleted parts the completed object uses. The ending is now on a write
/// quorum and wins over the stale records everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completed_upload_stays_completed_on_a_node_that_was_down() {
    let mut cluster = TestCluster::start(3, 1, &[]); // 2+1
    let c = cluster.nodes[0].client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let bodies = vec![value(1, 5 << 20), value(2, 1000)];
    let whole: Vec<u8> = bodies.concat();
    let (id, parts) = start_upload(&c, "mp", &bodies).await;
    cluster.nodes[2].kill9();
    complete(&c, "mp", &id, &parts)
        .await
        .expect("complete with a node down");
    cluster.nodes[2].restart();
    for (i, n) in cluster.nodes.iter().enumerate() {
        no_uploads_listed(&n.client(), &format!("node {i}")).await;
    }
    let late = cluster.nodes[2].client();
    assert_eq!(
        abort(&late, "mp", &id).await,
        Err(404),
        "an abort after the complete"
    );
    let e = late
        .upload_part()
        .bucket("bkt")
        .key("mp")
        .upload_id(&id)
        .part_number(1)
        .body(ByteStream::from(value(3, 1000)))
        .send()
        .await
        .expect_err("no part after the complete");
    assert_eq!(status(&e), 404);
    // the object is whole, with any one node down
    for down in 0..3 {
        cluster.nodes[down].kill9();
        let up = cluster.nodes[(down + 1) % 3].client();
        assert!(
            read(&up, "bkt", "mp").await == Some(whole.clone()),
            "with node {down} down"
        );
        cluster.nodes[down].restart();
    }
    // a retried Complete gets the same answer, and never puts the object back over a
    // later write (node 2 may still hold the part records when the retry comes)
    complete(&c, "mp", &id, &parts).await.expect("a retried complete");
    put(&c, "bkt", "mp", b"written after the complete").await.unwrap();
    let retried = complete(&late, "mp", &id, &parts).await;
    assert!(retried == Ok(()) || retried == Err(404), "{retried:?}");
    assert_eq!(
        read(&c, "bkt", "mp").await.as_deref(),
        Some(&b"written after the complete"[..]),
        "a retried complete undid a later PUT"
    );
}

/// A Complete and an Abort of one upload sent at once through different nodes: exactly one
/// of them takes effect, and the key then holds the whole object or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_complete_and_an_abort_at_once_end_the_upload_once() {
    let cluster = TestCluster::start(3, 1, &[]);
    let clients: Vec<Client> = cluster.nodes.iter().map(|n| n.client()).collect();
    clients[0].create_bucket().bucket("bkt").send().await.unwrap();
    let (mut completed, mut aborted) = (0, 0);
    for round in 0..8u64 {
        let key = format!("race-{round}");
        let body = value(round, 1000);
        let (id, parts) = start_upload(&clients[0], &key, std::slice::from_ref(&body)).await;
        // the abort starts a little later in each round, so that either may win
        let late_abort = async {
            tokio::time::sleep(Duration::from_millis(round * 3)).await;
            abort(&clients[2], &key, &id).await
        };
        let (done, gone) = tokio::join!(complete(&clients[1], &key, &id, &parts), late_abort);
        assert!(
            done.is_ok() != gone.is_ok(),
            "round {round}: exactly one wins (complete {done:?}, abort {gone:?})"
        );
        let stored = read(&clients[0], "bkt", &key).await;
        if done.is_ok() {
            completed += 1;
            assert!(stored == Some(body), "round {round}: the completed object, whole");
        } else {
            aborted += 1;
            assert_eq!(gone, Ok(()));
            assert_eq!(stored, None, "round {round}: aborted, nothing stored");
            assert_eq!(done, Err(404), "round {round}");
        }
        no_uploads_listed(&clients[0], &format!("round {round}")).await;
    }
    eprintln!("complete won {completed}, abort won {aborted}");
}

// ---- orphan sweeps ----------------------------------------------------------------------

/// The reported defect: the start-up sweep consulted only its own node's records, so a
/// node that missed a record commit (the PUT succeeded on the other two of 2+1) deleted
/// its shard of the object, which then had no redundancy left. Now a shard goes only when
/// no record on any drive of the cluster names it; a PUT whose record reached no drive
/// still leaves shards that the sweep removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sweeps_keep_shards_that_records_on_other_nodes_name() {
    let mut cluster = TestCluster::start(3, 1, &[]); // 2+1: W = 2
    let c = cluster.nodes[0].client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    cluster.nodes[0].set_env("RINGSTORE_FAULTS", "record-commits=2");
    cluster.nodes[0].restart();
    put(&cluster.nodes[0].client(), "bkt", "kept", &value(1, LARGE))
        .await
        .expect("a commit on 2 of 3 drives is acknowledged");
    cluster.nodes[0].set_env("RINGSTORE_FAULTS", "record-commits=0");
    cluster.nodes[0].restart();
    put(
        &no_retry(&cluster.nodes[0].client()),
        "bkt",
        "orphan",
        &value(2, LARGE),
    )
    .await
    .expect_err("a record on no drive fails");
    let shards = |cluster: &TestCluster| -> Vec<usize> {
        cluster.nodes.iter().map(|n| n.shard_files(0).len()).collect()
    };
    assert_eq!(
        shards(&cluster),
        vec![2, 2, 2],
        "a shard of each object on every node"
    );

    // sweeps consider shard files an hour old: restart every node two hours ahead, all at
    // once, so that no sweep waits for a heal that a restarted peer asked for
    cluster.nodes[0].remove_env("RINGSTORE_FAULTS");
    for n in &mut cluster.nodes {
        n.kill9();
        n.set_clock_offset(2 * 3600);
    }
    for n in &mut cluster.nodes {
        n.launch();
    }
    for n in &mut cluster.nodes {
        n.wait_ready();
    }
    let removed = |cluster: &TestCluster| -> u64 {
        (0..3)
            .map(|i| {
                cluster.status(i)["healing"]["orphans_removed"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while removed(&cluster) < 3 {
        assert!(Instant::now() < deadline, "the orphan's shards were not swept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(removed(&cluster), 3, "only the orphan's shards were removed");
    assert_eq!(
        shards(&cluster),
        vec![1, 1, 1],
        "the orphan's shards went, the object's stayed"
    );
    // any two nodes serve the object
    for down in 0..3 {
        cluster.nodes[down].kill9();
        let up = (down + 1) % 3;
        assert_eq!(
            read(&cluster.nodes[up].client(), "bkt", "kept").await,
            Some(value(1, LARGE)),
            "with node {down} down"
        );
        cluster.nodes[down].restart();
    }
}

// ---- listing -----------------------------------------------------------------------------

/// The reported defect: on 4 nodes of 3 drives (2+2) with one node down, listing and bucket
/// deletion failed: the drives that did not answer were counted over the whole layout (3 of
/// 12, more than the 2 a stripe may miss) although no partition missed more than one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_needs_a_read_quorum_per_partition_not_per_layout() {
    let mut cluster = TestCluster::start(4, 3, &["--redundancy", "2+2"]);
    let c = cluster.nodes[0].client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("key-{i:02}")).collect();
    for (i, k) in keys.iter().enumerate() {
        put(&c, "bkt", k, &value(i as u64, 100)).await.unwrap();
    }
    cluster.nodes[3].kill9();
    let listed = c
        .list_objects_v2()
        .bucket("bkt")
        .send()
        .await
        .expect("list with a node down");
    let names: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(names, keys.iter().map(String::as_str).collect::<Vec<_>>());
    for k in &keys {
        c.delete_object().bucket("bkt").key(k).send().await.unwrap();
    }
    c.delete_bucket()
        .bucket("bkt")
        .send()
        .await
        .expect("delete the emptied bucket with a node down");
    let buckets = c.list_buckets().send().await.unwrap();
    assert!(buckets.buckets().is_empty(), "{buckets:?}");
}

// ---- layout changes -----------------------------------------------------------------

/// The reported defect: on 4 drives (2+2) a layout with redundancy 3+1 was accepted, and a
/// GET of an object written before answered 500. Now the change re-encodes what was written
/// before (inline and shard-file objects alike) and every object reads back, during and
/// after; a redundancy the drives cannot hold is refused with a 400 that says why, by the
/// API and the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redundancy_change_re_encodes_what_was_written_before() {
    let server = Server::start(4);
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let bodies: Vec<(String, Vec<u8>)> = [17usize, 4 * 1024, 300 * 1024, 3 * 1024 * 1024 + 5]
        .iter()
        .map(|n| (format!("k{n}"), (0..*n).map(|i| (i * 13 + n) as u8).collect()))
        .collect();
    for (k, b) in &bodies {
        put(&c, "bkt", k, b).await.unwrap();
    }
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ringstore"))
            .args(["admin", "layout", "apply"])
            .args(args)
            .arg("--endpoint")
            .arg(server.endpoint())
            .env("RINGSTORE_SECRET_KEY", common::SECRET_KEY)
            .output()
            .expect("run the CLI")
    };
    let out = cli(&["--redundancy", "5+2"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs 7 drives"), "CLI said: {stderr}");
    let out = cli(&["--redundancy", "3+1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (k, b) in &bodies {
            assert_eq!(read(&c, "bkt", k).await.as_deref(), Some(&b[..]), "{k}");
        }
        let t = server.admin_get("transition").expect("transition answers");
        if t["transition"]["phase"] == "finished" {
            assert_eq!(t["transition"]["kind"], "reencode", "{t}");
            assert!(t["transition"]["objects_moved"].as_u64().unwrap() >= 4, "{t}");
            break;
        }
        assert!(Instant::now() < deadline, "not finished: {t}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let layout = server.admin_get("layout").expect("layout answers");
    assert_eq!(layout["redundancy"], "3+1", "{layout}");
    for (k, b) in &bodies {
        assert_eq!(read(&c, "bkt", k).await.as_deref(), Some(&b[..]), "{k} after");
    }
}

/// A layout without a member drains it, unless too few drives would be left for the
/// redundancy: then it is refused with a 400 that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layout_leaving_too_few_drives_is_refused() {
    let cluster = TestCluster::start(3, 1, &[]);
    let (code, answer) = cluster.nodes[0]
        .admin_post("layout", r#"{"nodes": ["node-0", "node-1"]}"#)
        .expect("layout apply answers");
    assert_eq!(code, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "InvalidLayout", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("needs 3 drives") && message.contains("has 2"),
        "{answer}"
    );
    let layout = cluster.nodes[0].admin_get("layout").expect("layout answers");
    assert_eq!(layout["version"], 1, "{layout}");
}

// ---- conditional writes -----------------------------------------------------------------

/// The outcome of each of `n` PUTs started together through the nodes in turn: the HTTP
/// status (200, 412, or another code for any other answer).
async fn race_puts(clients: &[Client], key: &str, n: usize, if_match: Option<String>) -> Vec<u16> {
    // bodies differ from every earlier round's, so that no two writes share an ETag
    let base = if if_match.is_some() { 200 } else { 100 };
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let c = clients[i % clients.len()].clone();
            let key = key.to_string();
            let if_match = if_match.clone();
            tokio::spawn(async move {
                let mut req = c
                    .put_object()
                    .bucket("bkt")
                    .key(&key)
                    .body(ByteStream::from(value(base + i as u64, 700)));
                req = match if_match {
                    Some(etag) => req.if_match(etag),
                    None => req.if_none_match("*"),
                };
                match req.send().await {
                    Ok(_) => 200,
                    Err(e) => status(&e),
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// How many of the outcomes were 200 and how many 412.
fn won_and_refused(outcomes: &[u16]) -> (usize, usize) {
    let count = |code| outcomes.iter().filter(|s| **s == code).count();
    (count(200), count(412))
}

async fn etag_of(c: &Client, key: &str) -> String {
    let head = c.head_object().bucket("bkt").key(key).send().await.unwrap();
    head.e_tag().unwrap().to_string()
}

/// Of concurrent If-None-Match: * PUTs of one new key through different nodes exactly one
/// succeeds and the others get 412; concurrent If-Match PUTs on the same ETag likewise,
/// and a conditional DELETE on a stale ETag is refused. Before, the check and the commit
/// were separate steps and every concurrent create succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_writes_have_exactly_one_winner() {
    let cluster = TestCluster::start(3, 1, &[]);
    let clients: Vec<Client> = cluster.nodes.iter().map(|n| no_retry(&n.client())).collect();
    clients[0].create_bucket().bucket("bkt").send().await.unwrap();
    for round in 0..5 {
        let key = format!("lock-{round}");
        let outcomes = race_puts(&clients, &key, 6, None).await;
        assert_eq!(
            won_and_refused(&outcomes),
            (1, 5),
            "round {round}: If-None-Match outcomes {outcomes:?}"
        );
        let etag = etag_of(&clients[1], &key).await;
        let outcomes = race_puts(&clients, &key, 6, Some(etag.clone())).await;
        assert_eq!(
            won_and_refused(&outcomes),
            (1, 5),
            "round {round}: If-Match outcomes {outcomes:?}"
        );
        // the old ETag no longer matches: a conditional delete on it is refused
        let stale = clients[2]
            .delete_object()
            .bucket("bkt")
            .key(&key)
            .if_match(&etag)
            .send()
            .await;
        assert_eq!(
            stale.map(|_| 200).unwrap_or_else(|e| status(&e)),
            412,
            "round {round}: stale If-Match DELETE"
        );
        assert!(
            read(&clients[0], "bkt", &key).await.is_some(),
            "round {round}: still there"
        );
        let now = etag_of(&clients[2], &key).await;
        clients[1]
            .delete_object()
            .bucket("bkt")
            .key(&key)
            .if_match(&now)
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: If-Match DELETE on the current ETag: {e:?}"));
        assert_eq!(
            read(&clients[0], "bkt", &key).await,
            None,
            "round {round}: deleted"
        );
    }
}

/// A Complete whose ending held but whose object commit failed (no drive took the object
/// record) lost the upload: a retry answered `NoSuchUpload` and the parts went with the
/// sweep. The ending now names the object it commits: a retry commits exactly that version,
/// and so does the healer when nobody retries; a PUT made after the failed Complete is never
/// overwritten by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_complete_that_failed_after_its_ending_is_finished_by_a_retry_or_the_healer() {
    let mut server = Server::start_with(4, &["--scrub-interval", "2"], &[]); // 2+2
    let c = server.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let bodies = vec![value(1, 5 << 20), value(2, 1000)];
    let whole: Vec<u8> = bodies.concat();
    let mut uploads = Vec::new();
    for key in ["retried", "healed", "overwritten"] {
        uploads.push((key, start_upload(&c, key, &bodies).await));
    }
    // object record commits reach no drive: each Complete ends its upload, then fails
    server.set_env("RINGSTORE_FAULTS", "record-commits=0");
    server.restart();
    let failing = no_retry(&server.client());
    for (key, (id, parts)) in &uploads {
        let r = complete(&failing, key, id, parts).await;
        assert!(matches!(r, Err(500..)), "{key}: the Complete fails: {r:?}");
    }
    server.remove_env("RINGSTORE_FAULTS");
    server.restart();
    let c = server.client();
    // a PUT after the failed Complete: the Complete ordered before it
    put(&c, "bkt", "overwritten", &value(9, 100)).await.unwrap();
    let (_, (id, parts)) = &uploads[2];
    assert_eq!(complete(&c, "overwritten", id, parts).await, Err(404));
    assert_eq!(read(&c, "bkt", "overwritten").await, Some(value(9, 100)));
    // a retry commits the object the ending names
    let (_, (id, parts)) = &uploads[0];
    assert_eq!(complete(&c, "retried", id, parts).await, Ok(()));
    assert_eq!(read(&c, "bkt", "retried").await.as_deref(), Some(&whole[..]));
    // and a retry of that answers the object
    assert_eq!(complete(&c, "retried", id, parts).await, Ok(()));
    // nobody retries the second: the scrubber commits it
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while read(&c, "bkt", "healed").await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the healer did not finish the Complete"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(read(&c, "bkt", "healed").await.as_deref(), Some(&whole[..]));
    assert_eq!(read(&c, "bkt", "overwritten").await, Some(value(9, 100)));
    no_uploads_listed(&c, "after the Completes").await;
}
