//! The mocked API-server tier: the controllers' reconciles run against an in-memory Kubernetes API
//! (`tower_test::mock`) and a fake Vault, both scriptable to fail a chosen request or to stop
//! the operator between any two steps. Each scenario checks what users depend on through a
//! partial failure: no leaked lease or certificate, no lost or repeated restart, no revocation
//! before the restarted workloads rolled out, and a Secret never emptied or set back to older
//! data.

mod support;

use crds::v1alpha1::{
    CertificateRequest, CertificateRequestStatus, DynamicCredential, DynamicCredentialStatus,
    VaultSecret, VaultSecretStatus, condition_types, reasons,
};
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::json;
use vaultkeeper_operator::certificate::{self, desired::cert_facts};
use vaultkeeper_operator::conditions;
use vaultkeeper_operator::dynamic_credential::{self, desired::LEASE_ID_ANNOTATION};
use vaultkeeper_operator::vault_secret;

use support::fake_api::{deployment_path, resource_path, secret_path};
use support::{NS, Operator, Outcome, World, stamp_of_data, text_data};

/// The workload that consumes every Secret of these tests.
const TARGET: &str = "web";
/// Upper bound of reconciles for a sequence to settle; the sequences here need four or five.
const MAX_ROUNDS: usize = 12;

/// The resources under test, one of each kind.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Dynamic,
    Certificate,
    KeyValue,
}

impl Kind {
    fn path(self) -> String {
        match self {
            Self::Dynamic => resource_path(NS, "dynamiccredentials", "db"),
            Self::Certificate => resource_path(NS, "certificaterequests", "web"),
            Self::KeyValue => resource_path(NS, "vaultsecrets", "config"),
        }
    }

    fn secret(self) -> &'static str {
        match self {
            Self::Dynamic => "db-creds",
            Self::Certificate => "web-tls",
            Self::KeyValue => "config",
        }
    }

    /// The keys whose values are the credential: a Secret written without them is emptied.
    fn credential_keys(self) -> &'static [&'static str] {
        match self {
            Self::Dynamic => &["username", "password"],
            Self::Certificate => &["tls.crt", "tls.key"],
            Self::KeyValue => &["password"],
        }
    }

    /// Creates the resource (its finalizer already added, as the first reconcile would).
    fn create(self, world: &World) {
        let restart_targets = json!([{"kind": "Deployment", "name": TARGET}]);
        let auth = json!({"role": "app", "serviceAccountName": "web"});
        let (kind, name, finalizers, spec) = match self {
            Self::Dynamic => (
                "DynamicCredential",
                "db",
                json!([dynamic_credential::FINALIZER]),
                json!({
                    "auth": auth,
                    "source": {"mount": "database", "role": "app"},
                    "rotationGracePeriod": "0s",
                    "destination": {"name": self.secret()},
                    "restartTargets": restart_targets,
                }),
            ),
            Self::Certificate => (
                "CertificateRequest",
                "web",
                json!([certificate::FINALIZER]),
                json!({
                    "auth": auth,
                    "mount": "pki",
                    "role": "web",
                    "commonName": "web.app.svc",
                    "destination": {"name": self.secret()},
                    "restartTargets": restart_targets,
                }),
            ),
            Self::KeyValue => (
                "VaultSecret",
                "config",
                json!([]),
                json!({
                    "auth": auth,
                    "source": {"engine": "kv-v2", "mount": "secret", "path": "app/config"},
                    "refreshInterval": "1m",
                    "destination": {"name": self.secret()},
                    "restartTargets": restart_targets,
                }),
            ),
        };
        world.api.put(
            &self.path(),
            json!({
                "apiVersion": "vaultkeeper.dev/v1alpha1",
                "kind": kind,
                "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "finalizers": finalizers},
                "spec": spec,
            }),
        );
    }

    /// A spec change that calls for a new credential (and so a restart and a revocation).
    fn change_spec(self, world: &World) {
        world.api.edit(&self.path(), |r| match self {
            Self::Dynamic => r["spec"]["source"]["role"] = json!("app2"),
            Self::Certificate => r["spec"]["commonName"] = json!("web2.app.svc"),
            Self::KeyValue => unreachable!("a VaultSecret's new data comes from Vault"),
        });
    }
}

/// The credential a Secret holds: the lease id, or the certificate serial, or the KV data.
fn held_by(kind: Kind, secret: &Secret) -> Option<String> {
    match kind {
        Kind::Dynamic => secret.annotations().get(LEASE_ID_ANNOTATION).cloned(),
        Kind::Certificate => {
            let pem = secret.data.as_ref()?.get("tls.crt")?;
            cert_facts(&pem.0).map(|f| f.serial)
        }
        Kind::KeyValue => text_data(secret).get("password").cloned(),
    }
}

/// What order an issued credential came in, from the data written (`u-7` → 7, serial → its
/// number), so a Secret write with older data than the one before can be told.
fn order_of(kind: Kind, data: &std::collections::BTreeMap<String, String>) -> u64 {
    match kind {
        Kind::Dynamic => data["username"]
            .trim_start_matches("u-")
            .parse()
            .expect("a credential of the fake"),
        Kind::Certificate => {
            let facts = cert_facts(data["tls.crt"].as_bytes()).expect("a certificate");
            u64::from_str_radix(&facts.serial.replace(':', ""), 16).expect("a hex serial")
        }
        Kind::KeyValue => match data["password"].as_str() {
            "one" => 1,
            "two" => 2,
            other => panic!("unexpected KV data {other}"),
        },
    }
}

fn dc_status(world: &World) -> DynamicCredentialStatus {
    world
        .api
        .get::<DynamicCredential>(&Kind::Dynamic.path())
        .expect("the DynamicCredential")
        .status
        .unwrap_or_default()
}

fn cert_status(world: &World) -> CertificateRequestStatus {
    world
        .api
        .get::<CertificateRequest>(&Kind::Certificate.path())
        .expect("the CertificateRequest")
        .status
        .unwrap_or_default()
}

fn vs_status(world: &World) -> VaultSecretStatus {
    world
        .api
        .get::<VaultSecret>(&Kind::KeyValue.path())
        .expect("the VaultSecret")
        .status
        .unwrap_or_default()
}

/// `(status, reason)` of a status's Ready condition.
fn ready(conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> (String, String) {
    conditions::find(conds, condition_types::READY)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

/// Operators, one after another, over one world: a stopped one is replaced by a fresh process.
struct Run {
    world: World,
    op: Operator,
    /// Steps at which the Deployment controller (played by the test) finished a rollout.
    rollouts_finished: Vec<u64>,
}

impl Run {
    fn new(world: World) -> Self {
        let op = Operator::start(&world);
        Self {
            world,
            op,
            rollouts_finished: Vec::new(),
        }
    }

    /// A world with the restart target and the resource of `kind`.
    fn of(kind: Kind) -> Self {
        let world = World::new();
        world.deployment(TARGET);
        if kind == Kind::KeyValue {
            world
                .vault
                .kv_put("secret", "app/config", &[("password", "one")]);
        }
        kind.create(&world);
        Self::new(world)
    }

    /// A new operator process: empty memory and caches, the same API and Vault.
    fn restart_operator(&mut self) {
        self.world.steps.resume();
        self.op = Operator::start(&self.world);
    }

    async fn dc(&mut self) -> Outcome<dynamic_credential::Error> {
        self.op.sync_caches(&self.world);
        let dc = self.world.api.get(&Kind::Dynamic.path()).expect("resource");
        self.op
            .reconcile(&self.world, dc, dynamic_credential::reconcile)
            .await
    }

    async fn cert(&mut self) -> Outcome<certificate::Error> {
        self.op.sync_caches(&self.world);
        let cr = self
            .world
            .api
            .get(&Kind::Certificate.path())
            .expect("resource");
        self.op
            .reconcile(&self.world, cr, certificate::reconcile)
            .await
    }

    async fn vs(&mut self) -> Outcome<vault_secret::Error> {
        self.op.sync_caches(&self.world);
        let vs = self
            .world
            .api
            .get(&Kind::KeyValue.path())
            .expect("resource");
        self.op
            .reconcile(&self.world, vs, vault_secret::reconcile)
            .await
    }

    /// One reconcile of `kind`; whether the operator stopped in it.
    async fn round(&mut self, kind: Kind) -> bool {
        let stopped = match kind {
            Kind::Dynamic => matches!(self.dc().await, Outcome::Stopped),
            Kind::Certificate => matches!(self.cert().await, Outcome::Stopped),
            Kind::KeyValue => matches!(self.vs().await, Outcome::Stopped),
        };
        if stopped {
            self.restart_operator();
        }
        stopped
    }

    /// Plays the Deployment controller between reconciles: a restarted workload finishes its
    /// rollout.
    fn roll_out(&mut self) {
        if self.world.rollout_running(TARGET) {
            let at = self.world.finish_rollout(TARGET);
            self.rollouts_finished.push(at);
        }
    }

    /// Reconciles `kind` as the controller would until nothing is left to do, restarting the
    /// operator whenever it stopped.
    async fn settle(&mut self, kind: Kind) {
        for _ in 0..MAX_ROUNDS {
            self.round(kind).await;
            self.roll_out();
            if self.settled(kind) {
                return;
            }
        }
        panic!(
            "{kind:?} did not settle in {MAX_ROUNDS} reconciles\n{}",
            self.world.steps.dump()
        );
    }

    /// Ready for the current generation, the status naming what the Secret holds, and nothing
    /// pending: no restart, no rollout, nothing waiting for revocation.
    fn settled(&self, kind: Kind) -> bool {
        let held = self
            .world
            .secret(kind.secret())
            .and_then(|s| held_by(kind, &s));
        let generation = self
            .world
            .api
            .raw(&kind.path())
            .and_then(|r| r.pointer("/metadata/generation")?.as_i64());
        let quiet = !self.world.rollout_running(TARGET);
        match kind {
            Kind::Dynamic => {
                let s = dc_status(&self.world);
                ready(&s.conditions).0 == "True"
                    && s.observed_generation == generation
                    && held.is_some()
                    && s.lease_id == held
                    && s.retiring_leases.is_empty()
                    && s.pending_restart.is_none()
                    && quiet
            }
            Kind::Certificate => {
                let s = cert_status(&self.world);
                ready(&s.conditions).0 == "True"
                    && s.observed_generation == generation
                    && held.is_some()
                    && s.serial_number == held
                    && s.superseded.is_empty()
                    && s.pending_restart.is_none()
                    && quiet
            }
            Kind::KeyValue => {
                let s = vs_status(&self.world);
                let hmac = self.world.secret(kind.secret()).map(|secret| {
                    vaultkeeper_operator::digest::existing_hmac(&support::HMAC_KEY, &secret)
                });
                ready(&s.conditions).0 == "True"
                    && s.observed_generation == generation
                    && s.synced_version == Some(self.world.vault.kv_version("secret", "app/config"))
                    && hmac.is_some()
                    && s.data_hmac == hmac
                    && s.pending_restart.is_none()
                    && quiet
            }
        }
    }

    /// What the Secret of `kind` holds now.
    fn held(&self, kind: Kind) -> String {
        self.world
            .secret(kind.secret())
            .and_then(|s| held_by(kind, &s))
            .expect("the Secret holds a credential")
    }

    /// The Secret of `kind`, which must exist.
    fn secret(&self, kind: Kind) -> Secret {
        self.world.secret(kind.secret()).expect("the Secret")
    }

    /// Leases (or certificates) issued and not revoked, sorted.
    fn live(&self, kind: Kind) -> Vec<String> {
        let mut live = match kind {
            Kind::Dynamic => self.world.vault.live_leases(),
            Kind::Certificate => self.world.vault.live_certificates(),
            Kind::KeyValue => Vec::new(),
        };
        live.sort();
        live
    }

    /// When `old` (a lease id or serial) was revoked, if it was.
    fn revoked_at(&self, kind: Kind, old: &str) -> Option<u64> {
        match kind {
            Kind::Dynamic => self.world.vault.lease(old).revoked_at,
            Kind::Certificate => self.world.vault.certificate(old).revoked_at,
            Kind::KeyValue => None,
        }
    }

    /// The guarantees of a replacement of `old` by whatever the Secret holds now, once settled:
    /// only the Secret's credential (and `orphans`) is live; `old` was revoked after the restarted
    /// Deployment finished its rollout; the Deployment was restarted exactly once since
    /// `restarts_before`, for the new data; every write of the Secret had data, never older than
    /// the write before.
    fn assert_replaced(&self, kind: Kind, old: &str, restarts_before: usize, orphans: &[String]) {
        let dump = self.world.steps.dump();
        let current = self.held(kind);
        assert_ne!(current, old, "a new credential was written\n{dump}");
        assert_eq!(
            self.revoked_at(kind, &current),
            None,
            "the credential in the Secret is not revoked\n{dump}"
        );
        let mut expected: Vec<String> = orphans.iter().cloned().chain([current]).collect();
        expected.sort();
        assert_eq!(self.live(kind), expected, "no leaked credential\n{dump}");
        let revoked = self
            .revoked_at(kind, old)
            .unwrap_or_else(|| panic!("the replaced credential {old} was revoked\n{dump}"));
        let finished = self
            .rollouts_finished
            .iter()
            .rev()
            .find(|f| **f < revoked)
            .unwrap_or_else(|| {
                panic!("{old} was revoked (step {revoked}) before any rollout finished\n{dump}")
            });
        let restarts = self.world.restarts_of(TARGET);
        assert_eq!(
            restarts[restarts_before..],
            [stamp_of_data(&self.secret(kind))],
            "exactly one restart, for the new data\n{dump}"
        );
        assert!(
            *finished > restart_step(&self.world, restarts.len()),
            "{old} was revoked after the rollout of the restart for the new data\n{dump}"
        );
        self.assert_secret_writes_move_forward(kind);
    }

    fn assert_secret_writes_move_forward(&self, kind: Kind) {
        let writes = self.world.secret_writes(kind.secret());
        let order: Vec<u64> = writes
            .iter()
            .map(|data| {
                assert!(
                    kind.credential_keys()
                        .iter()
                        .all(|k| data.get(*k).is_some_and(|v| !v.is_empty())),
                    "Secret written without its credential: {data:?}"
                );
                order_of(kind, data)
            })
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "the Secret was set back to older data: {order:?}\n{}",
            self.world.steps.dump()
        );
    }
}

/// The step of the `n`-th (1-based) restart of the target.
fn restart_step(world: &World, n: usize) -> u64 {
    world
        .api
        .writes_to(&deployment_path(NS, TARGET))
        .iter()
        .filter(|w| {
            w.body
                .pointer("/spec/template/metadata/annotations")
                .is_some()
        })
        .nth(n - 1)
        .map(|w| w.step)
        .expect("the restart")
}

fn lease_of(status: &DynamicCredentialStatus) -> String {
    status.lease_id.clone().expect("a lease in the status")
}

/// A settled DynamicCredential whose spec then changed: the next reconcile rotates.
async fn dc_before_rotation() -> (Run, String) {
    let mut run = Run::of(Kind::Dynamic);
    run.settle(Kind::Dynamic).await;
    let old = run.held(Kind::Dynamic);
    Kind::Dynamic.change_spec(&run.world);
    (run, old)
}

// ---------------------------------------------------------------------------------------------
// DynamicCredential

#[tokio::test]
async fn dc_status_patch_lost_after_rotation_keeps_restart_and_revocation() {
    let (mut run, old) = dc_before_rotation().await;
    run.world
        .api
        .fail_next(Method::PATCH, "/dynamiccredentials/db/status", 500);
    let err = run.dc().await.expect_failed();
    assert!(
        matches!(err, dynamic_credential::Error::StatusUnwritten { .. }),
        "{err}"
    );
    let new = run.held(Kind::Dynamic);
    assert_ne!(new, old, "the new credential is in the Secret");
    assert_eq!(
        dc_status(&run.world).lease_id,
        Some(old.clone()),
        "the status write was lost"
    );
    assert_eq!(
        run.world.restarts_of(TARGET).len(),
        1,
        "restarted with the new credential"
    );

    // The next reconcile takes the Secret's record up: the old lease waits for the rollout.
    run.dc().await.expect_done();
    let status = dc_status(&run.world);
    assert_eq!(lease_of(&status), new);
    assert_eq!(
        status
            .retiring_leases
            .iter()
            .map(|r| r.lease_id.as_str())
            .collect::<Vec<_>>(),
        [old.as_str()]
    );
    assert_eq!(
        run.live(Kind::Dynamic).len(),
        2,
        "the old lease lives on during the rollout"
    );
    assert_eq!(run.world.restarts_of(TARGET).len(), 1, "no second restart");

    run.settle(Kind::Dynamic).await;
    run.assert_replaced(Kind::Dynamic, &old, 0, &[]);
}

#[tokio::test]
async fn dc_failed_restart_patch_is_retried_and_the_old_lease_waits_for_it() {
    let (mut run, old) = dc_before_rotation().await;
    run.world
        .api
        .fail_next(Method::PATCH, &format!("/deployments/{TARGET}"), 500);
    let err = run.dc().await.expect_failed();
    assert!(
        matches!(err, dynamic_credential::Error::Restart { .. }),
        "{err}"
    );
    assert!(run.world.restarts_of(TARGET).is_empty());
    assert!(
        run.live(Kind::Dynamic).contains(&old),
        "no revocation without the restart"
    );

    run.dc().await.expect_done();
    assert_eq!(
        run.world.restarts_of(TARGET),
        [stamp_of_data(&run.secret(Kind::Dynamic))],
        "the restart was not lost"
    );
    assert!(
        run.live(Kind::Dynamic).contains(&old),
        "the rollout has not finished"
    );
    run.dc().await.expect_done();
    assert!(
        run.live(Kind::Dynamic).contains(&old),
        "still rolling out: the old lease stays"
    );

    run.settle(Kind::Dynamic).await;
    run.assert_replaced(Kind::Dynamic, &old, 0, &[]);
}

#[tokio::test]
async fn dc_vault_outage_on_issue_leaves_the_secret_and_on_revoke_is_retried() {
    let (mut run, old) = dc_before_rotation().await;
    let before = run.secret(Kind::Dynamic);
    run.world.vault.fail_next("issue_leased", 503);
    let err = run.dc().await.expect_failed();
    assert!(
        matches!(err, dynamic_credential::Error::Issue { .. }),
        "{err}"
    );
    let after = run.secret(Kind::Dynamic);
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "Secret untouched"
    );
    assert_eq!(after.data, before.data);
    let status = dc_status(&run.world);
    assert_eq!(
        ready(&status.conditions),
        ("False".to_owned(), reasons::VAULT_UNAVAILABLE.to_owned())
    );
    assert_eq!(run.live(Kind::Dynamic), vec![old.clone()], "no new lease");
    assert!(run.world.restarts_of(TARGET).is_empty());

    // The rotation goes through; the revocation after the rollout meets an outage once.
    run.dc().await.expect_done();
    run.roll_out();
    run.world.vault.fail_next("revoke_lease", 503);
    run.dc().await.expect_done();
    let status = dc_status(&run.world);
    assert!(
        status.retiring_leases.iter().any(|r| r.lease_id == old),
        "a failed revocation is kept for later"
    );
    assert!(run.live(Kind::Dynamic).contains(&old));

    run.settle(Kind::Dynamic).await;
    run.assert_replaced(Kind::Dynamic, &old, 0, &[]);
}

#[tokio::test]
async fn dc_deleted_after_a_lost_status_write_revokes_the_lease_only_its_secret_records() {
    let (mut run, old) = dc_before_rotation().await;
    run.world
        .api
        .fail_next(Method::PATCH, "/dynamiccredentials/db/status", 500);
    run.dc().await.expect_failed();
    let new = run.held(Kind::Dynamic);
    assert_ne!(new, old, "the new lease is on the Secret only");
    assert_eq!(dc_status(&run.world).lease_id, Some(old.clone()));
    // Deleted now: its status is one lease behind its Secret.
    run.world.api.edit(&Kind::Dynamic.path(), |r| {
        r["metadata"]["deletionTimestamp"] = json!("2026-12-03T12:00:00Z")
    });
    let _ = run.dc().await;
    assert_eq!(
        run.live(Kind::Dynamic),
        Vec::<String>::new(),
        "both the lease in the status ({old}) and the one on the Secret ({new}) are revoked"
    );
}

#[tokio::test]
async fn dc_secret_apply_conflict_revokes_the_new_lease() {
    let (mut run, old) = dc_before_rotation().await;
    let before = run.secret(Kind::Dynamic);
    run.world
        .api
        .fail_next(Method::PATCH, "/secrets/db-creds", 409);
    let err = run.dc().await.expect_failed();
    assert!(
        matches!(err, dynamic_credential::Error::ApplySecret { .. }),
        "{err}"
    );
    assert_eq!(
        run.secret(Kind::Dynamic).resource_version(),
        before.resource_version(),
        "the existing Secret is untouched"
    );
    let leases = run.world.vault.leases();
    let unwritten = leases.last().expect("a lease was issued");
    assert_ne!(unwritten.id, old);
    assert!(
        unwritten.revoked_at.is_some(),
        "the unwritten lease was revoked"
    );
    assert_eq!(run.live(Kind::Dynamic), vec![old.clone()]);
    assert!(run.world.restarts_of(TARGET).is_empty());

    run.settle(Kind::Dynamic).await;
    run.assert_replaced(Kind::Dynamic, &old, 0, &[]);
}

#[tokio::test]
async fn dc_unmanaged_secret_is_refused_before_anything_is_issued() {
    let world = World::new();
    world.deployment(TARGET);
    let mine = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-creds", "namespace": NS}, "data": {"password": "bWluZQ=="}});
    world.api.put(&secret_path(NS, "db-creds"), mine);
    Kind::Dynamic.create(&world);
    let mut run = Run::new(world);
    let before = run.secret(Kind::Dynamic);
    let err = run.dc().await.expect_failed();
    assert!(
        matches!(err, dynamic_credential::Error::SecretConflict { .. }),
        "{err}"
    );
    assert_eq!(run.world.vault.calls("issue_leased"), 0, "nothing issued");
    let after = run.secret(Kind::Dynamic);
    assert_eq!(after.resource_version(), before.resource_version());
    assert_eq!(text_data(&after)["password"], "mine");
    assert_eq!(
        ready(&dc_status(&run.world).conditions),
        ("False".to_owned(), reasons::SECRET_CONFLICT.to_owned())
    );
}

/// A settled DynamicCredential whose recorded expiry passed (renewals whose status writes were
/// lost, as in an API-server outage) and whose lease is at its end in Vault: listed, no time left,
/// its revocation still queued.
async fn dc_at_the_end_of_its_lease() -> (Run, String) {
    let mut run = Run::of(Kind::Dynamic);
    run.settle(Kind::Dynamic).await;
    let old = run.held(Kind::Dynamic);
    run.world.api.edit(&Kind::Dynamic.path(), |r| {
        r["status"]["issueTime"] = json!("2020-01-01T00:00:00Z");
        r["status"]["expiryTime"] = json!("2020-01-01T01:00:00Z");
    });
    run.world.vault.end_lease(&old);
    (run, old)
}

/// No two of the credentials issued were live at the same step.
fn never_two_live(run: &Run) {
    let leases = run.world.vault.leases();
    for a in &leases {
        for b in &leases {
            let overlap = a.id != b.id
                && a.issued_at < b.issued_at
                && a.revoked_at.is_none_or(|end| end > b.issued_at);
            assert!(
                !overlap,
                "{} was still live when {} was issued\n{}",
                a.id,
                b.id,
                run.world.steps.dump()
            );
        }
    }
}

/// A settled DynamicCredential whose renewal is due: an hour-long lease with a minute left.
async fn dc_due_for_renewal() -> (Run, String) {
    let mut run = Run::of(Kind::Dynamic);
    run.settle(Kind::Dynamic).await;
    let lease = run.held(Kind::Dynamic);
    let now = k8s_openapi::jiff::Timestamp::now();
    run.world.api.edit(&Kind::Dynamic.path(), |r| {
        r["status"]["issueTime"] =
            json!((now - k8s_openapi::jiff::SignedDuration::from_secs(3540)).to_string());
        r["status"]["expiryTime"] =
            json!((now + k8s_openapi::jiff::SignedDuration::from_secs(60)).to_string());
    });
    (run, lease)
}

#[tokio::test]
async fn dc_renewal_whose_status_write_fails_is_retried_before_the_lease_is_due() {
    let (mut run, lease) = dc_due_for_renewal().await;
    let renewals = run.world.vault.calls("renew_lease");
    run.world
        .api
        .fail_next(Method::PATCH, "/dynamiccredentials/db/status", 503);
    let err = run.dc().await.expect_failed();
    assert_eq!(
        run.world.vault.calls("renew_lease"),
        renewals + 1,
        "renewed in Vault"
    );
    let within = err
        .retry_within()
        .unwrap_or_else(|| panic!("no retry bound: {err}"));
    // The renewed lease is due again at renewAtPercent (67, jittered by at most 3) of its hour.
    assert!(
        within <= support::fake_vault::LEASE_TTL.mul_f64(0.70),
        "retried within {within:?}, not before the renewed lease is due again: {err}"
    );
    assert_eq!(run.held(Kind::Dynamic), lease, "the same credential");
    run.settle(Kind::Dynamic).await;
    assert_eq!(run.live(Kind::Dynamic), [lease]);
}

#[tokio::test]
async fn dc_failed_renewal_is_retried_before_the_lease_ends_whatever_the_backoff() {
    let (mut run, lease) = dc_due_for_renewal().await;
    run.world.vault.fail_next("renew_lease", 503);
    let err = run.dc().await.expect_failed();
    assert!(
        matches!(err, dynamic_credential::Error::Renew { .. }),
        "{err}"
    );
    let dc: DynamicCredential = run
        .world
        .api
        .get(&Kind::Dynamic.path())
        .expect("the DynamicCredential");
    let within = dynamic_credential::retry_within(&dc, &err)
        .unwrap_or_else(|| panic!("no retry bound for a lease with a minute left: {err}"));
    assert!(
        within <= Duration::from_secs(20),
        "retried within {within:?}, when the lease ends in 60 s"
    );
    assert_eq!(
        run.live(Kind::Dynamic),
        std::slice::from_ref(&lease),
        "nothing issued"
    );
    run.settle(Kind::Dynamic).await;
    assert_eq!(
        run.held(Kind::Dynamic),
        lease,
        "renewed on the retry, the same credential"
    );
}

/// A restarted operator reconciles every resource once. One that is not due writes nothing: times
/// the API server keeps in whole seconds must not read as a changed status (a start used to write
/// every DynamicCredential's status, so an operator restarted every few seconds never reached the
/// last of 1,000 and their leases ended in use: `make chaos-kill`).
#[tokio::test]
async fn a_restarted_operator_writes_nothing_for_resources_not_due() {
    for kind in [Kind::Dynamic, Kind::Certificate, Kind::KeyValue] {
        let mut run = Run::of(kind);
        run.settle(kind).await;
        // The reconcile the Secret's own watch event brings (a new certificate's Issuing
        // condition turns to CertificateValid there, once).
        run.round(kind).await;
        run.restart_operator();
        let writes = run
            .world
            .api
            .log()
            .iter()
            .filter(|l| l.method != Method::GET)
            .count();
        match kind {
            Kind::Dynamic => drop(run.dc().await.expect_done()),
            Kind::Certificate => drop(run.cert().await.expect_done()),
            Kind::KeyValue => drop(run.vs().await.expect_done()),
        }
        // (A new process logs in again: a TokenRequest per identity, which writes nothing.)
        let after: Vec<_> = run
            .world
            .api
            .log()
            .into_iter()
            .filter(|l| l.method != Method::GET)
            .skip(writes)
            .filter(|l| !l.path.ends_with("/token"))
            .collect();
        assert!(
            after.is_empty(),
            "{kind:?}: a restart wrote {:?}",
            after
                .iter()
                .map(|l| (l.method.clone(), l.path.clone(), l.body.to_string()))
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn dc_lease_at_its_end_is_revoked_before_its_replacement_is_issued() {
    let (mut run, old) = dc_at_the_end_of_its_lease().await;
    run.dc().await.expect_done();
    let new = run.held(Kind::Dynamic);
    assert_ne!(new, old, "replaced");
    never_two_live(&run);
    run.settle(Kind::Dynamic).await;
    assert_eq!(run.live(Kind::Dynamic), [new]);
}

#[tokio::test]
async fn dc_failed_revocation_of_a_lease_at_its_end_is_retried_after_the_replacement() {
    let (mut run, old) = dc_at_the_end_of_its_lease().await;
    run.world.vault.fail_next("revoke_lease", 503);
    run.dc().await.expect_done();
    let new = run.held(Kind::Dynamic);
    assert_ne!(
        new, old,
        "the replacement is not held up by the failed revocation"
    );
    run.settle(Kind::Dynamic).await;
    assert!(
        run.revoked_at(Kind::Dynamic, &old).is_some(),
        "{old} revoked later"
    );
    assert_eq!(run.live(Kind::Dynamic), [new]);
}

#[tokio::test]
async fn dc_lagging_caches_neither_issue_nor_restart_again() {
    let (mut run, old) = dc_before_rotation().await;
    let stale_secret = run.secret(Kind::Dynamic);
    let stale_dc: DynamicCredential = run.world.api.get(&Kind::Dynamic.path()).expect("dc");
    run.dc().await.expect_done();
    let new = run.held(Kind::Dynamic);
    let issued = run.world.vault.calls("issue_leased");

    // The Secret cache still holds the old Secret while the status names the new lease.
    run.op.fill_caches(vec![stale_secret]);
    let fresh: DynamicCredential = run.world.api.get(&Kind::Dynamic.path()).expect("dc");
    run.op
        .reconcile(&run.world, fresh, dynamic_credential::reconcile)
        .await
        .expect_done();
    // The resource cache still holds the status from before the rotation.
    run.op.sync_caches(&run.world);
    run.op
        .reconcile(&run.world, stale_dc, dynamic_credential::reconcile)
        .await
        .expect_done();

    assert_eq!(
        run.world.vault.calls("issue_leased"),
        issued,
        "no new credential"
    );
    assert_eq!(run.held(Kind::Dynamic), new);
    assert_eq!(run.world.restarts_of(TARGET).len(), 1, "no second restart");
    assert!(
        run.live(Kind::Dynamic).contains(&old),
        "rollout still running"
    );
    run.settle(Kind::Dynamic).await;
    run.assert_replaced(Kind::Dynamic, &old, 0, &[]);
}

/// A Secret apply that took effect but whose answer was lost (a timeout) is taken for a failed
/// one, and the credential now in the Secret is revoked under the workloads.
#[tokio::test]

async fn dc_lost_answer_of_a_secret_apply_does_not_revoke_the_written_lease() {
    let (mut run, old) = dc_before_rotation().await;
    run.world
        .api
        .lose_answer_of_next(Method::PATCH, "/secrets/db-creds", 504);
    run.dc().await.expect_failed();
    run.settle(Kind::Dynamic).await;
    run.assert_replaced(Kind::Dynamic, &old, 0, &[]);
}

/// The Secret apply after an issue fails and so does the revocation of the unwritten credential
/// (Vault answers 5xx between the issue and the clean-up).
async fn failed_write_then_failed_revocation(kind: Kind) {
    let mut run = Run::of(kind);
    run.settle(kind).await;
    let old = run.held(kind);
    kind.change_spec(&run.world);
    run.world
        .api
        .fail_next(Method::PATCH, &format!("/secrets/{}", kind.secret()), 409);
    run.world.vault.fail_next(
        match kind {
            Kind::Dynamic => "revoke_lease",
            _ => "pki_revoke",
        },
        503,
    );
    run.round(kind).await;
    run.settle(kind).await;
    run.assert_replaced(kind, &old, 0, &[]);
}

#[tokio::test]

async fn dc_failed_revocation_of_an_unwritten_lease_is_retried() {
    failed_write_then_failed_revocation(Kind::Dynamic).await;
}

#[tokio::test]

async fn certificate_failed_revocation_of_an_unwritten_certificate_is_retried() {
    failed_write_then_failed_revocation(Kind::Certificate).await;
}

/// Two replacements in a row, the first one's status write lost: the credential of the first
/// replacement (only the Secret knew it) is replaced in turn, and all but the newest are revoked
/// after the rollout.
async fn second_replacement_after_a_lost_status(kind: Kind) {
    let mut run = Run::of(kind);
    run.settle(kind).await;
    let first = run.held(kind);
    kind.change_spec(&run.world);
    let status_path = format!("{}/status", kind.path());
    run.world.api.fail_next(Method::PATCH, &status_path, 500);
    run.round(kind).await;
    let second = run.held(kind);
    assert_ne!(second, first);
    run.roll_out();
    // The spec changes again before the status caught up.
    run.world.api.edit(&kind.path(), |r| match kind {
        Kind::Dynamic => r["spec"]["source"]["role"] = json!("app3"),
        _ => r["spec"]["commonName"] = json!("web3.app.svc"),
    });
    run.settle(kind).await;
    let dump = run.world.steps.dump();
    let third = run.held(kind);
    assert_eq!(
        run.live(kind),
        vec![third.clone()],
        "no leaked credential\n{dump}"
    );
    for old in [&first, &second] {
        assert!(run.revoked_at(kind, old).is_some(), "{old} revoked\n{dump}");
    }
    assert_eq!(
        run.world.restarts_of(TARGET).last(),
        Some(&stamp_of_data(&run.secret(kind))),
        "the last restart is for the newest data"
    );
}

#[tokio::test]
async fn dc_second_rotation_after_a_lost_status_revokes_both_replaced_leases() {
    second_replacement_after_a_lost_status(Kind::Dynamic).await;
}

#[tokio::test]

async fn certificate_second_renewal_after_a_lost_status_revokes_both_superseded() {
    second_replacement_after_a_lost_status(Kind::Certificate).await;
}

// ---------------------------------------------------------------------------------------------
// Stops between any two steps

/// What goes wrong once in a resource's life.
#[derive(Clone, Copy, Debug)]
enum Interruption {
    None,
    /// The operator stops before this step (a process that dies after a step is one that stops
    /// before the next); a fresh operator carries on.
    StopAt(u64),
    /// The write at this step takes effect but its answer is lost; the same operator carries on.
    LoseAnswerAt(u64),
}

/// The whole life of a resource of `kind`, interrupted once: first credential, then a
/// replacement (a spec change for the leased kinds, a new KV version for VaultSecret). Checks the
/// guarantees of the replacement and returns the run.
async fn life(kind: Kind, interruption: Interruption) -> Run {
    let mut run = Run::of(kind);
    match interruption {
        Interruption::None => {}
        Interruption::StopAt(n) => run.world.steps.stop_at(n),
        Interruption::LoseAnswerAt(n) => run.world.api.lose_answer_at_step(n),
    }
    run.settle(kind).await;
    let old = run.held(kind);
    let restarts_before = run.world.restarts_of(TARGET).len();
    match kind {
        Kind::KeyValue => run
            .world
            .vault
            .kv_put("secret", "app/config", &[("password", "two")]),
        _ => kind.change_spec(&run.world),
    }
    run.settle(kind).await;

    // A stop between issuing and writing the Secret leaves the issued credential unknown to
    // everyone but Vault (its id exists nowhere else): it outlives the stop until its TTL ends.
    let orphans: Vec<String> = run
        .world
        .steps
        .stops()
        .iter()
        .filter(|(_, what)| what.ends_with(&format!("/secrets/{}", kind.secret())))
        .filter_map(|(at, _)| {
            let issued = match kind {
                Kind::Dynamic => run.world.vault.leases(),
                Kind::Certificate => run.world.vault.certificates(),
                Kind::KeyValue => Vec::new(),
            };
            issued.into_iter().find(|i| i.issued_at == at - 1)
        })
        .map(|i| i.id)
        .collect();
    if kind == Kind::KeyValue {
        assert_eq!(run.held(kind), "two", "{}", run.world.steps.dump());
        assert_eq!(
            run.world.restarts_of(TARGET)[restarts_before..],
            [stamp_of_data(&run.secret(kind))],
            "exactly one restart for the new data\n{}",
            run.world.steps.dump()
        );
        run.assert_secret_writes_move_forward(kind);
    } else {
        run.assert_replaced(kind, &old, restarts_before, &orphans);
    }
    run
}

async fn stop_at_every_step(kind: Kind) {
    let steps = life(kind, Interruption::None).await.world.steps.now();
    for stop in 1..=steps {
        life(kind, Interruption::StopAt(stop)).await;
    }
}

/// Loses the answer of every write of a resource's life in turn; for the leased kinds except
/// the destination Secret's apply (see the ignored `*_lost_answer_of_a_secret_apply_*` tests).
async fn lose_every_answer(kind: Kind) {
    let reference = life(kind, Interruption::None).await;
    let steps = &reference.world.steps;
    let apply = format!("kube PATCH {}", secret_path(NS, kind.secret()));
    for n in 1..=steps.now() {
        let what = steps.what(n);
        let known_defect = what == apply && kind != Kind::KeyValue;
        if what.starts_with("kube ") && !what.starts_with("kube GET") && !known_defect {
            life(kind, Interruption::LoseAnswerAt(n)).await;
        }
    }
}

#[tokio::test]
async fn dc_operator_stops_between_any_two_steps() {
    stop_at_every_step(Kind::Dynamic).await;
}

#[tokio::test]
async fn certificate_operator_stops_between_any_two_steps() {
    stop_at_every_step(Kind::Certificate).await;
}

#[tokio::test]
async fn vault_secret_operator_stops_between_any_two_steps() {
    stop_at_every_step(Kind::KeyValue).await;
}

#[tokio::test]
async fn dc_lost_answers_of_writes_change_nothing() {
    lose_every_answer(Kind::Dynamic).await;
}

#[tokio::test]
async fn certificate_lost_answers_of_writes_change_nothing() {
    lose_every_answer(Kind::Certificate).await;
}

#[tokio::test]
async fn vault_secret_lost_answers_of_writes_change_nothing() {
    lose_every_answer(Kind::KeyValue).await;
}

// ---------------------------------------------------------------------------------------------
// CertificateRequest

#[tokio::test]
async fn certificate_status_patch_lost_after_renewal_still_revokes_the_superseded_one() {
    let mut run = Run::of(Kind::Certificate);
    run.settle(Kind::Certificate).await;
    let old = run.held(Kind::Certificate);
    Kind::Certificate.change_spec(&run.world);
    run.world
        .api
        .fail_next(Method::PATCH, "/certificaterequests/web/status", 500);
    let err = run.cert().await.expect_failed();
    assert!(matches!(err, certificate::Error::PatchStatus(_)), "{err}");
    assert_ne!(run.held(Kind::Certificate), old);
    assert_eq!(cert_status(&run.world).serial_number, Some(old.clone()));

    run.cert().await.expect_done();
    let status = cert_status(&run.world);
    assert_eq!(
        status
            .superseded
            .iter()
            .map(|s| s.serial_number.as_str())
            .collect::<Vec<_>>(),
        [old.as_str()],
        "the Secret's record of the superseded certificate was taken up"
    );
    assert!(
        run.live(Kind::Certificate).contains(&old),
        "not revoked during the rollout"
    );

    run.settle(Kind::Certificate).await;
    run.assert_replaced(Kind::Certificate, &old, 0, &[]);
}

#[tokio::test]
async fn certificate_secret_apply_conflict_revokes_the_new_certificate() {
    let mut run = Run::of(Kind::Certificate);
    run.settle(Kind::Certificate).await;
    let old = run.held(Kind::Certificate);
    Kind::Certificate.change_spec(&run.world);
    run.world
        .api
        .fail_next(Method::PATCH, "/secrets/web-tls", 409);
    let err = run.cert().await.expect_failed();
    assert!(
        matches!(err, certificate::Error::ApplySecret { .. }),
        "{err}"
    );
    assert_eq!(
        run.live(Kind::Certificate),
        vec![old.clone()],
        "the unwritten one was revoked"
    );
    assert_eq!(run.held(Kind::Certificate), old);

    run.settle(Kind::Certificate).await;
    run.assert_replaced(Kind::Certificate, &old, 0, &[]);
}

/// A PKI role may backdate notBefore (`not_before_duration`) to allow for clock skew; the wait
/// for the rollout must still run from when the certificate was written.
#[tokio::test]

async fn certificate_backdated_by_its_role_still_waits_for_the_rollout() {
    let mut run = Run::of(Kind::Certificate);
    run.world
        .vault
        .backdate_certificates(Duration::from_secs(2 * 3600));
    run.settle(Kind::Certificate).await;
    let old = run.held(Kind::Certificate);
    Kind::Certificate.change_spec(&run.world);
    run.cert().await.expect_done();
    assert!(run.world.rollout_running(TARGET), "restarted");
    assert!(
        run.live(Kind::Certificate).contains(&old),
        "the superseded certificate is kept while the rollout runs\n{}",
        run.world.steps.dump()
    );
    run.settle(Kind::Certificate).await;
    run.assert_replaced(Kind::Certificate, &old, 0, &[]);
}

/// The certificate counterpart of the lost Secret apply answer.
#[tokio::test]

async fn certificate_lost_answer_of_a_secret_apply_does_not_revoke_the_written_one() {
    let mut run = Run::of(Kind::Certificate);
    run.settle(Kind::Certificate).await;
    let old = run.held(Kind::Certificate);
    Kind::Certificate.change_spec(&run.world);
    run.world
        .api
        .lose_answer_of_next(Method::PATCH, "/secrets/web-tls", 504);
    run.cert().await.expect_failed();
    run.settle(Kind::Certificate).await;
    run.assert_replaced(Kind::Certificate, &old, 0, &[]);
}

// ---------------------------------------------------------------------------------------------
// VaultSecret

#[tokio::test]
async fn vault_secret_outage_and_lost_status_patch_never_set_the_secret_back() {
    let mut run = Run::of(Kind::KeyValue);
    run.settle(Kind::KeyValue).await;
    assert_eq!(run.held(Kind::KeyValue), "one");

    // Vault fails: the Secret keeps its data, untouched.
    let before = run.secret(Kind::KeyValue);
    run.world
        .vault
        .kv_put("secret", "app/config", &[("password", "two")]);
    run.world.vault.fail_next("kv2_metadata", 503);
    let err = run.vs().await.expect_failed();
    assert!(
        matches!(err, vault_secret::Error::ReadSource { .. }),
        "{err}"
    );
    run.world.vault.fail_next("kv2_read", 500);
    run.vs().await.expect_failed();
    let after = run.secret(Kind::KeyValue);
    assert_eq!(after.resource_version(), before.resource_version());
    assert_eq!(
        ready(&vs_status(&run.world).conditions),
        ("False".to_owned(), reasons::VAULT_UNAVAILABLE.to_owned())
    );

    // The new data is written but its status patch is lost; then Vault fails again.
    run.world
        .api
        .fail_next(Method::PATCH, "/vaultsecrets/config/status", 500);
    let err = run.vs().await.expect_failed();
    assert!(matches!(err, vault_secret::Error::PatchStatus(_)), "{err}");
    assert_eq!(run.held(Kind::KeyValue), "two");
    // Not Ready since the outage, so the next reconcile is no refresh: it reads the data at once.
    run.world.vault.fail_next("kv2_read", 503);
    run.vs().await.expect_failed();
    assert_eq!(run.held(Kind::KeyValue), "two", "not set back by an outage");

    run.settle(Kind::KeyValue).await;
    assert_eq!(run.held(Kind::KeyValue), "two");
    assert_eq!(
        run.world.restarts_of(TARGET),
        [stamp_of_data(&run.secret(Kind::KeyValue))],
        "one restart for the new data, neither lost with the status nor repeated"
    );
    assert_eq!(run.world.secret_writes(Kind::KeyValue.secret()).len(), 2);
    run.assert_secret_writes_move_forward(Kind::KeyValue);
}

/// Reconciles the VaultSecrets `names` at once.
async fn reconcile_all(
    op: &Operator,
    world: &World,
    names: &[String],
) -> Vec<Outcome<vault_secret::Error>> {
    futures::future::join_all(names.iter().map(|name| {
        let vs: VaultSecret = world
            .api
            .get(&resource_path(NS, "vaultsecrets", name))
            .expect("resource");
        op.reconcile(world, vs, vault_secret::reconcile)
    }))
    .await
}

/// ARCHITECTURE §2: identical reads under one identity are made once. Twenty VaultSecrets on one
/// path refresh together; their refreshes cost one metadata read, and a new version one data read,
/// while a first sync reads the data for itself, at once (no metadata read first). A failed shared read fails every refresh that waited
/// on it, each keeping its Secret, and is not kept for the next.
#[tokio::test]
async fn vault_secret_refreshes_of_one_source_share_their_reads() {
    const N: usize = 20;
    let world = World::new();
    world
        .vault
        .kv_put("secret", "app/config", &[("password", "one")]);
    let names: Vec<String> = (0..N).map(|i| format!("config-{i}")).collect();
    for name in &names {
        world.api.put(
            &resource_path(NS, "vaultsecrets", name),
            json!({
                "apiVersion": "vaultkeeper.dev/v1alpha1",
                "kind": "VaultSecret",
                "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
                "spec": {
                    "auth": {"role": "app", "serviceAccountName": "web"},
                    "source": {"engine": "kv-v2", "mount": "secret", "path": "app/config"},
                    "refreshInterval": "1m",
                    "destination": {"name": name},
                },
            }),
        );
    }
    let mut op = Operator::sharing_reads(&world, Duration::from_secs(30));
    let calls = |what: &str| world.vault.calls(what);

    // First syncs read the data for themselves, one request each.
    for outcome in reconcile_all(&op, &world, &names).await {
        outcome.expect_done();
    }
    assert_eq!((calls("kv2_metadata"), calls("kv2_read")), (0, N));
    op.sync_caches(&world);

    // Unchanged refreshes: one metadata read serves them all.
    for outcome in reconcile_all(&op, &world, &names).await {
        outcome.expect_done();
    }
    assert_eq!((calls("kv2_metadata"), calls("kv2_read")), (1, N));

    // A new version reaches every Secret through one metadata read and one data read.
    let mut op = Operator::sharing_reads(&world, Duration::from_secs(30));
    op.sync_caches(&world);
    world
        .vault
        .kv_put("secret", "app/config", &[("password", "two")]);
    for outcome in reconcile_all(&op, &world, &names).await {
        outcome.expect_done();
    }
    assert_eq!((calls("kv2_metadata"), calls("kv2_read")), (2, N + 1));
    for name in &names {
        assert_eq!(
            text_data(&world.secret(name).expect("Secret"))["password"],
            "two"
        );
    }

    // A failed read is not kept: the refresh after it reads again, and the Secret of the one that
    // failed keeps its data.
    let mut op = Operator::sharing_reads(&world, Duration::from_secs(30));
    op.sync_caches(&world);
    let before = calls("kv2_metadata");
    world.vault.fail_next("kv2_metadata", 503);
    let mut outcomes = Vec::new();
    for name in &names {
        let vs: VaultSecret = world
            .api
            .get(&resource_path(NS, "vaultsecrets", name))
            .expect("resource");
        outcomes.push(op.reconcile(&world, vs, vault_secret::reconcile).await);
    }
    let mut outcomes = outcomes.into_iter();
    let first = outcomes.next().expect("a first").expect_failed();
    assert_eq!(first.reason(), reasons::VAULT_UNAVAILABLE, "{first}");
    for outcome in outcomes {
        outcome.expect_done();
    }
    assert_eq!(
        calls("kv2_metadata"),
        before + 2,
        "read again after the failure, once"
    );
    for name in &names {
        assert_eq!(
            text_data(&world.secret(name).expect("Secret"))["password"],
            "two"
        );
    }
}

// Lanes: thousands of resources due at once run a bounded number at a time, and refreshes filling
// their lane hold up no first sync.

static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MOST_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static REFRESHES_HELD: tokio::sync::Notify = tokio::sync::Notify::const_new();

async fn counted(
    _: std::sync::Arc<String>,
    _: std::sync::Arc<vaultkeeper_operator::context::Context>,
) -> Result<kube::runtime::controller::Action, std::convert::Infallible> {
    use std::sync::atomic::Ordering::SeqCst;
    let now = IN_FLIGHT.fetch_add(1, SeqCst) + 1;
    MOST_IN_FLIGHT.fetch_max(now, SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    IN_FLIGHT.fetch_sub(1, SeqCst);
    Ok(kube::runtime::controller::Action::await_change())
}

async fn held(
    _: std::sync::Arc<String>,
    _: std::sync::Arc<vaultkeeper_operator::context::Context>,
) -> Result<kube::runtime::controller::Action, std::convert::Infallible> {
    REFRESHES_HELD.notified().await;
    Ok(kube::runtime::controller::Action::await_change())
}

#[tokio::test]
async fn reconciles_due_at_once_run_a_lane_at_a_time_and_refreshes_never_hold_up_first_syncs() {
    use vaultkeeper_operator::context::{DEFAULT_SYNC_CONCURRENCY, Lane};
    use vaultkeeper_operator::managed::in_lane;
    let world = World::new();
    let op = Operator::start(&world);
    let resource = std::sync::Arc::new("resource".to_owned());

    // 200 first syncs due at once: never more than the sync lane's permits in flight, all done.
    let all = (0..200).map(|_| {
        in_lane(
            op.ctx.clone(),
            Lane::Sync,
            None,
            None,
            resource.clone(),
            counted,
        )
    });
    let done = futures::future::join_all(all).await;
    assert_eq!(done.iter().filter(|r| r.is_ok()).count(), 200);
    assert_eq!(
        MOST_IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst),
        DEFAULT_SYNC_CONCURRENCY,
        "the sync lane bounds reconciles in flight"
    );

    // Refreshes hold every permit of their lane (4 in this operator) and more wait: a first sync
    // still runs at once.
    let refreshes: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(in_lane(
                op.ctx.clone(),
                Lane::Refresh,
                None,
                None,
                resource.clone(),
                held,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        op.ctx.refresh_lane.available_permits(),
        0,
        "refreshes fill their lane"
    );
    tokio::time::timeout(
        Duration::from_secs(5),
        in_lane(
            op.ctx.clone(),
            Lane::Sync,
            None,
            None,
            resource.clone(),
            counted,
        ),
    )
    .await
    .expect("a first sync waits for no refresh")
    .unwrap();
    for _ in 0..10 {
        REFRESHES_HELD.notify_waiters();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for refresh in refreshes {
        tokio::time::timeout(Duration::from_secs(5), refresh)
            .await
            .expect("every refresh ran in its turn")
            .unwrap()
            .unwrap();
    }
}

static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
static SERVED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

async fn gated(
    _: std::sync::Arc<String>,
    _: std::sync::Arc<vaultkeeper_operator::context::Context>,
) -> Result<kube::runtime::controller::Action, std::convert::Infallible> {
    GATE.acquire().await.unwrap().forget();
    Ok(kube::runtime::controller::Action::await_change())
}

async fn served(
    name: std::sync::Arc<String>,
    _: std::sync::Arc<vaultkeeper_operator::context::Context>,
) -> Result<kube::runtime::controller::Action, std::convert::Infallible> {
    SERVED.lock().unwrap().push(name.to_string());
    Ok(kube::runtime::controller::Action::await_change())
}

#[tokio::test]
async fn waiters_of_a_lane_are_served_earliest_deadline_first() {
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use vaultkeeper_operator::context::Lane;
    use vaultkeeper_operator::managed::in_lane;
    let world = World::new();
    let op = Operator::start(&world);
    // Every permit of the refresh lane (4 in this operator) held.
    let holders: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(in_lane(
                op.ctx.clone(),
                Lane::Refresh,
                None,
                None,
                std::sync::Arc::new(format!("holder {i}")),
                gated,
            ))
        })
        .collect();
    while op.ctx.refresh_lane.available_permits() > 0 {
        tokio::task::yield_now().await;
    }
    // Five wait, queued in an order unrelated to their deadlines.
    let now = Timestamp::now();
    let at = |seconds: i64| Some(now + SignedDuration::from_secs(seconds));
    let waiting = [
        ("ends in 300 s", at(300)),
        ("ends in 100 s", at(100)),
        ("new (now)", None),
        ("ended 50 s ago", at(-50)),
        ("ends in 200 s", at(200)),
    ];
    let waiters: Vec<_> = waiting
        .iter()
        .map(|(name, deadline)| {
            tokio::spawn(in_lane(
                op.ctx.clone(),
                Lane::Refresh,
                *deadline,
                None,
                std::sync::Arc::new((*name).to_owned()),
                served,
            ))
        })
        .collect();
    while op.ctx.refresh_lane.queued() < waiting.len() {
        tokio::task::yield_now().await;
    }
    // One permit comes free: the waiters pass it on one by one, in the order of their deadlines.
    GATE.add_permits(1);
    for waiter in waiters {
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("every waiter is served")
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        *SERVED.lock().unwrap(),
        [
            "ended 50 s ago",
            "new (now)",
            "ends in 100 s",
            "ends in 200 s",
            "ends in 300 s"
        ]
    );
    GATE.add_permits(3);
    for holder in holders {
        holder.await.unwrap().unwrap();
    }
}
