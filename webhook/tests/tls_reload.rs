//! The TLS server picks up a rotated certificate from disk without a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vaultkeeper_webhook::inject::WebhookConfig;
use vaultkeeper_webhook::metrics::Metrics;
use vaultkeeper_webhook::server::{router, serve_tls};
use vaultkeeper_webhook::tls::ReloadingCert;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "vaultkeeper test CA");
        let key = KeyPair::generate().expect("key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    /// Writes a fresh serving pair for 127.0.0.1; returns the certificate.
    fn issue(&self, common_name: &str, dir: &Path) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        // Key first, then certificate: a reader in between sees a mismatched pair and must
        // keep serving the old one.
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write key");
        std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write cert");
        cert.der().clone()
    }
}

/// The certificate the server presents on a new connection; also checks it answers HTTP.
async fn served_certificate(
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let connector = tokio_rustls::TlsConnector::from(client);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let cert = tls.get_ref().1.peer_certificates().expect("peer certs")[0].clone();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    tls.read_to_string(&mut response).await.ok();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    cert
}

/// The value of `vaultkeeper_webhook_connections_total{result=...}`, 0 when absent.
fn connections(metrics: &Metrics, result: &str) -> u64 {
    let prefix = format!("vaultkeeper_webhook_connections_total{{result=\"{result}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
        .map_or(0, |value| value.parse().expect("a counter value"))
}

#[tokio::test]
async fn serves_the_new_certificate_after_rotation() {
    let dir = std::env::temp_dir().join(format!("vaultkeeper-webhook-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca = Ca::new();
    let first = ca.issue("first", &dir);

    let cert = ReloadingCert::load(&dir.join("tls.crt"), &dir.join("tls.key")).expect("load");
    let server_config = Arc::new(cert.server_config().expect("server config"));
    let watcher = tokio::spawn(cert.clone().watch(Duration::from_millis(20)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = Arc::new(Metrics::default());
    let app = router(Arc::new(WebhookConfig::default()), metrics.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_tls(
        listener,
        server_config,
        app,
        metrics.clone(),
        async {
            let _ = stopped.await;
        },
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).expect("CA");
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    // A resumed session shows the certificate of the session it resumes, not the current one.
    client.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(client);

    assert_eq!(served_certificate(addr, client.clone()).await, first);
    // Every accepted connection is counted by how its handshake ended: the figure that shows a
    // client (the API server) keeping its connections instead of paying a handshake per review.
    assert_eq!(connections(&metrics, "ok"), 1, "{}", metrics.encode());
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    plain.read_to_end(&mut rest).await.ok();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while connections(&metrics, "handshake_error") != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a plain-HTTP client was not counted as a failed handshake: {}",
            metrics.encode()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let second = ca.issue("second", &dir);
    assert_ne!(first, second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if served_certificate(addr, client.clone()).await == second {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A broken file does not take the server down: the last good certificate stays.
    std::fs::write(dir.join("tls.crt"), "not a certificate").expect("write");
    assert!(cert.reload_if_changed().is_err());
    assert_eq!(served_certificate(addr, client.clone()).await, second);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("the server stops")
        .expect("no panic");
    watcher.abort();
    std::fs::remove_dir_all(&dir).ok();
}
