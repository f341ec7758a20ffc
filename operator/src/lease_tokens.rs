//! The Vault tokens that issue leases, one per identity. A lease dies with the token that created
//! it, so these tokens are renewed (not replaced) while they can be, and kept encrypted in a Secret
//! of the operator's own namespace, so a restarted or failed-over operator goes on with the same
//! token instead of issuing new credentials.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};
use rand::RngCore;
use sha2::{Digest, Sha256};
use vault::{VaultError, VaultToken};

use crate::identity::{Identities, IdentityError, IdentityKey};
use crate::vault_api::VaultApi;

use crate::managed::FIELD_MANAGER;
const TOKEN_FIELD: &str = "token";
const EXPIRES_ANNOTATION: &str = "vaultkeeper.dev/expires";
const HARD_END_ANNOTATION: &str = "vaultkeeper.dev/hard-end";
const IDENTITY_ANNOTATION: &str = "vaultkeeper.dev/identity";
const ISSUED_ANNOTATION: &str = "vaultkeeper.dev/issued";
const TTL_ANNOTATION: &str = "vaultkeeper.dev/ttl-seconds";
const ACCESSOR_ANNOTATION: &str = "vaultkeeper.dev/accessor";
/// Label of the token Secrets, so an administrator can list (and, to force new tokens, delete) them.
pub const TOKEN_SECRET_LABEL: &str = "vaultkeeper.dev/lease-token";

/// A token that issues leases, and what is known of its lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseToken {
    pub token: VaultToken,
    /// Accessor of the token (not a secret): leases record which token issued them.
    pub accessor: String,
    /// When it expires unless renewed.
    pub expires: Timestamp,
    /// When it ends for good (renewal was capped by its max TTL); `None` while renewal extends it.
    pub hard_end: Option<Timestamp>,
    /// When it was issued (login), so its whole lifetime is known once its hard end is.
    pub issued: Timestamp,
    /// The TTL it was issued with; each renewal asks for at least this much.
    pub ttl: Duration,
}

impl LeaseToken {
    /// Renew once half the time to expiry has passed, so an outage of up to half the TTL costs
    /// nothing.
    fn renew_due(&self, now: Timestamp) -> bool {
        self.hard_end.is_none() && now >= crate::clock::before(self.expires, self.ttl / 2)
    }

    /// When the token next needs attention: its renewal, or its replacement before its hard end.
    pub fn next_check(&self, lead: Duration) -> Timestamp {
        match self.hard_end {
            Some(end) => {
                let life = end.duration_since(self.issued).unsigned_abs();
                crate::clock::before(end, lead.min(life / 3))
            }
            None => crate::clock::before(self.expires, self.ttl / 2),
        }
    }

    /// Whether to replace it now: within `lead` of its hard end, where `lead` is at most a third of
    /// its whole life (so a short-lived token is not replaced the moment its end is known).
    fn replace_due(&self, now: Timestamp, lead: Duration) -> bool {
        match self.hard_end {
            Some(end) => {
                let life = end.duration_since(self.issued).unsigned_abs();
                crate::clock::after(now, lead.min(life / 3)) >= end
            }
            None => false,
        }
    }
}

/// Why a lease token could not be had or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseTokenError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("failed to renew or look up the lease token of {identity}: {source}")]
    Vault {
        identity: String,
        source: VaultError,
    },
    #[error("failed to store the lease token of {identity}: {source}")]
    Store {
        identity: String,
        source: kube::Error,
    },
}

impl LeaseTokenError {
    /// The Vault error underneath, if any (for condition reasons).
    pub fn vault_error(&self) -> Option<&VaultError> {
        match self {
            Self::Identity(IdentityError::Login { source, .. }) | Self::Vault { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<LeaseToken>>>;

/// Lease tokens by identity, loaded from and saved to Secrets in the operator's namespace.
pub struct LeaseTokens {
    kube: kube::Client,
    namespace: String,
    cipher: ChaCha20Poly1305,
    slots: Mutex<HashMap<IdentityKey, Slot>>,
}

impl LeaseTokens {
    /// `operator_key` is the operator's secret key; the encryption key is derived from it.
    pub fn new(kube: kube::Client, namespace: String, operator_key: &[u8]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(operator_key)
            .expect("HMAC accepts any key length");
        mac.update(b"vaultkeeper lease-token encryption v1");
        let key = mac.finalize().into_bytes();
        Self {
            kube,
            namespace,
            cipher: ChaCha20Poly1305::new(&key),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The identity's lease token: the one in memory, else the stored one if Vault still knows it,
    /// else a fresh login. Renews it when due; replaces it when it is about to end for good
    /// (within `replace_before` of its hard end), in which case leases of the old token must move.
    pub async fn get(
        &self,
        key: &IdentityKey,
        client: &dyn VaultApi,
        identities: &Identities,
        replace_before: Duration,
    ) -> Result<LeaseToken, LeaseTokenError> {
        let slot = self
            .slots
            .lock()
            .expect("slots lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        let now = Timestamp::now();
        if held.is_none() {
            *held = self.load(key, client).await?;
        }
        // A renewal keeps the token itself: storing it only refreshes its recorded expiry (a
        // restarted operator looks the token up), so failing to store it must not keep the
        // leases it issued from being renewed while the API server is away.
        let mut renewed = false;
        let mut logged_in = false;
        match held.clone() {
            Some(token) if token.replace_due(now, replace_before) || token.expires <= now => {
                *held = Some(self.login(key, client, identities).await?);
                logged_in = true;
            }
            Some(token) if token.renew_due(now) => {
                let increment = token.ttl.max(Duration::from_secs(60));
                match client.renew_self(&token.token, Some(increment)).await {
                    Ok(auth) => {
                        let capped = auth.ttl.saturating_add(Duration::from_secs(2)) < increment;
                        let expires = crate::clock::after(now, auth.ttl);
                        *held = Some(LeaseToken {
                            expires,
                            hard_end: capped.then_some(expires),
                            ..token
                        });
                        renewed = true;
                    }
                    // Revoked or expired out of band: its leases are gone with it.
                    Err(VaultError::PermissionDenied { .. }) => {
                        *held = Some(self.login(key, client, identities).await?);
                        logged_in = true;
                    }
                    Err(source) => {
                        return Err(LeaseTokenError::Vault {
                            identity: key.to_string(),
                            source,
                        });
                    }
                }
            }
            Some(_) => {}
            None => {
                *held = Some(self.login(key, client, identities).await?);
                logged_in = true;
            }
        }
        let token = held.clone().expect("set above");
        if logged_in {
            // A new token is stored before it issues anything a restarted operator would resume.
            self.save(key, &token).await?;
        } else if renewed && let Err(err) = self.save(key, &token).await {
            tracing::warn!(identity = %key, error = %err, "failed to store the renewed lease token; using it (a restarted operator looks it up)");
        }
        Ok(token)
    }

    async fn login(
        &self,
        key: &IdentityKey,
        client: &dyn VaultApi,
        identities: &Identities,
    ) -> Result<LeaseToken, LeaseTokenError> {
        let auth = identities.login(key, client).await?;
        let info =
            client
                .lookup_self(&auth.token)
                .await
                .map_err(|source| LeaseTokenError::Vault {
                    identity: key.to_string(),
                    source,
                })?;
        let now = Timestamp::now();
        Ok(LeaseToken {
            token: auth.token,
            accessor: info.accessor,
            expires: crate::clock::after(now, info.ttl),
            hard_end: None,
            issued: now,
            ttl: auth.ttl,
        })
    }

    /// The stored token, if there is one Vault still accepts.
    async fn load(
        &self,
        key: &IdentityKey,
        client: &dyn VaultApi,
    ) -> Result<Option<LeaseToken>, LeaseTokenError> {
        let name = secret_name(key);
        let api: Api<Secret> = Api::namespaced(self.kube.clone(), &self.namespace);
        let secret = api
            .get_opt(&name)
            .await
            .map_err(|source| LeaseTokenError::Store {
                identity: key.to_string(),
                source,
            })?;
        let Some(secret) = secret else {
            return Ok(None);
        };
        let Some(token) = secret
            .data
            .as_ref()
            .and_then(|d| d.get(TOKEN_FIELD))
            .and_then(|sealed| self.open(&name, &sealed.0))
        else {
            tracing::warn!(secret = %name, "stored lease token cannot be decrypted (operator key changed?); logging in again");
            return Ok(None);
        };
        let annotations = secret.metadata.annotations.unwrap_or_default();
        match client.lookup_self(&token).await {
            Ok(info) => {
                tracing::info!(identity = %key, accessor = %info.accessor, "resumed stored lease token");
                Ok(Some(resumed(
                    token,
                    &annotations,
                    info.accessor,
                    info.ttl,
                    info.period,
                    Timestamp::now(),
                )))
            }
            Err(VaultError::PermissionDenied { .. }) => {
                tracing::warn!(identity = %key, "stored lease token is no longer valid; logging in again");
                Ok(None)
            }
            Err(source) => Err(LeaseTokenError::Vault {
                identity: key.to_string(),
                source,
            }),
        }
    }

    async fn save(&self, key: &IdentityKey, token: &LeaseToken) -> Result<(), LeaseTokenError> {
        let name = secret_name(key);
        let annotations = recorded(key, token);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/name".to_owned(),
                        "vaultkeeper".to_owned(),
                    ),
                    (TOKEN_SECRET_LABEL.to_owned(), "true".to_owned()),
                ])),
                annotations: Some(annotations),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                TOKEN_FIELD.to_owned(),
                ByteString(self.seal(&name, &token.token)),
            )])),
            ..Default::default()
        };
        let api: Api<Secret> = Api::namespaced(self.kube.clone(), &self.namespace);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(|source| LeaseTokenError::Store {
            identity: key.to_string(),
            source,
        })?;
        Ok(())
    }

    /// nonce ‖ ciphertext, bound to the Secret's name so a sealed token cannot be moved.
    fn seal(&self, name: &str, token: &VaultToken) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: token.expose().as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .expect("encryption of a short message cannot fail");
        B64.encode([nonce.as_slice(), &sealed].concat())
            .into_bytes()
    }

    fn open(&self, name: &str, stored: &[u8]) -> Option<VaultToken> {
        let raw = B64.decode(stored).ok()?;
        if raw.len() < 12 {
            return None;
        }
        let (nonce, sealed) = raw.split_at(12);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: name.as_bytes(),
                },
            )
            .ok()?;
        String::from_utf8(plain).ok().map(VaultToken::new)
    }
}

/// What the token's Secret records about it besides the sealed token itself (read back by
/// [`resumed`]).
fn recorded(key: &IdentityKey, token: &LeaseToken) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([
        (IDENTITY_ANNOTATION.to_owned(), key.to_string()),
        (EXPIRES_ANNOTATION.to_owned(), token.expires.to_string()),
        (ISSUED_ANNOTATION.to_owned(), token.issued.to_string()),
        (TTL_ANNOTATION.to_owned(), token.ttl.as_secs().to_string()),
        (ACCESSOR_ANNOTATION.to_owned(), token.accessor.clone()),
    ]);
    if let Some(end) = token.hard_end {
        annotations.insert(HARD_END_ANNOTATION.to_owned(), end.to_string());
    }
    annotations
}

/// A stored token Vault still accepts, with what its Secret's annotations recorded. An annotation
/// that does not parse (edited by hand) counts as not recorded: the hard end as unknown (renewal
/// finds it again), the issue time as now, the TTL as Vault's current one.
fn resumed(
    token: VaultToken,
    annotations: &BTreeMap<String, String>,
    accessor: String,
    ttl_left: Duration,
    period: Duration,
    now: Timestamp,
) -> LeaseToken {
    let stamp = |name: &str| {
        annotations
            .get(name)
            .and_then(|t| t.parse::<Timestamp>().ok())
    };
    let hard_end = stamp(HARD_END_ANNOTATION);
    let issued = stamp(ISSUED_ANNOTATION)
        .filter(|t| *t <= now)
        .unwrap_or(now);
    let ttl = annotations
        .get(TTL_ANNOTATION)
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(period.max(ttl_left));
    LeaseToken {
        token,
        accessor,
        expires: crate::clock::after(now, ttl_left),
        hard_end,
        issued,
        ttl,
    }
}

/// One Secret per identity; the name is a digest, the identity itself is in an annotation.
pub fn secret_name(key: &IdentityKey) -> String {
    let digest = Sha256::digest(
        format!(
            "{}\n{}\n{}\n{}\n{}",
            key.connection, key.namespace, key.service_account, key.role, key.mount
        )
        .as_bytes(),
    );
    format!("vaultkeeper-lease-token-{}", &hex::encode(digest)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    fn key() -> IdentityKey {
        IdentityKey {
            connection: "default".into(),
            namespace: "app".into(),
            service_account: "web".into(),
            role: "db".into(),
            mount: "kubernetes".into(),
        }
    }

    #[test]
    fn secret_names_are_stable_and_distinct() {
        let a = secret_name(&key());
        assert_eq!(a, secret_name(&key()));
        assert!(a.starts_with("vaultkeeper-lease-token-") && a.len() == 40);
        let other = IdentityKey {
            role: "db2".into(),
            ..key()
        };
        assert_ne!(a, secret_name(&other));
    }

    #[tokio::test]
    async fn sealed_tokens_open_only_under_the_same_key_and_name() {
        vault::install_crypto_provider();
        // A client that is never used: sealing needs no API server.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let tokens = LeaseTokens::new(client.clone(), "ops".into(), &[7u8; 32]);
        let token = VaultToken::new("s.secret-token");
        let sealed = tokens.seal("a", &token);
        assert!(!String::from_utf8_lossy(&sealed).contains("secret-token"));
        assert_eq!(tokens.open("a", &sealed), Some(token));
        assert_eq!(tokens.open("b", &sealed), None, "bound to the Secret name");
        let other = LeaseTokens::new(client, "ops".into(), &[8u8; 32]);
        assert_eq!(other.open("a", &sealed), None, "bound to the operator key");
    }

    #[test]
    fn a_resumed_token_keeps_its_issue_time_and_hard_end() {
        let now = Timestamp::now();
        let token = LeaseToken {
            token: VaultToken::new("t"),
            accessor: "acc".into(),
            expires: now + SignedDuration::from_secs(100),
            hard_end: Some(now + SignedDuration::from_secs(100)),
            issued: now - SignedDuration::from_secs(500),
            ttl: Duration::from_secs(600),
        };
        let annotations = recorded(&key(), &token);
        let later = now + SignedDuration::from_secs(30);
        let back = resumed(
            VaultToken::new("t"),
            &annotations,
            "acc".into(),
            Duration::from_secs(70),
            Duration::ZERO,
            later,
        );
        assert_eq!(
            back.issued, token.issued,
            "the issue time survives a restart"
        );
        assert_eq!(back.hard_end, token.hard_end);
        assert_eq!(back.ttl, token.ttl);
        assert_eq!(back.expires, later + SignedDuration::from_secs(70));
    }

    #[test]
    fn hand_edited_token_annotations_count_as_not_recorded() {
        let now = Timestamp::now();
        let annotations = BTreeMap::from([
            (ISSUED_ANNOTATION.to_owned(), "next tuesday".to_owned()),
            (HARD_END_ANNOTATION.to_owned(), "9999999999999".to_owned()),
            (TTL_ANNOTATION.to_owned(), "-5".to_owned()),
        ]);
        let back = resumed(
            VaultToken::new("t"),
            &annotations,
            "acc".into(),
            Duration::from_secs(u64::MAX),
            Duration::from_secs(60),
            now,
        );
        assert_eq!(back.issued, now);
        assert_eq!(back.hard_end, None);
        assert_eq!(back.ttl, Duration::from_secs(u64::MAX));
        assert_eq!(back.expires, Timestamp::MAX);
    }

    #[test]
    fn renewal_is_due_at_half_of_the_remaining_ttl() {
        let now = Timestamp::now();
        let token = LeaseToken {
            token: VaultToken::new("t"),
            accessor: "a".into(),
            expires: now + SignedDuration::from_secs(100),
            hard_end: None,
            issued: now - SignedDuration::from_secs(20),
            ttl: Duration::from_secs(120),
        };
        assert!(!token.renew_due(now - SignedDuration::from_secs(1)));
        assert!(token.renew_due(now + SignedDuration::from_secs(41)));
        let capped = LeaseToken {
            hard_end: Some(now),
            ..token
        };
        assert!(!capped.renew_due(now + SignedDuration::from_secs(99)));
        // Life of 20s (issued 20s before its end): replaced in its last third, not at once.
        let lead = Duration::from_secs(120);
        assert!(!capped.replace_due(now - SignedDuration::from_secs(8), lead));
        assert!(capped.replace_due(now - SignedDuration::from_secs(6), lead));
    }
}
