//! The CertificateRequest reconcile's decisions, pure: whether to keep the stored certificate or
//! issue one (and what must follow it), given what was gathered and `now`, and the status each
//! outcome makes. `sync` gathers, asks, acts and records; it decides nothing itself.

use std::time::Duration;

use crds::v1alpha1::{CertificateRequestStatus, SupersededCertificate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::desired::{self, CertFacts, IssueReason, Step, Stored};

/// What the reconcile knows about the certificate before it changes anything.
#[derive(Clone, Debug)]
pub struct Gathered {
    /// The certificate in the Secret, if it holds a readable one with its key.
    pub stored: Option<Stored>,
    /// Whether the Secret's labels and annotations are those the spec asks for.
    pub metadata_current: bool,
    /// The status's serial and notAfter (they may lag behind the Secret).
    pub status_serial: Option<String>,
    pub status_not_after: Option<Time>,
    pub renew_before: Option<Duration>,
    pub jitter: f64,
    /// `revokeSuperseded`.
    pub revoke_superseded: bool,
    /// Whether the resource has restart targets (the old certificate then waits for the rollout).
    pub has_restart_targets: bool,
}

/// What to do with the certificate now.
#[derive(Clone, Debug, PartialEq)]
pub enum CertificateAction {
    /// The stored certificate stays; the Secret is rewritten when only its metadata lags.
    Keep {
        facts: CertFacts,
        rewrite_metadata: bool,
    },
    /// Issue one and write it, with `superseded` and (when `restart`) the restart stamp in the
    /// same apply.
    Issue {
        reason: IssueReason,
        superseded: Vec<SupersededCertificate>,
        restart: bool,
    },
}

/// How late a due renewal is acted on: `now` minus the renewal time of the stored certificate
/// (`None` when no renewal is due).
pub fn renewal_lateness(gathered: &Gathered, now: Timestamp) -> Option<std::time::Duration> {
    let stored = gathered.stored.as_ref()?;
    match desired::next_step(Some(stored), gathered.renew_before, gathered.jitter, now) {
        Step::Issue(IssueReason::Renewal) => Some(crate::clock::until(
            desired::renew_at(&stored.facts, gathered.renew_before, gathered.jitter),
            now,
        )),
        _ => None,
    }
}

/// The decision, given the certificates already waiting for revocation.
pub fn decide(
    gathered: &Gathered,
    superseded: &[SupersededCertificate],
    now: Timestamp,
) -> CertificateAction {
    let step = desired::next_step(
        gathered.stored.as_ref(),
        gathered.renew_before,
        gathered.jitter,
        now,
    );
    if let (Step::Keep(_), Some(stored)) = (step, &gathered.stored) {
        return CertificateAction::Keep {
            facts: stored.facts.clone(),
            rewrite_metadata: !gathered.metadata_current,
        };
    }
    let reason = match step {
        Step::Issue(reason) => reason,
        Step::Keep(_) => IssueReason::Missing,
    };
    // The Secret's certificate is the one being replaced; the status may lag behind it.
    let previous = gathered
        .stored
        .as_ref()
        .map(|s| s.facts.serial.clone())
        .or_else(|| gathered.status_serial.clone());
    let mut superseded = superseded.to_vec();
    if let Some(old) = &previous
        && gathered.revoke_superseded
        && !superseded.iter().any(|s| s.serial_number == *old)
    {
        let not_after = gathered
            .stored
            .as_ref()
            .map(|s| Time(s.facts.not_after))
            .or_else(|| gathered.status_not_after.clone());
        superseded.push(SupersededCertificate {
            serial_number: old.clone(),
            not_after,
            revoke_after: (!gathered.has_restart_targets).then_some(Time(now)),
        });
    }
    CertificateAction::Issue {
        reason,
        superseded,
        restart: previous.is_some() && gathered.has_restart_targets,
    }
}

/// The status once a new certificate was written: the certificates now superseded, its data HMAC,
/// when it was issued and (when `restart`) the pending restart for its data.
pub fn with_issued(
    mut status: CertificateRequestStatus,
    hmac: &str,
    superseded: Vec<SupersededCertificate>,
    restart: bool,
    now: Timestamp,
) -> CertificateRequestStatus {
    status.superseded = superseded;
    if restart {
        status.pending_restart = Some(crate::restart::for_new_credential(
            status.pending_restart.as_ref(),
            hmac,
            now,
        ));
    }
    status.data_hmac = Some(hmac.to_owned());
    status.last_issue_time = Some(Time(now));
    status
}

/// The status's facts of the certificate the Secret now holds, and when it is renewed.
pub fn with_certificate(
    mut status: CertificateRequestStatus,
    facts: &CertFacts,
    renewal: Timestamp,
) -> CertificateRequestStatus {
    status.serial_number = Some(facts.serial.clone());
    status.not_before = Some(Time(facts.not_before));
    status.not_after = Some(Time(facts.not_after));
    status.renewal_time = Some(Time(renewal));
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    fn at(offset: i64) -> Timestamp {
        Timestamp::from_second(T0 + offset).unwrap()
    }

    fn stored(serial: &str, matches_spec: bool) -> Stored {
        Stored {
            facts: CertFacts {
                serial: serial.into(),
                not_before: at(0),
                not_after: at(3000),
            },
            matches_spec,
        }
    }

    fn gathered(stored: Option<Stored>) -> Gathered {
        Gathered {
            stored,
            metadata_current: true,
            status_serial: None,
            status_not_after: None,
            renew_before: None,
            jitter: 0.0,
            revoke_superseded: true,
            has_restart_targets: true,
        }
    }

    #[test]
    fn a_valid_certificate_is_kept_and_its_metadata_caught_up() {
        let mut g = gathered(Some(stored("01", true)));
        let keep = |g: &Gathered| decide(g, &[], at(100));
        assert!(matches!(
            keep(&g),
            CertificateAction::Keep {
                rewrite_metadata: false,
                ..
            }
        ));
        g.metadata_current = false;
        assert!(matches!(
            keep(&g),
            CertificateAction::Keep {
                rewrite_metadata: true,
                ..
            }
        ));
    }

    #[test]
    fn renewal_lateness_counts_from_the_renewal_time() {
        let g = gathered(Some(stored("01", true)));
        let due = desired::renew_at(&g.stored.as_ref().unwrap().facts, g.renew_before, g.jitter);
        let late =
            |s: i64| renewal_lateness(&g, due + k8s_openapi::jiff::SignedDuration::from_secs(s));
        assert_eq!(late(7), Some(std::time::Duration::from_secs(7)));
        assert_eq!(
            late(-1),
            Some(std::time::Duration::ZERO),
            "a second early counts as due"
        );
        assert_eq!(late(-2), None, "not due yet");
        assert_eq!(renewal_lateness(&gathered(None), at(2500)), None);
    }

    #[test]
    fn a_renewal_supersedes_the_secrets_certificate_and_restarts() {
        let mut g = gathered(Some(stored("01", true)));
        g.status_serial = Some("00".into()); // the status lags behind the Secret
        match decide(&g, &[], at(2500)) {
            CertificateAction::Issue {
                reason,
                superseded,
                restart,
            } => {
                assert_eq!(reason, IssueReason::Renewal);
                assert_eq!(superseded.len(), 1);
                assert_eq!(superseded[0].serial_number, "01");
                assert_eq!(superseded[0].not_after, Some(Time(at(3000))));
                assert_eq!(superseded[0].revoke_after, None, "waits for the rollout");
                assert!(restart);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_targets_or_revocation_nothing_waits() {
        let mut g = gathered(Some(stored("01", false)));
        g.has_restart_targets = false;
        match decide(&g, &[], at(100)) {
            CertificateAction::Issue {
                reason,
                superseded,
                restart,
            } => {
                assert_eq!(reason, IssueReason::SpecChanged);
                assert_eq!(superseded[0].revoke_after, Some(Time(at(100))));
                assert!(!restart);
            }
            other => panic!("{other:?}"),
        }
        g.revoke_superseded = false;
        assert!(matches!(
            decide(&g, &[], at(100)),
            CertificateAction::Issue { superseded, .. } if superseded.is_empty()
        ));
    }

    #[test]
    fn a_first_certificate_supersedes_nothing_and_one_already_recorded_is_not_added_twice() {
        assert_eq!(
            decide(&gathered(None), &[], at(0)),
            CertificateAction::Issue {
                reason: IssueReason::Missing,
                superseded: vec![],
                restart: false
            }
        );
        let g = gathered(Some(stored("01", false)));
        let CertificateAction::Issue { superseded, .. } = decide(&g, &[], at(10)) else {
            panic!("an issue")
        };
        let CertificateAction::Issue {
            superseded: again, ..
        } = decide(&g, &superseded, at(11))
        else {
            panic!("an issue")
        };
        assert_eq!(again, superseded);
    }

    #[test]
    fn an_issued_certificate_is_recorded_whole() {
        let facts = stored("02", true).facts;
        let status = with_issued(
            CertificateRequestStatus::default(),
            "h",
            vec![],
            true,
            at(5),
        );
        let status = with_certificate(status, &facts, at(2000));
        assert_eq!(status.serial_number.as_deref(), Some("02"));
        assert_eq!(status.renewal_time, Some(Time(at(2000))));
        assert_eq!(status.last_issue_time, Some(Time(at(5))));
        assert!(status.pending_restart.is_some());
    }
}
