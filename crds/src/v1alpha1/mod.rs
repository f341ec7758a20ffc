//! `vaultkeeper.dev/v1alpha1`: the first version of the API.

mod dynamic_credential;
mod shared;
mod vault_secret;

pub use dynamic_credential::{
    DynamicCredential, DynamicCredentialSpec, DynamicCredentialStatus, LeaseMethod, LeaseSource,
    RetiringLease,
};
pub use shared::{
    Destination, PendingRestart, RestartTarget, VaultAuth, WorkloadKind, condition_types, reasons,
};
pub use vault_secret::{KvEngine, KvSource, VaultSecret, VaultSecretSpec, VaultSecretStatus};
