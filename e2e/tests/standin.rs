//! The kubelet stand-in on its own (no operator, no CRDs): plain StatefulSets of
//! `ringstore` pods on the real control plane. Proves the harness before the operator.
//!
//! Both tests share one control plane (started on first use, see `harness::shared`).

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use ringstore_e2e::harness::{Cluster, Options, pod_ready, shared};

fn cluster() -> Cluster {
    match shared(Options {
        label: "standin".into(),
        crds: false,
        operator: false,
    }) {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    }
}

const SECRET: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData:
  accessKey: e2e-access
  secretKey: e2e-secret-key-0123456789
  clusterSecret: e2e-cluster-secret-0123456789
"#;

fn statefulset(name: &str, replicas: usize, cluster_mode: bool, ns: &str) -> String {
    let mut env = String::from(
        r#"
        - {name: RINGSTORE_NODE_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: RINGSTORE_ADDRESS, value: "0.0.0.0:9000"}
        - {name: RINGSTORE_DATA, value: /data/0}
        - {name: RINGSTORE_SCRUB_INTERVAL, value: "0"}
        - {name: RINGSTORE_ACCESS_KEY, valueFrom: {secretKeyRef: {name: creds, key: accessKey}}}
        - {name: RINGSTORE_SECRET_KEY, valueFrom: {secretKeyRef: {name: creds, key: secretKey}}}"#,
    );
    if cluster_mode {
        let seeds: Vec<String> = (0..replicas)
            .map(|i| format!("{name}-{i}.{name}-peers.{ns}.svc.cluster.local:9100"))
            .collect();
        env.push_str(&format!(
            r#"
        - {{name: RINGSTORE_RPC_ADDRESS, value: "0.0.0.0:9100"}}
        - {{name: RINGSTORE_RPC_ADVERTISE, value: "$(RINGSTORE_NODE_NAME).{name}-peers.{ns}.svc.cluster.local:9100"}}
        - {{name: RINGSTORE_SEEDS, value: "{}"}}
        - {{name: RINGSTORE_REDUNDANCY, value: "2+2"}}
        - {{name: RINGSTORE_CLUSTER_SECRET, valueFrom: {{secretKeyRef: {{name: creds, key: clusterSecret}}}}}}"#,
            seeds.join(",")
        ));
    }
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}-peers}}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {{app.kubernetes.io/name: ringstore, app.kubernetes.io/instance: {name}}}
  ports: [{{name: rpc, port: 9100}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app.kubernetes.io/name: ringstore, app.kubernetes.io/instance: {name}}}
  ports: [{{name: s3, port: 9000}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}}}
spec:
  serviceName: {name}-peers
  replicas: {replicas}
  podManagementPolicy: Parallel
  selector:
    matchLabels: {{app.kubernetes.io/name: ringstore, app.kubernetes.io/instance: {name}}}
  template:
    metadata:
      labels: {{app.kubernetes.io/name: ringstore, app.kubernetes.io/instance: {name}}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: ringstore
        image: ringstore:e2e
        args: [server]
        ports:
        - {{name: s3, containerPort: 9000}}
        - {{name: rpc, containerPort: 9100}}
        env:{env}
        readinessProbe:
          httpGet: {{path: /health/ready, port: s3}}
          periodSeconds: 2
        livenessProbe:
          httpGet: {{path: /health/live, port: 9000}}
          periodSeconds: 5
          failureThreshold: 6
        volumeMounts:
        - {{name: data-0, mountPath: /data/0}}
  volumeClaimTemplates:
  - metadata: {{name: data-0}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 1Gi}}}}
"#
    )
}

async fn wait_ready_replicas(c: &Cluster, client: &kube::Client, ns: &str, name: &str, n: i32) -> Result<()> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    c.wait_for(
        client,
        ns,
        &format!("statefulset {name}: {n} ready"),
        Duration::from_secs(90),
        || async {
            let s = api.get(name).await?;
            Ok((s.status.and_then(|s| s.ready_replicas).unwrap_or(0) == n).then_some(()))
        },
    )
    .await
}

async fn pod_ip(client: &kube::Client, ns: &str, pod: &str) -> Result<String> {
    let p = Api::<Pod>::namespaced(client.clone(), ns).get(pod).await?;
    p.status
        .and_then(|s| s.pod_ip)
        .with_context(|| format!("pod {pod} has no IP"))
}

fn target(ip: &str) -> ringstore_e2e::S3Target {
    ringstore_e2e::S3Target {
        endpoint: format!("http://{ip}:9000"),
        access_key: "e2e-access".into(),
        secret_key: "e2e-secret-key-0123456789".into(),
        pod: String::new(),
    }
}

/// Three independent single-node pods: env resolution, volumes, probes, status,
/// and a deleted pod that comes back on the same IP with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_of_single_nodes() -> Result<()> {
    let c = cluster();
    let client = c.client().await?;
    let ns = c.namespace(&client, "standin-solo").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    c.apply(&client, &ns, SECRET).await?;
    c.apply(&client, &ns, &statefulset("solo", 3, false, &ns)).await?;
    wait_ready_replicas(&c, &client, &ns, "solo", 3).await?;

    let mut ips = vec![];
    for i in 0..3 {
        let ip = pod_ip(&client, &ns, &format!("solo-{i}")).await?;
        assert!(ip.starts_with("127."), "pod IP {ip}");
        ips.push(ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "distinct pod IPs");

    // the pod status looks like a kubelet's
    let p = Api::<Pod>::namespaced(client.clone(), &ns).get("solo-0").await?;
    let st = p.status.context("no status")?;
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    let cs = &st.container_statuses.context("no container statuses")?[0];
    assert!(
        cs.ready && cs.started == Some(true) && cs.restart_count == 0,
        "{cs:?}"
    );
    assert_eq!(cs.image, "ringstore:e2e");
    assert!(
        cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some(),
        "{cs:?}"
    );

    let body = common::bytes(300_000, 7);
    let ip1 = pod_ip(&client, &ns, "solo-1").await?;
    let s3 = common::s3(&target(&ip1));
    common::create_bucket(&s3, "bucket").await?;
    common::put(&s3, "bucket", "object", &body).await?;
    assert_eq!(common::get(&s3, "bucket", "object").await?, body);

    // delete the pod: the StatefulSet re-creates it, the stand-in stops the old process
    // first, and the new one gets the same IP and the same volume
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let old_uid = pods.get("solo-1").await?.metadata.uid;
    pods.delete("solo-1", &DeleteParams::default()).await?;
    c.wait_for(
        &client,
        &ns,
        "solo-1 re-created and ready",
        Duration::from_secs(60),
        || async {
            let p = pods.get("solo-1").await?;
            Ok((p.metadata.uid != old_uid && pod_ready(&p)).then_some(()))
        },
    )
    .await?;
    assert_eq!(
        pod_ip(&client, &ns, "solo-1").await?,
        ip1,
        "same IP after re-creation"
    );
    assert_eq!(common::get(&s3, "bucket", "object").await?, body, "data kept");

    // a process that dies is restarted in place, and the status says so
    let pids = common::ringstore_pids_in(&c.pods_root.join(&ns).join("solo-0"));
    assert_eq!(pids.len(), 1, "one ringstore process for solo-0: {pids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()?;
    assert!(killed.success());
    c.wait_for(
        &client,
        &ns,
        "solo-0 restarted and ready",
        Duration::from_secs(60),
        || async {
            let p = pods.get("solo-0").await?;
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.first())
                .map(|c| c.restart_count)
                .unwrap_or(0);
            Ok((restarts == 1 && pod_ready(&p)).then_some(()))
        },
    )
    .await?;
    let s3_0 = common::s3(&target(&pod_ip(&client, &ns, "solo-0").await?));
    common::create_bucket(&s3_0, "after-restart").await?;
    common::put(&s3_0, "after-restart", "k", b"hello").await?;
    assert_eq!(common::get(&s3_0, "after-restart", "k").await?, b"hello");

    let out = c.kubectl(&["get", "pods", "-n", &ns, "-o", "wide"]).await?;
    eprintln!("{out}");
    Ok(())
}

/// Four pods forming one cluster through pod DNS names (what the operator builds):
/// $(VAR) expansion in env, DNS stand-in, RPC between pods, EC 2+2 across pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_cluster_of_four() -> Result<()> {
    let c = cluster();
    let client = c.client().await?;
    let ns = c.namespace(&client, "standin-cluster").await?;
    let _cleanup = c.cleanup_on_drop(&ns);
    c.apply(&client, &ns, SECRET).await?;
    let started = std::time::Instant::now();
    c.apply(&client, &ns, &statefulset("ring", 4, true, &ns)).await?;
    wait_ready_replicas(&c, &client, &ns, "ring", 4).await?;
    eprintln!(
        "[ringstore-e2e] 4-node cluster ready {:.1} s after apply",
        started.elapsed().as_secs_f64()
    );
    let body = common::bytes(1_000_000, 3);
    let s3a = common::s3(&target(&pod_ip(&client, &ns, "ring-0").await?));
    let s3b = common::s3(&target(&pod_ip(&client, &ns, "ring-3").await?));
    common::create_bucket(&s3a, "shared").await?;
    common::put(&s3a, "shared", "k", &body).await?;
    let got = common::get_eventually(&s3b, "shared", "k", Duration::from_secs(20)).await?;
    assert_eq!(got, body, "object written on ring-0 read through ring-3");
    Ok(())
}
