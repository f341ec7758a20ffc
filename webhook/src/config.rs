//! The webhook's flags (each also an environment variable) and the [`WebhookConfig`] built from them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use crate::annotations::quantity_value;
use crate::inject::{StartupGate, WebhookConfig};

/// vaultkeeper webhook: injects the vaultkeeper agent into annotated pods.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    /// Address to serve admission reviews on (TLS).
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub addr: SocketAddr,
    /// PEM file with the serving certificate (chain); re-read when it changes.
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_CERT_FILE",
        default_value = "/etc/vaultkeeper/tls/tls.crt"
    )]
    pub cert_file: PathBuf,
    /// PEM file with the serving key; re-read when it changes.
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_KEY_FILE",
        default_value = "/etc/vaultkeeper/tls/tls.key"
    )]
    pub key_file: PathBuf,
    /// How often to check the certificate files for changes.
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_CERT_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub cert_reload_interval: Duration,
    /// Optional plain-HTTP address for /metrics and /healthz (they are also served over TLS).
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The agent image to inject.
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_AGENT_IMAGE")]
    pub agent_image: String,
    /// Vault's address as agents reach it, e.g. https://vault.vault.svc:8200.
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_VAULT_ADDR")]
    pub vault_addr: String,
    /// PEM file with the CA bundle for Vault's certificate, handed to the agents.
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_VAULT_CA_FILE")]
    pub vault_ca_file: Option<PathBuf>,
    /// Auth path for pods that do not name one.
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_DEFAULT_AUTH_PATH",
        default_value = "auth/kubernetes"
    )]
    pub default_auth_path: String,
    /// Inject native sidecars (restartable init containers, Kubernetes ≥ 1.29); false = classic.
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_NATIVE_SIDECARS", default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecars: bool,
    /// Agent CPU request ("" for none). The default is sized from a measurement: an init render
    /// took 34 ms of wall time, and a sidecar is idle between renders and renewals.
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_AGENT_REQUESTS_CPU",
        default_value = "5m"
    )]
    pub agent_requests_cpu: String,
    /// Agent memory request ("" for none). The default is sized from a measurement: the agent
    /// peaked at 5.8 MiB resident (VmHWM) as a sidecar.
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_AGENT_REQUESTS_MEM",
        default_value = "8Mi"
    )]
    pub agent_requests_mem: String,
    /// Agent CPU limit ("" for none).
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_AGENT_LIMITS_CPU", default_value = "")]
    pub agent_limits_cpu: String,
    /// Agent memory limit ("" for none). The default leaves about 5x headroom over the measured
    /// 5.8 MiB peak (VmHWM) for large secrets and templates.
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_AGENT_LIMITS_MEM",
        default_value = "32Mi"
    )]
    pub agent_limits_mem: String,
    /// sizeLimit of the in-memory secrets volume.
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_SECRETS_VOLUME_SIZE",
        default_value = "16Mi"
    )]
    pub secrets_volume_size: String,
    /// Agent user id when a pod does not set one.
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_AGENT_RUN_AS_USER",
        default_value_t = 100
    )]
    pub agent_run_as_user: i64,
    /// Agent group id when a pod does not set one.
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_AGENT_RUN_AS_GROUP",
        default_value_t = 1000
    )]
    pub agent_run_as_group: i64,
    /// Audience of the projected ServiceAccount token (default: the API server's).
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,
    /// Lifetime of the projected token in seconds (at least 600).
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_TOKEN_EXPIRATION_SECONDS",
        default_value_t = 3600
    )]
    pub token_expiration_seconds: i64,
    /// Seconds a native sidecar may take for its first render before the kubelet restarts it.
    /// With the post-start gate this also bounds how long a pod deleted before its first render
    /// takes to go.
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_STARTUP_TIMEOUT_SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(i32).range(1..=3600)
    )]
    pub startup_timeout_seconds: i32,
    /// How a native sidecar holds the app until its first render: post-start (a postStart hook;
    /// the app starts right after the render) or startup-probe (checked once a second).
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_STARTUP_GATE",
        value_enum,
        default_value = "post-start"
    )]
    pub startup_gate: StartupGate,
    /// Namespaces never injected (comma-separated).
    #[arg(
        long,
        env = "VAULTKEEPER_WEBHOOK_SKIP_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    pub skip_namespaces: Vec<String>,
    /// Log as JSON lines.
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_LOG_JSON", default_value_t = false, action = clap::ArgAction::Set)]
    pub log_json: bool,
}

impl Args {
    /// Checks the flags and reads the Vault CA file.
    pub fn webhook_config(&self) -> anyhow::Result<WebhookConfig> {
        let quantity = |flag: &str, value: &str| -> anyhow::Result<Option<String>> {
            let value = value.trim();
            if value.is_empty() {
                return Ok(None);
            }
            anyhow::ensure!(
                quantity_value(value).is_some(),
                "--{flag}: {value:?} is not a Kubernetes quantity"
            );
            Ok(Some(value.to_owned()))
        };
        anyhow::ensure!(
            quantity_value(&self.secrets_volume_size).is_some(),
            "--secrets-volume-size: {:?} is not a Kubernetes quantity",
            self.secrets_volume_size
        );
        anyhow::ensure!(
            self.token_expiration_seconds >= 600,
            "--token-expiration-seconds must be at least 600 (a Kubernetes rule)"
        );
        anyhow::ensure!(
            self.agent_run_as_user > 0,
            "--agent-run-as-user: the agent never runs as root"
        );
        let vault_ca_pem = match &self.vault_ca_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("failed to read {}", file.display()))?,
            ),
            None => None,
        };
        let vault_addr = self.vault_addr.trim_end_matches('/').to_owned();
        agent_contract::config::check_vault_addr(&vault_addr)
            .map_err(|violation| anyhow::anyhow!("--vault-addr: {violation}"))?;
        let mount = self.default_auth_path.trim().trim_matches('/');
        let mount = mount.strip_prefix("auth/").unwrap_or(mount);
        anyhow::ensure!(!mount.is_empty(), "--default-auth-path is empty");
        Ok(WebhookConfig {
            agent_image: self.agent_image.clone(),
            vault_addr,
            vault_ca_pem,
            default_auth_path: format!("auth/{mount}"),
            native_sidecars: self.native_sidecars,
            requests_cpu: quantity("agent-requests-cpu", &self.agent_requests_cpu)?,
            requests_memory: quantity("agent-requests-mem", &self.agent_requests_mem)?,
            limits_cpu: quantity("agent-limits-cpu", &self.agent_limits_cpu)?,
            limits_memory: quantity("agent-limits-mem", &self.agent_limits_mem)?,
            secrets_volume_size_limit: self.secrets_volume_size.clone(),
            run_as_user: self.agent_run_as_user,
            run_as_group: self.agent_run_as_group,
            token_audience: self.token_audience.clone().filter(|a| !a.is_empty()),
            token_expiration_seconds: self.token_expiration_seconds,
            startup_timeout_seconds: self.startup_timeout_seconds,
            startup_gate: self.startup_gate,
            skip_namespaces: self
                .skip_namespaces
                .iter()
                .map(|namespace| namespace.trim().to_owned())
                .filter(|namespace| !namespace.is_empty())
                .collect::<BTreeSet<_>>(),
        })
    }
}

/// `5s`, `500ms`, `1m`, or plain seconds.
/// A flag's duration: a bare number of seconds, or the contract's duration syntax (checked, so a
/// huge value is refused instead of overflowing).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    text.parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .or_else(|| agent_contract::duration::parse(text))
        .ok_or_else(|| format!("{text:?} is not a duration like 5s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_durations_are_checked() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("99999999999999999m").is_err());
        assert!(parse_duration("5d").is_err());
    }

    fn args(vault_addr: &str) -> Args {
        Args::try_parse_from([
            "vaultkeeper-webhook",
            "--agent-image",
            "agent:1",
            "--vault-addr",
            vault_addr,
        ])
        .expect("the flags parse")
    }

    #[test]
    fn a_vault_address_the_agent_would_refuse_stops_the_webhook_at_start() {
        let config = args("https://vault.vault.svc:8200/")
            .webhook_config()
            .unwrap();
        assert_eq!(config.vault_addr, "https://vault.vault.svc:8200");
        let error = args("vault.vault.svc:8200").webhook_config().unwrap_err();
        assert_eq!(
            error.to_string(),
            "--vault-addr: vaultAddr \"vault.vault.svc:8200\" is not an http:// or https:// address"
        );
    }
}
