//! The Vault verbs the controllers use, behind one narrow trait: the real `VaultClient` in the
//! operator, a scriptable fake in the partial-failure tests (`tests/partial_failures.rs`).

use std::time::Duration;

use serde_json::Value;
use vault::{
    AuthToken, CertificateOptions, IssuedCertificate, KeyRequest, KvMetadata, KvVersion,
    LeasedSecret, Renewal, SecretData, TokenInfo, VaultClient, VaultError, VaultToken,
};

/// What the controllers ask of a Vault connection.
#[async_trait::async_trait]
pub trait VaultApi: Send + Sync {
    /// Whether Vault answers and is unsealed (`sys/health`, unauthenticated).
    async fn health(&self) -> Result<(), VaultError>;
    /// Logs in with Vault's Kubernetes auth method mounted at `mount`.
    async fn login_kubernetes(
        &self,
        mount: &str,
        role: &str,
        jwt: &str,
    ) -> Result<AuthToken, VaultError>;
    async fn renew_self(
        &self,
        token: &VaultToken,
        increment: Option<Duration>,
    ) -> Result<AuthToken, VaultError>;
    async fn lookup_self(&self, token: &VaultToken) -> Result<TokenInfo, VaultError>;
    async fn kv2_metadata(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
    ) -> Result<KvMetadata, VaultError>;
    async fn kv2_read(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<KvVersion, VaultError>;
    async fn kv1_read(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
    ) -> Result<SecretData, VaultError>;
    /// Reads (or, with a body, writes) an endpoint that returns a leased secret.
    async fn issue_leased(
        &self,
        token: &VaultToken,
        path: &str,
        post: Option<&Value>,
    ) -> Result<LeasedSecret, VaultError>;
    async fn renew_lease(
        &self,
        token: &VaultToken,
        lease_id: &str,
        increment: Duration,
    ) -> Result<Renewal, VaultError>;
    async fn revoke_lease(&self, token: &VaultToken, lease_id: &str) -> Result<(), VaultError>;
    /// The time a lease has left; `None` when Vault no longer knows it.
    async fn lookup_lease(
        &self,
        token: &VaultToken,
        lease_id: &str,
    ) -> Result<Option<Duration>, VaultError>;
    async fn pki_issue(
        &self,
        token: &VaultToken,
        mount: &str,
        role: &str,
        options: &CertificateOptions,
        key: &KeyRequest,
    ) -> Result<IssuedCertificate, VaultError>;
    async fn pki_sign(
        &self,
        token: &VaultToken,
        mount: &str,
        role: &str,
        options: &CertificateOptions,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, VaultError>;
    async fn pki_revoke(
        &self,
        token: &VaultToken,
        mount: &str,
        serial: &str,
    ) -> Result<(), VaultError>;
}

#[async_trait::async_trait]
impl VaultApi for VaultClient {
    async fn health(&self) -> Result<(), VaultError> {
        VaultClient::health(self).await
    }

    async fn login_kubernetes(
        &self,
        mount: &str,
        role: &str,
        jwt: &str,
    ) -> Result<AuthToken, VaultError> {
        VaultClient::login_kubernetes(self, mount, role, jwt).await
    }
    async fn renew_self(
        &self,
        token: &VaultToken,
        increment: Option<Duration>,
    ) -> Result<AuthToken, VaultError> {
        VaultClient::renew_self(self, token, increment).await
    }
    async fn lookup_self(&self, token: &VaultToken) -> Result<TokenInfo, VaultError> {
        VaultClient::lookup_self(self, token).await
    }
    async fn kv2_metadata(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
    ) -> Result<KvMetadata, VaultError> {
        VaultClient::kv2_metadata(self, token, mount, path).await
    }
    async fn kv2_read(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<KvVersion, VaultError> {
        VaultClient::kv2_read(self, token, mount, path, version).await
    }
    async fn kv1_read(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
    ) -> Result<SecretData, VaultError> {
        VaultClient::kv1_read(self, token, mount, path).await
    }
    async fn issue_leased(
        &self,
        token: &VaultToken,
        path: &str,
        post: Option<&Value>,
    ) -> Result<LeasedSecret, VaultError> {
        VaultClient::issue_leased(self, token, path, post).await
    }
    async fn renew_lease(
        &self,
        token: &VaultToken,
        lease_id: &str,
        increment: Duration,
    ) -> Result<Renewal, VaultError> {
        VaultClient::renew_lease(self, token, lease_id, increment).await
    }
    async fn revoke_lease(&self, token: &VaultToken, lease_id: &str) -> Result<(), VaultError> {
        VaultClient::revoke_lease(self, token, lease_id).await
    }
    async fn lookup_lease(
        &self,
        token: &VaultToken,
        lease_id: &str,
    ) -> Result<Option<Duration>, VaultError> {
        VaultClient::lookup_lease(self, token, lease_id).await
    }
    async fn pki_issue(
        &self,
        token: &VaultToken,
        mount: &str,
        role: &str,
        options: &CertificateOptions,
        key: &KeyRequest,
    ) -> Result<IssuedCertificate, VaultError> {
        VaultClient::pki_issue(self, token, mount, role, options, key).await
    }
    async fn pki_sign(
        &self,
        token: &VaultToken,
        mount: &str,
        role: &str,
        options: &CertificateOptions,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, VaultError> {
        VaultClient::pki_sign(self, token, mount, role, options, csr_pem).await
    }
    async fn pki_revoke(
        &self,
        token: &VaultToken,
        mount: &str,
        serial: &str,
    ) -> Result<(), VaultError> {
        VaultClient::pki_revoke(self, token, mount, serial).await
    }
}
