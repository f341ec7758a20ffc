//! Vault identities of resources: a short-lived token of a ServiceAccount in the resource's own
//! namespace (TokenRequest API), exchanged for a Vault token by Kubernetes login, cached per
//! (connection, namespace, ServiceAccount, role, mount) so a reconcile does not log in again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use vault::{AuthToken, TokenCache, VaultError, VaultToken};

use crate::metrics::{Metrics, ResultLabels};
use crate::vault_api::VaultApi;

/// Who a resource is in Vault's eyes.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct IdentityKey {
    pub connection: String,
    pub namespace: String,
    pub service_account: String,
    pub role: String,
    pub mount: String,
}

impl std::fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} as role {:?} at auth/{}",
            self.namespace, self.service_account, self.role, self.mount
        )
    }
}

impl IdentityKey {
    /// The identity a resource in `namespace` asks for: its connection (default when empty), its
    /// ServiceAccount and role, and its auth mount (the connection's when unset). Fails when the
    /// connection is not configured; `auth_mount_of` gives a configured connection's mount.
    pub fn of_resource(
        connection: Option<&str>,
        auth: &crds::v1alpha1::VaultAuth,
        namespace: String,
        auth_mount_of: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let connection = connection
            .filter(|c| !c.is_empty())
            .unwrap_or(crate::config::DEFAULT_CONNECTION)
            .to_owned();
        let default_mount = auth_mount_of(&connection).ok_or_else(|| {
            format!("connection {connection:?} is not configured in the operator")
        })?;
        Ok(Self {
            connection,
            namespace,
            service_account: auth.service_account_name.clone(),
            role: auth.role.clone(),
            mount: auth
                .mount
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or(default_mount),
        })
    }
}

/// Why no Vault token could be had for an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("failed to request a token for ServiceAccount {namespace}/{service_account}: {source}")]
    TokenRequest {
        namespace: String,
        service_account: String,
        source: kube::Error,
    },
    #[error("failed to log in to Vault as {identity}: {source}")]
    Login {
        identity: String,
        source: VaultError,
    },
}

/// A Vault connection as the controllers use it.
#[derive(Clone)]
pub struct Connection {
    pub client: Arc<dyn VaultApi>,
    pub auth_mount: String,
}

/// Vault connections and the token cache shared by all controllers.
pub struct Identities {
    kube: kube::Client,
    connections: BTreeMap<String, Connection>,
    cache: TokenCache<IdentityKey>,
    audiences: Vec<String>,
    token_ttl: Duration,
    metrics: Arc<Metrics>,
}

impl Identities {
    pub fn new(
        kube: kube::Client,
        connections: BTreeMap<String, Connection>,
        audiences: Vec<String>,
        token_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            kube,
            connections,
            cache: TokenCache::default(),
            audiences,
            token_ttl,
            metrics,
        }
    }

    /// Every configured connection, by name.
    pub fn connections(&self) -> impl Iterator<Item = (&String, &Connection)> {
        self.connections.iter()
    }

    /// The named connection, if configured.
    pub fn connection(&self, name: &str) -> Option<&Connection> {
        self.connections.get(name)
    }

    /// A Vault token for `key`, from the cache or a fresh login. The flag tells whether it is fresh.
    pub async fn token(
        &self,
        key: &IdentityKey,
        client: &dyn VaultApi,
    ) -> Result<(VaultToken, bool), IdentityError> {
        self.cache
            .get_or_login(key, || self.login(key, client))
            .await
    }

    /// Runs a Vault call with the identity's cached token. A 403 on a cached token may mean the
    /// token was revoked, so that case is retried once with a fresh login before it counts as
    /// denied. The outer error is the login's, the inner one the call's.
    pub async fn with_token<T, F, Fut>(
        &self,
        key: &IdentityKey,
        client: &dyn VaultApi,
        call: F,
    ) -> Result<Result<T, VaultError>, IdentityError>
    where
        F: Fn(VaultToken) -> Fut,
        Fut: std::future::Future<Output = Result<T, VaultError>>,
    {
        let (token, fresh) = self.token(key, client).await?;
        match call(token.clone()).await {
            Err(VaultError::PermissionDenied { .. }) if !fresh => {
                self.forget(key, &token).await;
                let (token, _) = self.token(key, client).await?;
                Ok(call(token).await)
            }
            other => Ok(other),
        }
    }

    /// A fresh login for `key`, bypassing the cache (lease tokens are kept elsewhere).
    pub async fn login(
        &self,
        key: &IdentityKey,
        client: &dyn VaultApi,
    ) -> Result<AuthToken, IdentityError> {
        let jwt = self
            .service_account_token(&key.namespace, &key.service_account)
            .await?;
        let result = client.login_kubernetes(&key.mount, &key.role, &jwt).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .logins
            .get_or_create(&ResultLabels { result: outcome })
            .inc();
        result.map_err(|source| IdentityError::Login {
            identity: key.to_string(),
            source,
        })
    }

    /// Forgets a token Vault refused, so the next call logs in again.
    pub async fn forget(&self, key: &IdentityKey, token: &VaultToken) {
        self.cache.invalidate(key, token).await;
    }

    async fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<String, IdentityError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.kube.clone(), namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(self.audiences.clone()),
                expiration_seconds: Some(self.token_ttl.as_secs() as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer = api
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .map_err(|source| IdentityError::TokenRequest {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
                source,
            })?;
        self.metrics.kube_write("tokenrequest");
        Ok(answer.status.and_then(|s| s.token).unwrap_or_default())
    }
}
