//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager, built from source by `e2e/controlplane/build.sh`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;

use crate::process::{Proc, tail};

/// A user of the control plane: each component gets its own token, so the audit log tells
/// who wrote what (all of them but the operator are in `system:masters`).
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub token: String,
    pub kubeconfig: PathBuf,
}

/// Users known to the API server's static token file.
pub const USERS: &[&str] = &[
    "e2e-admin",
    "kube-controller-manager",
    "kubelet-standin",
    OPERATOR_USER,
];

/// The user the operator runs as: not an admin, bound to the install's RBAC roles.
pub const OPERATOR_USER: &str = "ringstore-operator";

/// The running control plane. Dropping it kills every process.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub server: String,
    /// The admin kubeconfig (tests, kubectl, people exploring by hand).
    pub kubeconfig: PathBuf,
    pub users: Vec<User>,
    pub audit_log: PathBuf,
    procs: Vec<Proc>,
}

/// The folder holding kube-apiserver, kube-controller-manager, kubectl and etcd, building
/// them first (many minutes, once) when they are missing. `RINGSTORE_E2E_K8S_BIN` overrides.
pub fn control_plane_bin() -> Result<PathBuf> {
    const NAMES: [&str; 4] = ["etcd", "kube-apiserver", "kube-controller-manager", "kubectl"];
    if let Ok(dir) = std::env::var("RINGSTORE_E2E_K8S_BIN") {
        let dir = PathBuf::from(dir);
        for name in NAMES {
            if !dir.join(name).is_file() {
                bail!("RINGSTORE_E2E_K8S_BIN={} has no {name}", dir.display());
            }
        }
        return Ok(dir);
    }
    let script = build_script();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--print")
        .output()
        .with_context(|| format!("running {} --print", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} --print failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if NAMES.iter().all(|n| dir.join(n).is_file()) {
        return Ok(dir);
    }
    eprintln!(
        "[ringstore-e2e] the Kubernetes control plane is not built yet: running {} (the first time takes 10-25 minutes)",
        script.display()
    );
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!(
            "building the Kubernetes control plane failed ({status}); it needs Go 1.24+ and a Go module proxy. Run {} by hand to see why",
            script.display()
        );
    }
    for name in NAMES {
        if !dir.join(name).is_file() {
            bail!(
                "{} finished but {} is missing",
                script.display(),
                dir.join(name).display()
            );
        }
    }
    Ok(dir)
}

/// `e2e/controlplane/build.sh` in this source tree.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("controlplane")
        .join("build.sh")
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough on a test machine).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn path_env() -> Vec<(String, String)> {
    vec![(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
    )]
}

/// A kubeconfig for `server` with a bearer token. The serving certificate is the API
/// server's self-signed one, so TLS verification is off (loopback only).
pub fn kubeconfig_yaml(server: &str, user: &str, token: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: ringstore-e2e
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: ringstore-e2e
  context:
    cluster: ringstore-e2e
    user: {user}
    namespace: {namespace}
current-context: ringstore-e2e
"
    )
}

/// An ECDSA P-256 key pair as (PKCS#8 private key PEM, SubjectPublicKeyInfo PEM): the
/// service-account token signing key.
fn service_account_key() -> Result<(String, String)> {
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("generating the service-account key"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("reading back the service-account key"))?;
    // SubjectPublicKeyInfo for id-ecPublicKey / prime256v1, then the uncompressed point
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki)))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn random_token() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
";

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager with their data and logs in
    /// `dir`, and waits until the API server is ready.
    pub async fn start(bin: &Path, dir: &Path) -> Result<ControlPlane> {
        let mut cp = Self::start_api_server(bin, dir).await?;
        cp.start_controller_manager().await?;
        Ok(cp)
    }

    /// Starts etcd and kube-apiserver and waits until the API server is ready. Install
    /// CRDs now, then [`ControlPlane::start_controller_manager`]: the garbage collector
    /// then watches the custom resources from the start instead of finding them at its
    /// next resync (30 s later).
    pub async fn start_api_server(bin: &Path, dir: &Path) -> Result<ControlPlane> {
        let started = Instant::now();
        std::fs::create_dir_all(dir)?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let mut cp = ControlPlane {
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            server: String::new(),
            kubeconfig: dir.join("kubeconfig"),
            users: vec![],
            audit_log: logs.join("audit.log"),
            procs: vec![],
        };

        // etcd
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_args = vec![
            "--name=e2e".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=e2e={peer_url}"),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        cp.procs.push(Proc::spawn(
            "etcd",
            &bin.join("etcd"),
            &etcd_args,
            &path_env(),
            dir,
            &logs.join("etcd.log"),
        )?);

        // credentials
        let mut tokens_csv = String::new();
        let port = free_port()?;
        cp.server = format!("https://127.0.0.1:{port}");
        for (i, name) in USERS.iter().enumerate() {
            let token = random_token()?;
            // the operator gets only what the shipped RBAC grants it (see
            // `harness::grant_operator_rbac`); the harness's own users are admins
            if *name == OPERATOR_USER {
                tokens_csv.push_str(&format!("{token},{name},uid-{i}\n"));
            } else {
                tokens_csv.push_str(&format!("{token},{name},uid-{i},\"system:masters\"\n"));
            }
            let kubeconfig = if *name == "e2e-admin" {
                cp.kubeconfig.clone()
            } else {
                dir.join(format!("{name}.kubeconfig"))
            };
            std::fs::write(&kubeconfig, kubeconfig_yaml(&cp.server, name, &token, "default"))?;
            cp.users.push(User {
                name: name.to_string(),
                token,
                kubeconfig,
            });
        }
        let tokens = dir.join("tokens.csv");
        std::fs::write(&tokens, tokens_csv)?;
        let (sa_key, sa_pub) = service_account_key()?;
        std::fs::write(dir.join("sa.key"), sa_key)?;
        std::fs::write(dir.join("sa.pub"), sa_pub)?;
        std::fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY)?;

        wait_tcp(
            "etcd",
            etcd_client,
            Duration::from_secs(30),
            &logs.join("etcd.log"),
        )
        .await?;

        // kube-apiserver
        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--allow-privileged=true".to_string(),
            "--authorization-mode=RBAC".to_string(),
            format!("--token-auth-file={}", tokens.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            format!("--service-account-key-file={}", dir.join("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ),
            // pods get no service-account token volume: there is no kubelet to mount it
            "--disable-admission-plugins=ServiceAccount".to_string(),
            "--enable-priority-and-fairness=false".to_string(),
            "--endpoint-reconciler-type=none".to_string(),
            format!("--audit-policy-file={}", dir.join("audit-policy.yaml").display()),
            format!("--audit-log-path={}", cp.audit_log.display()),
            "--audit-log-format=json".to_string(),
            "--audit-log-mode=blocking".to_string(),
            "--v=1".to_string(),
        ];
        cp.procs.push(Proc::spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &apiserver_args,
            &path_env(),
            dir,
            &logs.join("kube-apiserver.log"),
        )?);
        let client = cp.client().await?;
        cp.wait_ready(&client, Duration::from_secs(90)).await?;
        eprintln!(
            "[ringstore-e2e] kube-apiserver ready in {:.1} s at {} (kubeconfig {})",
            started.elapsed().as_secs_f64(),
            cp.server,
            cp.kubeconfig.display()
        );
        Ok(cp)
    }

    /// Starts kube-controller-manager.
    pub async fn start_controller_manager(&mut self) -> Result<()> {
        let cp = self;
        let bin = cp.bin.clone();
        let dir = cp.dir.clone();
        let logs = dir.join("logs");
        let kcm = cp.user("kube-controller-manager")?.kubeconfig.clone();
        // No endpoints/endpointslice controllers: pod IPs are loopback addresses, which
        // EndpointSlice validation refuses, and pods have no node. The PVC protection
        // controller lets a deleted claim go once no pod uses it (the admission plugin puts
        // its finalizer on every claim).
        let kcm_args = vec![
            format!("--kubeconfig={}", kcm.display()),
            "--controllers=statefulset-controller,garbage-collector-controller,disruption-controller,serviceaccount-controller,namespace-controller,replicaset-controller,deployment-controller,job-controller,persistentvolumeclaim-protection-controller"
                .to_string(),
            "--leader-elect=false".to_string(),
            "--secure-port=0".to_string(),
            "--concurrent-statefulset-syncs=5".to_string(),
            "--v=1".to_string(),
        ];
        cp.procs.push(Proc::spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &kcm_args,
            &path_env(),
            &dir,
            &logs.join("kube-controller-manager.log"),
        )?);
        tokio::time::sleep(Duration::from_millis(300)).await;
        cp.check_alive()
    }

    pub fn user(&self, name: &str) -> Result<&User> {
        self.users
            .iter()
            .find(|u| u.name == name)
            .with_context(|| format!("no control-plane user {name}"))
    }

    /// A client with the admin credentials.
    pub async fn client(&self) -> Result<kube::Client> {
        client_for(&self.kubeconfig).await
    }

    /// A client acting as `user`.
    pub async fn client_as(&self, user: &str) -> Result<kube::Client> {
        client_for(&self.user(user)?.kubeconfig).await
    }

    async fn wait_ready(&mut self, client: &kube::Client, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            self.check_alive()?;
            let req = http::Request::get("/readyz").body(vec![])?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {timeout:?}: {last}\n{}",
                    self.log_tails(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Fails with the process's log tail when a control-plane process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.try_exited() {
                bail!(
                    "{} exited ({status}); last log lines of {}:\n{}",
                    p.name(),
                    p.log_path().display(),
                    tail(p.log_path(), 60)
                );
            }
        }
        Ok(())
    }

    /// The last lines of every control-plane log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in &self.procs {
            out.push_str(&format!(
                "--- {} ({}):\n{}\n",
                p.name(),
                p.log_path().display(),
                tail(p.log_path(), lines)
            ));
        }
        out
    }

    /// Runs `kubectl` with the admin kubeconfig.
    pub fn kubectl_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.bin.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Stops every process (also done on drop).
    pub async fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop(Duration::from_secs(5)).await;
        }
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Makes ring rustls's process-wide provider (needed when another crate, such as the AWS
/// SDK, also enables aws-lc-rs). Harmless when one is already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn wait_tcp(name: &str, port: u16, timeout: Duration, log: &Path) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not listen on 127.0.0.1:{port} within {timeout:?}; log:\n{}",
                tail(log, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
