//! Restarting the workloads that consume a Secret: a hash of the data version stamped on the pod
//! template (`vaultkeeper.dev/restarted-for`), so the same data never restarts a workload twice;
//! changes inside a debounce window coalesce into one restart; a workload whose previous rollout is
//! still running is not restarted again; restarts per namespace are rate-limited.
//!
//! The pending restart lives in the resource's status (`pendingRestart`), so an operator restart
//! neither loses nor repeats it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crds::v1alpha1::{PendingRestart, RestartTarget, WorkloadKind, condition_types, reasons};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use crate::conditions::Desired;

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

/// Debounce and rate limits shared by the controllers.
pub struct Orchestrator {
    pub debounce: Duration,
    /// How long a replaced lease or certificate waits for the restarted workloads' rollout before
    /// it is revoked anyway (with a Warning Event).
    pub rollout_timeout: Duration,
    per_minute: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Where a pending restart stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every target carries the stamp (or does not exist).
    Done {
        restarted: Vec<String>,
        missing: Vec<String>,
    },
    /// Look again at this time; the reason is for the condition.
    Wait(Timestamp, String),
}

/// Annotation on a managed Secret: the stamp its restart targets must reach for the data it holds,
/// written with that data when it calls for a restart (DynamicCredential, CertificateRequest).
pub const RESTART_FOR_ANNOTATION: &str = "vaultkeeper.dev/restart-for";

/// The restart stamp recorded on a Secret; a value that is not a stamp counts as not recorded.
pub fn recorded_stamp(annotations: &std::collections::BTreeMap<String, String>) -> Option<String> {
    annotations
        .get(RESTART_FOR_ANNOTATION)
        .filter(|s| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_hexdigit()))
        .cloned()
}

/// The pending restart once a restart stamp recorded on a Secret (`recorded`) is taken up again:
/// due at once (a replaced credential is one event), unless there are no targets or it is already
/// the pending one.
pub fn take_up(
    pending: Option<PendingRestart>,
    recorded: Option<String>,
    targets: &[RestartTarget],
    now: Timestamp,
) -> Option<PendingRestart> {
    match recorded {
        Some(stamp)
            if !targets.is_empty() && pending.as_ref().map(|p| &p.stamp) != Some(&stamp) =>
        {
            Some(schedule(pending.as_ref(), stamp, now, Duration::ZERO))
        }
        _ => pending,
    }
}

/// The stamp for data whose HMAC is `hmac`: short, stable, and reveals nothing.
pub fn stamp_of(hmac: &str) -> String {
    hmac.trim_start_matches("sha256:")
        .chars()
        .take(16)
        .collect()
}

/// The restart for a new credential (a lease rotated, a certificate replaced): one event, and the
/// old credential's time is limited, so no debounce; the rollout gate still holds.
pub fn for_new_credential(
    existing: Option<&PendingRestart>,
    data_hmac: &str,
    now: Timestamp,
) -> PendingRestart {
    schedule(existing, stamp_of(data_hmac), now, Duration::ZERO)
}

/// A restart for new data: a pending one keeps its window (so a stream of changes still restarts
/// once per window) and takes the newest stamp.
pub fn schedule(
    existing: Option<&PendingRestart>,
    stamp: String,
    now: Timestamp,
    debounce: Duration,
) -> PendingRestart {
    PendingRestart {
        stamp,
        not_before: existing
            .map(|p| p.not_before.clone())
            .unwrap_or_else(|| Time(crate::clock::after_stored(now, debounce))),
    }
}

impl Orchestrator {
    pub fn new(debounce: Duration, per_minute: u32) -> Self {
        Self {
            debounce,
            rollout_timeout: Duration::from_secs(30 * 60),
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Sets how long replaced credentials wait for rollouts (default 30 minutes).
    pub fn with_rollout_timeout(mut self, timeout: Duration) -> Self {
        self.rollout_timeout = timeout;
        self
    }

    /// Takes one restart from the namespace's budget, or says how long until one is free.
    fn take(&self, namespace: &str) -> Option<Duration> {
        let mut buckets = self.buckets.lock().expect("restart buckets lock");
        let now = Instant::now();
        let (tokens, last) = buckets
            .entry(namespace.to_owned())
            .or_insert((self.per_minute, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_minute / 60.0)
            .min(self.per_minute);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            None
        } else {
            Some(
                Duration::try_from_secs_f64((1.0 - *tokens) * 60.0 / self.per_minute)
                    .unwrap_or(Duration::from_secs(60)),
            )
        }
    }

    /// Moves a pending restart along: waits for its window, for running rollouts and for the
    /// namespace's budget, then stamps each target.
    pub async fn drive(
        &self,
        client: &kube::Client,
        namespace: &str,
        targets: &[RestartTarget],
        pending: &PendingRestart,
        now: Timestamp,
    ) -> Result<Progress, kube::Error> {
        if now < pending.not_before.0 {
            return Ok(Progress::Wait(
                pending.not_before.0,
                "waiting for the debounce window to end".to_owned(),
            ));
        }
        let mut restarted = Vec::new();
        let mut missing = Vec::new();
        for target in targets {
            let what = format!("{:?} {}", target.kind, target.name);
            let api = api(client, namespace, target.kind);
            let Some(workload) = api.get_opt(&target.name).await? else {
                missing.push(what);
                continue;
            };
            if current_stamp(&workload.data) == Some(pending.stamp.as_str()) {
                continue;
            }
            if !rollout_finished(
                target.kind,
                workload.metadata.generation.unwrap_or(0),
                &workload.data,
            ) {
                return Ok(Progress::Wait(
                    now + SignedDuration::from_secs(2),
                    format!("{what} is still rolling out; it restarts once that finished"),
                ));
            }
            if let Some(wait) = self.take(namespace) {
                return Ok(Progress::Wait(
                    crate::clock::after(now, wait),
                    format!("restart budget of namespace {namespace} used up; {what} waits"),
                ));
            }
            if stamp(client, namespace, target, &pending.stamp).await? == Stamped::Restarted {
                tracing::info!(namespace, target = %what, stamp = %pending.stamp, "restarted workload");
                restarted.push(what);
            }
        }
        Ok(Progress::Done { restarted, missing })
    }
}

/// What advancing a resource's pending restart gave.
#[derive(Debug)]
pub struct Advanced {
    /// The pending restart to keep in the status (`None` once done).
    pub pending: Option<PendingRestart>,
    /// The `Restarts` condition to set; `None` leaves it as it is.
    pub condition: Option<Desired>,
    /// When to look again.
    pub wake: Option<Timestamp>,
    /// Targets restarted now, for Events and metrics.
    pub restarted: Vec<String>,
}

impl Orchestrator {
    /// Advances `pending` for a resource with `targets`; errors reading or patching a workload
    /// are returned for the caller's backoff.
    pub async fn advance(
        &self,
        client: &kube::Client,
        namespace: &str,
        targets: &[RestartTarget],
        pending: Option<PendingRestart>,
        now: Timestamp,
    ) -> Result<Advanced, kube::Error> {
        if targets.is_empty() {
            return Ok(Advanced {
                pending: None,
                condition: None,
                wake: None,
                restarted: Vec::new(),
            });
        }
        // Nothing pending: the last outcome stays in the condition as it is.
        let Some(pending) = pending else {
            return Ok(Advanced {
                pending: None,
                condition: None,
                wake: None,
                restarted: Vec::new(),
            });
        };
        Ok(
            match self
                .drive(client, namespace, targets, &pending, now)
                .await?
            {
                Progress::Done { restarted, missing } if missing.is_empty() => Advanced {
                    pending: None,
                    condition: Some(Desired {
                        type_: condition_types::RESTARTS,
                        status: true,
                        reason: reasons::RESTARTED,
                        message: format!("targets restarted for data {}", pending.stamp),
                    }),
                    wake: None,
                    restarted,
                },
                Progress::Done { restarted, missing } => Advanced {
                    pending: None,
                    condition: Some(Desired {
                        type_: condition_types::RESTARTS,
                        status: false,
                        reason: reasons::TARGET_MISSING,
                        message: format!(
                            "restart targets not found: {}; they are restarted on the next data change once they exist",
                            missing.join(", ")
                        ),
                    }),
                    wake: None,
                    restarted,
                },
                Progress::Wait(at, why) => Advanced {
                    pending: Some(pending),
                    condition: Some(Desired {
                        type_: condition_types::RESTARTS,
                        status: true,
                        reason: reasons::RESTART_PENDING,
                        message: why,
                    }),
                    wake: Some(at),
                    restarted: Vec::new(),
                },
            },
        )
    }
}

fn current_stamp(data: &Value) -> Option<&str> {
    data.pointer("/spec/template/metadata/annotations")
        .and_then(|a| a.get(RESTARTED_FOR_ANNOTATION))
        .and_then(Value::as_str)
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
    if current_stamp(&workload.data) == Some(stamp) {
        return Ok(Stamped::AlreadyCurrent);
    }
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_FOR_ANNOTATION: stamp}}}}});
    api.patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(Stamped::Restarted)
}

/// Where the restarted workloads' rollouts stand, as far as revoking what they used goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollouts {
    /// Every target finished its rollout (or does not exist): the old credential may go.
    Finished,
    /// Still rolling out, or the restart is not stamped yet.
    Running,
    /// Waiting stopped without a finished rollout; the reason is for a Warning Event.
    GaveUp(String),
}

/// Whether the old credential of `targets` may be revoked: their rollouts finished; or one of
/// them stalled (a Deployment past its `progressDeadlineSeconds`); or they have not finished
/// within `timeout` of `since` (when the new credential was written). A restart still `pending`
/// counts as running. Errors reading a target count as running.
pub async fn rollouts(
    client: &kube::Client,
    namespace: &str,
    targets: &[RestartTarget],
    pending: bool,
    since: Timestamp,
    timeout: Duration,
    now: Timestamp,
) -> Rollouts {
    let mut finished = !pending;
    for target in targets {
        let api = api(client, namespace, target.kind);
        match api.get_opt(&target.name).await {
            Ok(Some(workload)) => {
                if rollout_stalled(&workload.data) {
                    return Rollouts::GaveUp(format!(
                        "{:?} {} exceeded its progress deadline",
                        target.kind, target.name
                    ));
                }
                finished &= rollout_finished(
                    target.kind,
                    workload.metadata.generation.unwrap_or(0),
                    &workload.data,
                );
            }
            Ok(None) => {}
            Err(err) => {
                tracing::debug!(error = %err, "failed to read a restart target");
                finished = false;
            }
        }
    }
    if finished {
        Rollouts::Finished
    } else if crate::clock::after(since, timeout) <= now {
        Rollouts::GaveUp(format!(
            "the restarted workloads did not finish their rollout within {}s",
            timeout.as_secs()
        ))
    } else {
        Rollouts::Running
    }
}

/// Whether `resource`'s restarted workloads finished their rollout, or waiting for it gave up
/// (then a Warning Event `RolloutNotFinished` says why, followed by `consequence`).
pub async fn rollouts_done<K: kube::Resource<DynamicType = ()>>(
    ctx: &crate::context::Context,
    resource: &K,
    targets: &[RestartTarget],
    pending: bool,
    since: Timestamp,
    now: Timestamp,
    consequence: &str,
) -> bool {
    let namespace = resource.meta().namespace.clone().unwrap_or_default();
    let state = rollouts(
        &ctx.client,
        &namespace,
        targets,
        pending,
        since,
        ctx.restarts.rollout_timeout,
        now,
    )
    .await;
    if let Rollouts::GaveUp(why) = &state {
        crate::report::publish(
            ctx,
            resource,
            kube::runtime::events::EventType::Warning,
            reasons::ROLLOUT_NOT_FINISHED,
            "Rollout",
            format!("{why}; {consequence}"),
        )
        .await;
    }
    state != Rollouts::Running
}

/// A Deployment whose rollout Kubernetes gave up on (`Progressing=False`,
/// `ProgressDeadlineExceeded`).
pub fn rollout_stalled(data: &Value) -> bool {
    data.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Progressing")
                    && c.get("status").and_then(Value::as_str) == Some("False")
                    && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
            })
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
    fn changes_in_a_window_keep_the_window_and_take_the_newest_stamp() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let first = schedule(None, "a".into(), now, Duration::from_secs(10));
        assert_eq!(first.not_before.0, now + SignedDuration::from_secs(10));
        let later = now + SignedDuration::from_secs(4);
        let second = schedule(Some(&first), "b".into(), later, Duration::from_secs(10));
        assert_eq!(second.stamp, "b");
        assert_eq!(second.not_before, first.not_before);
        assert_eq!(stamp_of("sha256:0123456789abcdef0123"), "0123456789abcdef");
    }

    #[test]
    fn the_budget_refills_over_a_minute() {
        let o = Orchestrator::new(Duration::from_secs(1), 2);
        assert_eq!(o.take("a"), None);
        assert_eq!(o.take("a"), None);
        let wait = o.take("a").expect("budget used up");
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        assert_eq!(o.take("b"), None, "budgets are per namespace");
    }

    #[test]
    fn statefulset_and_daemonset_rollouts() {
        let sts = json!({"spec": {"replicas": 1}, "status": {"observedGeneration": 1, "updatedReplicas": 1, "readyReplicas": 1, "currentRevision": "a", "updateRevision": "b"}});
        assert!(!rollout_finished(WorkloadKind::StatefulSet, 1, &sts));
        let ds = json!({"status": {"observedGeneration": 1, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 2}});
        assert!(rollout_finished(WorkloadKind::DaemonSet, 1, &ds));
    }
}
