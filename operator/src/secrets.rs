//! The Secrets the operator generates: created once with random content, never updated (an
//! overwritten key would lock clients out and split the cluster).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use rand::Rng;
use rand::distr::Alphanumeric;
use ringstore_crds::Tenant;

use crate::desired::{self, ACCESS_KEY, CLUSTER_SECRET_KEY, SECRET_KEY};

fn random(len: usize, upper: bool) -> String {
    let s: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    if upper { s.to_ascii_uppercase() } else { s }
}

/// `<tenant>-credentials` with a random 20-character access key and 40-character secret key.
pub fn new_credentials(tenant: &Tenant) -> Secret {
    secret(
        tenant,
        desired::credentials_secret(tenant),
        BTreeMap::from([
            (ACCESS_KEY.to_owned(), random(20, true)),
            (SECRET_KEY.to_owned(), random(40, false)),
        ]),
    )
}

/// `<tenant>-cluster` with a random 48-character cluster secret.
pub fn new_cluster_secret(tenant: &Tenant) -> Secret {
    secret(
        tenant,
        desired::cluster_secret(tenant),
        BTreeMap::from([(CLUSTER_SECRET_KEY.to_owned(), random(48, false))]),
    )
}

fn secret(tenant: &Tenant, name: String, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: tenant.namespace(),
            labels: Some(desired::child_labels(&tenant.name_any())),
            owner_references: tenant.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        string_data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// A key of a Secret as text (from `data`, or `stringData` of an object not yet stored).
pub fn value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key).cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_random_and_long_enough() {
        let t = Tenant::test("t");
        let a = new_credentials(&t);
        let b = new_credentials(&t);
        assert_eq!(a.metadata.name.as_deref(), Some("t-credentials"));
        let (ak, sk) = (value(&a, ACCESS_KEY).unwrap(), value(&a, SECRET_KEY).unwrap());
        assert!(ak.len() >= 3 && sk.len() >= 8);
        assert_ne!(sk, value(&b, SECRET_KEY).unwrap());
        let c = new_cluster_secret(&t);
        assert_eq!(c.metadata.name.as_deref(), Some("t-cluster"));
        assert!(value(&c, CLUSTER_SECRET_KEY).unwrap().len() >= 32);
        assert_eq!(c.metadata.owner_references.unwrap()[0].controller, Some(true));
    }
}
