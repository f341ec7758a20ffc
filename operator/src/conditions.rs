//! Kubernetes-style conditions: set one, keep `lastTransitionTime` unless the status flips, so a
//! status built twice from the same facts is equal and needs no patch.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition to set, without its transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// `conditions` with `desired` set; the transition time is `now` only when the status changed.
pub fn set(
    conditions: &[Condition],
    desired: Desired,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let status = if desired.status { "True" } else { "False" }.to_owned();
    let previous = conditions.iter().find(|c| c.type_ == desired.type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now.clone(),
    };
    let condition = Condition {
        type_: desired.type_.to_owned(),
        status,
        reason: desired.reason.to_owned(),
        message: desired.message,
        observed_generation: generation,
        last_transition_time,
    };
    let mut out: Vec<Condition> = conditions
        .iter()
        .filter(|c| c.type_ != desired.type_)
        .cloned()
        .collect();
    out.push(condition);
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// A JSON merge patch that turns status `current` into `new` (both serialized). Optional fields are
/// skipped when empty, and a merge patch leaves absent fields alone, so fields `new` drops are sent
/// as `null`.
pub fn merge_patch(current: serde_json::Value, new: serde_json::Value) -> serde_json::Value {
    let mut patch = new;
    if let (Some(patch), serde_json::Value::Object(old)) = (patch.as_object_mut(), current) {
        for key in old.keys() {
            patch.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "status": patch })
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn ready(status: bool, reason: &'static str) -> Desired {
        Desired {
            type_: "Ready",
            status,
            reason,
            message: "m".into(),
        }
    }

    #[test]
    fn dropped_status_fields_are_sent_as_null() {
        #[derive(serde::Serialize)]
        struct S {
            #[serde(skip_serializing_if = "Option::is_none")]
            a: Option<i32>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            b: Vec<i32>,
            c: i32,
        }
        let patch = merge_patch(
            serde_json::to_value(S {
                a: Some(1),
                b: vec![1],
                c: 1,
            })
            .unwrap(),
            serde_json::to_value(S {
                a: None,
                b: vec![],
                c: 2,
            })
            .unwrap(),
        );
        assert_eq!(
            patch,
            serde_json::json!({"status": {"a": null, "b": null, "c": 2}})
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = set(&[], ready(false, "VaultUnavailable"), Some(1), &at(10));
        assert_eq!(first[0].last_transition_time, at(10));
        let same_status = set(&first, ready(false, "PermissionDenied"), Some(1), &at(20));
        assert_eq!(same_status[0].last_transition_time, at(10));
        assert_eq!(same_status[0].reason, "PermissionDenied");
        let flipped = set(&same_status, ready(true, "Synced"), Some(2), &at(30));
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert_eq!(flipped.len(), 1);
        assert_eq!(
            set(&flipped, ready(true, "Synced"), Some(2), &at(40)),
            flipped,
            "same facts, same status"
        );
    }
}
