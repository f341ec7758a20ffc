//! The Vault client shared by the vaultkeeper operator and agent.
//!
//! Hand-written on reqwest rather than built on vaultrs because the operator needs, in one place:
//! one connection pool shared by every identity (vaultrs binds a token to each client), lease IDs
//! kept on every read (vaultrs' helpers drop them and it has no `sys/leases` endpoints), a bounded
//! error classification (sealed, unreachable, permission denied, not found) that drives conditions
//! and retries, and a per-request hook for metrics. The endpoints used are few and stable.
//!
//! This crate is a leaf: it knows nothing of Kubernetes. Secret values only travel inside
//! [`SecretData`] and [`VaultToken`], whose `Debug` output is redacted.

mod auth;
mod client;
mod error;
mod kv;
mod lease;
mod pki;
mod raw;
mod token_cache;

pub use auth::AuthToken;
pub use client::{NAMESPACE_HEADER, RequestObserver, VaultClient, VaultConfig, addresses};
pub use error::VaultError;
pub use kv::{KvMetadata, KvVersion, KvVersionState, SecretData};
pub use lease::{Lease, LeasedSecret, Renewal, TokenInfo};
pub use pki::{CertificateOptions, IssuedCertificate, KeyRequest};
pub use token_cache::{CachedToken, TokenCache};

/// A Vault token. Its `Debug` form never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct VaultToken(String);

impl VaultToken {
    /// Wraps a token string.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token, for the `X-Vault-Token` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for VaultToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultToken(<redacted>)")
    }
}

/// Installs the process-wide rustls crypto provider (ring). Every binary and test binary calls this
/// first: kube and reqwest must agree on one provider or the first TLS handshake panics.
pub fn install_crypto_provider() {
    // Ignoring the error is right: it only says a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
