//! Property tests: the pure steps of each controller's reconcile, fed extreme and malformed values
//! from specs, statuses and Secret annotations (all of which tenants can write), never panic, and
//! a spec they refuse comes back as a sentence naming the field.

use std::collections::BTreeMap;
use std::time::Duration;

use crds::v1alpha1::{CertificateRequest, DynamicCredential, VaultSecret};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::json;
use vaultkeeper_operator::certificate::{decide as cert_decide, desired as cert};
use vaultkeeper_operator::dynamic_credential::{self, decide, desired as dc, schedule};
use vaultkeeper_operator::vault_secret::desired as vs;

fn mounts(name: &str) -> Option<String> {
    (name == "default").then(|| "kubernetes".to_owned())
}

/// Durations as a tenant might write them: valid, huge, malformed.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,4}(ms|s|m|h)",
        "[0-9]{15,40}(ms|s|m|h)",
        "([0-9]{1,9}(\\.[0-9]{1,12})?(ms|s|m|h)){1,8}",
        ".{0,24}",
        Just("99999999999999999999h".to_owned()),
        Just("2562047h47m16.854775808s".to_owned()),
    ]
}

/// Timestamps anywhere in jiff's range, as seconds.
fn any_second() -> impl Strategy<Value = i64> {
    Timestamp::MIN.as_second()..=Timestamp::MAX.as_second()
}

fn timestamp(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("in range")
}

/// Annotation values: numbers of every size, timestamps, JSON, garbage.
fn annotation_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9]{20,40}",
        any_second().prop_map(|s| timestamp(s).to_string()),
        Just("9999-12-31T23:59:59Z".to_owned()),
        Just("-009999-01-02T01:59:59Z".to_owned()),
        Just(
            r#"[{"leaseId":"database/creds/app/x","expiryTime":"9999-12-31T23:59:59Z"}]"#
                .to_owned()
        ),
        Just(r#"[{"serialNumber":"3a:1f","notAfter":"-009999-01-02T01:59:59Z"}]"#.to_owned()),
        ".{0,40}",
    ]
}

fn secret_with(annotations: BTreeMap<String, String>, owner_uid: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {
            "name": "dest",
            "namespace": "app",
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "vaultkeeper.dev/v1alpha1", "kind": "X", "name": "x", "uid": owner_uid, "controller": true}],
        },
        "data": {"tls.crt": "bm90IGEgY2VydA==", "tls.key": "a2V5"},
    }))
    .expect("a Secret")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// DynamicCredential: plan, the lease read back from status and Secret, the follow-up record,
    /// and the schedule, for hostile percents, durations, status times and annotations.
    #[test]
    fn dynamic_credential_survives_hostile_values(
        grace in duration_text(),
        renew_at in any::<i32>(),
        rotate_at in any::<i32>(),
        issue_second in any_second(),
        expiry_second in any_second(),
        hard_end_second in proptest::option::of(any_second()),
        duration_seconds in any::<i64>(),
        now_second in any_second(),
        lease_id in proptest::option::of(".{0,20}"),
        issued in annotation_text(),
        ttl in annotation_text(),
        retiring in annotation_text(),
        restart in annotation_text(),
    ) {
        let dc_value: DynamicCredential = serde_json::from_value(json!({
            "apiVersion": "vaultkeeper.dev/v1alpha1",
            "kind": "DynamicCredential",
            "metadata": {"name": "db", "namespace": "app", "uid": "uid-1"},
            "spec": {
                "auth": {"role": "app"},
                "source": {"mount": "database", "role": "app"},
                "renewAtPercent": renew_at,
                "rotateAtPercent": rotate_at,
                "rotationGracePeriod": grace,
                "destination": {"name": "dest"},
            },
            "status": {
                "leaseId": "database/creds/app/status",
                "issueTime": timestamp(issue_second),
                "expiryTime": timestamp(expiry_second),
                "maxExpiryTime": hard_end_second.map(timestamp),
                "leaseDurationSeconds": duration_seconds,
            },
        })).expect("a DynamicCredential");
        match dc::plan(&dc_value, mounts) {
            Ok(plan) => prop_assert!(plan.grace <= Duration::from_secs(24 * 3600)),
            Err(message) => prop_assert!(message.contains("rotationGracePeriod"), "{message}"),
        }
        let mut annotations = BTreeMap::from([
            (dc::LEASE_ISSUED_ANNOTATION.to_owned(), issued),
            (dc::LEASE_TTL_ANNOTATION.to_owned(), ttl),
            (dc::RETIRING_ANNOTATION.to_owned(), retiring),
            (dc::RESTART_ANNOTATION.to_owned(), restart),
        ]);
        if let Some(id) = lease_id {
            annotations.insert(dc::LEASE_ID_ANNOTATION.to_owned(), id);
        }
        let secret = secret_with(annotations, "uid-1");
        let _ = dc::lease_record_invalid(&secret);
        let follow_up = dc::follow_up_on_secret(&secret);
        prop_assert!(follow_up.retiring.len() <= 16);
        let now = timestamp(now_second);
        let timing = schedule::Timing {
            renew_at_percent: renew_at,
            rotate_at_percent: rotate_at,
            jitter: schedule::jitter_of("uid-1"),
        };
        let token = schedule::TokenView { accessor: String::new() };
        for secret in [Some(&secret), None] {
            let lease = dynamic_credential::recorded_lease(&dc_value, secret);
            for holds in [true, false] {
                let _ = schedule::next_step(lease.as_ref(), holds, false, &token, timing, now);
                let gathered = decide::Gathered {
                    lease: lease.clone(),
                    secret_holds_lease: holds,
                    spec_changed: false,
                    record_invalid: secret.is_some_and(dc::lease_record_invalid),
                    token: token.clone(),
                    timing,
                    has_restart_targets: holds,
                    grace: Duration::from_secs(30),
                };
                if decide::needs_lookup(&gathered, now) {
                    let _ = decide::looked_up(gathered.clone(), Some(Duration::MAX), now);
                }
                let retiring = follow_up.retiring.clone();
                if let decide::LeaseAction::Renew(lease) = decide::decide(&gathered, &retiring, None, now) {
                    let _ = decide::decide(&gathered, &retiring, Some(Some(&lease)), now);
                    let _ = decide::decide(&gathered, &retiring, Some(None), now);
                }
            }
            if let Some(lease) = &lease {
                let _ = schedule::renew_time(lease, timing);
                if let Some(end) = lease.hard_end {
                    let _ = schedule::rotate_time(lease.issued, end, rotate_at);
                }
            }
        }
    }

    /// CertificateRequest: plan, the stored certificate, renewal time and follow-up, for hostile
    /// durations, certificate bytes, jitter and times.
    #[test]
    fn certificate_request_survives_hostile_values(
        ttl in proptest::option::of(duration_text()),
        renew_before in proptest::option::of(duration_text()),
        not_before in any_second(),
        not_after in any_second(),
        now_second in any_second(),
        jitter in any::<f64>(),
        superseded in annotation_text(),
        restart in annotation_text(),
        pem in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let cr_value: CertificateRequest = serde_json::from_value(json!({
            "apiVersion": "vaultkeeper.dev/v1alpha1",
            "kind": "CertificateRequest",
            "metadata": {"name": "web", "namespace": "app", "uid": "uid-2"},
            "spec": {
                "auth": {"role": "web"},
                "mount": "pki",
                "role": "web",
                "commonName": "web.example.com",
                "ttl": ttl,
                "renewBefore": renew_before,
                "destination": {"name": "dest"},
            },
        })).expect("a CertificateRequest");
        let plan = cert::plan(&cr_value, mounts);
        if let Err(message) = &plan {
            prop_assert!(message.contains("ttl") || message.contains("renewBefore"), "{message}");
        }
        let facts = cert::CertFacts {
            serial: "3a:1f".into(),
            not_before: timestamp(not_before),
            not_after: timestamp(not_after),
        };
        let now = timestamp(now_second);
        let renew = plan.as_ref().ok().and_then(|p| p.renew_before);
        let _ = cert::renew_at(&facts, renew, jitter);
        let _ = cert::effective_renew_before(&facts, renew);
        let stored = cert::Stored { facts, matches_spec: true };
        let _ = cert::next_step(Some(&stored), renew, jitter, now);
        let gathered = cert_decide::Gathered {
            stored: Some(stored.clone()),
            metadata_current: false,
            status_serial: None,
            status_not_after: None,
            renew_before: renew,
            jitter,
            revoke_superseded: true,
            has_restart_targets: true,
        };
        let _ = cert_decide::decide(&gathered, &[], now);
        let _ = cert::cert_facts(&pem);
        let secret = secret_with(
            BTreeMap::from([
                (cert::SUPERSEDED_ANNOTATION.to_owned(), superseded),
                (cert::RESTART_ANNOTATION.to_owned(), restart),
            ]),
            "uid-2",
        );
        let _ = cert::stored(&secret, "digest");
        prop_assert!(cert::follow_up_on_secret(&secret).superseded.len() <= 16);
    }

    /// VaultSecret: the plan for hostile refresh intervals and versions.
    #[test]
    fn vault_secret_survives_hostile_values(
        refresh in duration_text(),
        version in proptest::option::of(any::<i64>()),
        path in ".{0,40}",
        template in ".{0,40}",
    ) {
        let vs_value: VaultSecret = serde_json::from_value(json!({
            "apiVersion": "vaultkeeper.dev/v1alpha1",
            "kind": "VaultSecret",
            "metadata": {"name": "cfg", "namespace": "app", "uid": "uid-3"},
            "spec": {
                "auth": {"role": "web"},
                "source": {"engine": "kv-v2", "mount": "secret", "path": path, "version": version},
                "refreshInterval": refresh,
                "destination": {"name": "dest", "templates": {"X": template}},
            },
        })).expect("a VaultSecret");
        match vs::plan(&vs_value, mounts) {
            Ok(plan) => prop_assert!(
                plan.refresh >= Duration::from_secs(10) && plan.refresh <= Duration::from_secs(168 * 3600)
            ),
            Err(message) => prop_assert!(!message.is_empty()),
        }
    }
}
