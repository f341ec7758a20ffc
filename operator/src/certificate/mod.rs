//! The CertificateRequest controller: a certificate from Vault's PKI engine in a `kubernetes.io/tls`
//! Secret, issued when missing or when the spec asks for another one, renewed `renewBefore` ahead
//! of its end, the new one written before the old one is revoked, restart targets rolled, and the
//! certificate revoked when the resource is deleted.
//!
//! The Secret is the record: a restarted operator reads the certificate back from it and issues
//! nothing while it is valid and was written for the current spec.

pub mod decide;
pub mod desired;
pub mod key;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crds::v1alpha1::{
    CertificateRequest, CertificateRequestStatus, IssueMode, RotationPolicy, SupersededCertificate,
    condition_types, reasons,
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
use crate::managed::FIELD_MANAGER;
use crate::report;
use crate::restart;
use crate::retirement::{self, Retiring};
use crate::vault_api::VaultApi;
use decide::CertificateAction;
use desired::{CertFacts, Plan};
use key::Key;

const KIND: &str = "CertificateRequest";
/// Guards revocation of the certificate when the resource is deleted.
pub const FINALIZER: &str = "vaultkeeper.dev/revoke-certificate";

/// Why a reconcile did not reach Ready. Messages name paths, roles and serials, never keys.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("failed to get a certificate from {path} with Vault role {role:?}: {source}")]
    Issue {
        path: String,
        role: String,
        source: VaultError,
    },
    #[error("failed to revoke certificate {serial}: {source}")]
    Revoke { serial: String, source: VaultError },
    #[error("Vault's answer from {path} holds no readable certificate")]
    BadCertificate { path: String },
    #[error(
        "Secret {name:?} already exists and is not managed by this CertificateRequest; delete it or choose another destination.name"
    )]
    SecretConflict { name: String },
    #[error("private key: {0}")]
    Key(String),
    #[error("failed to apply Secret {name:?}: {source}")]
    ApplySecret { name: String, source: kube::Error },
    #[error("failed to restart targets: {0}")]
    Restart(kube::Error),
    #[error("failed to patch status: {0}")]
    PatchStatus(kube::Error),
    #[error("failed to read from the Kubernetes API: {0}")]
    Read(kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error(
        "cannot revoke the certificates of this deleted resource: {0}; the finalizer stays until they are revoked"
    )]
    CleanupPlan(String),
    #[error("internal error (a bug in vaultkeeper; please report it): the reconcile panicked: {0}")]
    Panicked(String),
    /// A certificate was issued but not written, and revoking it failed too: it is recorded as
    /// superseded (revoked on the next reconcile) and the write retried.
    #[error("{source}; the unused certificate could not be revoked yet and will be")]
    Unwritten {
        orphan: SupersededCertificate,
        source: Box<Error>,
    },
}

impl Error {
    /// Condition reason, also the `result` label of the sync metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Issue { source, .. } | Self::Revoke { source, .. } => {
                report::vault_reason(source)
            }
            Self::Identity(IdentityError::Login { source, .. }) => report::vault_reason(source),
            Self::Identity(IdentityError::TokenRequest { .. }) => reasons::TOKEN_REQUEST_FAILED,
            Self::InvalidSpec(_) | Self::Key(_) | Self::CleanupPlan(_) => reasons::INVALID_SPEC,
            Self::BadCertificate { .. } => reasons::VAULT_UNAVAILABLE,
            Self::SecretConflict { .. } => reasons::SECRET_CONFLICT,
            Self::Panicked(_) => reasons::INTERNAL_ERROR,
            Self::Unwritten { source, .. } => source.reason(),
            _ => reasons::KUBERNETES_ERROR,
        }
    }
}

/// Starts the controller; `secrets` tells about changes of the Secrets in `ctx.cert_secrets`
/// (filled before this starts).
pub async fn run(
    ctx: Arc<Context>,
    scope: crate::scope::Scope,
    resources: kube::runtime::reflector::store::Writer<CertificateRequest>,
    secrets: ReflectHandle<Secret>,
    deleted: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Spec and finalizer changes trigger; status and label changes do not.
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

/// A failure to renew is retried before the certificate in the Secret expires, whatever the
/// backoff has grown to.
pub fn retry_within(cr: &CertificateRequest, _: &Error) -> Option<Duration> {
    let not_after = cr.status.as_ref()?.not_after.as_ref()?.0;
    crate::clock::retry_before_end(Some(not_after), Timestamp::now())
}

/// Errors that only a change of the resource can heal.
/// When the certificate expires (its status says), for the order of waiting for a permit: a process that
/// starts with many due at once serves the closest to their end first. A changed spec or no status
/// yet: now.
fn deadline(cr: &CertificateRequest) -> crate::context::Deadline {
    let status = cr.status.as_ref()?;
    if status.observed_generation != cr.metadata.generation {
        return None;
    }
    status.not_after.as_ref().map(|t| t.0)
}

fn waits_for_change(error: &Error) -> bool {
    matches!(
        error,
        Error::InvalidSpec(_) | Error::Key(_) | Error::SecretConflict { .. }
    )
}

pub async fn reconcile(cr: Arc<CertificateRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ctx = &ctx;
    crate::managed::with_finalizer(
        &ctx.client,
        FINALIZER,
        cr,
        |cr| async move { apply(&cr, ctx).await },
        |cr| async move {
            let result = cleanup(&cr, ctx).await;
            if let Err(err) = &result {
                report::deletion_blocked(
                    ctx,
                    &*cr,
                    cr.status.as_ref(),
                    err.reason(),
                    err,
                    "Revoke",
                )
                .await;
            }
            result
        },
        Error::Finalizer,
    )
    .await
}

fn plan_of(cr: &CertificateRequest, ctx: &Context) -> Result<Plan, Error> {
    desired::plan(cr, |name| {
        ctx.identities
            .connection(name)
            .map(|c| c.auth_mount.clone())
    })
    .map_err(Error::InvalidSpec)
}

/// The serial of the certificate a Secret holds.
fn serial_on(secret: Option<&Secret>) -> Option<String> {
    let data = secret?.data.as_ref()?;
    desired::cert_facts(&data.get(desired::TLS_CRT)?.0).map(|f| f.serial)
}

async fn apply(cr: &CertificateRequest, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = cr.namespace().unwrap_or_default();
    let dest = &cr.spec.destination.name;
    let mut secret = ctx
        .cert_secrets
        .get(&ObjectRef::new(dest).within(&namespace))
        .map(|s| (*s).clone());
    // The Secret is written before the status. When they disagree one cache lags behind our own
    // writes: read both from the API server rather than issue again.
    if secret.is_none() {
        // The cache holds managed Secrets only: a Secret of the same name that vaultkeeper does not
        // manage must be found before a certificate is issued for it, and refused.
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        secret = secrets.get_opt(dest).await.map_err(Error::Read)?;
    }
    let in_status = cr.status.as_ref().and_then(|s| s.serial_number.clone());
    let fresh;
    let cr = if in_status.is_some() && serial_on(secret.as_ref()) != in_status {
        let api: Api<CertificateRequest> = Api::namespaced(ctx.client.clone(), &namespace);
        fresh = api.get(&cr.name_any()).await.map_err(Error::Read)?;
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        secret = secrets.get_opt(dest).await.map_err(Error::Read)?;
        &fresh
    } else {
        cr
    };
    let status = cr.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    match sync(cr, secret.as_ref(), ctx, now).await {
        Ok((new_status, next)) => {
            patch_status(cr, ctx, &status, new_status).await?;
            ctx.succeeded(&cr.uid().unwrap_or_default());
            ctx.metrics.sync(KIND, "synced", started.elapsed());
            let wait = next.duration_since(now).clamp(
                SignedDuration::from_secs(1),
                SignedDuration::from_secs(3600),
            );
            Ok(Action::requeue(wait.unsigned_abs()))
        }
        Err(err) => {
            let mut message = err.to_string();
            if let (Some(serial), Some(not_after)) = (&status.serial_number, &status.not_after)
                && err.reason() != reasons::INVALID_SPEC
            {
                message.push_str(&format!(
                    "; the Secret keeps certificate {serial}, valid until {} ({})",
                    not_after.0,
                    time_left(not_after.0, now)
                ));
            }
            let was = conditions::find(&status.conditions, condition_types::READY)
                .map(|c| (c.status.clone(), c.reason.clone()));
            let t = Time(now);
            let mut conds = conditions::set(
                &status.conditions,
                Desired {
                    type_: condition_types::READY,
                    status: false,
                    reason: err.reason(),
                    message: message.clone(),
                },
                cr.metadata.generation,
                &t,
            );
            conds = conditions::set(
                &conds,
                Desired {
                    type_: condition_types::ISSUING,
                    status: true,
                    reason: err.reason(),
                    message: message.clone(),
                },
                cr.metadata.generation,
                &t,
            );
            let mut new_status = CertificateRequestStatus {
                conditions: conds,
                observed_generation: cr.metadata.generation,
                ..status.clone()
            };
            if let Error::Unwritten { orphan, .. } = &err {
                new_status.superseded.push(orphan.clone());
            }
            patch_status(cr, ctx, &status, new_status).await?;
            if was != Some(("False".to_owned(), err.reason().to_owned())) {
                publish(ctx, cr, EventType::Warning, err.reason(), message).await;
            }
            tracing::warn!(namespace = %namespace, name = cr.name_any(), reason = err.reason(), error = %err, "CertificateRequest not ready");
            Err(err)
        }
    }
}

/// "in 2h13m" or "expired 5m ago".
fn time_left(not_after: Timestamp, now: Timestamp) -> String {
    let left = not_after.duration_since(now);
    let secs = left.as_secs().unsigned_abs();
    let human = format!("{}h{:02}m{:02}s", secs / 3600, secs / 60 % 60, secs % 60);
    if left.is_negative() {
        format!("expired {human} ago")
    } else {
        format!("{human} left")
    }
}

/// Brings the certificate and the Secret in line; returns the new status and when to look again.
async fn sync(
    cr: &CertificateRequest,
    secret: Option<&Secret>,
    ctx: &Context,
    now: Timestamp,
) -> Result<(CertificateRequestStatus, Timestamp), Error> {
    let plan = plan_of(cr, ctx)?;
    let client = ctx
        .identities
        .connection(&plan.identity.connection)
        .expect("plan checked the connection")
        .client
        .as_ref();
    let namespace = cr.namespace().unwrap_or_default();
    let dest = &cr.spec.destination.name;
    if let Some(s) = secret
        && !desired::owned_by(s, cr)
    {
        return Err(Error::SecretConflict { name: dest.clone() });
    }
    let mut status = cr.status.clone().unwrap_or_default();
    let on_secret = serial_on(secret);
    if let (Some(s), Some(held)) = (secret, &on_secret) {
        status = desired::take_up_record(cr, status, s, held, now);
    }
    let stored = secret.and_then(|s| desired::stored(s, &plan.spec_digest));
    // The Secret's certificate is never revoked, whatever a record says.
    if let Some(held) = &on_secret {
        status.superseded.retain(|s| s.serial_number != *held);
    }
    // Certificates already due (an unwritten one whose revocation failed) go first, whatever this
    // reconcile does next.
    if status
        .superseded
        .iter()
        .any(|s| s.revoke_after.as_ref().is_some_and(|t| t.0 <= now))
    {
        retire(cr, ctx, &plan, client, &mut status, None, now).await;
    }
    let jitter = desired::jitter_of(&cr.uid().unwrap_or_default());
    let gathered = decide::Gathered {
        metadata_current: secret.is_some_and(|s| desired::metadata_current(s, cr)),
        stored,
        status_serial: status.serial_number.clone(),
        status_not_after: status.not_after.clone(),
        renew_before: plan.renew_before,
        jitter,
        revoke_superseded: cr.spec.revoke_superseded,
        has_restart_targets: !cr.spec.restart_targets.is_empty(),
    };
    // Decide, act, record.
    let issuing_note;
    if let Some(late) = decide::renewal_lateness(&gathered, now) {
        ctx.metrics.lease_lateness(KIND, "renew", late);
    }
    let facts = match decide::decide(&gathered, &status.superseded, now) {
        CertificateAction::Keep {
            facts,
            rewrite_metadata,
        } => {
            if rewrite_metadata {
                let secret = secret.expect("a stored certificate has a Secret");
                let data = secret
                    .data
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                let follow_up = desired::follow_up_on_secret(secret);
                write_secret(ctx, cr, data, &plan.spec_digest, &follow_up).await?;
            }
            issuing_note = (
                reasons::CERTIFICATE_VALID,
                format!("certificate {} is valid and matches the spec", facts.serial),
            );
            facts
        }
        CertificateAction::Issue {
            reason,
            superseded,
            restart,
        } => {
            let (facts, hmac) = issue(
                cr,
                ctx,
                &plan,
                client,
                secret,
                superseded.clone(),
                restart,
                now,
            )
            .await?;
            status = decide::with_issued(status, &hmac, superseded, restart, now);
            let message = format!(
                "Issued certificate {} from {} into Secret {:?}, valid until {}: {}",
                facts.serial,
                vault_path(cr),
                dest,
                facts.not_after,
                reason.describe()
            );
            publish(
                ctx,
                cr,
                EventType::Normal,
                reasons::CERTIFICATE_ISSUED,
                message.clone(),
            )
            .await;
            issuing_note = (reasons::CERTIFICATE_ISSUED, message);
            facts
        }
    };
    let renewal = desired::renew_at(&facts, plan.renew_before, jitter);
    status = decide::with_certificate(status, &facts, renewal);

    let advanced = ctx
        .restarts
        .advance(
            &ctx.client,
            &namespace,
            &cr.spec.restart_targets,
            status.pending_restart.clone(),
            now,
        )
        .await
        .map_err(Error::Restart)?;
    status.pending_restart = advanced.pending.clone();
    for target in &advanced.restarted {
        ctx.metrics.restart(KIND);
        publish(
            ctx,
            cr,
            EventType::Normal,
            reasons::RESTARTED,
            format!("Restarted {target} for the new certificate"),
        )
        .await;
    }
    // Waiting for the rollout is bounded from the moment the current certificate was made.
    // The rollout wait is bounded from when the certificate was written (recorded on the Secret;
    // its notBefore can lie far back, Vault backdates it).
    let since = secret
        .map(desired::follow_up_on_secret)
        .and_then(|f| f.issued_at)
        .filter(|_| serial_on(secret).as_deref() == Some(facts.serial.as_str()))
        .or(status.last_issue_time.as_ref().map(|t| t.0))
        .unwrap_or(facts.not_before)
        .min(now);
    status
        .superseded
        .retain(|s| s.serial_number != facts.serial);
    let retire_wake = retire(cr, ctx, &plan, client, &mut status, Some(since), now).await;

    let next = [Some(renewal), retire_wake, advanced.wake]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(renewal);
    let status = desired::settled_status(cr, status, &facts, issuing_note, advanced.condition, now);
    Ok((status, next))
}

/// `<mount>/issue/<role>` or `<mount>/sign/<role>`.
fn vault_path(cr: &CertificateRequest) -> String {
    let verb = match cr.spec.mode {
        IssueMode::Issue => "issue",
        IssueMode::Sign => "sign",
    };
    format!("{}/{verb}/{}", cr.spec.mount, cr.spec.role)
}

// The follow-up (superseded, restart) is part of the one write; naming them at the call reads best.
#[allow(clippy::too_many_arguments)]
/// Gets a certificate from Vault and writes it to the Secret, with `superseded` and (when
/// `restart`) the restart stamp recorded in the same apply; returns its facts and data HMAC.
/// In `sign` mode the key is made here (or, with rotationPolicy Never, read back from the
/// Secret) and only a CSR is sent.
async fn issue(
    cr: &CertificateRequest,
    ctx: &Context,
    plan: &Plan,
    client: &dyn VaultApi,
    secret: Option<&Secret>,
    superseded: Vec<SupersededCertificate>,
    restart: bool,
    now: Timestamp,
) -> Result<(CertFacts, String), Error> {
    let mount = cr.spec.mount.as_str();
    let role = cr.spec.role.as_str();
    let path = vault_path(cr);
    let failed = |source| Error::Issue {
        path: path.clone(),
        role: plan.identity.role.clone(),
        source,
    };
    let (cert, key_pem) = match cr.spec.mode {
        IssueMode::Issue => {
            let cert = ctx
                .identities
                .with_token(&plan.identity, client, |token| async move {
                    client
                        .pki_issue(&token, mount, role, &plan.options, &plan.key)
                        .await
                })
                .await?
                .map_err(failed)?;
            let key = cert.private_key.clone().unwrap_or_default();
            (cert, key)
        }
        IssueMode::Sign => {
            let settings = cr.spec.private_key.clone();
            let kept = (settings.rotation_policy == RotationPolicy::Never)
                .then(|| secret.and_then(|s| s.data.as_ref()?.get(desired::TLS_KEY).cloned()))
                .flatten()
                .and_then(|pem| Key::from_pem(&String::from_utf8_lossy(&pem.0), &settings));
            let key = match kept {
                Some(key) => key,
                None => tokio::task::spawn_blocking(move || Key::generate(&settings))
                    .await
                    .map_err(|e| Error::Key(e.to_string()))?
                    .map_err(Error::Key)?,
            };
            let csr = key.csr(&plan.names).map_err(Error::Key)?;
            let csr = csr.as_str();
            let cert = ctx
                .identities
                .with_token(&plan.identity, client, |token| async move {
                    client
                        .pki_sign(&token, mount, role, &plan.options, csr)
                        .await
                })
                .await?
                .map_err(failed)?;
            (cert, key.pem())
        }
    };
    let data = desired::tls_data(&cert, &key_pem);
    let Some(facts) = desired::cert_facts(&data[desired::TLS_CRT]) else {
        let failed = Error::BadCertificate { path: path.clone() };
        return Err(discard(
            cr,
            ctx,
            plan,
            client,
            &cert.serial_number,
            None,
            failed,
            now,
        )
        .await);
    };
    let hmac = data_hmac(&ctx.hmac_key, &data);
    let follow_up = desired::FollowUp {
        superseded,
        restart_for: restart.then(|| restart::stamp_of(&hmac)),
        issued_at: Some(now),
    };
    if let Err(failed) = write_secret(ctx, cr, data, &plan.spec_digest, &follow_up).await {
        // The answer may be lost while the write took effect: look before revoking what may now
        // be the Secret's certificate. Not knowing counts as written; the next reconcile sees.
        let api: Api<Secret> =
            Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
        let written = match api.get_opt(&cr.spec.destination.name).await {
            Ok(secret) => serial_on(secret.as_ref()).as_deref() == Some(facts.serial.as_str()),
            Err(_) => true,
        };
        if written {
            tracing::warn!(serial = %facts.serial, "the Secret apply failed but the Secret may hold the new certificate; it is not revoked");
            return Err(failed);
        }
        let not_after = Some(facts.not_after);
        return Err(discard(cr, ctx, plan, client, &facts.serial, not_after, failed, now).await);
    }
    tracing::info!(namespace = cr.namespace().unwrap_or_default(), name = cr.name_any(), serial = %facts.serial, not_after = %facts.not_after, "issued certificate");
    Ok((facts, hmac))
}

/// Revokes a certificate that nobody can use (it was not written) rather than leave it valid, and
/// returns `failed`; when the revocation fails too, the certificate goes into the status as
/// superseded (see [`Error::Unwritten`]) so it is revoked later.
// The certificate's identity and the failure are distinct inputs, named at the call.
#[allow(clippy::too_many_arguments)]
async fn discard(
    cr: &CertificateRequest,
    ctx: &Context,
    plan: &Plan,
    client: &dyn VaultApi,
    serial: &str,
    not_after: Option<Timestamp>,
    failed: Error,
    now: Timestamp,
) -> Error {
    let mount = cr.spec.mount.as_str();
    let revoked = ctx
        .identities
        .with_token(&plan.identity, client, |token| async move {
            client.pki_revoke(&token, mount, serial).await
        })
        .await;
    if matches!(revoked, Ok(Ok(()))) {
        return failed;
    }
    tracing::warn!(
        serial,
        "failed to revoke a certificate that could not be written; it is revoked later"
    );
    Error::Unwritten {
        orphan: SupersededCertificate {
            serial_number: serial.to_owned(),
            not_after: not_after.map(Time),
            revoke_after: Some(Time(now)),
        },
        source: Box::new(failed),
    }
}

async fn write_secret(
    ctx: &Context,
    cr: &CertificateRequest,
    data: BTreeMap<String, Vec<u8>>,
    spec_digest: &str,
    follow_up: &desired::FollowUp,
) -> Result<(), Error> {
    let secret = desired::build_secret(cr, data, spec_digest, follow_up);
    let name = cr.spec.destination.name.clone();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await
    .map_err(|source| Error::ApplySecret { name, source })?;
    ctx.metrics.kube_write("secret");
    Ok(())
}

/// Revokes superseded certificates once the restart targets rolled out (at once without
/// targets); drops those that ended on their own. Returns when to look again, if anything waits.
async fn retire(
    cr: &CertificateRequest,
    ctx: &Context,
    plan: &Plan,
    client: &dyn VaultApi,
    status: &mut CertificateRequestStatus,
    since: Option<Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    if status.superseded.is_empty() {
        return None;
    }
    let retiring: Vec<Retiring> = status
        .superseded
        .iter()
        .map(|s| Retiring {
            id: s.serial_number.clone(),
            ends: s.not_after.as_ref().map(|t| t.0),
            revoke_after: s.revoke_after.as_ref().map(|t| t.0),
        })
        .collect();
    // Gather: the rollout matters only while a certificate waits for it (and `since` says from
    // when).
    let rolled_out = match since {
        Some(since) if retirement::waits_for_rollout(&retiring, now) => {
            restart::rollouts_done(
                ctx,
                cr,
                &cr.spec.restart_targets,
                status.pending_restart.is_some(),
                since,
                now,
                "the superseded certificate is revoked anyway",
            )
            .await
        }
        _ => false,
    };
    // Decide (no grace: a superseded certificate goes once the workloads moved), then act.
    let mut decision = retirement::decide(retiring, rolled_out, Duration::ZERO, now);
    let mount = cr.spec.mount.as_str();
    for old in std::mem::take(&mut decision.revoke) {
        let serial = old.id.as_str();
        let revoked = ctx
            .identities
            .with_token(&plan.identity, client, |token| async move {
                client.pki_revoke(&token, mount, serial).await
            })
            .await;
        let error = match revoked {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        match error {
            None => {
                publish(
                    ctx,
                    cr,
                    EventType::Normal,
                    reasons::REVOKED,
                    format!("Revoked superseded certificate {serial}"),
                )
                .await;
            }
            Some(error) => {
                tracing::warn!(
                    serial,
                    error,
                    "failed to revoke a superseded certificate; retrying"
                );
                decision.revocation_failed(old, now);
            }
        }
    }
    status.superseded = decision
        .keep
        .into_iter()
        .map(|r| SupersededCertificate {
            serial_number: r.id,
            not_after: r.ends.map(Time),
            revoke_after: r.revoke_after.map(Time),
        })
        .collect();
    decision.wake
}

/// Revokes the current and superseded certificates when `revokeOnDelete` is set.
async fn cleanup(cr: &CertificateRequest, ctx: &Context) -> Result<Action, Error> {
    let namespace = cr.namespace().unwrap_or_default();
    if !cr.spec.revoke_on_delete {
        return Ok(Action::await_change());
    }
    let status = cr.status.clone().unwrap_or_default();
    let mut serials: Vec<String> = status
        .superseded
        .iter()
        .map(|s| s.serial_number.clone())
        .collect();
    let secret = ctx
        .cert_secrets
        .get(&ObjectRef::new(&cr.spec.destination.name).within(&namespace));
    // The Secret's record covers a status write that was lost.
    let on_secret = secret.as_deref().map(desired::follow_up_on_secret);
    serials.extend(
        on_secret
            .into_iter()
            .flat_map(|f| f.superseded)
            .map(|s| s.serial_number),
    );
    serials.extend(status.serial_number.clone());
    serials.extend(serial_on(secret.as_deref()));
    serials.sort();
    serials.dedup();
    if serials.is_empty() {
        return Ok(Action::await_change());
    }
    // A plan that fails (its connection was removed from the operator's configuration) keeps the
    // finalizer: the certificates are still valid. The error is retried with backoff.
    let plan = plan_of(cr, ctx).map_err(|e| Error::CleanupPlan(e.to_string()))?;
    let client = ctx
        .identities
        .connection(&plan.identity.connection)
        .expect("plan checked the connection")
        .client
        .as_ref();
    let mount = cr.spec.mount.as_str();
    for serial in &serials {
        let serial = serial.as_str();
        let revoked = ctx
            .identities
            .with_token(&plan.identity, client, |token| async move {
                client.pki_revoke(&token, mount, serial).await
            })
            .await?;
        match revoked {
            Ok(()) => {
                tracing::info!(namespace = %namespace, name = cr.name_any(), serial, "revoked certificate on delete")
            }
            // The mount does not know the serial (or no longer exists): nothing left to revoke.
            Err(VaultError::Rejected { status: 400, .. } | VaultError::NotFound { .. }) => {
                tracing::warn!(namespace = %namespace, name = cr.name_any(), serial, "Vault does not know the certificate; nothing to revoke")
            }
            Err(source) => {
                return Err(Error::Revoke {
                    serial: serial.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(Action::await_change())
}

async fn patch_status(
    cr: &CertificateRequest,
    ctx: &Context,
    current: &CertificateRequestStatus,
    new: CertificateRequestStatus,
) -> Result<(), Error> {
    report::patch_status(ctx, cr, cr.status.is_some(), current, &new)
        .await
        .map_err(Error::PatchStatus)
}

async fn publish(
    ctx: &Context,
    cr: &CertificateRequest,
    type_: EventType,
    reason: &str,
    note: String,
) {
    report::publish(ctx, cr, type_, reason, "Certificate", note).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_waits_for_its_permit_by_its_end_and_a_changed_spec_as_due_now() {
        let mut cr: CertificateRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "vaultkeeper.dev/v1alpha1", "kind": "CertificateRequest",
            "metadata": {"name": "web", "namespace": "apps", "generation": 2},
            "spec": {"auth": {"role": "app", "serviceAccountName": "web"}, "mount": "pki",
                     "role": "web", "commonName": "web.example.com", "destination": {"name": "web-tls"}},
        }))
        .unwrap();
        assert_eq!(deadline(&cr), None, "no status yet");
        let not_after: Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
        cr.status = Some(CertificateRequestStatus {
            observed_generation: Some(2),
            not_after: Some(Time(not_after)),
            ..Default::default()
        });
        assert_eq!(deadline(&cr), Some(not_after));
        cr.metadata.generation = Some(3);
        assert_eq!(deadline(&cr), None, "a changed spec is due now");
    }

    #[test]
    fn time_left_reads_well() {
        let now: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        assert_eq!(
            time_left(now + SignedDuration::from_secs(2 * 3600 + 13 * 60 + 5), now),
            "2h13m05s left"
        );
        assert_eq!(
            time_left(now - SignedDuration::from_secs(300), now),
            "expired 0h05m00s ago"
        );
    }
}
