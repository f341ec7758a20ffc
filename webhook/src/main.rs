//! vaultkeeper webhook entry point: flags, TLS, the HTTPS server, graceful shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;
use vaultkeeper_webhook::config::Args;
use vaultkeeper_webhook::metrics::Metrics;
use vaultkeeper_webhook::server;
use vaultkeeper_webhook::tls::{ReloadingCert, TlsError};

// One thread: a review is ~70 µs of CPU, so one core answers thousands a second, and with no
// second worker to wake there is no cross-thread hand-off on the request path. Measured with
// `make bench-injection` (docs/performance.md): handler p99 1.4 ms -> 0.57 ms and client p99
// 5.1 ms -> 2.4 ms at 50/s on the 2-core VM, against the multi-threaded runtime.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // One process-wide provider, installed before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    init_tracing(args.log_json);
    let config = Arc::new(args.webhook_config()?);
    let metrics = Arc::new(Metrics::default());

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

    // The serving certificate may not be there yet on a first install (the operator writes it
    // and the kubelet then fills the Secret volume): wait for it, live but not ready, instead of
    // crash-looping. A certificate that is there but broken fails start-up.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut waiting_logged = false;
    let cert = loop {
        match ReloadingCert::load(&args.cert_file, &args.key_file) {
            Ok(cert) => break cert,
            Err(TlsError::Read { path, error }) if error.kind() == std::io::ErrorKind::NotFound => {
                if !waiting_logged {
                    tracing::info!(path = %path.display(), "waiting for the serving certificate to appear");
                    waiting_logged = true;
                }
            }
            Err(error) => return Err(error).context("failed to load the serving certificate"),
        }
        tokio::select! {
            _ = tokio::time::sleep(args.cert_reload_interval) => {}
            _ = &mut shutdown => {
                tracing::info!("shutting down before the serving certificate appeared");
                let _ = stop.send(true);
                return Ok(());
            }
        }
    };
    let tls = Arc::new(cert.server_config()?);
    tokio::spawn(cert.clone().watch(args.cert_reload_interval));

    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("failed to bind {}", args.addr))?;
    tracing::info!(addr = %args.addr, native_sidecars = config.native_sidecars, "serving admission reviews");
    let app = server::router(config, metrics.clone());
    let main_server = tokio::spawn(server::serve_tls(listener, tls, app, metrics, wait()));

    shutdown.await;
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
