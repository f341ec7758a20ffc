//! The router in-process: a real AdmissionReview body in, the AdmissionReview the API server
//! reads out; plus health and metrics.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use vaultkeeper_webhook::inject::WebhookConfig;
use vaultkeeper_webhook::metrics::Metrics;
use vaultkeeper_webhook::server::router;

/// An AdmissionReview as kube-apiserver 1.36 sends it for `kubectl run`.
fn review(uid: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web",
            "namespace": "app1",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web", "namespace": "app1", "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}]}
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

async fn post(app: axum::Router, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let response = app
        .oneshot(
            Request::post("/mutate")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("request"),
        )
        .await
        .expect("infallible router");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, bytes.to_vec())
}

async fn get(app: axum::Router, path: &str) -> (StatusCode, String) {
    let response = app
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("infallible router");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

#[tokio::test]
async fn answers_reviews_and_counts_them() {
    let metrics = Arc::new(Metrics::default());
    let app = router(Arc::new(WebhookConfig::default()), metrics.clone());

    // Opted in: allowed with a base64 JSON patch.
    let body = review(
        "7f1b6c8e-1",
        json!({
            "vault.hashicorp.com/agent-inject": "true",
            "vault.hashicorp.com/role": "web",
            "vault.hashicorp.com/agent-inject-secret-db": "database/creds/web"
        }),
    );
    let (status, bytes) = post(app.clone(), serde_json::to_vec(&body).expect("json")).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&bytes).expect("json answer");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "7f1b6c8e-1");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch_bytes = base64::engine::general_purpose::STANDARD
        .decode(
            response["patch"]
                .as_str()
                .expect("patch is a base64 string"),
        )
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch_bytes).expect("a JSON patch");
    let mut pod = body["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies");
    assert_eq!(
        pod["metadata"]["annotations"]["vaultkeeper.dev/status"],
        "injected"
    );
    assert_eq!(
        pod["spec"]["initContainers"][0]["name"],
        "vaultkeeper-agent-init"
    );
    assert_eq!(pod["spec"]["initContainers"][0]["restartPolicy"], "Always");
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        "/vault/secrets"
    );

    // Malformed annotations: denied with the message, no patch.
    let body = review(
        "7f1b6c8e-2",
        json!({
            "vault.hashicorp.com/agent-inject": "true",
            "vault.hashicorp.com/role": "web",
            "vault.hashicorp.com/agent-inject-secret-db": "database/creds/web",
            "vault.hashicorp.com/agent-inject-perms-db": "0999"
        }),
    );
    let (status, bytes) = post(app.clone(), serde_json::to_vec(&body).expect("json")).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&bytes).expect("json answer");
    let response = &answer["response"];
    assert_eq!(response["uid"], "7f1b6c8e-2");
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    assert!(
        response["status"]["message"]
            .as_str()
            .expect("message")
            .contains("agent-inject-perms-db: \"0999\" is not a file mode"),
        "{response}"
    );
    assert!(response.get("patch").is_none());

    // Not opted in: allowed unchanged.
    let body = review("7f1b6c8e-3", json!({}));
    let (_, bytes) = post(app.clone(), serde_json::to_vec(&body).expect("json")).await;
    let answer: Value = serde_json::from_slice(&bytes).expect("json answer");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());

    // An update is never mutated.
    let mut body = review(
        "7f1b6c8e-4",
        json!({"vault.hashicorp.com/agent-inject": "true"}),
    );
    body["request"]["operation"] = json!("UPDATE");
    let (_, bytes) = post(app.clone(), serde_json::to_vec(&body).expect("json")).await;
    let answer: Value = serde_json::from_slice(&bytes).expect("json answer");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());

    // Garbage: a 400 the API server treats per its failurePolicy.
    let (status, bytes) = post(app.clone(), b"{\"kind\": 1}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&bytes).starts_with("failed to decode the AdmissionReview"));

    let (status, text) = get(app.clone(), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "vaultkeeper_webhook_admissions_total{result=\"injected\"} 1",
        "vaultkeeper_webhook_admissions_total{result=\"denied\"} 1",
        "vaultkeeper_webhook_admissions_total{result=\"skipped\"} 2",
        "vaultkeeper_webhook_admissions_total{result=\"error\"} 1",
        "vaultkeeper_webhook_admission_duration_seconds_count 5",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert_eq!(
        get(app, "/healthz").await,
        (StatusCode::OK, "ok".to_owned())
    );
}
