//! The operator's destination templates (`template::check` and `template::render`): any template
//! text over any KV data (input: template, then NUL and the data as a JSON object). A render error
//! must not show a secret value; a template that renders also passes `check`.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use vault::SecretData;
use vaultkeeper_fuzz::{known, leaks, operator_redacts, strings, template_and_data};
use vaultkeeper_operator::template;

fuzz_target!(|input: &[u8]| {
    let Some((text, data)) = template_and_data(input) else {
        return;
    };
    if known::gtmpl_bug(text) {
        return;
    }
    let data = data.unwrap_or_else(|| {
        json!({"username": "app", "password": "canary-password-1", "port": 5432,
               "hosts": ["a", "b"], "nested": {"x": "y", "token": "nested-token-value"}})
    });
    let Ok(data) = serde_json::from_value::<SecretData>(data) else {
        return;
    };
    let templates = BTreeMap::from([("DATABASE_URL".to_owned(), text.to_owned())]);
    let checked = template::check(&templates);
    match template::render(&templates, &data) {
        Ok(out) => {
            assert!(checked.is_ok(), "rendered but check refused: {checked:?}");
            assert_eq!(out.len(), 1);
        }
        Err(e) => {
            let data: serde_json::Map<_, _> = data.0.into_iter().collect();
            let mut values = Vec::new();
            strings(&serde_json::Value::Object(data.clone()), &mut values);
            for value in values.iter().filter(|v| operator_redacts(&data, v)) {
                assert!(
                    !leaks(&e.problem, value, text),
                    "the error shows a secret value {value:?}: {}",
                    e.problem
                );
            }
        }
    }
});
