//! HTTP transport: the router (`POST /mutate`, `GET /healthz`, `GET /metrics`) and a TLS accept
//! loop that serves it with the reloading certificate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::inject::WebhookConfig;
use crate::metrics::Metrics;
use crate::review::{Outcome, review};

/// A Pod's AdmissionReview is at most a few MiB (etcd stores objects up to 1.5 MiB).
const MAX_BODY: usize = 8 * 1024 * 1024;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may finish their requests after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Shared {
    config: Arc<WebhookConfig>,
    metrics: Arc<Metrics>,
}

/// The webhook's routes.
pub fn router(config: Arc<WebhookConfig>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Shared {
            config,
            metrics: metrics.clone(),
        })
        .merge(metrics_router(metrics))
}

/// Only `/metrics` and `/healthz`, also served on the optional plain-HTTP scrape port.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
}

async fn mutate(State(shared): State<Shared>, body: Bytes) -> Response {
    let started = Instant::now();
    match review(&body, &shared.config) {
        Ok(answer) => {
            shared.metrics.admission(answer.outcome, started.elapsed());
            match answer.outcome {
                Outcome::Skipped => tracing::debug!(
                    reason = answer.skip_reason.map(|reason| reason.as_str()),
                    "admitted unchanged"
                ),
                outcome => tracing::info!(result = outcome.as_str(), "answered admission review"),
            }
            ([("content-type", "application/json")], answer.body).into_response()
        }
        Err(error) => {
            shared.metrics.admission(Outcome::Error, started.elapsed());
            tracing::warn!(%error, "rejected a malformed admission review");
            (StatusCode::BAD_REQUEST, error.to_string()).into_response()
        }
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then lets open connections
/// finish for a bounded time.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // A response is written in one go and the client waits for all of it: never hold its
        // last segment back for an ACK (Nagle's algorithm).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "failed to set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let tls_stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => tls_stream,
                    Ok(Err(error)) => {
                        metrics.connection("handshake_error");
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics.connection("handshake_timeout");
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            metrics.connection("ok");
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls_stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
}
