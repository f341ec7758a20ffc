//! The operator's configuration: flags, each with an environment variable, and the named Vault
//! connections. Nothing else in the operator reads the environment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// vaultkeeper operator: keeps Vault secrets flowing into Kubernetes Secrets.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// Address of the default Vault connection, for example https://vault.vault:8200; or the
    /// addresses of a raft cluster's nodes separated by commas (requests go to the node that last
    /// served and move on when one is down, sealed or in standby without an active node).
    #[arg(long, env = "VAULTKEEPER_VAULT_ADDR")]
    pub vault_addr: String,

    /// PEM file of CAs that sign the default Vault's certificate (in addition to system roots).
    #[arg(long, env = "VAULTKEEPER_VAULT_CA_FILE")]
    pub vault_ca_file: Option<PathBuf>,

    /// Default path of Vault's Kubernetes auth method, used when a resource sets no `auth.mount`.
    #[arg(
        long,
        env = "VAULTKEEPER_VAULT_AUTH_MOUNT",
        default_value = "kubernetes"
    )]
    pub vault_auth_mount: String,

    /// JSON file of extra named connections: {"<name>": {"address": "...", "caFile": "...",
    /// "authMount": "..."}}. Resources pick one with `spec.connection`.
    #[arg(long, env = "VAULTKEEPER_VAULT_CONNECTIONS_FILE")]
    pub vault_connections_file: Option<PathBuf>,

    /// Timeout of one Vault request.
    #[arg(long, env = "VAULTKEEPER_VAULT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub vault_timeout: Duration,

    /// How long a request to the Kubernetes API (not a watch) may take to connect, and then to be
    /// answered.
    #[arg(long, env = "VAULTKEEPER_KUBE_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub kube_timeout: Duration,

    /// Audiences of the ServiceAccount tokens presented to Vault (comma separated). Empty means the
    /// API server's default audience, which Vault's TokenReview accepts when its role sets none.
    #[arg(long, env = "VAULTKEEPER_TOKEN_AUDIENCES", value_delimiter = ',')]
    pub token_audiences: Vec<String>,

    /// Lifetime of the ServiceAccount tokens requested for Vault logins.
    #[arg(long, env = "VAULTKEEPER_TOKEN_TTL", default_value = "10m", value_parser = parse_duration)]
    pub token_ttl: Duration,

    /// Namespace the operator runs in; holds its own state (the HMAC key Secret).
    #[arg(
        long,
        env = "VAULTKEEPER_NAMESPACE",
        default_value = "vaultkeeper-system"
    )]
    pub namespace: String,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "VAULTKEEPER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,

    /// How many periodic refreshes of VaultSecrets run at once. New and changed resources do not
    /// wait for these.
    #[arg(long, env = "VAULTKEEPER_REFRESH_CONCURRENCY", default_value_t = 16)]
    pub refresh_concurrency: usize,

    /// How many other reconciles run at once: first syncs and changes of VaultSecrets, and every
    /// DynamicCredential and CertificateRequest reconcile (renewals, rotations, issuance). The rest
    /// wait their turn, cheaply.
    #[arg(long, env = "VAULTKEEPER_SYNC_CONCURRENCY", default_value_t = crate::context::DEFAULT_SYNC_CONCURRENCY)]
    pub sync_concurrency: usize,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info` or `info,vaultkeeper_operator=debug`).
    #[arg(long, env = "VAULTKEEPER_LOG", default_value = "info")]
    pub log: String,

    /// Data changes within this window after the first one cause a single restart of a resource's
    /// restartTargets.
    #[arg(long, env = "VAULTKEEPER_RESTART_DEBOUNCE", default_value = "10s", value_parser = parse_duration)]
    pub restart_debounce: Duration,

    /// How long a replaced lease or certificate waits for the restarted workloads to finish their
    /// rollout before it is revoked anyway (after its grace period, with a Warning Event
    /// `RolloutNotFinished`). A Deployment past its `progressDeadlineSeconds` ends the wait at once.
    #[arg(long, env = "VAULTKEEPER_ROLLOUT_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub rollout_timeout: Duration,

    /// Workload restarts allowed per namespace per minute (a token bucket of that size).
    #[arg(long, env = "VAULTKEEPER_RESTARTS_PER_MINUTE", default_value_t = 10)]
    pub restarts_per_minute: u32,

    /// Elect one active replica through the coordination Lease `vaultkeeper-operator` in the
    /// operator's namespace; the others wait warm and take over when it is gone.
    #[arg(long, env = "VAULTKEEPER_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Split the resources into this many shards by their namespace and share them between
    /// replicas (each holds its fair share through one Lease per shard, `vaultkeeper-shard-<i>`,
    /// and takes over a dead replica's), instead of one leader doing all the work. 0: off.
    /// Leader election then only picks the replica that manages the webhook's certificate.
    #[arg(long, env = "VAULTKEEPER_SHARDS", default_value_t = 0)]
    pub shards: u32,

    /// This replica's name in the Lease and in Events (the chart sets the pod name). A random name
    /// when unset.
    #[arg(long, env = "VAULTKEEPER_IDENTITY")]
    pub identity: Option<String>,

    /// How long a leader's Lease lasts without renewal before another replica may take it.
    #[arg(long, env = "VAULTKEEPER_LEASE_DURATION", default_value = "10s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// Log format: `text` or `json`.
    #[arg(long, env = "VAULTKEEPER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Watch only these namespaces (comma separated) instead of the whole cluster: the namespaced
    /// install mode, whose RBAC is Roles in these namespaces (and the operator's own).
    #[arg(long, env = "VAULTKEEPER_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,

    /// The injection webhook's MutatingWebhookConfiguration. When set, the operator issues and
    /// rotates the webhook's serving certificate (from a CA of its own) and writes that CA into the
    /// configuration's `caBundle`. Empty: the certificate comes from elsewhere (cert-manager, yours).
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_CONFIGURATION", default_value = "")]
    pub webhook_configuration: String,

    /// The webhook's Service in the operator's namespace; the serving certificate names it.
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_SERVICE",
        default_value = "vaultkeeper-webhook"
    )]
    pub webhook_service: String,

    /// The Secret the serving certificate is written to (the webhook pods mount it).
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_TLS_SECRET",
        default_value = "vaultkeeper-webhook-tls"
    )]
    pub webhook_tls_secret: String,

    /// The Secret of the CA that signs it (only the operator reads it).
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_CA_SECRET",
        default_value = "vaultkeeper-webhook-ca"
    )]
    pub webhook_ca_secret: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crds::duration::parse(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as 30s, 5m or 1h"))
}

/// One named Vault connection as written in the connections file.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionSpec {
    pub address: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub auth_mount: Option<String>,
}

/// The name `spec.connection` takes when a resource leaves it empty.
pub const DEFAULT_CONNECTION: &str = "default";

impl Args {
    /// Where the webhook's serving certificate lives, when the operator manages it.
    pub fn webhook_tls(&self) -> Option<crate::webhook_tls::Names> {
        (!self.webhook_configuration.is_empty()).then(|| crate::webhook_tls::Names {
            namespace: self.namespace.clone(),
            service: self.webhook_service.clone(),
            ca_secret: self.webhook_ca_secret.clone(),
            tls_secret: self.webhook_tls_secret.clone(),
            configuration: self.webhook_configuration.clone(),
        })
    }

    /// All connections: `default` from the flags plus those of the connections file.
    pub fn connections(&self) -> anyhow::Result<BTreeMap<String, ConnectionSpec>> {
        let mut all = BTreeMap::new();
        if let Some(file) = &self.vault_connections_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                anyhow::anyhow!("failed to read connections file {}: {e}", file.display())
            })?;
            all = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("failed to parse connections file {}: {e}", file.display())
            })?;
        }
        all.insert(
            DEFAULT_CONNECTION.to_owned(),
            ConnectionSpec {
                address: self.vault_addr.clone(),
                ca_file: self.vault_ca_file.clone(),
                auth_mount: Some(self.vault_auth_mount.clone()),
            },
        );
        Ok(all)
    }
}
