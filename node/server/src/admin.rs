//! The admin API (JSON over HTTP under `/_ringstore/admin/v1/`), authenticated with a bearer
//! token. For now the token is the node's S3 secret key; the cluster will have its own secret.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use ringstore_object::ObjectStore;
use serde_json::{Value, json};

use crate::http::AppState;

/// One drive as seen by status and metrics.
pub struct DriveState {
    pub id: String,
    pub path: String,
    pub online: bool,
    /// Bytes used and available on the drive's file system, when `df` answered.
    pub usage: Option<(u64, u64)>,
}

/// Checks every drive and samples its usage, off the async runtime (both touch the disk and
/// `usage` runs `df`).
pub async fn drive_states(store: &ObjectStore) -> Vec<DriveState> {
    let drives = store.local_drives().to_vec();
    let sampled = tokio::task::spawn_blocking(move || {
        drives
            .iter()
            .map(|d| DriveState {
                id: d.id().to_string(),
                path: d.root().display().to_string(),
                online: d.check().is_ok(),
                usage: d.usage(),
            })
            .collect::<Vec<_>>()
    })
    .await;
    sampled.unwrap_or_default()
}

/// Whether `req` carries `Authorization: Bearer <token>` with the admin token.
fn authorized(req: &Request, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // compare in time independent of where the first difference is
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// Every admin route: authentication, then the handler.
pub async fn admin(State(state): State<AppState>, req: Request) -> Response {
    if !authorized(&req, &state.admin_token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "an admin token is required: send Authorization: Bearer <token>",
        );
    }
    let method = req.method().clone();
    match (method, req.uri().path()) {
        (http::Method::GET, "/_ringstore/admin/v1/status") => Json(status(&state).await).into_response(),
        (http::Method::GET, "/_ringstore/admin/v1/layout") => Json(layout_doc(&state)).into_response(),
        (http::Method::POST, "/_ringstore/admin/v1/layout") => apply_layout(&state, req).await,
        (http::Method::GET, "/_ringstore/admin/v1/transition") => match transition_doc(&state).await {
            Ok(doc) => Json(doc).into_response(),
            Err(r) => r,
        },
        (http::Method::POST, "/_ringstore/admin/v1/transition") => change_transition(&state, req).await,
        (_, "/_ringstore/admin/v1/transition") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "use GET or POST",
        ),
        (_, "/_ringstore/admin/v1/status") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "use GET")
        }
        (_, "/_ringstore/admin/v1/layout") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "use GET or POST",
        ),
        _ => error(StatusCode::NOT_FOUND, "NotFound", "no such admin endpoint"),
    }
}

/// One drive as peers report it over RPC.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct DriveWire {
    pub id: String,
    pub path: String,
    pub online: bool,
    pub bytes_used: Option<u64>,
    pub bytes_available: Option<u64>,
}

/// This node's drives, for `/rpc/v1/node/drives`.
pub async fn local_drives(store: &ObjectStore) -> Vec<DriveWire> {
    drive_states(store)
        .await
        .into_iter()
        .map(|d| DriveWire {
            id: d.id,
            path: d.path,
            online: d.online,
            bytes_used: d.usage.map(|u| u.0),
            bytes_available: d.usage.map(|u| u.1),
        })
        .collect()
}

/// The status document: this node, every member with its drives (asked over RPC; a node
/// that does not answer within 2 s is shown offline), the control plane and healing.
pub async fn status(state: &AppState) -> Value {
    let store = &state.store;
    let me = state.node_name.clone();
    let cluster = state.cluster.as_ref().map(|c| c.status());
    let members = cluster.as_ref().map(|c| c.members.clone()).unwrap_or_default();
    let layout = store.layout();
    let asked = members.iter().filter(|m| m.name != me).map(|m| {
        let client = state.client.clone();
        let (name, addr) = (m.name.clone(), m.rpc_addr.clone());
        async move {
            let got = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                client.call::<_, Vec<DriveWire>>(&addr, "/node/drives", &()),
            )
            .await;
            (name, got.ok().and_then(|r| r.ok()))
        }
    });
    let mut answers: std::collections::HashMap<String, Option<Vec<DriveWire>>> =
        futures::future::join_all(asked).await.into_iter().collect();
    answers.insert(me.clone(), Some(local_drives(store).await));
    let mut names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    if !names.contains(&me) {
        names.push(me.clone());
    }
    for n in &layout.nodes {
        if !names.contains(&n.name) {
            names.push(n.name.clone());
        }
    }
    let mut nodes = Vec::new();
    let mut all_drives = Vec::new();
    for name in &names {
        let member = members.iter().find(|m| &m.name == name);
        let in_layout = layout.nodes.iter().find(|n| &n.name == name);
        let answer = answers.remove(name).flatten();
        let online = answer.is_some();
        let drives: Vec<Value> = match &answer {
            Some(ds) => ds
                .iter()
                .map(|d| {
                    json!({
                        "id": d.id, "node": name, "path": d.path,
                        "state": if d.online { "online" } else { "offline" },
                        "bytes_used": d.bytes_used, "bytes_available": d.bytes_available,
                    })
                })
                .collect(),
            None => in_layout
                .map(|n| {
                    n.drives
                        .iter()
                        .map(|d| json!({"id": d.id, "node": name, "state": "offline"}))
                        .collect()
                })
                .unwrap_or_default(),
        };
        all_drives.extend(drives.iter().cloned());
        nodes.push(json!({
            "name": name,
            "zone": member.map(|m| m.zone.clone()).or(in_layout.map(|n| n.zone.clone())),
            "rpc_address": member.map(|m| m.rpc_addr.clone()),
            "state": if online { "online" } else { "offline" },
            "in_layout": in_layout.is_some(),
            "drives": drives.len(),
        }));
    }
    let online = all_drives.iter().filter(|d| d["state"] == "online").count();
    let used: u64 = all_drives.iter().filter_map(|d| d["bytes_used"].as_u64()).sum();
    let available: u64 = all_drives
        .iter()
        .filter_map(|d| d["bytes_available"].as_u64())
        .sum();
    json!({
        "node": me,
        "version": env!("CARGO_PKG_VERSION"),
        "redundancy": store.redundancy().to_string(),
        "layout_version": store.layout_version(),
        "nodes": nodes,
        "drives": all_drives,
        "capacity": {
            "drives_total": all_drives.len(),
            "drives_online": online,
            "bytes_used": used,
            "bytes_available": available,
        },
        "cluster": cluster,
        "healing": store.heal_stats(),
        "transition": state.cluster.as_ref().and_then(|c| c.transition()).map(|t| transition_summary(&t)),
    })
}

fn layout_doc(state: &AppState) -> Value {
    let layout = state.store.layout();
    json!({
        "version": layout.version,
        "redundancy": layout.redundancy.to_string(),
        "nodes": layout.nodes,
        "partitions": ringstore_ring::PARTITIONS,
    })
}

/// What `POST /layout` accepts: the nodes to place data on (default: every registered
/// member) and the redundancy (default: unchanged).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LayoutRequest {
    #[serde(default)]
    nodes: Option<Vec<String>>,
    #[serde(default)]
    redundancy: Option<String>,
}

/// Whether the data plane can serve `next` after `current`: a transition moves shards
/// between placements onto drives that join and off nodes that leave (a drain; they keep
/// serving their data until it has moved), and re-encodes every object when the redundancy
/// changes. Draining single drives of a node that stays is not built yet (a node registers
/// its drives whole): refused.
fn servable(
    current: &ringstore_ring::Layout,
    nodes: &[ringstore_ring::NodeSpec],
) -> Result<(), (&'static str, String)> {
    let shrunk: Vec<String> = current
        .nodes
        .iter()
        .filter(|n| {
            nodes
                .iter()
                .find(|m| m.name == n.name)
                .is_some_and(|m| n.drives.iter().any(|d| !m.drives.iter().any(|e| e.id == d.id)))
        })
        .map(|n| format!("on {}", n.name))
        .collect();
    if !shrunk.is_empty() {
        return Err((
            "DriveRemovalUnsupported",
            format!(
                "drives cannot leave a node that stays in the layout yet (drain the whole node \
                 instead): {}",
                shrunk.join(", ")
            ),
        ));
    }
    Ok(())
}

async fn apply_layout(state: &AppState, req: Request) -> Response {
    let Some(cluster) = &state.cluster else {
        return error(
            StatusCode::CONFLICT,
            "NoCluster",
            "this node runs without a control plane",
        );
    };
    let body = match http_body_util::BodyExt::collect(http_body_util::Limited::new(req.into_body(), 1 << 20))
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "InvalidRequest", &e.to_string()),
    };
    let request: LayoutRequest = if body.is_empty() {
        LayoutRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    &format!("invalid layout request: {e}"),
                );
            }
        }
    };
    let current = state.store.layout();
    let redundancy = match request
        .redundancy
        .as_deref()
        .map(str::parse::<ringstore_ring::Redundancy>)
    {
        None => current.redundancy,
        Some(Ok(r)) => r,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, "InvalidRedundancy", &e.to_string()),
    };
    let members = cluster.status().members;
    // drives a finished drain retired hold stale data: their node comes back with new ones
    let retired = cluster.retired_drives();
    let stale = |m: &ringstore_cluster::MemberInfo| m.drives.iter().any(|d| retired.contains(&d.id));
    let wanted: Vec<String> = request.nodes.unwrap_or_else(|| {
        members
            .iter()
            .filter(|m| !stale(m))
            .map(|m| m.name.clone())
            .collect()
    });
    let mut nodes = Vec::new();
    for name in &wanted {
        let Some(m) = members.iter().find(|m| &m.name == name) else {
            return error(
                StatusCode::BAD_REQUEST,
                "UnknownNode",
                &format!("node {name} is not a member of the cluster"),
            );
        };
        if stale(m) {
            return error(
                StatusCode::BAD_REQUEST,
                "DrainedNode",
                &format!(
                    "node {name} was drained out of the layout and its drives hold stale data: \
                     start it with new, empty drives to add it back"
                ),
            );
        }
        nodes.push(ringstore_ring::NodeSpec {
            name: m.name.clone(),
            zone: m.zone.clone(),
            drives: m.drives.clone(),
        });
    }
    if nodes == current.nodes && redundancy == current.redundancy {
        return Json(layout_doc(state)).into_response();
    }
    if let Err((code, message)) = servable(&current, &nodes) {
        return error(StatusCode::BAD_REQUEST, code, &message);
    }
    // placed from the current layout, so that only the shards whose drive changes move
    let layout = match current.next(redundancy, nodes) {
        Ok(layout) => layout,
        Err(e) => return error(StatusCode::BAD_REQUEST, "InvalidLayout", &e.to_string()),
    };
    match cluster.propose_layout(layout.clone()).await {
        Err(ringstore_cluster::Error::Rejected(
            r @ ringstore_cluster::Rejection::TransitionRunning { .. },
        )) => error(
            StatusCode::CONFLICT,
            "TransitionRunning",
            &format!("{r}; wait for it to finish (ringstore admin transition) and apply the layout again"),
        ),
        Ok(()) => Json(json!({
            "version": layout.version,
            "redundancy": layout.redundancy.to_string(),
            "nodes": layout.nodes,
            "partitions": ringstore_ring::PARTITIONS,
        }))
        .into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "LayoutNotApplied",
            &e.to_string(),
        ),
    }
}

/// `GET /transition`: the running (or last) layout transition, cluster-wide progress from
/// Raft, and every member's part of it (asked over RPC).
async fn transition_doc(state: &AppState) -> Result<Value, Response> {
    let Some(cluster) = &state.cluster else {
        return Err(error(
            StatusCode::CONFLICT,
            "NoCluster",
            "this node runs without a control plane",
        ));
    };
    let Some(t) = cluster.transition() else {
        return Ok(json!({ "transition": null }));
    };
    let history = cluster.layout_history();
    let layout = |v: u64| history.iter().find(|l| l.version == v);
    let plan = match (layout(t.from), layout(t.to)) {
        (Some(a), Some(b)) => ringstore_ring::Transition::between(a, b).ok(),
        _ => None,
    };
    let mut nodes = Vec::new();
    let mut total = ringstore_object::MoveStats::default();
    for m in cluster.status().members {
        let report = if m.name == state.node_name {
            Ok(state.transitions.report(&state.store))
        } else {
            state
                .client
                .call::<_, crate::transition::NodeLayout>(&m.rpc_addr, "/node/layout", &())
                .await
                .map_err(|e| e.to_string())
        };
        match report {
            Ok(r) => {
                total.objects_moved += r.moved.objects_moved;
                total.bytes_moved += r.moved.bytes_moved;
                total.move_errors += r.moved.move_errors;
                nodes.push(json!({ "name": m.name, "state": "online", "report": r }));
            }
            Err(e) => nodes.push(json!({ "name": m.name, "state": "offline", "error": e })),
        }
    }
    let done = t.done_count();
    let elapsed = now_nanos().saturating_sub(t.started_nanos) as f64 / 1e9;
    let fraction = done as f64 / t.partitions.max(1) as f64;
    let eta = (t.is_running() && done > 0 && !t.paused).then(|| elapsed * (1.0 - fraction) / fraction);
    let phase = phase_name(&t);
    Ok(json!({
        "transition": {
            "from": t.from,
            "to": t.to,
            "kind": plan.as_ref().map(|p| json!(p.kind)).unwrap_or(json!(t.kind)),
            "phase": phase,
            "paused": t.paused,
            "throttle": t.throttle,
            "partitions": t.partitions,
            "partitions_done": done,
            "percent": (fraction * 1000.0).round() / 10.0,
            "slots_moving": plan.as_ref().map(|p| p.moved_slots()),
            "slots_minimum": plan.as_ref().map(|p| p.minimum_slots()),
            "drives_arriving": plan.as_ref().map(|p| p.arriving.clone()),
            "drives_leaving": plan.as_ref().map(|p| p.leaving.clone()),
            "elapsed_seconds": elapsed.round(),
            "eta_seconds": eta.map(f64::round),
            "objects_moved": total.objects_moved,
            "bytes_moved": total.bytes_moved,
            "errors": total.move_errors,
            "nodes": nodes,
        }
    }))
}

/// The Raft state of a transition as `status` shows it (the operator reads it from there).
fn transition_summary(t: &ringstore_cluster::TransitionState) -> Value {
    let phase = phase_name(t);
    let done = t.done_count();
    json!({
        "from": t.from,
        "to": t.to,
        "kind": t.kind,
        "phase": phase,
        "paused": t.paused,
        "partitions": t.partitions,
        "partitions_done": done,
        "percent": (done as f64 * 1000.0 / t.partitions.max(1) as f64).round() / 10.0,
    })
}

fn phase_name(t: &ringstore_cluster::TransitionState) -> &'static str {
    match (t.phase, t.paused) {
        (ringstore_cluster::Phase::Finished, _) => "finished",
        (ringstore_cluster::Phase::Syncing, _) => "syncing",
        (_, true) => "paused",
        _ => "moving",
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What `POST /transition` accepts: pause or resume, and a new throttle.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TransitionRequest {
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default)]
    bytes_per_sec: Option<u64>,
    #[serde(default)]
    concurrency: Option<u32>,
}

async fn change_transition(state: &AppState, req: Request) -> Response {
    let Some(cluster) = &state.cluster else {
        return error(
            StatusCode::CONFLICT,
            "NoCluster",
            "this node runs without a control plane",
        );
    };
    let body = match http_body_util::BodyExt::collect(http_body_util::Limited::new(req.into_body(), 1 << 16))
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "InvalidRequest", &e.to_string()),
    };
    let request: TransitionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                &format!("invalid transition request: {e}"),
            );
        }
    };
    if request.concurrency == Some(0) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidThrottle",
            "concurrency must be at least 1",
        );
    }
    let Some(t) = cluster.transition().filter(|t| t.is_running()) else {
        return error(
            StatusCode::CONFLICT,
            "NoTransition",
            "no layout transition is running",
        );
    };
    let failed = |e: ringstore_cluster::Error| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "TransitionNotChanged",
            &e.to_string(),
        )
    };
    if let Some(paused) = request.paused
        && let Err(e) = cluster.pause_transition(t.to, paused).await
    {
        return failed(e);
    }
    if request.bytes_per_sec.is_some() || request.concurrency.is_some() {
        let throttle = ringstore_cluster::Throttle {
            bytes_per_sec: request.bytes_per_sec.unwrap_or(t.throttle.bytes_per_sec),
            concurrency: request.concurrency.unwrap_or(t.throttle.concurrency),
        };
        if let Err(e) = cluster.throttle_transition(t.to, throttle).await {
            return failed(e);
        }
    }
    match transition_doc(state).await {
        Ok(doc) => Json(doc).into_response(),
        Err(r) => r,
    }
}
