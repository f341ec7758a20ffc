//! The operator's own secret key (HMAC of synced data), kept in a Secret of the operator's namespace
//! so that every replica and every restart computes the same HMACs and sees no false drift.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use rand::RngCore;

/// Name of the Secret holding the key.
pub const KEY_SECRET: &str = "vaultkeeper-operator-key";
const KEY_FIELD: &str = "hmac-key";

/// Reads the key, creating it on first start (a concurrent creator wins and we read theirs).
pub async fn load_or_create(client: kube::Client, namespace: &str) -> anyhow::Result<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(KEY_SECRET).await? {
            let key = secret
                .data
                .and_then(|mut d| d.remove(KEY_FIELD))
                .map(|b| b.0)
                .unwrap_or_default();
            anyhow::ensure!(
                key.len() >= 32,
                "Secret {namespace}/{KEY_SECRET} has no usable {KEY_FIELD:?} (32 bytes or more)"
            );
            return Ok(key);
        }
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(KEY_SECRET.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/name".to_owned(),
                    "vaultkeeper".to_owned(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                KEY_FIELD.to_owned(),
                ByteString(key.clone()),
            )])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(key),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(err) => return Err(err.into()),
        }
    }
    anyhow::bail!("failed to create or read Secret {namespace}/{KEY_SECRET}")
}
