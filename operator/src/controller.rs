//! The reconcile driver of a Tenant: dereference -> validate -> build -> apply -> act on the
//! cluster (layout, rolling upgrade) -> status. Only this module talks to the Kubernetes API;
//! the decisions are pure functions in `desired`, `validate` and `assess`.
//!
//! A steady-state reconcile sends no write: children are applied only when their digest
//! annotation differs from the desired one, Secrets are created only when absent, and status is
//! written only when it differs from the stored one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use ringstore_crds::{POOL_FINALIZER, Pool, Tenant, TenantStatus, VolumeReclaimPolicy};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admin::{AdminClient, AdminStatus};
use crate::assess::{self, Activity, Observation, PodView, StsView};
use crate::desired::{self, MANAGER};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::secrets;
use crate::validate::{self, Invalid};

/// Shared state of the reconciles.
pub struct Context {
    pub client: Client,
    pub admin: AdminClient,
    pub metrics: Metrics,
    /// How often a healthy Tenant is refreshed.
    pub resync: Duration,
    /// Consecutive failures per Tenant, for the backoff.
    failures: Mutex<HashMap<ObjectRef<Tenant>, u32>>,
    /// Kubernetes Events about Tenants (`kubectl describe tenant`, `kubectl events`).
    recorder: Recorder,
    /// Per Tenant: the transition last seen finished, and since when.
    finished_seen: Mutex<HashMap<(String, String), (u64, Instant)>>,
}

impl Context {
    pub fn new(client: Client, admin: AdminClient, metrics: Metrics, resync: Duration) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            admin,
            metrics,
            resync,
            failures: Mutex::new(HashMap::new()),
            finished_seen: Mutex::new(HashMap::new()),
        }
    }
}

/// Requeue soon while something is under way (pods starting, a layout or an upgrade step).
const BUSY: Duration = Duration::from_secs(5);
/// Requeue of an invalid Tenant: it mostly waits for a change, but a missing Secret it names
/// is not watched.
const INVALID: Duration = Duration::from_secs(60);

/// Runs the controller until the process is asked to stop.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ours = watcher::Config::default().labels(&format!("{}={MANAGER}", desired::MANAGED_BY_LABEL));
    let tenants = Controller::new(api::<Tenant>(&client, &namespace), watcher::Config::default())
        .owns(api::<StatefulSet>(&client, &namespace), ours.clone())
        .owns(api::<Service>(&client, &namespace), ours.clone())
        .owns(api::<PodDisruptionBudget>(&client, &namespace), ours.clone())
        // only the generated Secrets (labelled) are cached; watching them reports a deleted
        // one at once instead of at the next periodic reconcile. A Secret the user made and
        // named in the Tenant is read when reconciling, not watched
        .owns(api::<Secret>(&client, &namespace), ours.clone())
        .watches(
            api::<Pool>(&client, &namespace),
            watcher::Config::default(),
            |pool| {
                let ns = pool.namespace()?;
                Some(ObjectRef::new(&pool.spec.tenant).within(&ns))
            },
        )
        // pod readiness drives layout changes and rolling upgrades
        .watches(api::<Pod>(&client, &namespace), ours, |pod| {
            let ns = pod.namespace()?;
            let tenant = pod.labels().get(desired::INSTANCE_LABEL)?;
            Some(ObjectRef::new(tenant).within(&ns))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(tenant = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        });
    // deleted Pools whose Tenant is gone: nothing reconciles that Tenant any more
    let pools = Controller::new(api::<Pool>(&client, &namespace), watcher::Config::default())
        .shutdown_on_signal()
        .run(
            release_pool,
            |_, error, _| {
                tracing::warn!(error = %error, "could not release a deleted pool; retrying");
                Action::requeue(Duration::from_secs(10))
            },
            ctx,
        )
        .for_each(|_| async {});
    futures::join!(tenants, pools);
}

/// Backoff of failed reconciles: 2 s doubling to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs((2u64 << failures.min(8)).min(300))
}

fn error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(&*tenant);
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    tracing::warn!(tenant = %tenant.name_any(), namespace = ?tenant.namespace(), error = %error, failures = n, "reconcile failed; retrying");
    Action::requeue(backoff(n - 1))
}

async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let mut res = Reconcile::new(&tenant, &ctx)?.run().await;
    if res.as_ref().is_err_and(Error::is_namespace_terminating) {
        // the namespace controller is deleting the Tenant and its children: recreating
        // them is refused, and retrying would only fill the log
        tracing::debug!(tenant = %tenant.name_any(), namespace = ?tenant.namespace(), "namespace is being deleted; nothing to do");
        res = Ok((Action::await_change(), "deleting"));
    }
    match &res {
        Ok((_, outcome)) => {
            ctx.metrics.reconciled(outcome, started.elapsed());
            ctx.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ObjectRef::from_obj(&*tenant));
        }
        Err(e) => {
            ctx.metrics.reconciled("error", started.elapsed());
            ctx.metrics.failed(e.kind());
        }
    }
    res.map(|(action, _)| action)
}

/// One reconcile of one Tenant.
struct Reconcile<'a> {
    ctx: &'a Context,
    name: String,
    ns: String,
}

impl<'a> Reconcile<'a> {
    fn new(tenant: &Tenant, ctx: &'a Context) -> Result<Self> {
        Ok(Self {
            ctx,
            name: tenant.name_any(),
            ns: tenant.namespace().ok_or(Error::NoNamespace)?,
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    /// Returns the next action and the outcome label for metrics.
    async fn run(&self) -> Result<(Action, &'static str)> {
        // a fresh copy: the cached one may predate our last status write
        let Some(tenant) = self.api::<Tenant>().get_opt(&self.name).await? else {
            return Ok((Action::await_change(), "gone"));
        };
        if tenant.metadata.deletion_timestamp.is_some() {
            // children go with it through their owner references
            return Ok((Action::await_change(), "deleting"));
        }

        // dereference
        let mut all_pools: Vec<Pool> = self
            .api::<Pool>()
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| p.spec.tenant == self.name)
            .collect();
        all_pools.sort_by(|a, b| {
            (a.creation_timestamp(), a.name_any()).cmp(&(b.creation_timestamp(), b.name_any()))
        });
        // every Pool holds a finalizer, so that a deleted one is drained before it goes
        for p in &all_pools {
            if p.metadata.deletion_timestamp.is_none() && !p.finalizers().iter().any(|f| f == POOL_FINALIZER)
            {
                self.set_pool_finalizer(p, true).await?;
            }
        }
        // pools that stay, and those whose servers all leave (their data moves to the others)
        let (mut leaving_pools, pools): (Vec<Pool>, Vec<Pool>) =
            all_pools.into_iter().partition(assess::pool_leaves);
        let secrets_api = self.api::<Secret>();
        let credentials_name = desired::credentials_secret(&tenant);
        let cluster_name = desired::cluster_secret(&tenant);
        let credentials = secrets_api.get_opt(&credentials_name).await?;
        let cluster = secrets_api.get_opt(&cluster_name).await?;
        let labels = desired::selector_string(&desired::instance_labels(&self.name));
        let statefulsets = self
            .api::<StatefulSet>()
            .list(&ListParams::default().labels(&labels))
            .await?
            .items;
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels(&labels))
            .await?
            .items;

        // a deleted Pool that never got servers, or whose servers and volumes are gone, goes
        // at once, even while the Tenant is invalid (nothing is left to drain)
        let mut released = Vec::new();
        for p in leaving_pools
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
        {
            let name = p.name_any();
            let held = p.finalizers().iter().any(|f| f == POOL_FINALIZER);
            let sts = desired::statefulset(&self.name, &name);
            if !held || statefulsets.iter().any(|s| s.name_any() == sts) {
                continue;
            }
            let selector = desired::selector_string(&desired::pool_selector(&self.name, &name));
            let claims = self
                .api::<PersistentVolumeClaim>()
                .list(&ListParams::default().labels(&selector))
                .await?;
            let retained = p.spec.volume_reclaim_policy == Some(VolumeReclaimPolicy::Retain);
            if claims.items.is_empty() || retained {
                tracing::info!(tenant = %self.name, namespace = %self.ns, pool = %name, "deleted pool holds no servers or volumes to delete: releasing it");
                self.set_pool_finalizer(p, false).await?;
                released.push(name);
            }
        }
        leaving_pools.retain(|p| !released.contains(&p.name_any()));

        // validate (the pools that stay must hold the redundancy)
        let shards = validate::validate(&tenant, &pools).and_then(|shards| {
            check_secrets(&tenant, credentials.as_ref(), cluster.as_ref())?;
            Ok(shards)
        });
        let shards = match shards {
            Ok(s) => s,
            Err(invalid) => {
                self.report_invalid(&tenant, &pools, &invalid).await?;
                return Ok((Action::requeue(INVALID), "invalid"));
            }
        };

        // seeds: recorded once, then reused forever
        let recorded = tenant
            .status
            .as_ref()
            .map(|s| s.seeds.clone())
            .unwrap_or_default();
        // and so is the redundancy the cluster was formed with (what the servers start with;
        // a change of spec.redundancy is applied through the admin API, below)
        let formed_recorded = tenant
            .status
            .as_ref()
            .and_then(|s| s.initial_redundancy.as_deref())
            .and_then(parse_shards);
        let formed = formed_recorded
            .or_else(|| redundancy_in_use(&statefulsets))
            .unwrap_or(shards);
        let seeds = if !recorded.is_empty() && formed_recorded.is_some() {
            recorded
        } else {
            let seeds = match recorded.is_empty() {
                false => recorded,
                true => {
                    seeds_in_use(&statefulsets).unwrap_or_else(|| desired::initial_seeds(&tenant, &pools))
                }
            };
            let mut status = tenant.status.clone().unwrap_or_default();
            status.seeds = seeds.clone();
            status.initial_redundancy = Some(format!("{}+{}", formed.0, formed.1));
            self.write_status(&status).await?;
            seeds
        };
        let formed_text = format!("{}+{}", formed.0, formed.1);

        // build: a pool that shrinks keeps its servers running until they are drained
        let running: BTreeMap<String, i32> = statefulsets
            .iter()
            .map(StsView::from_sts)
            .map(|v| (v.pool, v.replicas))
            .collect();
        let want = desired::build(&tenant, &pools, &seeds, shards, formed, &running);

        // apply: first make sure nothing we would overwrite belongs to someone else
        let peers = self.api::<Service>().get_opt(&want.peers.name_any()).await?;
        let s3 = self.api::<Service>().get_opt(&want.s3.name_any()).await?;
        let pdb = self
            .api::<PodDisruptionBudget>()
            .get_opt(&want.pdb.name_any())
            .await?;
        let mut current_sts = Vec::new();
        for s in &want.statefulsets {
            let found = match statefulsets.iter().find(|x| x.name_any() == s.name_any()) {
                Some(x) => Some(x.clone()),
                None => self.api::<StatefulSet>().get_opt(&s.name_any()).await?,
            };
            current_sts.push(found);
        }
        let uid = tenant.uid().unwrap_or_default();
        let mut foreign = Vec::new();
        foreign.extend(not_ours(&peers, "Service", &uid));
        foreign.extend(not_ours(&s3, "Service", &uid));
        foreign.extend(not_ours(&pdb, "PodDisruptionBudget", &uid));
        for s in &current_sts {
            foreign.extend(not_ours(s, "StatefulSet", &uid));
        }
        if !foreign.is_empty() {
            let invalid = Invalid {
                reason: "NameConflict",
                message: format!(
                    "{} already exist(s) and do(es) not belong to this Tenant: rename the Tenant or remove those objects",
                    foreign.join(", ")
                ),
            };
            self.report_invalid(&tenant, &pools, &invalid).await?;
            return Ok((Action::requeue(INVALID), "invalid"));
        }

        // Keys the running nodes were started with cannot be made up again: generating new
        // ones would give restarted pods other keys than the rest (S3 clients and the
        // operator refused by half the cluster, nodes refusing each other).
        let lost: Vec<&str> = [
            (credentials.is_none(), credentials_name.as_str()),
            (cluster.is_none(), cluster_name.as_str()),
        ]
        .into_iter()
        .filter_map(|(missing, name)| missing.then_some(name))
        .collect();
        if !lost.is_empty() && !statefulsets.is_empty() {
            let invalid = Invalid {
                reason: "SecretDeleted",
                message: if lost.len() == 1 {
                    format!(
                        "Secret {} was deleted while the servers run with its keys: recreate it with the same \
                         values (the servers keep them in their environment until they restart), or delete the \
                         Tenant; new keys are not generated for a running cluster",
                        lost[0]
                    )
                } else {
                    format!(
                        "Secrets {} were deleted while the servers run with their keys: recreate them with the \
                         same values (the servers keep them in their environment until they restart), or delete \
                         the Tenant; new keys are not generated for a running cluster",
                        lost.join(" and ")
                    )
                },
            };
            self.report_invalid(&tenant, &pools, &invalid).await?;
            return Ok((Action::requeue(INVALID), "invalid"));
        }
        let mut token = credentials
            .as_ref()
            .and_then(|s| secrets::value(s, desired::SECRET_KEY));
        if credentials.is_none() {
            let s = secrets::new_credentials(&tenant);
            token = secrets::value(&s, desired::SECRET_KEY);
            self.create_if_absent(&s).await?;
        }
        if cluster.is_none() {
            self.create_if_absent(&secrets::new_cluster_secret(&tenant))
                .await?;
        }
        let mut applied = 0;
        applied += self.apply_if_changed(peers.as_ref(), &want.peers).await? as u32;
        applied += self.apply_if_changed(s3.as_ref(), &want.s3).await? as u32;
        applied += self.apply_if_changed(pdb.as_ref(), &want.pdb).await? as u32;
        for (cur, s) in current_sts.iter().zip(&want.statefulsets) {
            applied += self.apply_if_changed(cur.as_ref(), s).await? as u32;
        }

        // observe
        let pool_names: Vec<String> = pools.iter().map(|p| p.name_any()).collect();
        let members = pools
            .iter()
            .flat_map(|p| desired::pod_names(&self.name, &p.name_any(), p.spec.servers))
            .collect();
        let mut expected: BTreeMap<String, Vec<String>> = pools
            .iter()
            .map(|p| {
                let n = p
                    .spec
                    .servers
                    .max(running.get(&p.name_any()).copied().unwrap_or(0));
                (p.name_any(), desired::pod_names(&self.name, &p.name_any(), n))
            })
            .collect();
        let views: Vec<StsView> = statefulsets.iter().map(StsView::from_sts).collect();
        // a StatefulSet without a staying Pool leaves (decommissioned, deleted, or its Pool
        // deleted by an operator that could not drain yet)
        let mut leaving = Vec::new();
        for v in &views {
            if !v.pool.is_empty() && !pool_names.contains(&v.pool) {
                leaving.push(v.pool.clone());
                expected.insert(
                    v.pool.clone(),
                    desired::pod_names(&self.name, &v.pool, v.replicas),
                );
            }
        }
        leaving.sort();
        let mut obs = Observation {
            expected,
            members,
            leaving,
            known_layout: tenant.status.as_ref().and_then(|s| s.layout_version),
            transition: None,
            finished_for: None,
            statefulsets: views,
            pods: pods.iter().map(PodView::from_pod).collect(),
            admin: Err(String::new()),
        };
        let token = token.unwrap_or_default();
        let (admin, admin_ip) = self.admin_status(&obs, &token).await;
        let prev_transition = tenant.status.as_ref().and_then(|s| s.transition.as_ref());
        if let (Ok(a), Some(ip)) = (&admin, admin_ip.as_deref())
            && assess::wants_transition_figures(prev_transition, a)
        {
            match self.ctx.admin.transition(ip, &token).await {
                Ok(detail) => obs.transition = detail,
                Err(e) => tracing::debug!(tenant = %self.name, error = %e, "no transition figures"),
            }
        }
        obs.finished_for = admin.as_ref().ok().and_then(|a| self.finished_for(a));
        obs.admin = admin;

        // act on the cluster: at most one step, and only once the children are in place
        let rollout = assess::rollout(&obs, &pool_names);
        let mut activity = Activity::default();
        let mut busy = applied > 0;
        if applied == 0 {
            let redundancy = format!("{}+{}", shards.0, shards.1);
            if let (Some(change), Some(ip)) = (assess::layout_step(&obs, &redundancy), admin_ip.as_deref()) {
                tracing::info!(
                    tenant = %self.name, namespace = %self.ns, nodes = ?change.nodes,
                    redundancy = ?change.redundancy, "applying a new layout"
                );
                self.ctx.metrics.wrote("post", "Layout");
                let applied = self
                    .ctx
                    .admin
                    .apply_layout(ip, &token, &change.nodes, change.redundancy.as_deref())
                    .await;
                match applied {
                    Ok(version) => {
                        tracing::info!(tenant = %self.name, version, "layout applied");
                        let note = match &change.redundancy {
                            Some(r) => format!(
                                "layout version {version} applied with {} servers and redundancy {r}: \
                                 every object is re-encoded",
                                change.nodes.len()
                            ),
                            None => format!(
                                "layout version {version} applied with {} servers",
                                change.nodes.len()
                            ),
                        };
                        self.event(&tenant, EventType::Normal, "LayoutApplied", note, "ApplyLayout")
                            .await;
                        if let Ok(a) = &mut obs.admin {
                            a.layout_version = version;
                        }
                        activity.layout_applied = Some(change);
                    }
                    // the cluster refuses this layout (for example a server whose drives were
                    // drained and retired, back on the same volumes): say so in the status
                    // instead of failing every reconcile
                    Err(crate::admin::AdminError::Status(_, 400, message)) => {
                        tracing::warn!(tenant = %self.name, namespace = %self.ns, %message, "the cluster refused the layout");
                        activity.layout_refused = Some(message);
                    }
                    Err(e) => return Err(e.into()),
                }
                busy = true;
            } else if let Some(note) = self.remove_drained(&tenant, &pools, &obs, &want).await? {
                activity.servers_removed = Some(note);
                busy = true;
            } else if !rollout.outdated.is_empty() {
                match self.upgrade_gate(&obs, &token).await {
                    Some(wait) => activity.upgrade_waiting = Some(wait),
                    None => {
                        let leader = obs
                            .admin
                            .as_ref()
                            .ok()
                            .and_then(|a| a.cluster.as_ref())
                            .and_then(|c| c.leader.clone());
                        if let Some(pod) = assess::next_restart(&rollout, leader.as_deref()) {
                            self.restart(&pods, &pod).await?;
                            let note = format!("restarting pod {pod} on image {}", tenant.spec.image);
                            let related = ObjectReference {
                                api_version: Some("v1".into()),
                                kind: Some("Pod".into()),
                                name: Some(pod.clone()),
                                namespace: Some(self.ns.clone()),
                                ..Default::default()
                            };
                            self.event_about(
                                &tenant,
                                EventType::Normal,
                                "RollingUpgrade",
                                note,
                                "RestartPod",
                                Some(related),
                            )
                            .await;
                        }
                    }
                }
                busy = true;
            }
        }

        // status
        let mut status =
            assess::tenant_status(&tenant, &pools, (&seeds, &formed_text), &obs, &rollout, &activity);
        let old = tenant.status.clone().unwrap_or_default();
        assess::carry_transitions(&old.conditions, &mut status.conditions, &now());
        if status != old {
            self.write_status(&status).await?;
            if status.phase != old.phase {
                self.phase_event(&tenant, &status).await;
            }
            for (reason, note) in
                assess::transition_events(old.transition.as_ref(), status.transition.as_ref())
            {
                self.event(&tenant, EventType::Normal, reason, note, "Transition")
                    .await;
            }
        }
        for p in pools.iter().chain(&leaving_pools) {
            self.write_pool_status(p, None, Some(&obs)).await?;
        }
        // volumes of servers that are gone, and the finalizers of deleted pools drained
        busy |= self.reclaim(&pools, &leaving_pools, &obs).await?;

        // servers still to remove (after the drain's grace) are looked at again soon
        busy |= obs.expected_pods().len() > obs.members.len();
        // while data moves, the status follows its progress
        busy |= obs
            .admin
            .as_ref()
            .is_ok_and(|a| a.transition.as_ref().is_some_and(|t| t.running()));
        let steady = status.phase.as_deref() == Some("Ready") && !busy;
        let next = if steady { self.ctx.resync } else { BUSY };
        Ok((Action::requeue(next), "ok"))
    }

    /// Adds (or removes) the operator's finalizer on a Pool, with the Pool's resourceVersion
    /// as a precondition (a concurrent change of its finalizers is retried, not overwritten).
    async fn set_pool_finalizer(&self, pool: &Pool, add: bool) -> Result<()> {
        set_pool_finalizer(self.ctx, &self.ns, pool, add).await
    }

    /// How long this operator has seen the transition into the admin status's layout
    /// finished (from its first look; an operator that restarted waits again).
    fn finished_for(&self, admin: &AdminStatus) -> Option<Duration> {
        let t = admin
            .transition
            .as_ref()
            .filter(|t| !t.running() && t.to == admin.layout_version)?;
        let mut seen = self.ctx.finished_seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (self.ns.clone(), self.name.clone());
        let entry = seen.entry(key).or_insert((t.to, Instant::now()));
        if entry.0 != t.to {
            *entry = (t.to, Instant::now());
        }
        Some(entry.1.elapsed())
    }

    /// Removes servers whose data has moved away, at most one step per reconcile: scales a
    /// shrunk pool's StatefulSet down to its servers, or deletes the StatefulSet of a pool
    /// that leaves. Returns what it did, for the status.
    async fn remove_drained(
        &self,
        tenant: &Tenant,
        pools: &[Pool],
        obs: &Observation,
        want: &desired::Desired,
    ) -> Result<Option<String>> {
        for (p, sts) in pools.iter().zip(&want.statefulsets) {
            let name = p.name_any();
            let Some(view) = obs.statefulsets.iter().find(|v| v.pool == name) else {
                continue;
            };
            if view.replicas <= p.spec.servers {
                continue;
            }
            let mut leaving = desired::pod_names(&self.name, &name, view.replicas);
            let leaving = leaving.split_off(p.spec.servers as usize);
            if !assess::drained(obs, &leaving) {
                continue;
            }
            let mut sts = sts.clone();
            if let Some(spec) = sts.spec.as_mut() {
                spec.replicas = Some(p.spec.servers);
            }
            desired::stamp(&mut sts);
            tracing::info!(tenant = %self.name, namespace = %self.ns, pool = %name, servers = ?leaving, "removing drained servers");
            self.apply_if_changed(None, &sts).await?;
            let note = format!(
                "removed servers {} of pool {name}: their data has moved to the servers that stay",
                leaving.join(", ")
            );
            self.event(
                tenant,
                EventType::Normal,
                "ServersRemoved",
                note.clone(),
                "ScaleDown",
            )
            .await;
            return Ok(Some(note));
        }
        for pool in &obs.leaving {
            let servers = assess::pool_servers(obs, &self.name, pool);
            if !assess::drained(obs, &servers) {
                continue;
            }
            let sts = desired::statefulset(&self.name, pool);
            tracing::info!(tenant = %self.name, namespace = %self.ns, pool = %pool, statefulset = %sts, "deleting a drained pool's StatefulSet");
            self.ctx.metrics.wrote("delete", "StatefulSet");
            match self
                .api::<StatefulSet>()
                .delete(&sts, &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            let note = format!(
                "pool {pool} is drained: its data has moved to the other pools; deleted StatefulSet {sts}"
            );
            self.event(
                tenant,
                EventType::Normal,
                "PoolDrained",
                note.clone(),
                "Decommission",
            )
            .await;
            return Ok(Some(note));
        }
        Ok(None)
    }

    /// Deletes the volumes of drained servers whose pods are gone (unless their Pool's
    /// `volumeReclaimPolicy` is `Retain`; volumes of a StatefulSet whose Pool object is gone
    /// are kept), then lets deleted Pools that are fully drained go. Whether something is
    /// still under way.
    async fn reclaim(&self, pools: &[Pool], leaving_pools: &[Pool], obs: &Observation) -> Result<bool> {
        let labels = desired::selector_string(&desired::instance_labels(&self.name));
        let claims = self
            .api::<PersistentVolumeClaim>()
            .list(&ListParams::default().labels(&labels))
            .await?
            .items;
        let policy = |pool: &str| {
            pools
                .iter()
                .chain(leaving_pools)
                .find(|p| p.name_any() == pool)
                .map(|p| p.spec.volume_reclaim_policy.unwrap_or_default())
                .unwrap_or(VolumeReclaimPolicy::Retain)
        };
        let mut busy = false;
        let mut left: BTreeMap<String, usize> = BTreeMap::new();
        for pvc in &claims {
            let Some(pool) = pvc.labels().get(desired::POOL_LABEL).cloned() else {
                continue;
            };
            if policy(&pool) == VolumeReclaimPolicy::Retain {
                continue;
            }
            *left.entry(pool.clone()).or_default() += 1;
            let Some(server) = assess::claim_server(&pvc.name_any(), &self.name, &pool) else {
                continue;
            };
            let wanted = pools
                .iter()
                .find(|p| p.name_any() == pool)
                .map(|p| p.spec.servers)
                .unwrap_or(0);
            if pvc.metadata.deletion_timestamp.is_some()
                || !assess::volume_released(obs, &pool, wanted, &server)
            {
                busy |= pvc.metadata.deletion_timestamp.is_some();
                continue;
            }
            tracing::info!(tenant = %self.name, namespace = %self.ns, claim = %pvc.name_any(), server = %server, "deleting the volume of a drained server");
            self.ctx.metrics.wrote("delete", "PersistentVolumeClaim");
            match self
                .api::<PersistentVolumeClaim>()
                .delete(&pvc.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            busy = true;
        }
        for p in leaving_pools {
            let name = p.name_any();
            if p.metadata.deletion_timestamp.is_none() || !p.finalizers().iter().any(|f| f == POOL_FINALIZER)
            {
                continue;
            }
            let sts_left = obs.statefulsets.iter().any(|v| v.pool == name);
            if sts_left || left.get(&name).copied().unwrap_or(0) > 0 {
                busy = true;
                continue;
            }
            tracing::info!(tenant = %self.name, namespace = %self.ns, pool = %name, "pool drained and deleted: releasing it");
            self.set_pool_finalizer(p, false).await?;
        }
        Ok(busy)
    }

    /// Writes the conditions of an invalid spec (and nothing else).
    async fn report_invalid(&self, tenant: &Tenant, pools: &[Pool], invalid: &Invalid) -> Result<()> {
        tracing::info!(tenant = %self.name, namespace = %self.ns, reason = invalid.reason, message = %invalid.message, "spec cannot be reconciled");
        let old = tenant.status.clone().unwrap_or_default();
        let mut status = assess::invalid_status(tenant, invalid);
        assess::carry_transitions(&old.conditions, &mut status.conditions, &now());
        if status != old {
            self.write_status(&status).await?;
            let note = invalid.message.clone();
            self.event(tenant, EventType::Warning, invalid.reason, note, "Validate")
                .await;
        }
        for p in pools {
            self.write_pool_status(p, Some(invalid), None).await?;
        }
        Ok(())
    }

    /// Publishes an Event about the Tenant. Best effort: a refused Event is logged and the
    /// reconcile goes on. Only transitions publish one, so a steady Tenant writes none.
    ///
    /// Events with the same type, reason, action and `related` object are folded into one
    /// series by the recorder (the first note is kept).
    async fn event(&self, tenant: &Tenant, type_: EventType, reason: &str, note: String, action: &str) {
        self.event_about(tenant, type_, reason, note, action, None).await
    }

    async fn event_about(
        &self,
        tenant: &Tenant,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
        related: Option<ObjectReference>,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: related,
        };
        // not tied to one resourceVersion, so that repeats fold into a series
        let mut regarding = tenant.object_ref(&());
        regarding.resource_version = None;
        self.ctx.metrics.wrote("create", "Event");
        if let Err(e) = self.ctx.recorder.publish(&event, &regarding).await {
            let e = Error::from(e);
            if e.is_namespace_terminating() {
                tracing::debug!(tenant = %self.name, namespace = %self.ns, reason, "no Event: the namespace is being deleted");
            } else {
                tracing::warn!(tenant = %self.name, namespace = %self.ns, reason, error = %e, "could not publish an Event");
            }
        }
    }

    /// The Event of a change of phase (the reason), with the condition that explains it.
    async fn phase_event(&self, tenant: &Tenant, status: &TenantStatus) {
        let phase = status.phase.clone().unwrap_or_default();
        let (type_, condition) = match phase.as_str() {
            "Degraded" => (EventType::Warning, "Degraded"),
            "Upgrading" | "Provisioning" | "Pending" => (EventType::Normal, "Progressing"),
            _ => (EventType::Normal, "Ready"),
        };
        let Some(c) = status.conditions.iter().find(|c| c.type_ == condition) else {
            return;
        };
        // the phase is the reason: the Recorder folds repeats of one reason into a series
        let note = format!("{}: {}", c.reason, c.message);
        self.event(tenant, type_, &phase, note, "Reconcile").await;
    }

    async fn write_status(&self, status: &TenantStatus) -> Result<()> {
        let body = serde_json::json!({
            "apiVersion": Tenant::api_version(&()),
            "kind": Tenant::kind(&()),
            "status": status,
        });
        self.ctx.metrics.wrote("apply-status", "Tenant");
        self.api::<Tenant>()
            .patch_status(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        Ok(())
    }

    async fn write_pool_status(
        &self,
        pool: &Pool,
        invalid: Option<&Invalid>,
        obs: Option<&Observation>,
    ) -> Result<()> {
        let old = pool.status.clone().unwrap_or_default();
        let mut status = assess::pool_status(pool, invalid, obs);
        assess::carry_transitions(&old.conditions, &mut status.conditions, &now());
        if status == old {
            return Ok(());
        }
        let body = serde_json::json!({
            "apiVersion": Pool::api_version(&()),
            "kind": Pool::kind(&()),
            "status": status,
        });
        self.ctx.metrics.wrote("apply-status", "Pool");
        self.api::<Pool>()
            .patch_status(
                &pool.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        Ok(())
    }

    /// Server-side applies `want` unless the live object already carries its digest.
    async fn apply_if_changed<K>(&self, current: Option<&K>, want: &K) -> Result<bool>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        if let Some(cur) = current
            && desired::recorded_digest(cur) == desired::recorded_digest(want)
            && !scaled_by_hand(cur, want)
        {
            return Ok(false);
        }
        let kind = K::kind(&Default::default()).to_string();
        tracing::info!(tenant = %self.name, namespace = %self.ns, kind = %kind, name = %want.name_any(), "applying");
        self.ctx.metrics.wrote("apply", &kind);
        self.api::<K>()
            .patch(
                &want.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(want),
            )
            .await?;
        Ok(true)
    }

    /// Creates a generated Secret; one that appeared meanwhile is left alone.
    async fn create_if_absent(&self, secret: &Secret) -> Result<()> {
        tracing::info!(tenant = %self.name, namespace = %self.ns, name = %secret.name_any(), "creating a Secret");
        self.ctx.metrics.wrote("create", "Secret");
        match self.api::<Secret>().create(&PostParams::default(), secret).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The status document of the first ready server that answers, and its IP.
    async fn admin_status(
        &self,
        obs: &Observation,
        token: &str,
    ) -> (Result<AdminStatus, String>, Option<String>) {
        let candidates = obs.serving_ips();
        if candidates.is_empty() {
            return (Err("no server is ready yet".into()), None);
        }
        let mut last = String::new();
        for (_, ip) in candidates.iter().take(3) {
            match self.ctx.admin.status(ip, token).await {
                Ok(s) => return (Ok(s), Some(ip.clone())),
                Err(e) => {
                    tracing::debug!(tenant = %self.name, error = %e, "admin API did not answer");
                    last = e.to_string();
                }
            }
        }
        (Err(last), None)
    }

    /// Why the next pod of a rolling upgrade cannot restart now, or `None` when it can.
    /// Healing shows only in each node's own status, so every server is asked.
    async fn upgrade_gate(&self, obs: &Observation, token: &str) -> Option<String> {
        if let Some(wait) = assess::unhealthy(obs, &[]) {
            return Some(wait);
        }
        let mut scrubbing = Vec::new();
        for (name, ip) in obs.serving_ips() {
            match self.ctx.admin.status(&ip, token).await {
                Ok(s) if s.healing.scrub_running => scrubbing.push(name),
                Ok(_) => {}
                Err(e) => return Some(format!("{name} did not answer the admin API: {e}")),
            }
        }
        assess::unhealthy(obs, &scrubbing)
    }

    async fn restart(&self, pods: &[Pod], name: &str) -> Result<()> {
        let uid = pods.iter().find(|p| p.name_any() == name).and_then(|p| p.uid());
        tracing::info!(tenant = %self.name, namespace = %self.ns, pod = %name, "rolling upgrade: restarting a server");
        self.ctx.metrics.wrote("delete", "Pod");
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api::<Pod>().delete(name, &dp).await {
            Ok(_) => Ok(()),
            // already gone, or replaced meanwhile: the next reconcile looks again
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// See [`Reconcile::set_pool_finalizer`].
async fn set_pool_finalizer(ctx: &Context, ns: &str, pool: &Pool, add: bool) -> Result<()> {
    let mut finalizers: Vec<String> = pool
        .finalizers()
        .iter()
        .filter(|f| *f != POOL_FINALIZER)
        .cloned()
        .collect();
    if add {
        finalizers.push(POOL_FINALIZER.into());
    }
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": pool.resource_version()},
    });
    ctx.metrics.wrote("patch", "Pool");
    match Api::<Pool>::namespaced(ctx.client.clone(), ns)
        .patch(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Releases a deleted Pool whose Tenant is gone or being deleted: there is nothing left to
/// drain its data into, and the Tenant's StatefulSets go with it.
async fn release_pool(pool: Arc<Pool>, ctx: Arc<Context>) -> Result<Action> {
    if pool.metadata.deletion_timestamp.is_none() || !pool.finalizers().iter().any(|f| f == POOL_FINALIZER) {
        return Ok(Action::await_change());
    }
    let ns = pool.namespace().unwrap_or_default();
    let tenant = Api::<Tenant>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&pool.spec.tenant)
        .await?;
    if tenant.is_some_and(|t| t.metadata.deletion_timestamp.is_none()) {
        // the Tenant's reconcile drains it; look again later in case the Tenant goes first
        // (a namespace being deleted removes both, in no set order)
        return Ok(Action::requeue(Duration::from_secs(15)));
    }
    tracing::info!(pool = %pool.name_any(), namespace = %ns, tenant = %pool.spec.tenant, "the pool's Tenant is gone: releasing the deleted pool");
    set_pool_finalizer(&ctx, &ns, &pool, false).await?;
    Ok(Action::await_change())
}

fn now() -> Time {
    let t = k8s_openapi::jiff::Timestamp::now();
    // whole seconds: what the API stores and returns
    Time(k8s_openapi::jiff::Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// `Kind/name` when the object exists and is not controlled by the Tenant with `uid`.
fn not_ours<K: Resource>(obj: &Option<K>, kind: &str, uid: &str) -> Option<String> {
    let obj = obj.as_ref()?;
    let ours = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid);
    (!ours).then(|| format!("{kind} {}", obj.meta().name.clone().unwrap_or_default()))
}

/// Someone changed a StatefulSet's replicas: put them back although the digest matches.
fn scaled_by_hand<K: Serialize>(current: &K, want: &K) -> bool {
    let replicas = |k: &K| {
        serde_json::to_value(k)
            .ok()
            .and_then(|v| v.pointer("/spec/replicas").cloned())
    };
    replicas(current) != replicas(want)
}

/// The seeds the StatefulSets already run with (a Tenant whose status was lost).
fn seeds_in_use(statefulsets: &[StatefulSet]) -> Option<Vec<String>> {
    let v = env_in_use(statefulsets, "RINGSTORE_SEEDS")?;
    let seeds: Vec<String> = v.split(',').filter(|s| !s.is_empty()).map(String::from).collect();
    (!seeds.is_empty()).then_some(seeds)
}

/// The redundancy the StatefulSets already start their servers with (a Tenant whose status
/// was lost, or written before it recorded one).
fn redundancy_in_use(statefulsets: &[StatefulSet]) -> Option<(u8, u8)> {
    parse_shards(&env_in_use(statefulsets, "RINGSTORE_REDUNDANCY")?)
}

/// The value of the environment variable `name` in the first StatefulSet's server container.
fn env_in_use(statefulsets: &[StatefulSet], name: &str) -> Option<String> {
    statefulsets.iter().find_map(|s| {
        let c = s.spec.as_ref()?.template.spec.as_ref()?.containers.first()?;
        c.env.as_ref()?.iter().find(|e| e.name == name)?.value.clone()
    })
}

/// `(data, parity)` from `data+parity`.
fn parse_shards(s: &str) -> Option<(u8, u8)> {
    let (k, m) = s.split_once('+')?;
    Some((k.trim().parse().ok()?, m.trim().parse().ok()?))
}

/// The Secrets the Tenant names must exist with usable content; generated ones may be absent
/// (they are created) but, when present, must be usable too.
fn check_secrets(
    tenant: &Tenant,
    credentials: Option<&Secret>,
    cluster: Option<&Secret>,
) -> Result<(), Invalid> {
    let cred_name = desired::credentials_secret(tenant);
    match credentials {
        None if tenant.spec.credentials_secret.is_some() => {
            return Err(Invalid {
                reason: "CredentialsSecretMissing",
                message: format!(
                    "Secret {cred_name} (spec.credentialsSecret) does not exist: create it with the keys accessKey and secretKey, or remove spec.credentialsSecret from a new Tenant"
                ),
            });
        }
        None => {}
        Some(s) => validate::validate_credentials(
            &cred_name,
            secrets::value(s, desired::ACCESS_KEY).as_deref(),
            secrets::value(s, desired::SECRET_KEY).as_deref(),
        )?,
    }
    let cluster_name = desired::cluster_secret(tenant);
    match cluster {
        None if tenant.spec.cluster_secret.is_some() => Err(Invalid {
            reason: "ClusterSecretMissing",
            message: format!(
                "Secret {cluster_name} (spec.clusterSecret) does not exist: create it with the key clusterSecret (at least 16 characters)"
            ),
        }),
        Some(s) if secrets::value(s, desired::CLUSTER_SECRET_KEY).is_none_or(|v| v.len() < 16) => {
            Err(Invalid {
                reason: "InvalidClusterSecret",
                message: format!(
                    "Secret {cluster_name} needs the key clusterSecret with at least 16 characters"
                ),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn named_secrets_must_exist() {
        let mut t = Tenant::test("t");
        assert!(
            check_secrets(&t, None, None).is_ok(),
            "generated secrets are created"
        );
        t.spec.credentials_secret = Some("mine".into());
        let e = check_secrets(&t, None, None).unwrap_err();
        assert_eq!(e.reason, "CredentialsSecretMissing");
        assert!(e.message.contains("Secret mine"));
        let good = secret(&[("accessKey", "abc"), ("secretKey", "12345678")]);
        assert!(check_secrets(&t, Some(&good), None).is_ok());
        let short = secret(&[("clusterSecret", "short")]);
        assert_eq!(
            check_secrets(&t, Some(&good), Some(&short)).unwrap_err().reason,
            "InvalidClusterSecret"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(2));
        assert_eq!(backoff(1), Duration::from_secs(4));
        assert_eq!(backoff(20), Duration::from_secs(300));
    }

    #[test]
    fn seeds_are_recovered_from_a_statefulset() {
        let t = Tenant::test("t");
        let pools = vec![t.pool("a", 4)];
        let seeds = desired::initial_seeds(&t, &pools);
        let d = desired::build(&t, &pools, &seeds, (2, 2), (2, 2), &BTreeMap::new());
        assert_eq!(seeds_in_use(&d.statefulsets), Some(seeds));
    }

    #[test]
    fn ownership() {
        let t = Tenant::test("t");
        let d = desired::build(&t, &[t.pool("a", 4)], &[], (2, 2), (2, 2), &BTreeMap::new());
        assert_eq!(not_ours(&Some(d.peers.clone()), "Service", "uid-t"), None);
        assert_eq!(
            not_ours(&Some(d.peers.clone()), "Service", "other").as_deref(),
            Some("Service t-peers")
        );
        assert_eq!(not_ours::<Service>(&None, "Service", "x"), None);
    }
}

/// Reconciles against the in-memory API and a fake admin API: which requests, in which order.
#[cfg(test)]
mod api_tests {
    use serde_json::json;

    use super::*;
    use crate::fake_api::FakeApi;

    const NS: &str = ringstore_crds::testing::NAMESPACE;

    /// An admin API that reports `nodes` online, in the layout, with their drives.
    async fn admin_server(nodes: Vec<String>) -> u16 {
        let doc = json!({
            "node": nodes[0], "redundancy": "2+2", "layout_version": 1,
            "nodes": nodes.iter().map(|n| json!({"name": n, "state": "online", "in_layout": true})).collect::<Vec<_>>(),
            "drives": nodes.iter().map(|n| json!({"id": format!("d-{n}"), "node": n, "path": "/data/0", "state": "online"})).collect::<Vec<_>>(),
            "capacity": {"drives_total": nodes.len(), "drives_online": nodes.len(), "bytes_used": 10, "bytes_available": 1000},
            "cluster": {"leader": nodes[0]},
            "healing": {"scrub_running": false},
        });
        let app = axum::Router::new().route(
            "/_ringstore/admin/v1/status",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    /// A ready pod of the Tenant `t` on the update revision `r1`.
    fn pod(name: &str, pool: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "labels": {
                "app.kubernetes.io/name": "ringstore", "ringstore.io/tenant": "t",
                "app.kubernetes.io/managed-by": "ringstore-operator", "ringstore.io/pool": pool,
                "controller-revision-hash": "r1"}},
            "spec": {"containers": [{"name": "ringstore"}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })
    }

    async fn setup(servers: i32) -> (FakeApi, Arc<Context>, Tenant) {
        let api = FakeApi::default();
        let tenant = Tenant::test("t");
        let pool = tenant.pool("a", servers);
        api.insert(serde_json::to_value(&tenant).unwrap());
        api.insert(serde_json::to_value(&pool).unwrap());
        let names = desired::pod_names("t", "a", servers);
        for n in &names {
            api.insert(pod(n, "a"));
        }
        let port = admin_server(names).await;
        let ctx = Arc::new(Context::new(
            api.client(),
            AdminClient::new(port),
            Metrics::new(),
            Duration::from_secs(30),
        ));
        (api, ctx, tenant)
    }

    async fn reconcile_once(api: &FakeApi, ctx: &Context, tenant: &Tenant) -> (Action, &'static str) {
        api.clear_log();
        Reconcile::new(tenant, ctx).unwrap().run().await.unwrap()
    }

    fn tenant_path() -> String {
        format!("/apis/ringstore.io/v1alpha1/namespaces/{NS}/tenants/t")
    }

    #[tokio::test]
    async fn creates_everything_then_goes_quiet() {
        let (api, ctx, tenant) = setup(4).await;

        // first pass: secrets, then children, then status
        reconcile_once(&api, &ctx, &tenant).await;
        let writes = api.writes();
        let expected = [
            // the finalizer that holds a deleted Pool until it is drained
            format!("PATCH /apis/ringstore.io/v1alpha1/namespaces/{NS}/pools/a"),
            format!("PATCH {}/status", tenant_path()),
            format!("POST /api/v1/namespaces/{NS}/secrets"),
            format!("POST /api/v1/namespaces/{NS}/secrets"),
            format!("PATCH /api/v1/namespaces/{NS}/services/t-peers"),
            format!("PATCH /api/v1/namespaces/{NS}/services/t"),
            format!("PATCH /apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/t"),
            format!("PATCH /apis/apps/v1/namespaces/{NS}/statefulsets/t-a"),
            format!("PATCH {}/status", tenant_path()),
            // the phase changed: an Event says so
            format!("POST /apis/events.k8s.io/v1/namespaces/{NS}/events"),
            format!("PATCH /apis/ringstore.io/v1alpha1/namespaces/{NS}/pools/a/status"),
        ];
        assert_eq!(writes, expected, "all requests: {:#?}", api.requests());
        let events = api.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, "Normal", "{events:?}");
        let stored = api.get(&tenant_path()).unwrap();
        assert_eq!(stored["status"]["seeds"].as_array().unwrap().len(), 4);

        // the StatefulSet now reports its revision: the status settles on Ready
        let tenant: Tenant = serde_json::from_value(stored).unwrap();
        reconcile_once(&api, &ctx, &tenant).await;
        let stored: Tenant = serde_json::from_value(api.get(&tenant_path()).unwrap()).unwrap();
        let status = stored.status.clone().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Ready"), "{status:#?}");
        let events = api.events();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(
            events.iter().any(|e| e.0 == "Normal" && e.1 == "Ready"),
            "{events:?}"
        );
        assert_eq!(status.layout_version, Some(1));
        assert_eq!(status.capacity.unwrap().drives_online, 4);

        // steady state: reads only
        let (action, outcome) = reconcile_once(&api, &ctx, &stored).await;
        assert_eq!(outcome, "ok");
        assert_eq!(
            api.writes(),
            Vec::<String>::new(),
            "all requests: {:#?}",
            api.requests()
        );
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));

        // the secrets were created once and are never rewritten
        let secret = api
            .get(&format!("/api/v1/namespaces/{NS}/secrets/t-credentials"))
            .unwrap();
        assert!(secret["stringData"]["secretKey"].as_str().unwrap().len() >= 8);
    }

    #[tokio::test]
    async fn invalid_spec_writes_only_conditions() {
        let (api, ctx, tenant) = setup(3).await;
        let (_, outcome) = reconcile_once(&api, &ctx, &tenant).await;
        assert_eq!(outcome, "invalid");
        assert_eq!(
            api.writes(),
            [
                format!("PATCH /apis/ringstore.io/v1alpha1/namespaces/{NS}/pools/a"),
                format!("PATCH {}/status", tenant_path()),
                format!("POST /apis/events.k8s.io/v1/namespaces/{NS}/events"),
                format!("PATCH /apis/ringstore.io/v1alpha1/namespaces/{NS}/pools/a/status"),
            ]
        );
        let events = api.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            (events[0].0.as_str(), events[0].1.as_str()),
            ("Warning", "NotEnoughServers")
        );
        let stored: Tenant = serde_json::from_value(api.get(&tenant_path()).unwrap()).unwrap();
        let status = stored.status.clone().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Invalid"));
        assert_eq!(status.conditions[0].reason, "NotEnoughServers");
        // and stays quiet
        reconcile_once(&api, &ctx, &stored).await;
        assert_eq!(api.writes(), Vec::<String>::new());
    }

    /// A deleted Pool that holds no servers or volumes is released at once, even while the
    /// Tenant is invalid (the review found it held for ever: the invalid path returned before
    /// anything released it).
    #[tokio::test]
    async fn a_deleted_pool_without_servers_is_released_while_the_tenant_is_invalid() {
        let (api, ctx, tenant) = setup(3).await;
        let mut gone = tenant.pool("b", 2);
        gone.metadata.finalizers = Some(vec![POOL_FINALIZER.into()]);
        gone.metadata.deletion_timestamp = Some(now());
        gone.metadata.resource_version = Some("7".into());
        api.insert(serde_json::to_value(&gone).unwrap());
        let (_, outcome) = reconcile_once(&api, &ctx, &tenant).await;
        assert_eq!(outcome, "invalid");
        assert!(
            api.writes().contains(&format!(
                "PATCH /apis/ringstore.io/v1alpha1/namespaces/{NS}/pools/b"
            )),
            "{:#?}",
            api.writes()
        );
        let stored = api
            .get(&format!("/apis/ringstore.io/v1alpha1/namespaces/{NS}/pools/b"))
            .unwrap();
        assert_eq!(stored["metadata"]["finalizers"], json!([]), "{stored:#}");
    }

    #[tokio::test]
    async fn outdated_pod_is_restarted_on_a_healthy_cluster() {
        let (api, ctx, tenant) = setup(4).await;
        reconcile_once(&api, &ctx, &tenant).await;
        let mut p = pod("t-a-2", "a");
        p["metadata"]["labels"]["controller-revision-hash"] = json!("r0");
        api.insert(p);
        let stored: Tenant = serde_json::from_value(api.get(&tenant_path()).unwrap()).unwrap();
        reconcile_once(&api, &ctx, &stored).await;
        let writes = api.writes();
        assert!(
            writes.contains(&format!("DELETE /api/v1/namespaces/{NS}/pods/t-a-2")),
            "{writes:#?}"
        );
        assert_eq!(writes.iter().filter(|w| w.starts_with("DELETE")).count(), 1);
        let stored: Tenant = serde_json::from_value(api.get(&tenant_path()).unwrap()).unwrap();
        let progressing = &stored.status.unwrap().conditions[1];
        assert_eq!(progressing.reason, "RollingUpgrade");
        assert_eq!(progressing.message, "3 of 4 pods on image ringstore:test");
    }
}
