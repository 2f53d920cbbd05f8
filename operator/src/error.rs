//! Errors of a reconcile. An invalid spec is not an error (it is reported in the status and
//! waits for a change); these are transient and retried with backoff.

use crate::admin::AdminError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("admin API: {0}")]
    Admin(#[from] AdminError),
    #[error("encoding an object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the Tenant has no namespace")]
    NoNamespace,
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Admin(_) => "admin",
            Self::Json(_) => "json",
            Self::NoNamespace => "namespace",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
