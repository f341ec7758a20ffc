//! Prometheus metrics of the operator. Labels are bounded: kinds, results, operations, status codes,
//! and for certificate timestamps the resource's namespace and name (one series per resource,
//! removed when it is deleted).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub namespace: String,
    pub name: String,
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
    pub certificate_expiry: Family<ResourceLabels, Gauge>,
    pub certificate_renewal: Family<ResourceLabels, Gauge>,
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
        let certificate_expiry = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "End of validity (notAfter) of the certificate of each CertificateRequest, Unix seconds",
            certificate_expiry.clone(),
        );
        let certificate_renewal = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "certificate_renewal_timestamp_seconds",
            "When the operator renews the certificate of each CertificateRequest, Unix seconds",
            certificate_renewal.clone(),
        );
        Self {
            registry,
            restarts,
            certificate_expiry,
            certificate_renewal,
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

    /// Records a CertificateRequest's certificate end and renewal time.
    pub fn certificate(&self, namespace: &str, name: &str, not_after: i64, renewal: i64) {
        let labels = ResourceLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.certificate_expiry
            .get_or_create(&labels)
            .set(not_after);
        self.certificate_renewal.get_or_create(&labels).set(renewal);
    }

    /// Drops the series of a deleted CertificateRequest.
    pub fn forget_certificate(&self, namespace: &str, name: &str) {
        let labels = ResourceLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.certificate_expiry.remove(&labels);
        self.certificate_renewal.remove(&labels);
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
