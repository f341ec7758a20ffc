//! Prometheus metrics of the operator. Labels are bounded: kinds, results, operations, status codes.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VaultRequestLabels {
    pub operation: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub resource: &'static str,
}

/// Every metric the operator exports, registered once.
pub struct Metrics {
    pub registry: Registry,
    pub syncs: Family<SyncLabels, Counter>,
    pub sync_duration: Family<KindLabels, Histogram>,
    pub vault_requests: Family<VaultRequestLabels, Counter>,
    pub vault_request_duration: Family<KindLabels, Histogram>,
    pub logins: Family<ResultLabels, Counter>,
    pub kube_writes: Family<WriteLabels, Counter>,
    pub restarts: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vaultkeeper");
        let syncs = Family::<SyncLabels, Counter>::default();
        registry.register(
            "syncs",
            "Reconciles by kind and result (synced, unchanged, or an error category)",
            syncs.clone(),
        );
        let sync_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "sync_duration_seconds",
            "Duration of reconciles by kind",
            sync_duration.clone(),
        );
        let vault_requests = Family::<VaultRequestLabels, Counter>::default();
        registry.register(
            "vault_requests",
            "Vault requests by operation and HTTP status (or 'error')",
            vault_requests.clone(),
        );
        let vault_request_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register(
            "vault_request_duration_seconds",
            "Duration of Vault requests by operation (label 'kind' holds the operation)",
            vault_request_duration.clone(),
        );
        let logins = Family::<ResultLabels, Counter>::default();
        registry.register("vault_logins", "Vault logins by result", logins.clone());
        let kube_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "kube_writes",
            "Writes to the Kubernetes API by resource (secret, status, event)",
            kube_writes.clone(),
        );
        let restarts = Family::<KindLabels, Counter>::default();
        registry.register(
            "restarts",
            "Workload restarts triggered, by the kind of resource that triggered them",
            restarts.clone(),
        );
        Self {
            registry,
            restarts,
            syncs,
            sync_duration,
            vault_requests,
            vault_request_duration,
            logins,
            kube_writes,
        }
    }
}

impl Metrics {
    pub fn restart(&self, kind: &'static str) {
        self.restarts.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn sync(&self, kind: &'static str, result: &'static str, took: Duration) {
        self.syncs.get_or_create(&SyncLabels { kind, result }).inc();
        self.sync_duration
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    pub fn kube_write(&self, resource: &'static str) {
        self.kube_writes
            .get_or_create(&WriteLabels { resource })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl vault::RequestObserver for Metrics {
    fn observe(&self, operation: &'static str, outcome: &str, elapsed: Duration) {
        self.vault_requests
            .get_or_create(&VaultRequestLabels {
                operation,
                status: outcome.to_owned(),
            })
            .inc();
        self.vault_request_duration
            .get_or_create(&KindLabels { kind: operation })
            .observe(elapsed.as_secs_f64());
    }
}
