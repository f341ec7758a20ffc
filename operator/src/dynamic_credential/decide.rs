//! The DynamicCredential reconcile's decisions, pure: what to do with the lease given what was
//! gathered (the record, the Secret, the token, Vault's answers so far) and `now`, and the status
//! each outcome makes. `sync` gathers, asks, acts and records; it decides nothing itself.

use std::time::Duration;

use crds::v1alpha1::{DynamicCredentialStatus, RetiringLease, reasons};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::schedule::{self, IssueReason, LeaseRecord, Step, Timing, TokenView};

/// What the reconcile knows about the lease before it changes anything.
#[derive(Clone, Debug)]
pub struct Gathered {
    /// The lease behind the Secret (with the time Vault says it has left, when it was asked).
    pub lease: Option<LeaseRecord>,
    /// Whether the Secret holds that lease's credential.
    pub secret_holds_lease: bool,
    /// Whether the spec now asks for a different credential than the Secret holds.
    pub spec_changed: bool,
    /// Whether the Secret's lease annotations were there but did not parse.
    pub record_invalid: bool,
    pub token: TokenView,
    pub timing: Timing,
    /// Whether the resource has restart targets (the old lease then waits for their rollout).
    pub has_restart_targets: bool,
    /// `rotationGracePeriod`.
    pub grace: Duration,
}

/// What to do with the lease now.
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseAction {
    /// Nothing until the lease's next renewal or rotation.
    Keep,
    /// Renew this lease in Vault.
    Renew(LeaseRecord),
    /// Issue a new credential and write it, with `retiring` and (when `restart`) the restart
    /// stamp in the same apply. `revoke_first` is an ended lease to revoke before issuing, so two
    /// credentials are never live at once.
    Issue {
        reason: IssueReason,
        retiring: Vec<RetiringLease>,
        restart: bool,
        revoke_first: Option<LeaseRecord>,
    },
}

/// Whether Vault must be asked about the lease before deciding: its recorded expiry passed, but
/// a renewal whose status write was lost (an API outage) may have extended it.
pub fn needs_lookup(gathered: &Gathered, now: Timestamp) -> bool {
    step(gathered, now) == Step::Issue(IssueReason::LeaseLost) && gathered.lease.is_some()
}

/// The lease as Vault described it: `left` of its time remains (`None`: Vault does not know it,
/// zero: it is at its end).
pub fn looked_up(mut gathered: Gathered, left: Option<Duration>, now: Timestamp) -> Gathered {
    if let (Some(lease), Some(left)) = (&mut gathered.lease, left)
        && !left.is_zero()
    {
        lease.expires = crate::clock::after(now, left);
    }
    gathered
}

/// The decision before any renewal this reconcile (`renewed: None`), or after one (`Some(None)`:
/// Vault no longer knew the lease; `Some(Some(lease))`: renewed as `lease`).
pub fn decide(
    gathered: &Gathered,
    retiring: &[RetiringLease],
    renewed: Option<Option<&LeaseRecord>>,
    now: Timestamp,
) -> LeaseAction {
    let step = match renewed {
        None => step(gathered, now),
        Some(None) => Step::Issue(IssueReason::LeaseLost),
        Some(Some(lease)) => schedule::next_step(
            Some(lease),
            true,
            false,
            &gathered.token,
            gathered.timing,
            now,
        ),
    };
    match step {
        Step::WaitUntil(_) => LeaseAction::Keep,
        Step::Renew => LeaseAction::Renew(gathered.lease.clone().expect("renew needs a lease")),
        Step::Issue(reason) => issue(gathered, retiring, reason, now),
    }
}

/// How late a due renewal or rotation is acted on: `now` minus the time the schedule set for it
/// (the figure the scale benchmarks report). `None` for any other action.
pub fn lateness(
    gathered: &Gathered,
    action: &LeaseAction,
    now: Timestamp,
) -> Option<(&'static str, Duration)> {
    match action {
        LeaseAction::Renew(lease) => Some((
            "renew",
            crate::clock::until(schedule::renew_time(lease, gathered.timing), now),
        )),
        LeaseAction::Issue {
            reason: IssueReason::MaxTtl,
            ..
        } => {
            let lease = gathered.lease.as_ref()?;
            let due = schedule::rotate_time(
                lease.issued,
                lease.hard_end?,
                gathered.timing.rotate_at_percent,
            );
            Some(("rotate", crate::clock::until(due, now)))
        }
        _ => None,
    }
}

fn step(gathered: &Gathered, now: Timestamp) -> Step {
    let step = schedule::next_step(
        gathered.lease.as_ref(),
        gathered.secret_holds_lease,
        gathered.spec_changed,
        &gathered.token,
        gathered.timing,
        now,
    );
    if step == Step::Issue(IssueReason::SecretLost) && gathered.record_invalid {
        Step::Issue(IssueReason::RecordInvalid)
    } else {
        step
    }
}

/// A new credential: the old lease retires (after the rollout, or `grace` from now without
/// restart targets) unless it ended; an ended one is revoked first.
fn issue(
    gathered: &Gathered,
    retiring: &[RetiringLease],
    reason: IssueReason,
    now: Timestamp,
) -> LeaseAction {
    let old = gathered.lease.clone();
    let mut retiring = retiring.to_vec();
    let ended = reason == IssueReason::LeaseLost;
    if let Some(old) = &old
        && !ended
        && !retiring.iter().any(|r| r.lease_id == old.id)
    {
        retiring.push(RetiringLease {
            lease_id: old.id.clone(),
            // The latest it can end, not its last recorded expiry: a process that renewed it and
            // died before recording the renewal left that expiry behind the lease's real one, and
            // a retiring lease past its recorded expiry is dropped unrevoked. Its max TTL holds
            // whatever was renewed; without one, it is revoked after the grace period.
            expiry_time: old.hard_end.map(Time),
            revoke_after: (!gathered.has_restart_targets)
                .then(|| Time(crate::clock::after_stored(now, gathered.grace))),
        });
    }
    LeaseAction::Issue {
        reason,
        retiring,
        restart: (old.is_some() || reason == IssueReason::SpecChanged)
            && gathered.has_restart_targets,
        revoke_first: old.filter(|_| ended),
    }
}

/// An ended lease whose revocation before the issue failed: revoked later. Its recorded expiry is
/// stale (that is how it ended up here), so none is kept and it is revoked, not dropped as ended.
pub fn revoke_later(
    mut retiring: Vec<RetiringLease>,
    lease: &LeaseRecord,
    now: Timestamp,
) -> Vec<RetiringLease> {
    if !retiring.iter().any(|r| r.lease_id == lease.id) {
        retiring.push(RetiringLease {
            lease_id: lease.id.clone(),
            expiry_time: None,
            revoke_after: Some(Time(now)),
        });
    }
    retiring
}

/// The status's lease facts.
pub fn with_lease(
    mut status: DynamicCredentialStatus,
    lease: &LeaseRecord,
) -> DynamicCredentialStatus {
    status.lease_id = Some(lease.id.clone());
    status.issue_time = Some(Time(lease.issued));
    status.lease_duration_seconds =
        Some(i64::try_from(lease.duration.as_secs()).unwrap_or(i64::MAX));
    status.expiry_time = Some(Time(lease.expires));
    status.max_expiry_time = lease.hard_end.map(Time);
    status
}

/// The `LeaseRenewal` note of a renewal: whether it keeps the lease, its reason and message.
pub fn renewal_note(renewed: &LeaseRecord) -> (bool, &'static str, String) {
    if renewed.hard_end.is_some() {
        (
            false,
            reasons::MAX_TTL_REACHED,
            format!(
                "lease {} cannot be extended past {}; a new credential follows",
                renewed.id, renewed.expires
            ),
        )
    } else {
        (
            true,
            reasons::RENEWED,
            format!("lease {} renewed until {}", renewed.id, renewed.expires),
        )
    }
}

/// The status once a new credential was written: its lease, the leases now retiring, when it
/// rotated, its data HMAC and (when `restart`) the pending restart for its data.
pub fn with_issued(
    status: DynamicCredentialStatus,
    issued: &LeaseRecord,
    hmac: &str,
    retiring: Vec<RetiringLease>,
    rotated: bool,
    restart: bool,
    now: Timestamp,
) -> DynamicCredentialStatus {
    let mut status = with_lease(status, issued);
    status.retiring_leases = retiring;
    if rotated {
        status.last_rotation_time = Some(Time(now));
    }
    status.data_hmac = Some(hmac.to_owned());
    if restart {
        status.pending_restart = Some(crate::restart::for_new_credential(
            status.pending_restart.as_ref(),
            hmac,
            now,
        ));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    const T0: i64 = 1_800_000_000;

    fn at(offset: i64) -> Timestamp {
        Timestamp::from_second(T0 + offset).unwrap()
    }

    fn lease(id: &str, ttl: i64) -> LeaseRecord {
        LeaseRecord {
            id: id.into(),
            issued: at(0),
            duration: Duration::from_secs(ttl as u64),
            expires: at(ttl),
            hard_end: None,
            token_accessor: "acc".into(),
        }
    }

    fn gathered(lease: Option<LeaseRecord>) -> Gathered {
        Gathered {
            secret_holds_lease: lease.is_some(),
            lease,
            spec_changed: false,
            record_invalid: false,
            token: TokenView {
                accessor: "acc".into(),
            },
            timing: Timing {
                renew_at_percent: 67,
                rotate_at_percent: 90,
                jitter: 0.0,
            },
            has_restart_targets: true,
            grace: Duration::from_secs(30),
        }
    }

    #[test]
    fn lateness_is_counted_from_the_scheduled_renewal_or_rotation() {
        // TTL 100 s, renewal due at 67 s: acting at 70 s is 3 s late.
        let g = gathered(Some(lease("a", 100)));
        let action = decide(&g, &[], None, at(70));
        assert!(matches!(action, LeaseAction::Renew(_)), "{action:?}");
        assert_eq!(
            lateness(&g, &action, at(70)),
            Some(("renew", Duration::from_secs(3)))
        );
        // Capped at a hard end 200 s after issue: rotation due at 90 % = 180 s.
        let mut capped = lease("a", 250);
        capped.hard_end = Some(at(200));
        let g = gathered(Some(capped));
        let action = decide(&g, &[], None, at(185));
        assert_eq!(
            lateness(&g, &action, at(185)),
            Some(("rotate", Duration::from_secs(5)))
        );
        // Nothing due, nothing counted.
        let g = gathered(Some(lease("a", 100)));
        let action = decide(&g, &[], None, at(10));
        assert_eq!(lateness(&g, &action, at(10)), None);
    }

    fn issue_of(
        action: LeaseAction,
    ) -> (IssueReason, Vec<RetiringLease>, bool, Option<LeaseRecord>) {
        match action {
            LeaseAction::Issue {
                reason,
                retiring,
                restart,
                revoke_first,
            } => (reason, retiring, restart, revoke_first),
            other => panic!("expected an issue, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_lease_is_kept_then_renewed() {
        let g = gathered(Some(lease("l1", 3600)));
        assert_eq!(decide(&g, &[], None, at(60)), LeaseAction::Keep);
        assert_eq!(
            decide(&g, &[], None, at(3000)),
            LeaseAction::Renew(lease("l1", 3600))
        );
    }

    #[test]
    fn a_renewal_that_reached_the_max_ttl_rotates_and_one_vault_forgot_replaces() {
        let g = gathered(Some(lease("l1", 3600)));
        let capped = LeaseRecord {
            hard_end: Some(at(3700)),
            expires: at(3700),
            ..lease("l1", 3600)
        };
        let (reason, retiring, restart, revoke_first) =
            issue_of(decide(&g, &[], Some(Some(&capped)), at(3500)));
        assert_eq!(reason, IssueReason::MaxTtl);
        assert_eq!(
            retiring.len(),
            1,
            "the capped lease retires after the rollout"
        );
        assert_eq!(retiring[0].revoke_after, None);
        assert!(restart && revoke_first.is_none());

        let (reason, retiring, _, revoke_first) = issue_of(decide(&g, &[], Some(None), at(3000)));
        assert_eq!(reason, IssueReason::LeaseLost);
        assert!(
            retiring.is_empty(),
            "an ended lease does not wait for a rollout"
        );
        assert_eq!(
            revoke_first.map(|l| l.id),
            Some("l1".to_owned()),
            "it is revoked first"
        );
    }

    #[test]
    fn a_passed_expiry_is_looked_up_and_an_extended_lease_is_kept() {
        let g = gathered(Some(lease("l1", 60)));
        assert!(needs_lookup(&g, at(90)));
        assert!(!needs_lookup(&gathered(None), at(90)));
        let extended = looked_up(g.clone(), Some(Duration::from_secs(50)), at(90));
        assert!(!needs_lookup(&extended, at(90)));
        assert_eq!(decide(&extended, &[], None, at(90)), LeaseAction::Keep);
        // At its end (Vault answers whole seconds) or unknown: replaced, the old one revoked first.
        for left in [Some(Duration::ZERO), None] {
            let ended = looked_up(g.clone(), left, at(90));
            let (reason, _, _, revoke_first) = issue_of(decide(&ended, &[], None, at(90)));
            assert_eq!(reason, IssueReason::LeaseLost);
            assert!(revoke_first.is_some());
        }
    }

    #[test]
    fn without_restart_targets_the_old_lease_waits_the_grace_period_only() {
        let mut g = gathered(Some(lease("l1", 3600)));
        g.has_restart_targets = false;
        g.spec_changed = true;
        let (reason, retiring, restart, _) = issue_of(decide(&g, &[], None, at(100)));
        assert_eq!(reason, IssueReason::SpecChanged);
        assert!(!restart);
        assert_eq!(
            retiring[0].revoke_after,
            Some(Time(at(100) + SignedDuration::from_secs(30)))
        );
        // A lease already retiring is not recorded twice.
        let (_, again, ..) = issue_of(decide(&g, &retiring, None, at(101)));
        assert_eq!(again, retiring);
    }

    #[test]
    fn invalid_annotations_name_their_own_reason_and_a_first_issue_restarts_nothing() {
        // The status names a lease; the Secret's annotations were edited and do not parse.
        let mut g = gathered(Some(lease("l1", 3600)));
        g.secret_holds_lease = false;
        g.record_invalid = true;
        let (reason, retiring, restart, revoke_first) = issue_of(decide(&g, &[], None, at(10)));
        assert_eq!(reason, IssueReason::RecordInvalid);
        assert_eq!(retiring.len(), 1, "the recorded lease retires");
        assert!(restart && revoke_first.is_none());
        let (reason, retiring, restart, revoke_first) =
            issue_of(decide(&gathered(None), &[], None, at(0)));
        assert_eq!(reason, IssueReason::First);
        assert!(retiring.is_empty() && !restart && revoke_first.is_none());
    }

    #[test]
    fn a_retiring_lease_ends_at_its_max_ttl_not_at_its_last_recorded_expiry() {
        // Recorded as expiring at 60 s; a killed process may have renewed it past that unrecorded.
        let mut g = gathered(Some(lease("l1", 60)));
        g.spec_changed = true;
        let (_, retiring, ..) = issue_of(decide(&g, &[], None, at(30)));
        assert_eq!(
            retiring[0].expiry_time, None,
            "no max TTL: revoked, never dropped"
        );
        g.lease = Some(LeaseRecord {
            hard_end: Some(at(3600)),
            ..lease("l1", 60)
        });
        let (_, retiring, ..) = issue_of(decide(&g, &[], None, at(30)));
        assert_eq!(retiring[0].expiry_time, Some(Time(at(3600))));
    }

    #[test]
    fn an_ended_lease_whose_revocation_failed_is_revoked_later_not_dropped() {
        let retiring = revoke_later(Vec::new(), &lease("l1", 60), at(90));
        assert_eq!(retiring[0].expiry_time, None);
        assert_eq!(retiring[0].revoke_after, Some(Time(at(90))));
        assert_eq!(
            revoke_later(retiring.clone(), &lease("l1", 60), at(91)),
            retiring
        );
    }

    #[test]
    fn an_issued_credential_is_recorded_whole() {
        let status = with_issued(
            DynamicCredentialStatus::default(),
            &lease("l2", 3600),
            "hmac-2",
            vec![],
            true,
            true,
            at(10),
        );
        assert_eq!(status.lease_id.as_deref(), Some("l2"));
        assert_eq!(status.expiry_time, Some(Time(at(3600))));
        assert_eq!(status.last_rotation_time, Some(Time(at(10))));
        assert_eq!(status.data_hmac.as_deref(), Some("hmac-2"));
        assert!(status.pending_restart.is_some());
    }
}
