//! Generic reads and writes that return Vault's JSON answer as is (`lease_id`, `data`, …), for
//! callers such as the agent's templates that expose the whole answer rather than a typed view.

use reqwest::Method;
use serde_json::Value;

use crate::{VaultClient, VaultError, VaultToken};

impl VaultClient {
    /// `GET /v1/<path>`: the whole answer. It holds secret data: never log it.
    pub async fn read_raw(&self, token: &VaultToken, path: &str) -> Result<Value, VaultError> {
        self.request("raw_read", Method::GET, path, Some(token), None)
            .await
    }

    /// `POST /v1/<path>` with `body` (endpoints that issue on write, such as `pki/issue/<role>`):
    /// the whole answer. It holds secret data: never log it.
    pub async fn write_raw(
        &self,
        token: &VaultToken,
        path: &str,
        body: &Value,
    ) -> Result<Value, VaultError> {
        self.request("raw_write", Method::POST, path, Some(token), Some(body))
            .await
    }
}
