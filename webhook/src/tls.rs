//! The serving certificate, re-read from disk when it changes so a rotated certificate (cert-manager,
//! a Helm hook, a mounted Secret) is served without a restart.
//!
//! A background task compares the files' bytes every few seconds and swaps the certificate in
//! when both files parse and the key matches the certificate; a half-written pair is ignored
//! until the next check. Handshakes only read the current certificate: no I/O on that path.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("failed to parse the certificates in {path}: {error}")]
    ParseCertificates {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in {path}")]
    NoCertificate { path: PathBuf },
    #[error("failed to parse the private key in {path}: {error}")]
    ParseKey {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error("failed to load the key pair: {0}")]
    KeyPair(rustls::Error),
    #[error("failed to build the TLS configuration: {0}")]
    Config(rustls::Error),
}

/// A certificate and key read from two PEM files, reloaded when they change.
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The bytes `current` was built from.
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the pair once; failing here fails start-up.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = read_pair(cert_file, key_file)?;
        let key = certified_key(&cert_pem, cert_file, &key_pem, key_file, &provider)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
            loaded: Mutex::new((cert_pem, key_pem)),
        }))
    }

    /// The certificate handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Re-reads both files; swaps the certificate in if they changed and are valid. Returns
    /// whether it swapped. On error the current certificate stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert_file, &self.key_file)?;
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if loaded.0 == cert_pem && loaded.1 == key_pem {
            return Ok(false);
        }
        let key = certified_key(
            &cert_pem,
            &self.cert_file,
            &key_pem,
            &self.key_file,
            &self.provider,
        )?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(key);
        *loaded = (cert_pem, key_pem);
        Ok(true)
    }

    /// Checks the files every `every` until the task is dropped.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(cert = %self.cert_file.display(), "reloaded the serving certificate")
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "keeping the current serving certificate"),
            }
        }
    }

    /// A TLS server configuration that always serves the current certificate (HTTP/1.1 only).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| TlsError::Read {
            path: path.to_owned(),
            error,
        })
    };
    Ok((read(cert_file)?, read(key_file)?))
}

fn certified_key(
    cert_pem: &[u8],
    cert_file: &Path,
    key_pem: &[u8],
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::ParseCertificates {
            path: cert_file.to_owned(),
            error,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| TlsError::ParseKey {
        path: key_file.to_owned(),
        error,
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(TlsError::KeyPair)
}
