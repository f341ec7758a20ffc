//! The watch of Secrets one controller manages: by label (the managed-by label and the
//! controller's owner label), without managedFields, so the operator's memory follows the Secrets
//! it writes and never the cluster's other Secrets.

use futures::Stream;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};

/// Secrets carrying `owner_label` (any value) and the managed-by label, reflected into `writer`.
pub fn watch(
    client: kube::Client,
    owner_label: &str,
    writer: Writer<Secret>,
) -> impl Stream<Item = Result<Secret, watcher::Error>> + Send + 'static {
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
    .reflect(writer)
    .touched_objects()
}
