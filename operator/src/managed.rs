//! The watches a controller runs on: its own resources (cached without managedFields) and the
//! Secrets it manages: by label (the managed-by label and the
//! controller's owner label), without managedFields, so the operator's memory follows the Secrets
//! it writes and never the cluster's other Secrets.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};

/// A deleted managed Secret, as (namespace, owner name from the owner label).
pub type Deleted = tokio::sync::mpsc::UnboundedSender<(String, String)>;

/// Keeps `writer`'s store filled with the Secrets carrying `owner_label` (any value) and the
/// managed-by label, and tells its subscribers (the controller) about every change. Runs as its
/// own task: controllers start once the store is filled, so no reconcile ever waits for it.
/// Shared stores do not pass deletions to subscribers, so those go to `deleted`, naming the owner.
pub async fn reflect(
    client: kube::Client,
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
        Api::<Secret>::all(client),
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
