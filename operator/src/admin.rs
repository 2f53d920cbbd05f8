//! Client of a Ringstore node's admin API (JSON over plain HTTP on the S3 port), reached by
//! pod IP so that the operator also works from outside the cluster network's DNS.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// What `GET /_ringstore/admin/v1/status` answers (the fields the operator uses).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct AdminStatus {
    /// The node that answered.
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub redundancy: String,
    #[serde(default)]
    pub layout_version: u64,
    #[serde(default)]
    pub nodes: Vec<NodeState>,
    #[serde(default)]
    pub drives: Vec<DriveState>,
    #[serde(default)]
    pub capacity: CapacityDoc,
    #[serde(default)]
    pub cluster: Option<ClusterDoc>,
    #[serde(default)]
    pub healing: HealingDoc,
    /// The running (or last) layout transition, from the cluster's Raft state.
    #[serde(default)]
    pub transition: Option<TransitionDoc>,
}

/// A layout transition as the node's status shows it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct TransitionDoc {
    #[serde(default)]
    pub from: u64,
    #[serde(default)]
    pub to: u64,
    /// `rebalance`, `drain` or `reencode`.
    #[serde(default)]
    pub kind: String,
    /// `syncing`, `moving`, `paused` or `finished`.
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub partitions: u32,
    #[serde(default)]
    pub partitions_done: u32,
    #[serde(default)]
    pub percent: f64,
}

/// `GET /_ringstore/admin/v1/transition` (the fields the operator uses): the movers'
/// figures summed over the nodes that answered.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct TransitionDetail {
    #[serde(default)]
    pub to: u64,
    #[serde(default)]
    pub objects_moved: u64,
    #[serde(default)]
    pub bytes_moved: u64,
    #[serde(default)]
    pub eta_seconds: Option<f64>,
}

impl TransitionDoc {
    /// Whether data may still be moving.
    pub fn running(&self) -> bool {
        self.phase != "finished"
    }

    /// The `Progressing` reason for its kind.
    pub fn reason(&self) -> &'static str {
        match self.kind.as_str() {
            "drain" => "Draining",
            "reencode" => "Reencoding",
            _ => "Rebalancing",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct NodeState {
    pub name: String,
    /// `online` or `offline`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub in_layout: bool,
}

impl NodeState {
    pub fn online(&self) -> bool {
        self.state == "online"
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct DriveState {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub path: Option<String>,
    /// `online` or `offline`.
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct CapacityDoc {
    #[serde(default)]
    pub drives_total: u64,
    #[serde(default)]
    pub drives_online: u64,
    #[serde(default)]
    pub bytes_used: u64,
    #[serde(default)]
    pub bytes_available: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ClusterDoc {
    /// Name of the Raft leader.
    #[serde(default)]
    pub leader: Option<String>,
    /// Names of the Raft voters.
    #[serde(default)]
    pub voters: Vec<String>,
    /// The layout version in the node's Raft state (the top-level `layout_version` is the
    /// one its data path has taken up, which may lag behind).
    #[serde(default)]
    pub layout_version: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct HealingDoc {
    /// Whether this node is scrubbing (also how a rebuild after a drive replacement shows).
    #[serde(default)]
    pub scrub_running: bool,
}

impl AdminStatus {
    /// Names of the nodes in the current layout, sorted.
    pub fn layout_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.in_layout)
            .map(|n| n.name.clone())
            .collect();
        v.sort();
        v
    }

    /// Nodes that do not answer their peers, sorted: those of the layout and those in
    /// `running` (servers whose pods should run, such as servers being drained). A drained
    /// server whose pod is gone stays registered, offline, and holds nothing: not listed.
    pub fn offline_nodes(&self, running: &std::collections::BTreeSet<String>) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| (n.in_layout || running.contains(&n.name)) && !n.online())
            .map(|n| n.name.clone())
            .collect();
        v.sort();
        v
    }

    /// Drives that do not answer, as `node:path-or-id`, sorted.
    pub fn offline_drives(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .drives
            .iter()
            .filter(|d| d.state != "online")
            .map(|d| format!("{}:{}", d.node, d.path.clone().unwrap_or_else(|| d.id.clone())))
            .collect();
        v.sort();
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}: {1}")]
    Request(String, String),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: HTTP {1}: {2}")]
    Status(String, u16, String),
    #[error("{0}: unreadable answer: {1}")]
    Decode(String, String),
}

/// A small HTTP/1 client with short timeouts.
#[derive(Clone)]
pub struct AdminClient {
    http: Client<HttpConnector, Full<Bytes>>,
    port: u16,
    timeout: Duration,
}

impl AdminClient {
    pub fn new(port: u16) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            port,
            // the status call asks every peer with a 2 s bound
            timeout: Duration::from_secs(6),
        }
    }

    fn url(&self, ip: &str, path: &str) -> String {
        if ip.contains(':') {
            format!("http://[{ip}]:{}{path}", self.port)
        } else {
            format!("http://{ip}:{}{path}", self.port)
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: http::Method,
        url: String,
        token: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, AdminError> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| AdminError::Request(url.clone(), e.to_string()))?;
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| AdminError::Request(url.clone(), e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| AdminError::Request(url.clone(), e.to_string()))?
                .to_bytes();
            Ok::<_, AdminError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| AdminError::Timeout(url.clone(), self.timeout))??;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(AdminError::Status(
                url,
                status.as_u16(),
                text.chars().take(300).collect(),
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| AdminError::Decode(url, e.to_string()))
    }

    /// The status document of the node at `ip`.
    pub async fn status(&self, ip: &str, token: &str) -> Result<AdminStatus, AdminError> {
        self.call(
            http::Method::GET,
            self.url(ip, "/_ringstore/admin/v1/status"),
            token,
            None,
        )
        .await
    }

    /// The running (or last) layout transition with the movers' figures, over every node.
    pub async fn transition(&self, ip: &str, token: &str) -> Result<Option<TransitionDetail>, AdminError> {
        #[derive(Deserialize)]
        struct Answer {
            transition: Option<TransitionDetail>,
        }
        let a: Answer = self
            .call(
                http::Method::GET,
                self.url(ip, "/_ringstore/admin/v1/transition"),
                token,
                None,
            )
            .await?;
        Ok(a.transition)
    }

    /// Commits a layout made of `nodes`, with `redundancy` (`data+parity`) when it is to
    /// change; returns the new layout version.
    pub async fn apply_layout(
        &self,
        ip: &str,
        token: &str,
        nodes: &[String],
        redundancy: Option<&str>,
    ) -> Result<u64, AdminError> {
        #[derive(Deserialize)]
        struct Answer {
            version: u64,
        }
        let mut request = serde_json::json!({ "nodes": nodes });
        if let Some(r) = redundancy {
            request["redundancy"] = r.into();
        }
        let body = serde_json::to_vec(&request).map_err(|e| AdminError::Request(ip.into(), e.to_string()))?;
        let a: Answer = self
            .call(
                http::Method::POST,
                self.url(ip, "/_ringstore/admin/v1/layout"),
                token,
                Some(body),
            )
            .await?;
        Ok(a.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_node_status_document() {
        let doc = r#"{
          "node": "t-a-0", "version": "0.1.0", "redundancy": "2+2", "layout_version": 3,
          "nodes": [
            {"name": "t-a-1", "zone": "default", "rpc_address": "x:9100", "state": "offline", "in_layout": true, "drives": 1},
            {"name": "t-a-0", "zone": "default", "rpc_address": "y:9100", "state": "online", "in_layout": true, "drives": 1},
            {"name": "t-b-0", "zone": "default", "rpc_address": null, "state": "online", "in_layout": false, "drives": 1}
          ],
          "drives": [
            {"id": "d0", "node": "t-a-0", "path": "/data/0", "state": "online", "bytes_used": 1, "bytes_available": 2},
            {"id": "d1", "node": "t-a-1", "state": "offline"}
          ],
          "capacity": {"drives_total": 2, "drives_online": 1, "bytes_used": 1, "bytes_available": 2},
          "cluster": {"role": "leader", "leader": "t-a-0", "voters": ["t-a-0"], "learners": [], "members": [], "layout_version": 3},
          "healing": {"objects_checked": 0, "scrub_running": true, "scrub_passes": 0, "scrub_checked": 0}
        }"#;
        let s: AdminStatus = serde_json::from_str(doc).unwrap();
        assert_eq!(s.layout_version, 3);
        assert_eq!(s.layout_nodes(), ["t-a-0", "t-a-1"]);
        assert_eq!(s.offline_nodes(&Default::default()), ["t-a-1"]);
        // a server out of the layout counts only while its pod should run (a drain source)
        let mut s2 = s.clone();
        s2.nodes[2].state = "offline".into();
        assert_eq!(s2.offline_nodes(&Default::default()), ["t-a-1"]);
        assert_eq!(
            s2.offline_nodes(&["t-b-0".to_string()].into()),
            ["t-a-1", "t-b-0"]
        );
        assert_eq!(s.offline_drives(), ["t-a-1:d1"]);
        assert!(s.healing.scrub_running);
        let c = s.cluster.unwrap();
        assert_eq!(c.leader.as_deref(), Some("t-a-0"));
        assert_eq!((c.voters.len(), c.layout_version), (1, Some(3)));
    }
}
