//! Errors of Vault requests, sorted into the few categories the callers act on.

use std::time::Duration;

/// A failed Vault request. Messages name the operation and path, never data or tokens.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// No HTTP answer: connection refused, DNS, TLS, timeout.
    #[error("failed to reach Vault for {operation}: {message}")]
    Unreachable {
        operation: &'static str,
        message: String,
    },

    /// Vault answered 503 because it is sealed.
    #[error("failed to {operation}: Vault is sealed")]
    Sealed { operation: &'static str },

    /// Vault answered with a server error or asked us to slow down.
    #[error("failed to {operation}: Vault answered {status}: {message}")]
    Unavailable {
        operation: &'static str,
        status: u16,
        message: String,
    },

    /// Vault answered 403 for this path (policy denies it, or the token is no longer valid).
    #[error("failed to {operation} at {path}: permission denied")]
    PermissionDenied {
        operation: &'static str,
        path: String,
    },

    /// Vault answered 404 for this path.
    #[error("failed to {operation} at {path}: not found")]
    NotFound {
        operation: &'static str,
        path: String,
    },

    /// Vault rejected the request (400, or another 4xx): retrying the same request will not help.
    #[error("failed to {operation} at {path}: Vault answered {status}: {message}")]
    Rejected {
        operation: &'static str,
        path: String,
        status: u16,
        message: String,
    },

    /// Vault answered 2xx with a body we could not understand.
    #[error("failed to {operation}: unexpected answer from Vault: {message}")]
    Decode {
        operation: &'static str,
        message: String,
    },
}

impl VaultError {
    /// A bounded name for metric labels and condition reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::Sealed { .. } => "sealed",
            Self::Unavailable { .. } => "unavailable",
            Self::PermissionDenied { .. } => "permission_denied",
            Self::NotFound { .. } => "not_found",
            Self::Rejected { .. } => "rejected",
            Self::Decode { .. } => "decode",
        }
    }

    /// Whether Vault itself is down or failing (as opposed to refusing this request).
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Sealed { .. } | Self::Unavailable { .. }
        )
    }

    /// A hint for how long to wait before retrying, when the error is an outage.
    pub fn retry_hint(&self) -> Option<Duration> {
        self.is_outage().then_some(Duration::from_secs(5))
    }
}
