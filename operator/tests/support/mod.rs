//! The partial-failure harness: a world (fake Kubernetes API, fake Vault, one count of their
//! steps) that outlives operator processes, and an operator process (a `Context` on a client of
//! that API, caches filled from what the API holds) that a test can stop at any step and replace
//! by a fresh one, as a restarted operator would be.

pub mod fake_api;
pub mod fake_vault;
pub mod steps;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use vaultkeeper_operator::context::Context;
use vaultkeeper_operator::identity::{Connection, Identities};
use vaultkeeper_operator::lease_tokens::LeaseTokens;
use vaultkeeper_operator::metrics::Metrics;
use vaultkeeper_operator::restart::{self, Orchestrator};

use fake_api::FakeApi;
use fake_vault::FakeVault;
use steps::Steps;

pub const NS: &str = "app";
/// The operator's own namespace (lease tokens live there).
pub const OPERATOR_NS: &str = "vaultkeeper";
pub const HMAC_KEY: [u8; 32] = [42; 32];
/// How long one reconcile may take before the test fails: every answer is immediate, so a
/// reconcile that waits this long waits for a call that never comes.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(10);

/// What outlives operator processes.
pub struct World {
    pub steps: Arc<Steps>,
    pub api: FakeApi,
    pub vault: Arc<FakeVault>,
}

impl World {
    pub fn new() -> Self {
        let steps = Arc::new(Steps::default());
        Self {
            api: FakeApi::new(steps.clone()),
            vault: Arc::new(FakeVault::new(steps.clone())),
            steps,
        }
    }

    /// A Deployment `name` with one replica whose rollout has finished.
    pub fn deployment(&self, name: &str) {
        self.api.put(
            &fake_api::deployment_path(NS, name),
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": NS, "generation": 1},
                "spec": {"replicas": 1, "template": {"metadata": {}, "spec": {}}},
                "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
            }),
        );
    }

    /// Whether the Deployment was restarted and has not finished that rollout.
    pub fn rollout_running(&self, name: &str) -> bool {
        let d = self
            .api
            .raw(&fake_api::deployment_path(NS, name))
            .expect("deployment");
        d.pointer("/metadata/generation").and_then(Value::as_i64)
            > d.pointer("/status/observedGeneration")
                .and_then(Value::as_i64)
    }

    /// Plays the Deployment controller: the running rollout finishes now (at this step).
    pub fn finish_rollout(&self, name: &str) -> u64 {
        let path = fake_api::deployment_path(NS, name);
        self.api.edit(&path, |d| {
            let generation = d["metadata"]["generation"].clone();
            d["status"] = json!({"observedGeneration": generation, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1});
        });
        self.steps
            .note(&format!("rollout of Deployment {name} finished"));
        self.steps.now()
    }

    /// The restart stamps the operator put on the Deployment's pod template, in order.
    pub fn restarts_of(&self, name: &str) -> Vec<String> {
        self.api
            .writes_to(&fake_api::deployment_path(NS, name))
            .iter()
            .filter_map(|w| {
                w.body
                    .pointer("/spec/template/metadata/annotations")
                    .and_then(|a| a.get(restart::RESTARTED_FOR_ANNOTATION))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect()
    }

    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.api.get(&fake_api::secret_path(NS, name))
    }

    /// The data of every successful write of Secret `name`, in order.
    pub fn secret_writes(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.api
            .writes_to(&fake_api::secret_path(NS, name))
            .iter()
            .map(|w| {
                let secret: Secret =
                    serde_json::from_value(w.body.clone()).expect("an applied Secret");
                text_data(&secret)
            })
            .collect()
    }
}

/// A Secret's data as text.
pub fn text_data(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// The restart stamp of a Secret's data, as the operator computes it.
pub fn stamp_of_data(secret: &Secret) -> String {
    let data = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    restart::stamp_of(&vaultkeeper_operator::digest::data_hmac(&HMAC_KEY, &data))
}

/// How a reconcile ended.
#[derive(Debug)]
pub enum Outcome<E> {
    Done(Action),
    Failed(E),
    /// The operator stopped in the middle (the reconcile was dropped).
    Stopped,
}

impl<E: std::fmt::Debug> Outcome<E> {
    pub fn expect_done(self) -> Action {
        match self {
            Self::Done(action) => action,
            other => panic!("reconcile did not succeed: {other:?}"),
        }
    }

    pub fn expect_failed(self) -> E {
        match self {
            Self::Failed(e) => e,
            other => panic!("reconcile did not fail: {other:?}"),
        }
    }
}

/// One operator process: its own client, caches and memory (tokens, restart budget).
pub struct Operator {
    pub ctx: Arc<Context>,
    writers: [Writer<Secret>; 3],
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Label of each controller's Secrets, in the order of [`Operator`]'s caches.
const OWNER_LABELS: [&str; 3] = [
    vaultkeeper_operator::vault_secret::desired::OWNER_LABEL,
    vaultkeeper_operator::dynamic_credential::desired::OWNER_LABEL,
    vaultkeeper_operator::certificate::desired::OWNER_LABEL,
];

impl Operator {
    /// An operator whose reconciles each stand for a moment of their own: refreshes share no
    /// answers (in a real operator they lie at least half a refresh interval apart).
    pub fn start(world: &World) -> Self {
        Self::sharing_reads(world, Duration::ZERO)
    }

    /// An operator whose refreshes share answers of identical reads for `window`.
    pub fn sharing_reads(world: &World, window: Duration) -> Self {
        let (client, server) = world.api.client();
        let metrics = Arc::new(Metrics::default());
        let connections = BTreeMap::from([(
            "default".to_owned(),
            Connection {
                client: world.vault.clone(),
                auth_mount: "kubernetes".to_owned(),
            },
        )]);
        let identities = Identities::new(
            client.clone(),
            connections,
            vec!["vault".to_owned()],
            Duration::from_secs(600),
            metrics.clone(),
        );
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "vaultkeeper-operator".into(),
                instance: Some("test".into()),
            },
        );
        let (secrets, vs_writer) = reflector::store();
        let (dc_secrets, dc_writer) = reflector::store();
        let (cert_secrets, cert_writer) = reflector::store();
        let lease_tokens = LeaseTokens::new(client.clone(), OPERATOR_NS.to_owned(), &HMAC_KEY);
        let ctx = Arc::new(
            Context::new(
                client,
                identities,
                recorder,
                metrics,
                secrets,
                dc_secrets,
                cert_secrets,
                HMAC_KEY.to_vec(),
                4,
                lease_tokens,
                Orchestrator::new(Duration::ZERO, 100),
            )
            .with_shared_read_window(window),
        );
        Self {
            ctx,
            writers: [vs_writer, dc_writer, cert_writer],
            server,
        }
    }

    /// Fills the Secret caches with what the API holds, as the watches would have by now.
    pub fn sync_caches(&mut self, world: &World) {
        self.fill_caches(world.api.list(&format!("/api/v1/namespaces/{NS}/secrets")));
    }

    /// Fills the Secret caches with `secrets` (those each controller's watch selects), for a
    /// cache that lags behind the API.
    pub fn fill_caches(&mut self, secrets: Vec<Secret>) {
        for (writer, label) in self.writers.iter_mut().zip(OWNER_LABELS) {
            writer.apply_watcher_event(&watcher::Event::Init);
            for secret in secrets.iter().filter(|s| {
                s.labels().get(crds::MANAGED_BY_LABEL).map(String::as_str)
                    == Some(crds::MANAGED_BY_VALUE)
                    && s.labels().contains_key(label)
            }) {
                writer.apply_watcher_event(&watcher::Event::InitApply(secret.clone()));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
    }

    /// Runs one reconcile of `resource` (as the controller would, with caches already filled),
    /// until it ends or the operator stops.
    pub async fn reconcile<K, E, F>(
        &self,
        world: &World,
        resource: K,
        reconcile: impl FnOnce(Arc<K>, Arc<Context>) -> F,
    ) -> Outcome<E>
    where
        K: Resource,
        F: std::future::Future<Output = Result<Action, E>>,
    {
        let run = tokio::time::timeout(
            RECONCILE_TIMEOUT,
            reconcile(Arc::new(resource), self.ctx.clone()),
        );
        tokio::select! {
            biased;
            () = world.steps.halted() => Outcome::Stopped,
            result = run => match result {
                Ok(Ok(action)) => Outcome::Done(action),
                Ok(Err(e)) => Outcome::Failed(e),
                Err(_) => panic!(
                    "a reconcile hung: an expected answer never came\n{}",
                    world.steps.dump()
                ),
            },
        }
    }
}
