//! vaultkeeper webhook entry point: flags, TLS, the HTTPS server, graceful shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;
use vaultkeeper_webhook::config::Args;
use vaultkeeper_webhook::metrics::Metrics;
use vaultkeeper_webhook::server;
use vaultkeeper_webhook::tls::ReloadingCert;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One process-wide provider, installed before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    init_tracing(args.log_json);
    let config = Arc::new(args.webhook_config()?);
    let metrics = Arc::new(Metrics::default());

    let cert = ReloadingCert::load(&args.cert_file, &args.key_file)
        .context("failed to load the serving certificate")?;
    let tls = Arc::new(cert.server_config()?);
    tokio::spawn(cert.clone().watch(args.cert_reload_interval));

    let (stop, stopped) = watch::channel(false);
    let wait = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };

    let mut metrics_server = None;
    if let Some(addr) = args.metrics_addr {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to bind {addr}"))?;
        tracing::info!(%addr, "serving metrics over plain HTTP");
        let app = server::metrics_router(metrics.clone());
        let shutdown = wait();
        metrics_server = Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }));
    }

    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("failed to bind {}", args.addr))?;
    tracing::info!(addr = %args.addr, native_sidecars = config.native_sidecars, "serving admission reviews");
    let app = server::router(config, metrics);
    let main_server = tokio::spawn(server::serve_tls(listener, tls, app, wait()));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    main_server.await.context("the TLS server task failed")?;
    if let Some(task) = metrics_server {
        task.await
            .context("the metrics server task failed")?
            .context("the metrics server failed")?;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or `kubectl logs` gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
