//! The injection webhook's serving certificate, issued and rotated by the operator so that a first
//! `helm install` works without cert-manager and without a Helm hook, and so that no secret
//! material is in the chart's rendered manifests.
//!
//! The operator keeps a private CA in one Secret of its namespace (`ca.crt`, `ca.key`, and during
//! a CA rotation `previous-ca.crt`), the webhook's serving certificate in a second
//! (`kubernetes.io/tls`, mounted by the webhook pods, whose ServiceAccount reads no Secrets), and
//! the CAs in the `caBundle` of every webhook of the MutatingWebhookConfiguration, written with
//! server-side apply under its own field manager (so Helm and Argo CD, whose manifests leave
//! `caBundle` out, neither overwrite it nor own it).
//!
//! One step at a time, each re-reading what is there, in an order that keeps the API server able
//! to call the webhook if the process stops between any two: a new CA is stored first, then
//! published in `caBundle` (next to the CA it replaces, until that one expires), and only then is
//! a serving certificate signed by it written.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// How long a CA lasts; it is replaced when two thirds of that have passed.
pub const CA_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// How long a serving certificate lasts; it is replaced when two thirds of that have passed.
pub const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long before they are issued, for clocks that run behind.
const BACKDATE: i64 = 3600;
/// The longest the loop sleeps without a change it saw.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// The field manager of `caBundle`.
pub const FIELD_MANAGER: &str = "vaultkeeper-operator-webhook-ca";
/// The label that marks both Secrets (and the watch of them).
const COMPONENT_LABEL: (&str, &str) = ("app.kubernetes.io/component", "webhook-tls");

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const PREVIOUS_CA: &str = "previous-ca.crt";

/// Where the certificate lives and whom it names.
#[derive(Clone, Debug)]
pub struct Names {
    /// The operator's (and the webhook's) namespace.
    pub namespace: String,
    /// The webhook's Service: the serving certificate names its DNS names.
    pub service: String,
    pub ca_secret: String,
    pub tls_secret: String,
    /// The MutatingWebhookConfiguration whose webhooks call that Service.
    pub configuration: String,
}

impl Names {
    /// The names the API server may dial the Service by.
    pub fn dns_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service, &self.namespace);
        vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ]
    }
}

/// A certificate and its key as PEM. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// What is there now.
#[derive(Clone, Debug, Default)]
pub struct Found {
    pub ca: Option<Pair>,
    pub previous_ca: Option<String>,
    pub serving: Option<Pair>,
    /// The CA stored next to the serving certificate (the one that signed it).
    pub serving_ca: Option<String>,
    /// The `caBundle` of each webhook of the configuration (empty when unset); `None` when the
    /// configuration does not exist.
    pub bundles: Option<Vec<Vec<u8>>>,
}

/// The next thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Store a new CA (the current one, if still valid, becomes the previous one).
    NewCa(&'static str),
    /// Set every webhook's `caBundle` to these PEM bytes.
    PublishBundle(Vec<u8>),
    /// Write a serving certificate signed by the current CA.
    IssueServing(&'static str),
    /// Nothing to do until then (unix seconds).
    UpToDate { recheck_at: i64 },
    /// The configuration does not exist (not yet installed, or uninstalled): nothing is issued
    /// for it, so an uninstall that deletes it (and with it, as their owner, both Secrets) is not
    /// undone.
    NoConfiguration,
}

/// The facts of a certificate that drive the steps.
#[derive(Clone, Debug)]
struct Facts {
    not_before: i64,
    not_after: i64,
    dns_names: Vec<String>,
    is_ca: bool,
}

impl Facts {
    /// Two thirds into its lifetime.
    fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

fn facts(pem: &str) -> Option<Facts> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let dns_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let is_ca = cert.is_ca();
    let validity = cert.validity();
    Some(Facts {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        dns_names,
        is_ca,
    })
}

/// Whether `pair`'s key is the key of its certificate.
fn key_matches(pair: &Pair) -> bool {
    let Ok(key) = KeyPair::from_pem(&pair.key) else {
        return false;
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pair.cert.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    cert.public_key().raw == rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
}

/// Whether `cert` carries a valid signature of `ca`.
fn signed_by(cert: &str, ca: &str) -> bool {
    let parse = |pem: &str| {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .ok()
            .map(|(_, p)| p)
    };
    let (Some(cert), Some(ca)) = (parse(cert), parse(ca)) else {
        return false;
    };
    let (Ok(cert), Ok(ca)) = (cert.parse_x509(), ca.parse_x509()) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// The CA to keep trusting when a new one replaces the stored one: the stored CA while it is
/// valid; if that is damaged, the CA that signed the serving certificate in use, so that the
/// webhook pods (whose mounted Secret the kubelet updates only after a while) stay trusted until
/// they serve a certificate of the new CA.
pub fn ca_to_keep(now: i64, found: &Found) -> Option<String> {
    let usable = |pem: &str| facts(pem).is_some_and(|f| f.is_ca && now < f.not_after);
    if let Some(ca) = &found.ca
        && usable(&ca.cert)
    {
        return Some(ca.cert.clone());
    }
    let serving = found.serving.as_ref()?;
    found
        .serving_ca
        .clone()
        .filter(|ca| usable(ca) && signed_by(&serving.cert, ca))
}

/// The bundle the webhooks should carry: the current CA, then the previous one while it is valid.
fn desired_bundle(now: i64, ca: &Pair, previous: Option<&str>) -> Vec<u8> {
    let mut bundle = pem_block(&ca.cert);
    if let Some(previous) = previous
        && facts(previous).is_some_and(|f| now < f.not_after)
    {
        bundle.extend(pem_block(previous));
    }
    bundle
}

fn pem_block(pem: &str) -> Vec<u8> {
    let mut bytes = pem.trim_end().as_bytes().to_vec();
    bytes.push(b'\n');
    bytes
}

/// The next step from what is there. Pure: `now` in unix seconds, `dns_names` those the serving
/// certificate must name.
pub fn next_step(now: i64, found: &Found, dns_names: &[String]) -> Step {
    let Some(bundles) = &found.bundles else {
        return Step::NoConfiguration;
    };
    let ca = match &found.ca {
        None => return Step::NewCa("there is no CA yet"),
        Some(ca) => ca,
    };
    let Some(ca_facts) = facts(&ca.cert).filter(|f| f.is_ca) else {
        return Step::NewCa("the stored CA certificate does not parse as a CA");
    };
    if !key_matches(ca) {
        return Step::NewCa("the stored CA key does not belong to its certificate");
    }
    if now >= ca_facts.renew_at() {
        return Step::NewCa("the CA is two thirds through its lifetime");
    }
    let bundle = desired_bundle(now, ca, found.previous_ca.as_deref());
    if bundles.iter().any(|b| *b != bundle) {
        return Step::PublishBundle(bundle);
    }
    let serving_facts = match &found.serving {
        None => return Step::IssueServing("there is no serving certificate yet"),
        Some(serving) => match facts(&serving.cert) {
            None => return Step::IssueServing("the serving certificate does not parse"),
            Some(f) => {
                if !key_matches(serving) {
                    return Step::IssueServing(
                        "the serving key does not belong to its certificate",
                    );
                }
                if !signed_by(&serving.cert, &ca.cert) {
                    return Step::IssueServing("the serving certificate is not signed by the CA");
                }
                if f.dns_names != dns_names {
                    return Step::IssueServing("the serving certificate names other DNS names");
                }
                if now >= f.renew_at() {
                    return Step::IssueServing(
                        "the serving certificate is two thirds through its lifetime",
                    );
                }
                f
            }
        },
    };
    let mut recheck_at = ca_facts.renew_at().min(serving_facts.renew_at());
    if let Some(previous) = found.previous_ca.as_deref().and_then(facts)
        && previous.not_after > now
    {
        recheck_at = recheck_at.min(previous.not_after);
    }
    Step::UpToDate { recheck_at }
}

fn validity(
    now: i64,
    lifetime: Duration,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), String> {
    let start =
        time::OffsetDateTime::from_unix_timestamp(now - BACKDATE).map_err(|e| e.to_string())?;
    Ok((start, start + lifetime))
}

/// A new CA, valid from about `now`.
pub fn new_ca(now: i64) -> Result<Pair, String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("vaultkeeper webhook CA {now}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.not_before, params.not_after) = validity(now, CA_LIFETIME)?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok(Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A serving certificate for `dns_names`, signed by `ca`.
pub fn new_serving(now: i64, ca: &Pair, dns_names: &[String]) -> Result<Pair, String> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| e.to_string())?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| e.to_string())?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(|e| e.to_string())?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    (params.not_before, params.not_after) = validity(now, SERVING_LIFETIME)?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    Ok(Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Certificate(String),
    #[error("the steps did not settle after {0} rounds")]
    Unsettled(usize),
}

/// Where [`ensure`] left things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// When to look again (unix seconds).
    pub recheck_at: i64,
    /// The configuration does not exist (yet, or any more): its bundle waits for it.
    pub configuration_missing: bool,
}

/// Brings the certificate, the CA and the configuration's bundle up to date.
pub async fn ensure(
    client: &kube::Client,
    names: &Names,
    now: impl Fn() -> i64,
) -> Result<Settled, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let dns_names = names.dns_names();
    // Each round does one step; a fresh install needs three (CA, bundle, serving certificate).
    const ROUNDS: usize = 6;
    for _ in 0..ROUNDS {
        let ca_secret = secrets.get_opt(&names.ca_secret).await?;
        let tls_secret = secrets.get_opt(&names.tls_secret).await?;
        let configuration = configurations.get_opt(&names.configuration).await?;
        let found = Found {
            ca: ca_secret.as_ref().and_then(|s| pair(s, CA_CERT, CA_KEY)),
            previous_ca: ca_secret.as_ref().and_then(|s| text(s, PREVIOUS_CA)),
            serving: tls_secret
                .as_ref()
                .and_then(|s| pair(s, "tls.crt", "tls.key")),
            serving_ca: tls_secret.as_ref().and_then(|s| text(s, CA_CERT)),
            bundles: configuration.as_ref().map(bundles),
        };
        let owner = configuration
            .as_ref()
            .map(owner_reference)
            .unwrap_or_default();
        let now = now();
        match next_step(now, &found, &dns_names) {
            Step::UpToDate { recheck_at } => {
                return Ok(Settled {
                    recheck_at,
                    configuration_missing: false,
                });
            }
            Step::NoConfiguration => {
                return Ok(Settled {
                    recheck_at: now + MAX_SLEEP.as_secs() as i64,
                    configuration_missing: true,
                });
            }
            Step::NewCa(reason) => {
                let ca = new_ca(now).map_err(Error::Certificate)?;
                // The CA it replaces stays trusted while it is valid, so that the serving
                // certificate it signed keeps working until its successor is served.
                let previous = ca_to_keep(now, &found);
                let mut data = BTreeMap::from([
                    (CA_CERT.to_owned(), Some(ca.cert.clone())),
                    (CA_KEY.to_owned(), Some(ca.key.clone())),
                    (PREVIOUS_CA.to_owned(), previous),
                ]);
                write(
                    &secrets,
                    &names.ca_secret,
                    ca_secret,
                    &mut data,
                    None,
                    owner,
                )
                .await?;
                tracing::info!(secret = %names.ca_secret, reason, "stored a new CA for the webhook's serving certificate");
            }
            Step::PublishBundle(bundle) => {
                let configuration =
                    configuration.expect("a bundle is published only to an existing configuration");
                let webhooks: Vec<serde_json::Value> = configuration
                    .webhooks
                    .iter()
                    .flatten()
                    .map(|w| serde_json::json!({"name": w.name, "clientConfig": {"caBundle": base64::engine::general_purpose::STANDARD.encode(&bundle)}}))
                    .collect();
                let patch = serde_json::json!({
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "MutatingWebhookConfiguration",
                    "metadata": {"name": names.configuration},
                    "webhooks": webhooks,
                });
                configurations
                    .patch(
                        &names.configuration,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&patch),
                    )
                    .await?;
                tracing::info!(configuration = %names.configuration, webhooks = webhooks.len(), "wrote the CA bundle of the MutatingWebhookConfiguration");
            }
            Step::IssueServing(reason) => {
                let ca = found
                    .ca
                    .expect("a serving certificate is issued only under a CA");
                let serving = new_serving(now, &ca, &dns_names).map_err(Error::Certificate)?;
                let not_after = facts(&serving.cert)
                    .map(|f| f.not_after)
                    .unwrap_or_default();
                let mut data = BTreeMap::from([
                    ("tls.crt".to_owned(), Some(serving.cert)),
                    ("tls.key".to_owned(), Some(serving.key)),
                    (CA_CERT.to_owned(), Some(ca.cert)),
                ]);
                write(
                    &secrets,
                    &names.tls_secret,
                    tls_secret,
                    &mut data,
                    Some("kubernetes.io/tls"),
                    owner,
                )
                .await?;
                tracing::info!(secret = %names.tls_secret, reason, not_after, dns_names = ?dns_names, "wrote the webhook's serving certificate");
            }
        }
    }
    Err(Error::Unsettled(ROUNDS))
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn pair(secret: &Secret, cert: &str, key: &str) -> Option<Pair> {
    Some(Pair {
        cert: text(secret, cert)?,
        key: text(secret, key)?,
    })
}

fn bundles(configuration: &MutatingWebhookConfiguration) -> Vec<Vec<u8>> {
    configuration
        .webhooks
        .iter()
        .flatten()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.clone())
                .unwrap_or_default()
        })
        .collect()
}

fn owner_reference(configuration: &MutatingWebhookConfiguration) -> OwnerReference {
    OwnerReference {
        api_version: "admissionregistration.k8s.io/v1".to_owned(),
        kind: "MutatingWebhookConfiguration".to_owned(),
        name: configuration.metadata.name.clone().unwrap_or_default(),
        uid: configuration.metadata.uid.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// Creates the Secret, or changes the existing one only if it is still the version that was read
/// (a conflict means another writer got there first: the next round re-reads). Keys mapped to
/// `None` are removed. The configuration owns it, so deleting that (uninstalling the chart)
/// removes it.
async fn write(
    api: &Api<Secret>,
    name: &str,
    existing: Option<Secret>,
    data: &mut BTreeMap<String, Option<String>>,
    type_: Option<&str>,
    owner: OwnerReference,
) -> Result<(), kube::Error> {
    let labels = BTreeMap::from([
        (COMPONENT_LABEL.0.to_owned(), COMPONENT_LABEL.1.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "vaultkeeper-operator".to_owned(),
        ),
    ]);
    let result = match existing {
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(labels),
                    owner_references: Some(vec![owner]),
                    ..Default::default()
                },
                type_: type_.map(str::to_owned),
                data: Some(
                    std::mem::take(data)
                        .into_iter()
                        .filter_map(|(k, v)| v.map(|v| (k, ByteString(v.into_bytes()))))
                        .collect(),
                ),
                ..Default::default()
            };
            api.create(&PostParams::default(), &secret).await.map(drop)
        }
        Some(existing) => {
            let encode = |v: &String| base64::engine::general_purpose::STANDARD.encode(v);
            let data: serde_json::Map<String, serde_json::Value> = data
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map(encode).into()))
                .collect();
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": existing.metadata.resource_version,
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "data": data,
            });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        }
    };
    match result {
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        other => other,
    }
}

/// Keeps the certificate up to date until the future is dropped: after any change to the
/// configuration or the two Secrets, when a certificate is due, and at least hourly.
pub async fn run(client: kube::Client, watch_client: kube::Client, names: Names) {
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(watch_client.clone());
    let secrets: Api<Secret> = Api::namespaced(watch_client, &names.namespace);
    let by_name =
        watcher::Config::default().fields(&format!("metadata.name={}", names.configuration));
    let by_label =
        watcher::Config::default().labels(&format!("{}={}", COMPONENT_LABEL.0, COMPONENT_LABEL.1));
    let configuration_changes = watcher(configurations, by_name)
        .default_backoff()
        .map(|_| ());
    let secret_changes = watcher(secrets, by_label).default_backoff().map(|_| ());
    let mut changes = Box::pin(futures::stream::select(
        configuration_changes,
        secret_changes,
    ));
    let mut backoff = Duration::from_secs(1);
    let mut missing_logged = false;
    loop {
        let now = || k8s_openapi::jiff::Timestamp::now().as_second();
        let sleep = match ensure(&client, &names, now).await {
            Ok(Settled {
                recheck_at,
                configuration_missing,
            }) => {
                if configuration_missing && !missing_logged {
                    tracing::info!(configuration = %names.configuration, "the MutatingWebhookConfiguration does not exist; its caBundle is written once it does");
                }
                missing_logged = configuration_missing;
                backoff = Duration::from_secs(1);
                Duration::from_secs(u64::try_from(recheck_at - now()).unwrap_or(0)).min(MAX_SLEEP)
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "failed to bring the webhook's serving certificate up to date");
                let sleep = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(300));
                sleep
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = changes.next() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 24 * 3600;

    fn dns() -> Vec<String> {
        Names {
            namespace: "vk".into(),
            service: "webhook".into(),
            ca_secret: "ca".into(),
            tls_secret: "tls".into(),
            configuration: "injector".into(),
        }
        .dns_names()
    }

    /// Carries a step out on the in-memory state, as `ensure` does on the API.
    fn apply(now: i64, found: &mut Found, step: &Step) {
        match step {
            Step::NewCa(_) => {
                found.previous_ca = ca_to_keep(now, found);
                found.ca = Some(new_ca(now).unwrap());
            }
            Step::PublishBundle(bundle) => {
                for b in found.bundles.iter_mut().flatten() {
                    *b = bundle.clone();
                }
            }
            Step::IssueServing(_) => {
                let ca = found.ca.as_ref().unwrap();
                found.serving = Some(new_serving(now, ca, &dns()).unwrap());
                found.serving_ca = Some(ca.cert.clone());
            }
            Step::UpToDate { .. } | Step::NoConfiguration => {}
        }
    }

    /// Runs steps until up to date; checks after each that the serving certificate in use is
    /// trusted by every webhook's bundle whenever a bundle is set.
    fn settle(now: i64, found: &mut Found) -> Vec<Step> {
        let mut steps = vec![];
        for _ in 0..6 {
            let step = next_step(now, found, &dns());
            steps.push(step.clone());
            if let Step::UpToDate { .. } | Step::NoConfiguration = step {
                return steps;
            }
            apply(now, found, &step);
            if let (Some(serving), Some(bundles)) = (&found.serving, &found.bundles) {
                for bundle in bundles.iter().filter(|b| !b.is_empty()) {
                    let trusted = String::from_utf8(bundle.clone()).unwrap();
                    let cas: Vec<String> = trusted
                        .split_inclusive("-----END CERTIFICATE-----\n")
                        .map(str::to_owned)
                        .collect();
                    assert!(
                        cas.iter().any(|ca| signed_by(&serving.cert, ca)),
                        "after {step:?} the serving certificate is not trusted by the bundle"
                    );
                }
            }
        }
        panic!("did not settle: {steps:?}");
    }

    fn kinds(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .map(|s| match s {
                Step::NewCa(_) => "ca",
                Step::PublishBundle(_) => "bundle",
                Step::IssueServing(_) => "serving",
                Step::UpToDate { .. } | Step::NoConfiguration => "done",
            })
            .collect()
    }

    #[test]
    fn a_fresh_install_gets_a_ca_then_the_bundle_then_the_serving_certificate() {
        let mut found = Found {
            bundles: Some(vec![vec![]]),
            ..Default::default()
        };
        assert_eq!(
            kinds(&settle(NOW, &mut found)),
            ["ca", "bundle", "serving", "done"]
        );
        let serving = facts(&found.serving.as_ref().unwrap().cert).unwrap();
        assert_eq!(serving.dns_names, dns());
        assert!(!serving.is_ca);
        assert!(facts(&found.ca.as_ref().unwrap().cert).unwrap().is_ca);
        // Up to date again at once: nothing is redone.
        assert_eq!(kinds(&settle(NOW + 60, &mut found)), ["done"]);
    }

    #[test]
    fn without_the_configuration_nothing_is_issued_until_it_appears() {
        let mut found = Found::default();
        assert_eq!(next_step(NOW, &found, &dns()), Step::NoConfiguration);
        found.bundles = Some(vec![vec![], b"stale".to_vec()]);
        assert_eq!(
            kinds(&settle(NOW, &mut found)),
            ["ca", "bundle", "serving", "done"]
        );
        // Deleted again (an uninstall): nothing is redone, whatever is stored.
        found.bundles = None;
        found.serving = None;
        assert_eq!(next_step(NOW, &found, &dns()), Step::NoConfiguration);
    }

    #[test]
    fn the_serving_certificate_is_renewed_two_thirds_through_and_the_ca_is_kept() {
        let mut found = Found {
            bundles: Some(vec![vec![]]),
            ..Default::default()
        };
        settle(NOW, &mut found);
        let ca = found.ca.clone();
        let Step::UpToDate { recheck_at } = next_step(NOW, &found, &dns()) else {
            panic!()
        };
        let lifetime = SERVING_LIFETIME.as_secs() as i64;
        assert_eq!(recheck_at, NOW - BACKDATE + lifetime * 2 / 3);
        assert_eq!(kinds(&settle(recheck_at - 1, &mut found)), ["done"]);
        assert_eq!(kinds(&settle(recheck_at, &mut found)), ["serving", "done"]);
        assert_eq!(found.ca, ca);
    }

    #[test]
    fn a_ca_rotation_trusts_both_cas_until_the_old_one_expires() {
        let mut found = Found {
            bundles: Some(vec![vec![]]),
            ..Default::default()
        };
        settle(NOW, &mut found);
        let old_ca = found.ca.clone().unwrap();
        let rotate = NOW - BACKDATE + CA_LIFETIME.as_secs() as i64 * 2 / 3;
        // The serving certificate was renewed on its own schedule before the CA came due.
        found.serving = Some(new_serving(rotate - DAY, &old_ca, &dns()).unwrap());
        assert_eq!(
            kinds(&settle(rotate, &mut found)),
            ["ca", "bundle", "serving", "done"]
        );
        assert_eq!(found.previous_ca.as_deref(), Some(old_ca.cert.as_str()));
        let bundle = String::from_utf8(found.bundles.clone().unwrap()[0].clone()).unwrap();
        assert!(
            bundle.contains(old_ca.cert.trim_end())
                && bundle.contains(found.ca.as_ref().unwrap().cert.trim_end())
        );
        // When the old CA expires, the bundle drops it.
        let old_end = facts(&old_ca.cert).unwrap().not_after;
        // Serving certificates come due on their own schedule meanwhile; then the old CA ends.
        let mut at = rotate;
        loop {
            let Step::UpToDate { recheck_at } = next_step(at, &found, &dns()) else {
                panic!()
            };
            assert!(recheck_at <= old_end);
            if recheck_at == old_end {
                break;
            }
            assert_eq!(kinds(&settle(recheck_at, &mut found)), ["serving", "done"]);
            at = recheck_at;
        }
        assert_eq!(kinds(&settle(old_end, &mut found)), ["bundle", "done"]);
        let bundle = String::from_utf8(found.bundles.clone().unwrap()[0].clone()).unwrap();
        assert!(!bundle.contains(old_ca.cert.trim_end()));
    }

    #[test]
    fn damaged_or_foreign_material_is_replaced() {
        let mut found = Found {
            bundles: Some(vec![vec![]]),
            ..Default::default()
        };
        settle(NOW, &mut found);
        let good = found.clone();

        // A serving certificate from another CA, or with its key swapped, or for other names.
        let stranger = new_ca(NOW).unwrap();
        found.serving = Some(new_serving(NOW, &stranger, &dns()).unwrap());
        assert_eq!(kinds(&settle(NOW, &mut found)), ["serving", "done"]);
        let mut swapped = good.clone();
        swapped.serving.as_mut().unwrap().key = stranger.key.clone();
        assert_eq!(kinds(&settle(NOW, &mut swapped)), ["serving", "done"]);
        let mut renamed = good.clone();
        renamed.serving =
            Some(new_serving(NOW, good.ca.as_ref().unwrap(), &["other".into()]).unwrap());
        assert_eq!(kinds(&settle(NOW, &mut renamed)), ["serving", "done"]);

        // A CA whose certificate is garbage, or whose key is another's.
        let mut garbage = good.clone();
        garbage.ca.as_mut().unwrap().cert = "not a certificate".into();
        assert_eq!(
            kinds(&settle(NOW, &mut garbage)),
            ["ca", "bundle", "serving", "done"]
        );
        let mut wrong_key = good.clone();
        wrong_key.ca.as_mut().unwrap().key = stranger.key;
        assert_eq!(
            kinds(&settle(NOW, &mut wrong_key)),
            ["ca", "bundle", "serving", "done"]
        );

        // A leaf stored as the CA is not a CA.
        let mut leaf_as_ca = good;
        leaf_as_ca.ca = leaf_as_ca.serving.clone();
        assert_eq!(kinds(&settle(NOW, &mut leaf_as_ca))[0], "ca");
    }

    #[test]
    fn a_bundle_someone_else_changed_is_written_back() {
        let mut found = Found {
            bundles: Some(vec![vec![]]),
            ..Default::default()
        };
        settle(NOW, &mut found);
        found.bundles = Some(vec![vec![]]);
        assert_eq!(kinds(&settle(NOW, &mut found)), ["bundle", "done"]);
    }

    #[test]
    fn the_pair_debug_output_hides_the_key() {
        let ca = new_ca(NOW).unwrap();
        let shown = format!("{ca:?}");
        assert!(!shown.contains(ca.key.lines().nth(1).unwrap()));
        assert!(shown.contains("<redacted>"));
    }
}
