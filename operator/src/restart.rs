//! Restarting the workloads that consume a Secret: a hash of the data version stamped on the pod
//! template (`vaultkeeper.dev/restarted-for`), so the same data never restarts a workload twice,
//! and a check that a workload's rollout has finished.

use crds::v1alpha1::{RestartTarget, WorkloadKind};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

/// Pod template annotation carrying the data version a workload was restarted for.
pub const RESTARTED_FOR_ANNOTATION: &str = "vaultkeeper.dev/restarted-for";

/// What stamping did for one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stamped {
    /// The template got the new stamp: a rollout starts.
    Restarted,
    /// The template already carried this stamp: nothing to do.
    AlreadyCurrent,
    /// The workload does not exist.
    Missing,
}

fn api(client: &kube::Client, namespace: &str, kind: WorkloadKind) -> Api<DynamicObject> {
    let kind = match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::DaemonSet => "DaemonSet",
    };
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind));
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Puts `stamp` on the target's pod template unless it is there already.
pub async fn stamp(
    client: &kube::Client,
    namespace: &str,
    target: &RestartTarget,
    stamp: &str,
) -> Result<Stamped, kube::Error> {
    let api = api(client, namespace, target.kind);
    let Some(workload) = api.get_opt(&target.name).await? else {
        return Ok(Stamped::Missing);
    };
    let current = workload
        .data
        .pointer("/spec/template/metadata/annotations")
        .and_then(|a| a.get(RESTARTED_FOR_ANNOTATION))
        .and_then(Value::as_str);
    if current == Some(stamp) {
        return Ok(Stamped::AlreadyCurrent);
    }
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_FOR_ANNOTATION: stamp}}}}});
    api.patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(Stamped::Restarted)
}

/// Whether the target's latest rollout has finished (every replica updated and available). A
/// missing workload has nothing to wait for.
pub async fn rollout_done(
    client: &kube::Client,
    namespace: &str,
    target: &RestartTarget,
) -> Result<bool, kube::Error> {
    let api = api(client, namespace, target.kind);
    Ok(match api.get_opt(&target.name).await? {
        Some(workload) => rollout_finished(
            target.kind,
            workload.metadata.generation.unwrap_or(0),
            &workload.data,
        ),
        None => true,
    })
}

/// Pure check of a workload's status, as `kubectl rollout status` judges it.
pub fn rollout_finished(kind: WorkloadKind, generation: i64, data: &Value) -> bool {
    let int = |path: &str| data.pointer(path).and_then(Value::as_i64).unwrap_or(0);
    if int("/status/observedGeneration") < generation {
        return false;
    }
    match kind {
        WorkloadKind::Deployment => {
            let wanted = data
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            int("/status/updatedReplicas") >= wanted
                && int("/status/replicas") <= int("/status/updatedReplicas")
                && int("/status/availableReplicas") >= wanted
        }
        WorkloadKind::StatefulSet => {
            let wanted = data
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let revisions_match = data.pointer("/status/updateRevision")
                == data.pointer("/status/currentRevision")
                || data.pointer("/status/updateRevision").is_none();
            int("/status/updatedReplicas") >= wanted
                && int("/status/readyReplicas") >= wanted
                && revisions_match
        }
        WorkloadKind::DaemonSet => {
            let wanted = int("/status/desiredNumberScheduled");
            int("/status/updatedNumberScheduled") >= wanted
                && int("/status/numberAvailable") >= wanted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_rollout_finishes_when_every_replica_is_updated_and_available() {
        let rolling = json!({"spec": {"replicas": 2}, "status": {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}});
        assert!(
            !rollout_finished(WorkloadKind::Deployment, 3, &rolling),
            "old pod still there"
        );
        let done = json!({"spec": {"replicas": 2}, "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert!(rollout_finished(WorkloadKind::Deployment, 3, &done));
        assert!(
            !rollout_finished(WorkloadKind::Deployment, 4, &done),
            "new generation not observed"
        );
    }

    #[test]
    fn statefulset_and_daemonset_rollouts() {
        let sts = json!({"spec": {"replicas": 1}, "status": {"observedGeneration": 1, "updatedReplicas": 1, "readyReplicas": 1, "currentRevision": "a", "updateRevision": "b"}});
        assert!(!rollout_finished(WorkloadKind::StatefulSet, 1, &sts));
        let ds = json!({"status": {"observedGeneration": 1, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 2}});
        assert!(rollout_finished(WorkloadKind::DaemonSet, 1, &ds));
    }
}
