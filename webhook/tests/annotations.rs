//! Annotation parsing: defaults, precedence and the error messages users see. Every request these
//! tests accept is also injected, and the agent's own validator must accept what gets injected.

mod common;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use vaultkeeper_webhook::annotations::{
    AnnotationError, Annotations, InjectionRequest, QuantitySetting, parse, quantity_value,
};
use vaultkeeper_webhook::inject::{Decision, WebhookConfig, inject};

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

const OPT_IN: &[(&str, &str)] = &[
    ("vault.hashicorp.com/agent-inject", "true"),
    ("vault.hashicorp.com/role", "web"),
    (
        "vault.hashicorp.com/agent-inject-secret-db",
        "database/creds/web",
    ),
];

fn inject_request(extra: &[(&str, &str)]) -> InjectionRequest {
    let mut all = annotations(OPT_IN);
    all.extend(annotations(extra));
    let request = match parse(&all) {
        Ok(Annotations::Inject(request)) => *request,
        other => panic!("expected an injection request, got {other:?}"),
    };
    let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let pod_json = common::pod_with(&pairs);
    let pod: Pod = serde_json::from_value(pod_json.clone()).expect("a Pod");
    match inject(&pod, "app", &WebhookConfig::default()) {
        Decision::Patch(patch) => {
            common::assert_agent_accepts(&format!("{extra:?}"), &pod_json, &patch);
        }
        other => panic!("{extra:?}: expected a patch, got {other:?}"),
    }
    request
}

fn errors(extra: &[(&str, &str)]) -> Vec<AnnotationError> {
    let mut all = annotations(OPT_IN);
    all.extend(annotations(extra));
    match parse(&all) {
        Err(errors) => errors.0,
        other => panic!("expected errors, got {other:?}"),
    }
}

#[test]
fn defaults_follow_vault_k8s() {
    let request = inject_request(&[]);
    assert_eq!(request.role, "web");
    assert_eq!(request.volume_path, "/vault/secrets");
    assert!(request.pre_populate);
    assert!(!request.pre_populate_only);
    assert_eq!(request.auth_path, None);
    assert_eq!(request.run_as_user, None);
    assert_eq!(request.resources.limits_cpu, QuantitySetting::Default);
    let secret = &request.secrets[0];
    assert_eq!(
        (
            secret.name.as_str(),
            secret.path.as_str(),
            secret.file.as_str()
        ),
        ("db", "database/creds/web", "db")
    );
    assert_eq!(secret.volume_path, "/vault/secrets");
    assert_eq!(secret.perms, None);
    assert_eq!(secret.template, None);
}

#[test]
fn go_booleans_are_accepted() {
    for (value, expected) in [
        ("1", true),
        ("t", true),
        ("True", true),
        ("F", false),
        ("0", false),
    ] {
        let parsed = parse(&annotations(&[
            ("vault.hashicorp.com/agent-inject", value),
            ("vault.hashicorp.com/role", "web"),
            ("vault.hashicorp.com/agent-inject-secret-db", "kv/db"),
        ]))
        .expect("valid");
        assert_eq!(
            matches!(parsed, Annotations::Inject(_)),
            expected,
            "{value}"
        );
    }
    let bad = parse(&annotations(&[("vaultkeeper.dev/inject", "yes")])).unwrap_err();
    assert_eq!(
        bad.to_string(),
        "invalid vaultkeeper injection annotations: vaultkeeper.dev/inject: \"yes\" is not a boolean (use \"true\" or \"false\")"
    );
}

#[test]
fn nothing_is_validated_without_opt_in() {
    let parsed = parse(&annotations(&[
        ("vault.hashicorp.com/agent-inject-perms-db", "0999"),
        ("vaultkeeper.dev/whatever", "x"),
    ]));
    assert_eq!(parsed, Ok(Annotations::NotRequested));
}

#[test]
fn either_status_annotation_skips() {
    for key in [
        "vault.hashicorp.com/agent-inject-status",
        "vaultkeeper.dev/status",
    ] {
        let mut all = annotations(OPT_IN);
        all.insert(key.to_owned(), "injected".to_owned());
        assert_eq!(parse(&all), Ok(Annotations::AlreadyInjected), "{key}");
    }
    // vault-k8s' "update" value is not "injected": the pod is injected.
    assert!(matches!(
        parse(&{
            let mut all = annotations(OPT_IN);
            all.insert(
                "vault.hashicorp.com/agent-inject-status".into(),
                "update".into(),
            );
            all
        }),
        Ok(Annotations::Inject(_))
    ));
}

#[test]
fn native_spelling_wins() {
    let request = inject_request(&[
        ("vaultkeeper.dev/role", "native"),
        ("vaultkeeper.dev/secret-db", "kv/native"),
        ("vault.hashicorp.com/agent-inject-file-db", "compat.txt"),
        ("vaultkeeper.dev/file-db", "native.txt"),
        ("vault.hashicorp.com/agent-pre-populate-only", "false"),
        ("vaultkeeper.dev/pre-populate-only", "true"),
    ]);
    assert_eq!(request.role, "native");
    assert_eq!(request.secrets[0].path, "kv/native");
    assert_eq!(request.secrets[0].file, "native.txt");
    assert!(request.pre_populate_only);
}

#[test]
fn a_bad_compat_value_hidden_by_a_native_one_is_ignored() {
    let request = inject_request(&[
        ("vault.hashicorp.com/agent-inject-perms-db", "0999"),
        ("vaultkeeper.dev/perms-db", "0400"),
    ]);
    assert_eq!(request.secrets[0].perms.as_deref(), Some("0400"));
}

#[test]
fn perms_are_three_octal_digits() {
    assert_eq!(
        inject_request(&[("vault.hashicorp.com/agent-inject-perms-db", "440")]).secrets[0].perms,
        Some("0440".into())
    );
    for bad in ["0999", "0x1ff", "4400", "07777", "", "rw-r--r--", "08"] {
        let found = errors(&[("vault.hashicorp.com/agent-inject-perms-db", bad)]);
        assert!(
            matches!(&found[..], [AnnotationError::BadPerms { value, .. }] if value == bad),
            "{bad}: {found:?}"
        );
    }
}

#[test]
fn quantities_follow_kubernetes() {
    for good in [
        "1", "0.5", "500m", "64Mi", "1Gi", "1e3", "2E-1", "+1", ".5", "1k",
    ] {
        assert!(quantity_value(good).is_some(), "{good}");
    }
    for bad in ["", "-1", "lots", "1MB", "1.2.3", "Mi", "1 Mi", "1e", "1ki"] {
        assert!(quantity_value(bad).is_none(), "{bad}");
    }
    assert_eq!(quantity_value("64Mi"), Some(64.0 * 1024.0 * 1024.0));
    assert_eq!(quantity_value("250m"), Some(0.25));
}

#[test]
fn empty_resources_remove_the_default_and_bad_ones_are_named() {
    let request = inject_request(&[
        ("vault.hashicorp.com/agent-limits-cpu", ""),
        ("vault.hashicorp.com/agent-requests-mem", "32Mi"),
    ]);
    assert_eq!(request.resources.limits_cpu, QuantitySetting::Unset);
    assert_eq!(
        request.resources.requests_memory,
        QuantitySetting::Value("32Mi".into())
    );
    let found = errors(&[("vault.hashicorp.com/agent-limits-mem", "128MB")]);
    assert_eq!(
        found[0].to_string(),
        "vault.hashicorp.com/agent-limits-mem: \"128MB\" is not a Kubernetes quantity (e.g. \"50m\", \"64Mi\")"
    );
    let found = errors(&[
        ("vaultkeeper.dev/requests-cpu", "2"),
        ("vaultkeeper.dev/limits-cpu", "500m"),
    ]);
    assert_eq!(
        found[0].to_string(),
        "vaultkeeper.dev/requests-cpu=2 is more than vaultkeeper.dev/limits-cpu=500m"
    );
}

#[test]
fn role_and_secret_are_required() {
    let found = match parse(&annotations(&[("vaultkeeper.dev/inject", "true")])) {
        Err(errors) => errors.0,
        other => panic!("{other:?}"),
    };
    assert_eq!(found, vec![AnnotationError::MissingRole]);
    let found = match parse(&annotations(&[
        ("vaultkeeper.dev/inject", "true"),
        ("vaultkeeper.dev/role", "web"),
    ])) {
        Err(errors) => errors.0,
        other => panic!("{other:?}"),
    };
    assert_eq!(found, vec![AnnotationError::NoSecrets]);
    assert_eq!(
        errors(&[("vault.hashicorp.com/agent-inject-secret-empty", " ")]),
        vec![AnnotationError::EmptyPath {
            key: "vault.hashicorp.com/agent-inject-secret-empty".into()
        }]
    );
}

#[test]
fn settings_of_a_missing_secret_are_errors() {
    for key in [
        "vault.hashicorp.com/agent-inject-template-other",
        "vault.hashicorp.com/agent-inject-file-other",
        "vault.hashicorp.com/agent-inject-perms-other",
        "vault.hashicorp.com/secret-volume-path-other",
        "vaultkeeper.dev/template-other",
    ] {
        let value = if key.contains("volume-path") {
            "/x"
        } else {
            "0400"
        };
        let found = errors(&[(key, value)]);
        assert_eq!(
            found,
            vec![AnnotationError::NoMatchingSecret {
                key: key.into(),
                name: "other".into()
            }],
            "{key}"
        );
    }
}

#[test]
fn a_secret_name_that_is_no_file_name_needs_a_file() {
    // Found by the admission_annotations fuzz target: the name is the default file, and the
    // agent refuses an absolute or `..` file, so such a pod never started.
    for name in ["/etc/passwd", "../up", "a/../.."] {
        let key = format!("vaultkeeper.dev/secret-{name}");
        assert_eq!(
            errors(&[(key.as_str(), "secret/data/x")]),
            vec![AnnotationError::BadFile {
                key: key.clone(),
                value: name.into()
            }],
            "{key}"
        );
        let file = format!("vaultkeeper.dev/file-{name}");
        let request = inject_request(&[(key.as_str(), "secret/data/x"), (file.as_str(), "x")]);
        assert!(
            request
                .secrets
                .iter()
                .any(|s| s.name == name && s.file == "x")
        );
    }
    let request = inject_request(&[("vaultkeeper.dev/secret-a/./b", "secret/data/x")]);
    assert!(request.secrets.iter().any(|s| s.file == "a/b"));
}

#[test]
fn paths_are_normalised_and_checked() {
    let request = inject_request(&[
        ("vault.hashicorp.com/secret-volume-path", "/etc//app/"),
        ("vault.hashicorp.com/agent-inject-file-db", "conf/./db"),
        ("vault.hashicorp.com/auth-path", "/auth/k8s/"),
    ]);
    assert_eq!(request.volume_path, "/etc/app");
    assert_eq!(request.secrets[0].volume_path, "/etc/app");
    assert_eq!(request.auth_path.as_deref(), Some("auth/k8s"));
    assert!(!errors(&[("vault.hashicorp.com/agent-inject-file-db", "conf/../../db")]).is_empty());
    assert!(!errors(&[("vault.hashicorp.com/agent-inject-file-db", "/etc/db")]).is_empty());
    for bad in ["/", "relative", "/a/../b"] {
        assert!(
            !errors(&[("vaultkeeper.dev/volume-path", bad)]).is_empty(),
            "{bad}"
        );
    }
    assert_eq!(
        inject_request(&[("vaultkeeper.dev/auth-path", "kubernetes")])
            .auth_path
            .as_deref(),
        Some("auth/kubernetes")
    );
}

#[test]
fn ids_are_non_negative_and_the_user_is_not_root() {
    let request = inject_request(&[
        ("vault.hashicorp.com/agent-run-as-user", "1001"),
        ("vault.hashicorp.com/agent-run-as-group", "0"),
    ]);
    assert_eq!(
        (request.run_as_user, request.run_as_group),
        (Some(1001), Some(0))
    );
    assert!(matches!(
        &errors(&[("vault.hashicorp.com/agent-run-as-user", "0")])[..],
        [AnnotationError::RootUser { .. }]
    ));
    assert!(matches!(
        &errors(&[("vaultkeeper.dev/run-as-group", "-5")])[..],
        [AnnotationError::BadId { .. }]
    ));
}

#[test]
fn unknown_names_are_reported_with_a_hint() {
    let found = errors(&[
        ("vaultkeeper.dev/agent-pre-populate-only", "true"),
        ("vaultkeeper.dev/restarted-for", "abc123"),
        ("vault.hashicorp.com/agent-inject-token", "true"),
        ("vault.hashicorp.com/agent-cache-enable", "true"),
    ]);
    let messages: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        vec![
            "vault.hashicorp.com/agent-inject-token is not supported by vaultkeeper",
            "vaultkeeper.dev/agent-pre-populate-only is not a vaultkeeper annotation (did you mean vaultkeeper.dev/pre-populate-only?)",
        ]
    );
}

#[test]
fn init_only_without_pre_populate_is_contradictory() {
    assert_eq!(
        errors(&[
            ("vault.hashicorp.com/agent-pre-populate", "false"),
            ("vault.hashicorp.com/agent-pre-populate-only", "true"),
        ]),
        vec![AnnotationError::ConflictingModes]
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let found = errors(&[
        ("vault.hashicorp.com/agent-inject-perms-db", "0999"),
        ("vault.hashicorp.com/agent-limits-mem", "lots"),
        ("vault.hashicorp.com/agent-inject-template-nope", "x"),
    ]);
    assert_eq!(found.len(), 3, "{found:?}");
}
