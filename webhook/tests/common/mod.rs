//! Shared by the webhook's test binaries: reading back the agent configurations a patch injects,
//! through the agent's own parser and validator.

#![allow(dead_code)] // each test binary uses a different part

use agent_contract::{AGENT_CONFIG_ENV, AgentConfig, ConfigError};
use serde_json::{Value, json};

/// Applies `patch` to `pod` and returns the raw JSON of every injected agent's configuration, in
/// container order (init containers first).
pub fn injected_configs(pod: &Value, patch: &json_patch::Patch) -> Vec<String> {
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, patch).expect("the patch applies to the pod");
    let spec = &patched["spec"];
    let containers = ["initContainers", "containers"]
        .into_iter()
        .flat_map(|list| spec[list].as_array().cloned().unwrap_or_default());
    containers
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("vaultkeeper-agent"))
        })
        .map(|c| {
            c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|var| var["name"] == AGENT_CONFIG_ENV)
                .and_then(|var| var["value"].as_str())
                .expect("every agent container carries its configuration")
                .to_owned()
        })
        .collect()
}

/// What the agent says about each injected configuration: `AgentConfig::parse`, as at its start.
pub fn agent_verdicts(
    pod: &Value,
    patch: &json_patch::Patch,
) -> Vec<Result<AgentConfig, ConfigError>> {
    injected_configs(pod, patch)
        .iter()
        .map(|raw| AgentConfig::parse(raw))
        .collect()
}

/// Panics unless the patch injects at least one agent and the agent accepts every configuration.
pub fn assert_agent_accepts(
    what: &str,
    pod: &Value,
    patch: &json_patch::Patch,
) -> Vec<AgentConfig> {
    let verdicts = agent_verdicts(pod, patch);
    assert!(
        !verdicts.is_empty(),
        "{what}: no agent container was injected"
    );
    verdicts
        .into_iter()
        .map(|verdict| {
            verdict.unwrap_or_else(|error| {
                panic!("{what}: the webhook admitted a configuration the agent refuses: {error}")
            })
        })
        .collect()
}

/// A minimal pod with `annotations`, one app container and no volumes.
pub fn pod_with(annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(key, value)| ((*key).to_owned(), Value::from(*value)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "app", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    })
}
