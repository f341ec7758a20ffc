//! The agent's consul-template style templates as the agent uses them: `check`, `secret_calls`,
//! then `render` with an answer for every source the template reads (input: template, then NUL
//! and a JSON object of Vault answers by path; unnamed paths get a KV v2 and lease shaped
//! answer). A render error must not show a secret value.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use vaultkeeper_agent::template::{self, SourceKey};
use vaultkeeper_fuzz::{leaks, strings, template_and_data};

fn default_answer() -> Value {
    json!({"request_id": "r-1", "lease_id": "database/creds/app/abc", "lease_duration": 30,
           "renewable": true,
           "data": {"data": {"username": "app", "password": "canary-password-1", "port": 5432},
                    "metadata": {"version": 3},
                    "username": "v-app-x", "password": "leased-password-2"}})
}

fuzz_target!(|input: &[u8]| {
    let Some((text, answers)) = template_and_data(input) else {
        return;
    };
    // The agent refuses a template that fails here at start-up, before any render.
    if template::check(text).is_err() {
        return;
    }
    let Ok(keys) = template::secret_calls(text) else {
        return;
    };
    let answers: BTreeMap<SourceKey, Value> = keys
        .into_iter()
        .map(|key| {
            let answer = answers
                .as_ref()
                .and_then(|a| a.get(&key.path))
                .cloned()
                .unwrap_or_else(default_answer);
            (key, answer)
        })
        .collect();
    for answer in answers.values() {
        if let Some(Value::Object(data)) = answer.get("data") {
            template::default_format(data);
        }
    }
    if let Err(message) = template::render(text, &answers) {
        let mut values = Vec::new();
        for answer in answers.values() {
            if let Some(data) = answer.get("data") {
                strings(data, &mut values);
            }
        }
        for value in values {
            assert!(
                !leaks(&message, &value, text),
                "the error shows a secret value {value:?}: {message}"
            );
        }
    }
});
