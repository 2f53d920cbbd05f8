//! The end-to-end harness binary.
//!
//! `ringstore-e2e up` starts the control plane, the kubelet stand-in and (when built) the
//! operator, and runs until Ctrl-C; `ringstore-e2e build-control-plane` builds the
//! Kubernetes binaries.

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use ringstore_e2e::controlplane::build_script;
use ringstore_e2e::harness::{Env, Options, crd_files, operator_binary};

#[derive(Parser)]
#[command(about = "End-to-end environment for the Ringstore operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a control plane, the kubelet stand-in and the operator; run until Ctrl-C
    Up {
        /// Do not start the operator (the CRDs are still applied when they exist)
        #[arg(long)]
        no_operator: bool,
    },
    /// Build kube-apiserver, kube-controller-manager, kubectl and etcd (once; cached)
    BuildControlPlane,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::BuildControlPlane => {
            let status = std::process::Command::new("bash").arg(build_script()).status()?;
            if !status.success() {
                bail!("{} failed ({status})", build_script().display());
            }
            Ok(())
        }
        Command::Up { no_operator } => {
            let have_crds = !crd_files().is_empty();
            let operator = !no_operator && have_crds && operator_binary().is_ok();
            if !no_operator && !operator {
                eprintln!(
                    "[ringstore-e2e] not starting the operator: {}",
                    if have_crds {
                        "target/debug/ringstore-operator is not built (cargo build -p ringstore-operator)"
                    } else {
                        "crds/*.yaml do not exist yet"
                    }
                );
            }
            let env = Env::start(&Options {
                label: "up".into(),
                crds: have_crds,
                operator,
            })
            .await?;
            let c = &env.cluster;
            println!();
            println!("Control plane: {}", c.server);
            println!("Work folder:   {}", c.dir.display());
            println!(
                "Pod logs:      {}/logs/<namespace>_<pod>.log",
                c.pods_root.display()
            );
            if let Some(log) = &c.operator_log {
                println!("Operator log:  {}", log.display());
            }
            println!();
            println!("Use it with:");
            println!("  export KUBECONFIG={}", c.kubeconfig.display());
            println!("  alias kubectl={}", c.k8s_bin.join("kubectl").display());
            println!("  kubectl get tenants,pools,statefulsets,pods -A");
            println!();
            println!("Ctrl-C stops everything.");
            tokio::signal::ctrl_c().await?;
            eprintln!("[ringstore-e2e] stopping");
            env.stop().await;
            Ok(())
        }
    }
}
