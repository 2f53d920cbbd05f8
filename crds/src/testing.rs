//! Builders of small Tenants and Pools for tests (`Tenant::test("t").redundancy(2, 2)`).

use kube::api::ObjectMeta;

use crate::{Pool, PoolSpec, Redundancy, Tenant, TenantSpec};

/// The namespace test objects live in.
pub const NAMESPACE: &str = "ns";

impl Tenant {
    /// A Tenant `name` in [`NAMESPACE`] with image `ringstore:test` and redundancy 2+2.
    pub fn test(name: &str) -> Self {
        let mut t = Tenant::new(
            name,
            TenantSpec {
                image: "ringstore:test".into(),
                image_pull_policy: None,
                redundancy: Redundancy {
                    data: Some(2),
                    parity: Some(2),
                    replicas: None,
                },
                credentials_secret: None,
                cluster_secret: None,
                s3: None,
                resources: None,
            },
        );
        t.metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            ..Default::default()
        };
        t
    }

    pub fn redundancy(mut self, data: u8, parity: u8) -> Self {
        self.spec.redundancy = Redundancy {
            data: Some(data),
            parity: Some(parity),
            replicas: None,
        };
        self
    }

    pub fn image(mut self, image: &str) -> Self {
        self.spec.image = image.into();
        self
    }

    /// A Pool of this Tenant with `servers` servers of 2 volumes of 1Gi.
    pub fn pool(&self, name: &str, servers: i32) -> Pool {
        Pool::test(name, self.metadata.name.as_deref().unwrap_or_default(), servers)
    }
}

impl Pool {
    /// A Pool `name` of Tenant `tenant` with `servers` servers of 2 volumes of 1Gi.
    pub fn test(name: &str, tenant: &str, servers: i32) -> Self {
        let mut p = Pool::new(
            name,
            PoolSpec {
                tenant: tenant.into(),
                servers,
                volumes_per_server: 2,
                volume_size: "1Gi".into(),
                storage_class_name: None,
                resources: None,
                node_selector: Default::default(),
                affinity: None,
                tolerations: Vec::new(),
                topology_spread_constraints: Vec::new(),
                zone: None,
                decommission: false,
                volume_reclaim_policy: None,
            },
        );
        p.metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            uid: Some(format!("uid-pool-{name}")),
            generation: Some(1),
            ..Default::default()
        };
        p
    }

    pub fn volumes(mut self, per_server: i32, size: &str) -> Self {
        self.spec.volumes_per_server = per_server;
        self.spec.volume_size = size.into();
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.spec.zone = Some(zone.into());
        self
    }
}
