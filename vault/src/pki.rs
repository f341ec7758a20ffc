//! The PKI secrets engine: issue a certificate with a Vault-generated key (`<mount>/issue/<role>`),
//! sign a CSR whose key never leaves the caller (`<mount>/sign/<role>`), and revoke by serial
//! (`<mount>/revoke`).

use serde::{Deserialize, Serialize};

use crate::{VaultClient, VaultError, VaultToken};

/// What to put in the certificate. Empty fields are left to the role's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CertificateOptions {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub common_name: String,
    /// DNS names and e-mail addresses, comma-separated as Vault expects.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub alt_names: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ip_sans: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uri_sans: String,
    /// Requested lifetime as a Vault duration (`72h`); empty means the role's TTL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ttl: String,
    /// Keep the common name out of the SANs when it is not a host name.
    pub exclude_cn_from_sans: bool,
}

/// Key settings for `issue`, where Vault generates the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRequest {
    /// `rsa`, `ec` or `ed25519`.
    pub key_type: &'static str,
    /// Bits: 2048/3072/4096 for RSA, 256/384/521 for EC, 0 for Ed25519.
    pub key_bits: u32,
}

/// A certificate Vault issued or signed. `Debug` never shows the private key.
#[derive(Clone, Deserialize)]
pub struct IssuedCertificate {
    /// Leaf certificate, PEM.
    pub certificate: String,
    /// The CA that signed it, PEM.
    #[serde(default)]
    pub issuing_ca: String,
    /// The issuing CA and the CAs above it that Vault knows, PEM each, nearest first.
    #[serde(default)]
    pub ca_chain: Vec<String>,
    /// Serial number as Vault prints it (`1a:2b:…`).
    pub serial_number: String,
    /// Private key, PEM; only for `issue`.
    #[serde(default)]
    pub private_key: Option<String>,
    /// Unix time the certificate ends.
    #[serde(default)]
    pub expiration: i64,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("serial_number", &self.serial_number)
            .field("expiration", &self.expiration)
            .field("chain_len", &self.ca_chain.len())
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Deserialize)]
struct DataEnvelope<T> {
    data: T,
}

#[derive(Serialize)]
struct IssueBody<'a> {
    #[serde(flatten)]
    options: &'a CertificateOptions,
    key_type: &'a str,
    key_bits: u32,
    format: &'static str,
    private_key_format: &'static str,
}

#[derive(Serialize)]
struct SignBody<'a> {
    #[serde(flatten)]
    options: &'a CertificateOptions,
    csr: &'a str,
    format: &'static str,
}

impl VaultClient {
    /// Issues a certificate and a Vault-generated private key (PKCS#8 PEM).
    pub async fn pki_issue(
        &self,
        token: &VaultToken,
        mount: &str,
        role: &str,
        options: &CertificateOptions,
        key: &KeyRequest,
    ) -> Result<IssuedCertificate, VaultError> {
        let body = IssueBody {
            options,
            key_type: key.key_type,
            key_bits: key.key_bits,
            format: "pem",
            private_key_format: "pkcs8",
        };
        let body = serde_json::to_value(&body).expect("issue body serializes");
        let answer: DataEnvelope<IssuedCertificate> = self
            .request(
                "pki_issue",
                reqwest::Method::POST,
                &format!("{mount}/issue/{role}"),
                Some(token),
                Some(&body),
            )
            .await?;
        if answer.data.private_key.as_deref().unwrap_or("").is_empty() {
            return Err(VaultError::Decode {
                operation: "pki_issue",
                message: format!("{mount}/issue/{role} answered without a private key"),
            });
        }
        Ok(answer.data)
    }

    /// Signs a PEM CSR; the private key stays with the caller.
    pub async fn pki_sign(
        &self,
        token: &VaultToken,
        mount: &str,
        role: &str,
        options: &CertificateOptions,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, VaultError> {
        let body = SignBody {
            options,
            csr: csr_pem,
            format: "pem",
        };
        let body = serde_json::to_value(&body).expect("sign body serializes");
        let mut answer: DataEnvelope<IssuedCertificate> = self
            .request(
                "pki_sign",
                reqwest::Method::POST,
                &format!("{mount}/sign/{role}"),
                Some(token),
                Some(&body),
            )
            .await?;
        answer.data.private_key = None;
        Ok(answer.data)
    }

    /// Revokes a certificate by serial (`1a:2b:…` or `1a-2b-…`); it appears in the next CRL.
    /// Revoking an already revoked or expired certificate succeeds.
    pub async fn pki_revoke(
        &self,
        token: &VaultToken,
        mount: &str,
        serial: &str,
    ) -> Result<(), VaultError> {
        let body = serde_json::json!({ "serial_number": serial });
        let _: Option<serde_json::Value> = self
            .request(
                "pki_revoke",
                reqwest::Method::POST,
                &format!("{mount}/revoke"),
                Some(token),
                Some(&body),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_private_key() {
        let cert = IssuedCertificate {
            certificate: "CERT".into(),
            issuing_ca: String::new(),
            ca_chain: vec![],
            serial_number: "1a:2b".into(),
            private_key: Some("-----BEGIN PRIVATE KEY-----SECRET".into()),
            expiration: 1,
        };
        let shown = format!("{cert:?}");
        assert!(shown.contains("1a:2b"));
        assert!(!shown.contains("SECRET"));
    }

    #[test]
    fn empty_options_are_left_to_the_role() {
        let options = CertificateOptions {
            common_name: "a.example.com".into(),
            ..Default::default()
        };
        let body = serde_json::to_value(SignBody {
            options: &options,
            csr: "CSR",
            format: "pem",
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"common_name": "a.example.com", "exclude_cn_from_sans": false, "csr": "CSR", "format": "pem"})
        );
    }
}
