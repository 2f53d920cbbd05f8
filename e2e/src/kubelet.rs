//! A kubelet stand-in: runs the `ringstore` binary for every Ringstore pod the API server
//! holds, on a loopback IP of its own, and reports the pod's status like a kubelet.
//!
//! Rules (generic, nothing here knows the operator's names):
//! - a pod is ours when it has the label `app.kubernetes.io/name=ringstore` or a container
//!   named `ringstore`; we run that container (or the first one);
//! - each (namespace, pod name) gets a loopback IP `127.B.x.y` for the whole run (B: a
//!   block nothing listens in when the stand-in starts), so a
//!   re-created pod keeps its IP; host names `<pod>.<service>.<namespace>.svc.cluster.local`
//!   (also `...svc` and, within the pod's namespace, `<pod>.<service>.<namespace>`) in env
//!   values and args become that IP, and `0.0.0.0` becomes the pod's own IP;
//! - env: values, `$(VAR)` expansion, `fieldRef`, `secretKeyRef`, `configMapKeyRef`,
//!   `envFrom`; args and command are expanded too;
//! - volumes: a PVC volume is the host folder `<root>/<namespace>/<claimName>` (kept when
//!   the pod is deleted, like a PersistentVolume), an emptyDir is
//!   `<root>/<namespace>/<pod>/emptydir/<name>` (new for each pod); mount paths in env
//!   values and args are rewritten to those folders;
//! - the image is ignored: the program is the `ringstore` binary given to the stand-in
//!   (also when `command[0]` is `ringstore`), run in `<root>/<namespace>/<pod>` with only
//!   the resolved env and `PATH`; output goes to `<root>/logs/<namespace>_<pod>.log`;
//! - readiness (every second), liveness (every `periodSeconds`) and startup probes
//!   (`httpGet`, `tcpSocket`; `exec` counts as passing) against the pod IP; a failed
//!   liveness probe or an exit restarts the process with a back-off, bumping restartCount;
//! - pods are never bound to a node, so the API server deletes them at once: a deleted pod's
//!   process is stopped (SIGTERM, SIGKILL after the grace period, at most 10 s) before a
//!   new pod of the same name may start. A pod with a deletionTimestamp is stopped, then
//!   deleted with grace 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::process::Proc;
use crate::rewrite::{Rewriter, expand};

/// What the stand-in runs and where.
#[derive(Clone, Debug)]
pub struct Config {
    /// The `ringstore` binary every pod runs.
    pub binary: PathBuf,
    /// Folder for volumes, pod working folders and logs.
    pub root: PathBuf,
    /// Only pods of this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Extra environment for every process (after the pod's own; e.g. `RUST_LOG`).
    pub extra_env: Vec<(String, String)>,
}

type Key = (String, String);

/// The running stand-in; dropping it stops every pod process.
pub struct StandIn {
    node: Arc<Node>,
    task: JoinHandle<()>,
}

struct Node {
    client: kube::Client,
    config: Config,
    ips: Mutex<Ips>,
    slots: Mutex<HashMap<Key, watch::Sender<Option<Pod>>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct Ips {
    /// Pod IPs are `127.<block>.x.y`.
    block: u8,
    by_pod: HashMap<Key, Ipv4Addr>,
    next: u32,
}

/// Second octets of the 127/8 addresses something listens on now (from /proc/net/tcp).
fn loopback_blocks_in_use() -> HashSet<u8> {
    let mut used = HashSet::new();
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
            continue;
        };
        if *state != "0A" {
            continue; // not LISTEN
        }
        let Some((addr, _)) = local.split_once(':') else {
            continue;
        };
        if let Ok(a) = u32::from_str_radix(addr, 16) {
            // the kernel prints the address as a host-order u32 of network-order bytes
            let b = a.to_le_bytes();
            if b[0] == 127 {
                used.insert(b[1]);
            }
        }
    }
    used
}

/// A `127.<block>.0.0/16` nobody listens in, so several harnesses can share a machine.
/// `RINGSTORE_E2E_IP_BLOCK` chooses it.
fn choose_ip_block() -> u8 {
    if let Some(b) = std::env::var("RINGSTORE_E2E_IP_BLOCK")
        .ok()
        .and_then(|s| s.parse::<u8>().ok())
    {
        return b;
    }
    let used = loopback_blocks_in_use();
    let seed = std::process::id()
        ^ SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    (0..253u32)
        .map(|i| ((seed.wrapping_add(i) % 253) + 1) as u8)
        .find(|b| !used.contains(b))
        .unwrap_or(1)
}

impl StandIn {
    pub fn start(client: kube::Client, config: Config) -> Result<StandIn> {
        if !config.binary.is_file() {
            bail!("the ringstore binary {} does not exist", config.binary.display());
        }
        std::fs::create_dir_all(config.root.join("logs"))?;
        let node = Arc::new(Node {
            client,
            config,
            ips: Mutex::new(Ips {
                block: choose_ip_block(),
                by_pod: HashMap::new(),
                next: 0,
            }),
            slots: Mutex::new(HashMap::new()),
            tasks: Mutex::new(vec![]),
        });
        eprintln!(
            "[ringstore-e2e] kubelet stand-in: pod IPs in 127.{}.0.0/16, folders in {}",
            node.ips.lock().unwrap().block,
            node.config.root.display()
        );
        let task = tokio::spawn(watch_pods(node.clone()));
        Ok(StandIn { node, task })
    }

    /// The loopback IP of (namespace, pod), allocated now if it has none yet.
    pub fn ip_of(&self, namespace: &str, pod: &str) -> Ipv4Addr {
        self.node.ip(namespace, pod)
    }

    /// The log file of a pod.
    pub fn log_path(&self, namespace: &str, pod: &str) -> PathBuf {
        self.node.log_path(namespace, pod)
    }

    pub fn root(&self) -> &Path {
        &self.node.config.root
    }

    /// Stops watching and stops every pod process.
    pub async fn stop(self) {
        self.task.abort();
        let senders: Vec<_> = self.node.slots.lock().unwrap().drain().collect();
        for (_, tx) in &senders {
            tx.send_replace(None);
        }
        drop(senders);
        let tasks: Vec<_> = self.node.tasks.lock().unwrap().drain(..).collect();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
        // dropping the slot tasks drops their Procs, which kill the processes
        for t in self.node.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Whether the stand-in runs this pod.
pub fn is_ours(pod: &Pod) -> bool {
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/name"))
        .is_some_and(|v| v == "ringstore");
    labelled
        || pod
            .spec
            .as_ref()
            .is_some_and(|s| s.containers.iter().any(|c| c.name == "ringstore"))
}

fn key_of(pod: &Pod) -> Key {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

async fn watch_pods(node: Arc<Node>) {
    let api: Api<Pod> = match &node.config.namespace {
        Some(ns) => Api::namespaced(node.client.clone(), ns),
        None => Api::all(node.client.clone()),
    };
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    // pods seen during a (re)list; the others were deleted while we were not watching
    let mut listing: Option<HashSet<Key>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(seen) = &mut listing {
                    seen.insert(key_of(&pod));
                }
                node.desire(pod);
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = listing.take() {
                    let keys: Vec<Key> = node.slots.lock().unwrap().keys().cloned().collect();
                    for key in keys {
                        if !seen.contains(&key) {
                            node.gone(&key, None);
                        }
                    }
                }
            }
            Ok(watcher::Event::Apply(pod)) => node.desire(pod),
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone();
                node.gone(&key_of(&pod), uid.as_deref());
            }
            Err(e) => {
                warn!("kubelet stand-in: pod watch failed: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl Node {
    fn ip(&self, namespace: &str, pod: &str) -> Ipv4Addr {
        let mut ips = self.ips.lock().unwrap();
        let key = (namespace.to_string(), pod.to_string());
        if let Some(ip) = ips.by_pod.get(&key) {
            return *ip;
        }
        let n = ips.next;
        ips.next += 1;
        let ip = Ipv4Addr::new(127, ips.block, (n / 250) as u8, (n % 250 + 1) as u8);
        ips.by_pod.insert(key, ip);
        ip
    }

    fn log_path(&self, namespace: &str, pod: &str) -> PathBuf {
        self.config
            .root
            .join("logs")
            .join(format!("{namespace}_{pod}.log"))
    }

    fn desire(self: &Arc<Self>, pod: Pod) {
        if !is_ours(&pod) {
            return;
        }
        let key = key_of(&pod);
        let mut slots = self.slots.lock().unwrap();
        if let Some(tx) = slots.get(&key) {
            tx.send_replace(Some(pod));
            return;
        }
        let (tx, rx) = watch::channel(Some(pod));
        slots.insert(key.clone(), tx);
        let node = self.clone();
        let task = tokio::spawn(async move { node.slot(key, rx).await });
        self.tasks.lock().unwrap().push(task);
    }

    fn gone(&self, key: &Key, uid: Option<&str>) {
        if let Some(tx) = self.slots.lock().unwrap().get(key) {
            tx.send_if_modified(|current| {
                let matches = match (current.as_ref(), uid) {
                    (Some(_), None) => true,
                    (Some(p), Some(uid)) => p.metadata.uid.as_deref() == Some(uid),
                    (None, _) => false,
                };
                if matches {
                    *current = None;
                }
                matches
            });
        }
    }

    /// One pod name: runs its pods one after the other, never two at once.
    async fn slot(self: Arc<Self>, key: Key, mut rx: watch::Receiver<Option<Pod>>) {
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(pod) = current {
                if pod.metadata.deletion_timestamp.is_some() {
                    self.finish_delete(&pod).await;
                } else {
                    let uid = pod.metadata.uid.clone();
                    if let Err(e) = self.run_pod(pod, &mut rx).await {
                        warn!("kubelet stand-in: pod {}/{}: {e:#}", key.0, key.1);
                        self.append_log(&key.0, &key.1, &format!("stand-in error: {e:#}"));
                        // do not spin on the same pod
                        let same = rx.borrow().as_ref().and_then(|p| p.metadata.uid.clone()) == uid;
                        if same {
                            tokio::select! {
                                _ = rx.changed() => {}
                                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                            }
                        }
                    }
                    continue;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    fn append_log(&self, namespace: &str, pod: &str, line: &str) {
        use std::io::Write;
        let path = self.log_path(namespace, pod);
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "--- [ringstore-e2e] {line}");
        }
    }

    async fn finish_delete(&self, pod: &Pod) {
        let (ns, name) = key_of(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => debug!("kubelet stand-in: deleted {ns}/{name} with grace 0"),
            Err(e) => debug!("kubelet stand-in: deleting {ns}/{name}: {e}"),
        }
    }

    async fn run_pod(&self, pod: Pod, rx: &mut watch::Receiver<Option<Pod>>) -> Result<()> {
        let (ns, name) = key_of(&pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().context("pod without spec")?;
        let container = spec
            .containers
            .iter()
            .find(|c| c.name == "ringstore")
            .or_else(|| spec.containers.first())
            .cloned()
            .context("pod without containers")?;
        let ip = self.ip(&ns, &name);
        let pod_dir = self.config.root.join(&ns).join(&name);
        std::fs::create_dir_all(&pod_dir)?;
        let mounts = self.prepare_volumes(&pod, &container, &pod_dir)?;
        let grace =
            Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).clamp(1, 10) as u64);
        let log = self.log_path(&ns, &name);
        info!("kubelet stand-in: starting pod {ns}/{name} ({uid}) on {ip}");
        let mut st = RunState::new(&pod, &container, ip);
        let mut backoff = Duration::from_secs(1);
        loop {
            if !still_wanted(rx, &uid) {
                return Ok(());
            }
            // environment and command line
            let (env, argv) = match self.command_line(&pod, &container, ip, &mounts).await {
                Ok(v) => v,
                Err(e) => {
                    st.waiting("CreateContainerConfigError", &format!("{e:#}"));
                    self.report(&pod, &mut st).await;
                    if wait_or_unwanted(rx, &uid, Duration::from_secs(2)).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            let (program, args) = argv.split_first().context("empty command")?;
            let mut full_env = env.clone();
            if !full_env.iter().any(|(k, _)| k == "PATH") {
                full_env.push((
                    "PATH".into(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ));
            }
            full_env.extend(self.config.extra_env.iter().cloned());
            let mut proc = Proc::spawn(
                &format!("{ns}/{name}"),
                Path::new(program),
                args,
                &full_env,
                &pod_dir,
                &log,
            )?;
            let run_started = Instant::now();
            st.running();
            self.report(&pod, &mut st).await;
            let outcome = self.supervise(&pod, &container, &mut proc, &mut st, rx).await;
            match outcome {
                Outcome::Unwanted => {
                    info!("kubelet stand-in: stopping pod {ns}/{name} ({uid})");
                    proc.stop(grace).await;
                    self.append_log(&ns, &name, "pod deleted: process stopped");
                    let deleting = rx.borrow().as_ref().is_some_and(|p| {
                        p.metadata.uid.as_deref() == Some(&uid) && p.metadata.deletion_timestamp.is_some()
                    });
                    if deleting {
                        self.finish_delete(&pod).await;
                    }
                    return Ok(());
                }
                Outcome::Exited(code) => {
                    self.append_log(&ns, &name, &format!("process exited with {code}"));
                    st.terminated(code, if code == 0 { "Completed" } else { "Error" });
                }
                Outcome::Unhealthy(reason) => {
                    self.append_log(&ns, &name, &format!("{reason}: restarting"));
                    let code = proc.stop(grace).await.and_then(|s| s.code()).unwrap_or(137);
                    st.terminated(code, "Error");
                }
            }
            if run_started.elapsed() > Duration::from_secs(20) {
                backoff = Duration::from_secs(1);
            }
            st.waiting(
                "CrashLoopBackOff",
                &format!("back-off {}s restarting failed container", backoff.as_secs()),
            );
            self.report(&pod, &mut st).await;
            if wait_or_unwanted(rx, &uid, backoff).await {
                return Ok(());
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Folders for the container's volume mounts: (mount path, host folder).
    fn prepare_volumes(
        &self,
        pod: &Pod,
        container: &Container,
        pod_dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>> {
        let (ns, _) = key_of(pod);
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut host_of = HashMap::new();
        for v in &volumes {
            let host = if let Some(pvc) = &v.persistent_volume_claim {
                self.config.root.join(&ns).join(&pvc.claim_name)
            } else if v.empty_dir.is_some() {
                let dir = pod_dir.join("emptydir").join(&v.name);
                let _ = std::fs::remove_dir_all(&dir);
                dir
            } else {
                debug!(
                    "kubelet stand-in: volume {} of an unsupported type is not provided",
                    v.name
                );
                continue;
            };
            std::fs::create_dir_all(&host).with_context(|| format!("creating {}", host.display()))?;
            host_of.insert(v.name.clone(), host);
        }
        let mut mounts = vec![];
        for m in container.volume_mounts.iter().flatten() {
            if let Some(host) = host_of.get(&m.name) {
                let host = match &m.sub_path {
                    Some(sub) if !sub.is_empty() => {
                        let h = host.join(sub);
                        std::fs::create_dir_all(&h)?;
                        h
                    }
                    _ => host.clone(),
                };
                mounts.push((m.mount_path.clone(), host));
            }
        }
        Ok(mounts)
    }

    /// The container's environment and argv, resolved and rewritten.
    async fn command_line(
        &self,
        pod: &Pod,
        container: &Container,
        ip: Ipv4Addr,
        mounts: &[(String, PathBuf)],
    ) -> Result<(Vec<(String, String)>, Vec<String>)> {
        let (ns, _) = key_of(pod);
        let mut env: Vec<(String, String)> = vec![];
        let mut vars: HashMap<String, String> = HashMap::new();
        fn set(env: &mut Vec<(String, String)>, vars: &mut HashMap<String, String>, k: String, v: String) {
            vars.insert(k.clone(), v.clone());
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        for from in container.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.secret_ref {
                let optional = r.optional.unwrap_or(false);
                match self.secret(&ns, &r.name).await {
                    Ok(s) => {
                        for (k, v) in s.data.unwrap_or_default() {
                            set(
                                &mut env,
                                &mut vars,
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v.0).into(),
                            );
                        }
                    }
                    Err(e) if !optional => return Err(e),
                    Err(_) => {}
                }
            }
            if let Some(r) = &from.config_map_ref {
                let optional = r.optional.unwrap_or(false);
                match self.config_map(&ns, &r.name).await {
                    Ok(cm) => {
                        for (k, v) in cm.data.unwrap_or_default() {
                            set(&mut env, &mut vars, format!("{prefix}{k}"), v);
                        }
                    }
                    Err(e) if !optional => return Err(e),
                    Err(_) => {}
                }
            }
        }
        for e in container.env.iter().flatten() {
            let value = if let Some(from) = &e.value_from {
                if let Some(f) = &from.field_ref {
                    field_value(pod, &f.field_path, ip)?
                } else if let Some(s) = &from.secret_key_ref {
                    match self.secret(&ns, &s.name).await {
                        Ok(secret) => match secret.data.unwrap_or_default().get(&s.key) {
                            Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                            None if s.optional == Some(true) => continue,
                            None => bail!("secret {}/{} has no key {}", ns, s.name, s.key),
                        },
                        Err(_) if s.optional == Some(true) => continue,
                        Err(e) => return Err(e),
                    }
                } else if let Some(c) = &from.config_map_key_ref {
                    match self.config_map(&ns, &c.name).await {
                        Ok(cm) => match cm.data.unwrap_or_default().get(&c.key) {
                            Some(v) => v.clone(),
                            None if c.optional == Some(true) => continue,
                            None => bail!("config map {}/{} has no key {}", ns, c.name, c.key),
                        },
                        Err(_) if c.optional == Some(true) => continue,
                        Err(e) => return Err(e),
                    }
                } else if let Some(r) = &from.resource_field_ref {
                    resource_value(container, &r.resource)
                } else {
                    String::new()
                }
            } else {
                expand(e.value.as_deref().unwrap_or(""), &vars)
            };
            set(&mut env, &mut vars, e.name.clone(), value);
        }
        let mut argv: Vec<String> = match &container.command {
            Some(cmd) if !cmd.is_empty() => cmd.iter().map(|a| expand(a, &vars)).collect(),
            _ => vec!["ringstore".to_string()],
        };
        argv.extend(container.args.iter().flatten().map(|a| expand(a, &vars)));
        if Path::new(&argv[0]).file_name().is_some_and(|n| n == "ringstore") {
            argv[0] = self.config.binary.to_string_lossy().into_owned();
        }
        let resolve = |ns: &str, pod: &str| self.ip(ns, pod);
        let rw = Rewriter {
            namespace: &ns,
            pod_ip: ip,
            resolve: &resolve,
            mounts,
        };
        let env = env.into_iter().map(|(k, v)| (k, rw.rewrite(&v))).collect();
        let argv = std::iter::once(argv[0].clone())
            .chain(argv[1..].iter().map(|a| rw.rewrite(a)))
            .collect();
        Ok((env, argv))
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .get(name)
            .await
            .with_context(|| format!("secret {ns}/{name}"))
    }

    async fn config_map(&self, ns: &str, name: &str) -> Result<ConfigMap> {
        Api::<ConfigMap>::namespaced(self.client.clone(), ns)
            .get(name)
            .await
            .with_context(|| format!("config map {ns}/{name}"))
    }

    async fn supervise(
        &self,
        pod: &Pod,
        container: &Container,
        proc: &mut Proc,
        st: &mut RunState,
        rx: &mut watch::Receiver<Option<Pod>>,
    ) -> Outcome {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut startup_done = container.startup_probe.is_none();
        let mut startup_failures = 0;
        let mut live_failures = 0;
        let mut ready_failures = 0;
        let mut last_live = Instant::now();
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() || !still_wanted(rx, &uid) {
                        return Outcome::Unwanted;
                    }
                }
                status = proc.wait() => {
                    let code = match status {
                        Ok(s) => s.code().unwrap_or(128),
                        Err(_) => 128,
                    };
                    return Outcome::Exited(code);
                }
                _ = tick.tick() => {
                    let ip = st.ip;
                    if !startup_done {
                        let p = container.startup_probe.as_ref().unwrap_or_else(|| unreachable!());
                        if started.elapsed() >= initial_delay(p) {
                            if probe(p, container, ip).await {
                                startup_done = true;
                            } else {
                                startup_failures += 1;
                                if startup_failures >= p.failure_threshold.unwrap_or(3) {
                                    return Outcome::Unhealthy("startup probe failed".into());
                                }
                            }
                        }
                        continue;
                    }
                    st.started = true;
                    let ready = match &container.readiness_probe {
                        Some(p) if started.elapsed() < initial_delay(p) => false,
                        Some(p) => {
                            if probe(p, container, ip).await {
                                ready_failures = 0;
                                true
                            } else {
                                ready_failures += 1;
                                // a ready pod turns unready after failureThreshold misses
                                st.ready && ready_failures < p.failure_threshold.unwrap_or(3)
                            }
                        }
                        None => true,
                    };
                    if let Some(p) = &container.liveness_probe {
                        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
                        if started.elapsed() >= initial_delay(p) && last_live.elapsed() >= period {
                            last_live = Instant::now();
                            if probe(p, container, ip).await {
                                live_failures = 0;
                            } else {
                                live_failures += 1;
                                if live_failures >= p.failure_threshold.unwrap_or(3) {
                                    return Outcome::Unhealthy("liveness probe failed".into());
                                }
                            }
                        }
                    }
                    if ready != st.ready {
                        st.set_ready(ready);
                    }
                    self.report(pod, st).await;
                }
            }
        }
    }

    /// Writes the pod's status when it differs from what was last written.
    async fn report(&self, pod: &Pod, st: &mut RunState) {
        let status = st.status_json();
        if st.last_sent.as_ref() == Some(&status) {
            return;
        }
        let (ns, name) = key_of(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        // the uid makes the API server refuse the write if the name now holds another pod
        let patch = json!({ "metadata": { "uid": pod.metadata.uid }, "status": status });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                st.last_sent = Some(status);
                st.last_error = None;
            }
            Err(e) => {
                // a pod that is gone or replaced is expected; say anything else once
                let text = e.to_string();
                let expected = matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409);
                if !expected && st.last_error.as_deref() != Some(text.as_str()) {
                    warn!("kubelet stand-in: cannot write the status of {ns}/{name}: {text}");
                    self.append_log(&ns, &name, &format!("cannot write the pod status: {text}"));
                }
                st.last_error = Some(text);
            }
        }
    }
}

enum Outcome {
    Unwanted,
    Exited(i32),
    Unhealthy(String),
}

fn still_wanted(rx: &watch::Receiver<Option<Pod>>, uid: &str) -> bool {
    rx.borrow()
        .as_ref()
        .is_some_and(|p| p.metadata.uid.as_deref() == Some(uid) && p.metadata.deletion_timestamp.is_none())
}

/// Sleeps for `d`; true when the pod stopped being wanted meanwhile.
async fn wait_or_unwanted(rx: &mut watch::Receiver<Option<Pod>>, uid: &str, d: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() || !still_wanted(rx, uid) {
                    return true;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

fn initial_delay(p: &Probe) -> Duration {
    Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64)
}

fn field_value(pod: &Pod, path: &str, ip: Ipv4Addr) -> Result<String> {
    let m = &pod.metadata;
    let from_map = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref().and_then(|m| m.get(key).cloned()).unwrap_or_default()
    };
    let bracket = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "ringstore-e2e-node".into()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".into(),
        "status.podIP" | "status.podIPs" => ip.to_string(),
        _ => {
            if let Some(k) = bracket("metadata.labels['") {
                from_map(&m.labels, &k)
            } else if let Some(k) = bracket("metadata.annotations['") {
                from_map(&m.annotations, &k)
            } else {
                return Err(anyhow!("unsupported fieldRef {path}"));
            }
        }
    })
}

fn resource_value(container: &Container, resource: &str) -> String {
    let (kind, what) = resource.split_once('.').unwrap_or(("limits", resource));
    let r = container.resources.as_ref();
    let map = match kind {
        "requests" => r.and_then(|r| r.requests.as_ref()),
        _ => r.and_then(|r| r.limits.as_ref()),
    };
    map.and_then(|m| m.get(what))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| if what == "cpu" { "2".into() } else { "0".into() })
}

/// Runs one probe against the pod IP; true when it passes.
async fn probe(p: &Probe, container: &Container, ip: Ipv4Addr) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let port_of = |port: &IntOrString| -> Option<u16> {
        match port {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok()),
        }
    };
    if let Some(h) = &p.http_get {
        let Some(port) = port_of(&h.port) else {
            return false;
        };
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        matches!(http_get(ip, port, &path, timeout).await, Ok(code) if (200..400).contains(&code))
    } else if let Some(t) = &p.tcp_socket {
        let Some(port) = port_of(&t.port) else {
            return false;
        };
        matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await,
            Ok(Ok(_))
        )
    } else {
        // exec and gRPC probes are not run: they pass
        true
    }
}

/// A minimal HTTP/1.1 GET; returns the status code.
pub async fn http_get(ip: Ipv4Addr, port: u16, path: &str, timeout: Duration) -> Result<u16> {
    tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/ringstore-e2e\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .context("no HTTP status line")?;
        Ok::<u16, anyhow::Error>(code)
    })
    .await
    .map_err(|_| anyhow!("timed out"))?
}

/// RFC 3339 UTC time, seconds precision (what metav1.Time serialises to).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (proleptic Gregorian)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What the stand-in knows about one pod's container, turned into a pod status.
struct RunState {
    ip: Ipv4Addr,
    container: String,
    image: String,
    start_time: String,
    state: Value,
    last_state: Value,
    restart_count: i32,
    started: bool,
    ready: bool,
    ready_since: String,
    last_sent: Option<Value>,
    last_error: Option<String>,
}

impl RunState {
    fn new(pod: &Pod, container: &Container, ip: Ipv4Addr) -> RunState {
        let now = rfc3339(SystemTime::now());
        let _ = pod;
        RunState {
            ip,
            container: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            start_time: now.clone(),
            state: json!({ "waiting": { "reason": "ContainerCreating" } }),
            last_state: json!({}),
            restart_count: 0,
            started: false,
            ready: false,
            ready_since: now,
            last_sent: None,
            last_error: None,
        }
    }

    fn running(&mut self) {
        self.state = json!({ "running": { "startedAt": rfc3339(SystemTime::now()) } });
        self.started = false;
        self.set_ready(false);
    }

    fn set_ready(&mut self, ready: bool) {
        if ready != self.ready {
            self.ready = ready;
            self.ready_since = rfc3339(SystemTime::now());
        }
    }

    fn waiting(&mut self, reason: &str, message: &str) {
        self.state = json!({ "waiting": { "reason": reason, "message": message } });
        self.set_ready(false);
        self.started = false;
    }

    fn terminated(&mut self, code: i32, reason: &str) {
        let started_at = self.state["running"]["startedAt"].clone();
        self.last_state = json!({ "terminated": {
            "exitCode": code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": rfc3339(SystemTime::now()),
        }});
        self.restart_count += 1;
        self.set_ready(false);
        self.started = false;
    }

    fn status_json(&self) -> Value {
        let ip = self.ip.to_string();
        let ready = if self.ready { "True" } else { "False" };
        let cond =
            |t: &str, s: &str, since: &str| json!({ "type": t, "status": s, "lastTransitionTime": since });
        json!({
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "hostIPs": [{ "ip": "127.0.0.1" }],
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "startTime": self.start_time,
            "conditions": [
                cond("PodReadyToStartContainers", "True", &self.start_time),
                cond("Initialized", "True", &self.start_time),
                cond("Ready", ready, &self.ready_since),
                cond("ContainersReady", ready, &self.ready_since),
                cond("PodScheduled", "True", &self.start_time),
            ],
            "containerStatuses": [{
                "name": self.container,
                "image": self.image,
                "imageID": format!("ringstore-e2e://{}", self.image),
                "containerID": format!("ringstore-e2e://{}-{}", self.container, self.restart_count),
                "ready": self.ready,
                "started": self.started,
                "restartCount": self.restart_count,
                "state": self.state,
                "lastState": self.last_state,
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
