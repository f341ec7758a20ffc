//! vaultkeeper operator entry point: configuration, wiring, HTTP endpoints, graceful shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Parser;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;
use vault::{VaultClient, VaultConfig};

use supervise::Stop;
use vaultkeeper_operator::config::Args;
use vaultkeeper_operator::context::Context;
use vaultkeeper_operator::identity::{Connection, Identities};
use vaultkeeper_operator::metrics::Metrics;
use vaultkeeper_operator::{
    certificate, dynamic_credential, http, leader, lease_tokens, managed, operator_key, restart,
    supervise, vault_secret, webhook_tls,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    vault::install_crypto_provider();
    let args = Args::parse();
    init_tracing(&args)?;

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
    // The controllers' caches of their resources; the certificate gauges read theirs at scrape time.
    let (_, vs_writer) = kube::runtime::reflector::store();
    let (_, dc_writer) = kube::runtime::reflector::store();
    let (cert_resources, cert_writer) = kube::runtime::reflector::store();
    let metrics = Arc::new(Metrics::with_certificates(cert_resources));
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
    let (secrets, secret_writer) = kube::runtime::reflector::store_shared(1024);
    let (dc_secrets, dc_secret_writer) = kube::runtime::reflector::store_shared(1024);
    let (cert_secrets, cert_secret_writer) = kube::runtime::reflector::store_shared(1024);
    let vs_changes = secret_writer.subscribe().expect("a shared store");
    let dc_changes = dc_secret_writer.subscribe().expect("a shared store");
    let cert_changes = cert_secret_writer.subscribe().expect("a shared store");
    let lease_tokens =
        lease_tokens::LeaseTokens::new(client.clone(), args.namespace.clone(), &hmac_key);
    let ctx = Arc::new(
        Context::new(
            client,
            identities,
            recorder,
            metrics.clone(),
            secrets.clone(),
            dc_secrets.clone(),
            cert_secrets.clone(),
            hmac_key,
            args.refresh_concurrency,
            lease_tokens,
            restart::Orchestrator::new(args.restart_debounce, args.restarts_per_minute)
                .with_rollout_timeout(args.rollout_timeout),
        )
        .with_watch_client(watch_client),
    );

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

    let mut leadership = match args.leader_election {
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
    let (vs_deleted, vs_deleted_rx) = tokio::sync::mpsc::unbounded_channel();
    let (dc_deleted, dc_deleted_rx) = tokio::sync::mpsc::unbounded_channel();
    let (cert_deleted, cert_deleted_rx) = tokio::sync::mpsc::unbounded_channel();
    let watches = [
        tokio::spawn(managed::reflect(
            ctx.watch_client.clone(),
            vault_secret::desired::OWNER_LABEL,
            secret_writer,
            vs_deleted,
        )),
        tokio::spawn(managed::reflect(
            ctx.watch_client.clone(),
            dynamic_credential::desired::OWNER_LABEL,
            dc_secret_writer,
            dc_deleted,
        )),
        tokio::spawn(managed::reflect(
            ctx.watch_client.clone(),
            certificate::desired::OWNER_LABEL,
            cert_secret_writer,
            cert_deleted,
        )),
    ];
    tokio::select! {
        _ = async {
            let _ = secrets.wait_until_ready().await;
            let _ = dc_secrets.wait_until_ready().await;
            let _ = cert_secrets.wait_until_ready().await;
        } => tracing::info!("caches filled"),
        _ = &mut shutdown => {
            tracing::info!("shutting down");
            watches.iter().for_each(|w| w.abort());
            if let Some(leader) = leadership {
                leader.release().await;
            }
            let _ = stop_tx.send(true);
            http.await??;
            return Ok(());
        }
    }
    ready_when_filled.store(true, Ordering::Relaxed);
    let controller = tokio::spawn(vault_secret::run(
        ctx.clone(),
        vs_writer,
        vs_changes,
        vs_deleted_rx,
        stopped(stop_rx.clone()),
    ));
    let dc_controller = tokio::spawn(dynamic_credential::run(
        ctx.clone(),
        dc_writer,
        dc_changes,
        dc_deleted_rx,
        stopped(stop_rx.clone()),
    ));
    let webhook_tls = args.webhook_tls();
    let (client_for_tls, watch_client_for_tls) = (ctx.client.clone(), ctx.watch_client.clone());
    let cert_controller = tokio::spawn(certificate::run(
        ctx,
        cert_writer,
        cert_changes,
        cert_deleted_rx,
        stopped(stop_rx),
    ));
    tracing::info!("controllers running");

    let lost = async {
        match &mut leadership {
            Some(leader) => leader.lost().await,
            None => std::future::pending().await,
        }
    };
    let [vs_watch, dc_watch, cert_watch] = watches;
    // The controllers first: at shutdown they finish their reconciles, the rest is aborted.
    let mut tasks = vec![
        ("VaultSecret", controller),
        ("DynamicCredential", dc_controller),
        ("CertificateRequest", cert_controller),
        ("VaultSecret Secret watch", vs_watch),
        ("DynamicCredential Secret watch", dc_watch),
        ("CertificateRequest Secret watch", cert_watch),
    ];
    if let Some(names) = webhook_tls {
        tasks.push((
            "webhook serving certificate",
            tokio::spawn(webhook_tls::run(
                client_for_tls,
                watch_client_for_tls,
                names,
            )),
        ));
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
    let others = tasks.split_off(3);
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
    http.await??;
    match stop {
        Stop::Signal => Ok(()),
        Stop::LostLeadership => anyhow::bail!("lost leadership"),
        Stop::TaskEnded(task, _) => anyhow::bail!("{task} ended before shutdown"),
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
