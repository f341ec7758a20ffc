//! The data HMAC every kind records (status `dataHmac`) and the restart stamp derives from: keyed
//! with the operator's key, stable for equal data, revealing nothing about it.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use sha2::Sha256;

/// HMAC-SHA256 of the data under the operator key: stable for equal data, reveals nothing.
pub fn data_hmac(key: &[u8], data: &BTreeMap<String, Vec<u8>>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for (k, v) in data {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        mac.update(&(k.len() as u64).to_be_bytes());
        mac.update(k.as_bytes());
        mac.update(&(v.len() as u64).to_be_bytes());
        mac.update(v);
    }
    format!("sha256:{}", hex::encode(mac.finalize().into_bytes()))
}

/// The HMAC of what a Secret holds now.
pub fn existing_hmac(key: &[u8], secret: &Secret) -> String {
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, ByteString(v))| (k, v))
        .collect();
    data_hmac(key, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_is_stable_and_keyed() {
        let a = BTreeMap::from([("k".to_owned(), b"v".to_vec())]);
        assert_eq!(data_hmac(b"key", &a), data_hmac(b"key", &a.clone()));
        assert_ne!(data_hmac(b"key", &a), data_hmac(b"other", &a));
        let split1 = BTreeMap::from([("ab".to_owned(), b"c".to_vec())]);
        let split2 = BTreeMap::from([("a".to_owned(), b"bc".to_vec())]);
        assert_ne!(data_hmac(b"key", &split1), data_hmac(b"key", &split2));
        assert_eq!(data_hmac(b"key", &a).len(), "sha256:".len() + 64);
    }
}
