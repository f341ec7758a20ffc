//! Pure parts of the DynamicCredential reconcile: the plan from the spec, the Secret with its lease
//! annotations, and the lease record read back from them.

use std::collections::BTreeMap;
use std::time::Duration;

use crds::v1alpha1::{
    DynamicCredential, DynamicCredentialStatus, RetiringLease, condition_types, reasons,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::schedule::LeaseRecord;
use crate::conditions::{self, Desired};
use crate::identity::IdentityKey;
use crate::template;

pub const LEASE_ID_ANNOTATION: &str = "vaultkeeper.dev/lease-id";
pub const LEASE_ISSUED_ANNOTATION: &str = "vaultkeeper.dev/lease-issued";
pub const LEASE_TTL_ANNOTATION: &str = "vaultkeeper.dev/lease-ttl-seconds";
pub const LEASE_TOKEN_ANNOTATION: &str = "vaultkeeper.dev/lease-token-accessor";
/// Digest of the spec fields that define the credential; a change means a new credential.
pub const SPEC_DIGEST_ANNOTATION: &str = "vaultkeeper.dev/credential-spec";
/// The leases this credential replaced and that still await revocation, as JSON
/// (`[{"leaseId": …, "expiryTime": …}]`), written with the new credential so that the record
/// survives a lost status write or an operator stop between the two.
pub const RETIRING_ANNOTATION: &str = "vaultkeeper.dev/retiring-leases";
/// The restart stamp the restart targets must reach for this credential, written with it when its
/// issue calls for a restart (rotation or spec change).
pub const RESTART_ANNOTATION: &str = crate::restart::RESTART_FOR_ANNOTATION;
/// At most this many retiring leases are recorded on the Secret.
const MAX_RECORDED_RETIRING: usize = 16;
/// Label on the Secret: the DynamicCredential that owns it.
pub const OWNER_LABEL: &str = crate::managed::owner_labels::DYNAMIC_CREDENTIAL;

/// What a valid spec asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub identity: IdentityKey,
    /// Vault path of the issuing endpoint.
    pub path: String,
    /// JSON body when the endpoint is written to.
    pub body: Option<Value>,
    pub grace: Duration,
    pub spec_digest: String,
}

/// Checks what CEL cannot (connection exists, durations and templates parse) and resolves defaults.
pub fn plan(
    dc: &DynamicCredential,
    auth_mount_of: impl Fn(&str) -> Option<String>,
) -> Result<Plan, String> {
    let spec = &dc.spec;
    let identity = IdentityKey::of_resource(
        spec.connection.as_deref(),
        &spec.auth,
        dc.namespace().unwrap_or_default(),
        auth_mount_of,
    )?;
    // The same bounds as the CRD's CEL rule, for resources stored before it existed.
    let grace = crds::duration::parse(&spec.rotation_grace_period)
        .filter(|g| *g <= Duration::from_secs(24 * 3600))
        .ok_or_else(|| {
            format!(
                "rotationGracePeriod {:?} is not a duration such as 30s or 5m of at most 24h",
                spec.rotation_grace_period
            )
        })?;
    let source = &spec.source;
    let path = match (&source.mount, &source.role, &source.path) {
        (Some(mount), Some(role), None) => format!("{mount}/creds/{role}"),
        (None, None, Some(path)) => path.clone(),
        _ => {
            return Err(
                "source needs either mount and role (reads <mount>/creds/<role>) or path, not both"
                    .to_owned(),
            );
        }
    };
    let post = match source.method {
        Some(crds::v1alpha1::LeaseMethod::Post) => true,
        Some(crds::v1alpha1::LeaseMethod::Get) => false,
        None => !source.parameters.is_empty(),
    };
    let body = post.then(|| {
        Value::Object(
            source
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    });
    template::check(&spec.destination.templates).map_err(|e| e.to_string())?;
    let defining = serde_json::json!({
        "identity": [&identity.connection, &identity.service_account, &identity.role, &identity.mount],
        "path": path,
        "body": body,
        "templates": spec.destination.templates,
    });
    let spec_digest = hex::encode(&Sha256::digest(defining.to_string().as_bytes())[..8]);
    Ok(Plan {
        identity,
        path,
        body,
        grace,
        spec_digest,
    })
}

/// The lease recorded on a Secret the operator wrote, if the annotations are complete.
pub fn lease_on_secret(secret: &Secret) -> Option<(String, Timestamp, Duration, String)> {
    let a = secret.metadata.annotations.as_ref()?;
    Some((
        a.get(LEASE_ID_ANNOTATION)?.clone(),
        a.get(LEASE_ISSUED_ANNOTATION)?.parse().ok()?,
        Duration::from_secs(a.get(LEASE_TTL_ANNOTATION)?.parse().ok()?),
        a.get(LEASE_TOKEN_ANNOTATION).cloned().unwrap_or_default(),
    ))
}

/// Whether the Secret carries a lease ID whose other annotations do not parse (edited by hand):
/// the record is then ignored, and a condition says so.
pub fn lease_record_invalid(secret: &Secret) -> bool {
    secret.annotations().contains_key(LEASE_ID_ANNOTATION) && lease_on_secret(secret).is_none()
}

/// What must follow a freshly issued credential, recorded on its Secret.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FollowUp {
    /// Leases to revoke once the restarted workloads rolled out (or at once without targets).
    pub retiring: Vec<RetiringLease>,
    /// The stamp the restart targets must get, when the issue calls for a restart.
    pub restart_for: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordedLease {
    lease_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expiry_time: Option<Timestamp>,
}

/// The follow-up recorded on the Secret. A value that does not parse counts as not recorded.
pub fn follow_up_on_secret(secret: &Secret) -> FollowUp {
    let a = secret.annotations();
    let retiring = a
        .get(RETIRING_ANNOTATION)
        .and_then(|text| serde_json::from_str::<Vec<RecordedLease>>(text).ok())
        .unwrap_or_default()
        .into_iter()
        .take(MAX_RECORDED_RETIRING)
        .filter(|r| !r.lease_id.is_empty())
        .map(|r| RetiringLease {
            lease_id: r.lease_id,
            expiry_time: r
                .expiry_time
                .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
            // Restarted workloads may still use it: the rollout is waited for again.
            revoke_after: None,
        })
        .collect();
    let restart_for = crate::restart::recorded_stamp(a);
    FollowUp {
        retiring,
        restart_for,
    }
}

/// The whole Secret for a freshly issued lease, with what must follow it.
pub fn build_secret(
    dc: &DynamicCredential,
    data: BTreeMap<String, Vec<u8>>,
    lease: &LeaseRecord,
    spec_digest: &str,
    follow_up: &FollowUp,
) -> Secret {
    let mut annotations = BTreeMap::from([
        (LEASE_ID_ANNOTATION.to_owned(), lease.id.clone()),
        (LEASE_ISSUED_ANNOTATION.to_owned(), lease.issued.to_string()),
        (
            LEASE_TTL_ANNOTATION.to_owned(),
            lease.duration.as_secs().to_string(),
        ),
        (
            LEASE_TOKEN_ANNOTATION.to_owned(),
            lease.token_accessor.clone(),
        ),
        (SPEC_DIGEST_ANNOTATION.to_owned(), spec_digest.to_owned()),
    ]);
    if !follow_up.retiring.is_empty() {
        let recorded: Vec<RecordedLease> = follow_up
            .retiring
            .iter()
            .take(MAX_RECORDED_RETIRING)
            .map(|r| RecordedLease {
                lease_id: r.lease_id.clone(),
                expiry_time: r.expiry_time.as_ref().map(|t| t.0),
            })
            .collect();
        annotations.insert(
            RETIRING_ANNOTATION.to_owned(),
            serde_json::to_string(&recorded).expect("lease records serialize"),
        );
    }
    if let Some(stamp) = &follow_up.restart_for {
        annotations.insert(RESTART_ANNOTATION.to_owned(), stamp.clone());
    }
    let dest = &dc.spec.destination;
    crate::managed::owned_secret(
        dc,
        dest,
        OWNER_LABEL,
        annotations,
        dest.type_.clone().unwrap_or_else(|| "Opaque".to_owned()),
        data,
    )
}

/// The status with what the Secret records taken up again. When the status names another lease
/// than the Secret (the status write after the last issue was lost, or the operator stopped in
/// between), the Secret's record is the truth: its replaced leases go back into the retiring list
/// (waiting for the rollout again) and its restart into `pendingRestart`. A status lease the
/// Secret no longer carries and did not record (it was lost, not replaced) is retired after the
/// grace period. Pure.
pub fn take_up_record(
    dc: &DynamicCredential,
    mut status: DynamicCredentialStatus,
    secret: Option<&Secret>,
    lease: Option<&LeaseRecord>,
    grace: Duration,
    now: Timestamp,
) -> DynamicCredentialStatus {
    if let Some(s) = secret
        && let Some((secret_lease, ..)) = lease_on_secret(s)
        && status.lease_id.as_ref() != Some(&secret_lease)
    {
        let follow_up = follow_up_on_secret(s);
        for retiring in follow_up.retiring {
            if retiring.lease_id != secret_lease
                && !status
                    .retiring_leases
                    .iter()
                    .any(|r| r.lease_id == retiring.lease_id)
            {
                status.retiring_leases.push(retiring);
            }
        }
        status.pending_restart = crate::restart::take_up(
            status.pending_restart.take(),
            follow_up.restart_for,
            &dc.spec.restart_targets,
            now,
        );
    }
    if let (Some(l), Some(old)) = (lease, status.lease_id.clone())
        && l.id != old
        && !status.retiring_leases.iter().any(|r| r.lease_id == old)
    {
        status.retiring_leases.push(RetiringLease {
            lease_id: old,
            expiry_time: status.expiry_time.clone(),
            revoke_after: Some(Time(crate::clock::after_stored(now, grace))),
        });
    }
    status
}

/// What a successful reconcile did, for the status.
pub struct Outcome {
    /// What happened to the lease (issued, renewed, capped), as (ok, reason, message).
    pub renewal: Option<(bool, &'static str, String)>,
    /// Where the restart of the targets stands, when it moved.
    pub restarts: Option<Desired>,
    /// When the lease is next renewed or rotated.
    pub next_renewal: Timestamp,
}

/// The whole status after a successful reconcile: the lease facts and retiring leases already in
/// `status`, plus `Ready`, `LeaseRenewal` (when something happened to the lease), `Restarts` and
/// `Rotating`. Pure: `now` stamps the transitions.
pub fn settled_status(
    dc: &DynamicCredential,
    path: &str,
    mut status: DynamicCredentialStatus,
    outcome: Outcome,
    now: Timestamp,
) -> DynamicCredentialStatus {
    let generation = dc.metadata.generation;
    let t = Time(now);
    status.next_renewal_time = Some(Time(outcome.next_renewal));
    status.observed_generation = generation;
    let ready = Desired {
        type_: condition_types::READY,
        status: true,
        reason: reasons::SYNCED,
        message: format!(
            "Secret {:?} holds a credential from {path} (lease {}, expires {})",
            dc.spec.destination.name,
            status.lease_id.clone().unwrap_or_default(),
            status
                .expiry_time
                .as_ref()
                .map(|t| crate::clock::show(t.0))
                .unwrap_or_default()
        ),
    };
    status.conditions = conditions::set(&status.conditions, ready, generation, &t);
    if let Some((ok, reason, message)) = outcome.renewal {
        let renewal = Desired {
            type_: condition_types::LEASE_RENEWAL,
            status: ok,
            reason,
            message,
        };
        status.conditions = conditions::set(&status.conditions, renewal, generation, &t);
    }
    if let Some(c) = outcome.restarts {
        status.conditions = conditions::set(&status.conditions, c, generation, &t);
    }
    let rotating = !status.retiring_leases.is_empty();
    let rotation = Desired {
        type_: condition_types::ROTATING,
        status: rotating,
        reason: if rotating {
            reasons::WAITING_FOR_ROLLOUT
        } else {
            reasons::IDLE
        },
        message: if rotating {
            format!(
                "{} previous lease(s) will be revoked after the restarted workloads rolled out and {:?} passed",
                status.retiring_leases.len(),
                dc.spec.rotation_grace_period
            )
        } else {
            "no rotation in progress".to_owned()
        },
    };
    status.conditions = conditions::set(&status.conditions, rotation, generation, &t);
    status
}

pub use crate::managed::owned_by;

#[cfg(test)]
mod tests {
    use super::*;
    use crds::v1alpha1::{Destination, DynamicCredentialSpec, LeaseSource, VaultAuth};

    fn dc(source: LeaseSource) -> DynamicCredential {
        let mut dc = DynamicCredential::new(
            "db",
            DynamicCredentialSpec {
                connection: None,
                auth: VaultAuth {
                    role: "app".into(),
                    service_account_name: "web".into(),
                    mount: None,
                },
                source,
                renew_at_percent: 67,
                rotate_at_percent: 80,
                rotation_grace_period: "30s".into(),
                revoke_on_delete: true,
                destination: Destination {
                    name: "db-creds".into(),
                    type_: None,
                    labels: Default::default(),
                    annotations: Default::default(),
                    templates: BTreeMap::from([(
                        "DATABASE_URL".into(),
                        "postgres://{{ .username }}:{{ .password }}@db/app".into(),
                    )]),
                },
                restart_targets: vec![],
            },
        );
        dc.metadata.namespace = Some("app".into());
        dc.metadata.uid = Some("uid-1".into());
        dc
    }

    fn mounts(name: &str) -> Option<String> {
        (name == "default").then(|| "kubernetes".to_owned())
    }

    #[test]
    fn plans_creds_reads_and_posts() {
        let p = plan(
            &dc(LeaseSource {
                mount: Some("database".into()),
                role: Some("app".into()),
                path: None,
                method: None,
                parameters: Default::default(),
            }),
            mounts,
        )
        .unwrap();
        assert_eq!(p.path, "database/creds/app");
        assert_eq!(p.body, None);
        assert_eq!(p.identity.mount, "kubernetes");
        assert_eq!(p.grace, Duration::from_secs(30));
        let post = plan(
            &dc(LeaseSource {
                mount: None,
                role: None,
                path: Some("aws/sts/deploy".into()),
                method: None,
                parameters: BTreeMap::from([("ttl".into(), "15m".into())]),
            }),
            mounts,
        )
        .unwrap();
        assert_eq!(post.body, Some(serde_json::json!({"ttl": "15m"})));
        assert_ne!(p.spec_digest, post.spec_digest);
    }

    #[test]
    fn secret_carries_the_lease_and_reads_back() {
        let d = dc(LeaseSource {
            mount: Some("database".into()),
            role: Some("app".into()),
            path: None,
            method: None,
            parameters: Default::default(),
        });
        let issued: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        let lease = LeaseRecord {
            id: "database/creds/app/xyz".into(),
            issued,
            duration: Duration::from_secs(3600),
            expires: issued + Duration::from_secs(3600),
            hard_end: None,
            token_accessor: "acc".into(),
        };
        let follow_up = FollowUp {
            retiring: vec![RetiringLease {
                lease_id: "database/creds/app/old".into(),
                expiry_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(issued)),
                revoke_after: None,
            }],
            restart_for: Some("0123456789abcdef".into()),
        };
        let secret = build_secret(
            &d,
            BTreeMap::from([("username".into(), b"u".to_vec())]),
            &lease,
            "abcd",
            &follow_up,
        );
        assert_eq!(
            follow_up_on_secret(&secret),
            follow_up,
            "the follow-up reads back"
        );
        assert!(!lease_record_invalid(&secret));
        assert!(owned_by(&secret, &d));
        assert_eq!(
            lease_on_secret(&secret),
            Some((lease.id.clone(), issued, lease.duration, "acc".into()))
        );
        assert_eq!(
            secret
                .labels()
                .get(crds::MANAGED_BY_LABEL)
                .map(String::as_str),
            Some("vaultkeeper")
        );
    }

    #[test]
    fn hand_edited_records_count_as_not_recorded() {
        let mut secret = Secret::default();
        secret.metadata.annotations = Some(BTreeMap::from([
            (
                LEASE_ID_ANNOTATION.to_owned(),
                "database/creds/app/x".to_owned(),
            ),
            (LEASE_ISSUED_ANNOTATION.to_owned(), "yesterday".to_owned()),
            (LEASE_TTL_ANNOTATION.to_owned(), "-1".to_owned()),
            (
                RETIRING_ANNOTATION.to_owned(),
                "[{\"leaseId\": 7}]".to_owned(),
            ),
            (RESTART_ANNOTATION.to_owned(), "$(rm -rf /)".to_owned()),
        ]));
        assert_eq!(lease_on_secret(&secret), None);
        assert!(lease_record_invalid(&secret));
        assert_eq!(follow_up_on_secret(&secret), FollowUp::default());
    }

    #[test]
    fn a_lost_status_write_is_taken_up_from_the_secret() {
        let mut d = dc(LeaseSource {
            mount: Some("database".into()),
            role: Some("app".into()),
            path: None,
            method: None,
            parameters: Default::default(),
        });
        d.spec.restart_targets = vec![crds::v1alpha1::RestartTarget {
            kind: crds::v1alpha1::WorkloadKind::Deployment,
            name: "web".into(),
        }];
        let now: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        let new = LeaseRecord {
            id: "database/creds/app/new".into(),
            issued: now,
            duration: Duration::from_secs(3600),
            expires: now + Duration::from_secs(3600),
            hard_end: None,
            token_accessor: "acc".into(),
        };
        let follow_up = FollowUp {
            retiring: vec![RetiringLease {
                lease_id: "database/creds/app/old".into(),
                expiry_time: None,
                revoke_after: None,
            }],
            restart_for: Some("0123456789abcdef".into()),
        };
        let secret = build_secret(&d, BTreeMap::new(), &new, "digest", &follow_up);
        // The status still describes the old lease: the write after the issue was lost.
        let stale = DynamicCredentialStatus {
            lease_id: Some("database/creds/app/old".into()),
            ..Default::default()
        };
        let taken = take_up_record(
            &d,
            stale,
            Some(&secret),
            Some(&new),
            Duration::from_secs(5),
            now,
        );
        assert_eq!(
            taken.retiring_leases, follow_up.retiring,
            "waits for the rollout again"
        );
        assert_eq!(
            taken.pending_restart.map(|p| p.stamp),
            Some("0123456789abcdef".to_owned())
        );
        // A status in line with the Secret is left as it is.
        let current = DynamicCredentialStatus {
            lease_id: Some(new.id.clone()),
            ..Default::default()
        };
        assert_eq!(
            take_up_record(
                &d,
                current.clone(),
                Some(&secret),
                Some(&new),
                Duration::ZERO,
                now
            ),
            current
        );
    }

    #[test]
    fn settled_status_says_ready_and_rotating_without_the_credential() {
        let d = dc(LeaseSource {
            mount: Some("database".into()),
            role: Some("app".into()),
            path: None,
            method: None,
            parameters: Default::default(),
        });
        let now: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        let status = DynamicCredentialStatus {
            lease_id: Some("database/creds/app/new".into()),
            retiring_leases: vec![RetiringLease {
                lease_id: "database/creds/app/old".into(),
                expiry_time: None,
                revoke_after: None,
            }],
            ..Default::default()
        };
        let settled = settled_status(
            &d,
            "database/creds/app",
            status,
            Outcome {
                renewal: Some((true, reasons::ISSUED, "lease issued".into())),
                restarts: None,
                next_renewal: now,
            },
            now,
        );
        let find = |t: &str| conditions::find(&settled.conditions, t).cloned().unwrap();
        assert_eq!(find(condition_types::READY).status, "True");
        assert!(
            find(condition_types::READY)
                .message
                .contains("database/creds/app/new")
        );
        assert_eq!(find(condition_types::ROTATING).status, "True");
        assert_eq!(
            find(condition_types::ROTATING).reason,
            reasons::WAITING_FOR_ROLLOUT
        );
        assert_eq!(find(condition_types::LEASE_RENEWAL).reason, reasons::ISSUED);
        assert_eq!(settled.next_renewal_time, Some(Time(now)));
    }

    #[test]
    fn unknown_connection_is_an_invalid_spec() {
        let mut d = dc(LeaseSource {
            mount: Some("database".into()),
            role: Some("app".into()),
            path: None,
            method: None,
            parameters: Default::default(),
        });
        d.spec.connection = Some("other".into());
        assert!(plan(&d, mounts).unwrap_err().contains("not configured"));
    }
}
