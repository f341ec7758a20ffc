//! Vault auth methods: Kubernetes login, token renewal and lookup.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use crate::{VaultClient, VaultError, VaultToken};

/// A token returned by a login, with how long Vault lets it live.
#[derive(Clone, Debug)]
pub struct AuthToken {
    pub token: VaultToken,
    /// Time to live at issue; zero means the token does not expire.
    pub ttl: Duration,
    pub renewable: bool,
}

#[derive(Deserialize)]
struct AuthEnvelope {
    auth: AuthBody,
}

#[derive(Deserialize)]
struct AuthBody {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

impl From<AuthBody> for AuthToken {
    fn from(body: AuthBody) -> Self {
        Self {
            token: VaultToken::new(body.client_token),
            ttl: Duration::from_secs(body.lease_duration),
            renewable: body.renewable,
        }
    }
}

impl VaultClient {
    /// Logs in to the Kubernetes auth method at `auth/<mount>` with a ServiceAccount token.
    pub async fn login_kubernetes(
        &self,
        mount: &str,
        role: &str,
        jwt: &str,
    ) -> Result<AuthToken, VaultError> {
        let path = format!("auth/{mount}/login");
        let body = json!({ "role": role, "jwt": jwt });
        let answer: AuthEnvelope = self
            .request("login", Method::POST, &path, None, Some(&body))
            .await?;
        Ok(answer.auth.into())
    }

    /// Renews the calling token (`auth/token/renew-self`), asking for `increment` more time.
    pub async fn renew_self(
        &self,
        token: &VaultToken,
        increment: Option<Duration>,
    ) -> Result<AuthToken, VaultError> {
        let body = match increment {
            Some(inc) => json!({ "increment": format!("{}s", inc.as_secs()) }),
            None => json!({}),
        };
        let answer: AuthEnvelope = self
            .request(
                "token_renew_self",
                Method::POST,
                "auth/token/renew-self",
                Some(token),
                Some(&body),
            )
            .await?;
        Ok(answer.auth.into())
    }
}
