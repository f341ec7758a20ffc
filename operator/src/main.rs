//! vaultkeeper operator entry point: configuration, wiring, HTTP endpoints, graceful shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;
use vault::{VaultClient, VaultConfig};

use std::time::Duration;
use supervise::Stop;
use vaultkeeper_operator::config::Args;
use vaultkeeper_operator::context::Context;
use vaultkeeper_operator::identity::{Connection, Identities};
use vaultkeeper_operator::metrics::Metrics;
use vaultkeeper_operator::scope::{ManagedSecrets, Scope};
use vaultkeeper_operator::{
    certificate, dynamic_credential, http, leader, lease_tokens, managed, operator_key, restart,
    shards, supervise, vault_secret, webhook_tls,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    vault::install_crypto_provider();
    let mut args = Args::parse();
    init_tracing(&args)?;
    // One name for this replica in every Lease, Event and Vault request.
    let identity = args
        .identity
        .get_or_insert_with(leader::random_identity)
        .clone();

    let config = kube::Config::infer()
        .await
        .context("failed to find the Kubernetes API server's address and credentials")?;
    // Watches wait for events for minutes and have their own idle timeout; every other call is
    // answered within --kube-timeout or fails, so an API server that stops answering (a black
    // hole, not a refused connection) cannot hold a reconcile, and the Vault renewals behind it,
    // for as long as the outage lasts.
    let watch_client =
        kube::Client::try_from(config.clone()).context("failed to build a Kubernetes client")?;
    let mut request_config = config;
    request_config.connect_timeout = Some(args.kube_timeout);
    request_config.read_timeout = Some(args.kube_timeout);
    request_config.reset_reader_on_write = true;
    let client =
        kube::Client::try_from(request_config).context("failed to build a Kubernetes client")?;
    // Every namespace, or those of --watch-namespaces, each with its own caches and controllers.
    let scopes: Vec<Scoped> = Scope::from_list(&args.watch_namespaces)
        .into_iter()
        .map(Scoped::new)
        .collect();
    for scoped in &scopes {
        tracing::info!(scope = %scoped.scope, "watching");
    }
    // The certificate gauges read the controllers' caches at scrape time.
    let metrics = Arc::new(Metrics::with_certificates(
        scopes.iter().map(|s| s.cert_resources.clone()).collect(),
    ));
    let mut connections = BTreeMap::new();
    for (name, spec) in args.connections()? {
        let ca_pem = match &spec.ca_file {
            Some(file) => Some(
                std::fs::read(file)
                    .with_context(|| format!("failed to read CA file {}", file.display()))?,
            ),
            None => None,
        };
        let config = VaultConfig {
            address: spec.address.clone(),
            ca_pem,
            timeout: args.vault_timeout,
            user_agent: format!(
                "vaultkeeper-operator/{} ({identity})",
                env!("CARGO_PKG_VERSION")
            ),
        };
        let observer: Arc<dyn vault::RequestObserver> = metrics.clone();
        let client = VaultClient::new(&config, Some(observer))
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("connection {name:?}"))?;
        let auth_mount = spec
            .auth_mount
            .clone()
            .unwrap_or_else(|| args.vault_auth_mount.clone());
        tracing::info!(connection = %name, address = %spec.address, auth_mount = %auth_mount, "configured Vault connection");
        connections.insert(
            name,
            Connection {
                client: Arc::new(client),
                auth_mount,
            },
        );
    }

    let hmac_key = operator_key::load_or_create(client.clone(), &args.namespace).await?;
    let identities = Identities::new(
        client.clone(),
        connections,
        args.token_audiences.clone(),
        args.token_ttl,
        metrics.clone(),
    );
    let reporter = Reporter {
        controller: "vaultkeeper-operator".into(),
        instance: args.identity.clone(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    // Each controller has the Secrets it manages (by label) in its own cache. The caches are
    // filled by their own tasks once this replica leads, and the controllers start after that.
    let managed = |pick: fn(&Scoped) -> &kube::runtime::reflector::Store<_>| {
        ManagedSecrets::new(
            scopes
                .iter()
                .map(|s| (s.scope.clone(), pick(s).clone()))
                .collect(),
        )
    };
    let (secrets, dc_secrets, cert_secrets) = (
        managed(|s| &s.secrets),
        managed(|s| &s.dc_secrets),
        managed(|s| &s.cert_secrets),
    );
    let lease_tokens =
        lease_tokens::LeaseTokens::new(client.clone(), args.namespace.clone(), &hmac_key);
    // With shards, every replica works on its share of the resources; none waits to lead.
    let member = (args.shards > 0).then(|| {
        Arc::new(shards::Member {
            leases: kube::Api::namespaced(client.clone(), &args.namespace),
            identity: identity.clone(),
            duration: args.lease_duration.max(Duration::from_secs(3)),
            shards: Arc::new(shards::Shards::new(args.shards)),
            metrics: metrics.clone(),
        })
    });
    let mut context = Context::new(
        client,
        identities,
        recorder,
        metrics.clone(),
        secrets,
        dc_secrets,
        cert_secrets,
        hmac_key,
        args.refresh_concurrency,
        lease_tokens,
        restart::Orchestrator::new(args.restart_debounce, args.restarts_per_minute)
            .with_rollout_timeout(args.rollout_timeout),
    )
    .with_watch_client(watch_client)
    .with_sync_concurrency(args.sync_concurrency);
    if let Some(member) = &member {
        tracing::info!(shards = args.shards, identity = %member.identity, "sharing the resources with the other replicas");
        context = context.with_shards(member.shards.clone());
    }
    let ctx = Arc::new(context);
    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let http = tokio::spawn(http::serve(
        args.metrics_addr,
        metrics,
        ready.clone(),
        stopped(stop_rx.clone()),
    ));
    // Ready: standing by, or leading with filled caches.
    let ready_when_filled = ready.clone();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let mut leadership = match args.leader_election && member.is_none() {
        true => Some(leader::elect(ctx.client.clone(), &args).await?),
        false => None,
    };
    if let Some(mut leader) = leadership.take() {
        ready.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = leader.acquired() => leadership = Some(leader),
            _ = &mut shutdown => {
                tracing::info!("shutting down before becoming leader");
                leader.release().await;
                let _ = stop_tx.send(true);
                http.await??;
                return Ok(());
            }
        }
    }

    ready.store(false, Ordering::Relaxed);
    // The watches of managed Secrets first; the controllers once every cache is filled.
    let mut watches: Vec<(String, tokio::task::JoinHandle<()>)> = vec![];
    let mut starts = vec![];
    for scoped in scopes {
        let (vs_deleted, vs_deleted_rx) = tokio::sync::mpsc::unbounded_channel();
        let (dc_deleted, dc_deleted_rx) = tokio::sync::mpsc::unbounded_channel();
        let (cert_deleted, cert_deleted_rx) = tokio::sync::mpsc::unbounded_channel();
        let scope = scoped.scope.clone();
        let reflect = |label, writer, deleted| {
            tokio::spawn(managed::reflect(
                ctx.watch_client.clone(),
                scope.clone(),
                label,
                writer,
                deleted,
            ))
        };
        watches.push((
            format!("VaultSecret Secret watch ({scope})"),
            reflect(
                vault_secret::desired::OWNER_LABEL,
                scoped.secret_writer,
                vs_deleted,
            ),
        ));
        watches.push((
            format!("DynamicCredential Secret watch ({scope})"),
            reflect(
                dynamic_credential::desired::OWNER_LABEL,
                scoped.dc_secret_writer,
                dc_deleted,
            ),
        ));
        watches.push((
            format!("CertificateRequest Secret watch ({scope})"),
            reflect(
                certificate::desired::OWNER_LABEL,
                scoped.cert_secret_writer,
                cert_deleted,
            ),
        ));
        starts.push((
            scope,
            (scoped.vs_writer, scoped.vs_changes, vs_deleted_rx),
            (scoped.dc_writer, scoped.dc_changes, dc_deleted_rx),
            (scoped.cert_writer, scoped.cert_changes, cert_deleted_rx),
        ));
    }
    tokio::select! {
        _ = async {
            ctx.secrets.wait_until_ready().await;
            ctx.dc_secrets.wait_until_ready().await;
            ctx.cert_secrets.wait_until_ready().await;
        } => tracing::info!("caches filled"),
        _ = &mut shutdown => {
            tracing::info!("shutting down");
            watches.iter().for_each(|(_, w)| w.abort());
            if let Some(leader) = leadership {
                leader.release().await;
            }
            let _ = stop_tx.send(true);
            http.await??;
            return Ok(());
        }
    }
    ready_when_filled.store(true, Ordering::Relaxed);
    let webhook_tls = args.webhook_tls();
    let (client_for_tls, watch_client_for_tls) = (ctx.client.clone(), ctx.watch_client.clone());
    // The controllers first: at shutdown they finish their reconciles, the rest is aborted.
    let mut tasks: Vec<(String, tokio::task::JoinHandle<()>)> = vec![];
    for (
        scope,
        (vs_writer, vs_changes, vs_deleted),
        (dc_writer, dc_changes, dc_deleted),
        (cert_writer, cert_changes, cert_deleted),
    ) in starts
    {
        tasks.push((
            format!("VaultSecret ({scope})"),
            tokio::spawn(vault_secret::run(
                ctx.clone(),
                scope.clone(),
                vs_writer,
                vs_changes,
                vs_deleted,
                stopped(stop_rx.clone()),
            )),
        ));
        tasks.push((
            format!("DynamicCredential ({scope})"),
            tokio::spawn(dynamic_credential::run(
                ctx.clone(),
                scope.clone(),
                dc_writer,
                dc_changes,
                dc_deleted,
                stopped(stop_rx.clone()),
            )),
        ));
        tasks.push((
            format!("CertificateRequest ({scope})"),
            tokio::spawn(certificate::run(
                ctx.clone(),
                scope,
                cert_writer,
                cert_changes,
                cert_deleted,
                stopped(stop_rx.clone()),
            )),
        ));
    }
    // Sees Vault come back after an outage, so what waited for it is retried at once.
    let probe = {
        let ctx = ctx.clone();
        let connections = ctx
            .identities
            .connections()
            .map(|(name, c)| (name.clone(), c.client.clone()))
            .collect::<Vec<_>>();
        tokio::spawn(async move {
            ctx.outages
                .probe(connections, vaultkeeper_operator::outage::PROBE_EVERY)
                .await
        })
    };
    drop(ctx);
    tracing::info!("controllers running");

    let lost = async {
        match &mut leadership {
            Some(leader) => leader.lost().await,
            None => std::future::pending().await,
        }
    };
    let controllers = tasks.len();
    tasks.extend(watches);
    tasks.push(("Vault outage probe".to_owned(), probe));
    if let Some(member) = &member {
        let member = member.clone();
        tasks.push((
            "shard Leases".to_owned(),
            tokio::spawn(async move { member.run().await }),
        ));
    }
    if let Some(names) = webhook_tls {
        let work = webhook_tls::run(client_for_tls.clone(), watch_client_for_tls, names);
        let task = match &member {
            None => tokio::spawn(work),
            // The replicas share the resources, but one at a time manages the certificate.
            Some(_) => tokio::spawn(single(client_for_tls, args.clone(), work)),
        };
        tasks.push(("webhook serving certificate".to_owned(), task));
    }
    let stop = supervise::first_stop(&mut shutdown, lost, &mut tasks, &ready_when_filled).await;
    match &stop {
        Stop::Signal => tracing::info!("shutting down"),
        Stop::LostLeadership => {
            tracing::error!("lost the leader Lease; stopping so that only one replica acts")
        }
        Stop::TaskEnded(task, error) => {
            tracing::error!(
                task,
                error = error.as_deref().unwrap_or("returned"),
                "a controller task ended before shutdown; stopping so that the process is restarted"
            );
        }
    }
    let _ = stop_tx.send(true);
    let others = tasks.split_off(controllers);
    // A task first_stop saw finish must not be awaited again.
    for (_, task) in tasks {
        if !task.is_finished() {
            let _ = task.await;
        }
    }
    others.iter().for_each(|(_, w)| w.abort());
    if let Some(leader) = leadership {
        leader.release().await;
    }
    if let Some(member) = member {
        member.leave().await;
    }
    http.await??;
    match stop {
        Stop::Signal => Ok(()),
        Stop::LostLeadership => anyhow::bail!("lost leadership"),
        Stop::TaskEnded(task, _) => anyhow::bail!("{task} ended before shutdown"),
    }
}

/// Runs `work` (which never ends) while this replica leads; with shards, the leader election picks
/// only who does the work that must be done once.
async fn single(client: kube::Client, args: Args, work: impl std::future::Future<Output = ()>) {
    tokio::pin!(work);
    loop {
        match leader::elect(client.clone(), &args).await {
            Ok(mut leader) => {
                leader.acquired().await;
                tokio::select! {
                    _ = &mut work => return,
                    _ = leader.lost() => {
                        tracing::warn!("lost the leader Lease; another replica manages the webhook's certificate");
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "failed to join the leader election; retrying")
            }
        }
        tokio::time::sleep(args.lease_duration).await;
    }
}

/// Resolves once `true` is sent on the channel.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_tracing(args: &Args) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?;
    // Colours only for a person at a terminal: a log file or `kubectl logs` gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if args.log_format == "json" {
        builder.json().init()
    } else {
        builder.init()
    }
    Ok(())
}

/// One scope's caches: its resources of each kind, and the Secrets each kind manages (shared
/// stores, whose subscriptions tell the controller about changes).
struct Scoped {
    scope: Scope,
    vs_writer: kube::runtime::reflector::store::Writer<crds::v1alpha1::VaultSecret>,
    dc_writer: kube::runtime::reflector::store::Writer<crds::v1alpha1::DynamicCredential>,
    cert_writer: kube::runtime::reflector::store::Writer<crds::v1alpha1::CertificateRequest>,
    cert_resources: kube::runtime::reflector::Store<crds::v1alpha1::CertificateRequest>,
    secrets: kube::runtime::reflector::Store<Secret>,
    dc_secrets: kube::runtime::reflector::Store<Secret>,
    cert_secrets: kube::runtime::reflector::Store<Secret>,
    secret_writer: kube::runtime::reflector::store::Writer<Secret>,
    dc_secret_writer: kube::runtime::reflector::store::Writer<Secret>,
    cert_secret_writer: kube::runtime::reflector::store::Writer<Secret>,
    vs_changes: kube::runtime::reflector::ReflectHandle<Secret>,
    dc_changes: kube::runtime::reflector::ReflectHandle<Secret>,
    cert_changes: kube::runtime::reflector::ReflectHandle<Secret>,
}

impl Scoped {
    fn new(scope: Scope) -> Self {
        let (_, vs_writer) = kube::runtime::reflector::store();
        let (_, dc_writer) = kube::runtime::reflector::store();
        let (cert_resources, cert_writer) = kube::runtime::reflector::store();
        let (secrets, secret_writer) = kube::runtime::reflector::store_shared(1024);
        let (dc_secrets, dc_secret_writer) = kube::runtime::reflector::store_shared(1024);
        let (cert_secrets, cert_secret_writer) = kube::runtime::reflector::store_shared(1024);
        Self {
            scope,
            vs_writer,
            dc_writer,
            cert_writer,
            cert_resources,
            secrets,
            dc_secrets,
            cert_secrets,
            vs_changes: secret_writer.subscribe().expect("a shared store"),
            dc_changes: dc_secret_writer.subscribe().expect("a shared store"),
            cert_changes: cert_secret_writer.subscribe().expect("a shared store"),
            secret_writer,
            dc_secret_writer,
            cert_secret_writer,
        }
    }
}
