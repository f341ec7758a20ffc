//! A VaultSecret (any JSON, status included), the Secret it finds and the data Vault returned,
//! through the reconcile's pure steps: `desired::plan`, `template::render`, `desired::secret_data`,
//! `desired::data_hmac`, `desired::build_secret`, `desired::existing_hmac`, `desired::owned_by`,
//! `restart::schedule`, `desired::synced_condition`, `desired::keeps_data_note`, `conditions::set`
//! and `conditions::merge_patch`.
//!
//! Input: `{"resource": <VaultSecret>, "secret": <Secret>?, "data": {...}?, "version": n?, "now": s?}`.
#![no_main]

use std::time::Duration;

use crds::v1alpha1::{VaultSecret, condition_types, reasons};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use vault::SecretData;
use vaultkeeper_fuzz::{HMAC_KEY, auth_mount_of, clock, identify, known, stored_secret};
use vaultkeeper_operator::conditions::{self, Desired};
use vaultkeeper_operator::restart;
use vaultkeeper_operator::template;
use vaultkeeper_operator::vault_secret::desired;

#[derive(Deserialize)]
struct Scenario {
    resource: VaultSecret,
    #[serde(default)]
    secret: Option<Secret>,
    #[serde(default)]
    data: SecretData,
    #[serde(default)]
    version: Option<i64>,
    #[serde(default)]
    now: i64,
}

fuzz_target!(|input: &[u8]| {
    let Ok(mut scenario) = serde_json::from_slice::<Scenario>(input) else {
        return;
    };
    identify(&mut scenario.resource.metadata);
    let vs = &scenario.resource;
    let templates = vs.spec.destination.templates.values();
    if templates.clone().any(|t| known::gtmpl_bug(t)) {
        return;
    }
    let now = Time(clock(scenario.now));
    let status = vs.status.clone().unwrap_or_default();
    let generation = vs.metadata.generation;
    let existing = scenario.secret.map(stored_secret);
    if let Some(secret) = &existing {
        desired::owned_by(secret, vs);
        vaultkeeper_operator::digest::existing_hmac(HMAC_KEY, secret);
    }
    let failed = |message: String| {
        let note = desired::keeps_data_note(
            &vs.spec.destination.name,
            status.last_change_time.as_ref(),
            status.synced_version,
        );
        let condition = Desired {
            type_: condition_types::READY,
            status: false,
            reason: reasons::INVALID_SPEC,
            message: message + &note,
        };
        conditions::set(&status.conditions, condition, generation, &now)
    };
    let plan = match desired::plan(vs, auth_mount_of) {
        Ok(plan) => plan,
        Err(message) => {
            failed(message);
            return;
        }
    };
    assert!(plan.refresh >= Duration::from_secs(10));
    let templated = match template::render(&vs.spec.destination.templates, &scenario.data) {
        Ok(templated) => templated,
        Err(e) => {
            failed(e.to_string());
            return;
        }
    };
    let data = vaultkeeper_operator::managed::secret_data(scenario.data.to_text_map(), templated);
    let hmac = vaultkeeper_operator::digest::data_hmac(HMAC_KEY, &data);
    let secret = desired::build_secret(vs, data, scenario.version);
    assert!(
        desired::owned_by(&secret, vs),
        "the operator owns what it builds"
    );
    assert_eq!(
        vaultkeeper_operator::digest::existing_hmac(HMAC_KEY, &secret),
        hmac,
        "the Secret it writes reads back as the same data"
    );
    let pending = restart::schedule(
        status.pending_restart.as_ref(),
        restart::stamp_of(&hmac),
        now.0,
        Duration::from_secs(10),
    );
    let conditions = conditions::set(
        &status.conditions,
        desired::synced_condition(vs, &plan, scenario.version),
        generation,
        &now,
    );
    let mut new_status = status.clone();
    new_status.conditions = conditions;
    new_status.pending_restart = Some(pending);
    new_status.data_hmac = Some(hmac);
    new_status.synced_version = scenario.version;
    conditions::merge_patch(
        serde_json::to_value(&status).expect("a status serializes"),
        serde_json::to_value(&new_status).expect("a status serializes"),
    );
});
