//! Several nodes of one cluster: a request moves on to the next node only when the one asked
//! certainly did not act on it (refused connection, sealed, standby without an active node), and
//! the node that served is asked first afterwards. A request that may have been acted on is never
//! sent twice. Checked against tiny local HTTP listeners that answer as Vault nodes would.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use support::{Answer, node};
use vaultkeeper_vault::{self as vault, VaultClient, VaultConfig, VaultError, VaultToken};

/// An address nothing listens on: connecting is refused.
fn refused() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    format!("http://{}", listener.local_addr().unwrap())
}

fn client(addresses: &[&str]) -> VaultClient {
    vault::install_crypto_provider();
    VaultClient::new(
        &VaultConfig {
            address: addresses.join(","),
            ca_pem: None,
            timeout: Duration::from_secs(5),
            user_agent: String::new(),
        },
        None,
    )
    .expect("a client")
}

const READ: &str = r#"{"lease_id": "", "data": {"key": "value"}}"#;
const STANDBY: &str = r#"{"errors": ["node is in standby mode and no active node was found"]}"#;
const NO_ACTIVE: &str =
    r#"{"errors": ["local node not active but active cluster node not found"]}"#;
const SEALED: &str = r#"{"errors": ["Vault is sealed"]}"#;
const BROKEN: &str = r#"{"errors": ["internal error"]}"#;

fn token() -> VaultToken {
    VaultToken::new("s.root")
}

#[tokio::test]
async fn a_refused_node_is_passed_over_and_the_one_that_served_is_asked_first() {
    let dead = refused();
    let (alive, requests) = node(vec![Answer::Status(200, READ), Answer::Status(200, READ)]);
    let client = client(&[&dead, &alive]);
    assert_eq!(client.address(), dead);

    let answer = client.read_raw(&token(), "secret/data/app").await.unwrap();
    assert_eq!(answer["data"]["key"], "value");
    assert_eq!(
        client.address(),
        alive,
        "the node that served is remembered"
    );
    // A clone shares the choice.
    let clone = client.clone().with_namespace("team-a").unwrap();
    assert_eq!(clone.address(), alive);
    clone.read_raw(&token(), "secret/data/app").await.unwrap();
    assert_eq!(requests.try_iter().count(), 2);
}

#[tokio::test]
async fn sealed_standby_and_no_active_node_answers_move_on_to_the_next_node() {
    for (status, body) in [(503, SEALED), (503, STANDBY), (500, NO_ACTIVE)] {
        let (first, first_seen) = node(vec![Answer::Status(status, body)]);
        let (second, second_seen) = node(vec![Answer::Status(200, READ)]);
        let client = client(&[&first, &second]);
        let answer = client.read_raw(&token(), "secret/data/app").await;
        assert!(answer.is_ok(), "{status} {body}: {answer:?}");
        assert_eq!(first_seen.try_iter().count(), 1);
        assert_eq!(second_seen.try_iter().count(), 1);
        assert_eq!(client.address(), second);
    }
}

#[tokio::test]
async fn a_request_the_node_may_have_acted_on_is_not_sent_again() {
    // A server error about the request itself, and a connection closed after the request was
    // sent: the first node may have issued the credential, so the second is never asked.
    for answer in [Answer::Status(500, BROKEN), Answer::Hangup] {
        let (first, first_seen) = node(vec![answer]);
        let (second, second_seen) = node(vec![Answer::Status(200, READ)]);
        let client = client(&[&first, &second]);
        let err = client
            .read_raw(&token(), "database/creds/app")
            .await
            .unwrap_err();
        assert!(err.is_outage(), "{err}");
        assert_eq!(first_seen.try_iter().count(), 1);
        assert_eq!(second_seen.try_iter().count(), 0, "sent twice: {err}");
        assert_eq!(client.address(), first);
    }
}

#[tokio::test]
async fn when_no_node_serves_the_error_is_an_answer_rather_than_a_refusal() {
    // The refused node asked first, or last: the sealed node's answer says more either way.
    let (sealed, _seen) = node(vec![Answer::Status(503, SEALED); 2]);
    let dead = refused();
    for order in [[&dead, &sealed], [&sealed, &dead]] {
        let client = client(&order.map(String::as_str));
        let err = client
            .read_raw(&token(), "secret/data/app")
            .await
            .unwrap_err();
        assert!(matches!(err, VaultError::Sealed { .. }), "{err}");
    }
}

#[tokio::test]
async fn several_nodes_serve_only_while_one_is_active_and_one_address_while_it_answers() {
    // A standby (429 to a plain sys/health) and the active node: healthy, and requests now go
    // to the active one.
    let (standby, standby_seen) = node(vec![Answer::Status(429, "{}")]);
    let (active, active_seen) = node(vec![Answer::Status(200, "{}")]);
    let cluster = client(&[&standby, &active]);
    cluster.health().await.unwrap();
    assert_eq!(cluster.address(), active);
    assert_eq!(
        standby_seen.try_iter().map(|s| s.line).collect::<Vec<_>>(),
        ["GET /v1/sys/health HTTP/1.1"]
    );
    assert_eq!(active_seen.try_iter().count(), 1);

    // Standbys alone (an election under way): not healthy, whatever they answer.
    let (first, _a) = node(vec![Answer::Status(429, "{}")]);
    let (second, _b) = node(vec![Answer::Status(429, "{}")]);
    let err = client(&[&first, &second]).health().await.unwrap_err();
    assert!(
        matches!(err, VaultError::Unavailable { status: 429, .. }),
        "{err}"
    );

    // One address may be a standby or a Service in front of several nodes: it is asked with
    // standbyok, so a standby counts as serving.
    let (one, one_seen) = node(vec![Answer::Status(200, "{}")]);
    client(&[&one]).health().await.unwrap();
    assert_eq!(
        one_seen.try_iter().map(|s| s.line).collect::<Vec<_>>(),
        ["GET /v1/sys/health?standbyok=true&perfstandbyok=true HTTP/1.1"]
    );
}

#[test]
fn addresses_are_one_or_several_separated_by_commas() {
    assert_eq!(
        vault::addresses("http://vault-0:8200/, https://vault-1:8200").unwrap(),
        ["http://vault-0:8200", "https://vault-1:8200"]
    );
    assert_eq!(
        vault::addresses("https://vault.vault.svc:8200").unwrap(),
        ["https://vault.vault.svc:8200"]
    );
    for bad in [
        "",
        "vault:8200",
        "http://",
        "http://a,",
        "http://a,,http://b",
    ] {
        let err = vault::addresses(bad).unwrap_err();
        assert!(err.contains("is not http:// or https://"), "{bad:?}: {err}");
    }
}
