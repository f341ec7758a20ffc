//! Vault namespaces: a client made with `with_namespace` sends `X-Vault-Namespace` on every
//! request, login included; a client without one never sends it. Checked against a tiny local
//! HTTP listener that records each request's head and answers like Vault.

mod support;

use std::time::Duration;

use support::{Answer, Seen};
use vaultkeeper_vault::{self as vault, VaultClient, VaultConfig, VaultToken};

/// A node that answers each request in turn with 200 and one of `answers`.
fn vault_stub(answers: Vec<&'static str>) -> (String, std::sync::mpsc::Receiver<Seen>) {
    support::node(
        answers
            .into_iter()
            .map(|a| Answer::Status(200, a))
            .collect(),
    )
}

const LOGIN: &str =
    r#"{"auth": {"client_token": "s.team", "lease_duration": 60, "renewable": true}}"#;
const READ: &str = r#"{"lease_id": "", "data": {"key": "value"}}"#;
const RENEW: &str =
    r#"{"auth": {"client_token": "s.team", "lease_duration": 60, "renewable": true}}"#;

fn client(address: &str) -> VaultClient {
    vault::install_crypto_provider();
    VaultClient::new(
        &VaultConfig {
            address: address.to_owned(),
            ca_pem: None,
            timeout: Duration::from_secs(5),
            user_agent: "vaultkeeper-operator/0.1.0 (replica-1)".into(),
        },
        None,
    )
    .expect("a client")
}

#[tokio::test]
async fn every_request_carries_the_namespace_login_included() {
    let (address, requests) = vault_stub(vec![LOGIN, READ, RENEW]);
    let client = client(&address).with_namespace("/team-a/web/").unwrap();
    assert_eq!(client.namespace(), Some("team-a/web"));

    let auth = client
        .login_kubernetes("kubernetes", "web", "jwt")
        .await
        .unwrap();
    let answer = client
        .read_raw(&auth.token, "secret/data/app")
        .await
        .unwrap();
    assert_eq!(answer["data"]["key"], "value");
    client.renew_self(&auth.token, None).await.unwrap();

    let seen: Vec<Seen> = requests.try_iter().collect();
    let lines: Vec<&str> = seen.iter().map(|s| s.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "POST /v1/auth/kubernetes/login HTTP/1.1",
            "GET /v1/secret/data/app HTTP/1.1",
            "POST /v1/auth/token/renew-self HTTP/1.1",
        ]
    );
    for request in &seen {
        assert_eq!(
            request.header("x-vault-namespace"),
            Some("team-a/web"),
            "{}",
            request.line
        );
    }
    assert_eq!(
        seen[0].header("x-vault-token"),
        None,
        "login sends no token"
    );
    assert_eq!(seen[1].header("x-vault-token"), Some("s.team"));
    // Every request names its program and replica, for Vault's audit log.
    for request in &seen {
        assert_eq!(
            request.header("user-agent"),
            Some("vaultkeeper-operator/0.1.0 (replica-1)")
        );
    }
}

#[tokio::test]
async fn without_a_namespace_no_header_is_sent() {
    let (address, requests) = vault_stub(vec![LOGIN, READ]);
    let root = client(&address);
    let team = root.clone().with_namespace("team-a").unwrap();
    assert_eq!(root.namespace(), None);
    assert_eq!(team.namespace(), Some("team-a"));
    // The namespaced clone leaves the original alone, and an empty namespace is the root one.
    let also_root = root.clone().with_namespace("/").unwrap();
    assert_eq!(also_root.namespace(), None);

    root.login_kubernetes("kubernetes", "web", "jwt")
        .await
        .unwrap();
    also_root
        .read_raw(&VaultToken::new("s.root"), "kv/app")
        .await
        .unwrap();
    let seen: Vec<Seen> = requests.try_iter().collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for request in &seen {
        assert_eq!(
            request.header("x-vault-namespace"),
            None,
            "{}",
            request.line
        );
    }
}

#[test]
fn a_namespace_no_header_can_carry_is_refused() {
    let error = client("http://127.0.0.1:1")
        .with_namespace("team\na")
        .unwrap_err();
    assert_eq!(error, "invalid Vault namespace \"team\\na\"");
}
