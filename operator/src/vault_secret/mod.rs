//! The VaultSecret controller: KV data from Vault into a Kubernetes Secret, kept in sync.
//!
//! fetch (Vault, cached Secret) → validate and build (pure, `desired`) → apply (server-side apply,
//! only when the data or spec changed) → status (patched only when it changed).

pub mod desired;
pub mod shared;

use std::sync::Arc;
use std::time::Instant;

use crds::v1alpha1::{KvEngine, VaultSecret, VaultSecretStatus, condition_types, reasons};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::predicates;
use kube::runtime::reflector::{ObjectRef, ReflectHandle};
use kube::{Api, ResourceExt};
use vault::{KvVersionState, SecretData, VaultError, VaultToken};

use crate::conditions::{self, Desired};
use crate::context::{Context, Lane};
use crate::identity::{IdentityError, IdentityKey};
use crate::report;
use crate::restart;
use crate::template;
use crate::vault_api::VaultApi;
use desired::Plan;

/// Field manager of every write the operator makes.
const KIND: &str = "VaultSecret";

/// Why a reconcile did not reach Ready. Messages name paths, roles and Secrets, never data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{source}")]
    ReadSource { source: VaultError },
    #[error(
        "Vault denied reading {path} to role {role:?} of {identity}; check the policies of that role"
    )]
    Denied {
        path: String,
        role: String,
        identity: String,
    },
    #[error("version {version} of {path} is {state}")]
    VersionGone {
        path: String,
        version: i64,
        state: &'static str,
    },
    #[error(
        "Secret {name:?} already exists and is not managed by this VaultSecret; delete it or choose another destination.name"
    )]
    SecretConflict { name: String },
    #[error("failed to render destination: {0}")]
    Render(#[from] template::TemplateError),
    #[error("failed to read Secret {name:?}: {source}")]
    GetSecret { name: String, source: kube::Error },
    #[error("failed to apply Secret {name:?}: {source}")]
    ApplySecret { name: String, source: kube::Error },
    #[error("failed to patch status: {0}")]
    PatchStatus(kube::Error),
    #[error("failed to read the VaultSecret: {0}")]
    ReadResource(kube::Error),
    #[error("internal error (a bug in vaultkeeper; please report it): the reconcile panicked: {0}")]
    Panicked(String),
    /// The failure of an identical read this one waited on (see [`shared`]).
    #[error(transparent)]
    Shared(Arc<Error>),
}

impl Error {
    /// Condition reason, also the `result` label of the sync metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) | Self::Render(_) => reasons::INVALID_SPEC,
            Self::Identity(IdentityError::TokenRequest { .. }) => reasons::TOKEN_REQUEST_FAILED,
            Self::Identity(IdentityError::Login { source, .. })
            | Self::ReadSource { source, .. } => report::vault_reason(source),
            Self::Denied { .. } => reasons::PERMISSION_DENIED,
            Self::VersionGone { .. } => reasons::SOURCE_VERSION_DELETED,
            Self::SecretConflict { .. } => reasons::SECRET_CONFLICT,
            Self::GetSecret { .. }
            | Self::ApplySecret { .. }
            | Self::PatchStatus(_)
            | Self::ReadResource(_) => reasons::KUBERNETES_ERROR,
            Self::Panicked(_) => reasons::INTERNAL_ERROR,
            Self::Shared(inner) => inner.reason(),
        }
    }

    /// Whether the Secret may hold data that is now stale (worth saying in the message).
    fn keeps_old_data(&self) -> bool {
        matches!(
            self.reason(),
            reasons::VAULT_UNAVAILABLE
                | reasons::SOURCE_VERSION_DELETED
                | reasons::PERMISSION_DENIED
                | reasons::VAULT_REJECTED
                | reasons::SOURCE_NOT_FOUND
        )
    }
}

/// Starts the controller; returns when `shutdown` fires and in-flight reconciles finished.
/// `secrets` tells about changes of the Secrets in `ctx.secrets` (filled before this starts).
pub async fn run(
    ctx: Arc<Context>,
    scope: crate::scope::Scope,
    resources: kube::runtime::reflector::store::Writer<VaultSecret>,
    secrets: ReflectHandle<Secret>,
    deleted: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Status-only updates (our own patches) do not change the generation and trigger nothing.
    crate::managed::run_controller(
        ctx,
        scope,
        resources,
        secrets,
        deleted,
        shutdown,
        predicates::generation,
        crate::managed::Queueing {
            lane,
            deadline: crate::context::no_deadline,
        },
        reconcile,
        crate::managed::ErrorPolicy {
            kind: KIND,
            waits_for_change,
            reason: Error::reason,
            panicked: Error::Panicked,
            retry_within: |_, _| None,
        },
    )
    .await;
}

/// Errors that only a change of the resource can heal.
fn waits_for_change(error: &Error) -> bool {
    matches!(
        error,
        Error::InvalidSpec(_) | Error::Render(_) | Error::SecretConflict { .. }
    )
}

/// Whether the resource is Ready at its current generation: its next reconcile is a periodic refresh.
fn in_sync(vs: &VaultSecret) -> bool {
    vs.status.as_ref().is_some_and(|status| {
        status.observed_generation == vs.metadata.generation
            && conditions::find(&status.conditions, condition_types::READY)
                .is_some_and(|c| c.status == "True")
    })
}

/// Periodic refreshes wait in the refresh lane; new and changed resources in the sync lane, so they
/// are not queued behind refreshes.
fn lane(vs: &VaultSecret) -> Lane {
    if in_sync(vs) {
        Lane::Refresh
    } else {
        Lane::Sync
    }
}

pub async fn reconcile(vs: Arc<VaultSecret>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // Our Secret write reaches the cache before our status patch does: a reconcile in between
    // would take its own write for new data (and schedule a second restart). Read the resource
    // again when its status does not describe the cached Secret.
    let vs = if status_behind_secret(&vs, &ctx) {
        let api: Api<VaultSecret> =
            Api::namespaced(ctx.client.clone(), &vs.namespace().unwrap_or_default());
        match api.get_opt(&vs.name_any()).await {
            Ok(Some(fresh)) => Arc::new(fresh),
            Ok(None) => return Ok(Action::await_change()),
            Err(err) => return Err(Error::ReadResource(err)),
        }
    } else {
        vs
    };
    let uid = vs.uid().unwrap_or_default();
    let status = vs.status.clone().unwrap_or_default();
    let plan = desired::plan(&vs, |name| {
        ctx.identities
            .connection(name)
            .map(|c| c.auth_mount.clone())
    })
    .map_err(Error::InvalidSpec);

    // A resource already in sync at this generation is a periodic refresh (its reads are shared).
    let is_refresh = in_sync(&vs);

    let outcome = match plan {
        Ok(plan) => sync(&vs, &plan, &ctx, is_refresh)
            .await
            .map(|synced| (plan, synced)),
        Err(err) => Err(err),
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    match outcome {
        Ok((plan, synced)) => {
            // New data (not a first sync, not a restored hand edit) restarts the targets.
            let data_changed = status
                .data_hmac
                .as_deref()
                .is_some_and(|old| old != synced.hmac);
            let pending = if data_changed && !vs.spec.restart_targets.is_empty() {
                Some(restart::schedule(
                    status.pending_restart.as_ref(),
                    restart::stamp_of(&synced.hmac),
                    now.0,
                    ctx.restarts.debounce,
                ))
            } else {
                status.pending_restart.clone()
            };
            let advanced = advance_restarts(&ctx, &vs, pending, now.0).await;
            let mut conditions = conditions::set(
                &status.conditions,
                desired::synced_condition(&vs, &plan, synced.version),
                vs.metadata.generation,
                &now,
            );
            if let Some(c) = advanced.condition.clone() {
                conditions = conditions::set(&conditions, c, vs.metadata.generation, &now);
            }
            let new_status = VaultSecretStatus {
                conditions,
                pending_restart: advanced.pending.clone(),
                observed_generation: vs.metadata.generation,
                synced_version: synced.version,
                data_hmac: Some(synced.hmac),
                last_change_time: if synced.written {
                    Some(now.clone())
                } else {
                    status.last_change_time.clone()
                },
            };
            patch_status(&vs, &ctx, &status, new_status).await?;
            if synced.written {
                publish(
                    &ctx,
                    &vs,
                    EventType::Normal,
                    reasons::SYNCED,
                    format!(
                        "Wrote Secret {:?} ({})",
                        vs.spec.destination.name, plan.display_path
                    ),
                )
                .await;
            }
            ctx.succeeded(&uid);
            ctx.metrics.sync(
                KIND,
                if synced.written {
                    "synced"
                } else {
                    "unchanged"
                },
                started.elapsed(),
            );
            for target in &advanced.restarted {
                ctx.metrics.restart(KIND);
                publish(
                    &ctx,
                    &vs,
                    EventType::Normal,
                    reasons::RESTARTED,
                    format!(
                        "Restarted {target} for new data of Secret {:?}",
                        vs.spec.destination.name
                    ),
                )
                .await;
            }
            // Resources reading one source refresh together, so that their reads are made once.
            let refresh = shared::refresh_in(
                now.0,
                plan.refresh,
                &read_key(&vs, &plan, shared::What::Metadata),
            );
            let wake = advanced.wake.map(|t| {
                t.duration_since(now.0)
                    .unsigned_abs()
                    .max(std::time::Duration::from_millis(500))
            });
            Ok(Action::requeue(wake.map_or(refresh, |w| w.min(refresh))))
        }
        Err(err) => {
            let mut message = err.to_string();
            if err.keeps_old_data() && status.data_hmac.is_some() {
                message.push_str(&desired::keeps_data_note(
                    &vs.spec.destination.name,
                    status.last_change_time.as_ref(),
                    status.synced_version,
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
            let new_status = VaultSecretStatus {
                conditions: conditions::set(
                    &status.conditions,
                    condition.clone(),
                    vs.metadata.generation,
                    &now,
                ),
                observed_generation: vs.metadata.generation,
                ..status.clone()
            };
            patch_status(&vs, &ctx, &status, new_status).await?;
            if was != Some(("False".to_owned(), err.reason().to_owned())) {
                publish(
                    &ctx,
                    &vs,
                    EventType::Warning,
                    err.reason(),
                    condition.message,
                )
                .await;
            }
            tracing::warn!(namespace = vs.namespace().unwrap_or_default(), name = vs.name_any(), reason = err.reason(), error = %err, "VaultSecret not synced");
            Err(err)
        }
    }
}

/// What a successful sync did.
struct Synced {
    version: Option<i64>,
    hmac: String,
    written: bool,
}

/// Brings the Secret in line with Vault; writes only on change. A `refresh` reads the metadata and
/// the data only of a new version, sharing its reads with identical ones (see [`shared`]); a first
/// sync or a change reads the data at once.
async fn sync(
    vs: &VaultSecret,
    plan: &Plan,
    ctx: &Context,
    refresh: bool,
) -> Result<Synced, Error> {
    let connection = ctx
        .identities
        .connection(&plan.identity.connection)
        .expect("plan checked the connection");
    let client = connection.client.as_ref();
    let status = vs.status.clone().unwrap_or_default();
    let namespace = vs.namespace().unwrap_or_default();
    let dest = &vs.spec.destination.name;
    let existing = ctx.secrets.get(&ObjectRef::new(dest).within(&namespace));
    let existing_hmac = existing
        .as_deref()
        .map(|s| crate::digest::existing_hmac(&ctx.hmac_key, s));
    let spec_unchanged = status.observed_generation == vs.metadata.generation;
    let source = &vs.spec.source;
    let read = |what: shared::What, operation: &'static str| {
        let key = read_key(vs, plan, what);
        let call = async move {
            let answer = with_token(ctx, &plan.identity, client, |token| async move {
                Ok(match what {
                    shared::What::Metadata => shared::Answer::Metadata(Arc::new(
                        client
                            .kv2_metadata(&token, &source.mount, &source.path)
                            .await?,
                    )),
                    shared::What::Version(v) => shared::Answer::Version(Arc::new(
                        client
                            .kv2_read(&token, &source.mount, &source.path, Some(v))
                            .await?,
                    )),
                    shared::What::Wanted => shared::Answer::Version(Arc::new(
                        client
                            .kv2_read(&token, &source.mount, &source.path, source.version)
                            .await?,
                    )),
                    shared::What::Kv1 => shared::Answer::Kv1(Arc::new(
                        client.kv1_read(&token, &source.mount, &source.path).await?,
                    )),
                })
            })
            .await;
            answer.map_err(|e| read_error(plan, e))
        };
        ctx.shared_reads.read(key, refresh, call, move || {
            ctx.metrics.shared_read(operation)
        })
    };

    // A first sync or a change needs the data whatever the metadata says: one read where a
    // metadata read and then a data read were two. Only a read that finds nothing asks the
    // metadata why (a deleted, destroyed or missing version gets its own message).
    let direct = if source.engine == KvEngine::KvV2 && !refresh {
        match read(shared::What::Wanted, "kv2_read").await {
            Ok(shared::Answer::Version(read)) => Some((read.data.clone(), Some(read.version))),
            Ok(_) => unreachable!("a version read answers a version"),
            Err(Error::ReadSource {
                source: VaultError::NotFound { .. },
            }) => None,
            Err(err) => return Err(err),
        }
    } else {
        None
    };
    let (data, version) = match (source.engine, direct) {
        (_, Some(read)) => read,
        (KvEngine::KvV2, None) => {
            let shared::Answer::Metadata(metadata) =
                read(shared::What::Metadata, "kv2_metadata").await?
            else {
                unreachable!("a metadata read answers metadata")
            };
            let version = source.version.unwrap_or(metadata.current_version);
            match metadata.state_of(version) {
                KvVersionState::Live => {}
                KvVersionState::Deleted => {
                    return Err(Error::VersionGone {
                        path: plan.display_path.clone(),
                        version,
                        state: "deleted",
                    });
                }
                KvVersionState::Destroyed => {
                    return Err(Error::VersionGone {
                        path: plan.display_path.clone(),
                        version,
                        state: "destroyed",
                    });
                }
                KvVersionState::Missing => {
                    return Err(Error::VersionGone {
                        path: plan.display_path.clone(),
                        version,
                        state: "missing",
                    });
                }
            }
            // Unchanged version, spec and Secret: nothing else to read or write.
            if spec_unchanged
                && status.synced_version == Some(version)
                && existing_hmac.is_some()
                && existing_hmac == status.data_hmac
            {
                return Ok(Synced {
                    version: Some(version),
                    hmac: existing_hmac.unwrap_or_default(),
                    written: false,
                });
            }
            let shared::Answer::Version(read) =
                read(shared::What::Version(version), "kv2_read").await?
            else {
                unreachable!("a version read answers a version")
            };
            (read.data.clone(), Some(read.version))
        }
        (KvEngine::KvV1, None) => {
            let shared::Answer::Kv1(data) = read(shared::What::Kv1, "kv1_read").await? else {
                unreachable!("a KV v1 read answers data")
            };
            (SecretData::clone(&data), None)
        }
    };
    write_if_changed(
        vs,
        ctx,
        &data,
        version,
        existing.as_deref(),
        existing_hmac,
        spec_unchanged,
    )
    .await
}

async fn write_if_changed(
    vs: &VaultSecret,
    ctx: &Context,
    data: &SecretData,
    version: Option<i64>,
    existing: Option<&Secret>,
    existing_hmac: Option<String>,
    spec_unchanged: bool,
) -> Result<Synced, Error> {
    let templated = template::render(&vs.spec.destination.templates, data)?;
    let secret_data = crate::managed::secret_data(data.to_text_map(), templated);
    let hmac = crate::digest::data_hmac(&ctx.hmac_key, &secret_data);
    let name = vs.spec.destination.name.clone();
    let existing_version = existing
        .and_then(|s| {
            s.annotations()
                .get(desired::SOURCE_VERSION_ANNOTATION)
                .cloned()
        })
        .and_then(|v| v.parse::<i64>().ok());
    if spec_unchanged
        && existing_hmac.as_deref() == Some(hmac.as_str())
        && existing_version == version
    {
        return Ok(Synced {
            version,
            hmac,
            written: false,
        });
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &vs.namespace().unwrap_or_default());
    match existing {
        Some(secret) if !desired::owned_by(secret, vs) => {
            return Err(Error::SecretConflict { name });
        }
        Some(_) => {}
        // Not in the managed cache: it may still exist unmanaged, which we must not overwrite.
        None => {
            let found = api
                .get_opt(&name)
                .await
                .map_err(|source| Error::GetSecret {
                    name: name.clone(),
                    source,
                })?;
            if let Some(secret) = found
                && !desired::owned_by(&secret, vs)
            {
                return Err(Error::SecretConflict { name });
            }
        }
    }
    let secret = desired::build_secret(vs, secret_data, version);
    api.patch(
        &name,
        &PatchParams::apply(crate::managed::FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await
    .map_err(|source| Error::ApplySecret {
        name: name.clone(),
        source,
    })?;
    ctx.metrics.kube_write("secret");
    tracing::info!(namespace = vs.namespace().unwrap_or_default(), name = vs.name_any(), secret = %name, version, "wrote Secret");
    Ok(Synced {
        version,
        hmac,
        written: true,
    })
}

/// The read of `what` of the resource's source, under its identity.
fn read_key(vs: &VaultSecret, plan: &Plan, what: shared::What) -> shared::ReadKey {
    shared::ReadKey {
        identity: plan.identity.clone(),
        mount: vs.spec.source.mount.clone(),
        path: vs.spec.source.path.clone(),
        what,
    }
}

/// Runs a Vault call with the identity's token (see [`crate::identity::Identities::with_token`]).
async fn with_token<T, F, Fut>(
    ctx: &Context,
    identity: &IdentityKey,
    client: &dyn VaultApi,
    call: F,
) -> Result<T, Error>
where
    F: Fn(VaultToken) -> Fut,
    Fut: std::future::Future<Output = Result<T, VaultError>>,
{
    ctx.identities
        .with_token(identity, client, call)
        .await?
        .map_err(|source| Error::ReadSource { source })
}

/// Turns a 403 into a denial that names the path people know (`mount/path`) and the role.
fn read_error(plan: &Plan, err: Error) -> Error {
    match err {
        Error::ReadSource {
            source: VaultError::PermissionDenied { .. },
        } => Error::Denied {
            path: plan.display_path.clone(),
            role: plan.identity.role.clone(),
            identity: format!(
                "ServiceAccount {}/{}",
                plan.identity.namespace, plan.identity.service_account
            ),
        },
        other => other,
    }
}

/// Whether the cached Secret holds data the status does not record (for instance our own write
/// whose status patch the cache has not seen yet).
fn status_behind_secret(vs: &VaultSecret, ctx: &Context) -> bool {
    let Some(recorded) = vs.status.as_ref().and_then(|s| s.data_hmac.as_deref()) else {
        return false;
    };
    ctx.secrets
        .get(&ObjectRef::new(&vs.spec.destination.name).within(&vs.namespace().unwrap_or_default()))
        .is_some_and(|secret| crate::digest::existing_hmac(&ctx.hmac_key, &secret) != recorded)
}

/// Advances the pending restart; a failure to reach a workload is retried, not fatal to the sync.
async fn advance_restarts(
    ctx: &Context,
    vs: &VaultSecret,
    pending: Option<crds::v1alpha1::PendingRestart>,
    now: k8s_openapi::jiff::Timestamp,
) -> restart::Advanced {
    let namespace = vs.namespace().unwrap_or_default();
    match ctx
        .restarts
        .advance(
            &ctx.client,
            &namespace,
            &vs.spec.restart_targets,
            pending.clone(),
            now,
        )
        .await
    {
        Ok(advanced) => advanced,
        Err(err) => {
            tracing::warn!(namespace, name = vs.name_any(), error = %err, "failed to restart targets; retrying");
            restart::Advanced {
                pending,
                condition: None,
                wake: Some(now + k8s_openapi::jiff::SignedDuration::from_secs(10)),
                restarted: Vec::new(),
            }
        }
    }
}

async fn patch_status(
    vs: &VaultSecret,
    ctx: &Context,
    current: &VaultSecretStatus,
    new: VaultSecretStatus,
) -> Result<(), Error> {
    report::patch_status(ctx, vs, vs.status.is_some(), current, &new)
        .await
        .map_err(Error::PatchStatus)
}

async fn publish(ctx: &Context, vs: &VaultSecret, type_: EventType, reason: &str, note: String) {
    report::publish(ctx, vs, type_, reason, "Sync", note).await;
}
