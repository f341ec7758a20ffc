//! Replaced credentials awaiting revocation (DynamicCredential leases, CertificateRequest
//! certificates): the pure decision of what to revoke now, what keeps waiting and when to look
//! again. The callers gather the rollout state, act on the decision and write the status.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::clock;

/// A replaced credential, as far as its revocation goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Retiring {
    /// Lease ID or certificate serial.
    pub id: String,
    /// When it ends on its own, if known.
    pub ends: Option<Timestamp>,
    /// Revoke at or after this time; `None` while the restarted workloads may still use it.
    pub revoke_after: Option<Timestamp>,
}

/// What to do with the retiring credentials now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Revoke these now.
    pub revoke: Vec<Retiring>,
    /// Keep these (still waiting), with their possibly updated `revoke_after`.
    pub keep: Vec<Retiring>,
    /// When to look again, if anything waits.
    pub wake: Option<Timestamp>,
}

/// How long to wait before looking at a rollout again.
pub const ROLLOUT_POLL: Duration = Duration::from_secs(2);
/// How long to wait before retrying a revocation that failed.
pub const REVOKE_RETRY: Duration = Duration::from_secs(30);

/// Whether any of `retiring` waits for the rollout (so the caller must find out about it).
pub fn waits_for_rollout(retiring: &[Retiring], now: Timestamp) -> bool {
    retiring
        .iter()
        .any(|r| r.revoke_after.is_none() && !ended(r, now))
}

/// Decides: a credential that ended on its own is dropped; one waiting for the rollout starts its
/// `grace` once `rolled_out` (the rollout finished, or waiting for it gave up); one whose
/// `revoke_after` has come is revoked; the others wait.
pub fn decide(
    retiring: Vec<Retiring>,
    rolled_out: bool,
    grace: Duration,
    now: Timestamp,
) -> Decision {
    let mut decision = Decision::default();
    for mut r in retiring {
        if ended(&r, now) {
            continue;
        }
        if r.revoke_after.is_none() {
            if !rolled_out {
                decision.wake_at(clock::after(now, ROLLOUT_POLL));
                decision.keep.push(r);
                continue;
            }
            r.revoke_after = Some(clock::after_stored(now, grace));
        }
        let after = r.revoke_after.unwrap_or(now);
        if after <= now {
            decision.revoke.push(r);
        } else {
            decision.wake_at(after);
            decision.keep.push(r);
        }
    }
    decision
}

impl Decision {
    /// A revocation that failed: kept, retried later.
    pub fn revocation_failed(&mut self, r: Retiring, now: Timestamp) {
        self.wake_at(clock::after(now, REVOKE_RETRY));
        self.keep.push(r);
    }

    fn wake_at(&mut self, at: Timestamp) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }
}

fn ended(r: &Retiring, now: Timestamp) -> bool {
    r.ends.is_some_and(|t| t <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn r(id: &str, ends: Option<i64>, after: Option<i64>) -> Retiring {
        Retiring {
            id: id.into(),
            ends: ends.map(at),
            revoke_after: after.map(at),
        }
    }

    #[test]
    fn waits_for_the_rollout_then_the_grace_then_revokes() {
        let now = at(0);
        let waiting = vec![r("a", Some(100), None)];
        assert!(waits_for_rollout(&waiting, now));
        let d = decide(waiting.clone(), false, Duration::from_secs(5), now);
        assert_eq!(d.keep, waiting, "nothing revoked before the rollout");
        assert!(d.revoke.is_empty());
        assert_eq!(d.wake, Some(now + SignedDuration::from_secs(2)));
        let d = decide(waiting, true, Duration::from_secs(5), now);
        assert_eq!(d.keep, vec![r("a", Some(100), Some(5))], "the grace starts");
        assert_eq!(d.wake, Some(at(5)));
        let d = decide(d.keep, false, Duration::from_secs(5), at(5));
        assert_eq!(d.revoke, vec![r("a", Some(100), Some(5))]);
        assert!(d.keep.is_empty());
    }

    #[test]
    fn ended_credentials_are_dropped_and_failures_retried() {
        let now = at(50);
        let d = decide(
            vec![r("gone", Some(10), None), r("due", None, Some(0))],
            false,
            Duration::ZERO,
            now,
        );
        assert_eq!(d.revoke, vec![r("due", None, Some(0))]);
        assert!(d.keep.is_empty());
        assert!(!waits_for_rollout(&[r("gone", Some(10), None)], now));
        let mut d = d;
        let failed = d.revoke.remove(0);
        d.revocation_failed(failed.clone(), now);
        assert_eq!(d.keep, vec![failed]);
        assert_eq!(d.wake, Some(at(80)));
    }

    #[test]
    fn the_grace_holds_through_the_whole_seconds_a_status_keeps() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let grace = Duration::from_secs(2);
        for millis in [0, 1, 300, 999] {
            let now = at(0) + SignedDuration::from_millis(millis);
            let d = decide(vec![r("a", Some(100), None)], true, grace, now);
            let set = d.keep[0].revoke_after.expect("the grace started");
            // As the next reconcile reads it: written to the status, kept in whole seconds.
            let stored: Time =
                serde_json::from_value(serde_json::to_value(Time(set)).unwrap()).unwrap();
            let just_before = now + SignedDuration::from_millis(1999);
            let later = Retiring {
                revoke_after: Some(stored.0),
                ..d.keep[0].clone()
            };
            let d = decide(vec![later], false, grace, just_before);
            assert!(
                d.revoke.is_empty(),
                "revoked {millis} ms past a second plus 1.999 s into a 2 s grace"
            );
        }
    }

    #[test]
    fn without_grace_a_rolled_out_credential_is_revoked_at_once() {
        let d = decide(vec![r("a", None, None)], true, Duration::ZERO, at(0));
        assert_eq!(d.revoke.len(), 1);
    }
}
