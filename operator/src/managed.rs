//! The watch of Secrets one controller manages: by label (the managed-by label and the
//! controller's owner label), without managedFields, so the operator's memory follows the Secrets
//! it writes and never the cluster's other Secrets.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};

/// Keeps `writer`'s store filled with the Secrets carrying `owner_label` (any value) and the
/// managed-by label, and tells its subscribers (the controller) about every change. Runs as its
/// own task: controllers start once the store is filled, so no reconcile ever waits for it.
pub async fn reflect(client: kube::Client, owner_label: &str, writer: Writer<Secret>) {
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
    .reflect_shared(writer)
    .for_each(|event| async move {
        if let Err(err) = event {
            tracing::warn!(error = %err, "watch of managed Secrets failed; retrying");
        }
    })
    .await;
}
