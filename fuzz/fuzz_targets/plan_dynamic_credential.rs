//! A DynamicCredential (any JSON, status included) and the Secret it finds, through the
//! reconcile's pure steps: `desired::plan`, `desired::owned_by`, `desired::lease_on_secret`, the
//! lease record rebuilt from status and Secret as `recorded_lease` does, `schedule::jitter_of`,
//! `decide::{needs_lookup, decide}` (so `schedule::next_step`, `renew_time` and `rotate_time`), and
//! for a Vault answer (`issued`, `renewed`) the new record, `decide::with_issued`,
//! `desired::build_secret` and the lease read back from it.
//!
//! Input: `{"resource": <DynamicCredential>, "secret": <Secret>?, "tokenAccessor": s?, "now": s?,
//! "issued": {"leaseId", "ttlSeconds", "renewable"}?, "renewed": {"ttlSeconds", "capped"}?}`.
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use crds::v1alpha1::DynamicCredential;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use vaultkeeper_fuzz::{auth_mount_of, clock, identify, known, stored_secret};
use vaultkeeper_operator::dynamic_credential::decide::{self, LeaseAction};
use vaultkeeper_operator::dynamic_credential::desired;
use vaultkeeper_operator::dynamic_credential::schedule::{self, LeaseRecord, Timing, TokenView};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Scenario {
    resource: DynamicCredential,
    #[serde(default)]
    secret: Option<Secret>,
    #[serde(default)]
    token_accessor: String,
    #[serde(default)]
    now: i64,
    #[serde(default)]
    issued: Option<Issued>,
    #[serde(default)]
    renewed: Option<Renewed>,
}

/// What Vault answered to an issue.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Issued {
    lease_id: String,
    ttl_seconds: u64,
    renewable: bool,
}

/// What Vault answered to a renewal.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Renewed {
    ttl_seconds: u64,
    capped: bool,
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// `now + d` as the operator computes it from Vault's TTLs; `None` where that would overflow
/// (Vault grants TTLs of at most its max TTL, far inside jiff's range).
fn after(now: Timestamp, d: Duration) -> Option<Timestamp> {
    now.checked_add(signed(d)).ok()
}

/// The lease as `dynamic_credential::recorded_lease` (private) rebuilds it: the Secret's when the
/// status names another lease or none, else the status's facts. Keep in step with that function.
/// Where it computes `issued + ttl` from the Secret's annotations this returns `None` on overflow
/// instead of panicking like the operator does (reported; see fuzz/README.md).
fn recorded_lease(dc: &DynamicCredential, secret: Option<&Secret>) -> Option<LeaseRecord> {
    let status = dc.status.clone().unwrap_or_default();
    let on_secret = secret.and_then(desired::lease_on_secret);
    let from_secret =
        |(id, issued, duration, token_accessor): (String, Timestamp, Duration, String)| {
            Some(LeaseRecord {
                id,
                issued,
                duration,
                expires: after(issued, duration)?,
                hard_end: None,
                token_accessor,
            })
        };
    match (status.lease_id, on_secret) {
        (Some(id), Some(lease)) if id != lease.0 => from_secret(lease),
        (Some(id), secret_lease) => {
            let token_accessor = secret_lease.map(|(.., acc)| acc).unwrap_or_default();
            let issued = status.issue_time.map(|t| t.0)?;
            let duration = Duration::from_secs(status.lease_duration_seconds.unwrap_or(0) as u64);
            Some(LeaseRecord {
                id,
                issued,
                duration,
                expires: status.expiry_time.map(|t| t.0).unwrap_or(issued),
                hard_end: status.max_expiry_time.map(|t| t.0),
                token_accessor,
            })
        }
        (None, Some(lease)) => from_secret(lease),
        (None, None) => None,
    }
}

/// Records whose renewal time `schedule::renew_time` cannot compute without panicking (reported).
fn overflows(lease: &LeaseRecord) -> bool {
    known::renew_time_overflow(lease.expires, lease.duration)
}

fuzz_target!(|input: &[u8]| {
    let Ok(mut scenario) = serde_json::from_slice::<Scenario>(input) else {
        return;
    };
    identify(&mut scenario.resource.metadata);
    let dc = &scenario.resource;
    let now = clock(scenario.now);
    let templates = dc.spec.destination.templates.values();
    if templates.clone().any(|t| known::gtmpl_bug(t)) {
        return;
    }
    let Ok(plan) = desired::plan(dc, auth_mount_of) else {
        return;
    };
    let secret = scenario.secret.map(stored_secret);
    if secret.as_ref().is_some_and(|s| !desired::owned_by(s, dc)) {
        return;
    }
    let lease = recorded_lease(dc, secret.as_ref());
    let secret_holds_lease = match (&lease, secret.as_ref().and_then(desired::lease_on_secret)) {
        (Some(l), Some((id, ..))) => l.id == id,
        _ => false,
    };
    let spec_changed = secret
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(desired::SPEC_DIGEST_ANNOTATION))
        .is_some_and(|d| *d != plan.spec_digest);
    let timing = Timing {
        renew_at_percent: dc.spec.renew_at_percent,
        rotate_at_percent: dc.spec.rotate_at_percent,
        jitter: schedule::jitter_of(&dc.metadata.uid.clone().unwrap_or_default()),
    };
    let view = TokenView {
        accessor: scenario.token_accessor.clone(),
    };
    if lease.as_ref().is_some_and(overflows) {
        return;
    }
    let gathered = decide::Gathered {
        lease: lease.clone(),
        secret_holds_lease,
        spec_changed,
        record_invalid: secret.as_ref().is_some_and(desired::lease_record_invalid),
        token: view.clone(),
        timing,
        has_restart_targets: !dc.spec.restart_targets.is_empty(),
        grace: plan.grace,
    };
    decide::needs_lookup(&gathered, now);
    let retiring = dc
        .status
        .as_ref()
        .map(|s| s.retiring_leases.clone())
        .unwrap_or_default();
    let mut action = decide::decide(&gathered, &retiring, None, now);
    if let (LeaseAction::Renew(lease), Some(renewed)) = (&action, &scenario.renewed) {
        let Some(expires) = after(now, Duration::from_secs(renewed.ttl_seconds)) else {
            return;
        };
        let renewed = LeaseRecord {
            duration: if renewed.capped {
                lease.duration
            } else {
                Duration::from_secs(renewed.ttl_seconds)
            },
            expires,
            hard_end: renewed.capped.then_some(expires),
            ..lease.clone()
        };
        if overflows(&renewed) {
            return;
        }
        decide::renewal_note(&renewed);
        action = decide::decide(&gathered, &retiring, Some(Some(&renewed)), now);
    }
    if let (
        LeaseAction::Issue {
            reason,
            retiring,
            restart,
            revoke_first,
        },
        Some(issued),
    ) = (&action, &scenario.issued)
    {
        reason.describe();
        if let Some(ended) = revoke_first {
            assert!(
                !retiring.iter().any(|r| r.lease_id == ended.id),
                "an ended lease is revoked first, not retired"
            );
        }
        let duration = Duration::from_secs(issued.ttl_seconds);
        let Some(expires) = after(now, duration) else {
            return;
        };
        let record = LeaseRecord {
            id: issued.lease_id.clone(),
            issued: now,
            duration,
            expires,
            hard_end: (!issued.renewable).then_some(expires),
            token_accessor: scenario.token_accessor.clone(),
        };
        let status = decide::with_issued(
            Default::default(),
            &record,
            "hmac",
            retiring.clone(),
            lease.is_some(),
            *restart,
            now,
        );
        assert_eq!(status.lease_id.as_deref(), Some(record.id.as_str()));
        let data = BTreeMap::from([("username".to_owned(), b"v-app".to_vec())]);
        let written = desired::build_secret(
            dc,
            data,
            &record,
            &plan.spec_digest,
            &desired::FollowUp::default(),
        );
        assert!(
            desired::owned_by(&written, dc),
            "the operator owns what it builds"
        );
        assert_eq!(
            desired::lease_on_secret(&written),
            Some((
                record.id.clone(),
                record.issued,
                record.duration,
                record.token_accessor.clone()
            )),
            "the lease written on the Secret reads back"
        );
        schedule::next_step(Some(&record), true, false, &view, timing, now);
    }
});
