//! Spec blocks every vaultkeeper kind shares: who logs in to Vault (`auth`) and what Secret to write
//! (`destination`), plus the condition vocabulary the operator reports.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The identity the operator uses for this resource: a ServiceAccount of the resource's own
/// namespace, logged in to Vault's Kubernetes auth method.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultAuth {
    /// Vault role of the Kubernetes auth method to log in with. The role's bound ServiceAccount
    /// names and namespaces must include `serviceAccountName` in this resource's namespace.
    #[x_kube(validation = Rule::new("self.size() > 0").message("auth.role must name a role of Vault's Kubernetes auth method; it cannot be empty"))]
    #[schemars(length(max = 256))]
    pub role: String,

    /// ServiceAccount, in this resource's namespace, whose short-lived token the operator requests
    /// (TokenRequest API) and presents to Vault. A resource can only use its own namespace's
    /// ServiceAccounts. Defaults to `default`.
    #[serde(default = "default_service_account")]
    #[x_kube(validation = Rule::new(r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("auth.serviceAccountName must be a ServiceAccount name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"))]
    #[schemars(length(max = 253))]
    pub service_account_name: String,

    /// Path of the Kubernetes auth method in Vault, without the `auth/` prefix (for example
    /// `kubernetes` or `k8s-prod`). Defaults to the operator's configured mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$')").message("auth.mount must be a Vault mount path such as 'kubernetes' (no leading or trailing '/')"))]
    #[schemars(length(max = 128))]
    pub mount: Option<String>,
}

fn default_service_account() -> String {
    "default".to_owned()
}

/// The Kubernetes Secret the operator writes. It is owned by this resource (deleted with it) and
/// labelled `app.kubernetes.io/managed-by: vaultkeeper`. An existing Secret that vaultkeeper does
/// not manage is never overwritten.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Name of the Secret, in this resource's namespace.
    #[x_kube(validation = Rule::new(r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("destination.name must be a valid Secret name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"))]
    #[schemars(length(max = 253))]
    pub name: String,

    /// Type of the Secret (for example `Opaque` or `kubernetes.io/dockerconfigjson`). Defaults to
    /// `Opaque`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    #[schemars(length(max = 253))]
    pub type_: Option<String>,

    /// Labels added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Annotations added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Extra Secret keys computed from the Vault data with Go-template syntax, for example
    /// `DATABASE_URL: "postgres://{{ .username }}:{{ .password }}@db:5432/app"`. Each top-level
    /// Vault key is available as `.<key>`. Templated keys are added to the raw Vault keys and win
    /// over a raw key of the same name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new(r"self.all(k, k.matches('^[-._a-zA-Z0-9]+$'))").message("destination.templates keys must be valid Secret keys: letters, digits, '-', '_' and '.'"))]
    #[schemars(extend("maxProperties" = 64))]
    pub templates: BTreeMap<String, String>,
}

/// Condition types reported in `status.conditions`.
pub mod condition_types {
    /// The Secret holds the data of the source, as last read from Vault.
    pub const READY: &str = "Ready";
    /// DynamicCredential: the current lease is renewed on schedule.
    pub const LEASE_RENEWAL: &str = "LeaseRenewal";
    /// DynamicCredential: a new credential replaces the current one.
    pub const ROTATING: &str = "Rotating";
    /// CertificateRequest: what the last issue or renewal did.
    pub const ISSUING: &str = "Issuing";
    /// Restart targets: restarted for the current data, waiting, or missing.
    pub const RESTARTS: &str = "Restarts";
}

/// Reasons of the conditions, in CamelCase as Kubernetes expects. Stable: tools may match on them.
pub mod reasons {
    /// The Secret matches the Vault data.
    pub const SYNCED: &str = "Synced";
    /// The spec cannot work as written; nothing is retried until it changes.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Vault refused the read or the login for this identity.
    pub const PERMISSION_DENIED: &str = "PermissionDenied";
    /// Vault refused the request as invalid (400 or another 4xx, not 403), for example a name a PKI
    /// role does not allow; its message says why. Retried with backoff, since the fix may be made in
    /// Vault rather than in the spec.
    pub const VAULT_REJECTED: &str = "VaultRejected";
    /// Vault is sealed, stopped, unreachable or failing; the Secret keeps its last data.
    pub const VAULT_UNAVAILABLE: &str = "VaultUnavailable";
    /// The Vault path or the requested version does not exist.
    pub const SOURCE_NOT_FOUND: &str = "SourceNotFound";
    /// The KV version to sync was deleted or destroyed; the Secret keeps its last data.
    pub const SOURCE_VERSION_DELETED: &str = "SourceVersionDeleted";
    /// The destination Secret exists and is not managed by this resource.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// The ServiceAccount token could not be requested from Kubernetes.
    pub const TOKEN_REQUEST_FAILED: &str = "TokenRequestFailed";
    /// Writing to the Kubernetes API failed; retried with backoff.
    pub const KUBERNETES_ERROR: &str = "KubernetesError";
    /// DynamicCredential: a lease was issued and its credential written.
    pub const ISSUED: &str = "Issued";
    /// DynamicCredential: a new credential replaced the previous one.
    pub const ROTATED: &str = "Rotated";
    /// DynamicCredential: the lease was renewed.
    pub const RENEWED: &str = "Renewed";
    /// DynamicCredential: renewal cannot extend the lease (max TTL reached); a new credential is due.
    pub const MAX_TTL_REACHED: &str = "MaxTTLReached";
    /// DynamicCredential: the Vault token that issued the lease ends before the lease would; the
    /// credential is rotated early so it never dies with the token.
    pub const TOKEN_ENDS_FIRST: &str = "IssuingTokenEndsFirst";
    /// DynamicCredential: the lease expired or was revoked outside vaultkeeper; replaced once.
    pub const LEASE_LOST: &str = "LeaseLost";
    /// DynamicCredential: the old credential is kept until the restarted workloads moved over.
    pub const WAITING_FOR_ROLLOUT: &str = "WaitingForRollout";
    /// DynamicCredential: no rotation is in progress.
    pub const IDLE: &str = "Idle";
    /// CertificateRequest: a certificate was issued because none was stored, it did not match the
    /// spec, or it reached its renewal time.
    pub const CERTIFICATE_ISSUED: &str = "CertificateIssued";
    /// CertificateRequest: the stored certificate is valid and matches the spec.
    pub const CERTIFICATE_VALID: &str = "CertificateValid";
    /// A replaced lease or certificate was revoked.
    pub const REVOKED: &str = "Revoked";
    /// Restart targets got the stamp of the current data.
    pub const RESTARTED: &str = "Restarted";
    /// A restart waits for its debounce window, a running rollout or the namespace's budget.
    pub const RESTART_PENDING: &str = "RestartPending";
    /// The restarted workloads did not finish their rollout (a Deployment exceeded its progress
    /// deadline, or the operator's `--rollout-timeout` passed): the replaced lease or certificate
    /// is revoked after its grace period anyway.
    pub const ROLLOUT_NOT_FINISHED: &str = "RolloutNotFinished";
    /// The reconcile failed on a bug in vaultkeeper (it panicked); retried with backoff, and the
    /// operator log has the details.
    pub const INTERNAL_ERROR: &str = "InternalError";
    /// A restart target does not exist.
    pub const TARGET_MISSING: &str = "RestartTargetMissing";
}

/// A workload the operator restarts (a rolling restart through its pod template) when the data it
/// consumes changes.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, KubeSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct RestartTarget {
    /// Kind of the workload: `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: WorkloadKind,

    /// Name of the workload, in this resource's namespace.
    #[x_kube(validation = Rule::new(r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("restartTargets[].name must be a workload name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"))]
    #[schemars(length(max = 253))]
    pub name: String,
}

/// A restart of `restartTargets` that is due: the data changed, and the targets get `stamp` once
/// the debounce window ends (further changes in the window only replace the stamp).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingRestart {
    /// The pod template annotation value the targets will get (a hash of the data, not the data).
    pub stamp: String,
    /// Not before this time (the end of the debounce window).
    pub not_before: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// Kinds of workload that can be restarted.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    schemars::JsonSchema,
)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
}
