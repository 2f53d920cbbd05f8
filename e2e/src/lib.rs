//! End-to-end harness for the Ringstore operator: a real Kubernetes control plane on
//! loopback ([`controlplane`]), a kubelet stand-in that runs `ringstore` nodes as pods
//! ([`kubelet`]), and the environment the scenarios use ([`harness`]).

pub mod controlplane;
pub mod harness;
pub mod kubelet;
pub mod process;
pub mod rewrite;

pub use harness::{Cluster, Env, Options, S3Target};
