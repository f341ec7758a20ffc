//! Vault outages. A resource whose reconcile failed because Vault was away waits out its per-object
//! backoff, which grows to minutes in a long outage: without more, resources would come back one
//! by one up to five minutes after Vault did. While any such resource waits, one probe per
//! connection asks Vault's health (unauthenticated, every [`PROBE_EVERY`]); when a connection it saw
//! down answers again, every waiting resource of every kind is retried at once. The lanes' permits
//! still pace those retries, so Vault sees no more requests at a time than the lanes allow.

use std::collections::{BTreeSet, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};

use vault::VaultError;

use crate::vault_api::VaultApi;

/// What the probe asks of a connection: whether Vault answers and is unsealed.
#[async_trait::async_trait]
pub trait Health: Send + Sync {
    async fn health(&self) -> Result<(), VaultError>;
}

#[async_trait::async_trait]
impl Health for Arc<dyn VaultApi> {
    async fn health(&self) -> Result<(), VaultError> {
        VaultApi::health(self.as_ref()).await
    }
}

/// How often a connection's health is asked while resources wait for Vault.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// The outage state shared by the controllers and the probe.
pub struct Outages {
    /// Bumped each time a connection the probe saw down answers again.
    back: watch::Sender<u64>,
    /// A reconcile failed because Vault was away: the probe starts (or keeps going).
    waiting: Notify,
}

impl Default for Outages {
    fn default() -> Self {
        Self {
            back: watch::Sender::new(0),
            waiting: Notify::new(),
        }
    }
}

impl Outages {
    /// A reconcile failed because Vault was away.
    pub fn failed(&self) {
        self.waiting.notify_one();
    }

    /// Changes each time Vault came back after an outage.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.back.subscribe()
    }

    /// Probes `connections` for the life of the process: idle until a reconcile fails because Vault
    /// was away, then every `every` until each connection it saw down answers again.
    pub async fn probe<H: Health>(&self, connections: Vec<(String, H)>, every: Duration) {
        loop {
            self.waiting.notified().await;
            let mut down = BTreeSet::new();
            loop {
                let mut came_back = false;
                for (name, client) in &connections {
                    match client.health().await {
                        Ok(()) => came_back |= down.remove(name),
                        Err(err) => {
                            if down.insert(name.clone()) {
                                tracing::warn!(connection = %name, error = %err, "Vault is away; retrying what waits for it once it answers");
                            }
                        }
                    }
                }
                if came_back {
                    tracing::info!("Vault answers again; retrying what waited for it");
                    self.back.send_modify(|n| *n = n.wrapping_add(1));
                }
                if down.is_empty() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
        }
    }
}

/// The resources of one kind that wait for Vault, and the retries of them once it is back.
pub struct Waiting<R> {
    refs: Arc<Mutex<HashSet<R>>>,
}

impl<R> Clone for Waiting<R> {
    fn clone(&self) -> Self {
        Self {
            refs: self.refs.clone(),
        }
    }
}

impl<R: Hash + Eq + Clone + Send + 'static> Waiting<R> {
    /// The set, and the stream of resources to retry (each time Vault comes back, every resource
    /// still waiting, once) for the controller's `reconcile_on`.
    pub fn new(outages: &Outages) -> (Self, mpsc::UnboundedReceiver<R>) {
        let waiting = Self {
            refs: Arc::default(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut back = outages.subscribe();
        let refs = waiting.refs.clone();
        tokio::spawn(async move {
            while back.changed().await.is_ok() {
                let due: Vec<R> = refs.lock().expect("waiting lock").drain().collect();
                for r in due {
                    if tx.send(r).is_err() {
                        return; // the controller stopped
                    }
                }
            }
        });
        (waiting, rx)
    }

    /// `r` failed because Vault was away.
    pub fn add(&self, r: R) {
        self.refs.lock().expect("waiting lock").insert(r);
    }

    /// `r` reconciled: it no longer waits.
    pub fn remove(&self, r: &R) {
        self.refs.lock().expect("waiting lock").remove(r);
    }

    pub fn len(&self) -> usize {
        self.refs.lock().expect("waiting lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A connection whose health answers as `up` says, counting the probes.
    struct Health {
        up: Arc<AtomicBool>,
        probes: Arc<AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl super::Health for Health {
        async fn health(&self) -> Result<(), VaultError> {
            self.probes.fetch_add(1, Ordering::SeqCst);
            if self.up.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(VaultError::Unreachable {
                    operation: "health",
                    message: "connection refused".into(),
                })
            }
        }
    }

    /// Outages with a running probe of one connection, whose health answers as the flag says,
    /// and the count of its probes.
    fn probed(up: bool) -> (Arc<Outages>, Arc<AtomicBool>, Arc<AtomicUsize>) {
        let outages = Arc::new(Outages::default());
        let up = Arc::new(AtomicBool::new(up));
        let probes = Arc::new(AtomicUsize::new(0));
        let client = Health {
            up: up.clone(),
            probes: probes.clone(),
        };
        let prober = outages.clone();
        tokio::spawn(async move {
            prober
                .probe(vec![("default".into(), client)], PROBE_EVERY)
                .await
        });
        (outages, up, probes)
    }

    #[tokio::test(start_paused = true)]
    async fn what_waits_is_retried_once_when_vault_answers_again_and_not_before() {
        let (outages, up, probes) = probed(false);
        let (waiting, mut retries) = Waiting::<&'static str>::new(&outages);

        // Idle until something fails.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            probes.load(Ordering::SeqCst),
            0,
            "no probe while nothing waits"
        );

        waiting.add("a");
        waiting.add("b");
        outages.failed();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            retries.try_recv().is_err(),
            "nothing retried while Vault is away"
        );
        let during = probes.load(Ordering::SeqCst);
        assert!(
            (25..=35).contains(&during),
            "about one probe per 2 s: {during}"
        );

        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(PROBE_EVERY * 2).await;
        let mut got = vec![retries.recv().await.unwrap(), retries.recv().await.unwrap()];
        got.sort();
        assert_eq!(got, ["a", "b"]);
        assert!(waiting.is_empty());
        assert!(retries.try_recv().is_err(), "each one once");

        // Back to idle: no probes while Vault answers and nothing waits.
        let after = probes.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(probes.load(Ordering::SeqCst), after);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_while_vault_answers_waits_for_its_backoff_alone() {
        // A resource failing with Vault reachable (a 5xx of one path, say) is not retried by the
        // probe, which saw nothing come back; its own backoff applies.
        let (outages, _, probes) = probed(true);
        let (waiting, mut retries) = Waiting::<&'static str>::new(&outages);
        waiting.add("a");
        outages.failed();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(retries.try_recv().is_err());
        assert_eq!(probes.load(Ordering::SeqCst), 1, "one probe, then idle");
        assert_eq!(waiting.len(), 1);
    }
}
