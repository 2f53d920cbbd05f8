//! The build step: a Tenant and its Pools in, the objects that should exist out. Pure (no
//! client, no clock, no randomness) so that it is tested from small YAML fixtures.
//!
//! Every object carries the annotation [`HASH_ANNOTATION`], a digest of the object itself:
//! the apply step skips objects whose live copy has the same digest, so that a steady-state
//! reconcile sends no write at all.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use ringstore_crds::{Pool, Tenant};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// `app.kubernetes.io/name` of every child: `ringstore`.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `ringstore.io/tenant` of every child: the Tenant's name. Not `app.kubernetes.io/instance`:
/// Argo CD (label tracking, its default before 3.0) and Helm read that label as "belongs to
/// the release of this name", and would prune or adopt the operator's children.
pub const INSTANCE_LABEL: &str = "ringstore.io/tenant";
/// `app.kubernetes.io/managed-by` of every child: `ringstore-operator`.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The Pool of a StatefulSet and its pods.
pub const POOL_LABEL: &str = "ringstore.io/pool";
/// Digest of the object as the operator last built it.
pub const HASH_ANNOTATION: &str = "ringstore.io/applied-hash";
/// The value of `app.kubernetes.io/name`.
pub const APP: &str = "ringstore";
/// The value of `app.kubernetes.io/managed-by` and the server-side-apply field manager.
pub const MANAGER: &str = "ringstore-operator";

/// Port of S3, the health endpoints and the admin API.
pub const S3_PORT: i32 = 9000;
/// Port of the node-to-node RPC.
pub const RPC_PORT: i32 = 9100;
/// User and group the server runs as.
pub const UID: i64 = 10001;
/// Key of the access key in the credentials Secret.
pub const ACCESS_KEY: &str = "accessKey";
/// Key of the secret key in the credentials Secret.
pub const SECRET_KEY: &str = "secretKey";
/// Key of the cluster secret in the cluster Secret.
pub const CLUSTER_SECRET_KEY: &str = "clusterSecret";
/// The cluster's DNS domain (pods are reached as `<pod>.<tenant>-peers.<ns>.svc.<domain>`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Names of a Tenant's children.
pub fn peers_service(tenant: &str) -> String {
    format!("{tenant}-peers")
}
pub fn statefulset(tenant: &str, pool: &str) -> String {
    format!("{tenant}-{pool}")
}
pub fn credentials_secret(t: &Tenant) -> String {
    t.spec
        .credentials_secret
        .clone()
        .unwrap_or_else(|| format!("{}-credentials", t.name_any()))
}
pub fn cluster_secret(t: &Tenant) -> String {
    t.spec
        .cluster_secret
        .clone()
        .unwrap_or_else(|| format!("{}-cluster", t.name_any()))
}

/// Pod names of a pool, in ordinal order.
pub fn pod_names(tenant: &str, pool: &str, servers: i32) -> Vec<String> {
    (0..servers.max(0))
        .map(|i| format!("{}-{i}", statefulset(tenant, pool)))
        .collect()
}

/// The RPC address of a pod, through the headless Service.
pub fn peer_address(pod: &str, tenant: &str, namespace: &str) -> String {
    format!(
        "{pod}.{}.{namespace}.svc.{CLUSTER_DOMAIN}:{RPC_PORT}",
        peers_service(tenant)
    )
}

/// Seeds of a new cluster: every pod of the pools that exist now (`pools` sorted oldest
/// first). Recorded in the status and never recomputed.
pub fn initial_seeds(tenant: &Tenant, pools: &[Pool]) -> Vec<String> {
    let (name, ns) = (tenant.name_any(), tenant.namespace().unwrap_or_default());
    pools
        .iter()
        .flat_map(|p| pod_names(&name, &p.name_any(), p.spec.servers))
        .map(|pod| peer_address(&pod, &name, &ns))
        .collect()
}

/// Labels shared by everything of a Tenant.
pub fn instance_labels(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), APP.to_owned()),
        (INSTANCE_LABEL.to_owned(), tenant.to_owned()),
    ])
}

/// Labels of a child object: only ours, never the Tenant's (other tools' tracking labels
/// copied onto children make those tools see drift).
pub fn child_labels(tenant: &str) -> BTreeMap<String, String> {
    let mut l = instance_labels(tenant);
    l.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());
    l
}

/// `key=value,...` for a list call.
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Everything that should exist for a Tenant (Secrets aside: they are created once with
/// random content, see `secrets`).
#[derive(Debug, Clone)]
pub struct Desired {
    pub peers: Service,
    pub s3: Service,
    pub pdb: PodDisruptionBudget,
    /// One per Pool, in the order of the pools given.
    pub statefulsets: Vec<StatefulSet>,
}

/// Builds the desired children. `pools` are the valid pools of the Tenant that stay,
/// `seeds` the recorded seed addresses, `(k, m)` the validated redundancy and `formed` the
/// one the cluster was formed with (the servers' `RINGSTORE_REDUNDANCY`, which only a new
/// cluster reads: a later change is applied through the admin API and restarts nothing).
/// `running` holds the replicas of each pool's StatefulSet: a pool that shrank keeps them
/// until the servers it removes are drained (then the caller builds again without it).
pub fn build(
    tenant: &Tenant,
    pools: &[Pool],
    seeds: &[String],
    (_, m): (u8, u8),
    formed: (u8, u8),
    running: &BTreeMap<String, i32>,
) -> Desired {
    let owner = owner_ref(tenant);
    let name = tenant.name_any();
    let ns = tenant.namespace().unwrap_or_default();
    let meta = |n: String, labels: BTreeMap<String, String>| ObjectMeta {
        name: Some(n),
        namespace: Some(ns.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };

    let peers = Service {
        metadata: meta(peers_service(&name), child_labels(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(instance_labels(&name)),
            ports: Some(vec![
                service_port("s3", S3_PORT, S3_PORT),
                service_port("rpc", RPC_PORT, RPC_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let s3_spec = tenant.spec.s3.clone().unwrap_or_default();
    let mut s3_meta = meta(name.clone(), child_labels(&name));
    if !s3_spec.annotations.is_empty() {
        s3_meta.annotations = Some(s3_spec.annotations.clone());
    }
    let s3 = Service {
        metadata: s3_meta,
        spec: Some(ServiceSpec {
            type_: Some(
                s3_spec
                    .type_
                    .unwrap_or(ringstore_crds::ServiceType::ClusterIP)
                    .as_str()
                    .into(),
            ),
            selector: Some(instance_labels(&name)),
            ports: Some(vec![service_port("s3", s3_spec.port.unwrap_or(S3_PORT), S3_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let pdb = PodDisruptionBudget {
        metadata: meta(name.clone(), child_labels(&name)),
        spec: Some(PodDisruptionBudgetSpec {
            // never more voluntary disruptions than the redundancy tolerates (while a change
            // re-encodes, objects of both redundancies are stored)
            max_unavailable: Some(IntOrString::Int(i32::from(m.min(formed.1).min(1)))),
            selector: Some(LabelSelector {
                match_labels: Some(instance_labels(&name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let statefulsets = pools
        .iter()
        .map(|p| {
            let replicas = p
                .spec
                .servers
                .max(running.get(&p.name_any()).copied().unwrap_or(0));
            pool_statefulset(
                tenant,
                p,
                seeds,
                formed,
                replicas,
                meta(String::new(), BTreeMap::new()),
            )
        })
        .collect();

    let mut d = Desired {
        peers,
        s3,
        pdb,
        statefulsets,
    };
    stamp(&mut d.peers);
    stamp(&mut d.s3);
    stamp(&mut d.pdb);
    d.statefulsets.iter_mut().for_each(stamp);
    d
}

fn owner_ref(tenant: &Tenant) -> OwnerReference {
    tenant
        .controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            // a Tenant read from the API always has a uid; fixtures without one still build
            api_version: Tenant::api_version(&()).into(),
            kind: Tenant::kind(&()).into(),
            name: tenant.name_any(),
            uid: tenant.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
}

fn service_port(name: &str, port: i32, target: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Labels selecting a pool's pods (the StatefulSet selector: immutable).
pub fn pool_selector(tenant: &str, pool: &str) -> BTreeMap<String, String> {
    let mut l = instance_labels(tenant);
    l.insert(POOL_LABEL.into(), pool.into());
    l
}

fn pool_statefulset(
    tenant: &Tenant,
    pool: &Pool,
    seeds: &[String],
    (k, m): (u8, u8),
    replicas: i32,
    mut meta: ObjectMeta,
) -> StatefulSet {
    let name = tenant.name_any();
    let ns = tenant.namespace().unwrap_or_default();
    let pool_name = pool.name_any();
    let spec = &pool.spec;
    let selector = pool_selector(&name, &pool_name);
    let mut labels = selector.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    meta.name = Some(statefulset(&name, &pool_name));
    meta.labels = Some(labels.clone());

    let volumes = spec.volumes_per_server.max(1);
    let data_dirs: Vec<String> = (0..volumes).map(|i| format!("/data/{i}")).collect();
    let secret_env = |env: &str, secret: String, key: &str| EnvVar {
        name: env.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let plain = |env: &str, value: String| EnvVar {
        name: env.into(),
        value: Some(value),
        ..Default::default()
    };
    // RINGSTORE_NODE_NAME first: RINGSTORE_RPC_ADVERTISE refers to it
    let env = vec![
        EnvVar {
            name: "RINGSTORE_NODE_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        plain("RINGSTORE_ADDRESS", format!("0.0.0.0:{S3_PORT}")),
        plain("RINGSTORE_RPC_ADDRESS", format!("0.0.0.0:{RPC_PORT}")),
        plain(
            "RINGSTORE_RPC_ADVERTISE",
            format!(
                "$(RINGSTORE_NODE_NAME).{}.{ns}.svc.{CLUSTER_DOMAIN}:{RPC_PORT}",
                peers_service(&name)
            ),
        ),
        plain("RINGSTORE_SEEDS", seeds.join(",")),
        plain("RINGSTORE_DATA", data_dirs.join(",")),
        plain(
            "RINGSTORE_ZONE",
            spec.zone.clone().unwrap_or_else(|| "default".into()),
        ),
        plain("RINGSTORE_REDUNDANCY", format!("{k}+{m}")),
        plain("RINGSTORE_LOG_FORMAT", "json".into()),
        secret_env(
            "RINGSTORE_CLUSTER_SECRET",
            cluster_secret(tenant),
            CLUSTER_SECRET_KEY,
        ),
        secret_env("RINGSTORE_ACCESS_KEY", credentials_secret(tenant), ACCESS_KEY),
        secret_env("RINGSTORE_SECRET_KEY", credentials_secret(tenant), SECRET_KEY),
    ];

    let mut mounts: Vec<VolumeMount> = (0..volumes)
        .map(|i| VolumeMount {
            name: format!("data-{i}"),
            mount_path: format!("/data/{i}"),
            ..Default::default()
        })
        .collect();
    // the root file system is read-only; give the process a scratch folder
    mounts.push(VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    });

    let http_probe = |path: &str| HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::Int(S3_PORT),
        scheme: Some("HTTP".into()),
        ..Default::default()
    };
    let container = Container {
        name: "ringstore".into(),
        image: Some(tenant.spec.image.clone()),
        image_pull_policy: tenant.spec.image_pull_policy.map(|p| p.as_str().into()),
        args: Some(vec!["server".into()]),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("s3".into()),
                container_port: S3_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("rpc".into()),
                container_port: RPC_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(http_probe("/health/ready")),
            period_seconds: Some(5),
            timeout_seconds: Some(3),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        // generous: a node replaying Raft or waiting for its peers is alive but slow
        liveness_probe: Some(Probe {
            http_get: Some(http_probe("/health/live")),
            initial_delay_seconds: Some(10),
            period_seconds: Some(10),
            timeout_seconds: Some(5),
            failure_threshold: Some(6),
            ..Default::default()
        }),
        resources: spec.resources.clone().or_else(|| tenant.spec.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(UID),
            run_as_group: Some(UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    let mut affinity = spec.affinity.clone().unwrap_or_default();
    if affinity.pod_anti_affinity.is_none() {
        affinity.pod_anti_affinity = Some(spread_servers(&name));
    }

    let pod_spec = PodSpec {
        containers: vec![container],
        // the servers never talk to the Kubernetes API, and Service env vars could collide
        // with RINGSTORE_* (a Tenant named `ringstore` gives RINGSTORE_PORT)
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(45),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(UID),
            run_as_group: Some(UID),
            fs_group: Some(UID),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        affinity: Some(affinity),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        topology_spread_constraints: (!spec.topology_spread_constraints.is_empty())
            .then(|| spec.topology_spread_constraints.clone()),
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("256Mi".into())),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };

    let claims = (0..volumes)
        .map(|i| PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(format!("data-{i}")),
                labels: Some(selector.clone()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: spec.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        Quantity(spec.volume_size.clone()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();

    StatefulSet {
        metadata: meta,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            service_name: Some(peers_service(&name)),
            pod_management_policy: Some("Parallel".into()),
            // the operator rolls pods itself, one at a time and only on a healthy cluster
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            volume_claim_templates: Some(claims),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Prefer one server of the Tenant per node.
fn spread_servers(tenant: &str) -> PodAntiAffinity {
    PodAntiAffinity {
        preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
            weight: 100,
            pod_affinity_term: PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(instance_labels(tenant)),
                    ..Default::default()
                }),
                topology_key: "kubernetes.io/hostname".into(),
                ..Default::default()
            },
        }]),
        ..Default::default()
    }
}

/// An affinity that is only ours (for tests).
pub fn default_affinity(tenant: &str) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(spread_servers(tenant)),
        ..Default::default()
    }
}

/// Digest of an object (without its hash annotation).
pub fn digest<K: Serialize>(obj: &K) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..12])
}

/// Sets [`HASH_ANNOTATION`] to the digest of the object.
pub fn stamp<K: Resource + Serialize>(obj: &mut K) {
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove(HASH_ANNOTATION);
    }
    let d = digest(&*obj);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_ANNOTATION.into(), d);
}

/// The digest recorded on a live object, if any.
pub fn recorded_digest<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(HASH_ANNOTATION))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (Tenant, Vec<Pool>) {
        let tenant: Tenant = serde_yaml::from_str(
            r#"
apiVersion: ringstore.io/v1alpha1
kind: Tenant
metadata: {name: store, namespace: prod, uid: u-1, generation: 3,
  labels: {argocd.argoproj.io/instance: shop, helm.sh/chart: x},
  annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}"}}
spec:
  image: ringstore:1.0
  imagePullPolicy: IfNotPresent
  redundancy: {data: 2, parity: 2}
  s3: {type: LoadBalancer, port: 80, annotations: {lb.example/internal: "true"}}
  resources: {requests: {memory: 1Gi}}
"#,
        )
        .unwrap();
        let pool: Pool = serde_yaml::from_str(
            r#"
apiVersion: ringstore.io/v1alpha1
kind: Pool
metadata: {name: a, namespace: prod, uid: p-1}
spec:
  tenant: store
  servers: 4
  volumesPerServer: 2
  volumeSize: 10Gi
  storageClassName: fast
  zone: z1
  nodeSelector: {disk: ssd}
"#,
        )
        .unwrap();
        (tenant, vec![pool])
    }

    fn env_of(sts: &StatefulSet) -> BTreeMap<String, EnvVar> {
        let c = &sts
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn seeds_are_the_pods_of_the_first_pools() {
        let (t, pools) = fixture();
        assert_eq!(
            initial_seeds(&t, &pools),
            vec![
                "store-a-0.store-peers.prod.svc.cluster.local:9100",
                "store-a-1.store-peers.prod.svc.cluster.local:9100",
                "store-a-2.store-peers.prod.svc.cluster.local:9100",
                "store-a-3.store-peers.prod.svc.cluster.local:9100",
            ]
        );
    }

    #[test]
    fn statefulset_follows_the_contract() {
        let (t, pools) = fixture();
        let seeds = initial_seeds(&t, &pools);
        let d = build(&t, &pools, &seeds, (2, 2), (2, 2), &BTreeMap::new());
        let sts = &d.statefulsets[0];
        assert_eq!(sts.metadata.name.as_deref(), Some("store-a"));
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Tenant", "u-1", Some(true))
        );
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.service_name.as_deref(), Some("store-peers"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.update_strategy.as_ref().unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        let labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "ringstore");
        assert_eq!(labels["ringstore.io/tenant"], "store");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "ringstore-operator");
        assert_eq!(labels["ringstore.io/pool"], "a");
        let claims = spec.volume_claim_templates.as_ref().unwrap();
        assert_eq!(claims.len(), 2);
        assert_eq!(claims[1].metadata.name.as_deref(), Some("data-1"));
        let cs = claims[1].spec.as_ref().unwrap();
        assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "10Gi"
        );

        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.name, "ringstore");
        assert_eq!(c.image.as_deref(), Some("ringstore:1.0"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(c.args, Some(vec!["server".to_string()]));
        let ready = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(
            (ready.path.as_deref(), &ready.port),
            (Some("/health/ready"), &IntOrString::Int(9000))
        );
        let live = c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(live.path.as_deref(), Some("/health/live"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(10001));
        assert_eq!(pod.node_selector.as_ref().unwrap()["disk"], "ssd");
        assert_eq!(pod.affinity, Some(default_affinity("store")));
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["memory"].0,
            "1Gi",
            "the tenant's default resources apply"
        );
        let mounts: Vec<_> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/data/0", "/data/1", "/tmp"]);

        let env = env_of(sts);
        let value = |k: &str| env[k].value.clone().unwrap();
        assert_eq!(
            env["RINGSTORE_NODE_NAME"]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        assert_eq!(value("RINGSTORE_ADDRESS"), "0.0.0.0:9000");
        assert_eq!(value("RINGSTORE_RPC_ADDRESS"), "0.0.0.0:9100");
        assert_eq!(
            value("RINGSTORE_RPC_ADVERTISE"),
            "$(RINGSTORE_NODE_NAME).store-peers.prod.svc.cluster.local:9100"
        );
        assert_eq!(value("RINGSTORE_SEEDS"), seeds.join(","));
        assert_eq!(value("RINGSTORE_DATA"), "/data/0,/data/1");
        assert_eq!(value("RINGSTORE_ZONE"), "z1");
        assert_eq!(value("RINGSTORE_REDUNDANCY"), "2+2");
        assert_eq!(value("RINGSTORE_LOG_FORMAT"), "json");
        let secret = |k: &str| {
            let s = env[k]
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .clone()
                .unwrap();
            (s.name, s.key)
        };
        assert_eq!(
            secret("RINGSTORE_CLUSTER_SECRET"),
            ("store-cluster".into(), "clusterSecret".into())
        );
        assert_eq!(
            secret("RINGSTORE_ACCESS_KEY"),
            ("store-credentials".into(), "accessKey".into())
        );
        assert_eq!(
            secret("RINGSTORE_SECRET_KEY"),
            ("store-credentials".into(), "secretKey".into())
        );
        // the node name must be defined before the variables that refer to it
        let order: Vec<_> = c.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert!(
            order.iter().position(|n| *n == "RINGSTORE_NODE_NAME")
                < order.iter().position(|n| *n == "RINGSTORE_RPC_ADVERTISE")
        );
    }

    #[test]
    fn services_and_pdb() {
        let (t, pools) = fixture();
        let d = build(&t, &pools, &[], (2, 2), (2, 2), &BTreeMap::new());
        let peers = d.peers.spec.as_ref().unwrap();
        assert_eq!(d.peers.metadata.name.as_deref(), Some("store-peers"));
        assert_eq!(peers.cluster_ip.as_deref(), Some("None"));
        assert_eq!(peers.publish_not_ready_addresses, Some(true));
        let ports: Vec<_> = peers
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.port))
            .collect();
        assert_eq!(ports, [("s3".to_string(), 9000), ("rpc".to_string(), 9100)]);
        assert_eq!(peers.selector.as_ref().unwrap()["ringstore.io/tenant"], "store");

        let s3 = d.s3.spec.as_ref().unwrap();
        assert_eq!(d.s3.metadata.name.as_deref(), Some("store"));
        assert_eq!(s3.type_.as_deref(), Some("LoadBalancer"));
        let port = &s3.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (80, Some(IntOrString::Int(9000)))
        );
        assert_eq!(
            d.s3.metadata.annotations.as_ref().unwrap()["lb.example/internal"],
            "true"
        );

        let pdb = d.pdb.spec.as_ref().unwrap();
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        let d = build(&t, &pools, &[], (4, 0), (4, 0), &BTreeMap::new());
        assert_eq!(d.pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(0)));
        // a redundancy change restarts no server: the template keeps the one formed with
        let before = build(&t, &pools, &[], (2, 2), (2, 2), &BTreeMap::new());
        let after = build(&t, &pools, &[], (4, 2), (2, 2), &BTreeMap::new());
        assert_eq!(before.statefulsets, after.statefulsets);
        // while objects of both are stored, disruptions follow the smaller parity
        let d = build(&t, &pools, &[], (4, 0), (2, 2), &BTreeMap::new());
        assert_eq!(d.pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(0)));
    }

    #[test]
    fn other_tools_labels_are_not_copied() {
        let (t, pools) = fixture();
        let d = build(&t, &pools, &[], (2, 2), (2, 2), &BTreeMap::new());
        let metas = [
            &d.peers.metadata,
            &d.s3.metadata,
            &d.pdb.metadata,
            &d.statefulsets[0].metadata,
        ];
        for m in metas {
            for (k, _) in m.labels.iter().flatten().chain(m.annotations.iter().flatten()) {
                assert!(
                    !k.starts_with("argocd.") && !k.starts_with("helm.sh") && !k.starts_with("kubectl."),
                    "{k} copied onto {:?}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn digest_is_stable_and_tracks_changes() {
        let (t, pools) = fixture();
        let a = build(&t, &pools, &[], (2, 2), (2, 2), &BTreeMap::new());
        let b = build(&t, &pools, &[], (2, 2), (2, 2), &BTreeMap::new());
        assert_eq!(
            recorded_digest(&a.statefulsets[0]),
            recorded_digest(&b.statefulsets[0])
        );
        assert!(recorded_digest(&a.statefulsets[0]).is_some());
        let t2 = t.clone().image("ringstore:2.0");
        let c = build(&t2, &pools, &[], (2, 2), (2, 2), &BTreeMap::new());
        assert_ne!(
            recorded_digest(&a.statefulsets[0]),
            recorded_digest(&c.statefulsets[0])
        );
        assert_eq!(recorded_digest(&a.peers), recorded_digest(&c.peers));
    }

    #[test]
    fn pool_resources_replace_the_tenant_default() {
        let (t, mut pools) = fixture();
        pools[0].spec.resources = Some(serde_yaml::from_str("{requests: {cpu: '2'}}").unwrap());
        let d = build(&t, &pools, &[], (2, 2), (2, 2), &BTreeMap::new());
        let c = &d.statefulsets[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert!(req.contains_key("cpu") && !req.contains_key("memory"));
    }
}
