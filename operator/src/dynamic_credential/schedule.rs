//! Pure lease decisions: given the lease as recorded, the token that holds it, the spec's percents
//! and `now`, what to do next — issue, renew, or wait until a time. No I/O and no clock.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// The lease behind the Secret, as recorded in the Secret's annotations and the CR's status.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseRecord {
    pub id: String,
    pub issued: Timestamp,
    /// TTL granted at the last issue or renewal.
    pub duration: Duration,
    /// Expiry after the last issue or renewal.
    pub expires: Timestamp,
    /// When it ends for good, once a renewal was capped by the max TTL.
    pub hard_end: Option<Timestamp>,
    /// Accessor of the Vault token that issued it.
    pub token_accessor: String,
}

/// The lease token as far as decisions go.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenView {
    pub accessor: String,
}

/// Why a new credential is issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// No lease yet.
    First,
    /// The spec changed what the credential is (source, identity).
    SpecChanged,
    /// The managed Secret is gone and the credential cannot be read again.
    SecretLost,
    /// Renewal can no longer extend the lease; `rotateAtPercent` of its life has passed.
    MaxTtl,
    /// The token that issued the lease is being replaced and would take the lease with it.
    TokenEnds,
    /// The lease expired or was revoked outside vaultkeeper.
    LeaseLost,
    /// The Secret's lease annotations were edited and no longer parse: the record is ignored.
    RecordInvalid,
}

impl IssueReason {
    pub fn describe(self) -> &'static str {
        match self {
            Self::First => "first credential",
            Self::SpecChanged => "the spec changed the credential",
            Self::SecretLost => "the Secret was deleted and the credential cannot be read again",
            Self::MaxTtl => "the lease reached rotateAtPercent of its maximum lifetime",
            Self::TokenEnds => {
                "the Vault token that issued the lease ends before the lease would; rotated early"
            }
            Self::LeaseLost => "the lease expired or was revoked outside vaultkeeper",
            Self::RecordInvalid => {
                "the lease annotations on the Secret were changed and do not parse; the record was ignored"
            }
        }
    }
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Issue(IssueReason),
    Renew,
    /// Nothing to do before this time.
    WaitUntil(Timestamp),
}

/// The spec's timing knobs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub renew_at_percent: i32,
    pub rotate_at_percent: i32,
    /// Stable per object in [-1, 1): spreads renewals of many objects without moving them around
    /// between reconciles.
    pub jitter: f64,
}

/// Decides the next step. `secret_holds_lease`: the managed Secret exists and carries this lease.
pub fn next_step(
    lease: Option<&LeaseRecord>,
    secret_holds_lease: bool,
    spec_changed: bool,
    token: &TokenView,
    timing: Timing,
    now: Timestamp,
) -> Step {
    let Some(lease) = lease else {
        return Step::Issue(IssueReason::First);
    };
    if spec_changed {
        return Step::Issue(IssueReason::SpecChanged);
    }
    if !secret_holds_lease {
        return Step::Issue(IssueReason::SecretLost);
    }
    if lease.expires <= now {
        return Step::Issue(IssueReason::LeaseLost);
    }
    if lease.token_accessor != token.accessor {
        return Step::Issue(IssueReason::TokenEnds);
    }
    if let Some(end) = lease.hard_end {
        let rotate_at = rotate_time(lease.issued, end, timing.rotate_at_percent);
        if now >= rotate_at {
            return Step::Issue(IssueReason::MaxTtl);
        }
        return Step::WaitUntil(rotate_at);
    }
    let renew_at = renew_time(lease, timing);
    if now >= renew_at {
        Step::Renew
    } else {
        Step::WaitUntil(renew_at)
    }
}

/// `renewAtPercent` (± up to 3 points of jitter) of the TTL granted at the last renewal.
pub fn renew_time(lease: &LeaseRecord, timing: Timing) -> Timestamp {
    let percent = (f64::from(timing.renew_at_percent) + 3.0 * timing.jitter).clamp(5.0, 95.0);
    let left = crate::clock::scale(lease.duration, 1.0 - percent / 100.0);
    crate::clock::before(lease.expires, left)
}

/// `rotateAtPercent` of the lease's whole life, issue to hard end.
pub fn rotate_time(issued: Timestamp, hard_end: Timestamp, percent: i32) -> Timestamp {
    let life = hard_end.duration_since(issued);
    let life = if life.is_negative() {
        Duration::ZERO
    } else {
        life.unsigned_abs()
    };
    crate::clock::after(
        issued,
        crate::clock::fraction(life, percent.clamp(1, 100).unsigned_abs(), 100),
    )
}

/// A stable value in [-1, 1) from an object's UID.
pub fn jitter_of(uid: &str) -> f64 {
    let hash = uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % 2000) as f64 / 1000.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    fn at(offset: i64) -> Timestamp {
        Timestamp::from_second(T0 + offset).unwrap()
    }

    fn lease(ttl: i64) -> LeaseRecord {
        LeaseRecord {
            id: "database/creds/app/abc".into(),
            issued: at(0),
            duration: Duration::from_secs(ttl as u64),
            expires: at(ttl),
            hard_end: None,
            token_accessor: "acc1".into(),
        }
    }

    fn token() -> TokenView {
        TokenView {
            accessor: "acc1".into(),
        }
    }

    const TIMING: Timing = Timing {
        renew_at_percent: 67,
        rotate_at_percent: 80,
        jitter: 0.0,
    };

    #[test]
    fn issues_once_and_renews_at_the_percent() {
        assert_eq!(
            next_step(None, false, false, &token(), TIMING, at(0)),
            Step::Issue(IssueReason::First)
        );
        let l = lease(100);
        assert_eq!(
            next_step(Some(&l), true, false, &token(), TIMING, at(10)),
            Step::WaitUntil(at(67))
        );
        assert_eq!(
            next_step(Some(&l), true, false, &token(), TIMING, at(67)),
            Step::Renew
        );
    }

    #[test]
    fn jitter_moves_renewal_by_a_few_points_only() {
        let l = lease(1000);
        let early = renew_time(
            &l,
            Timing {
                jitter: -1.0,
                ..TIMING
            },
        );
        let late = renew_time(
            &l,
            Timing {
                jitter: 0.999,
                ..TIMING
            },
        );
        assert_eq!(early, at(640));
        assert!(late > at(699) && late <= at(700));
        assert_eq!(jitter_of("uid-1"), jitter_of("uid-1"));
        assert!((-1.0..1.0).contains(&jitter_of("uid-2")));
    }

    #[test]
    fn a_capped_lease_is_rotated_at_the_rotate_percent_of_its_life() {
        let l = LeaseRecord {
            hard_end: Some(at(1000)),
            ..lease(100)
        };
        assert_eq!(
            next_step(Some(&l), true, false, &token(), TIMING, at(50)),
            Step::WaitUntil(at(800))
        );
        assert_eq!(
            next_step(
                Some(&LeaseRecord {
                    expires: at(1000),
                    ..l.clone()
                }),
                true,
                false,
                &token(),
                TIMING,
                at(800)
            ),
            Step::Issue(IssueReason::MaxTtl)
        );
    }

    #[test]
    fn lost_secret_expired_lease_spec_change_and_token_change_issue_anew() {
        let l = lease(100);
        assert_eq!(
            next_step(Some(&l), false, false, &token(), TIMING, at(1)),
            Step::Issue(IssueReason::SecretLost)
        );
        assert_eq!(
            next_step(Some(&l), true, false, &token(), TIMING, at(100)),
            Step::Issue(IssueReason::LeaseLost)
        );
        assert_eq!(
            next_step(Some(&l), true, true, &token(), TIMING, at(1)),
            Step::Issue(IssueReason::SpecChanged)
        );
        let new_token = TokenView {
            accessor: "acc2".into(),
        };
        assert_eq!(
            next_step(Some(&l), true, false, &new_token, TIMING, at(1)),
            Step::Issue(IssueReason::TokenEnds)
        );
    }
}
