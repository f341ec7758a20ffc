//! Golden tests of the injection decision: `golden/<case>.pod.json` in, `golden/<case>.patch.json`
//! out. The expected file holds the JSON patch, or `{"skip": reason}` / `{"deny": message}`.
//! Cases whose name starts with `classic-` run without native sidecar support, `probe-` with the
//! startup-probe gate instead of the postStart hook; the namespace is the pod's
//! `metadata.namespace` (default `app`).
//!
//! Every patch must apply, give a valid Pod, and carry agent configurations that the agent's own
//! parser and validator (`agent_contract::AgentConfig::parse`) accept.
//!
//! A mismatch fails with a line diff. `UPDATE_GOLDEN=1 cargo test -p vaultkeeper-webhook --test
//! golden` rewrites the expected files; review the diff before committing them.

use std::path::{Path, PathBuf};

mod common;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use vaultkeeper_webhook::inject::{Decision, StartupGate, WebhookConfig, inject};

fn config_for(case: &str) -> WebhookConfig {
    WebhookConfig {
        agent_image: "registry.example/vaultkeeper-agent:1.0.0".into(),
        vault_addr: "https://vault.vault.svc:8200".into(),
        native_sidecars: !case.starts_with("classic-"),
        startup_gate: if case.starts_with("probe-") {
            StartupGate::StartupProbe
        } else {
            StartupGate::PostStart
        },
        ..WebhookConfig::default()
    }
}

fn cases() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .expect("tests/golden exists")
        .filter_map(|entry| {
            let path = entry.expect("readable directory").path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".pod.json")?
                .to_owned();
            Some((name, path))
        })
        .collect();
    cases.sort();
    cases
}

/// What a case produces, as the JSON stored in its `.patch.json`.
fn outcome(case: &str, pod_json: &Value) -> Value {
    let pod: Pod = serde_json::from_value(pod_json.clone()).expect("the input is a Pod");
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "app".into());
    match inject(&pod, &namespace, &config_for(case)) {
        Decision::Skip(reason) => json!({ "skip": reason.as_str() }),
        Decision::Deny(message) => json!({ "deny": message }),
        Decision::Patch(patch) => {
            check_patch_applies(case, pod_json, &patch);
            serde_json::to_value(&patch).expect("a patch serialises")
        }
    }
}

/// The patch must apply to the pod, give a valid Pod, and carry agent configs the agent accepts.
fn check_patch_applies(case: &str, pod_json: &Value, patch: &json_patch::Patch) {
    let mut patched = pod_json.clone();
    json_patch::patch(&mut patched, patch)
        .unwrap_or_else(|error| panic!("{case}: the patch does not apply: {error}"));
    let _: Pod = serde_json::from_value(patched)
        .unwrap_or_else(|error| panic!("{case}: the patched pod is not a Pod: {error}"));
    common::assert_agent_accepts(case, pod_json, patch);
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|value| value == "1");
    let cases = cases();
    assert!(
        cases.len() >= 20,
        "golden cases went missing: {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for (case, pod_path) in &cases {
        let pod_json: Value =
            serde_json::from_str(&std::fs::read_to_string(pod_path).expect("readable pod file"))
                .unwrap_or_else(|error| panic!("{case}: invalid JSON: {error}"));
        let actual = serde_json::to_string_pretty(&outcome(case, &pod_json)).expect("JSON") + "\n";
        let expected_path = pod_path.with_file_name(format!("{case}.patch.json"));
        if update {
            std::fs::write(&expected_path, &actual).expect("writable golden file");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "--- {case}.patch.json (expected)\n+++ actual\n{}",
                line_diff(&expected, &actual)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden case(s) differ (UPDATE_GOLDEN=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A unified-style line diff (longest common subsequence), enough for files of a few hundred lines.
fn line_diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+{:>4} {}\n", j + 1, b[j]));
            j += 1;
        } else {
            out.push_str(&format!("-{:>4} {}\n", i + 1, a[i]));
            i += 1;
        }
    }
    out
}

#[test]
fn line_diff_shows_changed_lines() {
    let diff = line_diff("a\nb\nc\n", "a\nx\nc\n");
    assert_eq!(diff, "+   2 x\n-   2 b\n");
}
