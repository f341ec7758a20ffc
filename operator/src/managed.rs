//! The watches a controller runs on: its own resources (cached without managedFields) and the
//! Secrets it manages: by label (the managed-by label and the
//! controller's owner label), without managedFields, so the operator's memory follows the Secrets
//! it writes and never the cluster's other Secrets.

use std::collections::BTreeMap;

use crds::v1alpha1::Destination;
use std::sync::Arc;

use futures::{FutureExt, StreamExt, TryFuture, TryFutureExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, ReflectHandle};
use kube::runtime::{Predicate, WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tracing::Instrument;

use crate::context::Context;

/// Labels on managed Secrets naming the resource that owns them, one per kind; each controller
/// watches the Secrets carrying its label (and the managed-by label).
pub mod owner_labels {
    pub const VAULT_SECRET: &str = "vaultkeeper.dev/vaultsecret";
    pub const DYNAMIC_CREDENTIAL: &str = "vaultkeeper.dev/dynamiccredential";
    pub const CERTIFICATE_REQUEST: &str = "vaultkeeper.dev/certificaterequest";
}

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "vaultkeeper";

/// The Secret data: the raw Vault keys plus the templated keys (templated keys win).
pub fn secret_data(
    raw: BTreeMap<String, String>,
    templated: BTreeMap<String, String>,
) -> BTreeMap<String, Vec<u8>> {
    raw.into_iter()
        .chain(templated)
        .map(|(k, v)| (k, v.into_bytes()))
        .collect()
}

/// A deleted managed Secret, as (namespace, owner name from the owner label).
pub type Deleted = tokio::sync::mpsc::UnboundedSender<(String, String)>;

/// Keeps `writer`'s store filled with the Secrets carrying `owner_label` (any value) and the
/// managed-by label, and tells its subscribers (the controller) about every change. Runs as its
/// own task: controllers start once the store is filled, so no reconcile ever waits for it.
/// Shared stores do not pass deletions to subscribers, so those go to `deleted`, naming the owner.
pub async fn reflect(
    client: kube::Client,
    scope: crate::scope::Scope,
    owner_label: &'static str,
    writer: Writer<Secret>,
    deleted: Deleted,
) {
    let selector = format!(
        "{}={},{owner_label}",
        crds::MANAGED_BY_LABEL,
        crds::MANAGED_BY_VALUE
    );
    watcher(
        scope.api::<Secret>(client),
        watcher::Config::default().labels(&selector),
    )
    .default_backoff()
    .modify(|secret| secret.managed_fields_mut().clear())
    .inspect_ok(move |event| {
        if let watcher::Event::Delete(secret) = event
            && let Some(owner) = secret.labels().get(owner_label)
        {
            let _ = deleted.send((secret.namespace().unwrap_or_default(), owner.clone()));
        }
    })
    .reflect_shared(writer)
    .for_each(|event| async move {
        if let Err(err) = event {
            tracing::warn!(error = %err, "watch of managed Secrets failed; retrying");
        }
    })
    .await;
}

/// The owners of deleted Secrets, as a trigger stream for a controller of kind `K`.
pub fn deleted_owners<K>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) -> impl futures::Stream<Item = kube::runtime::reflector::ObjectRef<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + 'static,
{
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|(namespace, name)| kube::runtime::reflector::ObjectRef::new(&name).within(&namespace))
}

/// The resources of one kind, cached in `writer` without managedFields (often the largest part of
/// an object, never read), as a stream of applied objects for a controller.
pub fn resources<K>(
    api: Api<K>,
    writer: Writer<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|resource| resource.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
}

/// The Secret `owner` writes to `dest`: controlled by `owner` (deleted with it), labelled managed-by
/// vaultkeeper and `owner_label: <owner name>`, with `dest`'s labels and annotations plus
/// `annotations` (the operator's own, which win).
pub fn owned_secret<K: Resource<DynamicType = ()>>(
    owner: &K,
    dest: &Destination,
    owner_label: &str,
    annotations: BTreeMap<String, String>,
    type_: String,
    data: BTreeMap<String, Vec<u8>>,
) -> Secret {
    let mut labels = dest.labels.clone();
    labels.insert(
        crds::MANAGED_BY_LABEL.to_owned(),
        crds::MANAGED_BY_VALUE.to_owned(),
    );
    labels.insert(owner_label.to_owned(), owner.name_any());
    let mut all_annotations = dest.annotations.clone();
    all_annotations.extend(annotations);
    Secret {
        metadata: ObjectMeta {
            name: Some(dest.name.clone()),
            namespace: owner.namespace(),
            labels: Some(labels),
            annotations: Some(all_annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: K::api_version(&()).into_owned(),
                kind: K::kind(&()).into_owned(),
                name: owner.name_any(),
                uid: owner.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        type_: Some(type_),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    }
}

/// Whether `owner` is the controller of `secret`.
pub fn owned_by<K: Resource<DynamicType = ()>>(secret: &Secret, owner: &K) -> bool {
    let uid = owner.uid().unwrap_or_default();
    secret
        .owner_references()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// How a controller treats its errors.
pub struct ErrorPolicy<K, E> {
    /// The kind, for metric labels and the reconcile span.
    pub kind: &'static str,
    /// Errors that only a change of the resource can heal (an invalid spec, a conflict): the
    /// resource waits for a change instead of being retried.
    pub waits_for_change: fn(&E) -> bool,
    /// The condition reason of an error, also the `result` label of the sync metric.
    pub reason: fn(&E) -> &'static str,
    /// The error a panic becomes, from its message.
    pub panicked: fn(String) -> E,
    /// How soon a failure of this resource must be retried at the latest, whatever the backoff
    /// says (a lease or certificate is retried before it ends; a lease renewed in Vault whose
    /// status could not be written is due again before it ends).
    pub retry_within: fn(&K, &E) -> Option<std::time::Duration>,
}

/// Where a controller's reconciles wait for their permits: the lane of a resource, and its deadline
/// there ([`crate::context::Deadline`]: the earliest deadline gets the next permit).
pub struct Queueing<K> {
    pub lane: fn(&K) -> crate::context::Lane,
    pub deadline: fn(&K) -> crate::context::Deadline,
}

/// Runs the controller of kind `K`: its resources (cached in `writer`'s store) pass `predicate`
/// (spec changes; for kinds with a finalizer also finalizer changes, which the finalizer helper
/// waits for), the Secrets it manages (`secrets`, filled before this starts) and their deletions
/// (`deleted`) trigger their owner. Each reconcile runs in one span carrying kind, namespace and
/// name. A failed reconcile is counted in the sync metric under its reason (a reconcile records
/// its own successes), then waits for a change or is retried with the per-object backoff as
/// `policy` says. A reconcile that panics becomes `policy.panicked` of its message (retried with
/// backoff), so one resource can never stop the controller for every other one (release builds
/// unwind for this reason). Returns when `shutdown` fires and in-flight reconciles finished.
// Every argument is a distinct part of the controller, named at the call.
#[allow(clippy::too_many_arguments)]
pub async fn run_controller<K, P, RFut>(
    ctx: Arc<Context>,
    scope: crate::scope::Scope,
    writer: Writer<K>,
    secrets: ReflectHandle<Secret>,
    deleted: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    predicate: P,
    queueing: Queueing<K>,
    reconcile: fn(Arc<K>, Arc<Context>) -> RFut,
    policy: ErrorPolicy<K, RFut::Error>,
) where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    P: Predicate<K> + Send + 'static,
    RFut: TryFuture<Ok = Action> + Send + 'static,
    RFut::Error: std::error::Error + Send + 'static,
{
    let reader = writer.as_reader();
    let resources = resources(scope.api::<K>(ctx.watch_client.clone()), writer)
        .predicate_filter(predicate, Default::default());
    // Resources that failed because Vault was away are retried once it answers again, not each
    // at the end of a backoff grown long in the outage.
    let (waiting, mut vault_back) = crate::outage::Waiting::<ObjectRef<K>>::new(&ctx.outages);
    let succeeded = waiting.clone();
    // With shards: a shard's resources are looked at when this replica starts serving it.
    let gains: futures::stream::BoxStream<'static, ObjectRef<K>> = match &ctx.shards {
        Some(shards) => {
            let (store, count) = (reader.clone(), shards.count());
            shards
                .gains()
                .flat_map(move |gained| {
                    let refs: Vec<ObjectRef<K>> = store
                        .state()
                        .iter()
                        .filter(|o| {
                            let namespace = o.meta().namespace.as_deref().unwrap_or_default();
                            gained.contains(&crate::shards::shard_of(namespace, count))
                        })
                        .map(|o| ObjectRef::from_obj(o.as_ref()))
                        .collect();
                    futures::stream::iter(refs)
                })
                .boxed()
        }
        None => futures::stream::pending().boxed(),
    };
    Controller::for_stream(resources, reader)
        .reconcile_on(gains)
        .owns_shared_stream(secrets)
        .reconcile_on(futures::stream::select(
            deleted_owners(deleted),
            futures::stream::poll_fn(move |cx| vault_back.poll_recv(cx)),
        ))
        .graceful_shutdown_on(shutdown)
        .run(
            move |resource: Arc<K>, ctx: Arc<Context>| {
                let namespace = resource.namespace().unwrap_or_default();
                // Another replica's shard: nothing to do here until this one serves it.
                if ctx.shards.as_ref().is_some_and(|s| !s.serves(&namespace)) {
                    return futures::future::ready(Ok(Action::await_change())).boxed();
                }
                let name = resource.name_any();
                let span = tracing::info_span!("reconcile", kind = policy.kind, %namespace, %name);
                let failures = SyncFailures::start(ctx.metrics.clone(), policy.kind);
                let this = ObjectRef::from_obj(resource.as_ref());
                let attempt = contain_panic(
                    format!("{namespace}/{name}"),
                    in_lane(
                        ctx,
                        (queueing.lane)(&resource),
                        (queueing.deadline)(&resource),
                        Some(namespace.clone()),
                        resource,
                        reconcile,
                    ),
                    policy.panicked,
                );
                let succeeded = succeeded.clone();
                async move {
                    let result = attempt.await;
                    failures.finish(result.as_ref().err().map(policy.reason));
                    if result.is_ok() {
                        succeeded.remove(&this);
                    }
                    result
                }
                .instrument(span)
                .boxed()
            },
            move |resource: Arc<K>, error: &RFut::Error, ctx: Arc<Context>| {
                if (policy.reason)(error) == crds::v1alpha1::reasons::VAULT_UNAVAILABLE {
                    waiting.add(ObjectRef::from_obj(resource.as_ref()));
                    ctx.outages.failed();
                }
                if (policy.waits_for_change)(error) {
                    Action::await_change()
                } else {
                    let backoff = ctx.backoff(&resource.uid().unwrap_or_default());
                    let within = (policy.retry_within)(&resource, error).unwrap_or(backoff);
                    Action::requeue(backoff.min(within))
                }
            },
            ctx,
        )
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile did not complete");
            }
        })
        .await;
}

/// Counts a failed reconcile in the sync metric on every path: an error under its reason, a
/// reconcile dropped before it finished (shutdown) as `interrupted`. Successes are recorded by the
/// reconciles themselves, which know whether anything changed.
struct SyncFailures {
    metrics: Arc<crate::metrics::Metrics>,
    kind: &'static str,
    started: std::time::Instant,
    done: bool,
}

impl SyncFailures {
    fn start(metrics: Arc<crate::metrics::Metrics>, kind: &'static str) -> Self {
        Self {
            metrics,
            kind,
            started: std::time::Instant::now(),
            done: false,
        }
    }

    fn finish(mut self, failure: Option<&'static str>) {
        if let Some(reason) = failure {
            self.metrics.sync(self.kind, reason, self.started.elapsed());
        }
        self.done = true;
    }
}

impl Drop for SyncFailures {
    fn drop(&mut self) {
        if !self.done {
            self.metrics
                .sync(self.kind, "interrupted", self.started.elapsed());
        }
    }
}

/// `attempt`, with a panic turned into the error `panicked` makes of its message.
/// Runs `reconcile` of `resource` once it holds a permit of `lane`, which waiters get earliest
/// `deadline` first. The reconcile is made (and its state allocated) only then, so the thousands of
/// resources that may wait for a permit cost little.
pub async fn in_lane<K, RFut: TryFuture<Ok = Action>>(
    ctx: Arc<Context>,
    lane: crate::context::Lane,
    deadline: crate::context::Deadline,
    namespace: Option<String>,
    resource: Arc<K>,
    reconcile: fn(Arc<K>, Arc<Context>) -> RFut,
) -> Result<Action, RFut::Error> {
    let priority = crate::context::priority(deadline, k8s_openapi::jiff::Timestamp::now());
    let _permit = ctx
        .lane(lane)
        .acquire(priority)
        .await
        .expect("lanes never close");
    // With shards, the shard is held for the whole reconcile, so giving it up waits for it; a
    // shard given up while this one waited for its permit is left to its new replica.
    let _shard = match (&ctx.shards, &namespace) {
        (Some(shards), Some(namespace)) => match shards.hold(namespace).await {
            Some(guard) => Some(guard),
            None => return Ok(Action::await_change()),
        },
        _ => None,
    };
    Box::pin(TryFutureExt::into_future(reconcile(resource, ctx))).await
}

async fn contain_panic<T, E>(
    resource: String,
    attempt: impl std::future::Future<Output = Result<T, E>>,
    panicked: fn(String) -> E,
) -> Result<T, E> {
    match std::panic::AssertUnwindSafe(attempt).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            tracing::error!(%resource, panic = %message, "reconcile panicked; retrying with backoff");
            Err(panicked(message))
        }
    }
}

/// Runs `apply` for a live resource and `cleanup` for one being deleted, keeping `finalizer` on it
/// in between (kube's finalizer helper); its own failures become `finalizer_error`.
pub async fn with_finalizer<K, E, AF, CF>(
    client: &kube::Client,
    finalizer: &str,
    resource: Arc<K>,
    apply: impl FnOnce(Arc<K>) -> AF,
    cleanup: impl FnOnce(Arc<K>) -> CF,
    finalizer_error: fn(String) -> E,
) -> Result<Action, E>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    E: std::error::Error + Send + 'static,
    AF: std::future::Future<Output = Result<Action, E>>,
    CF: std::future::Future<Output = Result<Action, E>>,
{
    use kube::runtime::finalizer::{self, Event};
    let api: Api<K> = Api::namespaced(client.clone(), &resource.namespace().unwrap_or_default());
    finalizer::finalizer(&api, finalizer, resource, |event| async move {
        match event {
            Event::Apply(resource) => apply(resource).await,
            Event::Cleanup(resource) => cleanup(resource).await,
        }
    })
    .await
    .map_err(|err| match err {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => finalizer_error(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_reconcile_becomes_an_error() {
        let boom = async {
            let huge = std::time::Duration::MAX;
            // The kind of panic a hostile duration caused before checked arithmetic.
            let _ = huge + std::hint::black_box(std::time::Duration::from_secs(1));
            Ok::<u32, String>(1)
        };
        let result = contain_panic("ns/name".to_owned(), boom, |m| format!("panicked: {m}")).await;
        let err = result.unwrap_err();
        assert!(err.starts_with("panicked: "), "{err}");
        assert!(err.contains("overflow"), "{err}");
        let fine = contain_panic("ns/name".to_owned(), async { Ok::<u32, String>(7) }, |m| m).await;
        assert_eq!(fine, Ok(7));
    }
}
