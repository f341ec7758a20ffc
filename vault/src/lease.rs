//! Leased secrets: issue (any endpoint that returns a lease), renew, look up and revoke
//! (`sys/leases/*`), and the calling token's own lifetime (`auth/token/lookup-self`).

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{SecretData, VaultClient, VaultError, VaultToken};

/// A credential with its lease, as Vault issued it. `Debug` shows the lease, never the data.
#[derive(Clone, Debug)]
pub struct LeasedSecret {
    pub lease: Lease,
    pub data: SecretData,
}

/// A lease ID and the time Vault granted it at the last issue or renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub duration: Duration,
    pub renewable: bool,
}

/// What a renewal gave: the new TTL, and whether Vault granted less than asked (max TTL reached).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub lease: Lease,
    /// Vault capped the TTL below the increment: the lease cannot be extended much further.
    pub capped: bool,
}

/// The calling token's own lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Time left; zero for a token that does not expire.
    pub ttl: Duration,
    pub renewable: bool,
    /// Non-zero for periodic tokens: each renewal resets the TTL to this.
    pub period: Duration,
    /// Non-zero when the token has an explicit max TTL.
    pub explicit_max_ttl: Duration,
    /// Accessor (not a secret): identifies the token in logs and audit trails.
    pub accessor: String,
}

#[derive(Deserialize)]
struct LeasedEnvelope {
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    data: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
struct RenewEnvelope {
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    warnings: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct DataEnvelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct LeaseLookup {
    /// Seconds left. Negative for a lease past its expiry that Vault has not cleaned up yet.
    #[serde(default)]
    ttl: i64,
}

impl LeaseLookup {
    /// Time left, or `None` once the lease has expired (a negative TTL: Vault no longer honours it).
    fn left(&self) -> Option<Duration> {
        u64::try_from(self.ttl).ok().map(Duration::from_secs)
    }
}

#[derive(Deserialize)]
struct TokenLookup {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    period: Option<u64>,
    #[serde(default)]
    explicit_max_ttl: u64,
    #[serde(default)]
    accessor: String,
}

impl VaultClient {
    /// Calls an endpoint that issues a leased credential (`GET <path>`, or `POST <path>` with
    /// `parameters`). Fails with [`VaultError::Decode`] when the answer carries no lease.
    pub async fn issue_leased(
        &self,
        token: &VaultToken,
        path: &str,
        post: Option<&Value>,
    ) -> Result<LeasedSecret, VaultError> {
        let (method, body) = match post {
            Some(body) => (Method::POST, Some(body)),
            None => (Method::GET, None),
        };
        let answer: LeasedEnvelope = self
            .request("lease_issue", method, path, Some(token), body)
            .await?;
        if answer.lease_id.is_empty() {
            return Err(VaultError::Decode {
                operation: "lease_issue",
                message: format!(
                    "{path} answered without a lease; use a VaultSecret for static data"
                ),
            });
        }
        Ok(LeasedSecret {
            lease: Lease {
                id: answer.lease_id,
                duration: Duration::from_secs(answer.lease_duration),
                renewable: answer.renewable,
            },
            data: SecretData(answer.data.unwrap_or_default().into_iter().collect()),
        })
    }

    /// Renews a lease (`sys/leases/renew`) by `increment`.
    pub async fn renew_lease(
        &self,
        token: &VaultToken,
        lease_id: &str,
        increment: Duration,
    ) -> Result<Renewal, VaultError> {
        let body = json!({ "lease_id": lease_id, "increment": increment.as_secs() });
        let answer: RenewEnvelope = self
            .request(
                "lease_renew",
                Method::PUT,
                "sys/leases/renew",
                Some(token),
                Some(&body),
            )
            .await?;
        let duration = Duration::from_secs(answer.lease_duration);
        // Vault says so in a warning when max TTL cut the increment; a shorter grant means the same.
        let warned = answer
            .warnings
            .unwrap_or_default()
            .iter()
            .any(|w| w.contains("capped") || w.contains("max_ttl") || w.contains("max TTL"));
        Ok(Renewal {
            capped: warned || duration + Duration::from_secs(1) < increment,
            lease: Lease {
                id: answer.lease_id,
                duration,
                renewable: answer.renewable,
            },
        })
    }

    /// Time left on a lease (`sys/leases/lookup`); `Ok(None)` when Vault no longer knows it
    /// (expired or revoked).
    pub async fn lookup_lease(
        &self,
        token: &VaultToken,
        lease_id: &str,
    ) -> Result<Option<Duration>, VaultError> {
        let body = json!({ "lease_id": lease_id });
        match self
            .request::<DataEnvelope<LeaseLookup>>(
                "lease_lookup",
                Method::PUT,
                "sys/leases/lookup",
                Some(token),
                Some(&body),
            )
            .await
        {
            Ok(answer) => Ok(answer.data.left()),
            Err(VaultError::Rejected { status: 400, .. }) | Err(VaultError::NotFound { .. }) => {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// Revokes a lease now (`sys/leases/revoke`). Revoking a lease Vault no longer knows succeeds.
    pub async fn revoke_lease(&self, token: &VaultToken, lease_id: &str) -> Result<(), VaultError> {
        let body = json!({ "lease_id": lease_id });
        self.request::<Value>(
            "lease_revoke",
            Method::PUT,
            "sys/leases/revoke",
            Some(token),
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    /// The calling token's lifetime (`auth/token/lookup-self`).
    pub async fn lookup_self(&self, token: &VaultToken) -> Result<TokenInfo, VaultError> {
        let answer: DataEnvelope<TokenLookup> = self
            .request(
                "token_lookup_self",
                Method::GET,
                "auth/token/lookup-self",
                Some(token),
                None,
            )
            .await?;
        let d = answer.data;
        Ok(TokenInfo {
            ttl: Duration::from_secs(d.ttl),
            renewable: d.renewable,
            period: Duration::from_secs(d.period.unwrap_or(0)),
            explicit_max_ttl: Duration::from_secs(d.explicit_max_ttl),
            accessor: d.accessor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(body: &str) -> Option<Duration> {
        serde_json::from_str::<DataEnvelope<LeaseLookup>>(body)
            .expect("parses")
            .data
            .left()
    }

    #[test]
    fn a_lease_past_its_expiry_has_no_time_left_instead_of_failing_to_parse() {
        // OpenBao's answer for a lease whose expiry passed a few seconds ago, before its tidy.
        let expired = r#"{"data": {"id": "database/creds/app/abc", "issue_time": "2026-12-03T12:00:00Z",
            "expire_time": "2026-12-03T12:01:00Z", "last_renewal_time": null, "renewable": true, "ttl": -3}}"#;
        assert_eq!(lookup(expired), None);
        let live = r#"{"data": {"id": "database/creds/app/abc", "renewable": true, "ttl": 42}}"#;
        assert_eq!(lookup(live), Some(Duration::from_secs(42)));
    }
}
