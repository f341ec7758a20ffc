//! What every controller reports the same way: the condition reason of a Vault error, status
//! patches sent only on change, and Events (counted as Kubernetes writes).

use crds::v1alpha1::reasons;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use vault::VaultError;

use crate::conditions;
use crate::context::Context;

/// The condition reason of a failed Vault call.
pub fn vault_reason(err: &VaultError) -> &'static str {
    match err {
        e if e.is_outage() => reasons::VAULT_UNAVAILABLE,
        VaultError::PermissionDenied { .. } => reasons::PERMISSION_DENIED,
        VaultError::Rejected { .. } => reasons::VAULT_REJECTED,
        VaultError::NotFound { .. } => reasons::SOURCE_NOT_FOUND,
        _ => reasons::VAULT_UNAVAILABLE,
    }
}

/// Patches `resource`'s status from `current` to `new`, unless they are equal (and a status exists).
pub async fn patch_status<K, S>(
    ctx: &Context,
    resource: &K,
    has_status: bool,
    current: &S,
    new: &S,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if has_status && current == new {
        return Ok(());
    }
    // Compared as the API server keeps them too (times in whole seconds): a status that differs
    // from the stored one only below a second is the stored one, and writing it costs a request
    // per resource whenever a new process first reconciles them all.
    let (stored, wanted) = (
        serde_json::to_value(current).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    if has_status && stored == wanted {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(
        ctx.client.clone(),
        &resource.namespace().unwrap_or_default(),
    );
    api.patch_status(
        &resource.name_any(),
        &PatchParams::default(),
        &Patch::Merge(conditions::merge_patch(stored, wanted)),
    )
    .await?;
    ctx.metrics.kube_write("status");
    Ok(())
}

/// A status with conditions (every kind's).
pub trait Conditioned: Clone + Default + Serialize + PartialEq {
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

impl Conditioned for crds::v1alpha1::VaultSecretStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}
impl Conditioned for crds::v1alpha1::DynamicCredentialStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}
impl Conditioned for crds::v1alpha1::CertificateRequestStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// A deletion whose revocation failed says so in `Ready` (`deleting: <error>`, under `reason`)
/// and in a Warning Event while the finalizer stays; failures to report are only logged.
pub async fn deletion_blocked<K, S>(
    ctx: &Context,
    resource: &K,
    status: Option<&S>,
    reason: &'static str,
    error: &(dyn std::fmt::Display + Sync),
    action: &str,
) where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Conditioned,
{
    let current = status.cloned().unwrap_or_default();
    let message = format!("deleting: {error}");
    let mut new = current.clone();
    *new.conditions_mut() = conditions::set(
        new.conditions_mut(),
        conditions::Desired {
            type_: crds::v1alpha1::condition_types::READY,
            status: false,
            reason,
            message: message.clone(),
        },
        resource.meta().generation,
        &Time(Timestamp::now()),
    );
    if let Err(err) = patch_status(ctx, resource, status.is_some(), &current, &new).await {
        tracing::debug!(error = %err, "failed to report a failed revocation");
    }
    publish(ctx, resource, EventType::Warning, reason, action, message).await;
    tracing::warn!(namespace = resource.namespace().unwrap_or_default(), name = resource.name_any(), %error, "revocation on delete failed; retrying");
}

/// Publishes an Event about `resource`; a failure is logged, never fatal.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    resource: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx
        .recorder
        .publish(&event, &resource.object_ref(&()))
        .await
    {
        tracing::debug!(error = %err, "failed to publish event");
    } else {
        ctx.metrics.kube_write("event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_errors_map_to_reasons() {
        let rejected = VaultError::Rejected {
            operation: "pki_issue",
            path: "pki/issue/web".into(),
            status: 400,
            message: "common name x not allowed by this role".into(),
        };
        assert_eq!(vault_reason(&rejected), reasons::VAULT_REJECTED);
        let denied = VaultError::PermissionDenied {
            operation: "kv2_read",
            path: "secret/data/a".into(),
        };
        assert_eq!(vault_reason(&denied), reasons::PERMISSION_DENIED);
        let sealed = VaultError::Sealed {
            operation: "kv2_read",
        };
        assert_eq!(vault_reason(&sealed), reasons::VAULT_UNAVAILABLE);
    }
}
