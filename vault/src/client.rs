//! HTTP transport to one Vault server or the nodes of one cluster: one connection pool for every
//! identity, failover between the nodes, error mapping, and a hook that sees every request's
//! operation, outcome and duration (for metrics).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{VaultError, VaultToken};

/// Where and how to reach one Vault server. Comes from the operator's or agent's own
/// configuration, never from a custom resource.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// Base address, for example `https://vault.example:8200`; or the addresses of several nodes
    /// of one cluster separated by commas (`https://vault-0:8200,https://vault-1:8200`), tried in
    /// turn when one cannot serve (see [`VaultClient`]).
    pub address: String,
    /// PEM bundle of CAs to trust in addition to the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Timeout of one request, connect included.
    pub timeout: Duration,
    /// Sent as `User-Agent`, so Vault's audit log (with the header audited) says which program
    /// and replica asked; empty: none.
    pub user_agent: String,
}

/// Sees every request: `operation` is a fixed name (`kv2_metadata`, `login`, …) and `outcome` the
/// HTTP status code or `error` when no answer came. Both are bounded, so fit for metric labels.
pub trait RequestObserver: Send + Sync {
    fn observe(&self, operation: &'static str, outcome: &str, elapsed: Duration);
}

/// The header that selects a Vault Enterprise / OpenBao namespace for one request.
pub const NAMESPACE_HEADER: &str = "X-Vault-Namespace";

/// A client of one Vault server, in one namespace (the root one unless
/// [`with_namespace`](Self::with_namespace) says otherwise). Cheap to clone; clones share the
/// connection pool, so one client per namespace costs no extra connections.
///
/// Given several addresses (the nodes of one raft cluster), requests go to the node that last
/// served. A request moves on to the next node only when the one it was sent to certainly did not
/// act on it: no connection could be made, or the node answered that it is sealed, in standby
/// without a reachable active node, or otherwise not serving (503, or 500 naming the active node).
/// A request that may have reached a node (a timeout after sending, a reset connection) is never
/// sent twice: issuing a credential is not idempotent.
#[derive(Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    /// The nodes, in the configured order; never empty.
    bases: Arc<[Arc<str>]>,
    /// The index into `bases` of the node that last served, shared by clones.
    current: Arc<AtomicUsize>,
    /// Sent as [`NAMESPACE_HEADER`] on every request, login included; `None` = root.
    namespace: Option<HeaderValue>,
    observer: Option<Arc<dyn RequestObserver>>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("address", &self.address())
            .field("namespace", &self.namespace())
            .finish_non_exhaustive()
    }
}

impl VaultClient {
    /// Builds a client. Needs the process-wide crypto provider ([`crate::install_crypto_provider`]).
    pub fn new(
        config: &VaultConfig,
        observer: Option<Arc<dyn RequestObserver>>,
    ) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(90));
        if !config.user_agent.is_empty() {
            builder = builder.user_agent(config.user_agent.clone());
        }
        if let Some(pem) = &config.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("invalid Vault CA bundle: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| format!("failed to build the Vault HTTP client: {e}"))?;
        let bases: Vec<Arc<str>> = addresses(&config.address)?
            .into_iter()
            .map(Arc::from)
            .collect();
        Ok(Self {
            http,
            bases: bases.into(),
            current: Arc::new(AtomicUsize::new(0)),
            namespace: None,
            observer,
        })
    }

    /// The same client (same pool) working in Vault namespace `namespace`, e.g. `team-a` or
    /// `team-a/web`: every request carries it as `X-Vault-Namespace`. Surrounding slashes are
    /// dropped; an empty namespace means the root namespace. Fails for a value an HTTP header
    /// cannot carry.
    pub fn with_namespace(mut self, namespace: &str) -> Result<Self, String> {
        let namespace = namespace.trim_matches('/');
        self.namespace = if namespace.is_empty() {
            None
        } else {
            Some(
                HeaderValue::from_str(namespace)
                    .map_err(|_| format!("invalid Vault namespace {namespace:?}"))?,
            )
        };
        Ok(self)
    }

    /// The base address of the node requests go to now (the one that last served).
    pub fn address(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Every node's base address, in the configured order.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.bases.iter().map(|base| &**base)
    }

    /// The nodes in the order to try them: the one that last served first, then the others.
    fn rotation(&self) -> impl Iterator<Item = (usize, &str)> {
        let start = self.current.load(Ordering::Relaxed);
        (0..self.bases.len()).map(move |i| {
            let index = (start + i) % self.bases.len();
            (index, &*self.bases[index])
        })
    }

    /// Remembers the node that served (or gave an answer worth keeping), for the next requests.
    fn served_by(&self, index: usize) {
        self.current.store(index, Ordering::Relaxed);
    }

    /// The namespace every request is sent to; `None` for the root namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_ref().and_then(|ns| ns.to_str().ok())
    }

    /// Whether Vault can serve (`GET sys/health`, unauthenticated; asked of the root namespace,
    /// where it lives). With one address, whatever answers there as unsealed, active or standby,
    /// serves: a standby passes requests on to the active node, and the address may be a Service
    /// in front of several nodes. With several, they are the nodes of one cluster, which serves
    /// only while one of them is active: during an election the standbys still answer, but cannot
    /// write. The active node found becomes the one requests go to.
    pub async fn health(&self) -> Result<(), VaultError> {
        let standby_serves = self.bases.len() == 1;
        let mut last = None;
        for (index, base) in self.rotation() {
            match self.health_of(base, standby_serves).await {
                Ok(()) => {
                    self.served_by(index);
                    return Ok(());
                }
                Err(err) => keep_telling(&mut last, err),
            }
        }
        Err(last.expect("a client has at least one address"))
    }

    async fn health_of(&self, base: &str, standby_serves: bool) -> Result<(), VaultError> {
        let url = if standby_serves {
            format!("{base}/v1/sys/health?standbyok=true&perfstandbyok=true")
        } else {
            format!("{base}/v1/sys/health")
        };
        let started = Instant::now();
        let response = self.http.get(&url).send().await.map_err(|err| {
            self.observe("health", "error", started);
            VaultError::Unreachable {
                operation: "health",
                message: error_chain(&err),
            }
        })?;
        let status = response.status();
        self.observe("health", status.as_str(), started);
        match status.as_u16() {
            200 => Ok(()),
            503 => Err(VaultError::Sealed {
                operation: "health",
            }),
            429 => Err(VaultError::Unavailable {
                operation: "health",
                status: 429,
                message: "a standby node".to_owned(),
            }),
            code => Err(VaultError::Unavailable {
                operation: "health",
                status: code,
                message: "not an active or standby node".to_owned(),
            }),
        }
    }

    /// Sends one request to `/v1/<path>` and decodes the JSON answer, moving on to the next node
    /// while the one asked certainly did not act on it (see [`VaultClient`]).
    pub(crate) async fn request<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        token: Option<&VaultToken>,
        body: Option<&Value>,
    ) -> Result<T, VaultError> {
        let mut last = None;
        for (index, base) in self.rotation() {
            match self
                .request_to(base, operation, method.clone(), path, token, body)
                .await
            {
                Err(Attempt::NotActedOn(err)) => keep_telling(&mut last, err),
                Err(Attempt::Failed(err)) => {
                    self.served_by(index);
                    return Err(err);
                }
                Ok(value) => {
                    self.served_by(index);
                    return Ok(value);
                }
            }
        }
        Err(last.expect("a client has at least one address"))
    }

    async fn request_to<T: DeserializeOwned>(
        &self,
        base: &str,
        operation: &'static str,
        method: Method,
        path: &str,
        token: Option<&VaultToken>,
        body: Option<&Value>,
    ) -> Result<T, Attempt> {
        let url = format!("{base}/v1/{path}");
        let mut request = self.http.request(method, &url);
        if let Some(namespace) = &self.namespace {
            request = request.header(NAMESPACE_HEADER, namespace.clone());
        }
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token.expose());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = Instant::now();
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                self.observe(operation, "error", started);
                let err_connect = err.is_connect();
                let err = VaultError::Unreachable {
                    operation,
                    message: error_chain(&err),
                };
                return Err(if err_connect {
                    Attempt::NotActedOn(err)
                } else {
                    Attempt::Failed(err)
                });
            }
        };
        let status = response.status();
        let bytes = response.bytes().await;
        self.observe(operation, status.as_str(), started);
        let bytes = bytes.map_err(|err| {
            Attempt::Failed(VaultError::Unreachable {
                operation,
                message: error_chain(&err),
            })
        })?;
        if status.is_success() {
            // 204 No Content (revocations, writes) decodes as `null`.
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(bytes).map_err(|err| {
                Attempt::Failed(VaultError::Decode {
                    operation,
                    message: decode_message(&err),
                })
            });
        }
        let err = classify(operation, path, status, &bytes);
        Err(if not_serving(status, &err) {
            Attempt::NotActedOn(err)
        } else {
            Attempt::Failed(err)
        })
    }

    fn observe(&self, operation: &'static str, outcome: &str, started: Instant) {
        if let Some(observer) = &self.observer {
            observer.observe(operation, outcome, started.elapsed());
        }
    }
}

/// Keeps, of the errors of the nodes asked in turn, the one that best says why none served: a
/// node's answer (sealed, standby without an active node) over a refused connection, which only
/// says that node is gone.
fn keep_telling(kept: &mut Option<VaultError>, err: VaultError) {
    let answered = |e: &VaultError| !matches!(e, VaultError::Unreachable { .. });
    if kept.as_ref().is_none_or(|k| answered(&err) || !answered(k)) {
        *kept = Some(err);
    }
}

/// How one node's attempt at a request ended, when it did not succeed.
enum Attempt {
    /// The node certainly did not act on the request: another node may be asked.
    NotActedOn(VaultError),
    /// The node may have acted on it, or refused it for a reason another node would share.
    Failed(VaultError),
}

/// Whether an error answer says the node does not serve requests at all (sealed, in standby
/// without an active node to forward to, or otherwise unavailable) rather than that it refused
/// or failed this request. A 503 is never an answer to the request itself; a 500 is, unless it
/// names the missing active node.
fn not_serving(status: StatusCode, err: &VaultError) -> bool {
    match err {
        VaultError::Sealed { .. } => true,
        VaultError::Unavailable { message, .. } => {
            status == StatusCode::SERVICE_UNAVAILABLE
                || (status == StatusCode::INTERNAL_SERVER_ERROR
                    && message.contains("active cluster node not found"))
        }
        _ => false,
    }
}

/// The base addresses in `text`: one, or several separated by commas, each `http://` or
/// `https://` and a host, without the trailing slash.
pub fn addresses(text: &str) -> Result<Vec<String>, String> {
    let mut all = Vec::new();
    for part in text.split(',') {
        let base = part.trim().trim_end_matches('/');
        let host = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"));
        match host {
            Some(host) if !host.is_empty() => all.push(base.to_owned()),
            _ => {
                return Err(format!(
                    "Vault address {:?} is not http:// or https:// followed by a host",
                    part.trim()
                ));
            }
        }
    }
    Ok(all)
}

/// What went wrong decoding an answer, without serde's own text: for a value of the wrong type it
/// quotes the value, which may be secret data.
fn decode_message(err: &serde_json::Error) -> String {
    let kind = match err.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "JSON of an unexpected shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{kind} (line {}, column {})", err.line(), err.column())
}

/// Maps a non-2xx answer to an error. Vault's `errors` strings describe the failure, not the data.
fn classify(operation: &'static str, path: &str, status: StatusCode, body: &[u8]) -> VaultError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
        .map(|errors| {
            errors
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let path = path.to_owned();
    match status.as_u16() {
        503 if message.contains("sealed") => VaultError::Sealed { operation },
        403 => VaultError::PermissionDenied { operation, path },
        404 => VaultError::NotFound { operation, path },
        429 | 500..=599 => VaultError::Unavailable {
            operation,
            status: status.as_u16(),
            message,
        },
        code => VaultError::Rejected {
            operation,
            path,
            status: code,
            message,
        },
    }
}

/// The error and its causes on one line ("error sending request: connection refused").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_never_quote_the_answer() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Answer {
            port: u16,
            user: String,
        }
        for body in [
            r#"{"port": "canary-s3cr3t", "user": "u"}"#,
            r#"{"port": 1, "user": 42, "canary-s3cr3t": 1}"#,
            r#"{"port": 99999999999, "user": "canary-s3cr3t"}"#,
            r#"{"port": 1, "user": "canary-s3cr3t""#,
            r#"canary-s3cr3t"#,
        ] {
            let err = serde_json::from_str::<Answer>(body).unwrap_err();
            let message = decode_message(&err);
            assert!(!message.contains("canary"), "{message}");
            assert!(!message.contains("99999999999"), "{message}");
            assert!(message.contains("line 1"), "{message}");
        }
    }

    #[test]
    fn classifies_vault_answers() {
        let sealed = classify(
            "kv2_metadata",
            "secret/metadata/x",
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"errors":["Vault is sealed"]}"#,
        );
        assert!(matches!(sealed, VaultError::Sealed { .. }));
        assert!(sealed.is_outage());
        let denied = classify(
            "kv2_read",
            "secret/data/x",
            StatusCode::FORBIDDEN,
            br#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#,
        );
        assert_eq!(denied.category(), "permission_denied");
        assert!(!denied.is_outage());
        assert_eq!(
            denied.to_string(),
            "failed to kv2_read at secret/data/x: permission denied"
        );
        let missing = classify("kv2_read", "secret/data/x", StatusCode::NOT_FOUND, b"");
        assert!(matches!(missing, VaultError::NotFound { .. }));
        let standby = classify(
            "kv2_read",
            "p",
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"errors":["node is in standby"]}"#,
        );
        assert!(matches!(
            standby,
            VaultError::Unavailable { status: 503, .. }
        ));
        let bad = classify(
            "login",
            "auth/kubernetes/login",
            StatusCode::BAD_REQUEST,
            br#"{"errors":["invalid role name \"x\""]}"#,
        );
        assert!(matches!(bad, VaultError::Rejected { status: 400, .. }));
        assert!(bad.to_string().contains("invalid role name"));
    }
}
