//! Prometheus metrics of the webhook: admissions by result and handler latency. Labels are bounded.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::review::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    /// `ok`, or why the TLS handshake failed (`handshake_error`, `handshake_timeout`).
    result: &'static str,
}

/// Every metric the webhook exports, registered once.
pub struct Metrics {
    registry: Registry,
    admissions: Family<ResultLabels, Counter>,
    duration: Histogram,
    connections: Family<ConnectionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vaultkeeper_webhook");
        let admissions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "admissions",
            "Admission reviews by result (injected, skipped, denied, error)",
            admissions.clone(),
        );
        // From 25 µs: the handler is meant to be well under a millisecond.
        let duration = Histogram::new(exponential_buckets(0.000_025, 2.0, 14));
        registry.register(
            "admission_duration_seconds",
            "Time spent answering one admission review, decoding included",
            duration.clone(),
        );
        // A client that keeps its connections makes this grow by a handful, not once per review:
        // each new connection costs both sides a TLS handshake.
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections",
            "Accepted connections by the result of their TLS handshake (ok, handshake_error, handshake_timeout)",
            connections.clone(),
        );
        Self {
            registry,
            admissions,
            duration,
            connections,
        }
    }
}

impl Metrics {
    pub fn admission(&self, outcome: Outcome, took: Duration) {
        self.admissions
            .get_or_create(&ResultLabels {
                result: outcome.as_str(),
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// One accepted connection whose TLS handshake ended with `result`.
    pub fn connection(&self, result: &'static str) {
        self.connections
            .get_or_create(&ConnectionLabels { result })
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
