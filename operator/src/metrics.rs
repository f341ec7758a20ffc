//! Prometheus metrics of the operator. Labels are bounded: kinds, results, operations, status codes,
//! and for certificate timestamps the resource's namespace and name: those are computed at scrape
//! time from the controller's cache of CertificateRequests, so a deleted resource leaves no series.

use std::time::Duration;

use crds::v1alpha1::CertificateRequest;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
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
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub kind: &'static str,
    pub step: &'static str,
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
    pub vault_request_duration: Family<OperationLabels, Histogram>,
    pub logins: Family<ResultLabels, Counter>,
    pub kube_writes: Family<WriteLabels, Counter>,
    pub restarts: Family<KindLabels, Counter>,
    /// Reads answered by another read of the same source and identity (no request of their own).
    pub shared_reads: Family<OperationLabels, Counter>,
    /// How late due renewals and rotations were acted on.
    pub lease_lateness: Family<StepLabels, Histogram>,
    /// Shards this replica serves (with `--shards`).
    pub shards_held: prometheus_client::metrics::gauge::Gauge,
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
        let vault_request_duration =
            Family::<OperationLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            });
        registry.register(
            "vault_request_duration_seconds",
            "Duration of Vault requests by operation",
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
        let shared_reads = Family::<OperationLabels, Counter>::default();
        registry.register(
            "vault_reads_shared",
            "Vault reads answered by an identical read of the same source and identity, by operation",
            shared_reads.clone(),
        );
        let lease_lateness = Family::<StepLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "lease_lateness_seconds",
            "Time from when a renewal or rotation was due to when the operator acted on it, by kind and step",
            lease_lateness.clone(),
        );
        let shards_held = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "shards_held",
            "Shards this replica serves (with --shards; 0 without)",
            shards_held.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            shards_held,
            registry,
            restarts,
            shared_reads,
            lease_lateness,
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
    pub fn shards_held(&self, count: usize) {
        self.shards_held
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn shared_read(&self, operation: &'static str) {
        self.shared_reads
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    pub fn lease_lateness(&self, kind: &'static str, step: &'static str, late: Duration) {
        self.lease_lateness
            .get_or_create(&StepLabels { kind, step })
            .observe(late.as_secs_f64());
    }

    pub fn restart(&self, kind: &'static str) {
        self.restarts.get_or_create(&KindLabels { kind }).inc();
    }

    /// The metrics, with the certificate gauges computed at each scrape from `certificates` (the
    /// CertificateRequest controller's cache, whose statuses hold notAfter and renewalTime).
    pub fn with_certificates(certificates: Vec<Store<CertificateRequest>>) -> Self {
        let mut metrics = Self::default();
        metrics
            .registry
            .register_collector(Box::new(CertificateCollector { certificates }));
        metrics
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

/// Certificate end and renewal times of every cached CertificateRequest, read at scrape time.
struct CertificateCollector {
    /// One cache per watched scope.
    certificates: Vec<Store<CertificateRequest>>,
}

impl std::fmt::Debug for CertificateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateCollector")
    }
}

impl Collector for CertificateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut rows: Vec<(ResourceLabels, i64, Option<i64>)> = self
            .certificates
            .iter()
            .flat_map(|store| store.state())
            .filter_map(|cr| {
                let status = cr.status.as_ref()?;
                let not_after = status.not_after.as_ref()?.0.as_second();
                let renewal = status.renewal_time.as_ref().map(|t| t.0.as_second());
                let labels = ResourceLabels {
                    namespace: cr.namespace().unwrap_or_default(),
                    name: cr.name_any(),
                };
                Some((labels, not_after, renewal))
            })
            .collect();
        rows.sort_by(|a, b| (&a.0.namespace, &a.0.name).cmp(&(&b.0.namespace, &b.0.name)));
        let mut family = encoder.encode_descriptor(
            "certificate_expiry_timestamp_seconds",
            "End of validity (notAfter) of the certificate of each CertificateRequest, Unix seconds",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, not_after, _) in &rows {
            ConstGauge::new(*not_after).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "certificate_renewal_timestamp_seconds",
            "When the operator renews the certificate of each CertificateRequest, Unix seconds",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, _, renewal) in &rows {
            if let Some(renewal) = renewal {
                ConstGauge::new(*renewal).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// The process's own gauges, read at scrape time: live tokio tasks (a task leak shows here first),
/// open file descriptors and resident memory (Linux; left out where /proc is not there).
#[derive(Debug)]
struct ProcessCollector;

impl ProcessCollector {
    fn gauge(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: i64,
    ) -> Result<(), std::fmt::Error> {
        let family = encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(value).encode(family)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = i64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(i64::MAX);
            Self::gauge(
                &mut encoder,
                "tokio_alive_tasks",
                "Tasks alive in the operator's tokio runtime",
                tasks,
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let open = i64::try_from(fds.count()).unwrap_or(i64::MAX);
            Self::gauge(
                &mut encoder,
                "process_open_fds",
                "File descriptors the operator holds open",
                open,
            )?;
        }
        let rss_kib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                line.split_whitespace().nth(1)?.parse::<i64>().ok()
            });
        if let Some(kib) = rss_kib {
            Self::gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory of the operator",
                kib.saturating_mul(1024),
            )?;
        }
        Ok(())
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
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher;

    fn cr(name: &str, not_after: &str) -> CertificateRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "vaultkeeper.dev/v1alpha1",
            "kind": "CertificateRequest",
            "metadata": {"name": name, "namespace": "web", "uid": name},
            "spec": {"auth": {"role": "r"}, "mount": "pki", "role": "r", "commonName": "a.example.com", "destination": {"name": name}},
            "status": {"notAfter": not_after, "renewalTime": "2030-01-01T00:00:00Z"},
        }))
        .unwrap()
    }

    #[test]
    fn certificate_gauges_follow_the_cache_so_deleted_resources_leave_no_series() {
        let (reader, mut writer) = kube::runtime::reflector::store();
        let metrics = Metrics::with_certificates(vec![reader]);
        let a = cr("a", "2030-06-01T00:00:00Z");
        writer.apply_watcher_event(&watcher::Event::Apply(a.clone()));
        writer.apply_watcher_event(&watcher::Event::Apply(cr("b", "2031-06-01T00:00:00Z")));
        let text = metrics.encode();
        assert!(
            text.contains(r#"vaultkeeper_certificate_expiry_timestamp_seconds{namespace="web",name="a"} 1906502400"#),
            "{text}"
        );
        assert!(
            text.contains(r#"vaultkeeper_certificate_renewal_timestamp_seconds{namespace="web",name="b"} 1893456000"#),
            "{text}"
        );
        writer.apply_watcher_event(&watcher::Event::Delete(a));
        let text = metrics.encode();
        assert!(!text.contains(r#"name="a""#), "{text}");
        assert!(text.contains(r#"name="b""#), "{text}");
    }

    fn gauge(text: &str, name: &str) -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn process_gauges_count_live_tasks_and_open_files() {
        let metrics = Metrics::default();
        let before = gauge(&metrics.encode(), "vaultkeeper_tokio_alive_tasks");
        let tasks: Vec<_> = (0..5)
            .map(|_| tokio::spawn(async { std::future::pending::<()>().await }))
            .collect();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let text = metrics.encode();
        assert_eq!(gauge(&text, "vaultkeeper_tokio_alive_tasks"), before + 5);
        assert!(gauge(&text, "vaultkeeper_process_open_fds") > 0);
        assert!(gauge(&text, "vaultkeeper_process_resident_memory_bytes") > 1 << 20);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        drop(file);
        assert_eq!(
            gauge(&metrics.encode(), "vaultkeeper_tokio_alive_tasks"),
            before
        );
    }
}
