//! A CertificateRequest (any JSON, status included) and the Secret it finds, through the
//! reconcile's pure steps: `desired::plan`, `desired::owned_by`, `desired::stored` (PEM parsing of
//! `tls.crt`), `desired::jitter_of`, `desired::next_step` and `desired::renew_at` (over the stored
//! certificate's dates, or `facts` given directly), `desired::metadata_current`,
//! `desired::build_secret`, and for `mode: sign` `key::Key::from_pem` on `tls.key` and
//! `Key::csr` for the spec's names.
//!
//! Input: `{"resource": <CertificateRequest>, "secret": <Secret>?, "now": s?,
//! "facts": {"serial", "notBefore": s, "notAfter": s, "matchesSpec"}?}`.
#![no_main]

use std::sync::OnceLock;

use crds::v1alpha1::{CertificateRequest, IssueMode, KeyAlgorithm, PrivateKey};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use vaultkeeper_fuzz::{auth_mount_of, clock, identify, stored_secret};
use vaultkeeper_operator::certificate::desired::{self, CertFacts, Stored};
use vaultkeeper_operator::certificate::key::Key;

#[derive(Deserialize)]
struct Scenario {
    resource: CertificateRequest,
    #[serde(default)]
    secret: Option<Secret>,
    #[serde(default)]
    now: i64,
    #[serde(default)]
    facts: Option<Facts>,
}

/// A stored certificate's facts without a PEM, so the fuzzer can move its dates freely.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Facts {
    serial: String,
    not_before: i64,
    not_after: i64,
    matches_spec: bool,
}

/// Maps seconds onto the dates an X.509 certificate can carry (years 0000 to 9999).
fn x509_time(seconds: i64) -> Timestamp {
    const START: i64 = -62_167_219_200;
    const END: i64 = 253_402_300_799;
    Timestamp::from_second(START + seconds.rem_euclid(END - START + 1)).expect("in jiff's range")
}

/// One ECDSA key for every CSR (generating RSA keys would dominate the run).
fn signing_key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        Key::generate(&PrivateKey {
            algorithm: KeyAlgorithm::Ecdsa,
            ..PrivateKey::default()
        })
        .expect("an ECDSA key")
    })
}

fuzz_target!(|input: &[u8]| {
    let Ok(mut scenario) = serde_json::from_slice::<Scenario>(input) else {
        return;
    };
    identify(&mut scenario.resource.metadata);
    let cr = &scenario.resource;
    let now = clock(scenario.now);
    let Ok(plan) = desired::plan(cr, auth_mount_of) else {
        return;
    };
    let secret = scenario.secret.map(stored_secret);
    if secret.as_ref().is_some_and(|s| !desired::owned_by(s, cr)) {
        return;
    }
    let mut stored = secret
        .as_ref()
        .and_then(|s| desired::stored(s, &plan.spec_digest));
    if let Some(facts) = scenario.facts {
        stored = Some(Stored {
            facts: CertFacts {
                serial: facts.serial,
                not_before: x509_time(facts.not_before),
                not_after: x509_time(facts.not_after),
            },
            matches_spec: facts.matches_spec,
        });
    }
    let jitter = desired::jitter_of(&cr.metadata.uid.clone().unwrap_or_default());
    assert!((0.0..1.0).contains(&jitter));
    let step = desired::next_step(stored.as_ref(), plan.renew_before, jitter, now);
    if let Some(stored) = &stored {
        let at = desired::renew_at(&stored.facts, plan.renew_before, jitter);
        assert!(
            at <= stored.facts.not_after,
            "renewal after the end: {step:?}"
        );
    }
    if let Some(secret) = &secret {
        desired::metadata_current(secret, cr);
        let data = secret
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let rewritten =
            desired::build_secret(cr, data, &plan.spec_digest, &desired::FollowUp::default());
        assert!(
            desired::owned_by(&rewritten, cr),
            "the operator owns what it builds"
        );
        assert!(desired::metadata_current(&rewritten, cr));
        if let Some(before) = desired::stored(secret, &plan.spec_digest) {
            let after = desired::stored(&rewritten, &plan.spec_digest);
            assert_eq!(
                after.map(|s| (s.facts, s.matches_spec)),
                Some((before.facts, true)),
                "a rewritten Secret holds the same certificate for the current spec"
            );
        }
        if matches!(cr.spec.mode, IssueMode::Sign) {
            if let Some(pem) = secret.data.as_ref().and_then(|d| d.get(desired::TLS_KEY)) {
                Key::from_pem(&String::from_utf8_lossy(&pem.0), &cr.spec.private_key);
            }
        }
    }
    if matches!(cr.spec.mode, IssueMode::Sign) {
        let _ = signing_key().csr(&plan.names);
    }
});
