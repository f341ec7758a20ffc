//! A fake Vault behind the operator's `VaultApi`: it issues leases and certificates with unique
//! ids, keeps which of them are still live, serves KV data, and fails the next call of a verb
//! when a test asks it to. Every call is a step of the shared count, so "the operator stops"
//! can fall between any two Vault calls too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use vault::{
    AuthToken, CertificateOptions, IssuedCertificate, KeyRequest, KvMetadata, KvVersion, Lease,
    LeasedSecret, Renewal, SecretData, TokenInfo, VaultError, VaultToken,
};
use vaultkeeper_operator::vault_api::VaultApi;

use super::steps::Steps;

/// Lifetime of every lease the fake issues: long enough that no test renews by the clock.
pub const LEASE_TTL: Duration = Duration::from_secs(3600);

/// A lease or certificate the fake issued, with the steps at which it was issued and revoked.
#[derive(Clone, Debug)]
pub struct Issued {
    pub id: String,
    pub issued_at: u64,
    pub revoked_at: Option<u64>,
}

#[derive(Default)]
struct State {
    next: u64,
    calls: Vec<String>,
    leases: Vec<Issued>,
    certificates: Vec<Issued>,
    tokens: BTreeMap<String, String>,
    /// Verb → statuses of the next calls to fail.
    faults: BTreeMap<&'static str, Vec<u16>>,
    /// `mount/path` → versions (1-based) of KV v2 data.
    kv: BTreeMap<String, Vec<BTreeMap<String, String>>>,
    /// How far before the issue a certificate's notBefore lies (a PKI role's
    /// `not_before_duration`, 30s unless set).
    backdate: Option<Duration>,
    /// Leases past their end whose revocation Vault has not run yet: still listed, looked up with
    /// no time left, not renewable.
    ending: Vec<String>,
}

pub struct FakeVault {
    steps: Arc<Steps>,
    state: Mutex<State>,
}

impl FakeVault {
    pub fn new(steps: Arc<Steps>) -> Self {
        Self {
            steps,
            state: Mutex::new(State::default()),
        }
    }

    /// The next call of `verb` (`issue_leased`, `revoke_lease`, `pki_issue`, `kv2_read`, …) fails
    /// with `status` (5xx: Vault unavailable).
    pub fn fail_next(&self, verb: &'static str, status: u16) {
        self.lock().faults.entry(verb).or_default().push(status);
    }

    /// Certificates issued from now on start `by` before their issue (Vault's default is 30s;
    /// roles set more to allow for clock skew).
    pub fn backdate_certificates(&self, by: Duration) {
        self.lock().backdate = Some(by);
    }

    /// `lease_id` reaches its end; Vault's revocation of it is still queued.
    pub fn end_lease(&self, lease_id: &str) {
        self.lock().ending.push(lease_id.to_owned());
    }

    pub fn leases(&self) -> Vec<Issued> {
        self.lock().leases.clone()
    }

    pub fn lease(&self, id: &str) -> Issued {
        self.leases()
            .into_iter()
            .find(|l| l.id == id)
            .unwrap_or_else(|| panic!("lease {id} was never issued"))
    }

    /// Leases issued and not revoked.
    pub fn live_leases(&self) -> Vec<String> {
        live(&self.lock().leases)
    }

    pub fn certificates(&self) -> Vec<Issued> {
        self.lock().certificates.clone()
    }

    pub fn certificate(&self, serial: &str) -> Issued {
        self.certificates()
            .into_iter()
            .find(|c| c.id == serial)
            .unwrap_or_else(|| panic!("certificate {serial} was never issued"))
    }

    /// Certificates issued and not revoked.
    pub fn live_certificates(&self) -> Vec<String> {
        live(&self.lock().certificates)
    }

    /// How many calls of `verb` were made (failed ones included).
    pub fn calls(&self, verb: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.split(' ').next() == Some(verb))
            .count()
    }

    /// Writes a new version of KV v2 data at `mount/path`.
    pub fn kv_put(&self, mount: &str, path: &str, data: &[(&str, &str)]) {
        let data = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.lock()
            .kv
            .entry(format!("{mount}/{path}"))
            .or_default()
            .push(data);
    }

    /// The current version of the KV v2 data at `mount/path` (0 when there is none).
    pub fn kv_version(&self, mount: &str, path: &str) -> i64 {
        self.lock()
            .kv
            .get(&format!("{mount}/{path}"))
            .map_or(0, |v| v.len() as i64)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("vault lock")
    }

    /// Counts the call as a step. A stopped operator never gets an answer; a scripted fault
    /// answers with its status.
    async fn enter(&self, verb: &'static str, detail: &str) -> Result<u64, VaultError> {
        let Some(step) = self.steps.enter(format!("vault {verb} {detail}")) else {
            return std::future::pending().await;
        };
        let mut state = self.lock();
        state.calls.push(format!("{verb} {detail}"));
        let fault = state.faults.get_mut(verb).and_then(|f| {
            if f.is_empty() {
                None
            } else {
                Some(f.remove(0))
            }
        });
        match fault {
            Some(status) => Err(VaultError::Unavailable {
                operation: verb,
                status,
                message: "injected by the test".to_owned(),
            }),
            None => Ok(step),
        }
    }

    fn next_number(&self) -> u64 {
        let mut state = self.lock();
        state.next += 1;
        state.next
    }
}

fn live(issued: &[Issued]) -> Vec<String> {
    issued
        .iter()
        .filter(|i| i.revoked_at.is_none())
        .map(|i| i.id.clone())
        .collect()
}

#[async_trait::async_trait]
impl VaultApi for FakeVault {
    async fn health(&self) -> Result<(), VaultError> {
        self.enter("health", "").await.map(|_| ())
    }

    async fn login_kubernetes(
        &self,
        mount: &str,
        role: &str,
        jwt: &str,
    ) -> Result<AuthToken, VaultError> {
        self.enter("login_kubernetes", &format!("{mount} {role}"))
            .await?;
        assert!(jwt.starts_with("jwt-"), "login with a TokenRequest token");
        let n = self.next_number();
        let token = format!("tok-{n}");
        self.lock().tokens.insert(token.clone(), format!("acc-{n}"));
        Ok(AuthToken {
            token: VaultToken::new(token),
            ttl: Duration::from_secs(3600),
            renewable: true,
        })
    }

    async fn renew_self(
        &self,
        token: &VaultToken,
        _increment: Option<Duration>,
    ) -> Result<AuthToken, VaultError> {
        self.enter("renew_self", "").await?;
        Ok(AuthToken {
            token: token.clone(),
            ttl: Duration::from_secs(3600),
            renewable: true,
        })
    }

    async fn lookup_self(&self, token: &VaultToken) -> Result<TokenInfo, VaultError> {
        self.enter("lookup_self", "").await?;
        let accessor = self.lock().tokens.get(token.expose()).cloned().ok_or(
            VaultError::PermissionDenied {
                operation: "lookup_self",
                path: "auth/token/lookup-self".into(),
            },
        )?;
        Ok(TokenInfo {
            ttl: Duration::from_secs(3600),
            renewable: true,
            period: Duration::ZERO,
            explicit_max_ttl: Duration::ZERO,
            accessor,
        })
    }

    async fn kv2_metadata(
        &self,
        _token: &VaultToken,
        mount: &str,
        path: &str,
    ) -> Result<KvMetadata, VaultError> {
        self.enter("kv2_metadata", &format!("{mount}/{path}"))
            .await?;
        let versions = self
            .lock()
            .kv
            .get(&format!("{mount}/{path}"))
            .map_or(0, Vec::len);
        if versions == 0 {
            return Err(VaultError::NotFound {
                operation: "kv2_metadata",
                path: format!("{mount}/metadata/{path}"),
            });
        }
        let meta: serde_json::Map<String, Value> = (1..=versions)
            .map(|v| {
                (
                    v.to_string(),
                    json!({"deletion_time": "", "destroyed": false}),
                )
            })
            .collect();
        Ok(
            serde_json::from_value(json!({"current_version": versions, "versions": meta}))
                .expect("KV metadata"),
        )
    }

    async fn kv2_read(
        &self,
        _token: &VaultToken,
        mount: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<KvVersion, VaultError> {
        self.enter("kv2_read", &format!("{mount}/{path} {version:?}"))
            .await?;
        let state = self.lock();
        let versions = state.kv.get(&format!("{mount}/{path}"));
        let wanted = version.unwrap_or(versions.map_or(0, |v| v.len() as i64));
        let data = versions
            .and_then(|v| v.get(usize::try_from(wanted - 1).ok()?))
            .ok_or(VaultError::NotFound {
                operation: "kv2_read",
                path: format!("{mount}/data/{path}"),
            })?;
        Ok(KvVersion {
            version: wanted,
            data: SecretData(
                data.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        })
    }

    async fn kv1_read(
        &self,
        _token: &VaultToken,
        mount: &str,
        path: &str,
    ) -> Result<SecretData, VaultError> {
        self.enter("kv1_read", &format!("{mount}/{path}")).await?;
        Err(VaultError::NotFound {
            operation: "kv1_read",
            path: format!("{mount}/{path}"),
        })
    }

    async fn issue_leased(
        &self,
        _token: &VaultToken,
        path: &str,
        _post: Option<&Value>,
    ) -> Result<LeasedSecret, VaultError> {
        let step = self.enter("issue_leased", path).await?;
        let n = self.next_number();
        let id = format!("{path}/L{n:04}");
        self.lock().leases.push(Issued {
            id: id.clone(),
            issued_at: step,
            revoked_at: None,
        });
        Ok(LeasedSecret {
            lease: Lease {
                id,
                duration: LEASE_TTL,
                renewable: true,
            },
            data: SecretData(BTreeMap::from([
                ("username".to_owned(), Value::String(format!("u-{n}"))),
                ("password".to_owned(), Value::String(format!("p-{n}"))),
            ])),
        })
    }

    async fn renew_lease(
        &self,
        _token: &VaultToken,
        lease_id: &str,
        _increment: Duration,
    ) -> Result<Renewal, VaultError> {
        self.enter("renew_lease", lease_id).await?;
        let known = self
            .lock()
            .leases
            .iter()
            .any(|l| l.id == lease_id && l.revoked_at.is_none());
        if !known || self.lock().ending.iter().any(|id| id == lease_id) {
            return Err(VaultError::Rejected {
                operation: "renew_lease",
                path: "sys/leases/renew".into(),
                status: 400,
                message: "lease not found or lease is not renewable".into(),
            });
        }
        Ok(Renewal {
            lease: Lease {
                id: lease_id.to_owned(),
                duration: LEASE_TTL,
                renewable: true,
            },
            capped: false,
        })
    }

    async fn revoke_lease(&self, _token: &VaultToken, lease_id: &str) -> Result<(), VaultError> {
        let step = self.enter("revoke_lease", lease_id).await?;
        let mut state = self.lock();
        if let Some(lease) = state.leases.iter_mut().find(|l| l.id == lease_id) {
            lease.revoked_at.get_or_insert(step);
        }
        Ok(())
    }

    async fn lookup_lease(
        &self,
        _token: &VaultToken,
        lease_id: &str,
    ) -> Result<Option<Duration>, VaultError> {
        self.enter("lookup_lease", lease_id).await?;
        let known = self
            .lock()
            .leases
            .iter()
            .any(|l| l.id == lease_id && l.revoked_at.is_none());
        let ending = self.lock().ending.iter().any(|id| id == lease_id);
        Ok(known.then_some(if ending { Duration::ZERO } else { LEASE_TTL }))
    }

    async fn pki_issue(
        &self,
        _token: &VaultToken,
        mount: &str,
        role: &str,
        options: &CertificateOptions,
        _key: &KeyRequest,
    ) -> Result<IssuedCertificate, VaultError> {
        let step = self.enter("pki_issue", &format!("{mount}/{role}")).await?;
        let n = self.next_number();
        let backdate = self.lock().backdate.unwrap_or(Duration::from_secs(30));
        let (certificate, key) = certificate(n, &options.common_name, backdate);
        let serial = vaultkeeper_operator::certificate::desired::cert_facts(certificate.as_bytes())
            .expect("rcgen makes a readable certificate")
            .serial;
        self.lock().certificates.push(Issued {
            id: serial.clone(),
            issued_at: step,
            revoked_at: None,
        });
        Ok(IssuedCertificate {
            certificate,
            issuing_ca: String::new(),
            ca_chain: Vec::new(),
            serial_number: serial,
            private_key: Some(key),
            expiration: 0,
        })
    }

    async fn pki_sign(
        &self,
        _token: &VaultToken,
        mount: &str,
        role: &str,
        _options: &CertificateOptions,
        _csr_pem: &str,
    ) -> Result<IssuedCertificate, VaultError> {
        self.enter("pki_sign", &format!("{mount}/{role}")).await?;
        Err(VaultError::Rejected {
            operation: "pki_sign",
            path: format!("{mount}/sign/{role}"),
            status: 400,
            message: "the fake signs no CSRs".into(),
        })
    }

    async fn pki_revoke(
        &self,
        _token: &VaultToken,
        mount: &str,
        serial: &str,
    ) -> Result<(), VaultError> {
        let step = self
            .enter("pki_revoke", &format!("{mount} {serial}"))
            .await?;
        let mut state = self.lock();
        match state.certificates.iter_mut().find(|c| c.id == serial) {
            Some(cert) => {
                cert.revoked_at.get_or_insert(step);
                Ok(())
            }
            None => Err(VaultError::Rejected {
                operation: "pki_revoke",
                path: format!("{mount}/revoke"),
                status: 400,
                message: format!("certificate with serial {serial} not found"),
            }),
        }
    }
}

/// A self-signed certificate with serial `n`, valid from `backdate` ago for 30 days (so renewal
/// never falls due in a test), and its key, PEM.
fn certificate(n: u64, common_name: &str, backdate: Duration) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(vec![common_name.to_owned()]).expect("certificate params");
    params.serial_number = Some(rcgen::SerialNumber::from(n));
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970");
    params.not_before = now - backdate;
    params.not_after = now + Duration::from_secs(30 * 24 * 3600);
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = params.self_signed(&key).expect("a certificate");
    (cert.pem(), key.serialize_pem())
}
