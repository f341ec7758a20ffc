//! What a Vault answer is, decided from the path and the answer itself: KV v2 (path with `/data/`
//! after the mount and an answer with `data.data` and `data.metadata.version`), a leased secret
//! (the answer carries a `lease_id`), or static data (KV v1 and anything else).

use serde_json::{Map, Value};

/// The kind of a source, which decides how the agent keeps it fresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// KV v2: polled by metadata version (`<mount>/metadata/<name>`), re-read on change.
    Kv2 {
        mount: String,
        name: String,
        version: i64,
    },
    /// Leased: renewed at two thirds of its TTL, re-issued when it cannot be renewed.
    Leased {
        lease_id: String,
        duration: u64,
        renewable: bool,
    },
    /// Static data (KV v1 and others): re-read every poll interval.
    Static,
}

/// Decides the kind of `answer`, read from `path`.
pub fn classify(path: &str, answer: &Value) -> Kind {
    if let Some(lease_id) = answer
        .get("lease_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
    {
        return Kind::Leased {
            lease_id: lease_id.to_owned(),
            duration: answer
                .get("lease_duration")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            renewable: answer
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
    }
    let version = answer
        .pointer("/data/metadata/version")
        .and_then(Value::as_i64);
    let has_data = answer.pointer("/data/data").is_some_and(Value::is_object);
    if let (Some(version), true, Some((mount, name))) = (
        version,
        has_data,
        path.trim_matches('/').split_once("/data/"),
    ) && !mount.is_empty()
        && !name.is_empty()
    {
        return Kind::Kv2 {
            mount: mount.to_owned(),
            name: name.to_owned(),
            version,
        };
    }
    Kind::Static
}

/// The key/value data a file without template shows: the inner `data` for KV v2.
pub fn default_data<'a>(kind: &Kind, answer: &'a Value) -> Option<&'a Map<String, Value>> {
    let pointer = match kind {
        Kind::Kv2 { .. } => "/data/data",
        _ => "/data",
    };
    answer.pointer(pointer).and_then(Value::as_object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tells_kinds_apart() {
        let kv2 = json!({"lease_id": "", "data": {"data": {"a": "1"}, "metadata": {"version": 4}}});
        assert_eq!(
            classify("secret/data/team/web", &kv2),
            Kind::Kv2 {
                mount: "secret".into(),
                name: "team/web".into(),
                version: 4
            }
        );
        assert_eq!(
            default_data(&classify("secret/data/team/web", &kv2), &kv2).unwrap()["a"],
            "1"
        );
        // A KV v1 secret that happens to hold `data` and `metadata` keys is not KV v2.
        let kv1 = json!({"lease_id": "", "lease_duration": 2764800, "data": {"data": {"a": "1"}, "metadata": {"version": 1}}});
        assert_eq!(classify("kv/web", &kv1), Kind::Static);
        assert_eq!(default_data(&Kind::Static, &kv1).unwrap().len(), 2);
        let leased = json!({"lease_id": "database/creds/app/x1", "lease_duration": 30, "renewable": true, "data": {"username": "u"}});
        assert_eq!(
            classify("database/creds/app", &leased),
            Kind::Leased {
                lease_id: "database/creds/app/x1".into(),
                duration: 30,
                renewable: true
            }
        );
        assert_eq!(classify("kv/x", &json!({"data": {}})), Kind::Static);
    }
}
