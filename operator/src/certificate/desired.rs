//! Pure parts of the CertificateRequest reconcile: the plan from the spec, the certificate read back
//! from the Secret, when to renew, and the `kubernetes.io/tls` Secret to write.

use std::collections::BTreeMap;
use std::time::Duration;

use crds::v1alpha1::{
    CertificateRequest, CertificateRequestStatus, IssueMode, KeyAlgorithm, SupersededCertificate,
    condition_types, reasons,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use vault::{CertificateOptions, IssuedCertificate, KeyRequest};

use crate::conditions::{self, Desired};
use crate::identity::IdentityKey;

/// Digest of the spec fields that define the certificate; a change means a new certificate.
pub const SPEC_DIGEST_ANNOTATION: &str = "vaultkeeper.dev/certificate-spec";
/// Label on the Secret: the CertificateRequest that owns it.
pub const OWNER_LABEL: &str = crate::managed::owner_labels::CERTIFICATE_REQUEST;

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";

/// The names a certificate is for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub common_name: Option<String>,
    pub alt_names: Vec<String>,
    pub ip_sans: Vec<String>,
    pub uri_sans: Vec<String>,
}

/// What a valid spec asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub identity: IdentityKey,
    pub names: Names,
    pub options: CertificateOptions,
    pub key: KeyRequest,
    /// `renewBefore`, when set.
    pub renew_before: Option<Duration>,
    pub spec_digest: String,
}

/// Checks what CEL cannot (connection exists, durations parse) and resolves defaults.
pub fn plan(
    cr: &CertificateRequest,
    auth_mount_of: impl Fn(&str) -> Option<String>,
) -> Result<Plan, String> {
    let spec = &cr.spec;
    let identity = IdentityKey::of_resource(
        spec.connection.as_deref(),
        &spec.auth,
        cr.namespace().unwrap_or_default(),
        auth_mount_of,
    )?;
    let duration = |field: &str, value: &Option<String>| -> Result<Option<Duration>, String> {
        value
            .as_ref()
            .map(|v| {
                // The same bounds as the CRD's CEL rules, for resources stored before they existed.
                crds::duration::parse(v)
                    .filter(|d| {
                        *d >= Duration::from_secs(1) && *d <= Duration::from_secs(87_600 * 3600)
                    })
                    .ok_or_else(|| {
                        format!(
                            "{field} {v:?} is not a duration such as 90s or 720h between 1s and 87600h"
                        )
                    })
            })
            .transpose()
    };
    let ttl = duration("ttl", &spec.ttl)?;
    let renew_before = duration("renewBefore", &spec.renew_before)?;
    if let (Some(ttl), Some(rb)) = (ttl, renew_before)
        && rb >= ttl
    {
        return Err("renewBefore must be shorter than ttl".to_owned());
    }
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let names = Names {
        common_name: spec.common_name.clone().filter(|c| !c.is_empty()),
        alt_names: sorted(&spec.alt_names),
        ip_sans: sorted(&spec.ip_sans),
        uri_sans: sorted(&spec.uri_sans),
    };
    if names == Names::default() {
        return Err(
            "a certificate needs a name: set commonName, altNames, ipSans or uriSans".into(),
        );
    }
    let options = CertificateOptions {
        common_name: names.common_name.clone().unwrap_or_default(),
        alt_names: names.alt_names.join(","),
        ip_sans: names.ip_sans.join(","),
        uri_sans: names.uri_sans.join(","),
        ttl: ttl
            .map(|t| format!("{}s", t.as_secs().max(1)))
            .unwrap_or_default(),
        exclude_cn_from_sans: false,
    };
    let key = KeyRequest {
        key_type: match spec.private_key.algorithm {
            KeyAlgorithm::Rsa => "rsa",
            KeyAlgorithm::Ecdsa => "ec",
            KeyAlgorithm::Ed25519 => "ed25519",
        },
        key_bits: spec.private_key.bits(),
    };
    let defining = serde_json::json!({
        "identity": [&identity.connection, &identity.service_account, &identity.role, &identity.mount],
        "mount": spec.mount,
        "role": spec.role,
        "names": [&names.common_name, &names.alt_names, &names.ip_sans, &names.uri_sans],
        "ttl": options.ttl,
        "key": [key.key_type, key.key_bits],
        "mode": matches!(spec.mode, IssueMode::Sign),
    });
    let spec_digest = hex::encode(&Sha256::digest(defining.to_string().as_bytes())[..8]);
    Ok(Plan {
        identity,
        names,
        options,
        key,
        renew_before,
        spec_digest,
    })
}

/// The facts of a certificate that drive renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    /// `1a:2b:…`, as Vault prints serials.
    pub serial: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

/// Reads the first certificate of a PEM bundle.
pub fn cert_facts(pem: &[u8]) -> Option<CertFacts> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let validity = cert.validity();
    Some(CertFacts {
        serial: vault_serial(&cert.serial.to_bytes_be()),
        not_before: Timestamp::from_second(validity.not_before.timestamp()).ok()?,
        not_after: Timestamp::from_second(validity.not_after.timestamp()).ok()?,
    })
}

/// A serial as Vault prints and looks it up: the integer's minimal big-endian bytes, lowercase hex,
/// colon-separated (DER may pad a leading zero byte, which Vault's lookups do not know).
pub fn vault_serial(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes[start..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What the Secret holds, when it holds a readable certificate and a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub facts: CertFacts,
    /// The Secret was written for the current spec.
    pub matches_spec: bool,
}

pub fn stored(secret: &Secret, spec_digest: &str) -> Option<Stored> {
    let data = secret.data.as_ref()?;
    let key = data.get(TLS_KEY)?;
    if key.0.is_empty() {
        return None;
    }
    let facts = cert_facts(&data.get(TLS_CRT)?.0)?;
    Some(Stored {
        facts,
        matches_spec: secret
            .annotations()
            .get(SPEC_DIGEST_ANNOTATION)
            .is_some_and(|d| d == spec_digest),
    })
}

/// Why a certificate is (re-)issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// No Secret, or one without a readable certificate and key.
    Missing,
    /// The spec asks for a different certificate.
    SpecChanged,
    /// The renewal time passed.
    Renewal,
}

impl IssueReason {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Missing => "no certificate was stored",
            Self::SpecChanged => "the spec asks for a different certificate",
            Self::Renewal => "the certificate reached its renewal time",
        }
    }
}

/// What to do with the stored certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Issue(IssueReason),
    /// Keep it; renew at this time.
    Keep(Timestamp),
}

/// How long before `not_after` a certificate is renewed: `renewBefore`, or a third of its lifetime
/// when unset or not shorter than the lifetime.
pub fn effective_renew_before(facts: &CertFacts, renew_before: Option<Duration>) -> Duration {
    let lifetime = facts
        .not_after
        .duration_since(facts.not_before)
        .max(SignedDuration::ZERO)
        .unsigned_abs();
    match renew_before {
        Some(rb) if rb < lifetime => rb,
        _ => lifetime / 3,
    }
}

/// The renewal time: `not_after - renewBefore`, moved earlier by `jitter` (0..1) of a window of a
/// tenth of `renewBefore`, at most five minutes, and at most a tenth of the time from `not_before`
/// to the renewal: with `renewBefore` close to the lifetime, a wider window would put the renewal
/// before the certificate was issued, and every new certificate would be renewed at once.
pub fn renew_at(facts: &CertFacts, renew_before: Option<Duration>, jitter: f64) -> Timestamp {
    let before = effective_renew_before(facts, renew_before);
    let kept = crate::clock::until(facts.not_before, facts.not_after).saturating_sub(before);
    let window = (before / 10).min(kept / 10).min(Duration::from_secs(300));
    let early = crate::clock::scale(window, jitter.clamp(0.0, 1.0));
    crate::clock::before(facts.not_after, before.saturating_add(early))
}

/// The next step for what the Secret holds.
pub fn next_step(
    stored: Option<&Stored>,
    renew_before: Option<Duration>,
    jitter: f64,
    now: Timestamp,
) -> Step {
    let Some(stored) = stored else {
        return Step::Issue(IssueReason::Missing);
    };
    if !stored.matches_spec {
        return Step::Issue(IssueReason::SpecChanged);
    }
    let at = renew_at(&stored.facts, renew_before, jitter);
    // A timer may fire a little early; within a second of the renewal time counts as due, so the
    // renewal never slips past `not_after - renewBefore`.
    if crate::clock::after_secs(now, 1) >= at {
        Step::Issue(IssueReason::Renewal)
    } else {
        Step::Keep(at)
    }
}

/// A per-resource number in [0, 1), stable across restarts.
pub fn jitter_of(uid: &str) -> f64 {
    let digest = Sha256::digest(uid.as_bytes());
    f64::from(u16::from_be_bytes([digest[0], digest[1]])) / 65536.0
}

/// The Secret data for an issued certificate: `tls.crt` is the leaf and the intermediates,
/// `ca.crt` the top of the chain Vault knows (the root when the chain includes it).
pub fn tls_data(cert: &IssuedCertificate, key_pem: &str) -> BTreeMap<String, Vec<u8>> {
    let trim = |s: &str| format!("{}\n", s.trim());
    let mut chain = cert.ca_chain.clone();
    if chain.is_empty() && !cert.issuing_ca.trim().is_empty() {
        chain.push(cert.issuing_ca.clone());
    }
    let (roots, intermediates): (Vec<&String>, Vec<&String>) =
        chain.iter().partition(|c| self_signed(c));
    let mut tls_crt = trim(&cert.certificate);
    for c in &intermediates {
        tls_crt.push_str(&trim(c));
    }
    let ca = roots
        .first()
        .or(intermediates.last())
        .map(|c| trim(c))
        .unwrap_or_default();
    BTreeMap::from([
        (TLS_CRT.to_owned(), tls_crt.into_bytes()),
        (TLS_KEY.to_owned(), trim(key_pem).into_bytes()),
        (CA_CRT.to_owned(), ca.into_bytes()),
    ])
}

fn self_signed(pem: &str) -> bool {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .and_then(|(_, p)| {
            p.parse_x509()
                .ok()
                .map(|c| c.subject().as_raw() == c.issuer().as_raw())
        })
        .unwrap_or(false)
}

/// The whole Secret.
pub fn build_secret(
    cr: &CertificateRequest,
    data: BTreeMap<String, Vec<u8>>,
    spec_digest: &str,
    follow_up: &FollowUp,
) -> Secret {
    let mut annotations =
        BTreeMap::from([(SPEC_DIGEST_ANNOTATION.to_owned(), spec_digest.to_owned())]);
    if !follow_up.superseded.is_empty() {
        let recorded: Vec<RecordedCertificate> = follow_up
            .superseded
            .iter()
            .take(MAX_RECORDED_SUPERSEDED)
            .map(|s| RecordedCertificate {
                serial_number: s.serial_number.clone(),
                not_after: s.not_after.as_ref().map(|t| t.0),
            })
            .collect();
        annotations.insert(
            SUPERSEDED_ANNOTATION.to_owned(),
            serde_json::to_string(&recorded).expect("certificate records serialize"),
        );
    }
    if let Some(stamp) = &follow_up.restart_for {
        annotations.insert(RESTART_ANNOTATION.to_owned(), stamp.clone());
    }
    if let Some(at) = follow_up.issued_at {
        annotations.insert(ISSUED_AT_ANNOTATION.to_owned(), at.to_string());
    }
    crate::managed::owned_secret(
        cr,
        &cr.spec.destination,
        OWNER_LABEL,
        annotations,
        "kubernetes.io/tls".to_owned(),
        data,
    )
}

/// The certificates a new one replaced and that still await revocation, as JSON
/// (`[{"serialNumber": …, "notAfter": …}]`), written with the new certificate so that the record
/// survives a lost status write or an operator stop between the two.
pub const SUPERSEDED_ANNOTATION: &str = "vaultkeeper.dev/superseded-certificates";
/// The restart stamp the restart targets must reach for this certificate.
pub const RESTART_ANNOTATION: &str = crate::restart::RESTART_FOR_ANNOTATION;
const MAX_RECORDED_SUPERSEDED: usize = 16;

/// What must follow a freshly issued certificate, recorded on its Secret.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FollowUp {
    /// Certificates to revoke once the restarted workloads rolled out (or at once without targets).
    pub superseded: Vec<SupersededCertificate>,
    /// The stamp the restart targets must get, when the issue calls for a restart.
    pub restart_for: Option<String>,
    /// When the certificate was written (its notBefore may lie well before: Vault backdates it).
    pub issued_at: Option<Timestamp>,
}

/// When the Secret's certificate was written.
pub const ISSUED_AT_ANNOTATION: &str = "vaultkeeper.dev/issued-at";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordedCertificate {
    serial_number: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_after: Option<Timestamp>,
}

/// The follow-up recorded on the Secret. A value that does not parse counts as not recorded.
pub fn follow_up_on_secret(secret: &Secret) -> FollowUp {
    let a = secret.annotations();
    let superseded = a
        .get(SUPERSEDED_ANNOTATION)
        .and_then(|text| serde_json::from_str::<Vec<RecordedCertificate>>(text).ok())
        .unwrap_or_default()
        .into_iter()
        .take(MAX_RECORDED_SUPERSEDED)
        .filter(|r| {
            !r.serial_number.is_empty()
                && r.serial_number.len() <= 64
                && r.serial_number
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':')
        })
        .map(|r| SupersededCertificate {
            serial_number: r.serial_number,
            not_after: r.not_after.map(Time),
            // Restarted workloads may still use it: the rollout is waited for again.
            revoke_after: None,
        })
        .collect();
    let restart_for = crate::restart::recorded_stamp(a);
    let issued_at = a
        .get(ISSUED_AT_ANNOTATION)
        .and_then(|t| t.parse::<Timestamp>().ok());
    FollowUp {
        superseded,
        restart_for,
        issued_at,
    }
}

/// Whether the Secret's labels and annotations include what the spec asks for (else it is
/// re-applied with its current data).
pub fn metadata_current(secret: &Secret, cr: &CertificateRequest) -> bool {
    let dest = &cr.spec.destination;
    let labels = secret.labels();
    let annotations = secret.annotations();
    dest.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && dest
            .annotations
            .iter()
            .all(|(k, v)| annotations.get(k) == Some(v))
}

/// The status with what the Secret (holding certificate `held`) records taken up again. When the
/// status names another certificate (the status write after the last issue was lost, or the
/// operator stopped in between), the Secret's record is the truth: its superseded certificates
/// go back into the list (waiting for the rollout again), its restart into `pendingRestart`, and
/// the certificate the status named is superseded by the Secret's. Pure.
pub fn take_up_record(
    cr: &CertificateRequest,
    mut status: CertificateRequestStatus,
    secret: &Secret,
    held: &str,
    now: Timestamp,
) -> CertificateRequestStatus {
    if status.serial_number.as_deref() == Some(held) {
        return status;
    }
    let follow_up = follow_up_on_secret(secret);
    for old in follow_up.superseded {
        if old.serial_number != held
            && !status
                .superseded
                .iter()
                .any(|s| s.serial_number == old.serial_number)
        {
            status.superseded.push(old);
        }
    }
    status.pending_restart = crate::restart::take_up(
        status.pending_restart.take(),
        follow_up.restart_for,
        &cr.spec.restart_targets,
        now,
    );
    if let Some(old) = status.serial_number.clone()
        && cr.spec.revoke_superseded
        && !status.superseded.iter().any(|s| s.serial_number == old)
    {
        status.superseded.push(SupersededCertificate {
            serial_number: old,
            not_after: status.not_after.clone(),
            revoke_after: cr.spec.restart_targets.is_empty().then_some(Time(now)),
        });
    }
    status
}

/// The whole status after a successful reconcile: the certificate facts and superseded
/// certificates already in `status`, plus `Ready`, `Issuing` (`issuing`: what happened, as reason
/// and message) and `Restarts` (when the restart moved). Pure: `now` stamps the transitions.
pub fn settled_status(
    cr: &CertificateRequest,
    mut status: CertificateRequestStatus,
    facts: &CertFacts,
    issuing: (&'static str, String),
    restarts: Option<Desired>,
    now: Timestamp,
) -> CertificateRequestStatus {
    let generation = cr.metadata.generation;
    let t = Time(now);
    status.observed_generation = generation;
    let renewal = status
        .renewal_time
        .as_ref()
        .map(|r| crate::clock::show(r.0))
        .unwrap_or_default();
    let ready = Desired {
        type_: condition_types::READY,
        status: true,
        reason: reasons::SYNCED,
        message: format!(
            "Secret {:?} holds certificate {}, valid until {}; renewal at {renewal}",
            cr.spec.destination.name, facts.serial, facts.not_after
        ),
    };
    status.conditions = conditions::set(&status.conditions, ready, generation, &t);
    let issuing = Desired {
        type_: condition_types::ISSUING,
        status: false,
        reason: issuing.0,
        message: issuing.1,
    };
    status.conditions = conditions::set(&status.conditions, issuing, generation, &t);
    if let Some(c) = restarts {
        status.conditions = conditions::set(&status.conditions, c, generation, &t);
    }
    status
}

pub use crate::managed::owned_by;

#[cfg(test)]
mod tests {
    use super::*;
    use crds::v1alpha1::{CertificateRequestSpec, Destination, PrivateKey, VaultAuth};

    fn cr() -> CertificateRequest {
        let mut cr = CertificateRequest::new(
            "web",
            CertificateRequestSpec {
                connection: None,
                auth: VaultAuth {
                    role: "app".into(),
                    service_account_name: "web".into(),
                    mount: None,
                },
                mount: "pki-int".into(),
                role: "web".into(),
                common_name: Some("web.example.com".into()),
                alt_names: vec!["b.example.com".into(), "a.example.com".into()],
                ip_sans: vec![],
                uri_sans: vec![],
                ttl: Some("1h".into()),
                renew_before: None,
                private_key: PrivateKey::default(),
                mode: IssueMode::Issue,
                revoke_on_delete: true,
                revoke_superseded: true,
                destination: Destination {
                    name: "web-tls".into(),
                    type_: None,
                    labels: Default::default(),
                    annotations: Default::default(),
                    templates: Default::default(),
                },
                restart_targets: vec![],
            },
        );
        cr.metadata.namespace = Some("app".into());
        cr.metadata.uid = Some("uid-1".into());
        cr
    }

    fn mounts(name: &str) -> Option<String> {
        (name == "default").then(|| "kubernetes".to_owned())
    }

    #[test]
    fn plan_sorts_names_and_digests_what_defines_the_certificate() {
        let p = plan(&cr(), mounts).unwrap();
        assert_eq!(p.options.alt_names, "a.example.com,b.example.com");
        assert_eq!(p.options.ttl, "3600s");
        assert_eq!(p.key.key_type, "rsa");
        assert_eq!(p.key.key_bits, 2048);

        let mut reordered = cr();
        reordered.spec.alt_names.reverse();
        reordered.spec.renew_before = Some("10m".into());
        reordered.spec.destination.labels = BTreeMap::from([("a".into(), "b".into())]);
        assert_eq!(plan(&reordered, mounts).unwrap().spec_digest, p.spec_digest);

        let mut more = cr();
        more.spec.alt_names.push("c.example.com".into());
        assert_ne!(plan(&more, mounts).unwrap().spec_digest, p.spec_digest);
        let mut sign = cr();
        sign.spec.mode = IssueMode::Sign;
        assert_ne!(plan(&sign, mounts).unwrap().spec_digest, p.spec_digest);
    }

    #[test]
    fn plan_refuses_what_cel_would() {
        let mut bad = cr();
        bad.spec.renew_before = Some("2h".into());
        assert!(plan(&bad, mounts).unwrap_err().contains("shorter than ttl"));
        let mut nameless = cr();
        nameless.spec.common_name = None;
        nameless.spec.alt_names.clear();
        assert!(
            plan(&nameless, mounts)
                .unwrap_err()
                .contains("needs a name")
        );
    }

    fn facts(lifetime_s: i64) -> CertFacts {
        let not_before: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        CertFacts {
            serial: "01".into(),
            not_before,
            not_after: not_before + SignedDuration::from_secs(lifetime_s),
        }
    }

    #[test]
    fn renewal_time_defaults_to_a_third_and_jitter_only_moves_it_earlier() {
        let f = facts(3000);
        assert_eq!(
            renew_at(&f, None, 0.0),
            f.not_after - SignedDuration::from_secs(1000)
        );
        let rb = Some(Duration::from_secs(600));
        assert_eq!(
            renew_at(&f, rb, 0.0),
            f.not_after - SignedDuration::from_secs(600)
        );
        assert_eq!(
            renew_at(&f, rb, 1.0),
            f.not_after - SignedDuration::from_secs(660)
        );
        // renewBefore as long as the whole lifetime falls back to a third.
        assert_eq!(
            renew_at(&f, Some(Duration::from_secs(4000)), 0.0),
            f.not_after - SignedDuration::from_secs(1000)
        );
        // renewBefore close to the lifetime: the window is a tenth of the time until the
        // renewal, which stays after the issue (it used to be before it: renewed at once, again
        // and again).
        let close = facts(7230);
        let at = renew_at(&close, Some(Duration::from_secs(7185)), 0.999);
        assert!(
            at >= close.not_before + SignedDuration::from_millis(40_500),
            "{at}"
        );
        assert!(at <= close.not_before + SignedDuration::from_secs(45));
        // The window is capped at five minutes.
        let long = facts(90 * 24 * 3600);
        let rb = Some(Duration::from_secs(30 * 24 * 3600));
        assert_eq!(
            renew_at(&long, rb, 1.0),
            long.not_after - SignedDuration::from_secs(30 * 24 * 3600 + 300)
        );
    }

    #[test]
    fn steps() {
        let f = facts(3000);
        let ok = Stored {
            facts: f.clone(),
            matches_spec: true,
        };
        let before = f.not_before + SignedDuration::from_secs(100);
        assert_eq!(
            next_step(None, None, 0.5, before),
            Step::Issue(IssueReason::Missing)
        );
        assert_eq!(
            next_step(Some(&ok), None, 0.0, before),
            Step::Keep(f.not_after - SignedDuration::from_secs(1000))
        );
        let due = f.not_after - SignedDuration::from_secs(1000);
        assert_eq!(
            next_step(Some(&ok), None, 0.0, due),
            Step::Issue(IssueReason::Renewal)
        );
        let changed = Stored {
            matches_spec: false,
            ..ok
        };
        assert_eq!(
            next_step(Some(&changed), None, 0.0, before),
            Step::Issue(IssueReason::SpecChanged)
        );
    }

    #[test]
    fn serials_are_printed_as_vault_does() {
        assert_eq!(vault_serial(&[0x00, 0xab, 0x01]), "ab:01");
        assert_eq!(vault_serial(&[0x1a, 0x00]), "1a:00");
        assert_eq!(vault_serial(&[0x00]), "00");
    }

    #[test]
    fn jitter_is_stable_and_in_range() {
        let j = jitter_of("uid-1");
        assert_eq!(j, jitter_of("uid-1"));
        assert!((0.0..1.0).contains(&j));
    }

    /// A self-signed CA, an intermediate signed by it, and a leaf signed by the intermediate.
    fn chain() -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(vec![]).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "root");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let int_key = KeyPair::generate().unwrap();
        let mut int = CertificateParams::new(vec![]).unwrap();
        int.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        int.distinguished_name
            .push(rcgen::DnType::CommonName, "intermediate");
        let ca_issuer = Issuer::new(ca, ca_key);
        let int_cert = int.signed_by(&int_key, &ca_issuer).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["web.example.com".into()]).unwrap();
        let int_issuer = Issuer::new(int, int_key);
        let leaf_cert = leaf.signed_by(&leaf_key, &int_issuer).unwrap();
        (ca_cert.pem(), int_cert.pem(), leaf_cert.pem())
    }

    #[test]
    fn tls_data_puts_intermediates_in_tls_crt_and_the_root_in_ca_crt() {
        let (root, int, leaf) = chain();
        let issued = IssuedCertificate {
            certificate: leaf.clone(),
            issuing_ca: int.clone(),
            ca_chain: vec![int.clone(), root.clone()],
            serial_number: "01".into(),
            private_key: None,
            expiration: 0,
        };
        let data = tls_data(&issued, "KEY");
        let crt = String::from_utf8(data[TLS_CRT].clone()).unwrap();
        assert_eq!(crt, format!("{}\n{}\n", leaf.trim(), int.trim()));
        assert_eq!(data[CA_CRT], format!("{}\n", root.trim()).into_bytes());
        assert_eq!(data[TLS_KEY], b"KEY\n".to_vec());
        // Without the root in the chain, ca.crt is the issuing CA.
        let no_root = IssuedCertificate {
            ca_chain: vec![int.clone()],
            ..issued
        };
        let data = tls_data(&no_root, "KEY");
        assert_eq!(data[CA_CRT], format!("{}\n", int.trim()).into_bytes());
        let facts = cert_facts(&data[TLS_CRT]).unwrap();
        assert!(facts.not_after > facts.not_before);
    }

    #[test]
    fn hand_edited_follow_up_counts_as_not_recorded() {
        let mut secret = Secret::default();
        secret.metadata.annotations = Some(BTreeMap::from([
            (
                SUPERSEDED_ANNOTATION.to_owned(),
                r#"[{"serialNumber":"zz; rm"},{"serialNumber":""}]"#.to_owned(),
            ),
            (RESTART_ANNOTATION.to_owned(), "not a stamp".to_owned()),
        ]));
        assert_eq!(follow_up_on_secret(&secret), FollowUp::default());
        secret.metadata.annotations = Some(BTreeMap::from([(
            SUPERSEDED_ANNOTATION.to_owned(),
            "{{{".to_owned(),
        )]));
        assert_eq!(follow_up_on_secret(&secret), FollowUp::default());
    }

    #[test]
    fn stored_needs_a_certificate_and_a_key_and_compares_the_digest() {
        let (_, _, leaf) = chain();
        let c = cr();
        let data = BTreeMap::from([
            (TLS_CRT.to_owned(), leaf.into_bytes()),
            (TLS_KEY.to_owned(), b"KEY".to_vec()),
        ]);
        let follow_up = FollowUp {
            superseded: vec![SupersededCertificate {
                serial_number: "3a:1f:00".into(),
                not_after: Some(Time(Timestamp::UNIX_EPOCH)),
                revoke_after: None,
            }],
            restart_for: Some("00ff00ff00ff00ff".into()),
            issued_at: Some(Timestamp::UNIX_EPOCH),
        };
        let secret = build_secret(&c, data.clone(), "d1", &follow_up);
        assert_eq!(
            follow_up_on_secret(&secret),
            follow_up,
            "the follow-up reads back"
        );
        assert!(owned_by(&secret, &c));
        assert!(metadata_current(&secret, &c));
        assert!(stored(&secret, "d1").unwrap().matches_spec);
        assert!(!stored(&secret, "d2").unwrap().matches_spec);
        let mut no_key = data;
        no_key.remove(TLS_KEY);
        assert_eq!(
            stored(&build_secret(&c, no_key, "d1", &FollowUp::default()), "d1"),
            None
        );
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    }
}
