//! The environment the scenarios run in: control plane, CRDs, kubelet stand-in and
//! operator, plus helpers (apply YAML, wait with diagnostics, S3 endpoints, kubectl,
//! audit-log write counts).
//!
//! [`Env`] owns the processes; [`Cluster`] is a cheap handle (paths only) that any tokio
//! runtime can use, so several `#[tokio::test]`s can share one [`Env`] started by
//! [`shared`] on a runtime of its own.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::discovery::Scope;
use serde_json::{Value, json};

use crate::controlplane::{ControlPlane, OPERATOR_USER, client_for, control_plane_bin};
use crate::kubelet::{self, StandIn};
use crate::process::{Proc, tail};

/// What to start.
#[derive(Clone, Debug)]
pub struct Options {
    /// Names the work folder `<target>/e2e/<label>` (logs and data of the last run stay there).
    pub label: String,
    /// Apply `crds/*.yaml` (fails when there are none).
    pub crds: bool,
    /// Start `ringstore-operator` (implies `crds`).
    pub operator: bool,
}

/// Where the ringstore group's API lives.
pub const GROUP: &str = "ringstore.io";
pub const VERSION: &str = "v1alpha1";

pub fn tenant_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, "Tenant"), "tenants")
}

pub fn pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, "Pool"), "pools")
}

/// The cargo profile folder this binary runs from (`target/debug`).
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable without a folder")?.to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The repository root (this crate is `e2e/` in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `crds/*.yaml`, sorted.
pub fn crd_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("crds"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn binary(env_var: &str, name: &str, build_hint: &str) -> Result<PathBuf> {
    let path = match std::env::var(env_var) {
        Ok(p) => PathBuf::from(p),
        Err(_) => profile_dir()?.join(name),
    };
    if !path.is_file() {
        bail!(
            "{} not found (set {env_var} or build it: {build_hint})",
            path.display()
        );
    }
    Ok(path)
}

/// The `ringstore` node binary (`RINGSTORE_BIN` overrides).
pub fn ringstore_binary() -> Result<PathBuf> {
    binary("RINGSTORE_BIN", "ringstore", "cargo build -p ringstore-server")
}

/// The operator binary (`RINGSTORE_OPERATOR_BIN` overrides).
pub fn operator_binary() -> Result<PathBuf> {
    binary(
        "RINGSTORE_OPERATOR_BIN",
        "ringstore-operator",
        "cargo build -p ringstore-operator",
    )
}

/// A fresh work folder `<target>/e2e/<label>` (`RINGSTORE_E2E_WORKDIR` overrides the
/// parent). The previous run's folder is removed unless its process still runs.
fn work_dir(label: &str) -> Result<PathBuf> {
    let parent = match std::env::var("RINGSTORE_E2E_WORKDIR") {
        Ok(p) => PathBuf::from(p),
        Err(_) => profile_dir()?.parent().context("no target folder")?.join("e2e"),
    };
    let mut dir = parent.join(label);
    let pid_file = dir.join("pid");
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let pid = pid.trim();
        if pid != std::process::id().to_string() && Path::new("/proc").join(pid).exists() {
            dir = parent.join(format!("{label}-{}", std::process::id()));
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pid"), std::process::id().to_string())?;
    Ok(dir)
}

/// The running environment. Dropping it stops every process.
pub struct Env {
    pub cluster: Cluster,
    pub control_plane: ControlPlane,
    pub standin: StandIn,
    operator: Option<Proc>,
}

/// A handle on a running [`Env`]: paths, usable from any runtime.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    pub server: String,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// kubectl and friends.
    pub k8s_bin: PathBuf,
    /// Pod folders, volumes and `logs/<namespace>_<pod>.log`.
    pub pods_root: PathBuf,
    pub control_plane_logs: PathBuf,
    pub operator_log: Option<PathBuf>,
    pub audit_log: PathBuf,
}

impl Env {
    pub async fn start(opts: &Options) -> Result<Env> {
        let started = Instant::now();
        let ringstore = ringstore_binary()?;
        let operator_bin = if opts.operator {
            Some(operator_binary()?)
        } else {
            None
        };
        let crds = if opts.crds || opts.operator {
            let files = crd_files();
            if files.is_empty() {
                bail!(
                    "no CRD YAML in {}: generate the CRDs first",
                    repo_root().join("crds").display()
                );
            }
            files
        } else {
            vec![]
        };
        let bin = control_plane_bin()?;
        let dir = work_dir(&opts.label)?;
        let mut control_plane = ControlPlane::start_api_server(&bin, &dir.join("controlplane")).await?;
        let client = control_plane.client().await?;

        let t = Instant::now();
        for f in &crds {
            let yaml = std::fs::read_to_string(f)?;
            apply_yaml(&client, None, &yaml)
                .await
                .with_context(|| format!("applying {}", f.display()))?;
        }
        wait_crds_established(&client, Duration::from_secs(30)).await?;
        if !crds.is_empty() {
            eprintln!(
                "[ringstore-e2e] {} CRDs established in {:.1} s",
                crds.len(),
                t.elapsed().as_secs_f64()
            );
        }
        control_plane.start_controller_manager().await?;

        let pods_root = dir.join("pods");
        let standin = StandIn::start(
            control_plane.client_as("kubelet-standin").await?,
            kubelet::Config {
                binary: ringstore,
                root: pods_root.clone(),
                namespace: None,
                extra_env: vec![(
                    "RUST_LOG".into(),
                    std::env::var("RINGSTORE_E2E_NODE_LOG").unwrap_or_else(|_| "info".into()),
                )],
            },
        )?;

        let mut operator = None;
        let mut operator_log = None;
        if let Some(bin) = operator_bin {
            let log = dir.join("logs").join("operator.log");
            let args: Vec<String> = std::env::var("RINGSTORE_E2E_OPERATOR_ARGS")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            grant_operator_rbac(&client, OPERATOR_NAMESPACE).await?;
            let kubeconfig = control_plane.user(OPERATOR_USER)?.kubeconfig.clone();
            let mut env = vec![
                (
                    "KUBECONFIG".to_string(),
                    kubeconfig.to_string_lossy().into_owned(),
                ),
                (
                    "RUST_LOG".to_string(),
                    std::env::var("RINGSTORE_E2E_OPERATOR_LOG")
                        .unwrap_or_else(|_| "info,ringstore_operator=debug".into()),
                ),
                ("POD_NAMESPACE".to_string(), OPERATOR_NAMESPACE.to_string()),
                ("PATH".to_string(), std::env::var("PATH").unwrap_or_default()),
                ("HOME".to_string(), dir.to_string_lossy().into_owned()),
            ];
            // the operator's own settings pass through; its metrics listen on a free
            // loopback port unless told otherwise
            env.extend(
                std::env::vars()
                    .filter(|(k, _)| k.starts_with("RINGSTORE_OPERATOR_") && k != "RINGSTORE_OPERATOR_BIN"),
            );
            if !env.iter().any(|(k, _)| k == "RINGSTORE_OPERATOR_METRICS_ADDRESS") {
                env.push((
                    "RINGSTORE_OPERATOR_METRICS_ADDRESS".into(),
                    format!("127.0.0.1:{}", crate::controlplane::free_port()?),
                ));
            }
            let proc = Proc::spawn("ringstore-operator", &bin, &args, &env, &dir, &log)?;
            operator = Some(proc);
            operator_log = Some(log);
        }
        let cluster = Cluster {
            dir: dir.clone(),
            server: control_plane.server.clone(),
            kubeconfig: control_plane.kubeconfig.clone(),
            k8s_bin: bin,
            pods_root,
            control_plane_logs: dir.join("controlplane").join("logs"),
            operator_log,
            audit_log: control_plane.audit_log.clone(),
        };
        let mut env = Env {
            cluster,
            control_plane,
            standin,
            operator,
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        env.check_alive()?;
        eprintln!(
            "[ringstore-e2e] environment up in {:.1} s; work folder {}",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        Ok(env)
    }

    /// Fails when a control-plane process or the operator has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.control_plane.check_alive()?;
        if let Some(op) = &mut self.operator
            && let Some(status) = op.try_exited()
        {
            bail!(
                "ringstore-operator exited ({status}); last lines of {}:\n{}",
                op.log_path().display(),
                tail(op.log_path(), 60)
            );
        }
        Ok(())
    }

    /// Stops the operator, the pods and the control plane.
    pub async fn stop(mut self) {
        if let Some(mut op) = self.operator.take() {
            op.stop(Duration::from_secs(5)).await;
        }
        let Env {
            standin,
            mut control_plane,
            ..
        } = self;
        standin.stop().await;
        control_plane.stop().await;
    }
}

/// One [`Env`] per test binary, started on first use on a runtime of its own and kept
/// until the process exits (the process guards then stop everything). Every caller gets
/// the same result, also the same failure.
pub fn shared(opts: Options) -> Result<Cluster> {
    static SHARED: OnceLock<std::result::Result<Cluster, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("ringstore-e2e-env".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(format!("tokio runtime: {e}")));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        match Env::start(&opts).await {
                            Ok(mut env) => {
                                let _ = tx.send(Ok(env.cluster.clone()));
                                // watch for dying processes until the test binary exits
                                loop {
                                    tokio::time::sleep(Duration::from_secs(2)).await;
                                    if let Err(e) = env.check_alive() {
                                        eprintln!("[ringstore-e2e] {e:#}");
                                        tokio::time::sleep(Duration::from_secs(3600)).await;
                                    }
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(format!("{e:#}")));
                            }
                        }
                    });
                });
            if let Err(e) = spawned {
                return Err(format!("starting the environment thread: {e}"));
            }
            rx.recv()
                .unwrap_or_else(|_| Err("the environment thread died".into()))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("the end-to-end environment did not start: {e}"))
}

static NAMESPACES: AtomicU32 = AtomicU32::new(0);

/// See [`Cluster::cleanup_on_drop`].
pub struct NamespaceCleanup {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    namespace: String,
}

impl Drop for NamespaceCleanup {
    fn drop(&mut self) {
        if std::env::var("RINGSTORE_E2E_KEEP_NAMESPACES").is_ok_and(|v| v == "1") {
            return;
        }
        let _ = std::process::Command::new(&self.kubectl)
            .args(["delete", "namespace", &self.namespace, "--wait=false"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A write request seen in the API server's audit log.
#[derive(Clone, Debug)]
pub struct AuditWrite {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: i64,
}

impl std::fmt::Display for AuditWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sub = if self.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", self.subresource)
        };
        write!(
            f,
            "{} {} {}{} {}/{} -> {}",
            self.user, self.verb, self.resource, sub, self.namespace, self.name, self.code
        )
    }
}

/// Where to reach a tenant over S3.
#[derive(Clone, Debug)]
pub struct S3Target {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub pod: String,
}

impl Cluster {
    /// An admin client for the calling runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        client_for(&self.kubeconfig).await
    }

    /// Creates a fresh namespace `<prefix>-<n>`.
    pub async fn namespace(&self, client: &kube::Client, prefix: &str) -> Result<String> {
        let n = NAMESPACES.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{}-{n}", std::process::id() % 10_000);
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name }
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    /// Deletes the namespace when dropped (without waiting), so a finished scenario's pods
    /// stop using the machine; `RINGSTORE_E2E_KEEP_NAMESPACES=1` keeps them.
    pub fn cleanup_on_drop(&self, namespace: &str) -> NamespaceCleanup {
        NamespaceCleanup {
            kubectl: self.k8s_bin.join("kubectl"),
            kubeconfig: self.kubeconfig.clone(),
            namespace: namespace.to_string(),
        }
    }

    /// Server-side applies every document of `yaml` (into `namespace` when a namespaced
    /// object names none).
    pub async fn apply(
        &self,
        client: &kube::Client,
        namespace: &str,
        yaml: &str,
    ) -> Result<Vec<DynamicObject>> {
        apply_yaml(client, Some(namespace), yaml).await
    }

    /// Polls `check` every 500 ms until it returns `Some`; on timeout fails with the last
    /// error and a dump of the namespace (tenants, pods, operator and pod logs).
    pub async fn wait_for<T, F, Fut>(
        &self,
        client: &kube::Client,
        namespace: &str,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let started = Instant::now();
        let mut last_error = String::new();
        loop {
            match check().await {
                Ok(Some(v)) => {
                    eprintln!(
                        "[ringstore-e2e] {namespace}: {what} after {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(v);
                }
                Ok(None) => {}
                Err(e) => last_error = format!("{e:#}"),
            }
            if started.elapsed() > timeout {
                let dump = self.diagnostics(client, namespace).await;
                bail!(
                    "timed out after {timeout:?} waiting for: {what}\nlast error: {}\n{dump}",
                    if last_error.is_empty() {
                        "none"
                    } else {
                        &last_error
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A human-readable dump of a namespace for failure messages.
    pub async fn diagnostics(&self, client: &kube::Client, namespace: &str) -> String {
        let mut out = format!("===== diagnostics for namespace {namespace} =====\n");
        for (kind, ar) in [("Tenant", tenant_resource()), ("Pool", pool_resource())] {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
            match api.list(&ListParams::default()).await {
                Ok(list) => {
                    for o in list {
                        let v = serde_json::to_value(&o).unwrap_or_default();
                        out.push_str(&format!(
                            "--- {kind} {} (generation {}):\nspec: {}\nstatus: {}\n",
                            o.metadata.name.clone().unwrap_or_default(),
                            o.metadata.generation.unwrap_or_default(),
                            v["spec"],
                            serde_json::to_string_pretty(&v["status"]).unwrap_or_default()
                        ));
                    }
                }
                Err(e) => out.push_str(&format!("--- {kind}s: {e}\n")),
            }
        }
        match Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => {
                for s in list {
                    let st = s.status.unwrap_or_default();
                    out.push_str(&format!(
                        "--- StatefulSet {}: replicas {} ready {} current {} updated {} revision {:?}/{:?}\n",
                        s.metadata.name.unwrap_or_default(),
                        st.replicas,
                        st.ready_replicas.unwrap_or(0),
                        st.current_replicas.unwrap_or(0),
                        st.updated_replicas.unwrap_or(0),
                        st.current_revision,
                        st.update_revision,
                    ));
                }
            }
            Err(e) => out.push_str(&format!("--- statefulsets: {e}\n")),
        }
        let pods = Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        for p in &pods {
            let name = p.metadata.name.clone().unwrap_or_default();
            let st = p.status.clone().unwrap_or_default();
            let cs = st.container_statuses.clone().unwrap_or_default();
            out.push_str(&format!(
                "--- Pod {name}: phase {:?} ip {:?} ready {:?} restarts {:?} image {:?} deleting {}\n",
                st.phase,
                st.pod_ip,
                cs.first().map(|c| c.ready),
                cs.first().map(|c| c.restart_count),
                p.spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.clone()),
                p.metadata.deletion_timestamp.is_some(),
            ));
        }
        if let Some(log) = &self.operator_log {
            out.push_str(&format!(
                "--- operator log ({}):\n{}\n",
                log.display(),
                tail(log, 80)
            ));
        }
        for p in &pods {
            let name = p.metadata.name.clone().unwrap_or_default();
            let log = self.pod_log(namespace, &name);
            out.push_str(&format!("--- pod log {} :\n{}\n", log.display(), tail(&log, 25)));
        }
        let kcm = self.control_plane_logs.join("kube-controller-manager.log");
        out.push_str(&format!("--- kube-controller-manager log:\n{}\n", tail(&kcm, 15)));
        out
    }

    pub fn pod_log(&self, namespace: &str, pod: &str) -> PathBuf {
        self.pods_root.join("logs").join(format!("{namespace}_{pod}.log"))
    }

    /// Runs kubectl with the admin kubeconfig; returns stdout, fails with stderr.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(self.k8s_bin.join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .await
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The Tenant as JSON.
    pub async fn tenant(&self, client: &kube::Client, namespace: &str, name: &str) -> Result<Value> {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &tenant_resource());
        Ok(serde_json::to_value(api.get(name).await?)?)
    }

    /// Whether the Tenant reports Ready=True for its current generation.
    pub fn tenant_is_ready(tenant: &Value) -> bool {
        let generation = tenant["metadata"]["generation"].as_i64();
        let observed = tenant["status"]["observedGeneration"].as_i64();
        condition(tenant, "Ready").as_deref() == Some("True")
            && (observed.is_none() || observed == generation)
    }

    /// Waits for the Tenant to be Ready for its current generation; returns it.
    pub async fn wait_tenant_ready(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Value> {
        self.wait_for(
            client,
            namespace,
            &format!("tenant {name} Ready"),
            timeout,
            || async {
                let t = self.tenant(client, namespace, name).await?;
                Ok(Self::tenant_is_ready(&t).then_some(t))
            },
        )
        .await
    }

    /// The S3 endpoint of a ready pod of the tenant and the tenant's credentials.
    pub async fn s3_target(&self, client: &kube::Client, namespace: &str, tenant: &str) -> Result<S3Target> {
        let t = self.tenant(client, namespace, tenant).await?;
        let secret_name = t["spec"]["credentialsSecret"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{tenant}-credentials"));
        let secret = Api::<Secret>::namespaced(client.clone(), namespace)
            .get(&secret_name)
            .await
            .with_context(|| format!("credentials secret {namespace}/{secret_name}"))?;
        let data = secret.data.unwrap_or_default();
        let key = |k: &str| -> Result<String> {
            data.get(k)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .with_context(|| format!("secret {secret_name} has no {k}"))
        };
        let pods = tenant_pods(client, namespace, tenant).await?;
        let pod = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .find(|p| pod_ready(p))
            .with_context(|| format!("no ready pod of tenant {tenant}"))?;
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .context("ready pod without IP")?;
        Ok(S3Target {
            endpoint: format!("http://{ip}:9000"),
            access_key: key("accessKey")?,
            secret_key: key("secretKey")?,
            pod: pod.metadata.name.clone().unwrap_or_default(),
        })
    }

    /// The audit log's length now: pass it to [`Cluster::writes_since`] later.
    pub fn audit_mark(&self) -> u64 {
        std::fs::metadata(&self.audit_log).map(|m| m.len()).unwrap_or(0)
    }

    /// Write requests (create, update, patch, delete) logged since `mark`, by `user` (all
    /// users when `None`).
    pub fn writes_since(&self, mark: u64, user: Option<&str>) -> Result<Vec<AuditWrite>> {
        let bytes = std::fs::read(&self.audit_log)?;
        let start = (mark as usize).min(bytes.len());
        let mut out = vec![];
        for line in String::from_utf8_lossy(&bytes[start..]).lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["stage"] != "ResponseComplete" {
                continue;
            }
            let who = v["user"]["username"].as_str().unwrap_or_default();
            if user.is_some_and(|u| u != who) {
                continue;
            }
            let s = |x: &Value| x.as_str().unwrap_or_default().to_string();
            out.push(AuditWrite {
                user: who.to_string(),
                verb: s(&v["verb"]),
                resource: s(&v["objectRef"]["resource"]),
                subresource: s(&v["objectRef"]["subresource"]),
                namespace: s(&v["objectRef"]["namespace"]),
                name: s(&v["objectRef"]["name"]),
                code: v["responseStatus"]["code"].as_i64().unwrap_or_default(),
            });
        }
        Ok(out)
    }
}

/// The status of condition `type` of an object as JSON.
pub fn condition(obj: &Value, kind: &str) -> Option<String> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

/// The labels that may name a pod's Tenant: the operator's, and the common one.
pub const TENANT_LABELS: &[&str] = &["ringstore.io/tenant", "app.kubernetes.io/instance"];

/// The pods of a Tenant (label `ringstore.io/tenant` or `app.kubernetes.io/instance`).
pub async fn tenant_pods(client: &kube::Client, namespace: &str, tenant: &str) -> Result<Vec<Pod>> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels("app.kubernetes.io/name=ringstore"))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.labels.as_ref().is_some_and(|l| {
                TENANT_LABELS
                    .iter()
                    .any(|k| l.get(*k).map(String::as_str) == Some(tenant))
            })
        })
        .collect())
}

/// Whether a pod reports Ready=True.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The namespace the operator runs in (its leader-election Lease lives there).
const OPERATOR_NAMESPACE: &str = "default";

/// The install manifests' operator objects, rendered from the chart.
const INSTALL_OPERATOR_YAML: &str = include_str!("../../manifests/install/operator.yaml");

/// Gives the operator's user exactly the permissions a real install grants its
/// ServiceAccount: the ClusterRole and the leader-election Role from
/// `manifests/install/operator.yaml` (the Role moved to `namespace`), bound to the user.
/// Every scenario then runs under the shipped least-privilege RBAC, so a missing rule
/// fails an e2e test instead of a user's install.
pub async fn grant_operator_rbac(client: &kube::Client, namespace: &str) -> Result<()> {
    use serde::Deserialize;
    let mut yaml = String::new();
    for doc in serde_yaml::Deserializer::from_str(INSTALL_OPERATOR_YAML) {
        let mut value = serde_yaml::Value::deserialize(doc)?;
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        if kind != "ClusterRole" && kind != "Role" {
            continue;
        }
        let name = value["metadata"]["name"]
            .as_str()
            .context("an RBAC role without a name")?
            .to_string();
        let (binding, scope) = if kind == "Role" {
            value["metadata"]["namespace"] = namespace.into();
            ("RoleBinding", format!("\n  namespace: {namespace}"))
        } else {
            ("ClusterRoleBinding", String::new())
        };
        yaml.push_str(&serde_yaml::to_string(&value)?);
        yaml.push_str(&format!(
            "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: {binding}\nmetadata:\n  name: {name}-e2e{scope}\n\
             roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: {kind}\n  name: {name}\n\
             subjects:\n  - apiGroup: rbac.authorization.k8s.io\n    kind: User\n    name: {OPERATOR_USER}\n---\n"
        ));
    }
    let applied = apply_yaml(client, Some(namespace), &yaml)
        .await
        .context("granting the operator the install's RBAC")?;
    if applied.len() < 4 {
        bail!("expected a ClusterRole and a Role in manifests/install/operator.yaml");
    }
    Ok(())
}

/// Server-side applies every document of `yaml`.
pub async fn apply_yaml(
    client: &kube::Client,
    namespace: Option<&str>,
    yaml: &str,
) -> Result<Vec<DynamicObject>> {
    use serde::Deserialize;
    let mut applied = vec![];
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let json: Value = serde_json::to_value(&value)?;
        let mut obj: DynamicObject = serde_json::from_value(json.clone())
            .context("a YAML document that is not a Kubernetes object")?;
        let api_version = json["apiVersion"].as_str().context("no apiVersion")?;
        let kind = json["kind"].as_str().context("no kind")?;
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .with_context(|| format!("discovering {api_version} {kind}"))?;
        let name = obj
            .metadata
            .name
            .clone()
            .context("object without metadata.name")?;
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            let ns = obj
                .metadata
                .namespace
                .clone()
                .or_else(|| namespace.map(str::to_string))
                .unwrap_or_else(|| "default".into());
            obj.metadata.namespace = Some(ns.clone());
            Api::namespaced_with(client.clone(), &ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let pp = PatchParams::apply("ringstore-e2e").force();
        let out = api
            .patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .with_context(|| format!("applying {kind} {name}"))?;
        applied.push(out);
    }
    Ok(applied)
}

async fn wait_crds_established(client: &kube::Client, timeout: Duration) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let list = api.list(&ListParams::default()).await?;
        let pending: Vec<String> = list
            .items
            .iter()
            .filter(|crd| {
                !crd.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
            })
            .map(|crd| crd.metadata.name.clone().unwrap_or_default())
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("CRDs not established after {timeout:?}: {pending:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
