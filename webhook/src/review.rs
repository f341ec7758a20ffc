//! AdmissionReview in, AdmissionReview out: decodes the request, asks [`inject`] and answers with
//! a JSON patch or a denial. Pure transport; no network calls.
//!
//! Requests are decoded with kube's `admission` types. The response is written with the small
//! types below instead of kube's `AdmissionResponse`, because that one serialises the patch as an
//! array of numbers; the API server accepts it, but a base64 string is what the API documents and
//! what a person reading an audit log expects.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde::Serialize;

use crate::inject::{Decision, SkipReason, WebhookConfig, inject};

/// How an admission ended; the label of the admissions metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped,
    Denied,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }
}

/// A body that is not an AdmissionReview with a request.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("failed to decode the AdmissionReview: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("failed to read the admission request: {0}")]
    Request(#[from] kube::core::admission::ConvertAdmissionReviewError),
}

/// The answer to one review, and how it ended.
#[derive(Debug)]
pub struct Answer {
    pub outcome: Outcome,
    /// Set for skipped pods.
    pub skip_reason: Option<SkipReason>,
    /// The serialised `AdmissionReview` to send back.
    pub body: Vec<u8>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut {
    api_version: String,
    kind: &'static str,
    response: ResponseOut,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

#[derive(Serialize)]
struct StatusOut {
    status: &'static str,
    code: u16,
    reason: &'static str,
    message: String,
}

/// Answers one review. Only pod creations are mutated; anything else is allowed unchanged.
pub fn review(body: &[u8], config: &WebhookConfig) -> Result<Answer, ReviewError> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let request: AdmissionRequest<DynamicObject> = review.try_into()?;
    let api_version = if request.types.api_version.is_empty() {
        "admission.k8s.io/v1".to_owned()
    } else {
        request.types.api_version.clone()
    };
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let (outcome, skip_reason, response) = match (&request.object, is_pod, &request.operation) {
        (Some(object), true, Operation::Create) => {
            let namespace = request.namespace.as_deref().unwrap_or("default");
            decide(&request.uid, object, namespace, config)
        }
        _ => (
            Outcome::Skipped,
            Some(SkipReason::NotRequested),
            allowed(&request.uid, None),
        ),
    };
    let body = serde_json::to_vec(&ReviewOut {
        api_version,
        kind: "AdmissionReview",
        response,
    })?;
    Ok(Answer {
        outcome,
        skip_reason,
        body,
    })
}

fn decide(
    uid: &str,
    object: &DynamicObject,
    namespace: &str,
    config: &WebhookConfig,
) -> (Outcome, Option<SkipReason>, ResponseOut) {
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(pod) => pod,
        Err(error) => {
            return (
                Outcome::Error,
                None,
                denied(
                    uid,
                    400,
                    "BadRequest",
                    format!("failed to decode the pod: {error}"),
                ),
            );
        }
    };
    match inject(&pod, namespace, config) {
        Decision::Skip(reason) => (Outcome::Skipped, Some(reason), allowed(uid, None)),
        Decision::Deny(message) => (
            Outcome::Denied,
            None,
            denied(uid, 403, "Forbidden", message),
        ),
        Decision::Patch(patch) => match serde_json::to_vec(&patch) {
            Ok(bytes) => (
                Outcome::Injected,
                None,
                allowed(uid, Some(BASE64.encode(bytes))),
            ),
            Err(error) => (
                Outcome::Error,
                None,
                denied(
                    uid,
                    500,
                    "InternalError",
                    format!("failed to encode the patch: {error}"),
                ),
            ),
        },
    }
}

fn allowed(uid: &str, patch: Option<String>) -> ResponseOut {
    ResponseOut {
        uid: uid.to_owned(),
        allowed: true,
        status: None,
        patch_type: patch.as_ref().map(|_| "JSONPatch"),
        patch,
    }
}

fn denied(uid: &str, code: u16, reason: &'static str, message: String) -> ResponseOut {
    ResponseOut {
        uid: uid.to_owned(),
        allowed: false,
        status: Some(StatusOut {
            status: "Failure",
            code,
            reason,
            message,
        }),
        patch_type: None,
        patch: None,
    }
}
