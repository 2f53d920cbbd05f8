//! Rust types of the `Tenant` and `Pool` custom resources (group `ringstore.io`, version
//! `v1alpha1`) and the YAML of their CustomResourceDefinitions.
//!
//! A `Tenant` is one Ringstore cluster: image, redundancy, credentials and the S3 Service. A
//! `Pool` is a group of identical servers (one StatefulSet) that belongs to a Tenant; a Tenant
//! grows by adding Pools or servers. The doc comments of the fields are the descriptions
//! `kubectl explain` shows, so they are written for the person editing a manifest.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::crd::merge_crds;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod testing;

/// API group of every Ringstore resource.
pub const GROUP: &str = "ringstore.io";
/// Largest data shard count per object.
pub const MAX_DATA: u8 = 16;
/// Largest parity shard count per object.
pub const MAX_PARITY: u8 = 8;

/// A Ringstore cluster: an S3-compatible, erasure-coded object store. Its servers come from the
/// Pools that name this Tenant in `spec.tenant`.
///
/// TLS is not supported yet: there is deliberately no `tls` field (the API server drops an
/// unknown field with a warning) rather than one that would be accepted and ignored. Put a
/// TLS-terminating proxy or load balancer in front of the S3 Service meanwhile.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ringstore.io",
    version = "v1alpha1",
    kind = "Tenant",
    doc = "A Ringstore cluster (an S3-compatible, erasure-coded object store); its servers come from the Pools that name it",
    namespaced,
    status = "TenantStatus",
    shortname = "rst",
    category = "ringstore",
    derive = "PartialEq",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Summary of the tenant's state"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyServers", description = "Servers whose pod is ready"),
    printcolumn(name = "Servers", type_ = "integer", json_path = ".status.servers", description = "Servers of all pools"),
    printcolumn(name = "Capacity", type_ = "string", json_path = ".status.capacity.total", description = "Raw capacity of all drives"),
    printcolumn(name = "Layout", type_ = "integer", json_path = ".status.layoutVersion", description = "Version of the cluster layout"),
    printcolumn(name = "Redundancy", type_ = "string", json_path = ".status.redundancy", description = "Data+parity shards of the cluster layout"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 40")
        .message("a Tenant name must be a DNS label that starts with a letter and has at most 40 characters (it names Services and StatefulSets)"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.credentialsSecret) == has(oldSelf.credentialsSecret) && (!has(self.credentialsSecret) || self.credentialsSecret == oldSelf.credentialsSecret)")
        .message("credentialsSecret cannot be changed: credential rotation is not supported yet"),
    validation = Rule::new("has(self.clusterSecret) == has(oldSelf.clusterSecret) && (!has(self.clusterSecret) || self.clusterSecret == oldSelf.clusterSecret)")
        .message("clusterSecret cannot be changed: nodes with different cluster secrets refuse each other"),
)]
pub struct TenantSpec {
    /// Container image of the Ringstore server, for example `ringstore/ringstore:0.1.0`.
    /// Changing it rolls the servers one at a time, each only when the whole cluster is
    /// healthy (every server ready, every drive online, no healing running).
    #[schemars(length(min = 1))]
    pub image: String,

    /// When the kubelet pulls the image: `Always`, `IfNotPresent` or `Never`. Default: the
    /// Kubernetes default for the image's tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// How objects are erasure coded: `data` + `parity` shards, or `replicas` full copies.
    /// Every shard of an object goes to a different server, so the Pools must have at least
    /// `data + parity` (or `replicas`) servers in total. Changing it re-encodes every object
    /// in the background (the Tenant shows `Progressing` with reason `Reencoding`); no
    /// server restarts, and everything stays readable throughout.
    pub redundancy: Redundancy,

    /// Name of a Secret in this namespace with the S3 credentials in the keys `accessKey`
    /// (at least 3 characters) and `secretKey` (at least 8). The secret key is also the
    /// token of the admin API. When unset, the operator creates the Secret `<tenant>-credentials`
    /// with random keys once and never overwrites it. Cannot be changed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,

    /// Name of a Secret in this namespace with the key `clusterSecret` (at least 16
    /// characters, 32 or more recommended) that authenticates the servers to each other. When
    /// unset, the operator creates the Secret `<tenant>-cluster` with a random 48-character
    /// secret once and never overwrites it. Cannot be changed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub cluster_secret: Option<String>,

    /// The Service `<tenant>` through which clients reach the S3 API (any server answers
    /// any request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Service>,

    /// Default compute resources of every server's container; a Pool's own `resources`
    /// replace them. Plan for about 1 GiB of memory per server plus 64 MiB per concurrent
    /// large request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    // TLS is not implemented yet: the field is left out of the schema (the apiserver prunes
    // it) rather than accepted and silently ignored.
}

/// Redundancy: either `data` and `parity`, or `replicas`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.data) && has(self.parity) && !has(self.replicas)) || (!has(self.data) && !has(self.parity) && has(self.replicas))")
        .message("set either data and parity, or replicas"),
)]
pub struct Redundancy {
    /// Data shards per object (1 to 16): an object is cut into this many pieces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub data: Option<u8>,

    /// Parity shards per object (0 to 8): how many servers or drives may be lost without
    /// losing data. Reads survive `parity` servers down; writes survive `parity` servers
    /// down when `data > parity`, else `parity - 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 8))]
    pub parity: Option<u8>,

    /// Full copies of every object (1 to 9), the same as `data: 1, parity: replicas - 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: Option<u8>,
}

impl Redundancy {
    /// `(data, parity)`, whichever form was given; `None` when the spec has neither or both
    /// (the schema refuses those, but objects may come from elsewhere).
    pub fn shards(&self) -> Option<(u8, u8)> {
        match (self.data, self.parity, self.replicas) {
            (Some(k), Some(m), None) => Some((k, m)),
            (None, None, Some(n)) if n >= 1 => Some((1, n - 1)),
            _ => None,
        }
    }
}

/// When the kubelet pulls the image: `Always`, `IfNotPresent` or `Never` (default: the
/// Kubernetes default for the image's tag).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node does not have the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// The S3 Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct S3Service {
    /// Service type: `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,

    /// Port of the Service (default 9000); it forwards to the servers' port 9000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Annotations of the Service, for example those of a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Service type: `ClusterIP` (default), `NodePort` or `LoadBalancer`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// What the operator observed of a Tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One word for people: `Invalid`, `Provisioning`, `Scaling`, `Upgrading`, `Degraded` or
    /// `Ready`. Programs should read the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,

    /// `Ready` (every server ready and the cluster reports every node and drive online),
    /// `Progressing` (servers being created, a layout or image change under way) and
    /// `Degraded` (something needs attention; the message says what).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Version of the cluster layout (the placement of data on servers and drives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout_version: Option<u64>,

    /// The redundancy (`data+parity`) of the cluster's layout, which new data is stored
    /// with; after a change of `spec.redundancy`, older data is re-encoded to it in the
    /// background (`Progressing` with reason `Reencoding` until it is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy: Option<String>,

    /// RPC addresses of the servers the cluster was founded from. Recorded once and never
    /// changed, so that adding a Pool does not restart every server; later servers join
    /// through them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<String>,

    /// The redundancy (`data+parity`) the cluster was formed with, which the servers are
    /// started with. Recorded once and never changed, so that a change of
    /// `spec.redundancy` (applied through the cluster's admin API, which re-encodes the data)
    /// restarts no server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_redundancy: Option<String>,

    /// Servers of every Pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolSummary>,

    /// Servers whose pod is ready, in all pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_servers: Option<i32>,

    /// Servers wanted, in all pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<i32>,

    /// Drives and bytes as the cluster reports them. The byte counts are refreshed when they
    /// move by more than 1% of the total, so that a quiet cluster's status stays still.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,

    /// The image every server runs, once a rollout finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// The running layout transition (data moving after servers joined or left or the
    /// redundancy changed), or the last one, finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<TransitionStatus>,

    /// Progress of a rolling upgrade, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeStatus>,
}

/// One Pool of a Tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PoolSummary {
    /// Name of the Pool.
    pub name: String,
    /// Servers wanted.
    pub servers: i32,
    /// Servers whose pod is ready.
    pub ready_servers: i32,
}

/// Drives and bytes of the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// Bytes free on the drives' file systems.
    pub bytes_available: u64,
    /// Bytes used on the drives' file systems.
    pub bytes_used: u64,
    /// Raw capacity (used + available) for people, for example `1.5Ti`.
    pub total: String,
    /// Drives that answer.
    pub drives_online: u32,
    /// Drives of the layout that do not answer.
    pub drives_offline: u32,
}

/// A layout transition, as the cluster reports it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TransitionStatus {
    /// Layout version the data moves from.
    pub from: u64,
    /// Layout version the data moves to.
    pub to: u64,
    /// `rebalance` (servers joined), `drain` (servers leave) or `reencode` (the redundancy
    /// changed).
    pub kind: String,
    /// `syncing` (every node learns both layouts), `moving`, `paused` or `finished`.
    pub phase: String,
    /// Share of the ring's partitions done, 0 to 100.
    pub percent: f64,
    /// Objects moved or re-encoded so far, over every node.
    pub objects_moved: u64,
    /// Bytes moved or written re-encoded so far, over every node.
    pub bytes_moved: u64,
    /// Seconds left at the pace so far, while moving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
}

/// A rolling upgrade in progress.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    /// The image being rolled out.
    pub image: String,
    /// Servers already running the new pod template.
    pub updated_servers: i32,
    /// Servers in total.
    pub servers: i32,
}

/// A condition, in the shape Kubernetes uses everywhere.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Degraded` (Pools also have `Decommissioned`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word saying why.
    #[serde(default)]
    pub reason: String,
    /// What happened and, when something is wrong, what to do about it.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A group of identical Ringstore servers (one StatefulSet, `<tenant>-<pool>`) belonging to a
/// Tenant. Each server gets `volumesPerServer` PersistentVolumeClaims of `volumeSize`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ringstore.io",
    version = "v1alpha1",
    kind = "Pool",
    doc = "A group of identical Ringstore servers (one StatefulSet) that belongs to a Tenant",
    namespaced,
    status = "PoolStatus",
    shortname = "rsp",
    category = "ringstore",
    derive = "PartialEq",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant", description = "The Tenant this pool belongs to"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Summary of the pool's state"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyServers", description = "Servers whose pod is ready"),
    printcolumn(name = "Servers", type_ = "integer", json_path = ".spec.servers", description = "Servers wanted"),
    printcolumn(name = "Volumes", type_ = "integer", json_path = ".spec.volumesPerServer", priority = 1, description = "Volumes per server"),
    printcolumn(name = "Size", type_ = "string", json_path = ".spec.volumeSize", priority = 1, description = "Size of each volume"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("a Pool name must be a DNS label: lowercase letters, digits and '-'"),
    validation = Rule::new("size(self.metadata.name) + size(self.spec.tenant) <= 51")
        .message("<tenant>-<pool> names the StatefulSet and must have at most 52 characters"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
        .message("storageClassName cannot be changed: volumes of a StatefulSet are fixed at creation"),
)]
pub struct PoolSpec {
    /// Name of the Tenant (in this namespace) the pool belongs to. Cannot be changed.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenant cannot be changed"))]
    pub tenant: String,

    /// Number of servers (pods). May grow and shrink: the servers a shrink removes (the
    /// highest ordinals) are drained first (their data moves to the servers that stay), and
    /// only then are their pods and, with `volumeReclaimPolicy: Delete`, their volumes
    /// removed.
    #[schemars(range(min = 1, max = 1000))]
    pub servers: i32,

    /// Volumes (drives) per server, each a PersistentVolumeClaim mounted at `/data/<i>`.
    /// Cannot be changed.
    #[schemars(range(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("volumesPerServer cannot be changed: volumes of a StatefulSet are fixed at creation"))]
    pub volumes_per_server: i32,

    /// Size of each volume as a Kubernetes quantity, for example `100Gi`. Cannot be changed.
    #[schemars(
        length(min = 1, max = 64),
        regex(
            pattern = r"^(\+)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[kMGTPE]|([eE](\+)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
        )
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("volumeSize cannot be changed: volumes of a StatefulSet are fixed at creation"))]
    pub volume_size: String,

    /// StorageClass of the volumes (default: the cluster's default StorageClass). Cannot be
    /// changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// Compute resources of each server's container (default: the Tenant's `resources`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels a server's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Scheduling constraints of the servers. Without a `podAntiAffinity`, the operator
    /// prefers to put the Tenant's servers on distinct nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Taints the servers tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// How the servers spread over topology domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// Failure domain of the pool's servers (default `default`): shards of an object are
    /// spread over zones when there are several. The operator does not schedule by it; pair it
    /// with a `nodeSelector` such as `topology.kubernetes.io/zone: <zone>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub zone: Option<String>,

    /// Drain the pool: its data moves to the Tenant's other pools, then its StatefulSet and
    /// (with `volumeReclaimPolicy: Delete`) its volumes are deleted and the pool shows
    /// `Decommissioned`. Deleting a Pool drains it the same way first (a finalizer holds the
    /// Pool until its data is gone). Setting it back to `false` builds the pool anew, empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub decommission: bool,

    /// What happens to the volumes of servers that a shrink or a decommission removed once
    /// their data has moved away: `Delete` (default) or `Retain` (kept for the user to
    /// delete). The cluster retires a drained server's drives: delete retained volumes
    /// before the pool grows back over their ordinals, or the cluster refuses those servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_reclaim_policy: Option<VolumeReclaimPolicy>,
}

/// What becomes of a drained server's volumes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VolumeReclaimPolicy {
    #[default]
    Delete,
    Retain,
}

/// The finalizer the operator puts on every Pool: it holds a deleted Pool until its data has
/// moved to the Tenant's other pools and its StatefulSet and volumes are gone.
pub const POOL_FINALIZER: &str = "ringstore.io/drain";

/// What the operator observed of a Pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One word for people: `Pending` (no such Tenant, or it is invalid), `Provisioning`,
    /// `Ready`, `Degraded`, `Draining` (servers leave: their data moves away) or
    /// `Decommissioned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,

    /// Servers wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<i32>,

    /// Servers whose pod is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_servers: Option<i32>,

    /// `Ready` and, when `decommission` is requested, `Decommissioned`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The header of the generated YAML files.
pub const HEADER: &str = "# generated by crdgen, do not edit: cargo run -p ringstore-crds --bin crdgen\n";

/// The CRD YAML files: `(file name, content)`.
pub fn generated() -> anyhow::Result<Vec<(&'static str, String)>> {
    // merge_crds with a single version validates the CRD's names and versions
    let tenant = merge_crds(vec![Tenant::crd()], "v1alpha1")?;
    let pool = merge_crds(vec![Pool::crd()], "v1alpha1")?;
    let yaml = |crd| -> anyhow::Result<String> {
        let mut v = serde_json::to_value(crd)?;
        unwrap_descriptions(&mut v);
        Ok(format!("{HEADER}{}", serde_yaml::to_string(&v)?))
    };
    Ok(vec![("tenant.yaml", yaml(tenant)?), ("pool.yaml", yaml(pool)?)])
}

/// Doc comments are wrapped at 100 columns and `kubectl explain` wraps again, so single line
/// breaks become spaces (paragraphs, and descriptions with code blocks, are kept).
fn unwrap_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, sub) in map.iter_mut() {
                match sub {
                    serde_json::Value::String(s) if k == "description" && !s.contains("```") => {
                        *s = s
                            .split("\n\n")
                            .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(sub),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_yaml_is_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (file, content) in generated().unwrap() {
            let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(
                committed == content,
                "crds/{file} is out of date: run `cargo run -p ringstore-crds --bin crdgen` and commit the result"
            );
        }
    }

    /// The apiserver refuses schemas that are not structural; these are the usual culprits.
    #[test]
    fn schemas_are_structural() {
        for (file, content) in generated().unwrap() {
            for bad in [
                "$ref",
                "anyOf",
                "oneOf",
                "allOf",
                "additionalProperties: false",
                "const:",
            ] {
                assert!(!content.contains(bad), "{file} contains {bad}");
            }
        }
    }

    #[test]
    fn every_spec_field_has_a_description() {
        fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
                for (name, sub) in props {
                    let p = format!("{path}.{name}");
                    if sub.get("description").is_none() {
                        missing.push(p.clone());
                    }
                    // k8s-openapi types carry their own descriptions; only check ours
                    if !sub
                        .get("x-kubernetes-preserve-unknown-fields")
                        .is_some_and(|x| x == true)
                    {
                        walk(&p, sub, missing);
                    }
                }
            }
            if let Some(items) = v.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        for crd in [Tenant::crd(), Pool::crd()] {
            let schema = serde_json::to_value(
                crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            let mut missing = Vec::new();
            for top in ["spec", "status"] {
                walk(top, &schema["properties"][top], &mut missing);
            }
            assert!(
                missing.is_empty(),
                "{}: no description on {missing:?}",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn redundancy_forms() {
        let r: Redundancy = serde_json::from_str(r#"{"data": 2, "parity": 2}"#).unwrap();
        assert_eq!(r.shards(), Some((2, 2)));
        let r: Redundancy = serde_json::from_str(r#"{"replicas": 3}"#).unwrap();
        assert_eq!(r.shards(), Some((1, 2)));
        let r: Redundancy = serde_json::from_str(r#"{"replicas": 3, "data": 1}"#).unwrap();
        assert_eq!(r.shards(), None);
    }
}
