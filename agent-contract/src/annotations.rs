//! The pod annotation vocabulary: the native `vaultkeeper.dev/` names and the subset of the Vault
//! Agent Injector's `vault.hashicorp.com/` names that vaultkeeper honours, so a manifest written
//! for vault-k8s works unchanged. The webhook parses them (`webhook/src/annotations.rs` owns the
//! parsing rules); configuration errors name them so a person knows which annotation to fix.
//!
//! | vault-k8s (`vault.hashicorp.com/…`) | native (`vaultkeeper.dev/…`) | default |
//! |---|---|---|
//! | `agent-inject` | `inject` | `false` |
//! | `agent-inject-status` | `status` | (`injected` = skip the pod) |
//! | `role` | `role` | required |
//! | `auth-path` | `auth-path` | the webhook's default (`auth/kubernetes`) |
//! | `namespace` | `vault-namespace` | none: the root namespace (Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`) |
//! | `agent-inject-secret-<name>` | `secret-<name>` | at least one is required |
//! | `agent-inject-template-<name>` | `template-<name>` | every key of the secret as `key: value` |
//! | `agent-inject-file-<name>` | `file-<name>` | `<name>` |
//! | `agent-inject-perms-<name>` | `perms-<name>` | the agent's default (`0644`) |
//! | `secret-volume-path` | `volume-path` | `/vault/secrets` |
//! | `secret-volume-path-<name>` | `volume-path-<name>` | the pod's volume path |
//! | `agent-pre-populate` | `pre-populate` | `true` |
//! | `agent-pre-populate-only` | `pre-populate-only` | `false` |
//! | `agent-run-as-user` | `run-as-user` | the webhook's default (100) |
//! | `agent-run-as-group` | `run-as-group` | the webhook's default (1000) |
//! | `agent-requests-cpu` / `-mem` | `requests-cpu` / `-mem` | the webhook's defaults |
//! | `agent-limits-cpu` / `-mem` | `limits-cpu` / `-mem` | the webhook's defaults |

/// The native annotation prefix.
pub const NATIVE_PREFIX: &str = "vaultkeeper.dev/";
/// The Vault Agent Injector's prefix.
pub const COMPAT_PREFIX: &str = "vault.hashicorp.com/";
/// Where the secrets volume is mounted unless the annotations say otherwise (as in vault-k8s).
pub const DEFAULT_VOLUME_PATH: &str = "/vault/secrets";
/// The annotation the webhook sets on an injected pod (value [`INJECTED`]).
pub const STATUS_ANNOTATION: &str = "vaultkeeper.dev/status";
/// The value of the status annotation (either spelling) that makes the webhook skip a pod.
pub const INJECTED: &str = "injected";

/// A setting that applies to the whole pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PodSetting {
    Inject,
    Status,
    Role,
    AuthPath,
    VaultNamespace,
    VolumePath,
    PrePopulate,
    PrePopulateOnly,
    RunAsUser,
    RunAsGroup,
    RequestsCpu,
    RequestsMemory,
    LimitsCpu,
    LimitsMemory,
}

impl PodSetting {
    /// Every pod-wide setting.
    pub const ALL: [Self; 14] = [
        Self::Inject,
        Self::Status,
        Self::Role,
        Self::AuthPath,
        Self::VaultNamespace,
        Self::VolumePath,
        Self::PrePopulate,
        Self::PrePopulateOnly,
        Self::RunAsUser,
        Self::RunAsGroup,
        Self::RequestsCpu,
        Self::RequestsMemory,
        Self::LimitsCpu,
        Self::LimitsMemory,
    ];

    /// The name after [`COMPAT_PREFIX`].
    pub fn compat_name(self) -> &'static str {
        match self {
            Self::Inject => "agent-inject",
            Self::Status => "agent-inject-status",
            Self::Role => "role",
            Self::AuthPath => "auth-path",
            Self::VaultNamespace => "namespace",
            Self::VolumePath => "secret-volume-path",
            Self::PrePopulate => "agent-pre-populate",
            Self::PrePopulateOnly => "agent-pre-populate-only",
            Self::RunAsUser => "agent-run-as-user",
            Self::RunAsGroup => "agent-run-as-group",
            Self::RequestsCpu => "agent-requests-cpu",
            Self::RequestsMemory => "agent-requests-mem",
            Self::LimitsCpu => "agent-limits-cpu",
            Self::LimitsMemory => "agent-limits-mem",
        }
    }

    /// The name after [`NATIVE_PREFIX`].
    pub fn native_name(self) -> &'static str {
        match self {
            Self::Inject => "inject",
            Self::Status => "status",
            Self::Role => "role",
            Self::AuthPath => "auth-path",
            Self::VaultNamespace => "vault-namespace",
            Self::VolumePath => "volume-path",
            Self::PrePopulate => "pre-populate",
            Self::PrePopulateOnly => "pre-populate-only",
            Self::RunAsUser => "run-as-user",
            Self::RunAsGroup => "run-as-group",
            Self::RequestsCpu => "requests-cpu",
            Self::RequestsMemory => "requests-mem",
            Self::LimitsCpu => "limits-cpu",
            Self::LimitsMemory => "limits-mem",
        }
    }

    /// Both full annotation keys, native first: `vaultkeeper.dev/role or vault.hashicorp.com/role`.
    pub fn keys(self) -> String {
        format!(
            "{NATIVE_PREFIX}{} or {COMPAT_PREFIX}{}",
            self.native_name(),
            self.compat_name()
        )
    }
}

/// A setting of one named secret (`…secret-<name>`, `…file-<name>`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretSetting {
    Path,
    Template,
    File,
    Perms,
    VolumePath,
}

impl SecretSetting {
    /// Every per-secret setting.
    pub const ALL: [Self; 5] = [
        Self::Path,
        Self::Template,
        Self::File,
        Self::Perms,
        Self::VolumePath,
    ];

    /// The prefix after [`COMPAT_PREFIX`], followed by the secret's name.
    pub fn compat_prefix(self) -> &'static str {
        match self {
            Self::Path => "agent-inject-secret-",
            Self::Template => "agent-inject-template-",
            Self::File => "agent-inject-file-",
            Self::Perms => "agent-inject-perms-",
            Self::VolumePath => "secret-volume-path-",
        }
    }

    /// The prefix after [`NATIVE_PREFIX`], followed by the secret's name.
    pub fn native_prefix(self) -> &'static str {
        match self {
            Self::Path => "secret-",
            Self::Template => "template-",
            Self::File => "file-",
            Self::Perms => "perms-",
            Self::VolumePath => "volume-path-",
        }
    }

    /// Both full annotation keys of secret `name`, native first.
    pub fn keys(self, name: &str) -> String {
        format!(
            "{NATIVE_PREFIX}{}{name} or {COMPAT_PREFIX}{}{name}",
            self.native_prefix(),
            self.compat_prefix()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_spelling() {
        let mut compat = std::collections::BTreeSet::new();
        let mut native = std::collections::BTreeSet::new();
        for setting in PodSetting::ALL {
            assert!(compat.insert(setting.compat_name()), "{setting:?}");
            assert!(native.insert(setting.native_name()), "{setting:?}");
        }
        for setting in SecretSetting::ALL {
            assert!(compat.insert(setting.compat_prefix()), "{setting:?}");
            assert!(native.insert(setting.native_prefix()), "{setting:?}");
        }
    }

    #[test]
    fn keys_name_both_spellings() {
        assert_eq!(
            PodSetting::VaultNamespace.keys(),
            "vaultkeeper.dev/vault-namespace or vault.hashicorp.com/namespace"
        );
        assert_eq!(
            SecretSetting::Perms.keys("db"),
            "vaultkeeper.dev/perms-db or vault.hashicorp.com/agent-inject-perms-db"
        );
    }
}
