//! Multi-node behaviour over real HTTP/2: bootstrap, forwarding, failover, refusal, restart.

mod common;

use std::time::Duration;

use common::*;
use ringstore_cluster::{Error, Role};
use ringstore_meta::Rejection;

const READY: Duration = Duration::from_secs(15);

async fn all_ready(nodes: &[Node]) {
    for n in nodes {
        n.cluster.wait_ready(READY).await.unwrap();
    }
}

fn leaders(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.cluster.status().role == Role::Leader)
        .map(|n| n.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_form_one_cluster() {
    init_tracing();
    let dirs = dirs(3);
    let nodes = start_many(3, &dirs).await;
    all_ready(&nodes).await;
    eventually("one leader and 3 voters everywhere", READY, || {
        leaders(&nodes).len() == 1 && nodes.iter().all(|n| n.cluster.status().voters.len() == 3)
    })
    .await;
    let leader = leaders(&nodes)[0].clone();
    for n in &nodes {
        let layout = n.cluster.layout().borrow().clone().unwrap();
        assert_eq!(layout.version, 1);
        assert_eq!(layout.nodes.len(), 3);
        assert_eq!(layout.redundancy, ringstore_ring::Redundancy { k: 2, m: 1 });
        let s = n.cluster.status();
        assert_eq!(s.leader.as_deref(), Some(leader.as_str()));
        assert_eq!(s.layout_version, Some(1));
        assert!(s.learners.is_empty());
    }
    eventually("every member registered", READY, || {
        nodes.iter().all(|n| n.cluster.status().members.len() == 3)
    })
    .await;
    for n in nodes {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_a_follower_are_seen_everywhere_and_survive_leader_loss() {
    init_tracing();
    let dirs = dirs(3);
    let mut nodes = start_many(3, &dirs).await;
    all_ready(&nodes).await;
    let followers: Vec<usize> = (0..3)
        .filter(|&i| nodes[i].cluster.status().role != Role::Leader)
        .collect();
    let (a, b) = (followers[0], followers[1]);
    nodes[a].cluster.create_bucket("photos", 42).await.unwrap();
    let seen = nodes[b].cluster.bucket("photos").await.unwrap();
    assert_eq!(seen.map(|b| b.created_nanos), Some(42));
    assert!(matches!(
        nodes[b].cluster.create_bucket("photos", 43).await,
        Err(Error::Rejected(Rejection::BucketExists(_)))
    ));
    let listed = nodes[a].cluster.list_buckets().await.unwrap();
    assert_eq!(listed.len(), 1);

    // Kill the leader: the survivors elect another and keep serving writes.
    let li = (0..3).find(|i| !followers.contains(i)).unwrap();
    let old_leader = nodes.remove(li);
    let old_name = old_leader.name.clone();
    let killed_at = std::time::Instant::now();
    old_leader.kill().await;
    eventually("a new leader", Duration::from_secs(10), || {
        nodes.iter().any(|n| {
            let s = n.cluster.status();
            s.role == Role::Leader && s.leader.as_deref() != Some(old_name.as_str())
        })
    })
    .await;
    eprintln!("new leader after {:?}", killed_at.elapsed());
    nodes[0].cluster.create_bucket("after-failover", 1).await.unwrap();
    assert!(nodes[1].cluster.bucket("after-failover").await.unwrap().is_some());
    nodes[1].cluster.delete_bucket("photos").await.unwrap();
    // bucket() answers from local state when present, so a deletion may lag there; listing
    // is linearizable.
    let names: Vec<String> = nodes[0]
        .cluster
        .list_buckets()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["after-failover".to_string()]);
    for n in nodes {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_the_wrong_secret_never_joins() {
    init_tracing();
    let dirs = dirs(4);
    let nodes = start_many(3, &dirs[..3]).await;
    all_ready(&nodes).await;
    let (l, addr) = bind_any().await;
    let mut seeds: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    seeds.push(addr.clone());
    let intruder = start(config("aaa-intruder", &addr, &seeds, dirs[3].path()), l, "wrong").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = intruder.cluster.status();
    assert!(s.voters.is_empty() && s.members.is_empty(), "{s:?}");
    assert!(
        intruder
            .cluster
            .wait_ready(Duration::from_millis(200))
            .await
            .is_err()
    );
    for n in &nodes {
        let s = n.cluster.status();
        assert!(!s.voters.iter().chain(&s.learners).any(|v| v == "aaa-intruder"));
        assert!(!s.members.iter().any(|m| m.name == "aaa-intruder"));
    }
    // Its own endpoints refuse the cluster too.
    let client = ringstore_rpc::Client::new(ringstore_rpc::ClusterAuth::new(SECRET));
    let r: Result<(), _> = client.call(&addr, "/cluster/hello", &()).await;
    assert!(matches!(r, Err(ringstore_rpc::RpcError::Unauthorized(_))));
    intruder.kill().await;
    for n in nodes {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_rejoins_as_itself() {
    init_tracing();
    let dirs = dirs(3);
    let mut nodes = start_many(3, &dirs).await;
    all_ready(&nodes).await;
    let seeds: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    // Restart a follower (the test of leader loss is above).
    let i = (0..3)
        .find(|&i| nodes[i].cluster.status().role != Role::Leader)
        .unwrap();
    let victim = nodes.remove(i);
    let (name, addr, id) = (victim.name.clone(), victim.addr.clone(), victim.cluster.node_id());
    victim.kill().await;
    nodes[0].cluster.create_bucket("while-down", 5).await.unwrap();

    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let back = start(config(&name, &addr, &seeds, dirs[i].path()), listener, SECRET).await;
    assert_eq!(back.cluster.node_id(), id);
    back.cluster.wait_ready(READY).await.unwrap();
    assert!(back.cluster.bucket("while-down").await.unwrap().is_some());
    nodes.push(back);
    eventually("one leader and the same 3 voters", READY, || {
        leaders(&nodes).len() == 1 && nodes.iter().all(|n| n.cluster.status().voters.len() == 3)
    })
    .await;
    let s = nodes[2].cluster.status();
    assert!(s.voters.contains(&name));
    assert_eq!(s.layout_version, Some(1));
    for n in nodes {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_nodes_get_five_voters_and_one_layout() {
    init_tracing();
    let dirs = dirs(6);
    let nodes = start_many(6, &dirs).await;
    all_ready(&nodes).await;
    eventually("5 voters and 1 learner everywhere", READY, || {
        leaders(&nodes).len() == 1
            && nodes.iter().all(|n| {
                let s = n.cluster.status();
                s.voters.len() == 5 && s.learners.len() == 1
            })
    })
    .await;
    for n in &nodes {
        let layout = n.cluster.layout().borrow().clone().unwrap();
        assert_eq!((layout.version, layout.nodes.len()), (1, 6));
    }
    // The learner is the node with the largest name.
    assert_eq!(nodes[0].cluster.status().learners, vec!["node-5".to_string()]);
    for n in nodes {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_node_initializes_itself_and_a_late_node_joins_as_learner() {
    init_tracing();
    let dirs = dirs(2);
    let (l, addr) = bind_any().await;
    let solo = start(config("solo", &addr, &[], dirs[0].path()), l, SECRET).await;
    solo.cluster.wait_ready(READY).await.unwrap();
    assert_eq!(solo.cluster.status().role, Role::Leader);
    assert_eq!(
        solo.cluster.layout().borrow().as_ref().map(|l| l.nodes.len()),
        Some(1)
    );

    let (l2, addr2) = bind_any().await;
    let late = start(
        config("late", &addr2, std::slice::from_ref(&addr), dirs[1].path()),
        l2,
        SECRET,
    )
    .await;
    late.cluster.wait_ready(READY).await.unwrap();
    eventually("late registered as a learner", READY, || {
        let s = solo.cluster.status();
        s.learners == vec!["late".to_string()] && s.members.len() == 2
    })
    .await;
    // Not added to the layout automatically.
    assert_eq!(
        late.cluster.layout().borrow().as_ref().map(|l| l.nodes.len()),
        Some(1)
    );
    late.cluster.create_bucket("from-learner", 9).await.unwrap();
    assert!(solo.cluster.bucket("from-learner").await.unwrap().is_some());
    let stale = solo.cluster.layout().borrow().clone().unwrap();
    assert!(matches!(
        late.cluster.propose_layout(stale).await,
        Err(Error::Rejected(Rejection::StaleLayout { .. }))
    ));
    late.kill().await;

    // A single node restarted on its data comes back as the same cluster.
    let id = solo.cluster.node_id();
    solo.kill().await;
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let solo = start(config("solo", &addr, &[], dirs[0].path()), listener, SECRET).await;
    assert_eq!(solo.cluster.node_id(), id);
    solo.cluster.wait_ready(READY).await.unwrap();
    assert!(solo.cluster.bucket("from-learner").await.unwrap().is_some());
    assert_eq!(solo.cluster.status().layout_version, Some(1));
    solo.kill().await;
}
