//! The agent's configuration: what it renders, where, and as whom, and the rules it must meet.
//!
//! The webhook serialises one [`AgentConfig`] per injected container as compact JSON into the
//! environment variable [`AGENT_CONFIG_ENV`]; the agent reads it with [`AgentConfig::parse`] and
//! refuses to start when that fails. The webhook runs the same [`AgentConfig::parse`] on the JSON
//! it is about to inject and denies the pod instead, so nothing is admitted that the agent would
//! refuse.
//!
//! ```json
//! {
//!   "version": 1,
//!   "mode": "sidecar",
//!   "vaultAddr": "https://vault.vault.svc:8200",
//!   "vaultCaPem": "-----BEGIN CERTIFICATE-----\n…",
//!   "vaultNamespace": "team-a",
//!   "authPath": "auth/kubernetes",
//!   "role": "web",
//!   "tokenFile": "/var/run/secrets/vaultkeeper/serviceaccount/token",
//!   "readyFile": "/var/run/vaultkeeper/ready",
//!   "volumePath": "/vault/secrets",
//!   "secrets": [
//!     {"name": "db", "path": "database/creds/web", "template": "{{ with secret \"database/creds/web\" }}…{{ end }}",
//!      "file": "db", "mountPath": "/vault/secrets", "perms": "0440"}
//!   ]
//! }
//! ```
//!
//! Rules the agent follows:
//! - Unknown fields are ignored, so the webhook may add optional fields without breaking older
//!   agents; a `version` the agent does not know is a fatal error (exit non-zero, nothing written).
//! - Optional fields are omitted (never `null`) when unset.
//! - Every request to Vault, the login included, carries `X-Vault-Namespace: {vaultNamespace}`
//!   when it is set; without it the agent works in the root namespace.
//! - The agent logs in by `POST {vaultAddr}/v1/{authPath}/login` with `{"role", "jwt"}`, the JWT
//!   read from `tokenFile` at every login (the kubelet rotates it).
//! - Each secret is written to `{mountPath}/{file}` (parent directories created), atomically
//!   (temporary file in the same directory, then rename), with mode `perms` (octal, default
//!   `0644`). Without `template` the agent writes every key of the secret's data as a `key: value`
//!   line in key order, as the Vault Agent Injector does.
//! - `mode: "init"`: render every secret once, then exit 0; exit non-zero on any failure so the pod
//!   does not start with missing files. `mode: "sidecar"`: render, create `readyFile` once every
//!   secret has been rendered, then keep tokens and leases renewed and re-render on change.
//! - `vaultkeeper-agent wait --timeout 120s` (the native sidecar's postStart hook) reads the same
//!   variable and returns once `readyFile` exists, or exits 1 after the timeout;
//!   `vaultkeeper-agent probe` (the startup probe of pods injected by earlier builds)
//!   exits 0 if `readyFile` exists, 1 otherwise.
//! - Secret values are never logged; paths, names and roles may be.
//!
//! What [`AgentConfig::validate`] refuses, one [`Violation`] (and [`Rule`]) each: a `vaultAddr`
//! that is not an `http://` or `https://` address; a `vaultNamespace` that is not a namespace
//! path; an `authPath` that names no mount; an empty `role`; no secrets; and per secret an empty
//! `path`, a relative `mountPath`, a `file` that is absolute or climbs out with `..`, `perms` that
//! are not an octal mode, two secrets writing one file, and one secret's file standing where
//! another needs a directory.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::annotations::{PodSetting, SecretSetting};

/// The environment variable that carries the JSON configuration.
pub const AGENT_CONFIG_ENV: &str = "VAULTKEEPER_AGENT_CONFIG";
/// The contract version the webhook writes and the agent understands.
pub const AGENT_CONFIG_VERSION: u32 = 1;

/// Everything one agent container needs; see the module docs for the JSON form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// Contract version, currently 1.
    pub version: u32,
    /// Render once and exit (`init`) or keep running (`sidecar`).
    pub mode: AgentMode,
    /// Base URL of Vault or OpenBao, e.g. `https://vault.vault.svc:8200`.
    pub vault_addr: String,
    /// PEM bundle of the CAs that sign Vault's serving certificate; absent = system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_ca_pem: Option<String>,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`; absent = root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_namespace: Option<String>,
    /// Path of the Kubernetes auth method including `auth/`, e.g. `auth/kubernetes`.
    pub auth_path: String,
    /// The Vault role to log in as.
    pub role: String,
    /// File holding the pod's projected ServiceAccount token (re-read at every login).
    pub token_file: String,
    /// File the sidecar creates once every secret is rendered (the postStart hook waits for it).
    pub ready_file: String,
    /// The pod's default secrets mount path, e.g. `/vault/secrets` (informational: every secret
    /// carries its own `mountPath`).
    #[serde(default)]
    pub volume_path: String,
    /// The files to render, sorted by name.
    pub secrets: Vec<AgentSecret>,
}

/// How the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// Render once, then exit 0 (non-zero on failure).
    Init,
    /// Render, signal readiness, then keep the files up to date.
    Sidecar,
}

/// One rendered file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSecret {
    /// The name from the annotation (`…secret-<name>`); used in logs.
    pub name: String,
    /// The Vault path to read, e.g. `secret/data/web` or `database/creds/web`.
    pub path: String,
    /// A consul-template style Go template; absent = one `key: value` line per data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Path of the file relative to `mountPath`; may contain subdirectories, never `..`.
    pub file: String,
    /// Absolute directory where the secrets volume is mounted for this file.
    pub mount_path: String,
    /// File mode as four octal digits, e.g. `0440`; absent = `0644`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perms: Option<String>,
}

/// A configuration the agent cannot run with. Fatal for the agent; a denial for the webhook.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to parse the agent configuration: {0}")]
    Parse(String),
    #[error(
        "unsupported agent configuration version {0} (this agent understands version {AGENT_CONFIG_VERSION})"
    )]
    Version(u32),
    #[error("invalid agent configuration: {0}")]
    Invalid(#[from] Violation),
}

/// One broken rule, with the values that broke it (never secret data: paths, names, modes).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("vaultAddr {addr:?} is not an http:// or https:// address")]
    VaultAddr { addr: String },
    #[error(
        "vaultNamespace {namespace:?} is not a Vault namespace path (names such as team-a or team-a/web, separated by \"/\", of visible ASCII characters without \"+\" or \"*\", none of them ., .., root, sys, audit, auth, cubbyhole or identity)"
    )]
    VaultNamespace { namespace: String },
    #[error("authPath {auth_path:?} names no auth mount")]
    AuthPath { auth_path: String },
    #[error("role is empty")]
    Role,
    #[error("no secret to render")]
    NoSecrets,
    #[error("secret {secret:?} has an empty Vault path")]
    SecretPath { secret: String },
    #[error("secret {secret:?}: mountPath {mount_path:?} is not absolute")]
    MountPath { secret: String, mount_path: String },
    #[error("secret {secret:?}: file {file:?} must be a relative path without ..")]
    File { secret: String, file: String },
    #[error("secret {secret:?}: perms {perms:?} is not an octal file mode")]
    Perms { secret: String, perms: String },
    #[error("secret {secret:?}: secret {other:?} already writes {destination}")]
    SameFile {
        secret: String,
        other: String,
        destination: String,
    },
    #[error(
        "secret {secret:?} writes {destination}, below {file}, which secret {other:?} writes as a file"
    )]
    FileIsDirectory {
        secret: String,
        other: String,
        destination: String,
        file: String,
    },
    #[error("secret {secret:?}: the template cannot be used: {problem}")]
    Template { secret: String, problem: String },
}

/// The rules, without their values: one per [`Violation`] variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    VaultAddr,
    VaultNamespace,
    AuthPath,
    Role,
    NoSecrets,
    SecretPath,
    MountPath,
    File,
    Perms,
    SameFile,
    FileIsDirectory,
    Template,
}

impl Rule {
    /// Every rule [`AgentConfig::validate`] checks (besides the version).
    pub const ALL: [Self; 12] = [
        Self::VaultAddr,
        Self::VaultNamespace,
        Self::AuthPath,
        Self::Role,
        Self::NoSecrets,
        Self::SecretPath,
        Self::MountPath,
        Self::File,
        Self::Perms,
        Self::SameFile,
        Self::FileIsDirectory,
        Self::Template,
    ];
}

impl Violation {
    /// Which rule this is.
    pub fn rule(&self) -> Rule {
        match self {
            Self::VaultAddr { .. } => Rule::VaultAddr,
            Self::VaultNamespace { .. } => Rule::VaultNamespace,
            Self::AuthPath { .. } => Rule::AuthPath,
            Self::Role => Rule::Role,
            Self::NoSecrets => Rule::NoSecrets,
            Self::SecretPath { .. } => Rule::SecretPath,
            Self::MountPath { .. } => Rule::MountPath,
            Self::File { .. } => Rule::File,
            Self::Perms { .. } => Rule::Perms,
            Self::SameFile { .. } => Rule::SameFile,
            Self::FileIsDirectory { .. } => Rule::FileIsDirectory,
            Self::Template { .. } => Rule::Template,
        }
    }

    /// The pod annotations a person changes to fix this, both spellings; `None` when the value
    /// comes from the webhook's own configuration (the Vault address).
    pub fn annotations(&self) -> Option<String> {
        Some(match self {
            Self::VaultAddr { .. } => return None,
            Self::VaultNamespace { .. } => PodSetting::VaultNamespace.keys(),
            Self::AuthPath { .. } => PodSetting::AuthPath.keys(),
            Self::Role => PodSetting::Role.keys(),
            Self::NoSecrets => SecretSetting::Path.keys("<name>"),
            Self::SecretPath { secret } => SecretSetting::Path.keys(secret),
            Self::MountPath { secret, .. } => SecretSetting::VolumePath.keys(secret),
            Self::File { secret, .. }
            | Self::SameFile { secret, .. }
            | Self::FileIsDirectory { secret, .. } => SecretSetting::File.keys(secret),
            Self::Perms { secret, .. } => SecretSetting::Perms.keys(secret),
            Self::Template { secret, .. } => SecretSetting::Template.keys(secret),
        })
    }
}

impl AgentConfig {
    /// Parses and checks the JSON, as the agent does at start. Only the version is read first, so
    /// a future contract whose shape changed still gets the clear "unsupported version" message.
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let probe: VersionOnly =
            serde_json::from_str(json).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if probe.version != AGENT_CONFIG_VERSION {
            return Err(ConfigError::Version(probe.version));
        }
        let config: Self =
            serde_json::from_str(json).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Every rule the agent needs met before it runs; the first broken one is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != AGENT_CONFIG_VERSION {
            return Err(ConfigError::Version(self.version));
        }
        check_vault_addr(&self.vault_addr)?;
        if let Some(namespace) = &self.vault_namespace
            && !is_namespace_path(namespace)
        {
            return Err(Violation::VaultNamespace {
                namespace: namespace.clone(),
            }
            .into());
        }
        if self.auth_mount().is_empty() {
            return Err(Violation::AuthPath {
                auth_path: self.auth_path.clone(),
            }
            .into());
        }
        if self.role.trim().is_empty() {
            return Err(Violation::Role.into());
        }
        if self.secrets.is_empty() {
            return Err(Violation::NoSecrets.into());
        }
        for secret in &self.secrets {
            secret.validate()?;
        }
        check_destinations(&self.secrets)?;
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
}

impl AgentSecret {
    /// The file this secret renders to.
    pub fn destination(&self) -> PathBuf {
        Path::new(&self.mount_path).join(&self.file)
    }

    /// The file mode (`perms`, octal, default `0644`).
    pub fn mode(&self) -> Result<u32, Violation> {
        let Some(text) = self.perms.as_deref() else {
            return Ok(0o644);
        };
        match u32::from_str_radix(text, 8) {
            Ok(mode) if !text.is_empty() && mode <= 0o7777 => Ok(mode),
            _ => Err(Violation::Perms {
                secret: self.name.clone(),
                perms: text.to_owned(),
            }),
        }
    }

    fn validate(&self) -> Result<(), Violation> {
        if self.path.trim_matches('/').is_empty() {
            return Err(Violation::SecretPath {
                secret: self.name.clone(),
            });
        }
        if !Path::new(&self.mount_path).is_absolute() {
            return Err(Violation::MountPath {
                secret: self.name.clone(),
                mount_path: self.mount_path.clone(),
            });
        }
        let relative = Path::new(&self.file)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !relative || Path::new(&self.file).file_name().is_none() {
            return Err(Violation::File {
                secret: self.name.clone(),
                file: self.file.clone(),
            });
        }
        if let Some(template) = &self.template {
            // Text gtmpl would panic or hang on is refused here, so the webhook denies it at
            // admission; the agent parses the template itself at start.
            crate::template_text::lexable(template).map_err(|problem| Violation::Template {
                secret: self.name.clone(),
                problem,
            })?;
        }
        self.mode().map(|_| ())
    }
}

/// The Vault address rule on its own, for the webhook's flag: `http://` or `https://` and a host;
/// or several such addresses (the nodes of one cluster) separated by commas.
pub fn check_vault_addr(addr: &str) -> Result<(), Violation> {
    let good = |one: &str| {
        let one = one.trim();
        one.strip_prefix("https://")
            .or_else(|| one.strip_prefix("http://"))
            .is_some_and(|rest| !rest.trim_matches('/').is_empty())
    };
    if addr.split(',').all(good) {
        Ok(())
    } else {
        Err(Violation::VaultAddr {
            addr: addr.to_owned(),
        })
    }
}

/// No two secrets write one file, and no secret writes below another's file (the agent would
/// need that file to be a directory).
fn check_destinations(secrets: &[AgentSecret]) -> Result<(), Violation> {
    let mut seen: BTreeMap<PathBuf, &str> = BTreeMap::new();
    for secret in secrets {
        let destination = secret.destination();
        if let Some(other) = seen.insert(destination.clone(), &secret.name) {
            return Err(Violation::SameFile {
                secret: secret.name.clone(),
                other: other.to_owned(),
                destination: destination.display().to_string(),
            });
        }
    }
    for (destination, secret) in &seen {
        for (file, other) in &seen {
            if destination != file && destination.starts_with(file) {
                return Err(Violation::FileIsDirectory {
                    secret: (*secret).to_owned(),
                    other: (*other).to_owned(),
                    destination: destination.display().to_string(),
                    file: file.display().to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Names a namespace can never have, in Vault and in OpenBao (which refuses to create them);
/// `root` alone is the root namespace.
const RESERVED_NAMESPACE_NAMES: &[&str] = &[
    ".",
    "..",
    "root",
    "sys",
    "audit",
    "auth",
    "cubbyhole",
    "identity",
];

/// `team-a`, `team-a/web`, with optional slashes around: names separated by single slashes, of
/// visible ASCII (what an HTTP header carries) without the wildcards `+` and `*`, none of them
/// reserved. Those are the rules OpenBao applies when it creates a namespace, so a path outside
/// them can only ever answer "namespace not found".
fn is_namespace_path(namespace: &str) -> bool {
    let path = namespace.trim_matches('/');
    if path == "root" {
        return true;
    }
    !path.is_empty()
        && path.split('/').all(|name| {
            !name.is_empty()
                && !RESERVED_NAMESPACE_NAMES.contains(&name)
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'+' && b != b'*')
        })
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
        assert_eq!(config.mode, AgentMode::Sidecar);
        assert_eq!(config.auth_mount(), "kubernetes");
        assert_eq!(config.secrets[0].mode(), Ok(0o440));
        assert_eq!(config.secrets[1].mode(), Ok(0o644));
        assert_eq!(
            config.secrets[1].destination(),
            Path::new("/vault/secrets/sub/cfg.txt")
        );
        assert!(config.secrets[1].template.is_none());
        assert_eq!(config.vault_namespace, None);
    }

    #[test]
    fn serialises_what_it_parses_and_omits_unset_fields() {
        let mut value = sample();
        value["vaultNamespace"] = "team-a/web".into();
        let config = parse(&value).unwrap();
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["vaultNamespace"], "team-a/web");
        assert!(json.get("vaultCaPem").is_none(), "{json}");
        assert!(json["secrets"][1].get("perms").is_none(), "{json}");
        assert_eq!(AgentConfig::parse(&json.to_string()), Ok(config));
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
        let mut config = parse(&sample()).unwrap();
        config.version = 3;
        assert_eq!(config.validate(), Err(ConfigError::Version(3)));
    }

    #[test]
    fn the_nodes_of_one_cluster_may_be_given_separated_by_commas() {
        assert_eq!(check_vault_addr("https://vault.vault.svc:8200"), Ok(()));
        assert_eq!(
            check_vault_addr("http://10.0.0.1:8200, http://10.0.0.2:8200/"),
            Ok(())
        );
        assert!(check_vault_addr("http://10.0.0.1:8200,").is_err());
    }

    /// One broken value per rule, with the message the agent prints and the webhook denies with.
    fn violations() -> Vec<(Rule, &'static str, serde_json::Value, &'static str)> {
        use serde_json::Value;
        vec![
            (
                Rule::VaultAddr,
                "/vaultAddr",
                "".into(),
                "vaultAddr \"\" is not an http:// or https:// address",
            ),
            (
                Rule::VaultAddr,
                "/vaultAddr",
                "vault:8200".into(),
                "is not an http:// or https:// address",
            ),
            (
                Rule::VaultAddr,
                "/vaultAddr",
                "https://".into(),
                "is not an http:// or https:// address",
            ),
            (
                Rule::VaultAddr,
                "/vaultAddr",
                "https://vault-0:8200,vault-1:8200".into(),
                "is not an http:// or https:// address",
            ),
            (
                Rule::VaultNamespace,
                "/vaultNamespace",
                "team a".into(),
                "vaultNamespace \"team a\" is not a Vault namespace path",
            ),
            (
                Rule::VaultNamespace,
                "/vaultNamespace",
                "a//b".into(),
                "is not a Vault namespace path",
            ),
            (
                Rule::VaultNamespace,
                "/vaultNamespace",
                "/".into(),
                "is not a Vault namespace path",
            ),
            (
                Rule::VaultNamespace,
                "/vaultNamespace",
                "".into(),
                "is not a Vault namespace path",
            ),
            (
                Rule::VaultNamespace,
                "/vaultNamespace",
                "team-a/..".into(),
                "is not a Vault namespace path",
            ),
            (
                Rule::VaultNamespace,
                "/vaultNamespace",
                "équipe".into(),
                "is not a Vault namespace path",
            ),
            (
                Rule::VaultNamespace,
                "/vaultNamespace",
                "team-*".into(),
                "is not a Vault namespace path",
            ),
            (
                Rule::VaultNamespace,
                "/vaultNamespace",
                "team-a/sys".into(),
                "is not a Vault namespace path",
            ),
            (
                Rule::VaultNamespace,
                "/vaultNamespace",
                "root/team-a".into(),
                "is not a Vault namespace path",
            ),
            (
                Rule::AuthPath,
                "/authPath",
                "auth/".into(),
                "authPath \"auth/\" names no auth mount",
            ),
            (
                Rule::AuthPath,
                "/authPath",
                "".into(),
                "names no auth mount",
            ),
            (Rule::Role, "/role", " ".into(), "role is empty"),
            (
                Rule::NoSecrets,
                "/secrets",
                Value::Array(vec![]),
                "no secret to render",
            ),
            (
                Rule::SecretPath,
                "/secrets/0/path",
                "/".into(),
                "secret \"db\" has an empty Vault path",
            ),
            (
                Rule::MountPath,
                "/secrets/0/mountPath",
                "rel".into(),
                "secret \"db\": mountPath \"rel\" is not absolute",
            ),
            (
                Rule::File,
                "/secrets/0/file",
                "../../etc/passwd".into(),
                "secret \"db\": file \"../../etc/passwd\" must be a relative path without ..",
            ),
            (Rule::File, "/secrets/0/file", "/abs".into(), "without .."),
            (Rule::File, "/secrets/0/file", "".into(), "without .."),
            (Rule::File, "/secrets/0/file", ".".into(), "without .."),
            (
                Rule::Perms,
                "/secrets/0/perms",
                "0999".into(),
                "secret \"db\": perms \"0999\" is not an octal file mode",
            ),
            (
                Rule::Perms,
                "/secrets/0/perms",
                "".into(),
                "is not an octal file mode",
            ),
            (
                Rule::Perms,
                "/secrets/0/perms",
                "17777".into(),
                "is not an octal file mode",
            ),
            (
                Rule::SameFile,
                "/secrets/1/file",
                "db".into(),
                "secret \"cfg\": secret \"db\" already writes /vault/secrets/db",
            ),
            (
                Rule::FileIsDirectory,
                "/secrets/1/file",
                "db/cfg.txt".into(),
                "secret \"cfg\" writes /vault/secrets/db/cfg.txt, below /vault/secrets/db, which secret \"db\" writes as a file",
            ),
            (
                Rule::Template,
                "/secrets/0/template",
                "{{ é }}".into(),
                "secret \"db\": the template cannot be used: ",
            ),
            (
                Rule::Template,
                "/secrets/0/template",
                "{{ \"a\\x\" }}".into(),
                "secret \"db\": the template cannot be used: ",
            ),
        ]
    }

    #[test]
    fn each_rule_refuses_with_its_own_message() {
        for (rule, pointer, value, expected) in violations() {
            let mut config = sample();
            match config.pointer_mut(pointer) {
                Some(slot) => *slot = value.clone(),
                None => config[pointer.trim_start_matches('/')] = value.clone(),
            }
            match parse(&config) {
                Err(ConfigError::Invalid(violation)) => {
                    assert_eq!(violation.rule(), rule, "{pointer}={value}: {violation}");
                    let message = ConfigError::Invalid(violation).to_string();
                    assert!(
                        message.starts_with("invalid agent configuration: "),
                        "{message}"
                    );
                    assert!(message.contains(expected), "{pointer}={value}: {message}");
                }
                other => panic!("{pointer}={value}: expected {rule:?}, got {other:?}"),
            }
        }
        let covered: std::collections::BTreeSet<Rule> =
            violations().iter().map(|(rule, ..)| *rule).collect();
        assert_eq!(covered.len(), Rule::ALL.len(), "a rule has no case");
    }

    #[test]
    fn accepts_what_the_rules_allow() {
        for (pointer, value) in [
            ("/vaultNamespace", serde_json::Value::from("team-a")),
            ("/vaultNamespace", "team-a/web/".into()),
            ("/vaultNamespace", "/root".into()),
            ("/vaultAddr", "https://vault.vault.svc:8200".into()),
            ("/authPath", "k8s-prod".into()),
            ("/authPath", "/auth/kubernetes/".into()),
            ("/secrets/0/file", "./a/./b".into()),
            ("/secrets/0/perms", "0".into()),
            ("/secrets/0/perms", "7777".into()),
            ("/secrets/1/file", "dbx/cfg.txt".into()),
        ] {
            let mut config = sample();
            match config.pointer_mut(pointer) {
                Some(slot) => *slot = value.clone(),
                None => config[pointer.trim_start_matches('/')] = value.clone(),
            }
            assert!(
                parse(&config).is_ok(),
                "{pointer}={value}: {:?}",
                parse(&config)
            );
        }
    }

    #[test]
    fn violations_name_the_annotations_to_fix() {
        let file = Violation::File {
            secret: "db".into(),
            file: "..".into(),
        };
        assert_eq!(
            file.annotations().as_deref(),
            Some("vaultkeeper.dev/file-db or vault.hashicorp.com/agent-inject-file-db")
        );
        let address = Violation::VaultAddr {
            addr: String::new(),
        };
        assert_eq!(address.annotations(), None);
    }

    #[test]
    fn malformed_json_is_a_parse_error() {
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
