//! `DynamicCredential`: a leased credential of Vault (database user, cloud key, …) kept alive in a
//! Kubernetes Secret: renewed while it may live, rotated with overlap when it may not.

// The printcolumn(...) entries of `#[kube]` repeat `type_ = "string"` by design; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::shared::{Destination, PendingRestart, RestartTarget, VaultAuth};

/// Keeps a leased Vault credential in a Kubernetes Secret. The operator issues the credential
/// once, renews its lease at `renewAtPercent` of the TTL, and when renewal can no longer extend it
/// issues a new one, writes it, restarts `restartTargets`, waits for their rollout and only then
/// revokes the old lease. A restarted operator resumes the same lease.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "vaultkeeper.dev",
    version = "v1alpha1",
    kind = "DynamicCredential",
    namespaced,
    status = "DynamicCredentialStatus",
    shortname = "dcred",
    category = "vaultkeeper",
    doc = "DynamicCredential keeps a leased Vault credential (for example a database user) in a Kubernetes Secret, renewed and rotated.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiryTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DynamicCredentialSpec {
    /// Name of a Vault connection from the operator's configuration. Empty means the default
    /// connection. Addresses and CAs are never taken from a resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub connection: Option<String>,

    /// How the operator authenticates to Vault for this resource. For leased credentials the role
    /// should issue periodic tokens (`token_period` on the Kubernetes auth role): a lease dies with
    /// the token that created it.
    pub auth: VaultAuth,

    /// Where the credential comes from.
    pub source: LeaseSource,

    /// Renew the lease when this percentage of its current TTL has passed (jittered by a few
    /// percent). Defaults to 67.
    #[serde(default = "default_renew_at_percent")]
    #[schemars(range(min = 10, max = 90))]
    pub renew_at_percent: i32,

    /// Once renewal can no longer extend the lease (Vault caps it at the max TTL), issue the next
    /// credential when this percentage of the lease's whole lifetime (issue to hard end) has
    /// passed. Defaults to 80.
    #[serde(default = "default_rotate_at_percent")]
    #[schemars(range(min = 20, max = 95))]
    pub rotate_at_percent: i32,

    /// How long the previous credential stays valid after the restarted workloads finished their
    /// rollout, as a duration such as `30s` or `5m`, at most `24h`. Defaults to `60s`.
    #[serde(default = "default_grace")]
    #[x_kube(validation = Rule::new(concat!("self.matches('", super::cel_duration_pattern!(), "') && duration(self) <= duration('24h')")).message("rotationGracePeriod must be a duration such as 30s, 5m or 1h, and at most 24h"))]
    #[schemars(length(max = 32))]
    pub rotation_grace_period: String,

    /// Revoke the current lease in Vault when this resource is deleted (through a finalizer).
    /// Defaults to true.
    #[serde(default = "default_true")]
    pub revoke_on_delete: bool,

    /// The Secret to write. Every field of the lease's data is a key; `templates` can add more,
    /// for example `DATABASE_URL`.
    pub destination: Destination,

    /// Workloads restarted (rolling) when the credential is replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub restart_targets: Vec<RestartTarget>,
}

fn default_renew_at_percent() -> i32 {
    67
}
fn default_rotate_at_percent() -> i32 {
    80
}
fn default_grace() -> String {
    "60s".to_owned()
}
fn default_true() -> bool {
    true
}

/// The Vault endpoint that issues the credential: either `mount` and `role` (reads
/// `<mount>/creds/<role>`, as for the database, RabbitMQ or Consul engines) or `path` for any
/// endpoint that returns a lease.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.mount) && has(self.role) && !has(self.path)) || (has(self.path) && !has(self.mount) && !has(self.role))").message("source needs either mount and role (reads <mount>/creds/<role>) or path, not both"))]
#[x_kube(validation = Rule::new("has(self.path) || (!has(self.method) && !has(self.parameters))").message("source.method and source.parameters only apply with source.path"))]
pub struct LeaseSource {
    /// Path where the secrets engine is mounted, for example `database`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$')").message("source.mount must be a Vault mount path such as 'database' (no leading or trailing '/')"))]
    #[schemars(length(max = 128))]
    pub mount: Option<String>,

    /// Role of the secrets engine, for example `app-readonly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^[A-Za-z0-9_.@-]+$')").message("source.role must be a Vault role name (letters, digits, '_', '-', '.', '@')"))]
    #[schemars(length(max = 128))]
    pub role: Option<String>,

    /// Full Vault path of an endpoint that returns a lease, for example `aws/sts/deploy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^[^/]+(/[^/]+)*$')").message("source.path must be a Vault path such as 'aws/creds/deploy' (no leading, trailing or double '/')"))]
    #[schemars(length(max = 512))]
    pub path: Option<String>,

    /// HTTP method for `path`: `GET` (read) or `POST` (write with `parameters`). Defaults to
    /// `GET`, or `POST` when parameters are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<LeaseMethod>,

    /// Request parameters for `path` (sent as a JSON body with `POST`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub parameters: BTreeMap<String, String>,
}

/// How the lease endpoint is called.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum LeaseMethod {
    /// Read the path.
    #[serde(rename = "GET")]
    Get,
    /// Write `parameters` to the path.
    #[serde(rename = "POST")]
    Post,
}

/// A lease the operator replaced and will revoke once nothing may use it any more.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetiringLease {
    /// Vault lease ID of the previous credential.
    pub lease_id: String,
    /// The latest it can expire on its own (its max TTL), if known; it is revoked unless that
    /// time has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_time: Option<Time>,
    /// Revoke at or after this time; unset while restarted workloads are still rolling out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_after: Option<Time>,
}

/// Observed state of a DynamicCredential. Never contains the credential itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynamicCredentialStatus {
    /// `Ready` (the Secret holds a live credential), `LeaseRenewal` and `Rotating`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Vault lease ID of the credential in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,

    /// When the current lease was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue_time: Option<Time>,

    /// TTL Vault granted at the last issue or renewal, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_duration_seconds: Option<i64>,

    /// When the current lease expires unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_time: Option<Time>,

    /// When the lease ends for good (Vault capped a renewal at its max TTL); unset while renewals
    /// still extend it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_expiry_time: Option<Time>,

    /// When the operator will next renew or rotate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_renewal_time: Option<Time>,

    /// When the credential was last replaced by a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,

    /// HMAC-SHA256 of the Secret's data under the operator's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hmac: Option<String>,

    /// Previous leases waiting to be revoked after the rollout and grace period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring_leases: Vec<RetiringLease>,

    /// A restart of `restartTargets` waiting for the end of its debounce window or for a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart: Option<PendingRestart>,
}
