//! Pure parts of the DynamicCredential reconcile: the plan from the spec, the Secret with its lease
//! annotations, and the lease record read back from them.

use std::collections::BTreeMap;
use std::time::Duration;

use crds::v1alpha1::DynamicCredential;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::schedule::LeaseRecord;
use crate::identity::IdentityKey;
use crate::template;

pub const LEASE_ID_ANNOTATION: &str = "vaultkeeper.dev/lease-id";
pub const LEASE_ISSUED_ANNOTATION: &str = "vaultkeeper.dev/lease-issued";
pub const LEASE_TTL_ANNOTATION: &str = "vaultkeeper.dev/lease-ttl-seconds";
pub const LEASE_TOKEN_ANNOTATION: &str = "vaultkeeper.dev/lease-token-accessor";
/// Digest of the spec fields that define the credential; a change means a new credential.
pub const SPEC_DIGEST_ANNOTATION: &str = "vaultkeeper.dev/credential-spec";
/// Label on the Secret: the DynamicCredential that owns it.
pub const OWNER_LABEL: &str = "vaultkeeper.dev/dynamiccredential";

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
    let grace = crds::duration::parse(&spec.rotation_grace_period).ok_or_else(|| {
        format!(
            "rotationGracePeriod {:?} is not a duration such as 30s or 5m",
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

/// The whole Secret for a freshly issued lease.
pub fn build_secret(
    dc: &DynamicCredential,
    data: BTreeMap<String, Vec<u8>>,
    lease: &LeaseRecord,
    spec_digest: &str,
) -> Secret {
    let annotations = BTreeMap::from([
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
        let secret = build_secret(
            &d,
            BTreeMap::from([("username".into(), b"u".to_vec())]),
            &lease,
            "abcd",
        );
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
