//! The validate step: what the schema cannot check (it sees one object at a time). An
//! invalid spec changes nothing and is reported in the Tenant's conditions until it is fixed.

use kube::ResourceExt;
use ringstore_crds::{Pool, Tenant};

/// Why a Tenant cannot be reconciled as it is, for the `Ready`/`Degraded` conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// CamelCase reason of the condition.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl Invalid {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Checks a Tenant and its Pools; returns the redundancy `(data, parity)`.
pub fn validate(tenant: &Tenant, pools: &[Pool]) -> Result<(u8, u8), Invalid> {
    let name = tenant.name_any();
    if !is_dns_label(&name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) || name.len() > 40 {
        return Err(Invalid::new(
            "InvalidName",
            format!(
                "the Tenant name {name:?} must be a DNS label of at most 40 characters that starts with a letter: recreate it under another name"
            ),
        ));
    }
    let Some((k, m)) = tenant.spec.redundancy.shards() else {
        return Err(Invalid::new(
            "InvalidRedundancy",
            "spec.redundancy must set either data and parity, or replicas",
        ));
    };
    if k == 0 || k > ringstore_crds::MAX_DATA || m > ringstore_crds::MAX_PARITY {
        return Err(Invalid::new(
            "InvalidRedundancy",
            format!(
                "redundancy {k}+{m} is out of range: data must be 1 to {}, parity 0 to {}",
                ringstore_crds::MAX_DATA,
                ringstore_crds::MAX_PARITY
            ),
        ));
    }
    if tenant.spec.image.trim().is_empty() {
        return Err(Invalid::new(
            "InvalidImage",
            "spec.image must name a container image",
        ));
    }
    if pools.is_empty() {
        return Err(Invalid::new(
            "NoPools",
            format!(
                "no Pool that stays refers to this Tenant (decommissioned and deleted pools do not count: \
                 their data needs another pool to move to): create a Pool with spec.tenant: {name}, or delete \
                 the Tenant to delete its data"
            ),
        ));
    }
    for p in pools {
        let pool = p.name_any();
        let sts = crate::desired::statefulset(&name, &pool);
        if !is_dns_label(&pool) || sts.len() > 52 {
            return Err(Invalid::new(
                "InvalidPool",
                format!(
                    "pool {pool}: the StatefulSet name {sts} must be a DNS label of at most 52 characters: use a shorter Pool name"
                ),
            ));
        }
        if p.spec.servers < 1 || p.spec.volumes_per_server < 1 {
            return Err(Invalid::new(
                "InvalidPool",
                format!("pool {pool}: servers and volumesPerServer must be at least 1"),
            ));
        }
    }
    let servers: i64 = pools.iter().map(|p| i64::from(p.spec.servers)).sum();
    let width = i64::from(k) + i64::from(m);
    // every shard of an object goes to its own server: fewer servers than shards would put
    // several shards of an object on one server, and losing it would lose more than `m`
    if servers < width {
        return Err(Invalid::new(
            "NotEnoughServers",
            format!(
                "redundancy {k}+{m} puts every object on {width} servers but the pools that stay have {servers} in total: add servers or pools, choose a smaller redundancy, or keep the servers a shrink or decommission would remove"
            ),
        ));
    }
    Ok((k, m))
}

/// Checks the credentials Secret's content (a user-provided Secret may be incomplete).
pub fn validate_credentials(
    secret_name: &str,
    access: Option<&str>,
    secret: Option<&str>,
) -> Result<(), Invalid> {
    let problem = match (access, secret) {
        (None, _) => Some("has no key accessKey"),
        (_, None) => Some("has no key secretKey"),
        (Some(a), _) if a.len() < 3 => Some("has an accessKey shorter than 3 characters"),
        (_, Some(s)) if s.len() < 8 => Some("has a secretKey shorter than 8 characters"),
        _ => None,
    };
    match problem {
        Some(p) => Err(Invalid::new(
            "InvalidCredentials",
            format!(
                "Secret {secret_name} {p}: fix the Secret (keys accessKey, at least 3 characters, and secretKey, at least 8)"
            ),
        )),
        None => Ok(()),
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_servers_for_the_redundancy() {
        let t = Tenant::test("t").redundancy(4, 2);
        assert_eq!(validate(&t, &[t.pool("a", 6)]), Ok((4, 2)));
        assert_eq!(validate(&t, &[t.pool("a", 3), t.pool("b", 3)]), Ok((4, 2)));
        let err = validate(&t, &[t.pool("a", 5)]).unwrap_err();
        assert_eq!(err.reason, "NotEnoughServers");
        assert!(
            err.message.contains("4+2") && err.message.contains("5 in total"),
            "{}",
            err.message
        );
    }

    #[test]
    fn replicas_form() {
        let mut t = Tenant::test("t");
        t.spec.redundancy = serde_yaml::from_str("{replicas: 3}").unwrap();
        assert_eq!(validate(&t, &[t.pool("a", 3)]), Ok((1, 2)));
        assert_eq!(
            validate(&t, &[t.pool("a", 2)]).unwrap_err().reason,
            "NotEnoughServers"
        );
        t.spec.redundancy = serde_yaml::from_str("{replicas: 3, data: 2, parity: 1}").unwrap();
        assert_eq!(
            validate(&t, &[t.pool("a", 3)]).unwrap_err().reason,
            "InvalidRedundancy"
        );
    }

    #[test]
    fn no_pools() {
        let t = Tenant::test("t");
        let err = validate(&t, &[]).unwrap_err();
        assert_eq!(err.reason, "NoPools");
        assert!(err.message.contains("spec.tenant: t"));
    }

    #[test]
    fn names_must_fit() {
        let t = Tenant::test("t");
        let long = "p".repeat(51);
        assert_eq!(
            validate(&t, &[t.pool(&long, 4)]).unwrap_err().reason,
            "InvalidPool"
        );
        let t = Tenant::test("1abc");
        assert_eq!(validate(&t, &[t.pool("a", 4)]).unwrap_err().reason, "InvalidName");
    }

    #[test]
    fn credentials() {
        assert!(validate_credentials("s", Some("abc"), Some("12345678")).is_ok());
        let e = validate_credentials("s", Some("ab"), Some("12345678")).unwrap_err();
        assert!(e.message.contains("accessKey shorter"));
        let e = validate_credentials("mine", Some("abc"), None).unwrap_err();
        assert!(e.message.starts_with("Secret mine has no key secretKey"));
    }
}
