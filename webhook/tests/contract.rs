//! The webhook admits only what the agent accepts. For every rule of the agent's configuration
//! (`agent_contract::Rule`) there is a case here, and a test fails when the webhook would inject a
//! configuration breaking it:
//! - a parsed request broken the way a faulty annotation parser (or a bad webhook flag) could
//!   leave it must get no patch: the agent's validator stands between request and patch;
//! - annotations that would break the rule are denied at admission, with a message that says what
//!   to fix (the annotation parser or that validator, whichever sees it first).

mod common;

use std::collections::BTreeSet;

use agent_contract::{AgentConfig, AgentMode, ConfigError, Rule};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use vaultkeeper_webhook::annotations::{Annotations, InjectionRequest, parse};
use vaultkeeper_webhook::inject::{Decision, WebhookConfig, agent_config, inject, plan};

/// Two secrets in the default volume, everything else default: a request the agent accepts.
const VALID: &[(&str, &str)] = &[
    ("vault.hashicorp.com/agent-inject", "true"),
    ("vault.hashicorp.com/role", "web"),
    ("vault.hashicorp.com/agent-inject-secret-a", "secret/data/a"),
    ("vault.hashicorp.com/agent-inject-secret-b", "secret/data/b"),
];

fn valid_request() -> InjectionRequest {
    let annotations = VALID
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    match parse(&annotations) {
        Ok(Annotations::Inject(request)) => *request,
        other => panic!("the valid annotations do not parse: {other:?}"),
    }
}

fn spec() -> PodSpec {
    let pod: Pod = serde_json::from_value(common::pod_with(VALID)).expect("a Pod");
    pod.spec.expect("a spec")
}

/// Breaks one rule in a parsed request (or in the webhook's configuration).
type Break = fn(&mut InjectionRequest, &mut WebhookConfig);

fn broken_requests() -> Vec<(Rule, &'static str, Break)> {
    vec![
        (Rule::VaultAddr, "a Vault address without scheme", |_, c| {
            c.vault_addr = "vault.vault.svc:8200".into()
        }),
        (Rule::VaultNamespace, "a namespace with a space", |r, _| {
            r.vault_namespace = Some("team a".into())
        }),
        (Rule::AuthPath, "an auth path without mount", |r, _| {
            r.auth_path = Some("auth/".into())
        }),
        (
            Rule::AuthPath,
            "a default auth path without mount",
            |r, c| {
                r.auth_path = None;
                c.default_auth_path = "auth".into();
            },
        ),
        (Rule::Role, "an empty role", |r, _| r.role = String::new()),
        (Rule::NoSecrets, "no secret", |r, _| r.secrets.clear()),
        (Rule::SecretPath, "an empty Vault path", |r, _| {
            r.secrets[0].path = String::new()
        }),
        (Rule::MountPath, "a relative mount path", |r, _| {
            r.secrets[0].volume_path = "vault/secrets".into()
        }),
        (Rule::File, "a file that climbs out", |r, _| {
            r.secrets[0].file = "../../etc/cron.d/x".into()
        }),
        (Rule::File, "an absolute file", |r, _| {
            r.secrets[0].file = "/etc/passwd".into()
        }),
        (Rule::Perms, "perms that are not octal", |r, _| {
            r.secrets[0].perms = Some("0999".into())
        }),
        (Rule::SameFile, "two secrets, one file", |r, _| {
            r.secrets[1].file = r.secrets[0].file.clone()
        }),
        (
            Rule::FileIsDirectory,
            "a file below another's file",
            |r, _| r.secrets[1].file = format!("{}/b", r.secrets[0].file),
        ),
        (Rule::Template, "a template gtmpl would panic on", |r, _| {
            r.secrets[0].template = Some("{{ é }}".to_owned())
        }),
    ]
}

#[test]
fn every_rule_has_a_case() {
    let covered: BTreeSet<Rule> = broken_requests().iter().map(|(rule, ..)| *rule).collect();
    let all: BTreeSet<Rule> = Rule::ALL.into_iter().collect();
    assert_eq!(covered, all, "add a case for each new rule");
    let covered: BTreeSet<Rule> = denied_annotations()
        .iter()
        .map(|(rule, ..)| *rule)
        .collect();
    assert_eq!(covered, all, "add an annotation case for each new rule");
}

#[test]
fn a_request_the_agent_would_refuse_gets_no_patch() {
    let spec = spec();
    {
        let (request, config) = (valid_request(), WebhookConfig::default());
        let patch = plan(&spec, &request, &config).expect("the valid request is injected");
        common::assert_agent_accepts("valid", &common::pod_with(VALID), &patch);
    }
    let mut failures = Vec::new();
    for (rule, what, break_it) in broken_requests() {
        let (mut request, mut config) = (valid_request(), WebhookConfig::default());
        break_it(&mut request, &mut config);
        for native_sidecars in [true, false] {
            config.native_sidecars = native_sidecars;
            // The case breaks this rule and no other: the agent refuses it for exactly this reason.
            for mode in [AgentMode::Init, AgentMode::Sidecar] {
                let json = serde_json::to_string(&agent_config(&request, &config, mode)).unwrap();
                match AgentConfig::parse(&json) {
                    Err(ConfigError::Invalid(violation)) if violation.rule() == rule => {}
                    other => failures.push(format!(
                        "{rule:?} ({what}): the agent should refuse {mode:?} for this rule, got {other:?}"
                    )),
                }
            }
            match plan(&spec, &request, &config) {
                Err(message)
                    if message.starts_with(
                        "vaultkeeper cannot inject this pod, its agent would refuse to start: ",
                    ) => {}
                Err(message) => failures.push(format!("{rule:?} ({what}): denied with {message}")),
                Ok(patch) => failures.push(format!(
                    "{rule:?} ({what}, native sidecars {native_sidecars}): the webhook produced a patch the agent refuses: {:?}",
                    common::agent_verdicts(&common::pod_with(VALID), &patch)
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Annotations (and a webhook setting) whose agent configuration would break each rule, and a
/// piece of the denial the user sees.
type Annotated = (Rule, Vec<(&'static str, &'static str)>, &'static str);

fn denied_annotations() -> Vec<Annotated> {
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut all = VALID.to_vec();
        all.extend_from_slice(extra);
        all
    };
    let without_secrets: Vec<_> = VALID[..2].to_vec();
    vec![
        (
            Rule::VaultAddr,
            with(&[]),
            "vaultAddr \"\" is not an http:// or https:// address; this comes from the webhook's configuration",
        ),
        (
            Rule::VaultNamespace,
            with(&[("vault.hashicorp.com/namespace", "team a")]),
            "vaultNamespace \"team a\" is not a Vault namespace path",
        ),
        (
            Rule::VaultNamespace,
            with(&[("vaultkeeper.dev/vault-namespace", "team-a//web")]),
            "fix vaultkeeper.dev/vault-namespace or vault.hashicorp.com/namespace",
        ),
        (
            Rule::AuthPath,
            with(&[("vault.hashicorp.com/auth-path", "/")]),
            "vault.hashicorp.com/auth-path: the auth path is empty",
        ),
        (
            Rule::Role,
            with(&[("vault.hashicorp.com/role", " ")]),
            "a role is required",
        ),
        (Rule::NoSecrets, without_secrets, "no secret requested"),
        (
            Rule::SecretPath,
            with(&[("vault.hashicorp.com/agent-inject-secret-a", "/")]),
            "vault.hashicorp.com/agent-inject-secret-a: the Vault path is empty",
        ),
        (
            Rule::MountPath,
            with(&[("vaultkeeper.dev/volume-path-a", "vault/secrets")]),
            "vaultkeeper.dev/volume-path-a: \"vault/secrets\" must be an absolute path",
        ),
        (
            Rule::File,
            with(&[("vault.hashicorp.com/agent-inject-file-a", "../x")]),
            "vault.hashicorp.com/agent-inject-file-a: \"../x\" must be a relative path",
        ),
        (
            Rule::Perms,
            with(&[("vault.hashicorp.com/agent-inject-perms-a", "0999")]),
            "vault.hashicorp.com/agent-inject-perms-a: \"0999\" is not a file mode",
        ),
        (
            Rule::SameFile,
            with(&[("vault.hashicorp.com/agent-inject-file-b", "a")]),
            "secrets \"a\" and \"b\" would both be written to /vault/secrets/a",
        ),
        (
            Rule::FileIsDirectory,
            with(&[("vault.hashicorp.com/agent-inject-file-b", "a/b")]),
            "secret \"b\" writes /vault/secrets/a/b, below /vault/secrets/a, which secret \"a\" writes as a file; fix vaultkeeper.dev/file-b or vault.hashicorp.com/agent-inject-file-b",
        ),
        (
            Rule::Template,
            with(&[(
                "vault.hashicorp.com/agent-inject-template-a",
                "{{ \"a\\x\" }}",
            )]),
            "secret \"a\": the template cannot be used: ",
        ),
    ]
}

#[test]
fn annotations_the_agent_would_refuse_are_denied() {
    let mut failures = Vec::new();
    for (rule, annotations, expected) in denied_annotations() {
        let mut config = WebhookConfig::default();
        if rule == Rule::VaultAddr {
            config.vault_addr = String::new();
        }
        let pod_json = common::pod_with(&annotations);
        let pod: Pod = serde_json::from_value(pod_json.clone()).expect("a Pod");
        match inject(&pod, "app", &config) {
            Decision::Deny(message) if message.contains(expected) => {}
            Decision::Deny(message) => failures.push(format!("{rule:?}: denied with {message}")),
            Decision::Patch(patch) => failures.push(format!(
                "{rule:?}: {annotations:?} admitted; the agent says {:?}",
                common::agent_verdicts(&pod_json, &patch)
            )),
            Decision::Skip(reason) => {
                failures.push(format!("{rule:?}: skipped ({})", reason.as_str()))
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
