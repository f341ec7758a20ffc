//! Pure steps of the VaultSecret reconcile: validate the spec, build the Secret and the Ready
//! condition. No client, no Vault, no clock: `now` is an argument.

use std::collections::BTreeMap;
use std::time::Duration;

use crds::v1alpha1::{KvEngine, VaultSecret, reasons};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::conditions::Desired;
use crate::identity::IdentityKey;
use crate::template;

/// Annotation on the Secret: which KV version it holds.
pub const SOURCE_VERSION_ANNOTATION: &str = "vaultkeeper.dev/source-version";
/// Annotation on the Secret: which Vault path it comes from.
pub const SOURCE_ANNOTATION: &str = "vaultkeeper.dev/source";
/// Label on the Secret: the VaultSecret that owns it.
pub const OWNER_LABEL: &str = crate::managed::owner_labels::VAULT_SECRET;

/// What a valid spec asks for, in the operator's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub identity: IdentityKey,
    pub refresh: Duration,
    /// `mount/path` as people write it, for messages.
    pub display_path: String,
}

/// Checks what the CRD's CEL rules cannot: the connection exists, durations parse, templates parse.
/// `auth_mount_of` gives the default auth mount of a configured connection.
pub fn plan(
    vs: &VaultSecret,
    auth_mount_of: impl Fn(&str) -> Option<String>,
) -> Result<Plan, String> {
    let spec = &vs.spec;
    let identity = IdentityKey::of_resource(
        spec.connection.as_deref(),
        &spec.auth,
        vs.namespace().unwrap_or_default(),
        auth_mount_of,
    )?;
    let refresh = crds::duration::parse(&spec.refresh_interval).ok_or_else(|| {
        format!(
            "refreshInterval {:?} is not a duration such as 30s, 5m or 1h",
            spec.refresh_interval
        )
    })?;
    if refresh < Duration::from_secs(10) {
        return Err(format!(
            "refreshInterval {} is shorter than the minimum of 10s",
            spec.refresh_interval
        ));
    }
    // The CRD's CEL bound, for resources stored before it existed (the controller's timer queue
    // refuses waits of more than about two years).
    if refresh > Duration::from_secs(168 * 3600) {
        return Err(format!(
            "refreshInterval {} is longer than the maximum of 168h",
            spec.refresh_interval
        ));
    }
    if spec.source.version.is_some() && spec.source.engine == KvEngine::KvV1 {
        return Err(
            "source.version pins a KV v2 version; it cannot be used with engine kv-v1".to_owned(),
        );
    }
    template::check(&spec.destination.templates).map_err(|e| e.to_string())?;
    Ok(Plan {
        identity,
        refresh,
        display_path: format!("{}/{}", spec.source.mount, spec.source.path),
    })
}

/// The whole destination Secret as the operator applies it.
pub fn build_secret(
    vs: &VaultSecret,
    data: BTreeMap<String, Vec<u8>>,
    version: Option<i64>,
) -> Secret {
    let engine = match vs.spec.source.engine {
        KvEngine::KvV1 => "kv-v1",
        KvEngine::KvV2 => "kv-v2",
    };
    let mut annotations = BTreeMap::from([(
        SOURCE_ANNOTATION.to_owned(),
        format!("{engine}:{}/{}", vs.spec.source.mount, vs.spec.source.path),
    )]);
    if let Some(version) = version {
        annotations.insert(SOURCE_VERSION_ANNOTATION.to_owned(), version.to_string());
    }
    let dest = &vs.spec.destination;
    crate::managed::owned_secret(
        vs,
        dest,
        OWNER_LABEL,
        annotations,
        dest.type_.clone().unwrap_or_else(|| "Opaque".to_owned()),
        data,
    )
}

pub use crate::managed::owned_by;

/// The Ready condition after a successful sync.
pub fn synced_condition(vs: &VaultSecret, plan: &Plan, version: Option<i64>) -> Desired {
    let what = match version {
        Some(v) => format!("version {v} of {}", plan.display_path),
        None => format!("the data of {}", plan.display_path),
    };
    Desired {
        type_: crds::v1alpha1::condition_types::READY,
        status: true,
        reason: reasons::SYNCED,
        message: format!("Secret {:?} holds {what}", vs.spec.destination.name),
    }
}

/// The sentence added to failure messages while the Secret keeps older data.
pub fn keeps_data_note(
    secret_name: &str,
    verified_at: Option<&Time>,
    version: Option<i64>,
) -> String {
    let version = version
        .map(|v| format!(" (version {v})"))
        .unwrap_or_default();
    match verified_at {
        Some(t) => format!(
            "; Secret {secret_name:?} is left unchanged and holds the data last synced at {}{version}",
            t.0
        ),
        None => format!("; Secret {secret_name:?} is left unchanged{version}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::v1alpha1::{Destination, KvSource, VaultAuth, VaultSecretSpec};

    fn vault_secret() -> VaultSecret {
        let mut vs = VaultSecret::new(
            "app-config",
            VaultSecretSpec {
                connection: None,
                auth: VaultAuth {
                    role: "app".into(),
                    service_account_name: "web".into(),
                    mount: None,
                },
                source: KvSource {
                    engine: KvEngine::KvV2,
                    mount: "secret".into(),
                    path: "apps/web".into(),
                    version: None,
                },
                refresh_interval: "30s".into(),
                destination: Destination {
                    name: "web-config".into(),
                    type_: None,
                    labels: BTreeMap::from([("team".into(), "a".into())]),
                    annotations: BTreeMap::new(),
                    templates: BTreeMap::new(),
                },
                restart_targets: vec![],
            },
        );
        vs.metadata.namespace = Some("apps".into());
        vs.metadata.uid = Some("uid-1".into());
        vs
    }

    fn mounts(name: &str) -> Option<String> {
        (name == "default").then(|| "kubernetes".to_owned())
    }

    #[test]
    fn plans_identity_from_the_resource_namespace() {
        let plan = plan(&vault_secret(), mounts).unwrap();
        assert_eq!(plan.identity.namespace, "apps");
        assert_eq!(plan.identity.service_account, "web");
        assert_eq!(plan.identity.mount, "kubernetes");
        assert_eq!(plan.refresh, Duration::from_secs(30));
        assert_eq!(plan.display_path, "secret/apps/web");
    }

    #[test]
    fn rejects_what_cannot_work() {
        let mut vs = vault_secret();
        vs.spec.connection = Some("other".into());
        assert_eq!(
            plan(&vs, mounts).unwrap_err(),
            "connection \"other\" is not configured in the operator"
        );
        let mut vs = vault_secret();
        vs.spec.refresh_interval = "5s".into();
        assert!(plan(&vs, mounts).unwrap_err().contains("minimum of 10s"));
        let mut vs = vault_secret();
        vs.spec
            .destination
            .templates
            .insert("url".into(), "{{ .user ".into());
        assert!(plan(&vs, mounts).unwrap_err().contains("does not parse"));
        let mut vs = vault_secret();
        vs.spec.source.engine = KvEngine::KvV1;
        vs.spec.source.version = Some(2);
        assert!(plan(&vs, mounts).unwrap_err().contains("kv-v1"));
    }

    #[test]
    fn builds_an_owned_labelled_secret() {
        let vs = vault_secret();
        let data = crate::managed::secret_data(
            BTreeMap::from([
                ("user".into(), "raw".into()),
                ("url".into(), "raw-url".into()),
            ]),
            BTreeMap::from([("url".into(), "templated".into())]),
        );
        let secret = build_secret(&vs, data, Some(3));
        let labels = secret.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "vaultkeeper");
        assert_eq!(labels["team"], "a");
        assert_eq!(
            secret.metadata.annotations.as_ref().unwrap()[SOURCE_VERSION_ANNOTATION],
            "3"
        );
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data["url"].0, b"templated");
        assert_eq!(data["user"].0, b"raw");
        assert!(owned_by(&secret, &vs));
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.api_version.as_str()),
            ("VaultSecret", "vaultkeeper.dev/v1alpha1")
        );
    }
}
