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
    let drives = store.drives().to_vec();
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
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/_ringstore/admin/v1/status") => {
            Json(status(&state.store, &state.node_name).await).into_response()
        }
        (_, "/_ringstore/admin/v1/status") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "use GET")
        }
        _ => error(StatusCode::NOT_FOUND, "NotFound", "no such admin endpoint"),
    }
}

/// The status document. Drives carry their node's name so the list can span a cluster.
pub async fn status(store: &ObjectStore, node: &str) -> Value {
    let drives = drive_states(store).await;
    let online = drives.iter().filter(|d| d.online).count();
    let used: u64 = drives.iter().filter_map(|d| d.usage).map(|u| u.0).sum();
    let available: u64 = drives.iter().filter_map(|d| d.usage).map(|u| u.1).sum();
    let drives: Vec<Value> = drives
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "node": node,
                "path": d.path,
                "state": if d.online { "online" } else { "offline" },
                "bytes_used": d.usage.map(|u| u.0),
                "bytes_available": d.usage.map(|u| u.1),
            })
        })
        .collect();
    json!({
        "node": node,
        "version": env!("CARGO_PKG_VERSION"),
        "redundancy": store.redundancy().to_string(),
        "layout_version": store.layout_version(),
        "drives": drives,
        "capacity": {
            "drives_total": drives.len(),
            "drives_online": online,
            "bytes_used": used,
            "bytes_available": available,
        },
        "healing": store.heal_stats(),
    })
}
