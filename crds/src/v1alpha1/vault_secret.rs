//! `VaultSecret`: a KV v1 or v2 secret of Vault, kept in sync in a Kubernetes Secret.

// The printcolumn(...) entries of `#[kube]` repeat `type_ = "string"` by design; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::shared::{Destination, PendingRestart, RestartTarget, VaultAuth};

/// Keeps a Kubernetes Secret in sync with a KV secret of Vault. The operator logs in to Vault as a
/// ServiceAccount of this resource's namespace, polls the KV secret every `refreshInterval`
/// (for KV v2 it reads only the metadata unless the version changed) and writes the data to
/// `destination`. When Vault is unavailable the Secret keeps its last data.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "vaultkeeper.dev",
    version = "v1alpha1",
    kind = "VaultSecret",
    namespaced,
    status = "VaultSecretStatus",
    shortname = "vsec",
    category = "vaultkeeper",
    doc = "VaultSecret keeps a Kubernetes Secret in sync with a KV secret of Vault.",
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
    printcolumn(
        name = "Version",
        type_ = "integer",
        json_path = ".status.syncedVersion"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VaultSecretSpec {
    /// Name of a Vault connection from the operator's configuration. Empty means the default
    /// connection. Addresses and CAs are never taken from a resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub connection: Option<String>,

    /// How the operator authenticates to Vault for this resource.
    pub auth: VaultAuth,

    /// The KV secret to read.
    pub source: KvSource,

    /// How often Vault is polled, as a duration such as `30s`, `5m` or `1h`. At least 10s, at most
    /// 168h.
    /// Defaults to 60s. Each refresh is jittered by up to ±10% so refreshes do not align.
    #[serde(default = "default_refresh_interval")]
    #[x_kube(validation = Rule::new(concat!("self.matches('", super::cel_duration_pattern!(), "') && duration(self) >= duration('10s') && duration(self) <= duration('168h')")).message("refreshInterval must be a duration such as 30s, 5m or 1h, at least 10s and at most 168h"))]
    #[schemars(length(max = 32))]
    pub refresh_interval: String,

    /// The Secret to write.
    pub destination: Destination,

    /// Workloads restarted (rolling) when the synced data changes. Changes within the operator's
    /// debounce window cause one restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub restart_targets: Vec<RestartTarget>,
}

/// Default of `spec.refreshInterval`.
pub fn default_refresh_interval() -> String {
    "60s".to_owned()
}

/// KV secrets engine version of the source mount.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum KvEngine {
    /// KV version 1: unversioned; every refresh reads the data.
    #[serde(rename = "kv-v1")]
    KvV1,
    /// KV version 2: versioned; a refresh reads the metadata and the data only on a new version.
    #[serde(rename = "kv-v2")]
    KvV2,
}

/// A KV secret in Vault.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.version) || self.engine == 'kv-v2'").message("source.version pins a KV v2 version; it cannot be used with engine kv-v1"))]
pub struct KvSource {
    /// KV engine version of the mount: `kv-v1` or `kv-v2`.
    pub engine: KvEngine,

    /// Path where the KV engine is mounted, for example `secret`.
    #[x_kube(validation = Rule::new(r"self.matches('^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$')").message("source.mount must be a Vault mount path such as 'secret' (not empty, no leading or trailing '/')"))]
    #[schemars(length(max = 128))]
    pub mount: String,

    /// Path of the secret inside the mount, for example `apps/billing/db` (without `data/`).
    #[x_kube(validation = Rule::new(r"self.matches('^[^/]+(/[^/]+)*$')").message("source.path must name a secret inside the mount, such as 'apps/web/config' (not empty, no leading, trailing or double '/')"))]
    #[schemars(length(max = 512))]
    pub path: String,

    /// KV v2 only: sync this version instead of the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub version: Option<i64>,
}

/// Observed state of a VaultSecret. Never contains secret data.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultSecretStatus {
    /// `Ready` tells whether the Secret holds the current Vault data, and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The KV v2 version whose data the Secret holds (unset for KV v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_version: Option<i64>,

    /// HMAC-SHA256 of the Secret's data under the operator's key: shows whether data changed
    /// without revealing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hmac: Option<String>,

    /// When the operator last changed the Secret's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<Time>,

    /// A restart of `restartTargets` waiting for the end of its debounce window or for a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart: Option<PendingRestart>,
}
