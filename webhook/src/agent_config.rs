//! The contract between the webhook and the agent: what the agent renders, where, and as whom.
//!
//! The webhook serialises one [`AgentConfig`] per injected container as compact JSON into the
//! environment variable [`AGENT_CONFIG_ENV`]. The agent must not depend on kube or k8s-openapi, so
//! it re-declares these types from this description; the JSON is the contract, not the Rust type.
//!
//! ```json
//! {
//!   "version": 1,
//!   "mode": "sidecar",
//!   "vaultAddr": "https://vault.vault.svc:8200",
//!   "vaultCaPem": "-----BEGIN CERTIFICATE-----\n…",
//!   "vaultNamespace": "team-a",
//!   "authPath": "auth/kubernetes",
//!   "role": "web",
//!   "tokenFile": "/var/run/secrets/vaultkeeper/serviceaccount/token",
//!   "readyFile": "/var/run/vaultkeeper/ready",
//!   "volumePath": "/vault/secrets",
//!   "secrets": [
//!     {"name": "db", "path": "database/creds/web", "template": "{{ with secret \"database/creds/web\" }}…{{ end }}",
//!      "file": "db", "mountPath": "/vault/secrets", "perms": "0440"}
//!   ]
//! }
//! ```
//!
//! Rules the agent follows:
//! - Unknown fields are ignored, so the webhook may add optional fields without breaking older
//!   agents; a `version` the agent does not know is a fatal error (exit non-zero, nothing written).
//! - Optional fields are omitted (never `null`) when unset.
//! - The agent logs in by `POST {vaultAddr}/v1/{authPath}/login` with `{"role", "jwt"}`, the JWT
//!   read from `tokenFile` at every login (the kubelet rotates it).
//! - Each secret is written to `{mountPath}/{file}` (parent directories created), atomically
//!   (temporary file in the same directory, then rename), with mode `perms` (octal, default
//!   `0644`). Without `template` the agent writes every key of the secret's data as a `key: value`
//!   line in key order, as the Vault Agent Injector does.
//! - `mode: "init"`: render every secret once, then exit 0; exit non-zero on any failure so the pod
//!   does not start with missing files. `mode: "sidecar"`: render, create `readyFile` once every
//!   secret has been rendered, then keep tokens and leases renewed and re-render on change.
//! - `vaultkeeper-agent probe` (the native sidecar's startup probe) reads the same variable and
//!   exits 0 if `readyFile` exists, 1 otherwise.
//! - Secret values are never logged; paths, names and roles may be.

use serde::{Deserialize, Serialize};

/// The environment variable that carries the JSON configuration.
pub const AGENT_CONFIG_ENV: &str = "VAULTKEEPER_AGENT_CONFIG";
/// The contract version this webhook writes.
pub const AGENT_CONFIG_VERSION: u32 = 1;

/// Everything one agent container needs; see the module docs for the JSON form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// Contract version, currently 1.
    pub version: u32,
    /// Render once and exit (`init`) or keep running (`sidecar`).
    pub mode: AgentMode,
    /// Base URL of Vault or OpenBao, e.g. `https://vault.vault.svc:8200`.
    pub vault_addr: String,
    /// PEM bundle of the CAs that sign Vault's serving certificate; absent = system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_ca_pem: Option<String>,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`; absent = root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_namespace: Option<String>,
    /// Path of the Kubernetes auth method including `auth/`, e.g. `auth/kubernetes`.
    pub auth_path: String,
    /// The Vault role to log in as.
    pub role: String,
    /// File holding the pod's projected ServiceAccount token (re-read at every login).
    pub token_file: String,
    /// File the sidecar creates once every secret is rendered (the startup probe checks it).
    pub ready_file: String,
    /// The pod's default secrets mount path, e.g. `/vault/secrets` (informational: every secret
    /// carries its own `mountPath`).
    pub volume_path: String,
    /// The files to render, sorted by name.
    pub secrets: Vec<AgentSecret>,
}

/// How the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// Render once, then exit 0 (non-zero on failure).
    Init,
    /// Render, signal readiness, then keep the files up to date.
    Sidecar,
}

/// One rendered file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSecret {
    /// The name from the annotation (`…secret-<name>`); used in logs.
    pub name: String,
    /// The Vault path to read, e.g. `secret/data/web` or `database/creds/web`.
    pub path: String,
    /// A consul-template style Go template; absent = one `key: value` line per data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Path of the file relative to `mountPath`; may contain subdirectories, never `..`.
    pub file: String,
    /// Absolute directory where the secrets volume is mounted for this file.
    pub mount_path: String,
    /// File mode as four octal digits, e.g. `0440`; absent = `0644`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perms: Option<String>,
}
