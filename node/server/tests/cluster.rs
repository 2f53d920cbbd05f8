//! A real cluster: 3 and 6 `ringstore server` processes on distinct loopback addresses,
//! started all at once with the same seed list, driven by the AWS SDK. Nodes are killed with
//! SIGKILL under load, restarted with emptied drives, their shards corrupted, the Raft leader
//! killed, and a node with the wrong cluster secret kept out.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::primitives::ByteStream;
use common::{CLUSTER_SECRET, Server, TestCluster, code, content_for, get_bytes};

const KIB: usize = 1024;

/// The client without retries or with few, and short timeouts, so a dead node fails fast.
fn impatient(c: &Client) -> Client {
    Client::from_conf(
        c.config()
            .to_builder()
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .build(),
            )
            .build(),
    )
}

async fn put(c: &Client, bucket: &str, key: &str) -> Result<(), String> {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(content_for(key)))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// Keys whose bytes do not read back exactly, through `c`.
async fn check_all(c: &Client, bucket: &str, keys: &[String]) -> Vec<String> {
    let mut bad = Vec::new();
    for k in keys {
        match get_bytes(c, bucket, k).await {
            Ok(b) if b == content_for(k) => {}
            Ok(b) => bad.push(format!("{k}: {} bytes differ", b.len())),
            Err(e) => bad.push(e),
        }
    }
    bad
}

async fn list_keys(c: &Client, bucket: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let out = c
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token)
            .send()
            .await
            .expect("list");
        keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        match out.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => return keys,
        }
    }
}

/// Reads ranges of `key` (written by `put`, at least two 2+1 stripes long) that cross
/// the chunk and stripe boundaries, and checks each against its content.
async fn check_ranges(client: &Client, bucket: &str, key: &str, what: &str) {
    let whole = content_for(key);
    let chunk = 256 * KIB - 4;
    let ranges = [
        (0, 0),
        (chunk - 10, chunk + 10),
        (2 * chunk - 3, 2 * chunk + 2),
        (chunk + 1, whole.len() - 1),
        (whole.len() - 100, whole.len() - 1),
    ];
    for (a, b) in ranges {
        let got = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={a}-{b}"))
            .send()
            .await
            .expect("ranged get");
        let got = got.body.collect().await.unwrap().into_bytes();
        assert!(got[..] == whole[a..=b], "bytes {a}-{b} of {key} {what}");
    }
}

async fn eventually(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn shard_files(drive: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(drive.join(".ringstore").join("data"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            out.push(f.path());
        }
    }
    out
}

/// Background PUT/GET load through several nodes; records every acknowledged write.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    gets_ok: Arc<AtomicU64>,
    gets_failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(clients: Vec<Client>, bucket: &'static str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let gets_ok = Arc::new(AtomicU64::new(0));
        let gets_failed = Arc::new(AtomicU64::new(0));
        let seq = Arc::new(AtomicU64::new(0));
        let tasks = (0..workers)
            .map(|w| {
                let c = clients[w % clients.len()].clone();
                let (stop, acked, ok, failed, seq) = (
                    stop.clone(),
                    acked.clone(),
                    gets_ok.clone(),
                    gets_failed.clone(),
                    seq.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        // mostly small (inline) objects, some with shard files
                        let size = [3 * KIB, 40 * KIB, 300 * KIB, 1100 * KIB][n as usize % 4];
                        let key = format!("load/{w}/{n}-{size}");
                        if put(&c, bucket, &key).await.is_ok() {
                            acked.lock().unwrap().push(key.clone());
                            match get_bytes(&c, bucket, &key).await {
                                Ok(b) if b == content_for(&key) => ok.fetch_add(1, Ordering::Relaxed),
                                _ => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            gets_ok,
            gets_failed,
            tasks,
        }
    }

    async fn finish(self) -> (Vec<String>, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let acked = self.acked.lock().unwrap().clone();
        (
            acked,
            self.gets_ok.load(Ordering::Relaxed),
            self.gets_failed.load(Ordering::Relaxed),
        )
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_start_together_and_serve_from_any_node() {
    let started = Instant::now();
    let cluster = TestCluster::start(3, 1, &[]);
    eprintln!("3 nodes ready in {:?}", started.elapsed());
    // one cluster: every node names the same leader and sees all three members
    let leaders: Vec<Option<usize>> = (0..3).map(|i| cluster.leader(i)).collect();
    assert!(leaders[0].is_some(), "a leader is elected: {leaders:?}");
    assert!(
        leaders.iter().all(|l| *l == leaders[0]),
        "nodes agree on the leader: {leaders:?}"
    );
    let status = cluster.status(1);
    assert_eq!(status["layout_version"], 1, "{status}");
    assert_eq!(status["redundancy"], "2+1", "{status}");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    assert_eq!(status["capacity"]["drives_online"], 3, "{status}");
    assert_eq!(
        status["cluster"]["voters"].as_array().unwrap().len(),
        3,
        "{status}"
    );

    let c: Vec<Client> = cluster.nodes.iter().map(|n| n.client()).collect();
    c[0].create_bucket()
        .bucket("bkt")
        .send()
        .await
        .expect("create bucket");
    // bucket creation through another node sees the first one at once
    let again = c[2].create_bucket().bucket("bkt").send().await.unwrap_err();
    assert_eq!(common::code(&again), "BucketAlreadyOwnedByYou");
    let mut keys = Vec::new();
    for (i, size) in [0, 1, 5 * KIB, 200 * KIB, 3 * 1024 * KIB].into_iter().enumerate() {
        let key = format!("obj{i}-{size}");
        put(&c[i % 3], "bkt", &key).await.expect("put");
        keys.push(key);
    }
    // read-after-write through every other node, and listings agree
    for (n, client) in c.iter().enumerate() {
        assert_eq!(
            check_all(client, "bkt", &keys).await,
            Vec::<String>::new(),
            "via node {n}"
        );
        let mut listed = list_keys(client, "bkt").await;
        listed.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(listed, want, "listing via node {n}");
    }
    // a GET from the start asks each remote drive once: its record comes with the first
    // read-ahead window of its shard, so an object within that window needs no shard read
    let shard_reads = || rpc_served(&cluster, "/rpc/v1/shard/{drive}/{data_id}", "GET");
    let with_data = || rpc_served(&cluster, "/rpc/v1/drive/get-with-data", "POST");
    let (reads_before, with_data_before) = (shard_reads(), with_data());
    for (n, client) in c.iter().enumerate() {
        let got = get_bytes(client, "bkt", &keys[3]).await.expect("get");
        assert!(got == content_for(&keys[3]), "{} via node {n}", keys[3]);
    }
    assert_eq!(shard_reads() - reads_before, 0, "no separate shard reads");
    // the read quorum asked is the data shards' drives: a node holding a data shard asks
    // one remote drive, the node holding the parity shard asks two
    assert_eq!(
        with_data() - with_data_before,
        4,
        "lookups with data for a GET through each of the 3 nodes"
    );
    // ranges through every node, across the chunk and stripe boundaries (reads that
    // rebuild chunks from parity cross them too, in the scrubber test)
    for (n, client) in c.iter().enumerate() {
        check_ranges(client, "bkt", &keys[4], &format!("via node {n}")).await;
    }
    // shards really are spread: every node holds shard files
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert!(!shard_files(&node.drives[0]).is_empty(), "node {i} holds shards");
    }
    // a deletion is seen everywhere too
    c[1].delete_object()
        .bucket("bkt")
        .key(&keys[0])
        .send()
        .await
        .expect("delete");
    let e = c[2]
        .head_object()
        .bucket("bkt")
        .key(&keys[0])
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::status(&e), 404);

    // a new cluster has nothing to heal: no node asks its peers to walk their objects
    // (a restarted node does, 1 s after it is up, see `emptied_drive_is_recognised...`)
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    assert_eq!(
        rpc_served(&cluster, "/rpc/v1/heal/scrub", "POST"),
        0,
        "healing passes requested in a new cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_one_killed_under_load_without_losing_writes() {
    let mut cluster = TestCluster::start(3, 1, &["--redundancy", "2+1"]);
    // a follower, so that the load meets the node failure and not also an election
    let leader = cluster.leader(0).expect("a leader");
    let victim = (leader + 1) % 3;
    survive_kills_under_load(&mut cluster, &[victim]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_nodes_survive_two_killed_under_load_without_losing_writes() {
    let mut cluster = TestCluster::start(6, 1, &["--redundancy", "4+2"]);
    let status = cluster.status(0);
    assert_eq!(status["redundancy"], "4+2");
    let voters = status["cluster"]["voters"].as_array().unwrap().len();
    let learners = status["cluster"]["learners"].as_array().unwrap().len();
    assert_eq!((voters, learners), (5, 1), "{status}");
    // two of five voters at most, so a Raft majority always remains
    survive_kills_under_load(&mut cluster, &[4, 5]).await;
}

/// Runs PUT/GET load through the nodes other than `victims`, kills the victims with SIGKILL
/// in the middle of it, and checks that no acknowledged write is lost or damaged: with the
/// victims down and after they return. Then, once the other nodes' healing passes are done,
/// kills as many *other* nodes and reads everything through a returned victim, which needs
/// the shards of the objects written while it was away rebuilt on it.
async fn survive_kills_under_load(cluster: &mut TestCluster, victims: &[usize]) {
    let n = cluster.nodes.len();
    let others: Vec<usize> = (0..n).filter(|i| !victims.contains(i)).collect();
    let clients: Vec<Client> = others
        .iter()
        .map(|i| impatient(&cluster.nodes[*i].client()))
        .collect();
    clients[0]
        .create_bucket()
        .bucket("load")
        .send()
        .await
        .expect("bucket");
    let load = Load::start(clients.clone(), "load", 8);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = load.acked();
    for v in victims {
        cluster.nodes[*v].kill9();
    }
    let killed_at = load.acked();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = load.acked() - killed_at;
    let (acked, gets_ok, gets_failed) = load.finish().await;
    eprintln!(
        "{n} nodes, {} killed: acknowledged writes {before} before the kill, {during} with \
         them down, {} total; read-back GETs ok {gets_ok}, failed {gets_failed}",
        victims.len(),
        acked.len()
    );
    assert!(during > 20, "writes continue with {victims:?} down ({during})");
    assert_eq!(gets_failed, 0, "GETs keep succeeding");
    let mut want = acked.clone();
    want.sort();
    // every acknowledged write reads back with the victims still down...
    let bad = check_all(&clients[1 % clients.len()], "load", &acked).await;
    assert!(bad.is_empty(), "lost or damaged with {victims:?} down: {bad:?}");
    let listed = sorted(&list_keys(clients.last().unwrap(), "load").await);
    assert_eq!(
        listed, want,
        "the listing with {victims:?} down holds exactly the acknowledged writes"
    );
    // ...and after they return
    for v in victims {
        cluster.nodes[*v].restart();
    }
    let back = cluster.nodes[victims[0]].client();
    let bad = check_all(&back, "load", &acked).await;
    assert!(bad.is_empty(), "lost or damaged after the restart: {bad:?}");
    let listed = sorted(&list_keys(&back, "load").await);
    assert_eq!(listed, want, "the listing holds exactly the acknowledged writes");

    // the returning nodes get what they missed
    eventually(
        Duration::from_secs(120),
        "the peers' healing passes finish",
        async || {
            for i in &others {
                let h = cluster.status(*i)["healing"].clone();
                if h["scrub_passes"].as_u64() < Some(1) || h["scrub_running"] == true {
                    return Err(format!("node {i}: {h}"));
                }
            }
            Ok(())
        },
    )
    .await;
    for i in &others[..victims.len()] {
        cluster.nodes[*i].kill9();
    }
    let bad = check_all(&back, "load", &acked).await;
    assert!(bad.is_empty(), "not repaired onto the returning nodes: {bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn emptied_drive_is_recognised_and_rebuilt() {
    let mut cluster = TestCluster::start(3, 1, &[]);
    let c = cluster.nodes[0].client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let mut keys = Vec::new();
    for i in 0..24 {
        let size = [2 * KIB, 150 * KIB, 700 * KIB][i % 3];
        let key = format!("k{i}-{size}");
        put(&c, "bkt", &key).await.unwrap();
        keys.push(key);
    }
    let victim = 2;
    let drive = cluster.nodes[victim].drives[0].clone();
    let id_before = std::fs::read_to_string(drive.join(".ringstore/drive.json")).unwrap();
    let shards_before = shard_files(&drive).len();
    assert!(shards_before > 0);
    cluster.nodes[victim].kill9();
    std::fs::remove_dir_all(&drive).unwrap();
    std::fs::create_dir_all(&drive).unwrap();
    cluster.nodes[victim].restart();
    let id_after = std::fs::read_to_string(drive.join(".ringstore/drive.json")).unwrap();
    assert_eq!(
        id_before, id_after,
        "the empty drive took over the lost drive's identity"
    );
    // the other nodes walk their objects at once; status shows the pass until it is done
    // (a pass that began before the restart does not count: it ends with the shards back)
    let mut seen_running = false;
    eventually(Duration::from_secs(60), "the healing passes finish", async || {
        for i in (0..3).filter(|i| *i != victim) {
            let h = cluster.status(i)["healing"].clone();
            seen_running |= h["scrub_running"] == true;
            if h["scrub_passes"].as_u64() < Some(1) || h["scrub_running"] == true {
                return Err(format!("node {i}: {h}"));
            }
        }
        match shard_files(&drive).len() {
            n if n < shards_before => Err(format!("{n} of {shards_before} shard files back")),
            _ => Ok(()),
        }
    })
    .await;
    let healed: u64 = [0, 1]
        .iter()
        .map(|i| cluster.status(*i)["healing"]["shards_healed"].as_u64().unwrap())
        .sum();
    let records: u64 = [0, 1]
        .iter()
        .map(|i| cluster.status(*i)["healing"]["records_healed"].as_u64().unwrap())
        .sum();
    let n = shard_files(&drive).len();
    eprintln!(
        "rebuilt: {healed} shards and {records} records healed by the peers, {n} of {shards_before} \
         shard files back (pass seen running: {seen_running}); healing: {} / {}",
        cluster.status(0)["healing"],
        cluster.status(1)["healing"]
    );
    assert_eq!(n, shards_before, "every lost shard file is rebuilt");
    // with another node down the data must come from the rebuilt drive
    cluster.nodes[1].kill9();
    let c2 = cluster.nodes[victim].client();
    let bad = check_all(&c2, "bkt", &keys).await;
    assert!(bad.is_empty(), "objects unreadable after the rebuild: {bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_shards_are_read_correctly_and_repaired_by_the_scrubber() {
    let cluster = TestCluster::start(3, 1, &["--scrub-interval", "2"]);
    let c = cluster.nodes[0].client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let keys: Vec<String> = (0..6).map(|i| format!("big{i}-{}", 600 * KIB)).collect();
    for k in &keys {
        put(&c, "bkt", k).await.unwrap();
    }
    // flip bytes in the middle of every shard file on node 1; no reads until the scrubber
    // (every 2 s here) has put them back, so the repair is the scrubber's own
    let files = shard_files(&cluster.nodes[1].drives[0]);
    assert!(!files.is_empty());
    let corrupt = |files: &[PathBuf]| {
        let mut originals = BTreeMap::new();
        for f in files {
            let mut bytes = std::fs::read(f).unwrap();
            originals.insert(f.clone(), bytes.clone());
            let mid = bytes.len() / 2;
            for b in &mut bytes[mid..mid + 64] {
                *b ^= 0xA5;
            }
            std::fs::write(f, &bytes).unwrap();
        }
        originals
    };
    let originals = corrupt(&files);
    let t = Instant::now();
    eventually(
        Duration::from_secs(60),
        "the scrubber repairs every shard",
        async || {
            let bad = originals
                .iter()
                .filter(|(f, orig)| std::fs::read(f).ok().as_ref() != Some(*orig))
                .count();
            (bad == 0)
                .then_some(())
                .ok_or(format!("{bad} shard files still differ"))
        },
    )
    .await;
    eprintln!(
        "the scrubber repaired {} corrupt shard files in {:?}",
        files.len(),
        t.elapsed()
    );
    // corrupt again: reads through every node are still byte-exact, ranges across the
    // chunk and stripe boundaries too (a corrupt data shard's chunks are rebuilt from parity)
    corrupt(&files);
    for (i, n) in cluster.nodes.iter().enumerate() {
        assert!(check_all(&n.client(), "bkt", &keys).await.is_empty());
        for k in &keys[..2] {
            check_ranges(&n.client(), "bkt", k, &format!("corrupt, via node {i}")).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_takes_over_and_buckets_can_still_be_created() {
    let mut cluster = TestCluster::start(3, 1, &[]);
    let old = cluster.leader(0).expect("a leader");
    let term_before = cluster.status(0)["cluster"]["current_term"].as_u64().unwrap();
    cluster.nodes[old].kill9();
    let survivor = (old + 1) % 3;
    let started = Instant::now();
    let mut new = None;
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(l) = cluster.leader(survivor)
            && l != old
        {
            new = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new = new.expect("a new leader within 20 s");
    let term_after = cluster.status(survivor)["cluster"]["current_term"]
        .as_u64()
        .unwrap();
    eprintln!(
        "node-{new} leads after {:?}, term {term_before} -> {term_after}",
        started.elapsed()
    );
    assert!(term_after > term_before);
    let c = cluster.nodes[survivor].client();
    c.create_bucket()
        .bucket("after-failover")
        .send()
        .await
        .expect("create bucket");
    put(&c, "after-failover", "x-10")
        .await
        .expect("put with one node down");
    assert_eq!(
        get_bytes(&cluster.nodes[new].client(), "after-failover", "x-10")
            .await
            .unwrap(),
        content_for("x-10")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_the_wrong_secret_cannot_join() {
    let cluster = TestCluster::start(3, 1, &[]);
    let seeds = cluster.nodes[0].admin_get("status").unwrap()["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["rpc_addr"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let rpc = common::free_addr_on("127.0.0.30").to_string();
    let mut intruder = Server::configure(
        1,
        common::free_addr_on("127.0.0.30"),
        &[
            "--node-name",
            "intruder",
            "--rpc-address",
            &rpc,
            "--seeds",
            &seeds,
        ],
        &[("RINGSTORE_CLUSTER_SECRET", "not-the-cluster-secret-at-all")],
    );
    assert_ne!(CLUSTER_SECRET, "not-the-cluster-secret-at-all");
    intruder.launch();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(intruder.running(), "the intruder keeps running (and trying)");
    let ready = common::http_get(intruder.addr, "/health/ready").map(|r| r.0);
    assert_eq!(ready, Some(503), "the intruder answers but never becomes ready");
    for i in 0..3 {
        let members = cluster.status(i)["cluster"]["members"].to_string();
        assert!(
            !members.contains("intruder"),
            "node {i} lists the intruder: {members}"
        );
    }
}

/// The reported defect: two nodes started with the same `--node-name` (the default is
/// `ringstore-0`) each founded a cluster of their own. Both now refuse, naming both
/// addresses, and neither becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_new_nodes_of_one_name_refuse_to_form_a_cluster() {
    let mut cluster = TestCluster::configure(2, 1, &[]);
    let rpcs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| {
            let at = n.extra_arg("--rpc-address").expect("an RPC address");
            at.to_string()
        })
        .collect();
    for n in &mut cluster.nodes {
        n.set_arg("--node-name", "ringstore-0");
        n.capture_log();
        n.launch();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    for (i, n) in cluster.nodes.iter_mut().enumerate() {
        assert!(n.running(), "node {i} keeps running (and refusing)");
        let ready = common::http_get(n.addr, "/health/ready").map(|r| r.0);
        assert_eq!(ready, Some(503), "node {i} must not become ready on its own");
        let log = n.log();
        assert!(
            log.contains("two nodes are named ringstore-0") && rpcs.iter().all(|a| log.contains(a.as_str())),
            "node {i} logged: {log}"
        );
    }
}

/// The reported defect: a node started with the name of a member, at another address,
/// took the member's place. The leader refuses it while the member still answers there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_node_with_a_members_name_is_refused() {
    let cluster = TestCluster::start(3, 1, &[]);
    let member_at = cluster.nodes[1].extra_arg("--rpc-address").unwrap().to_string();
    // only node-0 as a seed: the leader, not the newcomer's own discovery, must refuse it
    let seed = cluster.nodes[0].extra_arg("--rpc-address").unwrap().to_string();
    let rpc = common::free_addr_on("127.0.0.31").to_string();
    let mut twin = Server::configure(
        1,
        common::free_addr_on("127.0.0.31"),
        &["--node-name", "node-1", "--rpc-address", &rpc, "--seeds", &seed],
        &[("RINGSTORE_CLUSTER_SECRET", CLUSTER_SECRET)],
    );
    twin.capture_log();
    twin.launch();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let log = twin.log();
    assert!(
        log.contains("already a member at") && log.contains(&member_at) && log.contains(&rpc),
        "the twin logged: {log}"
    );
    for i in [0, 2] {
        let nodes = cluster.status(i)["nodes"].clone();
        let node1 = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "node-1")
            .expect("node-1 listed");
        assert_eq!(node1["rpc_address"], member_at.as_str(), "node {i}: {nodes}");
        assert_eq!(node1["state"], "online", "node {i}: {nodes}");
    }
}

/// An RPC address of `0.0.0.0` would be advertised to peers as is: refused at start, with
/// the flag that fixes it named.
#[test]
fn an_unroutable_rpc_address_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringstore"))
            .arg("server")
            .arg("--data")
            .arg(dir.path())
            .args(args)
            .env("RINGSTORE_CLUSTER_SECRET", CLUSTER_SECRET)
            .env("RINGSTORE_ACCESS_KEY", common::ACCESS_KEY)
            .env("RINGSTORE_SECRET_KEY", common::SECRET_KEY)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the server");
        // a server that accepts the address would run on: give it a while, then stop it
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    };
    let out = run(&["--rpc-address", "0.0.0.0:19100", "--seeds", "10.0.0.1:9100"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0.0.0.0:19100") && err.contains("--rpc-advertise"),
        "{err}"
    );
    let out = run(&[
        "--rpc-address",
        "0.0.0.0:19100",
        "--rpc-advertise",
        "[::]:19100",
        "--seeds",
        "10.0.0.1:9100",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[::]:19100") && err.contains("not an address peers can reach"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_written_before_a_layout_change_stay_readable_and_deletable() {
    let mut cluster = start_seeded(5, 3, &["--redundancy", "2+1"], &[]);
    let c = cluster.nodes[0].client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let keys: Vec<String> = (0..30)
        .map(|i| format!("old{i}-{}", [2 * KIB, 150 * KIB, 700 * KIB][i % 3]))
        .collect();
    for k in &keys {
        put(&c, "bkt", k).await.unwrap();
    }
    // two more nodes join (as learners), then the layout grows to all five
    let doc = join_and_apply(&mut cluster, 3..5);
    assert_eq!(doc["version"], 2, "{doc}");
    assert_eq!(doc["nodes"].as_array().map(Vec::len), Some(5), "{doc}");
    eventually(
        Duration::from_secs(20),
        "every node places data with layout 2",
        async || {
            for i in 0..5 {
                let v = cluster.status(i)["layout_version"].clone();
                if v != 2 {
                    return Err(format!("node {i} at {v}"));
                }
            }
            Ok(())
        },
    )
    .await;
    // while the transition moves data, everything reads back through every node, new ones
    // included
    for i in 0..5 {
        let ci = cluster.nodes[i].client();
        let bad = check_all(&ci, "bkt", &keys).await;
        assert!(
            bad.is_empty(),
            "node {i}: unreadable after the layout change: {bad:?}"
        );
        assert_eq!(list_keys(&ci, "bkt").await, sorted(&keys), "node {i} lists");
    }
    // a delete of an object placed by the old layout sticks; an overwrite wins
    let c4 = cluster.nodes[4].client();
    for k in keys.iter().take(6) {
        c4.delete_object().bucket("bkt").key(k).send().await.unwrap();
    }
    let overwritten: Vec<String> = keys.iter().skip(6).take(6).cloned().collect();
    for k in &overwritten {
        c4.put_object()
            .bucket("bkt")
            .key(k)
            .body(ByteStream::from(b"new".to_vec()))
            .send()
            .await
            .unwrap();
    }
    let new_keys: Vec<String> = (0..12)
        .map(|i| format!("new{i}-{}", [2 * KIB, 700 * KIB][i % 2]))
        .collect();
    for k in &new_keys {
        put(&c4, "bkt", k).await.unwrap();
    }
    let mut live: Vec<String> = keys.iter().skip(6).cloned().chain(new_keys.clone()).collect();
    live.sort();
    for i in 0..5 {
        let ci = cluster.nodes[i].client();
        for k in keys.iter().take(6) {
            let e = ci.get_object().bucket("bkt").key(k).send().await.unwrap_err();
            assert_eq!(code(&e), "NoSuchKey", "node {i}: {k} came back");
        }
        for k in &overwritten {
            assert_eq!(get_bytes(&ci, "bkt", k).await.unwrap(), b"new", "node {i}: {k}");
        }
        let bad = check_all(&ci, "bkt", &keys[12..]).await;
        assert!(bad.is_empty(), "node {i}: {bad:?}");
        let bad = check_all(&ci, "bkt", &new_keys).await;
        assert!(bad.is_empty(), "node {i}: {bad:?}");
        assert_eq!(list_keys(&ci, "bkt").await, live, "node {i} lists");
    }
    // once the transition finished, everything still reads back and the new nodes hold
    // shards (moved ones, and new writes)
    transition_finished(&cluster.nodes[0], Duration::from_secs(120)).await;
    for i in 0..5 {
        let ci = cluster.nodes[i].client();
        let bad = check_all(&ci, "bkt", &keys[12..]).await;
        assert!(bad.is_empty(), "node {i} after the transition: {bad:?}");
        assert_eq!(
            list_keys(&ci, "bkt").await,
            live,
            "node {i} lists after the transition"
        );
    }
    let on_new: usize = (3..5)
        .map(|i| shard_files(&cluster.nodes[i].drives[0]).len())
        .sum();
    assert!(on_new > 0, "the new layout places shards on the new nodes");
    // and a restarted node still finds the old objects (the layout history is in Raft)
    cluster.nodes[2].kill9();
    cluster.nodes[2].restart();
    let bad = check_all(&cluster.nodes[2].client(), "bkt", &keys[12..]).await;
    assert!(bad.is_empty(), "after a restart: {bad:?}");
}

/// Internal RPC requests served by all nodes of `cluster` on `route` with `method`, from
/// their metrics.
fn rpc_served(cluster: &TestCluster, route: &str, method: &str) -> u64 {
    let labels = format!("route=\"{route}\",method=\"{method}\"");
    cluster
        .nodes
        .iter()
        .map(|node| {
            let (code, text) = common::http_get(node.addr, "/_ringstore/metrics").expect("metrics answer");
            assert_eq!(code, 200);
            text.lines()
                .filter(|l| l.starts_with("ringstore_rpc_served_requests_total{") && l.contains(&labels))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn sorted(keys: &[String]) -> Vec<String> {
    let mut k = keys.to_vec();
    k.sort();
    k
}

/// Sends `signal` (`STOP`, `CONT`) to a node's process.
fn signal(node: &Server, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &node.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_node_is_avoided_after_one_timeout() {
    let cluster = TestCluster::start(4, 1, &["--redundancy", "2+2"]);
    let leader = cluster.leader(0).expect("a leader");
    // a node that accepts connections but never answers: stopped, not killed
    let victim = (0..4).find(|i| *i != leader).expect("a follower");
    let others: Vec<usize> = (0..4).filter(|i| *i != victim).collect();
    let clients: Vec<Client> = others
        .iter()
        .map(|i| impatient(&cluster.nodes[*i].client()))
        .collect();
    clients[0]
        .create_bucket()
        .bucket("hung")
        .send()
        .await
        .expect("bucket");
    // sizes alternate between inline records (2 KiB) and shard files (300 KiB)
    let size = |i: usize| if i.is_multiple_of(2) { 300 * KIB } else { 2 * KIB };
    let mut keys = Vec::new();
    for i in 0..6 {
        let key = format!("before-{i}-{}", size(i));
        put(&clients[i % 3], "hung", &key).await.expect("put");
        keys.push(key);
    }
    let shards_before = shard_files(&cluster.nodes[victim].drives[0]).len();

    signal(&cluster.nodes[victim], "STOP");
    // every S3 request goes on without the stopped node; only the first ones that meet it
    // wait for an internal call to time out, after which its peers avoid it
    let mut slow = Vec::new();
    for i in 0..24 {
        let c = &clients[i % 3];
        let key = if i % 2 == 0 {
            let key = format!("during-{i}-{}", size(i / 2));
            keys.push(key.clone());
            key
        } else {
            keys[i % keys.len()].clone()
        };
        let started = Instant::now();
        let result = if i % 2 == 0 {
            put(c, "hung", &key).await
        } else {
            match get_bytes(c, "hung", &key).await {
                Ok(b) if b == content_for(&key) => Ok(()),
                Ok(b) => Err(format!("{key}: {} bytes differ", b.len())),
                Err(e) => Err(e),
            }
        };
        let took = started.elapsed();
        result.unwrap_or_else(|e| panic!("request {i} with node {victim} stopped: {e}"));
        if took > Duration::from_secs(5) {
            slow.push((i, took));
        }
    }
    eprintln!("requests that met the stopped node's timeout: {slow:?}");
    assert!(
        slow.len() <= 3,
        "the stopped node kept costing requests a timeout: {slow:?}"
    );

    // back: its peers see it answer and heal what it missed (in 4-node 2+2 every node
    // holds a shard of every object written with shard files)
    signal(&cluster.nodes[victim], "CONT");
    let big = keys
        .iter()
        .filter(|k| k.ends_with(&format!("-{}", 300 * KIB)))
        .count();
    let missed = big - shards_before;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut shards = shard_files(&cluster.nodes[victim].drives[0]).len();
    while shards < big && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        shards = shard_files(&cluster.nodes[victim].drives[0]).len();
    }
    eprintln!(
        "shard files on the resumed node: {shards_before} before the stop, {shards} after healing, {big} objects with shards ({missed} written while it was stopped)"
    );
    assert!(
        shards >= big,
        "the resumed node got {shards} of {big} shards back"
    );
    let back = cluster.nodes[victim].client();
    assert_eq!(check_all(&back, "hung", &keys).await, Vec::<String>::new());
    for c in &clients {
        assert_eq!(check_all(c, "hung", &keys).await, Vec::<String>::new());
    }

    // once more with writes only: no read meets the missing shards, so what brings them to
    // the resumed node is the healing pass its peers start when they see it answer again
    // (the periodic scrubber runs daily). Passes still running from the first resume could
    // pick the new objects up as well, so the stop waits until every node is quiet.
    eventually(Duration::from_secs(60), "the healing passes finish", async || {
        for i in 0..4 {
            let h = cluster.status(i)["healing"].clone();
            if h["scrub_running"] == true {
                return Err(format!("node {i}: {h}"));
            }
        }
        Ok(())
    })
    .await;
    signal(&cluster.nodes[victim], "STOP");
    let mut written = Vec::new();
    for i in 0..4 {
        let key = format!("unread-{i}-{}", 300 * KIB);
        put(&clients[i % 3], "hung", &key)
            .await
            .expect("put while stopped");
        written.push(key);
    }
    let before = shard_files(&cluster.nodes[victim].drives[0]).len();
    signal(&cluster.nodes[victim], "CONT");
    let want = big + written.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut shards = before;
    while shards < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        shards = shard_files(&cluster.nodes[victim].drives[0]).len();
    }
    eprintln!("writes only: {before} shard files at the resume, {shards} of {want} after healing");
    assert!(
        shards >= want,
        "without reads the resumed node got {shards} of {want} shards back"
    );
    keys.extend(written);
    assert_eq!(check_all(&back, "hung", &keys).await, Vec::<String>::new());
}

/// With EC 2+2 a write quorum is 3 drives and a read quorum 2. A lookup returns a version
/// without repairing it only once a write quorum is known to hold it, so without more it
/// asks 3 drives. Once the writer's note that the version settled has reached the reading
/// node, a GET asks only the two data shards' drives (both with data attached); a node that
/// restarted has forgotten the notes and asks 3 again, and reads stay right throughout.
#[tokio::test(flavor = "multi_thread")]
async fn reads_of_settled_versions_ask_a_read_quorum_only() {
    let mut cluster = TestCluster::start(4, 1, &["--redundancy", "2+2"]);
    let c: Vec<Client> = cluster.nodes.iter().map(|n| n.client()).collect();
    c[0].create_bucket().bucket("bkt").send().await.unwrap();
    let keys: Vec<String> = (0..8)
        .map(|i| format!("k{i}-{}", [3 * KIB, 300 * KIB][i % 2]))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        put(&c[i % 4], "bkt", k).await.unwrap();
    }
    let plain = |cluster: &TestCluster| rpc_served(cluster, "/rpc/v1/drive/get", "POST");
    let with_data = |cluster: &TestCluster| rpc_served(cluster, "/rpc/v1/drive/get-with-data", "POST");
    // GETs of every key through every node (each node holds one drive of every set), over
    // and over until a pass shows `want` lookups: the writers' notes arrive within about
    // 10 ms, and background work (orphan sweeps, healing passes) reads records too
    let settles_to = async |cluster: &TestCluster, clients: &[&Client], want: (u64, u64), what: &str| {
        let mut seen = Vec::new();
        for _ in 0..40 {
            let (p, w) = (plain(cluster), with_data(cluster));
            for client in clients {
                assert!(check_all(client, "bkt", &keys).await.is_empty(), "{what}");
            }
            let got = (plain(cluster) - p, with_data(cluster) - w);
            if got == want {
                return;
            }
            seen.push(got);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{what}: remote lookups (plain, with data) per pass were {seen:?}, not {want:?}");
    };
    let all: Vec<&Client> = c.iter().collect();
    let n = keys.len() as u64;
    // two of the four coordinators hold a data shard (they ask the other one), two hold
    // parity (they ask both data shards): 6 remote lookups per key, all with data; without
    // the notes each GET asks a third drive (two plain lookups more per key)
    settles_to(&cluster, &all, (0, 6 * n), "GETs of settled versions").await;
    // overwrites through another node settle too
    for k in &keys {
        put(&c[1], "bkt", k).await.unwrap();
    }
    settles_to(&cluster, &all, (0, 6 * n), "after overwrites").await;
    // a restarted node has forgotten the notes and asks a write quorum; having seen the
    // versions on one, it notes them, and its GETs ask the data shards only: one remote
    // drive per key where it holds a data shard, two where it holds parity
    cluster.nodes[3].kill9();
    cluster.nodes[3].restart();
    let c3 = cluster.nodes[3].client();
    assert!(check_all(&c3, "bkt", &keys).await.is_empty());
    let (p, w) = (plain(&cluster), with_data(&cluster));
    assert!(check_all(&c3, "bkt", &keys).await.is_empty());
    let asked = (plain(&cluster) - p, with_data(&cluster) - w);
    assert!(asked.1 <= 2 * n, "{asked:?}");
    settles_to(&cluster, &[&c3], (0, asked.1), "the restarted node's GETs").await;
}

/// A cluster of `n` nodes whose first `seeds` are started (and ready): the others join
/// later, as new nodes do.
fn start_seeded(n: usize, seeds: usize, extra: &[&str], env: &[(&str, &str)]) -> TestCluster {
    let mut cluster = TestCluster::configure_seeded(n, seeds, 1, extra);
    for node in &mut cluster.nodes {
        for (k, v) in env {
            node.set_env(k, v);
        }
    }
    for i in 0..seeds {
        cluster.nodes[i].launch();
    }
    for i in 0..seeds {
        cluster.nodes[i].wait_ready();
    }
    cluster
}

/// Starts the nodes `joining` (already configured), waits until they are ready, and applies
/// a layout of every registered node through node 1; returns the new layout.
fn join_and_apply(cluster: &mut TestCluster, joining: std::ops::Range<usize>) -> serde_json::Value {
    for i in joining.clone() {
        cluster.nodes[i].launch();
    }
    for i in joining {
        cluster.nodes[i].wait_ready();
    }
    let (status, doc) = cluster.nodes[1]
        .admin_post("layout", "{}")
        .expect("layout apply answers");
    assert_eq!(status, 200, "{doc}");
    doc
}

/// Every shard file on every drive of `cluster`.
fn all_shard_files(cluster: &TestCluster) -> usize {
    cluster
        .nodes
        .iter()
        .flat_map(|n| n.drives.iter())
        .map(|d| shard_files(d).len())
        .sum()
}

/// How many of `keys` (which end in their object's size) are stored in shard files rather
/// than inline in their records.
fn with_shard_files(keys: &[String]) -> usize {
    keys.iter()
        .filter(|k| {
            k.rsplit('-')
                .next()
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap()
                > 128 * KIB
        })
        .count()
}

/// Creates bucket `bkt` and puts 80 objects of four sizes (inline, one stripe, several,
/// over a MiB) through `c`; answers their keys, which end in their sizes.
async fn put_mixed_sizes(c: &Client) -> Vec<String> {
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let sizes = [2 * KIB, 150 * KIB, 700 * KIB, 1100 * KIB];
    let keys: Vec<String> = (0..80).map(|i| format!("old{i}-{}", sizes[i % 4])).collect();
    for k in &keys {
        put(c, "bkt", k).await.unwrap();
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scale_out_moves_objects_onto_the_new_node_under_load() {
    let mut cluster = start_seeded(5, 4, &["--redundancy", "2+2"], &[]);
    let c = cluster.nodes[0].client();
    let keys = put_mixed_sizes(&c).await;
    let load = Load::start((0..4).map(|i| cluster.nodes[i].client()).collect(), "bkt", 4);
    let doc = join_and_apply(&mut cluster, 4..5);
    assert_eq!(doc["version"], 2, "{doc}");
    let t = transition_finished(&cluster.nodes[2], Duration::from_secs(180)).await;
    let (acked, gets_ok, gets_failed) = load.finish().await;
    eprintln!("transition: {t}");
    let t = &t["transition"];
    assert_eq!(t["from"], 1, "{t}");
    assert_eq!(t["to"], 2, "{t}");
    assert_eq!(t["kind"], "rebalance", "{t}");
    assert_eq!(t["partitions_done"], t["partitions"], "{t}");
    assert!(t["objects_moved"].as_u64().unwrap() > 0, "{t}");
    assert!(t["bytes_moved"].as_u64().unwrap() > 0, "{t}");
    assert!(gets_ok > 0, "the load ran");
    assert_eq!(gets_failed, 0, "reads during the transition failed");
    // every acknowledged object reads back, through every node, new one included
    let mut live: Vec<String> = keys.iter().cloned().chain(acked.iter().cloned()).collect();
    live.sort();
    for i in 0..5 {
        let ci = cluster.nodes[i].client();
        let bad = check_all(&ci, "bkt", &live).await;
        assert!(
            bad.is_empty(),
            "node {i}: unreadable after the transition: {bad:?}"
        );
        assert_eq!(list_keys(&ci, "bkt").await, live, "node {i} lists");
    }
    // objects written before moved onto the new node
    assert!(
        !shard_files(&cluster.nodes[4].drives[0]).is_empty(),
        "the new node holds shards"
    );
    // after the grace, no shard is left behind: each object with shard files has exactly
    // k+m of them
    let with_files = with_shard_files(&live);
    eventually(
        Duration::from_secs(120),
        "the shards of moved slots are removed after the grace",
        async || {
            let n = all_shard_files(&cluster);
            if n == 4 * with_files {
                Ok(())
            } else {
                Err(format!("{n} shard files for {with_files} objects of 2+2"))
            }
        },
    )
    .await;
}

/// Draining a node: a layout without it moves its shards onto the nodes that stay, under
/// load. Every acknowledged object reads back and lists through every node that stays, also
/// once the drained node is killed; an upload open across the drain takes a part and
/// completes after it; once the grace is past, the drained node holds no shard. Stopped, it
/// holds up no later change (a node joins and its data moves), and it is not placed again
/// with the stale data it holds. Its Raft vote goes before it is stopped, and the node that
/// joins takes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_a_node_moves_its_data_onto_the_others_under_load() {
    let mut cluster = start_seeded(6, 5, &["--redundancy", "2+2"], &[]);
    let c = cluster.nodes[0].client();
    let keys = put_mixed_sizes(&c).await;
    assert!(
        !shard_files(&cluster.nodes[4].drives[0]).is_empty(),
        "the node to drain holds shards"
    );
    let (id, mut parts, mut whole) = upload_parts(&c, "open-upload", &[5 * 1024 * KIB]).await;
    let load = Load::start((0..4).map(|i| cluster.nodes[i].client()).collect(), "bkt", 4);
    let (status, doc) = cluster.nodes[1]
        .admin_post("layout", r#"{"nodes": ["node-0", "node-1", "node-2", "node-3"]}"#)
        .expect("layout apply answers");
    assert_eq!(status, 200, "{doc}");
    let t = transition_to_finished(&cluster.nodes[2], Some(2), Duration::from_secs(180)).await;
    let (acked, gets_ok, gets_failed) = load.finish().await;
    eprintln!("transition: {t}");
    let t = &t["transition"];
    assert_eq!(t["kind"], "drain", "{t}");
    assert_eq!(t["partitions_done"], t["partitions"], "{t}");
    assert!(t["objects_moved"].as_u64().unwrap() > 0, "{t}");
    assert!(gets_ok > 0, "the load ran");
    assert_eq!(gets_failed, 0, "reads during the drain failed");
    // the upload open across the drain takes another part and completes
    let (done, bytes) = upload_part(&cluster.nodes[3].client(), "open-upload", &id, 2, 300 * KIB).await;
    parts.push(done);
    whole.extend(bytes);
    complete_upload(&cluster.nodes[2].client(), "open-upload", &id, &parts).await;
    let live: Vec<String> = keys.iter().cloned().chain(acked.iter().cloned()).collect();
    let mut listed: Vec<String> = live.iter().cloned().chain(["open-upload".into()]).collect();
    listed.sort();
    let check = async |label: &str, cluster: &TestCluster| {
        for i in 0..4 {
            let ci = cluster.nodes[i].client();
            let bad = check_all(&ci, "bkt", &live).await;
            assert!(bad.is_empty(), "{label}, node {i}: unreadable: {bad:?}");
            assert_eq!(list_keys(&ci, "bkt").await, listed, "{label}, node {i} lists");
            assert_eq!(get_bytes(&ci, "bkt", "open-upload").await.unwrap(), whole);
        }
    };
    check("after the drain", &cluster).await;
    // the drained node hands its Raft vote over while it still runs
    let voters = |cluster: &TestCluster| -> Vec<String> {
        let status = cluster.nodes[0].admin_get("status").unwrap_or_default();
        let names = status["cluster"]["voters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        names
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    eventually(
        Duration::from_secs(30),
        "the drained node is no voter",
        async || {
            let v = voters(&cluster);
            match v.contains(&"node-4".to_string()) || v.is_empty() {
                false => Ok(()),
                true => Err(format!("voters {v:?}")),
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(120),
        "the drained node's shards are removed after the grace",
        async || match shard_files(&cluster.nodes[4].drives[0]).len() {
            0 => Ok(()),
            n => Err(format!("{n} shard files left on the drained node")),
        },
    )
    .await;
    cluster.nodes[4].kill9();
    check("with the drained node killed", &cluster).await;
    // the stopped node holds up no later change, and is not placed again with what it holds
    let (status, doc) = cluster.nodes[0]
        .admin_post(
            "layout",
            r#"{"nodes": ["node-0", "node-1", "node-2", "node-3", "node-4"]}"#,
        )
        .expect("layout apply answers");
    assert_eq!(status, 400, "{doc}");
    assert_eq!(doc["error"]["code"], "DrainedNode", "{doc}");
    let doc = join_and_apply(&mut cluster, 5..6);
    let names: Vec<&str> = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["node-0", "node-1", "node-2", "node-3", "node-5"], "{doc}");
    transition_to_finished(&cluster.nodes[5], Some(3), Duration::from_secs(180)).await;
    eventually(
        Duration::from_secs(30),
        "the node that joined votes",
        async || {
            let v = voters(&cluster);
            match v.len() == 5 && v.contains(&"node-5".to_string()) {
                true => Ok(()),
                false => Err(format!("voters {v:?}")),
            }
        },
    )
    .await;
    assert!(
        !shard_files(&cluster.nodes[5].drives[0]).is_empty(),
        "data moved onto the node that joined"
    );
    let ci = cluster.nodes[5].client();
    let bad = check_all(&ci, "bkt", &live).await;
    assert!(bad.is_empty(), "after a node joined, unreadable: {bad:?}");
}

/// Changing the redundancy re-encodes every object, under load: 2+2 to 4+2 on six nodes.
/// An upload open across the change holds its partition until it completes (its object is
/// then re-encoded too). Afterwards every acknowledged object reads back and lists through
/// every node, also with two nodes down (which 2+2 on four of the six nodes could not serve
/// for every key), and once the grace is past each object's data is exactly 4+2 shards:
/// nothing of the old encoding is left. (Killed nodes are in the next test: a deferred
/// removal a kill cuts short is left to the daily orphan sweep, so it would not count.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changing_the_redundancy_re_encodes_every_object_under_load() {
    let mut cluster = start_seeded(6, 6, &["--redundancy", "2+2"], &[]);
    let c = cluster.nodes[0].client();
    let keys = put_mixed_sizes(&c).await;
    let (id, mut parts, mut whole) = upload_parts(&c, "open-upload", &[5 * 1024 * KIB]).await;
    let steady: Vec<usize> = (0..6).collect();
    let load = Load::start(
        steady.iter().map(|i| cluster.nodes[*i].client()).collect(),
        "bkt",
        4,
    );
    let (status, doc) = cluster.nodes[steady[0]]
        .admin_post("layout", r#"{"redundancy": "4+2"}"#)
        .expect("layout apply answers");
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["redundancy"], "4+2", "{doc}");
    let watcher = steady[1];
    let moved = |cluster: &TestCluster| -> u64 {
        let t = cluster.nodes[watcher].admin_get("transition").unwrap_or_default();
        t["transition"]["objects_moved"].as_u64().unwrap_or(0)
    };
    eventually(
        Duration::from_secs(60),
        "objects are re-encoded",
        async || match moved(&cluster) {
            0 => Err("nothing re-encoded yet".into()),
            _ => Ok(()),
        },
    )
    .await;
    // the open upload keeps its partition waiting, and says so
    eventually(
        Duration::from_secs(180),
        "a mover waits for the open upload",
        async || {
            let t = cluster.nodes[watcher].admin_get("transition").unwrap_or_default();
            let waiting: Vec<String> = t["transition"]["nodes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|n| n["report"]["waiting"].as_str().map(str::to_string))
                .collect();
            match waiting.iter().any(|w| w.contains("open multipart upload")) {
                true => Ok(()),
                false => Err(format!("waiting: {waiting:?}; {t}")),
            }
        },
    )
    .await;
    assert_ne!(
        cluster.nodes[watcher].admin_get("transition").unwrap()["transition"]["phase"],
        "finished"
    );
    // it takes another part (with the redundancy it was made with) and completes
    let (done, bytes) = upload_part(
        &cluster.nodes[steady[2]].client(),
        "open-upload",
        &id,
        2,
        300 * KIB,
    )
    .await;
    parts.push(done);
    whole.extend(bytes);
    complete_upload(&cluster.nodes[steady[3]].client(), "open-upload", &id, &parts).await;
    let t = transition_to_finished(&cluster.nodes[watcher], Some(2), Duration::from_secs(240)).await;
    let (acked, gets_ok, gets_failed) = load.finish().await;
    eprintln!("transition: {t}");
    let t = &t["transition"];
    assert_eq!(t["kind"], "reencode", "{t}");
    assert_eq!(t["partitions_done"], t["partitions"], "{t}");
    assert!(t["objects_moved"].as_u64().unwrap() >= keys.len() as u64, "{t}");
    assert!(gets_ok > 0, "the load ran");
    assert_eq!(gets_failed, 0, "reads during the re-encoding failed");
    let live: Vec<String> = keys.iter().cloned().chain(acked.iter().cloned()).collect();
    let mut listed: Vec<String> = live.iter().cloned().chain(["open-upload".into()]).collect();
    listed.sort();
    let check = async |label: &str, cluster: &TestCluster, through: &[usize]| {
        for i in through {
            let ci = cluster.nodes[*i].client();
            let bad = check_all(&ci, "bkt", &live).await;
            assert!(bad.is_empty(), "{label}, node {i}: unreadable: {bad:?}");
            assert_eq!(list_keys(&ci, "bkt").await, listed, "{label}, node {i} lists");
            assert_eq!(get_bytes(&ci, "bkt", "open-upload").await.unwrap(), whole);
        }
    };
    check("after re-encoding", &cluster, &[0, 1, 2, 3, 4, 5]).await;
    // every object's data is 4+2 once the old shards are past their grace: six shard files
    // per object with shard files (two parts for the upload), none of the old encoding
    let with_files = with_shard_files(&live);
    eventually(
        Duration::from_secs(150),
        "the old encoding's shards are removed after the grace",
        async || {
            let n = all_shard_files(&cluster);
            match n == 6 * (with_files + 2) {
                true => Ok(()),
                false => Err(format!(
                    "{n} shard files for {with_files} objects and 2 parts of 4+2"
                )),
            }
        },
    )
    .await;
    // 4+2 over six nodes serves every object with any two of them down
    cluster.nodes[4].kill9();
    cluster.nodes[5].kill9();
    check("with two nodes down", &cluster, &[0, 2]).await;
}

/// A re-encoding (2+2 to 4+2 on six nodes) resumes by itself after kill -9 of a node that
/// moves data and of the Raft leader while it runs, each restarted; reads through the nodes
/// that stay up never fail, and afterwards every object reads back through every node, also
/// with two nodes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_re_encoding_resumes_after_kill9_of_a_mover_and_of_the_leader() {
    let mut cluster = start_seeded(6, 6, &["--redundancy", "2+2"], &[]);
    let keys = put_mixed_sizes(&cluster.nodes[0].client()).await;
    let leader = cluster.leader(0).expect("a leader");
    let victim = (leader + 1) % 6;
    let steady: Vec<usize> = (0..6).filter(|i| *i != leader && *i != victim).collect();
    let load = Load::start(
        steady.iter().map(|i| cluster.nodes[*i].client()).collect(),
        "bkt",
        2,
    );
    // slowly, so that the kills land while objects are re-encoded
    let (status, doc) = cluster.nodes[steady[0]]
        .admin_post("layout", r#"{"redundancy": "4+2"}"#)
        .expect("layout apply answers");
    assert_eq!(status, 200, "{doc}");
    eventually(
        Duration::from_secs(20),
        "the transition throttled",
        async || match cluster.nodes[steady[0]]
            .admin_post("transition", r#"{"concurrency": 1, "bytes_per_sec": 2000000}"#)
        {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let watcher = steady[1];
    let progress = |cluster: &TestCluster| -> (u64, String) {
        let t = cluster.nodes[watcher].admin_get("transition").unwrap_or_default();
        let t = &t["transition"];
        (
            t["objects_moved"].as_u64().unwrap_or(0),
            t["phase"].as_str().unwrap_or("").to_string(),
        )
    };
    for node in [victim, leader] {
        let (before, _) = progress(&cluster);
        eventually(
            Duration::from_secs(60),
            "objects are re-encoded",
            async || match progress(&cluster) {
                (n, phase) if n > before && phase == "moving" => Ok(()),
                p => Err(format!("{p:?}")),
            },
        )
        .await;
        cluster.nodes[node].kill9();
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.nodes[node].restart();
    }
    let (status, doc) = cluster.nodes[steady[0]]
        .admin_post("transition", r#"{"concurrency": 4, "bytes_per_sec": 0}"#)
        .expect("throttle answers");
    assert_eq!(status, 200, "{doc}");
    let t = transition_to_finished(&cluster.nodes[watcher], Some(2), Duration::from_secs(240)).await;
    let (acked, gets_ok, gets_failed) = load.finish().await;
    eprintln!("transition: {t}");
    assert_eq!(t["transition"]["kind"], "reencode", "{t}");
    assert!(gets_ok > 0, "the load ran");
    assert_eq!(gets_failed, 0, "reads through the nodes that stayed up failed");
    let mut live: Vec<String> = keys.iter().cloned().chain(acked.iter().cloned()).collect();
    live.sort();
    for i in 0..6 {
        let ci = cluster.nodes[i].client();
        assert_eq!(list_keys(&ci, "bkt").await, live, "node {i} lists");
    }
    for i in [leader, victim] {
        let bad = check_all(&cluster.nodes[i].client(), "bkt", &live).await;
        assert!(bad.is_empty(), "node {i}: unreadable: {bad:?}");
    }
    cluster.nodes[leader].kill9();
    cluster.nodes[victim].kill9();
    let bad = check_all(&cluster.nodes[steady[0]].client(), "bkt", &live).await;
    assert!(bad.is_empty(), "with two nodes down: unreadable: {bad:?}");
}

/// Waits until the transition that `node` reports has finished; returns its document.
async fn transition_finished(node: &Server, timeout: Duration) -> serde_json::Value {
    transition_to_finished(node, None, timeout).await
}

/// Waits until the transition to layout `to` (any, when `None`) that `node` reports has
/// finished; returns its document.
async fn transition_to_finished(node: &Server, to: Option<u64>, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let t = node.admin_get("transition").expect("transition status");
        if t["transition"]["phase"] == "finished" && to.is_none_or(|to| t["transition"]["to"] == to) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "the transition did not finish in {timeout:?}: {t}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Overwrites and deletes that land between the mover's copy of an object and its switch
/// (held open by the `move-pause-ms` fault point) win: the overwrite is what reads back and
/// the delete sticks, through every node and after the old layout is retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwrites_and_deletes_racing_a_move_win() {
    let mut cluster = start_seeded(
        5,
        4,
        &["--redundancy", "2+2"],
        &[("RINGSTORE_FAULTS", "move-pause-ms=5000")],
    );
    let c = cluster.nodes[0].client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let keys: Vec<String> = (0..24)
        .map(|i| format!("race{i}-{}", [2 * KIB, 300 * KIB][i % 2]))
        .collect();
    for k in &keys {
        put(&c, "bkt", k).await.unwrap();
    }
    join_and_apply(&mut cluster, 4..5);
    // moving starts once every node places data with layout 2; each mover then copies up
    // to 8 objects and holds them 5 s before switching
    eventually(Duration::from_secs(20), "the movers start", async || {
        let t = cluster.nodes[0].admin_get("transition").unwrap_or_default();
        let waiting = t["transition"]["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| !n["report"]["waiting"].is_null()));
        if t["transition"]["phase"] == "moving" && !waiting {
            Ok(())
        } else {
            Err(format!("{t}"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c3 = cluster.nodes[3].client();
    let (deleted, overwritten) = keys.split_at(12);
    for k in deleted {
        c3.delete_object().bucket("bkt").key(k).send().await.unwrap();
    }
    for k in overwritten {
        c3.put_object()
            .bucket("bkt")
            .key(k)
            .body(ByteStream::from(format!("new {k}").into_bytes()))
            .send()
            .await
            .unwrap();
    }
    let t = transition_finished(&cluster.nodes[2], Duration::from_secs(120)).await;
    // shards were copied, so the writes met objects between their copy and their switch
    // (a switch that lost to them does not count as moved)
    assert!(t["transition"]["bytes_moved"].as_u64().unwrap() > 0, "{t}");
    let mut live: Vec<String> = overwritten.to_vec();
    live.sort();
    for i in 0..5 {
        let ci = cluster.nodes[i].client();
        for k in deleted {
            let e = ci.get_object().bucket("bkt").key(k).send().await.unwrap_err();
            assert_eq!(code(&e), "NoSuchKey", "node {i}: {k} came back");
        }
        for k in overwritten {
            assert_eq!(
                get_bytes(&ci, "bkt", k).await.unwrap(),
                format!("new {k}").into_bytes(),
                "node {i}: {k}"
            );
        }
        assert_eq!(list_keys(&ci, "bkt").await, live, "node {i} lists");
    }
}

/// Starts a multipart upload of `key` and uploads `sizes.len()` parts of those sizes; the
/// upload id, the completed parts and the bytes the object will hold.
async fn upload_parts(
    c: &Client,
    key: &str,
    sizes: &[usize],
) -> (String, Vec<aws_sdk_s3::types::CompletedPart>, Vec<u8>) {
    let id = common::create_upload(c, "bkt", key).await;
    let mut parts = Vec::new();
    let mut whole = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let n = i as i32 + 1;
        let (done, bytes) = upload_part(c, key, &id, n, *size).await;
        parts.push(done);
        whole.extend(bytes);
    }
    (id, parts, whole)
}

async fn upload_part(
    c: &Client,
    key: &str,
    id: &str,
    n: i32,
    size: usize,
) -> (aws_sdk_s3::types::CompletedPart, Vec<u8>) {
    let bytes = content_for(&format!("{key}/{n}-{size}"));
    let done = common::upload_part(c, "bkt", key, id, n, bytes.clone()).await;
    (done, bytes)
}

async fn complete_upload(c: &Client, key: &str, id: &str, parts: &[aws_sdk_s3::types::CompletedPart]) {
    common::complete_upload(c, "bkt", key, id, parts)
        .await
        .unwrap_or_else(|status| panic!("complete {key}: {status}"));
}

/// Multipart uploads started before a scale-out complete while its data moves and after it
/// finished (one of them with a part uploaded after the change), and read back whole through
/// every node, also once the old layout's shards are past their grace and scrubbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart_uploads_started_before_a_scale_out_complete_during_and_after_it() {
    // movers hold each batch 3 s between copy and switch, so the transition lasts
    let mut cluster = start_seeded(
        5,
        4,
        &["--redundancy", "2+2", "--scrub-interval", "3"],
        &[("RINGSTORE_FAULTS", "move-pause-ms=3000")],
    );
    let c = cluster.nodes[0].client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let mut uploads = Vec::new();
    for i in 0..6 {
        let key = format!("mp{i}");
        // the last upload gets its second part only after the change
        let sizes: &[usize] = if i == 5 {
            &[5 * 1024 * KIB]
        } else {
            &[5 * 1024 * KIB, 300 * KIB]
        };
        let (id, parts, bytes) = upload_parts(&c, &key, sizes).await;
        uploads.push((key, id, parts, bytes));
    }
    // enough other objects that the movers run for a while
    let others: Vec<String> = (0..40).map(|i| format!("obj{i}-{}", 200 * KIB)).collect();
    for k in &others {
        put(&c, "bkt", k).await.unwrap();
    }
    join_and_apply(&mut cluster, 4..5);
    let c4 = cluster.nodes[4].client();
    let c2 = cluster.nodes[2].client();
    // completed while the transition runs, through the new node and an old one
    for (i, (key, id, parts, _)) in uploads.iter().take(3).enumerate() {
        let via = if i % 2 == 0 { &c4 } else { &c2 };
        complete_upload(via, key, id, parts).await;
    }
    let t = cluster.nodes[2].admin_get("transition").unwrap();
    assert_ne!(
        t["transition"]["phase"], "finished",
        "completed during the transition: {t}"
    );
    transition_finished(&cluster.nodes[2], Duration::from_secs(180)).await;
    let (done, bytes) = upload_part(&c4, &uploads[5].0, &uploads[5].1, 2, 300 * KIB).await;
    uploads[5].2.push(done);
    uploads[5].3.extend(bytes);
    for (key, id, parts, _) in &uploads[3..] {
        complete_upload(&c4, key, id, parts).await;
    }
    let check = async |when: &str| {
        for n in 0..5 {
            let cn = cluster.nodes[n].client();
            for (key, _, _, bytes) in &uploads {
                let got = get_bytes(&cn, "bkt", key)
                    .await
                    .unwrap_or_else(|e| panic!("{when}: node {n}: {key}: {e}"));
                assert!(got == *bytes, "{when}: node {n}: {key} reads back other bytes");
            }
            let listed = cn.list_multipart_uploads().bucket("bkt").send().await.unwrap();
            assert!(
                listed.uploads().is_empty(),
                "{when}: node {n}: {:?}",
                listed.uploads()
            );
        }
    };
    check("after the transition").await;
    // past the grace of the old layout's shards, with scrubs in between
    tokio::time::sleep(Duration::from_secs(75)).await;
    check("after the grace").await;
}

/// Multipart uploads started before a 4-to-8-node change, which moves up to all four slots
/// of their keys' partitions, each completed after a plain PUT of the key that followed the
/// change: the uploads moved with the data (before they did, a Complete answered 404 in 3
/// of 9 runs), and the Complete came last, so it is what reads back, through every node,
/// also once every node restarted. (24 keys.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_complete_after_a_put_that_followed_a_big_layout_change_wins() {
    let mut cluster = start_seeded(8, 4, &["--redundancy", "2+2"], &[]);
    let c = cluster.nodes[0].client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let mut uploads = Vec::new();
    for i in 0..24 {
        let key = format!("late{i}");
        let (id, parts, bytes) = upload_parts(&c, &key, &[200 * KIB]).await;
        uploads.push((key, id, parts, bytes));
    }
    join_and_apply(&mut cluster, 4..8);
    transition_finished(&cluster.nodes[2], Duration::from_secs(180)).await;
    let c6 = cluster.nodes[6].client();
    for (key, id, parts, _) in &uploads {
        c6.put_object()
            .bucket("bkt")
            .key(key)
            .body(ByteStream::from(b"the put before the complete".to_vec()))
            .send()
            .await
            .unwrap();
        complete_upload(&c6, key, id, parts).await;
    }
    // restarted nodes have forgotten which versions are settled: their lookups ask a write
    // quorum of the new placement first
    for node in &mut cluster.nodes {
        node.kill9();
    }
    for node in &mut cluster.nodes {
        node.launch();
    }
    for node in &mut cluster.nodes {
        node.wait_ready();
    }
    for n in 0..8 {
        let cn = cluster.nodes[n].client();
        let mut stale = Vec::new();
        for (key, _, _, bytes) in &uploads {
            if get_bytes(&cn, "bkt", key).await.unwrap() != *bytes {
                stale.push(key.clone());
            }
        }
        assert!(
            stale.is_empty(),
            "node {n}: the PUT hides the later Complete of {stale:?}"
        );
    }
}
