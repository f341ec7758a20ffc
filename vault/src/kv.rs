//! The KV secrets engine, versions 1 and 2.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::{VaultClient, VaultError, VaultToken};

/// Key/value data read from Vault. `Debug` lists the keys only, never the values.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct SecretData(pub BTreeMap<String, Value>);

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretData")
            .field("keys", &self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretData {
    /// Each value as text: strings as they are, anything else as compact JSON.
    pub fn to_text_map(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }
}

/// What KV v2 metadata says about one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvVersionState {
    /// Readable.
    Live,
    /// Soft-deleted: `undelete` can bring it back.
    Deleted,
    /// Destroyed: the data is gone for good.
    Destroyed,
    /// Not in the metadata (never written, or pruned by `max_versions`).
    Missing,
}

/// The metadata of a KV v2 secret: which version is current and the state of each version.
#[derive(Clone, Debug, Deserialize)]
pub struct KvMetadata {
    pub current_version: i64,
    #[serde(default)]
    versions: BTreeMap<String, KvVersionMeta>,
}

#[derive(Clone, Debug, Deserialize)]
struct KvVersionMeta {
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

impl KvMetadata {
    /// The state of `version`.
    pub fn state_of(&self, version: i64) -> KvVersionState {
        match self.versions.get(&version.to_string()) {
            None => KvVersionState::Missing,
            Some(meta) if meta.destroyed => KvVersionState::Destroyed,
            Some(meta) if !meta.deletion_time.is_empty() => KvVersionState::Deleted,
            Some(_) => KvVersionState::Live,
        }
    }
}

/// One version of a KV v2 secret.
#[derive(Clone, Debug)]
pub struct KvVersion {
    pub version: i64,
    pub data: SecretData,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct Kv2Read {
    data: Option<SecretData>,
    metadata: Kv2ReadMeta,
}

#[derive(Deserialize)]
struct Kv2ReadMeta {
    version: i64,
}

impl VaultClient {
    /// Reads the metadata of a KV v2 secret (`<mount>/metadata/<path>`); no data is transferred.
    pub async fn kv2_metadata(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
    ) -> Result<KvMetadata, VaultError> {
        let url = format!("{mount}/metadata/{path}");
        let answer: Envelope<KvMetadata> = self
            .request("kv2_metadata", Method::GET, &url, Some(token), None)
            .await?;
        Ok(answer.data)
    }

    /// Reads one version of a KV v2 secret (the latest when `version` is `None`).
    pub async fn kv2_read(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<KvVersion, VaultError> {
        let url = match version {
            Some(v) => format!("{mount}/data/{path}?version={v}"),
            None => format!("{mount}/data/{path}"),
        };
        let answer: Envelope<Kv2Read> = self
            .request("kv2_read", Method::GET, &url, Some(token), None)
            .await?;
        let data = answer.data.data.ok_or_else(|| VaultError::NotFound {
            operation: "kv2_read",
            path: url.clone(),
        })?;
        Ok(KvVersion {
            version: answer.data.metadata.version,
            data,
        })
    }

    /// Reads a KV v1 secret (`<mount>/<path>`).
    pub async fn kv1_read(
        &self,
        token: &VaultToken,
        mount: &str,
        path: &str,
    ) -> Result<SecretData, VaultError> {
        let url = format!("{mount}/{path}");
        let answer: Envelope<SecretData> = self
            .request("kv1_read", Method::GET, &url, Some(token), None)
            .await?;
        Ok(answer.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_tells_version_states() {
        let meta: KvMetadata = serde_json::from_value(serde_json::json!({
            "current_version": 3,
            "versions": {
                "1": {"deletion_time": "", "destroyed": true},
                "2": {"deletion_time": "2026-01-01T00:00:00Z", "destroyed": false},
                "3": {"deletion_time": "", "destroyed": false}
            }
        }))
        .unwrap();
        assert_eq!(meta.state_of(1), KvVersionState::Destroyed);
        assert_eq!(meta.state_of(2), KvVersionState::Deleted);
        assert_eq!(meta.state_of(3), KvVersionState::Live);
        assert_eq!(meta.state_of(4), KvVersionState::Missing);
    }

    #[test]
    fn secret_data_debug_hides_values() {
        let data: SecretData =
            serde_json::from_value(serde_json::json!({"password": "canary-s3cr3t", "port": 5432}))
                .unwrap();
        let shown = format!("{data:?}");
        assert!(shown.contains("password"));
        assert!(!shown.contains("canary-s3cr3t"));
        assert_eq!(data.to_text_map()["port"], "5432");
    }
}
