//! `vaultkeeper.dev/v1alpha1`: the first version of the API.

/// The CEL regular expression every duration field must match before CEL's `duration()` parses it.
/// Each component is bounded per unit (at most 99999h, 9999999m, 999999999s or 999999999999ms,
/// about 11 to 32 years) and there are at most four, so `duration()` can never overflow Go's
/// 292-year range (an overflow is an evaluation error, not the field's message). Used through
/// `concat!`, hence a macro.
macro_rules! cel_duration_pattern {
    () => {
        r"^(([0-9]{1,5}(\\.[0-9]{1,9})?h)|([0-9]{1,7}(\\.[0-9]{1,9})?m)|([0-9]{1,9}(\\.[0-9]{1,9})?s)|([0-9]{1,12}(\\.[0-9]{1,9})?ms)){1,4}$"
    };
}
pub(crate) use cel_duration_pattern;

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
