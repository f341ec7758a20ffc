//! Vault tokens cached per identity, so a reconcile reuses a token instead of logging in.
//!
//! Concurrent callers for the same identity wait for one login instead of each logging in.
//! A token is replaced once two thirds of its TTL have passed, well before Vault expires it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{AuthToken, VaultToken};

/// Tokens whose TTL Vault reports as zero (no expiry) are still refreshed this often.
const MAX_REUSE: Duration = Duration::from_secs(3600);

/// A cached token and when to replace it.
#[derive(Clone, Debug)]
pub struct CachedToken {
    pub token: VaultToken,
    pub refresh_at: Instant,
}

impl CachedToken {
    /// Caches `auth`, obtained at `now`, until two thirds of its TTL have passed.
    pub fn new(auth: AuthToken, now: Instant) -> Self {
        let lifetime = if auth.ttl.is_zero() {
            MAX_REUSE
        } else {
            (auth.ttl * 2 / 3).min(MAX_REUSE)
        };
        Self {
            token: auth.token,
            refresh_at: now + lifetime,
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// Tokens keyed by identity `K`.
pub struct TokenCache<K> {
    slots: Mutex<HashMap<K, Slot>>,
}

impl<K> Default for TokenCache<K> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> TokenCache<K> {
    /// Returns the cached token for `key`, or runs `login` (once, even under concurrent callers)
    /// when there is none or it is due for replacement. The flag is true when `login` ran.
    pub async fn get_or_login<E, F, Fut>(&self, key: &K, login: F) -> Result<(VaultToken, bool), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AuthToken, E>>,
    {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some(cached) = guard.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok((cached.token.clone(), false));
        }
        let auth = login().await?;
        let cached = CachedToken::new(auth, Instant::now());
        let token = cached.token.clone();
        *guard = Some(cached);
        Ok((token, true))
    }

    /// Forgets the token of `key` if it is still `token` (Vault no longer accepts it).
    pub async fn invalidate(&self, key: &K, token: &VaultToken) {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(|c| &c.token == token) {
            *guard = None;
        }
    }

    /// Number of identities with a slot (for tests and metrics).
    pub fn len(&self) -> usize {
        self.slots.lock().expect("token cache lock").len()
    }

    /// Whether no identity has a slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, key: &K) -> Slot {
        let mut slots = self.slots.lock().expect("token cache lock");
        slots.entry(key.clone()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn auth(token: &str, ttl_secs: u64) -> AuthToken {
        AuthToken {
            token: VaultToken::new(token),
            ttl: Duration::from_secs(ttl_secs),
            renewable: true,
        }
    }

    #[tokio::test]
    async fn reuses_a_token_until_two_thirds_of_its_ttl() {
        let cache = TokenCache::<&str>::default();
        let logins = AtomicUsize::new(0);
        for _ in 0..5 {
            let (token, _) = cache
                .get_or_login(&"ns/sa/role", || async {
                    logins.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(auth("t1", 3600))
                })
                .await
                .unwrap();
            assert_eq!(token.expose(), "t1");
        }
        assert_eq!(logins.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_login() {
        let cache = Arc::new(TokenCache::<String>::default());
        let logins = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, logins) = (cache.clone(), logins.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_login(&"id".to_owned(), || async {
                        logins.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(auth("t", 600))
                    })
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(logins.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalidated_or_expiring_tokens_are_replaced() {
        let cache = TokenCache::<&str>::default();
        let (first, fresh) = cache
            .get_or_login(&"id", || async { Ok::<_, ()>(auth("a", 600)) })
            .await
            .unwrap();
        assert!(fresh);
        cache.invalidate(&"id", &first).await;
        let (second, fresh) = cache
            .get_or_login(&"id", || async { Ok::<_, ()>(auth("b", 0)) })
            .await
            .unwrap();
        assert!(fresh);
        assert_eq!(second.expose(), "b");
        // A stale invalidation (another token) leaves the current one alone.
        cache.invalidate(&"id", &first).await;
        let (third, fresh) = cache
            .get_or_login(&"id", || async { Ok::<_, ()>(auth("c", 600)) })
            .await
            .unwrap();
        assert!(!fresh);
        assert_eq!(third.expose(), "b");
        assert_eq!(
            CachedToken::new(auth("x", 30), Instant::now())
                .refresh_at
                .duration_since(Instant::now())
                .as_secs(),
            19
        );
    }
}
