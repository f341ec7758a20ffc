//! `CertificateRequest`: an X.509 certificate from Vault's PKI engine kept in a `kubernetes.io/tls`
//! Secret, renewed before it expires and revoked when it is replaced or deleted.

// The printcolumn(...) entries of `#[kube]` repeat `type_ = "string"` by design; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::shared::{Destination, PendingRestart, RestartTarget, VaultAuth};

/// Keeps a certificate from Vault's PKI engine in a `kubernetes.io/tls` Secret (`tls.crt` with the
/// chain, `tls.key`, `ca.crt`). The operator issues it, renews it `renewBefore` ahead of its end,
/// writes the new certificate before it revokes the old one, restarts `restartTargets`, and
/// revokes the certificate when this resource is deleted.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "vaultkeeper.dev",
    version = "v1alpha1",
    kind = "CertificateRequest",
    namespaced,
    status = "CertificateRequestStatus",
    shortname = "vcert",
    category = "vaultkeeper",
    doc = "CertificateRequest keeps a certificate from Vault's PKI engine in a kubernetes.io/tls Secret, renewed before it expires and revoked when replaced or deleted.",
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
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.notAfter"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(concat!("!has(self.ttl) || !has(self.renewBefore) || !self.ttl.matches('", super::cel_duration_pattern!(), "') || !self.renewBefore.matches('", super::cel_duration_pattern!(), "') || duration(self.renewBefore) < duration(self.ttl)")).message("renewBefore must be shorter than ttl"))]
#[x_kube(validation = Rule::new("has(self.commonName) || (has(self.altNames) && size(self.altNames) > 0) || (has(self.ipSans) && size(self.ipSans) > 0) || (has(self.uriSans) && size(self.uriSans) > 0)").message("a certificate needs a name: set commonName, altNames, ipSans or uriSans"))]
#[x_kube(validation = Rule::new("!has(self.privateKey) || !has(self.privateKey.rotationPolicy) || self.privateKey.rotationPolicy != 'Never' || (has(self.mode) && self.mode == 'sign')").message("privateKey.rotationPolicy Never needs mode sign: in issue mode Vault generates a new key for every certificate"))]
#[x_kube(validation = Rule::new("!has(self.destination.type) || self.destination.type == 'kubernetes.io/tls'").message("destination.type of a CertificateRequest is always kubernetes.io/tls; leave it empty"))]
#[x_kube(validation = Rule::new("!has(self.destination.templates) || size(self.destination.templates) == 0").message("destination.templates are not supported for certificates; the Secret holds tls.crt, tls.key and ca.crt"))]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestSpec {
    /// Name of a Vault connection from the operator's configuration. Empty means the default
    /// connection. Addresses and CAs are never taken from a resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub connection: Option<String>,

    /// How the operator authenticates to Vault for this resource. The role's policy needs
    /// `update` on `<mount>/issue/<role>` (mode issue) or `<mount>/sign/<role>` (mode sign), and on
    /// `<mount>/revoke` for revocation.
    pub auth: VaultAuth,

    /// Path where the PKI engine is mounted, for example `pki` or `pki-int`.
    #[x_kube(validation = Rule::new(r"self.matches('^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$')").message("mount must be a Vault mount path such as 'pki' (no leading or trailing '/')"))]
    #[schemars(length(max = 128))]
    pub mount: String,

    /// PKI role to issue or sign with, for example `web`.
    #[x_kube(validation = Rule::new(r"self.matches('^[A-Za-z0-9_.@-]+$')").message("role must be a PKI role name (letters, digits, '_', '-', '.', '@')"))]
    #[schemars(length(max = 128))]
    pub role: String,

    /// Subject common name, for example `api.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub common_name: Option<String>,

    /// DNS names (and e-mail addresses) for the subject alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new(r"self.all(n, n.matches('^[A-Za-z0-9*@]([-A-Za-z0-9.*@_]*[A-Za-z0-9])?$'))").message("altNames entries must be DNS names such as api.example.com or *.example.com"))]
    #[schemars(length(max = 100), inner(length(max = 253)))]
    pub alt_names: Vec<String>,

    /// IP addresses for the subject alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(ip, isIP(ip))").message("ipSans entries must be IPv4 or IPv6 addresses"))]
    #[schemars(length(max = 32), inner(length(max = 45)))]
    pub ip_sans: Vec<String>,

    /// URIs for the subject alternative names, for example `spiffe://cluster.local/ns/app/sa/web`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(u, isURL(u))").message("uriSans entries must be absolute URIs such as spiffe://cluster.local/ns/app/sa/web"))]
    #[schemars(length(max = 32), inner(length(max = 512)))]
    pub uri_sans: Vec<String>,

    /// Requested lifetime as a duration such as `720h` (1s to 87600h). Empty means the role's TTL;
    /// Vault caps it at the role's max TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(concat!("self.matches('", super::cel_duration_pattern!(), "') && duration(self) >= duration('1s') && duration(self) <= duration('87600h')")).message("ttl must be a duration such as 90s, 45m or 720h, at least 1s and at most 87600h (10 years)"))]
    #[schemars(length(max = 32))]
    pub ttl: Option<String>,

    /// Renew this long before the certificate ends, as a duration such as `240h` (1s to 87600h,
    /// shorter than `ttl`). Defaults to one
    /// third of the certificate's lifetime. The renewal is moved a little earlier per resource
    /// (never later) so that many certificates do not renew at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(concat!("self.matches('", super::cel_duration_pattern!(), "') && duration(self) >= duration('1s') && duration(self) <= duration('87600h')")).message("renewBefore must be a duration such as 90s, 45m or 240h, at least 1s and at most 87600h (10 years)"))]
    #[schemars(length(max = 32))]
    pub renew_before: Option<String>,

    /// The private key. Defaults to RSA 2048 with a new key for every certificate.
    #[serde(default)]
    pub private_key: PrivateKey,

    /// `issue`: Vault generates the key and returns it with the certificate (`<mount>/issue/<role>`).
    /// `sign`: the operator generates the key and sends only a CSR (`<mount>/sign/<role>`), so the
    /// key never reaches Vault. Defaults to `issue`.
    #[serde(default)]
    pub mode: IssueMode,

    /// Revoke the current certificate in Vault (`<mount>/revoke`) when this resource is deleted,
    /// through a finalizer. Defaults to true.
    #[serde(default = "default_true")]
    pub revoke_on_delete: bool,

    /// Revoke a certificate once its successor is written and the restart targets rolled out.
    /// Defaults to true.
    #[serde(default = "default_true")]
    pub revoke_superseded: bool,

    /// The `kubernetes.io/tls` Secret to write: `tls.crt` (certificate and intermediates),
    /// `tls.key` (PKCS#8 PEM) and `ca.crt` (the top of the chain Vault knows). `type` and
    /// `templates` do not apply.
    pub destination: Destination,

    /// Workloads restarted (rolling) when the certificate is replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub restart_targets: Vec<RestartTarget>,
}

fn default_true() -> bool {
    true
}

/// Private key settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.algorithm) && self.algorithm != 'RSA') || !has(self.size) || self.size in [2048, 3072, 4096]").message("privateKey.size for RSA must be 2048, 3072 or 4096"))]
#[x_kube(validation = Rule::new("!has(self.algorithm) || self.algorithm != 'ECDSA' || !has(self.size) || self.size in [256, 384]").message("privateKey.size for ECDSA must be 256 (P-256) or 384 (P-384)"))]
#[x_kube(validation = Rule::new("!has(self.algorithm) || self.algorithm != 'Ed25519' || !has(self.size)").message("privateKey.size does not apply to Ed25519"))]
pub struct PrivateKey {
    /// `RSA`, `ECDSA` or `Ed25519`. Defaults to `RSA`.
    #[serde(default)]
    pub algorithm: KeyAlgorithm,

    /// Key size in bits: 2048 (default), 3072 or 4096 for RSA; 256 (default) or 384 for ECDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i32>,

    /// `Always` (default): every certificate gets a new key. `Never`: keep the key in the Secret
    /// across renewals (mode `sign` only).
    #[serde(default)]
    pub rotation_policy: RotationPolicy,
}

impl Default for PrivateKey {
    fn default() -> Self {
        Self {
            algorithm: KeyAlgorithm::Rsa,
            size: None,
            rotation_policy: RotationPolicy::Always,
        }
    }
}

impl PrivateKey {
    /// The key size in bits, with the algorithm's default; 0 for Ed25519.
    pub fn bits(&self) -> u32 {
        match (self.algorithm, self.size) {
            (KeyAlgorithm::Ed25519, _) => 0,
            (_, Some(size)) => size.max(0) as u32,
            (KeyAlgorithm::Rsa, None) => 2048,
            (KeyAlgorithm::Ecdsa, None) => 256,
        }
    }
}

/// Key algorithms.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum KeyAlgorithm {
    /// RSA.
    #[default]
    #[serde(rename = "RSA")]
    Rsa,
    /// ECDSA on a NIST curve.
    #[serde(rename = "ECDSA")]
    Ecdsa,
    /// Ed25519.
    Ed25519,
}

/// When the private key is replaced.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum RotationPolicy {
    /// A new key for every certificate.
    #[default]
    Always,
    /// Keep the key across renewals (mode `sign` only).
    Never,
}

/// Who generates the key.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum IssueMode {
    /// Vault generates the key (`<mount>/issue/<role>`).
    #[default]
    Issue,
    /// The operator generates the key and sends a CSR (`<mount>/sign/<role>`).
    Sign,
}

/// A certificate that was replaced and will be revoked once nothing may use it any more.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupersededCertificate {
    /// Serial number (`1a:2b:…`).
    pub serial_number: String,
    /// When it ends on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// Set once the restarted workloads rolled out: revoke from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_after: Option<Time>,
}

/// Observed state of a CertificateRequest. Never contains the private key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestStatus {
    /// `Ready` (the Secret holds a valid certificate for the current spec), `Issuing` (what the
    /// last issue or renewal did) and `Restarts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Serial number of the certificate in the Secret (`1a:2b:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,

    /// Start of the certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,

    /// End of the certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,

    /// When the operator will renew the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,

    /// When the certificate in the Secret was issued by this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_issue_time: Option<Time>,

    /// HMAC-SHA256 of the Secret's data under the operator's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hmac: Option<String>,

    /// Replaced certificates waiting to be revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<SupersededCertificate>,

    /// A restart of `restartTargets` waiting for a running rollout or the namespace's budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart: Option<PendingRestart>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_defaults() {
        let key: PrivateKey = serde_json::from_str("{}").unwrap();
        assert_eq!(key.algorithm, KeyAlgorithm::Rsa);
        assert_eq!(key.bits(), 2048);
        let ec: PrivateKey = serde_json::from_str(r#"{"algorithm":"ECDSA"}"#).unwrap();
        assert_eq!(ec.bits(), 256);
        let ed: PrivateKey = serde_json::from_str(r#"{"algorithm":"Ed25519"}"#).unwrap();
        assert_eq!(ed.bits(), 0);
    }

    #[test]
    fn mode_is_lowercase() {
        assert_eq!(serde_json::to_string(&IssueMode::Sign).unwrap(), "\"sign\"");
    }
}
