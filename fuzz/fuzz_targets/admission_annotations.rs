//! Annotation sets on a minimal Pod, built from the annotation vocabulary so the fuzzer reaches
//! annotation parsing and injection at once; the Pod goes through the same AdmissionReview path
//! as `admission_review`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use vaultkeeper_fuzz::{check_review, webhook_configs};

/// Pod-wide names (native spelling, vault-k8s spelling), plus names owned by others or unknown.
const POD_NAMES: &[(&str, &str)] = &[
    ("inject", "agent-inject"),
    ("status", "agent-inject-status"),
    ("role", "role"),
    ("auth-path", "auth-path"),
    ("vault-namespace", "namespace"),
    ("volume-path", "secret-volume-path"),
    ("pre-populate", "agent-pre-populate"),
    ("pre-populate-only", "agent-pre-populate-only"),
    ("run-as-user", "agent-run-as-user"),
    ("run-as-group", "agent-run-as-group"),
    ("requests-cpu", "agent-requests-cpu"),
    ("requests-mem", "agent-requests-mem"),
    ("limits-cpu", "agent-limits-cpu"),
    ("limits-mem", "agent-limits-mem"),
    ("restarted-for", "agent-image"),
    ("injection", "agent-inject-command-x"),
];

/// Per-secret prefixes (native, vault-k8s).
const SECRET_PREFIXES: &[(&str, &str)] = &[
    ("secret-", "agent-inject-secret-"),
    ("template-", "agent-inject-template-"),
    ("file-", "agent-inject-file-"),
    ("perms-", "agent-inject-perms-"),
    ("volume-path-", "secret-volume-path-"),
    ("template-file-", "agent-inject-template-file-"),
];

/// Values people write, so valid requests are common.
const VALUES: &[&str] = &[
    "true",
    "false",
    "1",
    "0",
    "T",
    "",
    "injected",
    "web",
    "auth/kubernetes",
    "/kubernetes-east/",
    "team-a",
    "/vault/secrets",
    "/db",
    "/",
    "/a/../b",
    "secret/data/web",
    "database/creds/web",
    "0440",
    "400",
    "0999",
    "db-password",
    "a/b",
    "../x",
    "5m",
    "8Mi",
    "32Mi",
    "1e3",
    "0.5",
    "-1",
    "100",
    "65534",
    "{{ with secret \"secret/data/web\" }}{{ .Data.data.password }}{{ end }}",
];

#[derive(Arbitrary, Debug)]
enum Name {
    Pod(u8),
    Secret(u8, String),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Text {
    Known(u8),
    Any(String),
}

impl Text {
    fn get(&self) -> &str {
        match self {
            Text::Known(i) => VALUES[usize::from(*i) % VALUES.len()],
            Text::Any(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    annotations: Vec<(bool, Name, Text)>,
    /// Mount paths the app's containers already use.
    mounts: Vec<Text>,
    volumes: Vec<String>,
    init_container: bool,
    namespace: u8,
}

fn key(native: bool, name: &Name) -> String {
    let prefix = if native {
        "vaultkeeper.dev/"
    } else {
        "vault.hashicorp.com/"
    };
    match name {
        Name::Pod(i) => {
            let (n, c) = POD_NAMES[usize::from(*i) % POD_NAMES.len()];
            format!("{prefix}{}", if native { n } else { c })
        }
        Name::Secret(i, secret) => {
            let (n, c) = SECRET_PREFIXES[usize::from(*i) % SECRET_PREFIXES.len()];
            format!("{prefix}{}{secret}", if native { n } else { c })
        }
        Name::Raw(raw) => raw.clone(),
    }
}

fuzz_target!(|input: Input| {
    let annotations: Map<String, Value> = input
        .annotations
        .iter()
        .map(|(native, name, value)| (key(*native, name), Value::from(value.get())))
        .collect();
    let mounts: Vec<Value> = input
        .mounts
        .iter()
        .enumerate()
        .map(|(i, path)| json!({"name": format!("v{i}"), "mountPath": path.get()}))
        .collect();
    let mut spec = json!({
        "containers": [{"name": "app", "image": "registry.example/web:1", "volumeMounts": mounts}],
    });
    if !input.volumes.is_empty() {
        spec["volumes"] = input
            .volumes
            .iter()
            .map(|name| json!({"name": name, "emptyDir": {}}))
            .collect();
    }
    if input.init_container {
        spec["initContainers"] =
            json!([{"name": "migrate", "image": "registry.example/migrate:1"}]);
    }
    let namespace = ["app1", "kube-system", "default"][usize::from(input.namespace) % 3];
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "4b2e6a3c-fuzz",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "fuzz"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web", "namespace": namespace, "annotations": annotations},
                "spec": spec,
            },
        }
    });
    let body = serde_json::to_vec(&body).expect("JSON");
    for config in webhook_configs() {
        check_review(&body, config);
    }
});
