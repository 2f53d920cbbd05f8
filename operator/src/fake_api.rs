//! A small in-memory stand-in for the Kubernetes API, for checking which requests a reconcile
//! sends (in particular: none that write, in a steady state). Objects are stored by their URL;
//! apply patches replace the object, status patches replace its status. Real behaviour
//! (defaults, validation, the StatefulSet controller) is the end-to-end tests' business.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

#[derive(Clone, Default)]
pub struct FakeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    log: Arc<Mutex<Vec<String>>>,
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn matches(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        obj["metadata"]["labels"][k] == v
    })
}

fn respond(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// RFC 7386 merge patch: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": "NotFound", "code": 404, "message": "not found"})
}

impl FakeApi {
    /// Stores `obj` under its URL, from its apiVersion, kind, namespace and name.
    pub fn insert(&self, obj: Value) {
        let path = Self::path_of(&obj);
        self.objects.lock().unwrap().insert(path, obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    fn path_of(obj: &Value) -> String {
        let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
        let kind = obj["kind"].as_str().unwrap_or_default().to_ascii_lowercase();
        let plural = match kind.as_str() {
            "poddisruptionbudget" => "poddisruptionbudgets".to_string(),
            k => format!("{k}s"),
        };
        let prefix = if api_version.contains('/') {
            format!("/apis/{api_version}")
        } else {
            format!("/api/{api_version}")
        };
        format!(
            "{prefix}/namespaces/{}/{plural}/{}",
            obj["metadata"]["namespace"].as_str().unwrap_or_default(),
            obj["metadata"]["name"].as_str().unwrap_or_default()
        )
    }

    /// `METHOD path` of every request so far.
    /// `(type, reason, note)` of every Event posted, in the order of their names.
    pub fn events(&self) -> Vec<(String, String, String)> {
        let objects = self.objects.lock().expect("lock");
        objects
            .iter()
            .filter(|(k, _)| k.starts_with("/apis/events.k8s.io/"))
            .map(|(_, e)| {
                let field = |f: &str| e[f].as_str().unwrap_or_default().to_string();
                (field("type"), field("reason"), field("note"))
            })
            .collect()
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Requests that change something.
    pub fn writes(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| !r.starts_with("GET "))
            .collect()
    }

    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let me = me.clone();
            async move { Ok::<_, std::convert::Infallible>(me.handle(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    async fn handle(&self, req: Request<kube::client::Body>) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let merge = req
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"application/merge-patch+json");
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.log.lock().unwrap().push(format!("{method} {path}"));
        let mut objects = self.objects.lock().unwrap();
        match method.as_str() {
            "GET" => {
                if let Some(o) = objects.get(&path) {
                    return respond(StatusCode::OK, o);
                }
                let selector = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector="))
                    .map(decode)
                    .unwrap_or_default();
                let prefix = format!("{path}/");
                let items: Vec<Value> = objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                    .map(|(_, v)| v.clone())
                    .filter(|v| matches(v, &selector))
                    .collect();
                let segments = path.split('/').filter(|s| !s.is_empty()).count();
                let collection = if path.starts_with("/apis/") {
                    segments == 6
                } else {
                    segments == 5
                };
                if !collection {
                    return respond(StatusCode::NOT_FOUND, &not_found());
                }
                respond(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            "POST" => {
                let mut obj = body;
                let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let key = format!("{path}/{name}");
                if objects.contains_key(&key) {
                    return respond(
                        StatusCode::CONFLICT,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists"}),
                    );
                }
                obj["metadata"]["uid"] = json!(format!("uid-{name}"));
                objects.insert(key, obj.clone());
                respond(StatusCode::CREATED, &obj)
            }
            "PATCH" => {
                if let Some(base) = path.strip_suffix("/status") {
                    let Some(o) = objects.get_mut(base) else {
                        return respond(StatusCode::NOT_FOUND, &not_found());
                    };
                    o["status"] = body["status"].clone();
                    return respond(StatusCode::OK, o);
                }
                if merge {
                    let Some(o) = objects.get_mut(&path) else {
                        return respond(StatusCode::NOT_FOUND, &not_found());
                    };
                    merge_patch(o, &body);
                    return respond(StatusCode::OK, o);
                }
                let mut obj = body;
                obj["metadata"]["generation"] = json!(1);
                if obj["kind"] == "StatefulSet" {
                    // what the StatefulSet controller would report
                    obj["status"] = json!({"observedGeneration": 1, "replicas": obj["spec"]["replicas"],
                                           "updateRevision": "r1", "currentRevision": "r1"});
                }
                objects.insert(path, obj.clone());
                respond(StatusCode::OK, &obj)
            }
            "DELETE" => match objects.remove(&path) {
                Some(o) => respond(StatusCode::OK, &o),
                None => respond(StatusCode::NOT_FOUND, &not_found()),
            },
            _ => respond(StatusCode::METHOD_NOT_ALLOWED, &json!({})),
        }
    }
}
