//! Shared pieces of the fuzz targets: the checks every admission answer must pass, and the
//! fixtures the planning targets give the operator's pure steps (a clock, identities, a Secret as
//! the API server stores it).

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use serde_json::Value;
use vaultkeeper_agent::config::AGENT_CONFIG_ENV;
use vaultkeeper_webhook::inject::WebhookConfig;
use vaultkeeper_webhook::review::{Outcome, review};

/// The webhook's two shapes: with native sidecars (Kubernetes ≥ 1.29) and classic.
pub fn webhook_configs() -> &'static [WebhookConfig; 2] {
    static CONFIGS: OnceLock<[WebhookConfig; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let native = WebhookConfig::default();
        let classic = WebhookConfig {
            native_sidecars: false,
            ..WebhookConfig::default()
        };
        [native, classic]
    })
}

/// Answers `body` as the HTTP handler does and checks what the API server relies on: the answer
/// is an AdmissionReview; a patch applies to the pod it was made for, leaves a valid Pod, and every
/// injected agent can read its configuration; a denial says why.
pub fn check_review(body: &[u8], config: &WebhookConfig) {
    let Ok(answer) = review(body, config) else {
        return;
    };
    let out: Value = serde_json::from_slice(&answer.body).expect("the answer is JSON");
    assert_eq!(out["kind"], "AdmissionReview");
    let response = &out["response"];
    match answer.outcome {
        Outcome::Injected => {
            assert_eq!(response["allowed"], true);
            assert_eq!(response["patchType"], "JSONPatch");
            let patch = BASE64
                .decode(
                    response["patch"]
                        .as_str()
                        .expect("an injected pod has a patch"),
                )
                .expect("the patch is base64");
            let patch: json_patch::Patch =
                serde_json::from_slice(&patch).expect("the patch is a JSON patch");
            let mut pod = sent_object(body);
            json_patch::patch(&mut pod, &patch)
                .unwrap_or_else(|e| panic!("the patch does not apply to its pod: {e}"));
            let pod: Pod = serde_json::from_value(pod).expect("the patched object is a Pod");
            check_agents(&pod);
        }
        Outcome::Skipped => {
            assert_eq!(response["allowed"], true);
            assert!(response.get("patch").is_none());
        }
        Outcome::Denied | Outcome::Error => {
            assert_eq!(response["allowed"], false);
            let message = response["status"]["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "a denial says why");
        }
    }
}

/// The pod as the API server holds it: the request's object as the webhook decoded it.
fn sent_object(body: &[u8]) -> Value {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).expect("the webhook decoded it");
    let object = review
        .request
        .and_then(|request| request.object)
        .expect("an injected review has an object");
    serde_json::to_value(object).expect("a DynamicObject serialises")
}

/// Every agent container carries a configuration the agent accepts.
fn check_agents(pod: &Pod) {
    let spec = pod.spec.as_ref().expect("an injected pod has a spec");
    let agents = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name.starts_with("vaultkeeper-agent"));
    let mut count = 0;
    for agent in agents {
        count += 1;
        let raw = agent
            .env
            .iter()
            .flatten()
            .find(|var| var.name == AGENT_CONFIG_ENV)
            .and_then(|var| var.value.as_deref())
            .expect("an agent container has its configuration");
        let _: Value = serde_json::from_str(raw).expect("the agent config is JSON");
        if let Err(e) = vaultkeeper_agent::config::AgentConfig::parse(raw) {
            panic!("the agent refuses the configuration the webhook wrote: {e}\n{raw}");
        }
    }
    assert!(count > 0, "an injected pod has an agent");
}

/// Maps Unix seconds onto a plausible wall clock (2000-01-01 up to about 2200; other numbers wrap
/// into that span): the clock is not input a user controls, the times in statuses and Secrets are.
pub fn clock(unix_seconds: i64) -> Timestamp {
    const START: i64 = 946_684_800;
    const SPAN: i64 = 200 * 365 * 86_400;
    let offset = (i128::from(unix_seconds) - i128::from(START)).rem_euclid(i128::from(SPAN));
    let offset = i64::try_from(offset).expect("less than SPAN");
    Timestamp::from_second(START + offset).expect("inside jiff's range")
}

/// Gives a resource what the API server always sets: a name, a namespace and a UID.
pub fn identify(meta: &mut ObjectMeta) {
    let fill = |field: &mut Option<String>, value: &str| {
        if field.as_deref().is_none_or(str::is_empty) {
            *field = Some(value.to_owned());
        }
    };
    fill(&mut meta.name, "fuzz");
    fill(&mut meta.namespace, "app");
    fill(&mut meta.uid, "6f0c5f1e-8f6b-4a43-9d55-3d0c2f4f3a10");
}

/// The operator's configured connections: `default` (auth mount `kubernetes`) and `east`.
pub fn auth_mount_of(connection: &str) -> Option<String> {
    match connection {
        "default" => Some("kubernetes".to_owned()),
        "east" => Some("kubernetes-east".to_owned()),
        _ => None,
    }
}

/// A Secret as the API server returns it: `stringData` merged into `data` (so corpus files can
/// hold readable PEM and annotations instead of base64).
pub fn stored_secret(mut secret: Secret) -> Secret {
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(Default::default);
        for (key, value) in strings {
            data.insert(key, ByteString(value.into_bytes()));
        }
    }
    secret
}

/// The operator's HMAC key in these targets.
pub const HMAC_KEY: &[u8] = b"vaultkeeper-fuzz-hmac-key-32-byte";

/// Splits a template target's input: the template text, then (after a NUL byte) JSON data.
pub fn template_and_data(data: &[u8]) -> Option<(&str, Option<Value>)> {
    let (text, json) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let text = std::str::from_utf8(text).ok()?;
    Some((text, json.and_then(|j| serde_json::from_slice(j).ok())))
}

/// Whether `message` shows a secret `value` that the template text does not already contain.
/// Only values that cannot be formed by redaction markers around them count: at least 11
/// characters (longer than `<redacted>`) and without `<` or `>`.
pub fn leaks(message: &str, value: &str, template: &str) -> bool {
    value.chars().count() >= 11
        && !value.contains(['<', '>'])
        && !template.contains(value)
        && message.contains(value)
}

/// Every string inside a JSON value.
pub fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// Crashes found in code these targets must not change yet (crds/ and operator/ have another
/// owner at the moment): each guard skips the inputs of one reported crash, so a run goes on to
/// find others and CI's brief run stays green. `VK_FUZZ_KNOWN=1` turns the guards off to
/// reproduce them (fuzz/known/ holds an input for each; fuzz/README.md lists them).
pub mod known {
    use std::sync::OnceLock;
    use std::time::Duration;

    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    /// No reported crash is open any more: the guards are off unless `VK_FUZZ_KNOWN=0` turns
    /// them on (kept for the next one).
    pub fn guarded() -> bool {
        static GUARDED: OnceLock<bool> = OnceLock::new();
        *GUARDED.get_or_init(|| std::env::var_os("VK_FUZZ_KNOWN").is_some_and(|v| v == "0"))
    }

    /// gtmpl 0.7.1 panics or loops forever on some templates, and operator/src/template.rs
    /// passes them on: its lexer on non-ASCII action code and on a `}}` inside a quoted string,
    /// its unquoting on some escapes (the agent's `template::lexable` refuses what could reach
    /// those), and its `printf` on some verbs (any `printf` is skipped: the format may be data).
    pub fn gtmpl_bug(text: &str) -> bool {
        guarded()
            && (vaultkeeper_agent::template::lexable(text).is_err() || text.contains("printf"))
    }

    /// `schedule::renew_time` computes `expires - (part of duration)` unchecked and panics when
    /// a recorded lease's duration reaches past jiff's range.
    pub fn renew_time_overflow(expires: Timestamp, duration: Duration) -> bool {
        guarded()
            && expires
                .checked_sub(SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX))
                .is_err()
    }
}

/// Whether `value` may be checked by the operator's redaction oracle. The operator redacts each
/// top-level value's text only, so a nested string (KV values can be JSON objects) shows in
/// render errors (reported); with the guard on only top-level strings are checked.
pub fn operator_redacts(data: &serde_json::Map<String, Value>, value: &str) -> bool {
    // Top-level values always; nested strings of four or more characters (shorter ones are not
    // redacted, they would blank out ordinary words).
    data.values().any(|v| v.as_str() == Some(value))
        || (!known::guarded() && value.chars().count() >= 4)
}
