//! The agent's configuration: the JSON the webhook writes into `VAULTKEEPER_AGENT_CONFIG`. The
//! type, its JSON form and its validation are the contract in `agent_contract::config`, shared
//! with the webhook (which runs the same check before admitting a pod); this module adds what only
//! the agent needs: where it keeps its state and which identity a stored token belongs to.

use std::path::{Path, PathBuf};

pub use agent_contract::config::{
    AGENT_CONFIG_ENV, AGENT_CONFIG_VERSION, AgentConfig, AgentMode, AgentSecret, ConfigError,
    Violation,
};

/// Where the agent keeps its token and lease state: next to the ready file, in the agent's own
/// in-memory volume, which survives container restarts but not the pod.
pub fn state_dir(config: &AgentConfig) -> PathBuf {
    Path::new(&config.ready_file)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Names the identity a stored token belongs to; a stored token is reused only for the same.
/// A token lives in one Vault namespace, so the namespace is part of it when one is set.
pub fn identity(config: &AgentConfig) -> String {
    let base = format!(
        "{}|{}|{}",
        config.vault_addr.trim_end_matches('/'),
        config.auth_mount(),
        config.role
    );
    match &config.vault_namespace {
        Some(namespace) => format!("{base}|ns={}", namespace.trim_matches('/')),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "version": 1,
            "mode": "sidecar",
            "vaultAddr": "http://127.0.0.1:8200/",
            "authPath": "auth/kubernetes",
            "role": "web",
            "tokenFile": "/var/run/secrets/vaultkeeper/serviceaccount/token",
            "readyFile": "/var/run/vaultkeeper/ready",
            "secrets": [{"name": "cfg", "path": "secret/data/web", "file": "cfg", "mountPath": "/vault/secrets"}]
        })
    }

    #[test]
    fn state_lives_next_to_the_ready_file() {
        let config = AgentConfig::parse(&sample().to_string()).unwrap();
        assert_eq!(state_dir(&config), Path::new("/var/run/vaultkeeper"));
    }

    #[test]
    fn identity_names_address_mount_role_and_namespace() {
        let mut value = sample();
        let root = AgentConfig::parse(&value.to_string()).unwrap();
        assert_eq!(identity(&root), "http://127.0.0.1:8200|kubernetes|web");
        value["vaultNamespace"] = "/team-a/".into();
        let team = AgentConfig::parse(&value.to_string()).unwrap();
        assert_eq!(
            identity(&team),
            "http://127.0.0.1:8200|kubernetes|web|ns=team-a"
        );
    }

    #[test]
    fn the_agent_refuses_what_the_contract_refuses() {
        let mut value = sample();
        value["vaultNamespace"] = "team a".into();
        let error = AgentConfig::parse(&value.to_string()).unwrap_err();
        assert!(
            matches!(
                &error,
                ConfigError::Invalid(Violation::VaultNamespace { .. })
            ),
            "{error}"
        );
    }
}
