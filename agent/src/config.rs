//! The agent's configuration: the JSON the webhook writes into `VAULTKEEPER_AGENT_CONFIG`
//! (contract described in `webhook/src/agent_config.rs`; re-declared here so the agent never
//! depends on the webhook, kube or k8s-openapi), parsed and checked before anything runs.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// The contract versions this agent understands.
pub const SUPPORTED_VERSION: u32 = 1;

/// A configuration the agent cannot run with. Fatal: the agent exits non-zero.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("failed to parse the agent configuration: {0}")]
    Parse(String),
    #[error(
        "unsupported agent configuration version {0} (this agent understands version {SUPPORTED_VERSION})"
    )]
    Version(u32),
    #[error("invalid agent configuration: {0}")]
    Invalid(String),
}

/// Render once and exit, or keep the files up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Init,
    Sidecar,
}

/// The whole configuration. Unknown fields are ignored (the webhook may add optional ones).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    pub version: u32,
    pub mode: Mode,
    pub vault_addr: String,
    #[serde(default)]
    pub vault_ca_pem: Option<String>,
    #[serde(default)]
    pub vault_namespace: Option<String>,
    pub auth_path: String,
    pub role: String,
    pub token_file: PathBuf,
    pub ready_file: PathBuf,
    #[serde(default)]
    pub volume_path: String,
    pub secrets: Vec<SecretSpec>,
}

/// One file to render.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub template: Option<String>,
    pub file: String,
    pub mount_path: String,
    #[serde(default)]
    pub perms: Option<String>,
}

impl AgentConfig {
    /// Parses and checks the JSON. Only the version is read first, so a future contract whose
    /// shape changed still gets the clear "unsupported version" message.
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let probe: VersionOnly =
            serde_json::from_str(json).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if probe.version != SUPPORTED_VERSION {
            return Err(ConfigError::Version(probe.version));
        }
        let config: Self =
            serde_json::from_str(json).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.vault_addr.is_empty() {
            return invalid("vaultAddr is empty".into());
        }
        if self
            .vault_namespace
            .as_deref()
            .is_some_and(|ns| !ns.is_empty())
        {
            // The shared Vault client has no per-client headers yet; reading the root namespace
            // instead of the requested one would be worse than refusing to start.
            return invalid(
                "vaultNamespace is not supported by this agent yet (X-Vault-Namespace)".into(),
            );
        }
        if self.auth_mount().is_empty() {
            return invalid(format!("authPath {:?} names no auth mount", self.auth_path));
        }
        if self.role.is_empty() {
            return invalid("role is empty".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for secret in &self.secrets {
            if secret.path.trim_matches('/').is_empty() {
                return invalid(format!("secret {:?} has an empty path", secret.name));
            }
            if !Path::new(&secret.mount_path).is_absolute() {
                return invalid(format!(
                    "secret {:?}: mountPath {:?} is not absolute",
                    secret.name, secret.mount_path
                ));
            }
            let file = Path::new(&secret.file);
            if secret.file.is_empty()
                || !file
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return invalid(format!(
                    "secret {:?}: file {:?} must be a relative path without ..",
                    secret.name, secret.file
                ));
            }
            secret.mode().map_err(ConfigError::Invalid)?;
            if !seen.insert(secret.destination()) {
                return invalid(format!(
                    "secret {:?}: another secret already writes {}",
                    secret.name,
                    secret.destination().display()
                ));
            }
        }
        Ok(())
    }

    /// The auth mount for `auth/<mount>/login`: `authPath` without its `auth/` prefix.
    pub fn auth_mount(&self) -> &str {
        let path = self.auth_path.trim_matches('/');
        if path == "auth" {
            return "";
        }
        path.strip_prefix("auth/").unwrap_or(path).trim_matches('/')
    }

    /// Where the agent keeps its token and lease state: next to the ready file, in the agent's
    /// own in-memory volume, which survives container restarts but not the pod.
    pub fn state_dir(&self) -> PathBuf {
        self.ready_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Names the identity a stored token belongs to; a stored token is reused only for the same.
    pub fn identity(&self) -> String {
        format!(
            "{}|{}|{}",
            self.vault_addr.trim_end_matches('/'),
            self.auth_mount(),
            self.role
        )
    }
}

impl SecretSpec {
    /// The file this secret renders to.
    pub fn destination(&self) -> PathBuf {
        Path::new(&self.mount_path).join(&self.file)
    }

    /// The file mode (`perms`, octal, default `0644`).
    pub fn mode(&self) -> Result<u32, String> {
        let Some(text) = self.perms.as_deref() else {
            return Ok(0o644);
        };
        match u32::from_str_radix(text, 8) {
            Ok(mode) if !text.is_empty() && mode <= 0o7777 => Ok(mode),
            _ => Err(format!(
                "secret {:?}: perms {text:?} is not an octal file mode",
                self.name
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> serde_json::Value {
        serde_json::json!({
            "version": 1,
            "mode": "sidecar",
            "vaultAddr": "http://127.0.0.1:8200/",
            "authPath": "auth/kubernetes",
            "role": "web",
            "tokenFile": "/var/run/secrets/vaultkeeper/serviceaccount/token",
            "readyFile": "/var/run/vaultkeeper/ready",
            "volumePath": "/vault/secrets",
            "someFutureField": {"x": 1},
            "secrets": [
                {"name": "db", "path": "database/creds/web", "template": "{{ with secret \"database/creds/web\" }}{{ .Data.username }}{{ end }}",
                 "file": "db", "mountPath": "/vault/secrets", "perms": "0440"},
                {"name": "cfg", "path": "secret/data/web", "file": "sub/cfg.txt", "mountPath": "/vault/secrets"}
            ]
        })
    }

    fn parse(value: &serde_json::Value) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(&value.to_string())
    }

    #[test]
    fn parses_the_webhook_contract() {
        let config = parse(&sample()).unwrap();
        assert_eq!(config.mode, Mode::Sidecar);
        assert_eq!(config.auth_mount(), "kubernetes");
        assert_eq!(config.state_dir(), Path::new("/var/run/vaultkeeper"));
        assert_eq!(config.identity(), "http://127.0.0.1:8200|kubernetes|web");
        assert_eq!(config.secrets[0].mode(), Ok(0o440));
        assert_eq!(config.secrets[1].mode(), Ok(0o644));
        assert_eq!(
            config.secrets[1].destination(),
            Path::new("/vault/secrets/sub/cfg.txt")
        );
        assert!(config.secrets[1].template.is_none());
    }

    #[test]
    fn unknown_version_fails_clearly() {
        let mut value = sample();
        value["version"] = 2.into();
        value["mode"] = "something-new".into();
        let err = parse(&value).unwrap_err();
        assert_eq!(err, ConfigError::Version(2));
        assert_eq!(
            err.to_string(),
            "unsupported agent configuration version 2 (this agent understands version 1)"
        );
    }

    #[test]
    fn rejects_what_cannot_work() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            ("/secrets/0/file", "../../etc/passwd".into(), "without .."),
            ("/secrets/0/file", "/abs".into(), "without .."),
            ("/secrets/0/mountPath", "rel".into(), "not absolute"),
            ("/secrets/0/perms", "0999".into(), "not an octal"),
            ("/secrets/1/file", "db".into(), "already writes"),
            ("/authPath", "auth/".into(), "names no auth mount"),
            ("/vaultNamespace", "team-a".into(), "vaultNamespace"),
        ];
        for (pointer, value, expected) in cases {
            let mut config = sample();
            if let Some(slot) = config.pointer_mut(pointer) {
                *slot = value.clone();
            } else {
                config[pointer.trim_start_matches('/')] = value.clone();
            }
            if *pointer == "/secrets/1/file" {
                config["secrets"][1]["mountPath"] = "/vault/secrets".into();
            }
            let err = parse(&config).unwrap_err().to_string();
            assert!(err.contains(expected), "{pointer}: {err}");
        }
        assert!(matches!(
            AgentConfig::parse("{\"version\": 1}"),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            AgentConfig::parse("not json"),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn auth_path_without_prefix_is_the_mount() {
        let mut value = sample();
        value["authPath"] = "k8s-prod".into();
        assert_eq!(parse(&value).unwrap().auth_mount(), "k8s-prod");
    }
}
