//! `vaultkeeper.dev/v1alpha1`: the first version of the API.

mod certificate_request;
mod dynamic_credential;
mod shared;
mod vault_secret;

pub use certificate_request::{
    CertificateRequest, CertificateRequestSpec, CertificateRequestStatus, IssueMode, KeyAlgorithm,
    PrivateKey, RotationPolicy, SupersededCertificate,
};
pub use dynamic_credential::{
    DynamicCredential, DynamicCredentialSpec, DynamicCredentialStatus, LeaseMethod, LeaseSource,
    RetiringLease,
};
pub use shared::{
    Destination, PendingRestart, RestartTarget, VaultAuth, WorkloadKind, condition_types, reasons,
};
pub use vault_secret::{KvEngine, KvSource, VaultSecret, VaultSecretSpec, VaultSecretStatus};
