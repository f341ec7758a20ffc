//! The DynamicCredential controller: one leased credential per resource, issued once, renewed while
//! it may live, replaced with overlap (new credential written, workloads restarted and rolled out,
//! then the old lease revoked), and revoked when the resource is deleted.
//!
//! The lease is recorded in the Secret's annotations and the status, and issued by a per-identity
//! token the operator keeps renewed and stored (`lease_tokens`), so a restarted operator resumes
//! the same lease: no new credential, no rollout.

pub mod decide;
pub mod desired;
pub mod schedule;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crds::v1alpha1::{
    DynamicCredential, DynamicCredentialStatus, RetiringLease, condition_types, reasons,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, ReflectHandle};
use kube::runtime::{Predicate, predicates};
use kube::{Api, ResourceExt};
use vault::VaultError;

use crate::conditions::{self, Desired};
use crate::context::{Context, Lane};
use crate::digest::data_hmac;
use crate::identity::IdentityError;
use crate::lease_tokens::{LeaseToken, LeaseTokenError};
use crate::managed::FIELD_MANAGER;
use crate::report;
use crate::restart;
use crate::retirement::{self, Retiring};
use crate::template;
use crate::vault_api::VaultApi;
use decide::LeaseAction;
use desired::Plan;
use schedule::{LeaseRecord, Step, Timing, TokenView};

const KIND: &str = "DynamicCredential";
/// Guards revocation of the lease when the resource is deleted.
pub const FINALIZER: &str = "vaultkeeper.dev/revoke-lease";

/// Why a reconcile did not reach Ready. Messages name paths and roles, never credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error(transparent)]
    Token(#[from] LeaseTokenError),
    #[error("failed to issue a credential from {path}: {source}")]
    Issue { path: String, source: VaultError },
    #[error("failed to renew lease {lease_id}: {source}")]
    Renew {
        lease_id: String,
        source: VaultError,
    },
    #[error("failed to revoke lease {lease_id}: {source}")]
    Revoke {
        lease_id: String,
        source: VaultError,
    },
    #[error(
        "Secret {name:?} already exists and is not managed by this DynamicCredential; delete it or choose another destination.name"
    )]
    SecretConflict { name: String },
    #[error("failed to render destination: {0}")]
    Render(#[from] template::TemplateError),
    #[error("failed to apply Secret {name:?}: {source}")]
    ApplySecret { name: String, source: kube::Error },
    #[error("failed to restart {target}: {source}")]
    Restart { target: String, source: kube::Error },
    #[error("failed to patch status: {0}")]
    PatchStatus(kube::Error),
    /// The reconcile did its work (a lease renewed or issued) but could not record it; the lease
    /// is looked up and renewed again within `retry_in`, before it can end.
    #[error("failed to patch status: {source}; the lease is checked again within {}s", retry_in.as_secs())]
    StatusUnwritten {
        source: kube::Error,
        retry_in: Duration,
    },
    #[error("failed to read from the Kubernetes API: {0}")]
    Read(kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error(
        "cannot revoke the leases of this deleted resource: {0}; the finalizer stays until they are revoked"
    )]
    CleanupPlan(String),
    #[error("internal error (a bug in vaultkeeper; please report it): the reconcile panicked: {0}")]
    Panicked(String),
    /// A credential was issued but not written, and revoking it failed too: it is recorded as
    /// retiring (revoked on the next reconcile) and the write retried.
    #[error("{source}; the unused credential could not be revoked yet and will be")]
    Unwritten {
        orphan: RetiringLease,
        source: Box<Error>,
    },
}

impl Error {
    /// How soon the reconcile must run again at the latest.
    pub fn retry_within(&self) -> Option<Duration> {
        match self {
            Self::StatusUnwritten { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }

    fn vault_error(&self) -> Option<&VaultError> {
        match self {
            Self::Unwritten { source, .. } => source.vault_error(),
            Self::Token(e) => e.vault_error(),
            Self::Issue { source, .. }
            | Self::Renew { source, .. }
            | Self::Revoke { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Condition reason, also the `result` label of the sync metric.
    pub fn reason(&self) -> &'static str {
        if let Self::Unwritten { source, .. } = self {
            return source.reason();
        }
        if let Some(e) = self.vault_error() {
            return report::vault_reason(e);
        }
        match self {
            Self::InvalidSpec(_) | Self::Render(_) | Self::CleanupPlan(_) => reasons::INVALID_SPEC,
            Self::Token(LeaseTokenError::Identity(IdentityError::TokenRequest { .. })) => {
                reasons::TOKEN_REQUEST_FAILED
            }
            Self::SecretConflict { .. } => reasons::SECRET_CONFLICT,
            Self::Panicked(_) => reasons::INTERNAL_ERROR,
            _ => reasons::KUBERNETES_ERROR,
        }
    }
}

/// Starts the controller; `secrets` tells about changes of the Secrets in `ctx.dc_secrets`
/// (filled before this starts).
pub async fn run(
    ctx: Arc<Context>,
    scope: crate::scope::Scope,
    resources: kube::runtime::reflector::store::Writer<DynamicCredential>,
    secrets: ReflectHandle<Secret>,
    deleted: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Spec and finalizer changes trigger; status-only updates do not.
    crate::managed::run_controller(
        ctx,
        scope,
        resources,
        secrets,
        deleted,
        shutdown,
        predicates::generation.combine(predicates::finalizers),
        crate::managed::Queueing {
            lane: Lane::sync,
            deadline,
        },
        reconcile,
        crate::managed::ErrorPolicy {
            kind: KIND,
            waits_for_change,
            reason: Error::reason,
            panicked: Error::Panicked,
            retry_within,
        },
    )
    .await;
}

/// How soon a failed reconcile must run again at the latest: a renewal whose status write was
/// lost within its own bound; any other failure before the lease in the Secret ends (its expiry
/// or, when Vault capped it, its max TTL), whatever the backoff has grown to. A lease renewed every
/// 40 s whose renewal fails three times would otherwise wait 5, 10 and 20 s and be gone.
pub fn retry_within(dc: &DynamicCredential, error: &Error) -> Option<Duration> {
    error.retry_within().or_else(|| {
        let status = dc.status.as_ref()?;
        let end = [&status.expiry_time, &status.max_expiry_time]
            .into_iter()
            .flatten()
            .map(|t| t.0)
            .min();
        crate::clock::retry_before_end(end, Timestamp::now())
    })
}

/// Errors that only a change of the resource can heal.
/// When the lease ends unless renewed (its status says), for the order of waiting for a permit: a process that
/// starts with many due at once serves the closest to their end first. A changed spec or no status
/// yet: now.
fn deadline(dc: &DynamicCredential) -> crate::context::Deadline {
    let status = dc.status.as_ref()?;
    if status.observed_generation != dc.metadata.generation {
        return None;
    }
    status.expiry_time.as_ref().map(|t| t.0)
}

fn waits_for_change(error: &Error) -> bool {
    // An unwritten credential that could not be revoked is retried, so that it is revoked.
    matches!(
        error,
        Error::InvalidSpec(_) | Error::Render(_) | Error::SecretConflict { .. }
    )
}

pub async fn reconcile(dc: Arc<DynamicCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ctx = &ctx;
    crate::managed::with_finalizer(
        &ctx.client,
        FINALIZER,
        dc,
        |dc| async move { apply(&dc, ctx).await },
        |dc| async move {
            let result = cleanup(&dc, ctx).await;
            if let Err(err) = &result {
                report::deletion_blocked(ctx, &*dc, dc.status.as_ref(), err.reason(), err, "Lease")
                    .await;
            }
            result
        },
        Error::Finalizer,
    )
    .await
}

/// The lease behind the Secret. The Secret is written before the status, so when the two name
/// different leases the Secret's is the newer one (its timing is then taken from its annotations).
pub fn recorded_lease(dc: &DynamicCredential, secret: Option<&Secret>) -> Option<LeaseRecord> {
    let status = dc.status.clone().unwrap_or_default();
    let on_secret = secret.and_then(desired::lease_on_secret);
    match (status.lease_id, on_secret) {
        (Some(id), Some((sid, issued, duration, token_accessor))) if id != sid => {
            Some(LeaseRecord {
                id: sid,
                issued,
                duration,
                expires: crate::clock::after(issued, duration),
                hard_end: None,
                token_accessor,
            })
        }
        (Some(id), secret_lease) => {
            let token_accessor = secret_lease.map(|(.., acc)| acc).unwrap_or_default();
            let issued = status.issue_time.map(|t| t.0)?;
            let duration = status
                .lease_duration_seconds
                .and_then(crate::clock::seconds)
                .unwrap_or_default();
            Some(LeaseRecord {
                id,
                issued,
                duration,
                expires: status.expiry_time.map(|t| t.0).unwrap_or(issued),
                hard_end: status.max_expiry_time.map(|t| t.0),
                token_accessor,
            })
        }
        (None, Some((id, issued, duration, token_accessor))) => Some(LeaseRecord {
            id,
            issued,
            duration,
            expires: crate::clock::after(issued, duration),
            hard_end: None,
            token_accessor,
        }),
        (None, None) => None,
    }
}

/// Whether the cached resource and Secret disagree on the lease (one of the caches lags behind
/// our own last writes).
fn lease_mismatch(dc: &DynamicCredential, secret: Option<&Secret>) -> bool {
    let on_secret = secret.and_then(desired::lease_on_secret).map(|(id, ..)| id);
    let in_status = dc.status.as_ref().and_then(|s| s.lease_id.clone());
    on_secret.is_some() && on_secret != in_status
}

async fn apply(dc: &DynamicCredential, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = dc.namespace().unwrap_or_default();
    let dest = &dc.spec.destination.name;
    let mut secret = ctx
        .dc_secrets
        .get(&ObjectRef::new(dest).within(&namespace))
        .map(|s| (*s).clone());
    // Right after our own writes the caches may lag (the Secret is written before the status);
    // read both from the API server rather than mistake that for a lost Secret.
    if secret.is_none() {
        // The cache holds managed Secrets only: a Secret of the same name that vaultkeeper does not
        // manage must be found before a credential is issued for it, and refused.
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        secret = secrets.get_opt(dest).await.map_err(Error::Read)?;
    }
    let fresh;
    let dc = if lease_mismatch(dc, secret.as_ref()) {
        let api: Api<DynamicCredential> = Api::namespaced(ctx.client.clone(), &namespace);
        fresh = api.get(&dc.name_any()).await.map_err(Error::Read)?;
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        secret = secrets.get_opt(dest).await.map_err(Error::Read)?;
        &fresh
    } else {
        dc
    };
    // The clock is read once; every decision of this reconcile uses that instant.
    let now = Timestamp::now();
    let result = sync(dc, secret.as_ref(), ctx, now).await;
    let status = dc.status.clone().unwrap_or_default();
    match result {
        Ok((new_status, next)) => {
            let wait = next.duration_since(now).clamp(
                SignedDuration::from_secs(1),
                SignedDuration::from_secs(3600),
            );
            patch_status(dc, ctx, &status, new_status)
                .await
                .map_err(|err| match err {
                    Error::PatchStatus(source) => {
                        // Counted from now: the failed patch itself may have taken a while.
                        let retry_in = next
                            .duration_since(Timestamp::now())
                            .clamp(SignedDuration::from_secs(1), SignedDuration::from_secs(3600));
                        let err = Error::StatusUnwritten {
                            source,
                            retry_in: retry_in.unsigned_abs(),
                        };
                        tracing::warn!(namespace = dc.namespace().unwrap_or_default(), name = dc.name_any(), error = %err, "synced, but the status was not written");
                        err
                    }
                    other => other,
                })?;
            ctx.succeeded(&dc.uid().unwrap_or_default());
            ctx.metrics.sync(KIND, "synced", started.elapsed());
            Ok(Action::requeue(wait.unsigned_abs()))
        }
        Err(err) => {
            let mut message = err.to_string();
            if let Some(expiry) = &status.expiry_time
                && err.reason() != reasons::INVALID_SPEC
            {
                message.push_str(&format!(
                    "; the Secret keeps the current credential, whose lease expires at {}",
                    expiry.0
                ));
            }
            let condition = Desired {
                type_: condition_types::READY,
                status: false,
                reason: err.reason(),
                message,
            };
            let was = conditions::find(&status.conditions, condition_types::READY)
                .map(|c| (c.status.clone(), c.reason.clone()));
            let mut new_status = DynamicCredentialStatus {
                conditions: conditions::set(
                    &status.conditions,
                    condition.clone(),
                    dc.metadata.generation,
                    &Time(now),
                ),
                observed_generation: dc.metadata.generation,
                ..status.clone()
            };
            if let Error::Unwritten { orphan, .. } = &err {
                new_status.retiring_leases.push(orphan.clone());
            }
            // Logged first: when the API server is away, the status patch below fails too.
            tracing::warn!(namespace = dc.namespace().unwrap_or_default(), name = dc.name_any(), reason = err.reason(), error = %err, "DynamicCredential not ready");
            patch_status(dc, ctx, &status, new_status).await?;
            if was != Some(("False".to_owned(), err.reason().to_owned())) {
                publish(ctx, dc, EventType::Warning, err.reason(), condition.message).await;
            }
            Err(err)
        }
    }
}

/// Brings the lease and the Secret in line; returns the new status and when to look again.
async fn sync(
    dc: &DynamicCredential,
    secret: Option<&Secret>,
    ctx: &Context,
    now: Timestamp,
) -> Result<(DynamicCredentialStatus, Timestamp), Error> {
    let plan = desired::plan(dc, |name| {
        ctx.identities
            .connection(name)
            .map(|c| c.auth_mount.clone())
    })
    .map_err(Error::InvalidSpec)?;
    let connection = ctx
        .identities
        .connection(&plan.identity.connection)
        .expect("plan checked the connection");
    let client = connection.client.as_ref();
    let namespace = dc.namespace().unwrap_or_default();
    let dest = &dc.spec.destination.name;
    if let Some(s) = secret
        && !desired::owned_by(s, dc)
    {
        return Err(Error::SecretConflict { name: dest.clone() });
    }
    let status = dc.status.clone().unwrap_or_default();
    let lease = recorded_lease(dc, secret);
    let record_invalid = secret.is_some_and(desired::lease_record_invalid);
    let mut status = desired::take_up_record(dc, status, secret, lease.as_ref(), plan.grace, now);
    let secret_holds_lease = match (&lease, secret.and_then(desired::lease_on_secret)) {
        (Some(l), Some((id, ..))) => l.id == id,
        _ => false,
    };
    let spec_changed = secret
        .and_then(|s| s.annotations().get(desired::SPEC_DIGEST_ANNOTATION))
        .is_some_and(|d| *d != plan.spec_digest);

    let token = lease_token(ctx, &plan, client).await?;
    // The credential the Secret holds is never revoked, whatever a record says.
    if let Some(l) = &lease {
        status.retiring_leases.retain(|r| r.lease_id != l.id);
    }
    // Credentials already due (an unwritten one whose revocation failed) go first, whatever this
    // reconcile does next.
    if status
        .retiring_leases
        .iter()
        .any(|r| r.revoke_after.as_ref().is_some_and(|t| t.0 <= now))
    {
        retire(dc, ctx, client, &token, &plan, &mut status, None, now).await;
    }
    // Gather: what the lease is, as far as the records and (when they ran out) Vault tell.
    let mut gathered = decide::Gathered {
        lease,
        secret_holds_lease,
        spec_changed,
        record_invalid,
        token: TokenView {
            accessor: token.accessor.clone(),
        },
        timing: Timing {
            renew_at_percent: dc.spec.renew_at_percent,
            rotate_at_percent: dc.spec.rotate_at_percent,
            jitter: schedule::jitter_of(&dc.uid().unwrap_or_default()),
        },
        has_restart_targets: !dc.spec.restart_targets.is_empty(),
        grace: plan.grace,
    };
    if decide::needs_lookup(&gathered, now)
        && let Some(l) = &gathered.lease
    {
        let left = client
            .lookup_lease(&token.token, &l.id)
            .await
            .map_err(|source| Error::Renew {
                lease_id: l.id.clone(),
                source,
            })?;
        tracing::info!(namespace = %namespace, name = dc.name_any(), lease_id = %l.id, left = ?left, "the recorded lease expiry passed; looked the lease up in Vault");
        gathered = decide::looked_up(gathered, left, now);
    }

    // Decide, act, record: a renewal first when one is due, then what its outcome calls for.
    let mut renewal_note = None;
    let mut current = gathered.lease.clone();
    let mut action = decide::decide(&gathered, &status.retiring_leases, None, now);
    if let Some((step, late)) = decide::lateness(&gathered, &action, now) {
        ctx.metrics.lease_lateness(KIND, step, late);
    }
    if let LeaseAction::Renew(lease) = &action {
        let renewed = renew(client, &token, lease, now).await?;
        if let Some(renewed) = &renewed {
            tracing::info!(namespace = %namespace, name = dc.name_any(), lease_id = %renewed.id, expires = %renewed.expires, "renewed lease");
            renewal_note = Some(decide::renewal_note(renewed));
            status = decide::with_lease(status, renewed);
            current = Some(renewed.clone());
        }
        action = decide::decide(
            &gathered,
            &status.retiring_leases,
            Some(renewed.as_ref()),
            now,
        );
    }
    if let LeaseAction::Issue {
        reason,
        mut retiring,
        restart,
        revoke_first,
    } = action
    {
        if let Some(ended) = &revoke_first
            && let Err(err) = client.revoke_lease(&token.token, &ended.id).await
        {
            tracing::warn!(lease_id = %ended.id, error = %err, "failed to revoke the ended lease before replacing it; retrying later");
            retiring = decide::revoke_later(retiring, ended, now);
        }
        let issued = issue(dc, ctx, &plan, client, &token, now, &retiring, restart).await?;
        let rotated = gathered.lease.is_some();
        status = decide::with_issued(
            status,
            &issued.record,
            &issued.hmac,
            retiring,
            rotated,
            restart,
            now,
        );
        current = Some(issued.record.clone());
        renewal_note = Some((
            true,
            reasons::ISSUED,
            format!("lease {} issued ({})", issued.record.id, reason.describe()),
        ));
        // Events are aggregated by reason, so a rotation gets its own reason to keep its note.
        let event_reason = if rotated {
            reasons::ROTATED
        } else {
            reasons::ISSUED
        };
        publish(
            ctx,
            dc,
            EventType::Normal,
            event_reason,
            format!(
                "Issued a new credential from {} into Secret {:?}: {}",
                plan.path,
                dest,
                reason.describe()
            ),
        )
        .await;
    }
    let view = gathered.token.clone();
    let timing = gathered.timing;

    let advanced = match ctx
        .restarts
        .advance(
            &ctx.client,
            &namespace,
            &dc.spec.restart_targets,
            status.pending_restart.clone(),
            now,
        )
        .await
    {
        Ok(advanced) => advanced,
        Err(source) => {
            return Err(Error::Restart {
                target: "restart targets".to_owned(),
                source,
            });
        }
    };
    status.pending_restart = advanced.pending.clone();
    for target in &advanced.restarted {
        ctx.metrics.restart(KIND);
        publish(
            ctx,
            dc,
            EventType::Normal,
            reasons::RESTARTED,
            format!("Restarted {target} for the new credential"),
        )
        .await;
    }

    // Waiting for the rollout is bounded from the moment the current credential was written.
    let since = current.as_ref().map_or(now, |l| l.issued);
    if let Some(l) = &current {
        status.retiring_leases.retain(|r| r.lease_id != l.id);
    }
    let retiring_wait = retire(
        dc,
        ctx,
        client,
        &token,
        &plan,
        &mut status,
        Some(since),
        now,
    )
    .await;
    if let Some(l) = &current {
        // A lease read back from the Secret alone: put its facts in the status.
        status = decide::with_lease(status, l);
    }
    let next_lease = current
        .as_ref()
        .map(
            |l| match schedule::next_step(Some(l), true, false, &view, timing, now) {
                Step::WaitUntil(t) => t,
                _ => now + SignedDuration::from_secs(1),
            },
        )
        .unwrap_or(now + SignedDuration::from_secs(60));
    // The lease token needs renewing too; it is renewed on the next reconcile of any of its leases.
    let token_due = token.next_check(ctx.token_replace_before);
    let next = [
        Some(next_lease),
        retiring_wait,
        advanced.wake,
        Some(token_due.max(now)),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(next_lease);
    let status = desired::settled_status(
        dc,
        &plan.path,
        status,
        desired::Outcome {
            renewal: renewal_note,
            restarts: advanced.condition,
            next_renewal: next_lease,
        },
        now,
    );
    Ok((status, next))
}

async fn lease_token(
    ctx: &Context,
    plan: &Plan,
    client: &dyn VaultApi,
) -> Result<LeaseToken, Error> {
    Ok(ctx
        .lease_tokens
        .get(
            &plan.identity,
            client,
            &ctx.identities,
            ctx.token_replace_before,
        )
        .await?)
}

/// Renews the lease; `None` when Vault no longer knows it.
async fn renew(
    client: &dyn VaultApi,
    token: &LeaseToken,
    lease: &LeaseRecord,
    now: Timestamp,
) -> Result<Option<LeaseRecord>, Error> {
    let increment = lease.duration.max(Duration::from_secs(60));
    match client.renew_lease(&token.token, &lease.id, increment).await {
        Ok(renewal) => {
            let expires = crate::clock::after(now, renewal.lease.duration);
            Ok(Some(LeaseRecord {
                duration: if renewal.capped {
                    lease.duration
                } else {
                    renewal.lease.duration
                },
                expires,
                hard_end: renewal.capped.then_some(expires),
                ..lease.clone()
            }))
        }
        // "lease not found or lease is not renewable" / "invalid lease ID".
        Err(VaultError::Rejected { status: 400, .. }) => Ok(None),
        Err(source) => Err(Error::Renew {
            lease_id: lease.id.clone(),
            source,
        }),
    }
}

struct Issued {
    record: LeaseRecord,
    hmac: String,
}

/// Issues a credential and writes it, with `retiring` and (when `restart`) the restart stamp
/// recorded on the Secret in the same apply. A credential that cannot be rendered or written is
/// revoked at once, so it never leaks.
// The follow-up (retiring, restart) is part of the one write; naming them at the call reads best.
#[allow(clippy::too_many_arguments)]
async fn issue(
    dc: &DynamicCredential,
    ctx: &Context,
    plan: &Plan,
    client: &dyn VaultApi,
    token: &LeaseToken,
    now: Timestamp,
    retiring: &[RetiringLease],
    restart: bool,
) -> Result<Issued, Error> {
    let leased = client
        .issue_leased(&token.token, &plan.path, plan.body.as_ref())
        .await
        .map_err(|source| Error::Issue {
            path: plan.path.clone(),
            source,
        })?;
    let record = LeaseRecord {
        id: leased.lease.id.clone(),
        issued: now,
        duration: leased.lease.duration,
        expires: crate::clock::after(now, leased.lease.duration),
        hard_end: (!leased.lease.renewable)
            .then(|| crate::clock::after(now, leased.lease.duration)),
        token_accessor: token.accessor.clone(),
    };
    let templated = match template::render(&dc.spec.destination.templates, &leased.data) {
        Ok(templated) => templated,
        Err(err) => return Err(discard(client, token, &record, Error::Render(err), now).await),
    };
    let data = crate::managed::secret_data(leased.data.to_text_map(), templated);
    let hmac = data_hmac(&ctx.hmac_key, &data);
    let follow_up = desired::FollowUp {
        retiring: retiring.to_vec(),
        restart_for: restart.then(|| restart::stamp_of(&hmac)),
    };
    let secret = desired::build_secret(dc, data, &record, &plan.spec_digest, &follow_up);
    let name = dc.spec.destination.name.clone();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &dc.namespace().unwrap_or_default());
    if let Err(source) = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
    {
        let failed = Error::ApplySecret {
            name: name.clone(),
            source,
        };
        // The answer may be lost while the write took effect: look before revoking what may now be
        // the Secret's credential. Not knowing counts as written; the next reconcile sees.
        let written = match api.get_opt(&name).await {
            Ok(secret) => secret
                .as_ref()
                .and_then(desired::lease_on_secret)
                .is_some_and(|(id, ..)| id == record.id),
            Err(_) => true,
        };
        if written {
            tracing::warn!(lease_id = %record.id, "the Secret apply failed but the Secret may hold the new credential; it is not revoked");
            return Err(failed);
        }
        return Err(discard(client, token, &record, failed, now).await);
    }
    ctx.metrics.kube_write("secret");
    tracing::info!(namespace = dc.namespace().unwrap_or_default(), name = dc.name_any(), lease_id = %record.id, ttl = record.duration.as_secs(), "issued credential");
    Ok(Issued { record, hmac })
}

/// Revokes a credential that exists in Vault but that nobody can use, rather than leak it, and
/// returns `failed`; when the revocation fails too, the credential goes into the status as
/// retiring (see [`Error::Unwritten`]) so it is revoked later.
async fn discard(
    client: &dyn VaultApi,
    token: &LeaseToken,
    record: &LeaseRecord,
    failed: Error,
    now: Timestamp,
) -> Error {
    match client.revoke_lease(&token.token, &record.id).await {
        Ok(()) => failed,
        Err(err) => {
            tracing::warn!(lease_id = %record.id, error = %err, "failed to revoke a credential that could not be written; it is revoked later");
            Error::Unwritten {
                orphan: RetiringLease {
                    lease_id: record.id.clone(),
                    expiry_time: Some(Time(record.expires)),
                    revoke_after: Some(Time(now)),
                },
                source: Box::new(failed),
            }
        }
    }
}

/// Moves retiring leases along: once every target rolled out, the grace period starts; after it,
/// the lease is revoked. Returns when to look again, if anything is pending.
// Each argument is a distinct input of the revocation step; `since` bounds the rollout wait.
#[allow(clippy::too_many_arguments)]
async fn retire(
    dc: &DynamicCredential,
    ctx: &Context,
    client: &dyn VaultApi,
    token: &LeaseToken,
    plan: &Plan,
    status: &mut DynamicCredentialStatus,
    since: Option<Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    if status.retiring_leases.is_empty() {
        return None;
    }
    let retiring: Vec<Retiring> = status
        .retiring_leases
        .iter()
        .map(|r| Retiring {
            id: r.lease_id.clone(),
            ends: r.expiry_time.as_ref().map(|t| t.0),
            revoke_after: r.revoke_after.as_ref().map(|t| t.0),
        })
        .collect();
    // Gather: the rollout matters only while a lease waits for it (and `since` says from when).
    let rolled_out = match since {
        Some(since) if retirement::waits_for_rollout(&retiring, now) => {
            restart::rollouts_done(
                ctx,
                dc,
                &dc.spec.restart_targets,
                status.pending_restart.is_some(),
                since,
                now,
                "the previous lease is revoked after the grace period anyway",
            )
            .await
        }
        _ => false,
    };
    // Decide, then act.
    let mut decision = retirement::decide(retiring, rolled_out, plan.grace, now);
    for lease in std::mem::take(&mut decision.revoke) {
        match client.revoke_lease(&token.token, &lease.id).await {
            Ok(()) => {
                publish(
                    ctx,
                    dc,
                    EventType::Normal,
                    reasons::REVOKED,
                    format!("Revoked previous lease {}", lease.id),
                )
                .await;
            }
            Err(err) => {
                tracing::warn!(lease_id = %lease.id, error = %err, "failed to revoke a previous lease; retrying");
                decision.revocation_failed(lease, now);
            }
        }
    }
    status.retiring_leases = decision
        .keep
        .into_iter()
        .map(|r| RetiringLease {
            lease_id: r.id,
            expiry_time: r.ends.map(Time),
            revoke_after: r.revoke_after.map(Time),
        })
        .collect();
    decision.wake
}

/// Revokes the current and retiring leases when `revokeOnDelete` is set.
async fn cleanup(dc: &DynamicCredential, ctx: &Context) -> Result<Action, Error> {
    if !dc.spec.revoke_on_delete {
        return Ok(Action::await_change());
    }
    // Every lease this resource may hold, read from the API rather than the caches: a rotation
    // just before the delete leaves the cached status one lease behind, and a status write lost
    // after the Secret was written leaves the newest lease on the Secret alone.
    let namespace = dc.namespace().unwrap_or_default();
    let api: Api<DynamicCredential> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(fresh) = api.get_opt(&dc.name_any()).await.map_err(Error::Read)? else {
        return Ok(Action::await_change());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let on_secret = secrets
        .get_opt(&dc.spec.destination.name)
        .await
        .map_err(Error::Read)?
        .filter(|secret| crate::managed::owned_by(secret, dc))
        .and_then(|secret| desired::lease_on_secret(&secret).map(|(id, ..)| id));
    let leases = leases_to_revoke(fresh.status.as_ref(), on_secret);
    if leases.is_empty() {
        return Ok(Action::await_change());
    }
    // A plan that fails (its connection was removed from the operator's configuration) keeps the
    // finalizer: the leases are still live in Vault. The error is retried with backoff.
    let plan = desired::plan(dc, |name| {
        ctx.identities
            .connection(name)
            .map(|c| c.auth_mount.clone())
    })
    .map_err(Error::CleanupPlan)?;
    let client = ctx
        .identities
        .connection(&plan.identity.connection)
        .expect("plan checked the connection")
        .client
        .as_ref();
    let token = lease_token(ctx, &plan, client).await?;
    for lease_id in leases {
        client
            .revoke_lease(&token.token, &lease_id)
            .await
            .map_err(|source| Error::Revoke {
                lease_id: lease_id.clone(),
                source,
            })?;
        tracing::info!(namespace = dc.namespace().unwrap_or_default(), name = dc.name_any(), %lease_id, "revoked lease on delete");
    }
    Ok(Action::await_change())
}

/// The leases a deleted resource holds: those retiring, the current one, and the one its Secret
/// records, each once.
fn leases_to_revoke(
    status: Option<&DynamicCredentialStatus>,
    on_secret: Option<String>,
) -> Vec<String> {
    let mut leases: Vec<String> = status
        .into_iter()
        .flat_map(|s| {
            s.retiring_leases
                .iter()
                .map(|r| r.lease_id.clone())
                .chain(s.lease_id.clone())
        })
        .chain(on_secret)
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    leases.retain(|id| seen.insert(id.clone()));
    leases
}

async fn patch_status(
    dc: &DynamicCredential,
    ctx: &Context,
    current: &DynamicCredentialStatus,
    new: DynamicCredentialStatus,
) -> Result<(), Error> {
    report::patch_status(ctx, dc, dc.status.is_some(), current, &new)
        .await
        .map_err(Error::PatchStatus)
}

async fn publish(
    ctx: &Context,
    dc: &DynamicCredential,
    type_: EventType,
    reason: &str,
    note: String,
) {
    report::publish(ctx, dc, type_, reason, "Lease", note).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_waits_for_its_permit_by_its_lease_end_and_a_changed_spec_as_due_now() {
        let mut dc: DynamicCredential = serde_json::from_value(serde_json::json!({
            "apiVersion": "vaultkeeper.dev/v1alpha1", "kind": "DynamicCredential",
            "metadata": {"name": "db", "namespace": "apps", "generation": 1},
            "spec": {"auth": {"role": "app", "serviceAccountName": "web"},
                     "source": {"mount": "database", "role": "app"}, "destination": {"name": "db-creds"}},
        }))
        .unwrap();
        assert_eq!(deadline(&dc), None, "no status yet");
        let expiry: Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
        dc.status = Some(DynamicCredentialStatus {
            observed_generation: Some(1),
            expiry_time: Some(Time(expiry)),
            ..Default::default()
        });
        assert_eq!(deadline(&dc), Some(expiry));
        dc.metadata.generation = Some(2);
        assert_eq!(deadline(&dc), None, "a changed spec is due now");
    }
}
