//! A small in-memory Kubernetes API server behind `tower_test::mock`: objects as JSON keyed by
//! their URL path, answering GET, POST (create, TokenRequest), server-side apply (the applied
//! object is taken whole: the operator applies whole objects under one field manager with force),
//! merge patches (status, pod template annotations, Event series) and JSON patches (finalizers).
//! Every request is logged with its answer and counted as a step; a test can make the next
//! request matching a method and path fail with a status, before or after it takes effect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::steps::Steps;

/// A request as the fake answered it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub step: u64,
    pub method: Method,
    pub path: String,
    pub body: Value,
    /// The request changed what the API holds (whatever it answered).
    pub took_effect: bool,
}

struct Fault {
    method: Method,
    path_suffix: String,
    status: u16,
    /// The request takes effect and only its answer is lost (a timeout after the write).
    after_effect: bool,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    log: Vec<Logged>,
    faults: Vec<Fault>,
    /// The write at this step takes effect and its answer is lost.
    lose_answer_at: Option<u64>,
    revision: u64,
}

#[derive(Clone)]
pub struct FakeApi {
    steps: Arc<Steps>,
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    pub fn new(steps: Arc<Steps>) -> Self {
        Self {
            steps,
            state: Arc::default(),
        }
    }

    /// A client of this API server (one per operator process), and the task that serves it.
    pub fn client(&self) -> (kube::Client, tokio::task::JoinHandle<()>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        let server = tokio::spawn(async move {
            // Requests of a stopped operator are kept unanswered, as a dead process's would be.
            let mut unanswered = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                match api.answer(request).await {
                    Some(response) => send.send_response(response),
                    None => unanswered.push(send),
                }
            }
        });
        (kube::Client::new(service, "default"), server)
    }

    /// Makes the next request with `method` whose path ends with `path_suffix` fail with `status`
    /// without taking effect.
    pub fn fail_next(&self, method: Method, path_suffix: &str, status: u16) {
        self.push_fault(method, path_suffix, status, false);
    }

    /// Makes the next such request take effect but answer `status` (the answer was lost).
    pub fn lose_answer_of_next(&self, method: Method, path_suffix: &str, status: u16) {
        self.push_fault(method, path_suffix, status, true);
    }

    /// Makes the write at step `n` take effect but answer 504 (its answer was lost).
    pub fn lose_answer_at_step(&self, n: u64) {
        self.lock().lose_answer_at = Some(n);
    }

    fn push_fault(&self, method: Method, path_suffix: &str, status: u16, after_effect: bool) {
        self.lock().faults.push(Fault {
            method,
            path_suffix: path_suffix.to_owned(),
            status,
            after_effect,
        });
    }

    /// Stores `object` at `path` as a test's own write (not a step, not logged).
    pub fn put(&self, path: &str, mut object: Value) {
        let mut state = self.lock();
        state.revision += 1;
        let rv = state.revision.to_string();
        let meta = object["metadata"].as_object_mut().expect("metadata");
        meta.insert("resourceVersion".into(), json!(rv));
        meta.entry("uid").or_insert(json!(format!("uid-{rv}")));
        if object.get("spec").is_some() {
            object["metadata"]
                .as_object_mut()
                .expect("metadata")
                .entry("generation")
                .or_insert(json!(1));
        }
        state.objects.insert(path.to_owned(), object);
    }

    /// Changes the object at `path` as a user would (its generation moves on a spec change).
    pub fn edit(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut state = self.lock();
        let mut object = state.objects.get(path).cloned().expect("object to edit");
        let before = object.clone();
        change(&mut object);
        state.revision += 1;
        stamp_write(&mut object, Some(&before), state.revision);
        state.objects.insert(path.to_owned(), object);
    }

    pub fn raw(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Option<T> {
        self.raw(path)
            .map(|v| serde_json::from_value(v).expect("stored object has its kind's shape"))
    }

    /// Every stored object under `collection` (a path without the name), typed.
    pub fn list<T: DeserializeOwned>(&self, collection: &str) -> Vec<T> {
        let prefix = format!("{collection}/");
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
            .map(|(_, v)| serde_json::from_value(v.clone()).expect("typed object"))
            .collect()
    }

    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// The requests that changed `path` (or its subresources), answered or not.
    pub fn writes_to(&self, path: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| {
                l.method != Method::GET
                    && (l.path == path || l.path.starts_with(&format!("{path}/")))
                    && l.took_effect
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("api lock")
    }

    async fn answer(&self, request: Request<Body>) -> Option<Response<Body>> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        };
        let step = self.steps.enter(format!("kube {method} {path}"))?;
        let mut state = self.lock();
        let fault = state
            .faults
            .iter()
            .position(|f| f.method == method && path.ends_with(&f.path_suffix))
            .map(|i| state.faults.remove(i))
            .or_else(|| {
                (state.lose_answer_at == Some(step) && method != Method::GET).then(|| Fault {
                    method: method.clone(),
                    path_suffix: path.clone(),
                    status: 504,
                    after_effect: true,
                })
            });
        let (status, answer, took_effect) = match &fault {
            Some(f) if !f.after_effect => {
                (f.status, failure(f.status, "injected by the test"), false)
            }
            _ => {
                let (status, answer) = serve(&mut state, &method, &path, &content_type, &body);
                match &fault {
                    Some(f) if status < 300 => (f.status, failure(f.status, "answer lost"), true),
                    _ => (status, answer, status < 300),
                }
            }
        };
        state.log.push(Logged {
            step,
            method,
            path,
            body,
            took_effect,
        });
        Some(
            Response::builder()
                .status(StatusCode::from_u16(status).expect("status"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&answer).expect("JSON")))
                .expect("response"),
        )
    }
}

/// `(object path, subresource)` of a request path such as
/// `/apis/apps/v1/namespaces/app/deployments/web/status`.
fn object_path(path: &str) -> (String, Option<String>) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let prefix = if segments.first() == Some(&"api") {
        2
    } else {
        3
    };
    // namespaces/<ns>/<plural>/<name>/<sub>
    let object_len = prefix + 4;
    if segments.len() > object_len {
        (
            format!("/{}", segments[..object_len].join("/")),
            Some(segments[object_len..].join("/")),
        )
    } else {
        (path.to_owned(), None)
    }
}

fn serve(
    state: &mut State,
    method: &Method,
    path: &str,
    content_type: &str,
    body: &Value,
) -> (u16, Value) {
    let (object, sub) = object_path(path);
    match *method {
        Method::GET => match state.objects.get(&object) {
            Some(found) => (200, found.clone()),
            None => (404, failure(404, "not found")),
        },
        Method::POST if sub.as_deref() == Some("token") => {
            let name = object.rsplit('/').next().unwrap_or_default();
            let mut answer = body.clone();
            answer["status"] = json!({"token": format!("jwt-{name}"), "expirationTimestamp": "2099-01-01T00:00:00Z"});
            (201, answer)
        }
        Method::POST => {
            let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str) else {
                return (422, failure(422, "a created object needs a name"));
            };
            let key = format!("{path}/{name}");
            if state.objects.contains_key(&key) {
                return (409, failure(409, "already exists"));
            }
            let mut created = body.clone();
            state.revision += 1;
            stamp_write(&mut created, None, state.revision);
            state.objects.insert(key, created.clone());
            (201, created)
        }
        Method::PATCH => {
            let existing = state.objects.get(&object).cloned();
            let mut changed = match (content_type, &existing) {
                (t, _) if t.starts_with("application/apply-patch") => {
                    let mut applied = body.clone();
                    if let Some(old) = &existing {
                        for keep in ["uid", "creationTimestamp", "generation"] {
                            if let Some(v) = old["metadata"].get(keep) {
                                applied["metadata"][keep] = v.clone();
                            }
                        }
                        if let Some(status) = old.get("status") {
                            applied["status"] = status.clone();
                        }
                    }
                    applied
                }
                (_, None) => return (404, failure(404, "not found")),
                (t, Some(old)) if t.starts_with("application/merge-patch") => {
                    let mut merged = old.clone();
                    json_patch::merge(&mut merged, body);
                    merged
                }
                (t, Some(old)) if t.starts_with("application/json-patch") => {
                    let mut patched = old.clone();
                    let patch: json_patch::Patch = match serde_json::from_value(body.clone()) {
                        Ok(p) => p,
                        Err(e) => return (400, failure(400, &e.to_string())),
                    };
                    if let Err(e) = json_patch::patch(&mut patched, &patch) {
                        return (422, failure(422, &e.to_string()));
                    }
                    patched
                }
                (t, _) => return (415, failure(415, &format!("unsupported patch type {t}"))),
            };
            state.revision += 1;
            stamp_write(&mut changed, existing.as_ref(), state.revision);
            state.objects.insert(object, changed.clone());
            (200, changed)
        }
        _ => (405, failure(405, "method not allowed")),
    }
}

/// What the API server adds to a written object: a new resourceVersion, a uid on creation, and a
/// new generation when the spec changed.
fn stamp_write(object: &mut Value, before: Option<&Value>, revision: u64) {
    let spec_changed =
        object.get("spec").is_some() && before.and_then(|b| b.get("spec")) != object.get("spec");
    let generation = before
        .and_then(|b| b.pointer("/metadata/generation"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let meta = object["metadata"]
        .as_object_mut()
        .expect("an object with metadata");
    meta.insert("resourceVersion".into(), json!(revision.to_string()));
    meta.entry("uid")
        .or_insert(json!(format!("uid-{revision}")));
    if spec_changed {
        meta.insert("generation".into(), json!(generation + 1));
    }
}

fn failure(code: u16, message: &str) -> Value {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "BadRequest",
    };
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

pub fn secret_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/secrets/{name}")
}

pub fn deployment_path(namespace: &str, name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
}

pub fn resource_path(namespace: &str, plural: &str, name: &str) -> String {
    format!("/apis/vaultkeeper.dev/v1alpha1/namespaces/{namespace}/{plural}/{name}")
}
