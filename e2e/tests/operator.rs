//! Operator scenarios against a real control plane (issue 4).
//!
//! One control plane, kubelet stand-in and operator serve every test of this binary
//! (started on first use by `harness::shared`); each scenario runs in its own namespace,
//! one scenario at a time (a semaphore), so timings are not skewed by each other.
//!
//! Needs: the control-plane binaries (built by `e2e/controlplane/build.sh` when missing),
//! `target/debug/ringstore` and `target/debug/ringstore-operator` (`cargo build -p
//! ringstore-server -p ringstore-operator`), and `crds/*.yaml`; a missing piece fails the scenarios.
//!
//! Environment: `RINGSTORE_E2E_QUIET_SECONDS` (default 60) is the length of the quiet
//! period whose API writes are counted; `RINGSTORE_E2E_READY_BUDGET_SECONDS`, when set,
//! fails the 4-server scenario if the Tenant takes longer to become Ready.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use ringstore_e2e::harness::{
    Cluster, Options, crd_files, pod_ready, pool_resource, shared, tenant_pods, tenant_resource,
};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

const IMAGE: &str = "ringstore:e2e-1";
const NEW_IMAGE: &str = "ringstore:e2e-2";

static SERIAL: Semaphore = Semaphore::const_new(1);

/// The shared environment and this scenario's turn; `None` (skip) when the CRDs are not
/// generated yet.
async fn setup(scenario: &str) -> Option<(Cluster, SemaphorePermit<'static>)> {
    assert!(
        !crd_files().is_empty(),
        "{scenario}: crds/*.yaml are missing (generate them: make generate)"
    );
    let permit = SERIAL.acquire().await.expect("semaphore");
    let cluster = tokio::task::spawn_blocking(|| {
        shared(Options {
            label: "operator".into(),
            crds: true,
            operator: true,
        })
    })
    .await
    .expect("environment thread");
    match cluster {
        Ok(c) => {
            eprintln!("===== scenario {scenario}");
            Some((c, permit))
        }
        Err(e) => panic!("{e:#}"),
    }
}

fn tenant_yaml(name: &str, image: &str) -> String {
    format!(
        "apiVersion: ringstore.io/v1alpha1
kind: Tenant
metadata: {{name: {name}}}
spec:
  image: {image}
  redundancy: {{data: 2, parity: 2}}
"
    )
}

fn pool_yaml(tenant: &str, pool: &str, servers: u32, volumes: u32, zone: &str) -> String {
    format!(
        "apiVersion: ringstore.io/v1alpha1
kind: Pool
metadata: {{name: {pool}}}
spec:
  tenant: {tenant}
  servers: {servers}
  volumesPerServer: {volumes}
  volumeSize: 1Gi
  zone: {zone}
"
    )
}

/// Applies a Tenant with one Pool `main` of 4 servers and waits for Ready; returns the
/// seconds it took.
async fn tenant_with_four_servers(c: &Cluster, client: &kube::Client, ns: &str, name: &str) -> Result<f64> {
    let started = Instant::now();
    c.apply(client, ns, &tenant_yaml(name, IMAGE)).await?;
    c.apply(client, ns, &pool_yaml(name, "main", 4, 1, "zone-a"))
        .await?;
    c.wait_tenant_ready(client, ns, name, Duration::from_secs(120))
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn put_objects(
    c: &Cluster,
    client: &kube::Client,
    ns: &str,
    tenant: &str,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let target = c.s3_target(client, ns, tenant).await?;
    let s3 = common::s3(&target);
    common::create_bucket(&s3, "e2e").await?;
    let mut objects = BTreeMap::new();
    for (i, len) in [0usize, 1, 4096, 1 << 20, 5 << 20].into_iter().enumerate() {
        let key = format!("object-{i}");
        let body = common::bytes(len, i as u8);
        common::put(&s3, "e2e", &key, &body).await?;
        objects.insert(key, body);
    }
    eprintln!(
        "[ringstore-e2e] {ns}: wrote {} objects through pod {}",
        objects.len(),
        target.pod
    );
    Ok(objects)
}

/// The Tenant's `Progressing` condition as it changes during a scenario, each change printed
/// with the seconds since the log began.
struct ProgressLog {
    started: Instant,
    seen: std::sync::Mutex<Vec<String>>,
}

impl ProgressLog {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            seen: Default::default(),
        }
    }

    /// Notes the Tenant's `Progressing` reason and message (`"reason": "message"`).
    fn note(&self, tenant: &Value) -> String {
        let reason = tenant["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing").cloned())
            .map(|c| format!("{}: {}", c["reason"], c["message"]))
            .unwrap_or_default();
        let mut seen = self.seen.lock().expect("not poisoned");
        if seen.last() != Some(&reason) {
            eprintln!(
                "[ringstore-e2e] {:.1} s: Progressing {reason}",
                self.started.elapsed().as_secs_f64()
            );
            seen.push(reason.clone());
        }
        reason
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

/// Reads every object back through every ready pod.
async fn check_objects(
    c: &Cluster,
    client: &kube::Client,
    ns: &str,
    tenant: &str,
    objects: &BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    let base = c.s3_target(client, ns, tenant).await?;
    let pods = tenant_pods(client, ns, tenant).await?;
    for p in pods.iter().filter(|p| pod_ready(p)) {
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .context("no pod IP")?;
        let mut target = base.clone();
        target.endpoint = format!("http://{ip}:9000");
        let s3 = common::s3(&target);
        for (key, body) in objects {
            let got = common::get_eventually(&s3, "e2e", key, Duration::from_secs(30)).await?;
            ensure!(
                &got == body,
                "{key} read through {} differs ({} bytes, expected {})",
                p.metadata.name.clone().unwrap_or_default(),
                got.len(),
                body.len()
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_are_accepted_and_documented() -> Result<()> {
    let Some((c, _turn)) = setup("crds_are_accepted_and_documented").await else {
        return Ok(());
    };
    let client = c.client().await?;
    // the environment applied crds/*.yaml and waited for Established; both kinds are served
    for ar in [tenant_resource(), pool_resource()] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        api.list(&ListParams::default())
            .await
            .with_context(|| format!("listing {}", ar.plural))?;
    }
    let explain = c.kubectl(&["explain", "tenant.spec"]).await?;
    eprintln!("{explain}");
    for field in ["image", "redundancy", "DESCRIPTION"] {
        ensure!(
            explain.contains(field),
            "kubectl explain tenant.spec lacks {field}:\n{explain}"
        );
    }
    let explain = c.kubectl(&["explain", "pool.spec"]).await?;
    for field in ["tenant", "servers", "volumesPerServer", "volumeSize"] {
        ensure!(
            explain.contains(field),
            "kubectl explain pool.spec lacks {field}:\n{explain}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_servers_become_ready_and_serve_s3() -> Result<()> {
    let Some((c, _turn)) = setup("four_servers_become_ready_and_serve_s3").await else {
        return Ok(());
    };
    let client = c.client().await?;
    let ns = c.namespace(&client, "ready").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    let seconds = tenant_with_four_servers(&c, &client, &ns, "t").await?;
    eprintln!("[ringstore-e2e] RESULT time from apply to Ready (4 servers): {seconds:.1} s (target < 30 s)");
    if let Some(budget) = std::env::var("RINGSTORE_E2E_READY_BUDGET_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        ensure!(seconds <= budget, "Ready after {seconds:.1} s, budget {budget} s");
    }
    let tenant = c.tenant(&client, &ns, "t").await?;
    eprintln!(
        "[ringstore-e2e] tenant status: {}",
        serde_json::to_string_pretty(&tenant["status"])?
    );
    // the children the contract names
    Api::<Secret>::namespaced(client.clone(), &ns)
        .get("t-credentials")
        .await?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .get("t-cluster")
        .await?;
    Api::<Service>::namespaced(client.clone(), &ns).get("t").await?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .get("t-peers")
        .await?;
    Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get("t-main")
        .await?;
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .get("t")
        .await?;
    ensure!(
        tenant["status"]["layoutVersion"].as_u64().unwrap_or(0) >= 1,
        "no layoutVersion in {}",
        tenant["status"]
    );
    let pools = tenant["status"]["pools"].as_array().cloned().unwrap_or_default();
    ensure!(
        pools
            .iter()
            .any(|p| p["name"] == "main" && p["readyServers"] == 4 && p["servers"] == 4),
        "status.pools: {pools:?}"
    );
    let objects = put_objects(&c, &client, &ns, "t").await?;
    check_objects(&c, &client, &ns, "t", &objects).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_pool_grows_the_layout() -> Result<()> {
    let Some((c, _turn)) = setup("second_pool_grows_the_layout").await else {
        return Ok(());
    };
    let client = c.client().await?;
    let ns = c.namespace(&client, "grow").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    tenant_with_four_servers(&c, &client, &ns, "t").await?;
    let before = c.tenant(&client, &ns, "t").await?["status"]["layoutVersion"]
        .as_u64()
        .context("no layoutVersion")?;
    // written under the first layout: must stay readable once the layout grows
    let written_before = put_objects(&c, &client, &ns, "t").await?;
    let started = Instant::now();
    c.apply(&client, &ns, &pool_yaml("t", "east", 4, 2, "zone-b"))
        .await?;
    let t = c
        .wait_for(
            &client,
            &ns,
            "layoutVersion grows and tenant Ready with 8 servers",
            Duration::from_secs(180),
            || async {
                let t = c.tenant(&client, &ns, "t").await?;
                let version = t["status"]["layoutVersion"].as_u64().unwrap_or(0);
                let pools = t["status"]["pools"].as_array().cloned().unwrap_or_default();
                let east_ready = pools
                    .iter()
                    .any(|p| p["name"] == "east" && p["readyServers"] == 4);
                Ok((version > before && east_ready && Cluster::tenant_is_ready(&t)).then_some(t))
            },
        )
        .await?;
    eprintln!(
        "[ringstore-e2e] RESULT layout version {before} -> {} in {:.1} s after adding a pool; status {}",
        t["status"]["layoutVersion"],
        started.elapsed().as_secs_f64(),
        serde_json::to_string_pretty(&t["status"])?
    );
    Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get("t-east")
        .await?;
    let events = tenant_events(&client, &ns, "t").await?;
    ensure!(
        events
            .iter()
            .any(|(reason, note)| reason == "LayoutApplied" && note.contains("8 servers")),
        "no LayoutApplied Event for the grown layout: {events:?}"
    );
    eprintln!("[ringstore-e2e] RESULT Events about the Tenant: {events:?}");
    check_objects(&c, &client, &ns, "t", &written_before)
        .await
        .context("objects written before the pool was added")?;
    let objects = put_objects(&c, &client, &ns, "t").await?;
    check_objects(&c, &client, &ns, "t", &objects).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pod_comes_back_with_its_data() -> Result<()> {
    let Some((c, _turn)) = setup("deleted_pod_comes_back_with_its_data").await else {
        return Ok(());
    };
    let client = c.client().await?;
    let ns = c.namespace(&client, "podloss").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    tenant_with_four_servers(&c, &client, &ns, "t").await?;
    let objects = put_objects(&c, &client, &ns, "t").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let victim = "t-main-2";
    let old = pods.get(victim).await?;
    let old_ip = old.status.as_ref().and_then(|s| s.pod_ip.clone());
    let started = Instant::now();
    pods.delete(victim, &DeleteParams::default()).await?;
    c.wait_for(
        &client,
        &ns,
        "pod re-created and ready",
        Duration::from_secs(60),
        || async {
            let p = pods.get(victim).await?;
            Ok((p.metadata.uid != old.metadata.uid && pod_ready(&p)).then_some(()))
        },
    )
    .await?;
    c.wait_tenant_ready(&client, &ns, "t", Duration::from_secs(60))
        .await?;
    eprintln!(
        "[ringstore-e2e] RESULT {victim} back and tenant Ready {:.1} s after the delete",
        started.elapsed().as_secs_f64()
    );
    let new_ip = pods.get(victim).await?.status.and_then(|s| s.pod_ip);
    ensure!(new_ip == old_ip, "pod IP changed: {old_ip:?} -> {new_ip:?}");
    check_objects(&c, &client, &ns, "t", &objects).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tenant_is_refused_with_a_message() -> Result<()> {
    let Some((c, _turn)) = setup("invalid_tenant_is_refused_with_a_message").await else {
        return Ok(());
    };
    let client = c.client().await?;
    let ns = c.namespace(&client, "invalid").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    let cases = [
        (
            "both data/parity and replicas",
            "apiVersion: ringstore.io/v1alpha1\nkind: Tenant\nmetadata: {name: bad}\nspec:\n  image: x\n  redundancy: {data: 2, parity: 2, replicas: 3}\n",
            "set either data and parity, or replicas",
        ),
        (
            "data shards below the minimum",
            "apiVersion: ringstore.io/v1alpha1\nkind: Tenant\nmetadata: {name: bad}\nspec:\n  image: x\n  redundancy: {data: 0, parity: 2}\n",
            "spec.redundancy.data",
        ),
        (
            "no image",
            "apiVersion: ringstore.io/v1alpha1\nkind: Tenant\nmetadata: {name: bad}\nspec:\n  redundancy: {data: 2, parity: 2}\n",
            "spec.image",
        ),
    ];
    for (what, yaml, expected) in cases {
        let err = match c.apply(&client, &ns, yaml).await {
            Ok(_) => bail!("a Tenant with {what} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        eprintln!("[ringstore-e2e] {what}: refused: {err}");
        ensure!(err.contains(expected), "{what}: expected {expected:?} in: {err}");
        // and what a person sees with kubectl
        let file = c.dir.join("invalid-tenant.yaml");
        std::fs::write(&file, yaml)?;
        let out = c
            .kubectl(&["apply", "-n", &ns, "-f", &file.to_string_lossy()])
            .await;
        match out {
            Ok(o) => bail!("kubectl apply accepted a Tenant with {what}: {o}"),
            Err(e) => ensure!(format!("{e:#}").contains(expected), "kubectl: {e:#}"),
        }
    }
    // an update that breaks an immutability rule
    c.apply(&client, &ns, &tenant_yaml("t", IMAGE)).await?;
    let patch = json!({"apiVersion": "ringstore.io/v1alpha1", "kind": "Tenant", "metadata": {"name": "t"},
        "spec": {"image": IMAGE, "redundancy": {"data": 2, "parity": 2}, "credentialsSecret": "other"}});
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &tenant_resource());
    match api
        .patch(
            "t",
            &PatchParams::apply("ringstore-e2e").force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => bail!("changing credentialsSecret was accepted"),
        Err(e) => {
            eprintln!("[ringstore-e2e] credentialsSecret change refused: {e}");
            ensure!(
                e.to_string().contains("credentialsSecret cannot be changed"),
                "{e}"
            );
        }
    }
    Ok(())
}

/// Changing a Tenant's redundancy (2+2 to 3+1 on four servers) re-encodes its data through
/// the admin API: the Tenant shows the change in its conditions and Events, no pod
/// restarts, and every object written before reads back through every pod afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redundancy_change_re_encodes_without_restarting_pods() -> Result<()> {
    let Some((c, _turn)) = setup("redundancy_change_re_encodes_without_restarting_pods").await else {
        return Ok(());
    };
    let client = c.client().await?;
    let ns = c.namespace(&client, "reencode").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    tenant_with_four_servers(&c, &client, &ns, "t").await?;
    let objects = put_objects(&c, &client, &ns, "t").await?;
    let uids = |pods: Vec<Pod>| -> BTreeMap<String, String> {
        pods.into_iter()
            .map(|p| {
                (
                    p.metadata.name.unwrap_or_default(),
                    p.metadata.uid.unwrap_or_default(),
                )
            })
            .collect()
    };
    let before = uids(tenant_pods(&client, &ns, "t").await?);
    let version = c.tenant(&client, &ns, "t").await?["status"]["layoutVersion"]
        .as_u64()
        .context("no layoutVersion")?;
    let started = Instant::now();
    c.apply(
        &client,
        &ns,
        &tenant_yaml("t", IMAGE).replace("{data: 2, parity: 2}", "{data: 3, parity: 1}"),
    )
    .await?;
    let progress = ProgressLog::new();
    let t = c
        .wait_for(
            &client,
            &ns,
            "a new layout, re-encoded, and the Tenant Ready",
            Duration::from_secs(180),
            || async {
                let t = c.tenant(&client, &ns, "t").await?;
                let reason = progress.note(&t);
                let grown = t["status"]["layoutVersion"].as_u64().unwrap_or(0) > version;
                let settled = !reason.contains("Reencoding") && !reason.contains("LayoutChange");
                let redundancy = t["status"]["redundancy"] == "3+1";
                Ok((grown && redundancy && settled && Cluster::tenant_is_ready(&t)).then_some(t))
            },
        )
        .await?;
    eprintln!(
        "[ringstore-e2e] RESULT redundancy 2+2 -> 3+1: layout {version} -> {} in {:.1} s",
        t["status"]["layoutVersion"],
        started.elapsed().as_secs_f64()
    );
    let events = tenant_events(&client, &ns, "t").await?;
    ensure!(
        events
            .iter()
            .any(|(reason, note)| reason == "LayoutApplied" && note.contains("redundancy 3+1")),
        "no LayoutApplied Event for the new redundancy: {events:?}"
    );
    ensure!(
        t["status"]["initialRedundancy"] == "2+2",
        "initialRedundancy: {}",
        t["status"]["initialRedundancy"]
    );
    let after = uids(tenant_pods(&client, &ns, "t").await?);
    ensure!(before == after, "pods were restarted: {before:?} -> {after:?}");
    check_objects(&c, &client, &ns, "t", &objects)
        .await
        .context("objects written before the redundancy change")?;
    Ok(())
}

/// A pool shrinks (3 servers to 2), then another is deleted: each time the servers that
/// leave are drained first (the layout drops them and their data moves), and only then do
/// their pods, StatefulSet, volumes and finally the deleted Pool go. Objects written before
/// read back through every pod that stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_shrink_and_are_decommissioned_once_their_data_has_moved() -> Result<()> {
    let Some((c, _turn)) = setup("pools_shrink_and_are_decommissioned_once_their_data_has_moved").await
    else {
        return Ok(());
    };
    let client = c.client().await?;
    let ns = c.namespace(&client, "shrink").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    c.apply(&client, &ns, &tenant_yaml("t", IMAGE)).await?;
    c.apply(&client, &ns, &pool_yaml("t", "main", 4, 1, "zone-a"))
        .await?;
    c.apply(&client, &ns, &pool_yaml("t", "east", 3, 1, "zone-b"))
        .await?;
    let t = c
        .wait_for(
            &client,
            &ns,
            "tenant Ready with 7 servers",
            Duration::from_secs(180),
            || async {
                let t = c.tenant(&client, &ns, "t").await?;
                Ok((Cluster::tenant_is_ready(&t) && t["status"]["servers"] == 7).then_some(t))
            },
        )
        .await?;
    eprintln!(
        "[ringstore-e2e] {ns}: Ready with 7 servers: {}",
        serde_json::to_string(&t["status"])?
    );
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &pool_resource());
    let east = pools.get("east").await?;
    ensure!(
        east.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "ringstore.io/drain"),
        "Pool east has no drain finalizer: {:?}",
        east.metadata.finalizers
    );
    let mut objects = put_objects(&c, &client, &ns, "t").await?;
    // enough objects that t-east-2 surely holds shards of some (each 2+2 object misses a
    // given server of seven with odds 3/7)
    let s3 = common::s3(&c.s3_target(&client, &ns, "t").await?);
    for i in 0..30u8 {
        let (key, body) = (format!("small-{i}"), common::bytes(10_000 + usize::from(i), i));
        common::put(&s3, "e2e", &key, &body).await?;
        objects.insert(key, body);
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let claim_names = |pool: &'static str| {
        let claims = claims.clone();
        async move {
            let list = claims
                .list(&ListParams::default().labels(&format!("ringstore.io/pool={pool}")))
                .await?;
            anyhow::Ok(
                list.items
                    .into_iter()
                    .filter_map(|c| c.metadata.name)
                    .collect::<Vec<String>>(),
            )
        }
    };
    ensure!(
        claim_names("east")
            .await?
            .contains(&"data-0-t-east-2".to_string()),
        "no volume for t-east-2"
    );

    // shrink east from 3 servers to 2
    let progress = ProgressLog::new();
    let started = Instant::now();
    c.apply(&client, &ns, &pool_yaml("t", "east", 2, 1, "zone-b"))
        .await?;
    let stss: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    c.wait_for(
        &client,
        &ns,
        "t-east-2 drained and removed with its volume, the Tenant Ready with 6 servers",
        Duration::from_secs(240),
        || async {
            let t = c.tenant(&client, &ns, "t").await?;
            progress.note(&t);
            let replicas = stss
                .get("t-east")
                .await?
                .spec
                .and_then(|s| s.replicas)
                .unwrap_or(0);
            let pods = tenant_pods(&client, &ns, "t").await?;
            let pod_gone = !pods
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some("t-east-2"));
            let claim_gone = !claim_names("east")
                .await?
                .contains(&"data-0-t-east-2".to_string());
            Ok((replicas == 2
                && pod_gone
                && claim_gone
                && t["status"]["servers"] == 6
                && Cluster::tenant_is_ready(&t))
            .then_some(()))
        },
    )
    .await?;
    let t = c.tenant(&client, &ns, "t").await?;
    let transition = &t["status"]["transition"];
    eprintln!(
        "[ringstore-e2e] RESULT pool east 3 -> 2 servers: drained and removed in {:.1} s; transition {transition}",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        transition["kind"] == "drain"
            && transition["phase"] == "finished"
            && transition["objectsMoved"].as_u64().unwrap_or(0) > 0,
        "the status does not show a finished drain that moved objects: {transition}"
    );
    let seen = progress.seen();
    ensure!(
        seen.iter().any(|r| r.contains("Draining")),
        "the Tenant never showed Progressing Draining: {seen:?}"
    );
    check_objects(&c, &client, &ns, "t", &objects)
        .await
        .context("objects written before the shrink")?;

    // delete the pool east: it is drained, then its StatefulSet, volumes and the Pool go
    let started = Instant::now();
    pools.delete("east", &DeleteParams::default()).await?;
    c.wait_for(
        &client,
        &ns,
        "pool east drained, its StatefulSet, volumes and Pool gone, the Tenant Ready with 4 servers",
        Duration::from_secs(240),
        || async {
            let t = c.tenant(&client, &ns, "t").await?;
            progress.note(&t);
            let pool_gone = pools.get_opt("east").await?.is_none();
            let sts_gone = stss.get_opt("t-east").await?.is_none();
            let claims_gone = claim_names("east").await?.is_empty();
            Ok((pool_gone
                && sts_gone
                && claims_gone
                && t["status"]["servers"] == 4
                && Cluster::tenant_is_ready(&t))
            .then_some(()))
        },
    )
    .await?;
    eprintln!(
        "[ringstore-e2e] RESULT pool east deleted: drained and gone in {:.1} s; Progressing reasons seen {:?}",
        started.elapsed().as_secs_f64(),
        progress.seen()
    );
    let events = tenant_events(&client, &ns, "t").await?;
    for reason in ["ServersRemoved", "PoolDrained", "TransitionFinished"] {
        ensure!(
            events.iter().any(|(r, _)| r == reason),
            "no {reason} Event: {events:?}"
        );
    }
    check_objects(&c, &client, &ns, "t", &objects)
        .await
        .context("objects written before the pool was decommissioned")?;
    let more = put_objects(&c, &client, &ns, "t").await?;
    check_objects(&c, &client, &ns, "t", &more).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_change_rolls_pods_one_at_a_time() -> Result<()> {
    let Some((c, _turn)) = setup("image_change_rolls_pods_one_at_a_time").await else {
        return Ok(());
    };
    let client = c.client().await?;
    let ns = c.namespace(&client, "upgrade").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    tenant_with_four_servers(&c, &client, &ns, "t").await?;
    let objects = put_objects(&c, &client, &ns, "t").await?;
    let before: HashMap<String, String> = tenant_pods(&client, &ns, "t")
        .await?
        .into_iter()
        .map(|p| {
            (
                p.metadata.name.unwrap_or_default(),
                p.metadata.uid.unwrap_or_default(),
            )
        })
        .collect();
    ensure!(before.len() == 4, "pods before: {before:?}");

    let started = Instant::now();
    c.apply(&client, &ns, &tenant_yaml("t", NEW_IMAGE)).await?;
    // sample pods and status until every pod runs the new image and the tenant is Ready
    let mut most_unready = 0;
    let mut replaced_order: Vec<String> = vec![];
    let mut seen_upgrading = false;
    let mut status_samples: Vec<String> = vec![];
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pods = tenant_pods(&client, &ns, "t").await?;
        let unready = 4 - pods
            .iter()
            .filter(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none())
            .count();
        most_unready = most_unready.max(unready);
        for p in &pods {
            let name = p.metadata.name.clone().unwrap_or_default();
            if before.get(&name) != p.metadata.uid.as_ref() && !replaced_order.contains(&name) {
                replaced_order.push(name);
            }
        }
        let t = c.tenant(&client, &ns, "t").await?;
        let progressing = t["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing").cloned())
            .unwrap_or(Value::Null);
        let sample = format!(
            "phase={} progressing={}/{} {} upgrade={}",
            t["status"]["phase"],
            progressing["status"],
            progressing["reason"],
            progressing["message"],
            t["status"]["upgrade"]
        );
        if status_samples.last() != Some(&sample) {
            eprintln!(
                "[ringstore-e2e] {:.1} s: {sample} unready={unready}",
                started.elapsed().as_secs_f64()
            );
            status_samples.push(sample);
        }
        if progressing["reason"] == "RollingUpgrade" || t["status"]["phase"] == "Upgrading" {
            seen_upgrading = true;
        }
        let all_new = pods.len() == 4
            && pods.iter().all(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.as_deref())
                    == Some(NEW_IMAGE)
            });
        if all_new && Cluster::tenant_is_ready(&t) && unready == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "upgrade not finished after 300 s; replaced so far {replaced_order:?}\n{}",
                c.diagnostics(&client, &ns).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "[ringstore-e2e] RESULT rolling upgrade of 4 servers took {:.1} s; order {replaced_order:?}; at most {most_unready} pod(s) unready at once",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        replaced_order.len() == 4,
        "not every pod was re-created: {replaced_order:?}"
    );
    ensure!(
        most_unready <= 1,
        "{most_unready} pods were unready at the same time"
    );
    ensure!(
        seen_upgrading,
        "status never reported the upgrade: {status_samples:#?}"
    );
    let restarts: Vec<String> = tenant_events(&client, &ns, "t")
        .await?
        .into_iter()
        .filter(|(reason, _)| reason == "RollingUpgrade")
        .map(|(_, note)| note)
        .collect();
    ensure!(
        restarts.len() == 4,
        "one RollingUpgrade Event per restarted pod expected: {restarts:?}"
    );
    // Ready: the last restarted node's peers may still count it offline for a probe or two
    // after it came back (seen once in a loaded run: Ready, then ClusterDegraded briefly)
    c.wait_tenant_ready(&client, &ns, "t", Duration::from_secs(60))
        .await?;
    check_objects(&c, &client, &ns, "t", &objects).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_tenant_collects_its_children() -> Result<()> {
    let Some((c, _turn)) = setup("deleting_the_tenant_collects_its_children").await else {
        return Ok(());
    };
    let client = c.client().await?;
    let ns = c.namespace(&client, "gc").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    tenant_with_four_servers(&c, &client, &ns, "t").await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &tenant_resource());
    let started = Instant::now();
    api.delete("t", &DeleteParams::default()).await?;
    let remaining = c
        .wait_for(
            &client,
            &ns,
            "the tenant's children are gone",
            Duration::from_secs(90),
            || async {
                let mut left = vec![];
                let list = ListParams::default();
                for s in Api::<StatefulSet>::namespaced(client.clone(), &ns)
                    .list(&list)
                    .await?
                {
                    left.push(format!("statefulset/{}", s.metadata.name.unwrap_or_default()));
                }
                for s in Api::<Service>::namespaced(client.clone(), &ns)
                    .list(&list)
                    .await?
                {
                    left.push(format!("service/{}", s.metadata.name.unwrap_or_default()));
                }
                for s in Api::<Secret>::namespaced(client.clone(), &ns).list(&list).await? {
                    let name = s.metadata.name.unwrap_or_default();
                    if name.starts_with("t-") {
                        left.push(format!("secret/{name}"));
                    }
                }
                for s in Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
                    .list(&list)
                    .await?
                {
                    left.push(format!("pdb/{}", s.metadata.name.unwrap_or_default()));
                }
                for p in Api::<Pod>::namespaced(client.clone(), &ns).list(&list).await? {
                    left.push(format!("pod/{}", p.metadata.name.unwrap_or_default()));
                }
                if api.get_opt("t").await?.is_some() {
                    left.push("tenant/t".into());
                }
                Ok(left.is_empty().then_some(left))
            },
        )
        .await?;
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &pool_resource());
    let pools_left: Vec<String> = pools
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    eprintln!(
        "[ringstore-e2e] RESULT tenant and children gone {:.1} s after delete ({remaining:?} left); pools left: {pools_left:?}",
        started.elapsed().as_secs_f64()
    );
    // a Pool of a Tenant that is gone holds nothing to drain: its finalizer is released
    pools.delete("main", &DeleteParams::default()).await?;
    c.wait_for(
        &client,
        &ns,
        "the Pool of the deleted Tenant gone",
        Duration::from_secs(60),
        || async { Ok(pools.get_opt("main").await?.is_none().then_some(())) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_tenant_makes_few_api_writes() -> Result<()> {
    let Some((c, _turn)) = setup("quiet_tenant_makes_few_api_writes").await else {
        return Ok(());
    };
    let client = c.client().await?;
    let ns = c.namespace(&client, "quiet").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    tenant_with_four_servers(&c, &client, &ns, "t").await?;
    // let the Ready transition settle
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seconds: u64 = std::env::var("RINGSTORE_E2E_QUIET_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mark = c.audit_mark();
    eprintln!("[ringstore-e2e] counting API writes for {seconds} s of quiet");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let writes = c.writes_since(mark, None)?;
    // writes about this scenario's namespace, by user (other scenarios' namespaces may
    // still be terminating meanwhile)
    let mut by_user: BTreeMap<String, usize> = BTreeMap::new();
    for w in writes.iter().filter(|w| w.namespace == ns) {
        *by_user.entry(w.user.clone()).or_default() += 1;
    }
    // this tenant's namespace, plus the operator's cluster-wide writes (its Lease)
    let operator: Vec<_> = writes
        .iter()
        .filter(|w| w.user == "ringstore-operator" && (w.namespace == ns || w.resource == "leases"))
        .collect();
    for w in &operator {
        eprintln!("[ringstore-e2e]   {w}");
    }
    let per_minute = operator.len() as f64 * 60.0 / seconds as f64;
    let leases = operator.iter().filter(|w| w.resource == "leases").count();
    eprintln!(
        "[ringstore-e2e] RESULT API writes during {seconds} s of quiet: operator {} ({per_minute:.1}/min; {leases} of them leader-election lease renewals); writes in the namespace by user: {by_user:?}",
        operator.len()
    );
    let t = c.tenant(&client, &ns, "t").await?;
    ensure!(
        Cluster::tenant_is_ready(&t),
        "tenant not Ready after the quiet period"
    );
    Ok(())
}

/// A generated Secret deleted under a running cluster is not regenerated with new keys (the
/// servers run with the old ones): the Tenant says so, and recreating it heals the Tenant.
#[tokio::test]
async fn deleted_secret_is_not_regenerated_under_running_servers() -> Result<()> {
    let Some((c, _turn)) = setup("deleted_secret_is_not_regenerated_under_running_servers").await else {
        return Ok(());
    };
    let client = c.client().await?;
    let ns = c.namespace(&client, "secretloss").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    tenant_with_four_servers(&c, &client, &ns, "t").await?;
    let objects = put_objects(&c, &client, &ns, "t").await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let saved = secrets.get("t-credentials").await?;
    secrets.delete("t-credentials", &DeleteParams::default()).await?;
    let started = Instant::now();
    let t = c
        .wait_for(
            &client,
            &ns,
            "the Tenant reports the deleted Secret",
            Duration::from_secs(90),
            || async {
                let t = c.tenant(&client, &ns, "t").await?;
                let reported = t["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "SecretDeleted"));
                Ok(reported.then_some(t))
            },
        )
        .await?;
    let message = t["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["reason"] == "SecretDeleted"))
        .map(|c| c["message"].to_string())
        .unwrap_or_default();
    eprintln!(
        "[ringstore-e2e] RESULT deleted credentials reported after {:.1} s: {message}",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        message.contains("t-credentials"),
        "the message names the Secret: {message}"
    );
    ensure!(
        secrets.get_opt("t-credentials").await?.is_none(),
        "no new keys were generated"
    );
    let mut again = Secret {
        data: saved.data.clone(),
        ..Default::default()
    };
    again.metadata.name = Some("t-credentials".into());
    secrets.create(&Default::default(), &again).await?;
    c.wait_tenant_ready(&client, &ns, "t", Duration::from_secs(90))
        .await?;
    check_objects(&c, &client, &ns, "t", &objects).await?;
    Ok(())
}

/// `(reason, note)` of the Events the operator published about Tenant `name`.
async fn tenant_events(client: &kube::Client, ns: &str, name: &str) -> Result<Vec<(String, String)>> {
    use k8s_openapi::api::events::v1::Event;
    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| {
            e.reporting_controller.as_deref() == Some("ringstore-operator")
                && e.regarding
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some("Tenant") && r.name.as_deref() == Some(name))
        })
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}
