//! Everything a controller needs, handed to every reconcile in one value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::Recorder;
use priority_semaphore::PrioritySemaphore;

use crate::identity::Identities;
use crate::lease_tokens::LeaseTokens;
use crate::metrics::Metrics;
use crate::restart::Orchestrator;
use crate::scope::ManagedSecrets;

pub struct Context {
    /// For requests: every answer comes within the operator's Kubernetes timeout or fails.
    pub client: kube::Client,
    /// For watches, which wait for events for minutes (with an idle timeout of their own).
    pub watch_client: kube::Client,
    pub identities: Identities,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Secrets of VaultSecrets only (label selector), without managedFields.
    pub secrets: ManagedSecrets,
    /// Secrets of DynamicCredentials only.
    pub dc_secrets: ManagedSecrets,
    /// Secrets of CertificateRequests only.
    pub cert_secrets: ManagedSecrets,
    /// Key of the data HMACs.
    pub hmac_key: Vec<u8>,
    /// Periodic refreshes of VaultSecrets take a permit of this lane ([`Lane::Refresh`]).
    pub refresh_lane: Arc<PrioritySemaphore>,
    /// Every other reconcile takes a permit of this one ([`Lane::Sync`]): first syncs and changes,
    /// DynamicCredentials and CertificateRequests. Thousands of resources due at once then make a
    /// bounded number of requests at a time, not one connection each.
    pub sync_lane: Arc<PrioritySemaphore>,
    /// Identical refresh reads (same source, same identity), made once.
    pub shared_reads: crate::vault_secret::shared::SharedReads,
    /// Per-identity tokens that issue leases (DynamicCredential), renewed and stored.
    pub lease_tokens: LeaseTokens,
    /// A lease token is replaced this long before its hard end (its leases are rotated first).
    pub token_replace_before: Duration,
    /// Debounce and rate limits of workload restarts.
    pub restarts: Orchestrator,
    /// Resources waiting for Vault to come back, and the probe that sees it come back.
    pub outages: crate::outage::Outages,
    /// With `--shards`: the shards this replica serves; it reconciles only their resources.
    pub shards: Option<Arc<crate::shards::Shards>>,
    /// Consecutive failures per object (by UID), for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// Reconciles of the sync lane that run at once, by default.
pub const DEFAULT_SYNC_CONCURRENCY: usize = 32;

/// Which permits a reconcile waits for before it starts ([`Context::lane`]). Periodic refreshes and
/// everything else wait in separate lanes, so new and changed resources are never queued behind
/// thousands of refreshes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Refresh,
    Sync,
}

impl Lane {
    /// The lane of kinds with no periodic refresh of their own.
    pub fn sync<K>(_: &K) -> Lane {
        Lane::Sync
    }
}

/// The instant by which a resource's work must be done (a lease's or certificate's end), for the
/// order in which waiters of one lane get permits: the earliest first, so a process that lives only
/// seconds (restarted again and again) serves the leases closest to their end rather than the same
/// first resources of its list each time. `None` (new, changed, nothing at stake) counts as now.
pub type Deadline = Option<Timestamp>;

/// No deadline, for kinds and states where the order of waiting does not matter.
pub fn no_deadline<K>(_: &K) -> Deadline {
    None
}

/// The permit priority of `deadline` (higher goes first; equal ones in arrival order): minus its
/// whole seconds since 2020, so earlier deadlines rank higher. Absolute rather than relative to now,
/// so waiters that queued at different times compare by their deadlines alone.
pub fn priority(deadline: Deadline, now: Timestamp) -> priority_semaphore::Priority {
    const EPOCH_2020: i64 = 1_577_836_800;
    let seconds = deadline
        .unwrap_or(now)
        .as_second()
        .saturating_sub(EPOCH_2020);
    i32::try_from(seconds.saturating_neg()).unwrap_or(if seconds > 0 { i32::MIN } else { i32::MAX })
}

impl Context {
    // The process's one wiring point: each argument is a distinct dependency, named at the call.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        identities: Identities,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        secrets: impl Into<ManagedSecrets>,
        dc_secrets: impl Into<ManagedSecrets>,
        cert_secrets: impl Into<ManagedSecrets>,
        hmac_key: Vec<u8>,
        refresh_concurrency: usize,
        lease_tokens: LeaseTokens,
        restarts: Orchestrator,
    ) -> Self {
        Self {
            watch_client: client.clone(),
            client,
            identities,
            recorder,
            metrics,
            secrets: secrets.into(),
            dc_secrets: dc_secrets.into(),
            cert_secrets: cert_secrets.into(),
            hmac_key,
            refresh_lane: Arc::new(PrioritySemaphore::new(refresh_concurrency.max(1))),
            sync_lane: Arc::new(PrioritySemaphore::new(DEFAULT_SYNC_CONCURRENCY)),
            shared_reads: crate::vault_secret::shared::SharedReads::new(
                crate::vault_secret::shared::WINDOW,
            ),
            lease_tokens,
            restarts,
            token_replace_before: Duration::from_secs(120),
            outages: crate::outage::Outages::default(),
            shards: None,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `concurrency` reconciles of the sync lane at once instead of [`DEFAULT_SYNC_CONCURRENCY`].
    pub fn with_sync_concurrency(mut self, concurrency: usize) -> Self {
        self.sync_lane = Arc::new(PrioritySemaphore::new(concurrency.max(1)));
        self
    }

    /// The permits of `lane`.
    pub fn lane(&self, lane: Lane) -> &Arc<PrioritySemaphore> {
        match lane {
            Lane::Refresh => &self.refresh_lane,
            Lane::Sync => &self.sync_lane,
        }
    }

    /// Refreshes share answers for `window` instead of the default (zero: never).
    pub fn with_shared_read_window(mut self, window: Duration) -> Self {
        self.shared_reads = crate::vault_secret::shared::SharedReads::new(window);
        self
    }

    /// Watches through `client` rather than through the request client.
    /// Serves only the resources of the shards `shards` says this replica holds.
    pub fn with_shards(mut self, shards: Arc<crate::shards::Shards>) -> Self {
        self.shards = Some(shards);
        self
    }

    pub fn with_watch_client(mut self, client: kube::Client) -> Self {
        self.watch_client = client;
        self
    }

    /// Records a failure of `uid` and returns how long to wait: 5s doubling to 5 min, ±20% jitter.
    pub fn backoff(&self, uid: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let count = failures.entry(uid.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        let base = Duration::from_secs(5)
            .saturating_mul(1 << (*count - 1).min(6))
            .min(Duration::from_secs(300));
        crate::clock::jitter(base, 0.2)
    }

    /// Forgets the failures of `uid` after a success.
    pub fn succeeded(&self, uid: &str) {
        self.failures.lock().expect("failures lock").remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    #[test]
    fn an_earlier_deadline_ranks_higher_and_none_counts_as_now() {
        let now: Timestamp = "2026-12-04T18:00:00Z".parse().unwrap();
        let later = now + SignedDuration::from_secs(1);
        assert!(priority(Some(now), now) > priority(Some(later), now));
        assert_eq!(priority(None, now), priority(Some(now), now));
        // Compared by the deadline alone, whenever each waiter asked.
        assert_eq!(priority(Some(later), now), priority(Some(later), later));
        // The ends of time saturate instead of wrapping around.
        assert_eq!(priority(Some(Timestamp::MAX), now), i32::MIN);
        assert_eq!(priority(Some(Timestamp::MIN), now), i32::MAX);
        assert!(priority(Some(Timestamp::MAX), now) < priority(Some(later), now));
    }
}
