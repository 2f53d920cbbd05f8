//! Test harness: cluster nodes served over real HTTP/2 on 127.0.0.1, killable with their
//! connections.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ringstore_cluster::{Cluster, ClusterConfig};
use ringstore_ring::DriveSpec;
use ringstore_rpc::{Client, ClusterAuth};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub const SECRET: &str = "test-secret";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,ringstore_cluster=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct Node {
    pub name: String,
    pub addr: String,
    pub cluster: Cluster,
    server: JoinHandle<()>,
}

impl Node {
    /// Stops the node the hard way: Raft shut down, listener and every open connection gone.
    pub async fn kill(self) {
        self.cluster.shutdown().await;
        self.server.abort();
        let _ = self.server.await;
    }
}

pub fn config(name: &str, addr: &str, seeds: &[String], dir: &Path) -> ClusterConfig {
    ClusterConfig {
        node_name: name.into(),
        rpc_addr: addr.into(),
        zone: format!("zone-{name}"),
        drives: vec![DriveSpec {
            id: format!("{name}-d1"),
            weight: 10,
        }],
        seeds: seeds.to_vec(),
        redundancy: None,
        data_dir: dir.to_path_buf(),
        restore: None,
    }
}

pub async fn bind_any() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// Starts a cluster node and serves its router on `listener` with `secret`.
pub async fn start(cfg: ClusterConfig, listener: TcpListener, secret: &str) -> Node {
    let auth = ClusterAuth::new(secret);
    let name = cfg.node_name.clone();
    let addr = cfg.rpc_addr.clone();
    let cluster = Cluster::start(cfg, Client::new(auth.clone())).await.unwrap();
    let router = auth.layer(cluster.router());
    let server = tokio::spawn(async move {
        // Connections live in this set so that aborting the server drops them too.
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let svc = TowerToHyperService::new(router.clone());
                    conns.spawn(async move {
                        let mut builder = auto::Builder::new(TokioExecutor::new());
                        builder.http1().timer(TokioTimer::new());
                        builder.http2().timer(TokioTimer::new());
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Node {
        name,
        addr,
        cluster,
        server,
    }
}

/// Starts `n` nodes named node-0.. at once, every one seeded with every address.
pub async fn start_many(n: usize, dirs: &[tempfile::TempDir]) -> Vec<Node> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(bind_any().await);
    }
    let seeds: Vec<String> = listeners.iter().map(|(_, a)| a.clone()).collect();
    let starts = listeners.into_iter().enumerate().map(|(i, (l, addr))| {
        let cfg = config(&format!("node-{i}"), &addr, &seeds, dirs[i].path());
        start(cfg, l, SECRET)
    });
    futures::future::join_all(starts).await
}

pub fn dirs(n: usize) -> Vec<tempfile::TempDir> {
    (0..n).map(|_| tempfile::tempdir().unwrap()).collect()
}

/// Polls `f` until it holds or `timeout` passes.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
