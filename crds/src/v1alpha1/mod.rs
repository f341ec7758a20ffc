//! `vaultkeeper.dev/v1alpha1`: the first version of the API.

mod shared;
mod vault_secret;

pub use shared::{Destination, VaultAuth, condition_types, reasons};
pub use vault_secret::{KvEngine, KvSource, VaultSecret, VaultSecretSpec, VaultSecretStatus};
