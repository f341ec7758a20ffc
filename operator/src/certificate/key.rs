//! Private keys and CSRs for `mode: sign`: the key is generated here and only the CSR goes to
//! Vault. ECDSA and Ed25519 keys come from ring (through rcgen); ring cannot generate RSA keys, so
//! those come from the RustCrypto `rsa` crate and are then signed with by ring like the others.

use crds::v1alpha1::{KeyAlgorithm, PrivateKey};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

use super::desired::Names;

/// A private key; `Debug` never shows it.
pub struct Key {
    pair: KeyPair,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    /// A new key with the requested settings. RSA generation is CPU-heavy: call this off the
    /// async runtime (`spawn_blocking`).
    pub fn generate(settings: &PrivateKey) -> Result<Key, String> {
        let bits = settings.bits();
        let pair = match settings.algorithm {
            KeyAlgorithm::Ecdsa => {
                let alg = match bits {
                    384 => &rcgen::PKCS_ECDSA_P384_SHA384,
                    _ => &rcgen::PKCS_ECDSA_P256_SHA256,
                };
                KeyPair::generate_for(alg).map_err(|e| e.to_string())?
            }
            KeyAlgorithm::Ed25519 => {
                KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| e.to_string())?
            }
            KeyAlgorithm::Rsa => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits as usize)
                    .map_err(|e| format!("RSA key generation failed: {e}"))?;
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| format!("RSA key encoding failed: {e}"))?;
                let der = rustls_der(der.as_bytes());
                KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
                    .map_err(|e| e.to_string())?
            }
        };
        Ok(Key { pair })
    }

    /// A key read back from a Secret's `tls.key`, if it is a PKCS#8 key of the requested kind.
    pub fn from_pem(pem: &str, settings: &PrivateKey) -> Option<Key> {
        let pair = KeyPair::from_pem(pem).ok()?;
        let algorithm = pair.algorithm();
        let matches = match settings.algorithm {
            KeyAlgorithm::Ed25519 => algorithm == &rcgen::PKCS_ED25519,
            KeyAlgorithm::Ecdsa if settings.bits() == 384 => {
                algorithm == &rcgen::PKCS_ECDSA_P384_SHA384
            }
            KeyAlgorithm::Ecdsa => algorithm == &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Rsa => {
                algorithm == &rcgen::PKCS_RSA_SHA256
                    // The modulus length in bytes, from the SubjectPublicKeyInfo.
                    && rsa_bits(&rcgen::PublicKeyData::subject_public_key_info(&pair)) == Some(settings.bits())
            }
        };
        matches.then_some(Key { pair })
    }

    /// PKCS#8 PEM, for `tls.key`.
    pub fn pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// A PEM CSR for `names`, signed with this key.
    pub fn csr(&self, names: &Names) -> Result<String, String> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = &names.common_name {
            dn.push(DnType::CommonName, cn.as_str());
        }
        params.distinguished_name = dn;
        let ia5 = |s: &str| {
            rcgen::string::Ia5String::try_from(s.to_owned())
                .map_err(|_| format!("{s:?} is not an ASCII name"))
        };
        for name in &names.alt_names {
            params.subject_alt_names.push(if name.contains('@') {
                SanType::Rfc822Name(ia5(name)?)
            } else {
                SanType::DnsName(ia5(name)?)
            });
        }
        for ip in &names.ip_sans {
            let ip = ip
                .parse()
                .map_err(|_| format!("{ip:?} is not an IP address"))?;
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        for uri in &names.uri_sans {
            params.subject_alt_names.push(SanType::URI(ia5(uri)?));
        }
        params
            .serialize_request(&self.pair)
            .and_then(|csr| csr.pem())
            .map_err(|e| format!("failed to build the CSR: {e}"))
    }
}

fn rustls_der(der: &[u8]) -> rustls::pki_types::PrivatePkcs8KeyDer<'static> {
    rustls::pki_types::PrivatePkcs8KeyDer::from(der.to_vec())
}

/// Bits of an RSA public key given as SubjectPublicKeyInfo DER.
fn rsa_bits(spki: &[u8]) -> Option<u32> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).ok()?;
    match info.parsed().ok()? {
        PublicKey::RSA(rsa) => Some(rsa.key_size() as u32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::v1alpha1::RotationPolicy;

    fn settings(algorithm: KeyAlgorithm, size: Option<i32>) -> PrivateKey {
        PrivateKey {
            algorithm,
            size,
            rotation_policy: RotationPolicy::Never,
        }
    }

    fn names() -> Names {
        Names {
            common_name: Some("api.example.com".into()),
            alt_names: vec!["api.example.com".into(), "ops@example.com".into()],
            ip_sans: vec!["10.0.0.1".into(), "::1".into()],
            uri_sans: vec!["spiffe://cluster.local/ns/a/sa/b".into()],
        }
    }

    #[test]
    fn every_algorithm_makes_a_csr_and_reads_back() {
        for s in [
            settings(KeyAlgorithm::Ecdsa, None),
            settings(KeyAlgorithm::Ecdsa, Some(384)),
            settings(KeyAlgorithm::Ed25519, None),
            settings(KeyAlgorithm::Rsa, None),
        ] {
            let key = Key::generate(&s).unwrap();
            let csr = key.csr(&names()).unwrap();
            assert!(
                csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
                "{csr}"
            );
            let pem = key.pem();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            assert!(Key::from_pem(&pem, &s).is_some(), "{s:?} reads back");
            assert!(!format!("{key:?}").contains("PRIVATE"));
        }
    }

    #[test]
    fn a_stored_key_of_another_kind_is_not_reused() {
        let ec = Key::generate(&settings(KeyAlgorithm::Ecdsa, None)).unwrap();
        assert!(Key::from_pem(&ec.pem(), &settings(KeyAlgorithm::Ecdsa, Some(384))).is_none());
        assert!(Key::from_pem(&ec.pem(), &settings(KeyAlgorithm::Ed25519, None)).is_none());
        let rsa = Key::generate(&settings(KeyAlgorithm::Rsa, None)).unwrap();
        assert!(Key::from_pem(&rsa.pem(), &settings(KeyAlgorithm::Rsa, Some(3072))).is_none());
        assert!(Key::from_pem("garbage", &settings(KeyAlgorithm::Rsa, None)).is_none());
    }

    #[test]
    fn a_bad_ip_is_an_error() {
        let key = Key::generate(&settings(KeyAlgorithm::Ecdsa, None)).unwrap();
        let mut n = names();
        n.ip_sans = vec!["10.0.0.300".into()];
        assert!(key.csr(&n).unwrap_err().contains("not an IP"));
    }
}
