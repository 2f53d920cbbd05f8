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
    /// Whether the API server refused a write because the namespace is being deleted:
    /// nothing to retry, the Tenant goes with its namespace.
    pub fn is_namespace_terminating(&self) -> bool {
        let Self::Kube(kube::Error::Api(e)) = self else {
            return false;
        };
        let cause = e
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"));
        e.code == 403 && (cause || e.message.contains("because it is being terminated"))
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(status: Status) -> Error {
        Error::Kube(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn a_terminating_namespace_is_told_apart_from_other_refusals() {
        let terminating = Status::failure(
            r#"services "t-peers" is forbidden: unable to create new content in namespace ready because it is being terminated"#,
            "Forbidden",
        )
        .with_code(403);
        assert!(api_error(terminating).is_namespace_terminating());
        let rbac = Status::failure(
            r#"services is forbidden: User "ringstore-operator" cannot create resource "services""#,
            "Forbidden",
        )
        .with_code(403);
        assert!(!api_error(rbac).is_namespace_terminating());
        let conflict = Status::failure("because it is being terminated", "Conflict").with_code(409);
        assert!(!api_error(conflict).is_namespace_terminating());
    }
}
