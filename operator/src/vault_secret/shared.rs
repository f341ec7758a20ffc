//! Identical reads, made once. Refreshes of VaultSecrets that read the same source under the same
//! identity wake on the same instants ([`refresh_in`]), and the reads they make there share one
//! request: one in flight per (identity, source, what is read), its answer reused by refreshes for
//! a short window. New and changed resources always read afresh and leave their answer for the
//! refreshes right after them. Failures are shared with the reads waiting on them, never kept.
//!
//! The answers held here are Vault data; they live in memory for the window only, like any
//! answer being processed, and nothing here logs or prints them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};
use vault::{KvMetadata, KvVersion, SecretData};

use crate::identity::IdentityKey;

use super::Error;

/// How long a refresh may reuse an answer another read got. Refresh intervals are at least 10 s and
/// a refresh wakes at least half an interval after the last one ended ([`refresh_in`]), so a
/// resource never gets the answer of its own previous refresh back.
pub const WINDOW: Duration = Duration::from_secs(5);

/// Answers kept at once, at most (each a few hundred bytes to a few KiB of KV data).
const CAPACITY: u64 = 10_000;

/// One read of one source by one identity.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ReadKey {
    pub identity: IdentityKey,
    pub mount: String,
    pub path: String,
    pub what: What,
}

/// What is read of a source.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum What {
    /// KV v2 metadata (which version is current, which are deleted).
    Metadata,
    /// One version of a KV v2 secret (immutable while it is live).
    Version(i64),
    /// The version a spec asks for (its pinned one, else the current one), read without asking
    /// the metadata first: first syncs and changes, which need the data anyway. Never shared: what
    /// "current" names changes.
    Wanted,
    /// A KV v1 secret.
    Kv1,
}

/// A shared answer (cheap to clone). No `Debug`: it holds secret data.
#[derive(Clone)]
pub enum Answer {
    Metadata(Arc<KvMetadata>),
    Version(Arc<KvVersion>),
    Kv1(Arc<SecretData>),
}

pub struct SharedReads {
    /// `None` when sharing is off (a window of zero): every read goes to Vault.
    cache: Option<moka::future::Cache<ReadKey, Answer>>,
}

impl SharedReads {
    /// Answers are reused for `window`; zero turns sharing off.
    pub fn new(window: Duration) -> Self {
        let cache = (!window.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(window)
                .build()
        });
        Self { cache }
    }

    /// The answer of `read` for `key`. A `refresh` joins a read of the same key in flight or takes
    /// an answer younger than the window; anything else reads afresh and leaves its answer for the
    /// refreshes after it. `shared` is called when the answer came from another read.
    pub async fn read<F>(
        &self,
        key: ReadKey,
        refresh: bool,
        read: F,
        shared: impl FnOnce(),
    ) -> Result<Answer, Error>
    where
        F: Future<Output = Result<Answer, Error>>,
    {
        let Some(cache) = &self.cache else {
            return read.await;
        };
        if !refresh {
            let answer = read.await?;
            if key.what != What::Wanted {
                cache.insert(key, answer.clone()).await;
            }
            return Ok(answer);
        }
        let ran = AtomicBool::new(false);
        let result = cache
            .try_get_with(key, async {
                ran.store(true, Ordering::Relaxed);
                read.await
            })
            .await;
        if !ran.load(Ordering::Relaxed) {
            shared();
        }
        // The read that ran gets its own error back; those that waited on it get it shared.
        result.map_err(|e| Arc::try_unwrap(e).unwrap_or_else(Error::Shared))
    }
}

/// How long until the next refresh of a resource that refreshes every `period` and reads the source
/// `phase_of` names: the first instant of the grid `phase + k·period` (Unix time) at least half a
/// period from `now`. Resources of one source meet on the same instants (so their reads are
/// shared), different sources spread over the period, and the wait averages one period, between
/// half and one and a half.
pub fn refresh_in(now: Timestamp, period: Duration, phase_of: &ReadKey) -> Duration {
    let period_ms = period.as_millis().max(1);
    let now_ms = u128::try_from(now.as_millisecond()).unwrap_or(0);
    let phase = u128::from(phase(phase_of)) % period_ms;
    let earliest = now_ms + period_ms / 2;
    let slot = if earliest <= phase {
        phase
    } else {
        phase + (earliest - phase).div_ceil(period_ms) * period_ms
    };
    Duration::from_millis(u64::try_from(slot - now_ms).unwrap_or(u64::MAX))
}

/// A stable number of a source (the same in every replica and release).
fn phase(key: &ReadKey) -> u64 {
    let id = &key.identity;
    let mut hash = Sha256::new();
    for part in [
        &id.connection,
        &id.namespace,
        &id.service_account,
        &id.role,
        &id.mount,
        &key.mount,
        &key.path,
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes of a SHA-256"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicUsize;
    use vault::VaultError;

    fn key(namespace: &str, path: &str) -> ReadKey {
        ReadKey {
            identity: IdentityKey {
                connection: "default".into(),
                namespace: namespace.into(),
                service_account: "app".into(),
                role: "app".into(),
                mount: "kubernetes".into(),
            },
            mount: "secret".into(),
            path: path.into(),
            what: What::Metadata,
        }
    }

    fn answer(version: i64) -> Answer {
        Answer::Version(Arc::new(KvVersion {
            version,
            data: SecretData::default(),
        }))
    }

    fn version(answer: &Answer) -> i64 {
        match answer {
            Answer::Version(v) => v.version,
            _ => panic!("not a version"),
        }
    }

    fn unavailable() -> Error {
        Error::ReadSource {
            source: VaultError::Unavailable {
                operation: "kv2_metadata",
                status: 503,
                message: "down".into(),
            },
        }
    }

    /// A read that counts itself and answers `version` after a pause (so others can join it).
    async fn counted(calls: &AtomicUsize, version: i64) -> Result<Answer, Error> {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(answer(version))
    }

    #[tokio::test]
    async fn concurrent_refreshes_of_one_source_make_one_read() {
        let reads = SharedReads::new(WINDOW);
        let calls = AtomicUsize::new(0);
        let shared = AtomicUsize::new(0);
        let answers = futures::future::join_all((0..100).map(|_| {
            reads.read(key("a", "p"), true, counted(&calls, 3), || {
                shared.fetch_add(1, Ordering::SeqCst);
            })
        }))
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(shared.load(Ordering::SeqCst), 99);
        assert!(answers.iter().all(|a| version(a.as_ref().unwrap()) == 3));
        // Within the window a later refresh takes the same answer.
        reads
            .read(key("a", "p"), true, counted(&calls, 4), || {})
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn other_identities_paths_and_versions_read_for_themselves() {
        let reads = SharedReads::new(WINDOW);
        let calls = AtomicUsize::new(0);
        let mut other_version = key("a", "p");
        other_version.what = What::Version(2);
        for k in [key("a", "p"), key("b", "p"), key("a", "q"), other_version] {
            reads
                .read(k, true, counted(&calls, 1), || {})
                .await
                .unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_changed_resource_reads_afresh_and_refreshes_take_its_answer() {
        let reads = SharedReads::new(WINDOW);
        let calls = AtomicUsize::new(0);
        reads
            .read(key("a", "p"), true, counted(&calls, 1), || {})
            .await
            .unwrap();
        let fresh = reads
            .read(key("a", "p"), false, counted(&calls, 2), || {})
            .await
            .unwrap();
        assert_eq!((calls.load(Ordering::SeqCst), version(&fresh)), (2, 2));
        let refresh = reads
            .read(key("a", "p"), true, counted(&calls, 3), || {})
            .await
            .unwrap();
        assert_eq!((calls.load(Ordering::SeqCst), version(&refresh)), (2, 2));
    }

    #[tokio::test]
    async fn answers_expire_after_the_window() {
        let reads = SharedReads::new(Duration::from_secs(1));
        let calls = AtomicUsize::new(0);
        reads
            .read(key("a", "p"), true, counted(&calls, 1), || {})
            .await
            .unwrap();
        // moka keeps time by its own clock, not tokio's: wait in real time.
        std::thread::sleep(Duration::from_millis(1100));
        let later = reads
            .read(key("a", "p"), true, counted(&calls, 2), || {})
            .await
            .unwrap();
        assert_eq!((calls.load(Ordering::SeqCst), version(&later)), (2, 2));
    }

    #[tokio::test]
    async fn failures_reach_those_waiting_and_are_not_kept() {
        let reads = SharedReads::new(WINDOW);
        let calls = AtomicUsize::new(0);
        let failing = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err::<Answer, _>(unavailable())
        };
        let results = futures::future::join_all(
            (0..10).map(|_| reads.read(key("a", "p"), true, failing(), || {})),
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for result in results {
            let err = result.err().expect("the failure is shared");
            assert_eq!(err.reason(), crds::v1alpha1::reasons::VAULT_UNAVAILABLE);
            assert!(err.to_string().contains("Vault answered 503"), "{err}");
        }
        reads
            .read(key("a", "p"), true, counted(&calls, 1), || {})
            .await
            .expect("the next refresh reads again");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_zero_window_reads_every_time() {
        let reads = SharedReads::new(Duration::ZERO);
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            reads
                .read(key("a", "p"), true, counted(&calls, 1), || {})
                .await
                .unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn resources_of_one_source_meet_on_one_instant() {
        let period = Duration::from_secs(60);
        let start = Timestamp::from_second(1_800_000_000).unwrap();
        let slot = |offset_ms: i64, k: &ReadKey| {
            let now = start + k8s_openapi::jiff::SignedDuration::from_millis(offset_ms);
            now.as_millisecond() + refresh_in(now, period, k).as_millis() as i64
        };
        let k = key("a", "p");
        // Refreshes that end anywhere within one period (here: the minute after the earliest end
        // that wakes at `first`) all wake at `first`.
        let first = slot(0, &k);
        let base = first - start.as_millisecond() - 90_000 + 1;
        assert!((0..600).all(|i| slot(base + i * 99, &k) == first));
        assert_eq!(slot(base - 1, &k), first - 60_000);
        // Other sources are spread: 200 of them do not share one instant.
        let instants: std::collections::BTreeSet<i64> = (0..200)
            .map(|i| slot(0, &key("a", &format!("p{i}"))))
            .collect();
        assert!(instants.len() > 150, "{}", instants.len());
    }

    proptest! {
        #[test]
        fn the_wait_is_between_half_and_one_and_a_half_periods(
            now_ms in 0i64..4_000_000_000_000,
            period_ms in 1u64..100_000_000,
            path in "[a-z]{1,12}",
        ) {
            let period = Duration::from_millis(period_ms);
            let now = Timestamp::from_millisecond(now_ms).unwrap();
            let k = key("ns", &path);
            let wait = refresh_in(now, period, &k).as_millis() as u64;
            prop_assert!(wait >= period_ms / 2);
            prop_assert!(wait < period_ms / 2 + period_ms);
            // The instant lies on the source's grid.
            let at = now_ms as u64 + wait;
            prop_assert_eq!(at % period_ms, phase(&k) % period_ms);
        }
    }
}
