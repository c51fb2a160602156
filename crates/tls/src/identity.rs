//! Who is on the other end of an mTLS connection: the names in the peer's leaf certificate.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use tonic::transport::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::error::TlsError;

/// The identity a certificate proves: its name and its DNS subject alternative names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's common name, else its first DNS SAN.
    pub name: String,
    /// All DNS SANs, in certificate order.
    pub dns_names: Vec<String>,
}

impl PeerIdentity {
    /// True if `name` is the certificate's name or one of its DNS SANs.
    pub fn is(&self, name: &str) -> bool {
        self.name == name || self.dns_names.iter().any(|dns| dns == name)
    }
}

/// Most certificates whose identity [`peer_identity`] remembers; it forgets them all when full.
const REMEMBERED_CERTIFICATES: usize = 2048;

/// The identities of the leaf certificates seen lately, by their exact DER bytes. A connection
/// presents the same certificate for each of its calls, and parsing it again for every call
/// took about 1.5 % of the master's CPU per search.
static REMEMBERED: LazyLock<Mutex<HashMap<Box<[u8]>, PeerIdentity>>> = LazyLock::new(Mutex::default);

/// The identity in the leaf (first) certificate of a peer's chain, as returned by
/// [`tonic::Request::peer_certs`].
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<PeerIdentity, TlsError> {
    let Some(leaf) = certs.first() else {
        return Err(TlsError::NoPeerCertificate);
    };
    let remembered = || REMEMBERED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(identity) = remembered().get(leaf.as_ref()) {
        return Ok(identity.clone());
    }
    let identity = parse_identity(leaf)?;
    let mut remembered = remembered();
    if remembered.len() >= REMEMBERED_CERTIFICATES {
        remembered.clear();
    }
    remembered.insert(leaf.as_ref().into(), identity.clone());
    Ok(identity)
}

/// The identity a leaf certificate names.
fn parse_identity(leaf: &CertificateDer<'_>) -> Result<PeerIdentity, TlsError> {
    let cert = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_rest, cert)) => cert,
        Err(err) => {
            return Err(TlsError::PeerCertParse { detail: err.to_string() });
        }
    };
    let (common_name, dns_names) = names_of(&cert);
    let Some(name) = common_name.or_else(|| dns_names.first().cloned()) else {
        return Err(TlsError::NoIdentity { what: "presented by the peer".to_owned() });
    };
    Ok(PeerIdentity { name, dns_names })
}

/// The identity of the client that sent `req`, if tonic terminated TLS for it and the client
/// presented a parseable certificate. Read it before `req.into_inner()`.
pub fn peer_identity_of<T>(req: &tonic::Request<T>) -> Option<PeerIdentity> {
    let certs = req.peer_certs()?;
    match peer_identity(&certs) {
        Ok(identity) => Some(identity),
        Err(err) => {
            tracing::debug!(error = %err, "peer certificate names no usable identity");
            None
        }
    }
}

/// The first common name (if any) and all DNS SANs of a certificate.
pub(crate) fn names_of(cert: &X509Certificate<'_>) -> (Option<String>, Vec<String>) {
    let common_name = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_owned);

    let mut dns_names = Vec::new();
    // A malformed SAN extension just contributes no names; the CN may still identify the peer.
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general_name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = general_name {
                dns_names.push((*dns).to_owned());
            }
        }
    }
    (common_name, dns_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_matches_name_and_dns_names_only() {
        let identity =
            PeerIdentity { name: "node-1".to_owned(), dns_names: vec!["node-1".to_owned(), "localhost".to_owned()] };
        assert!(identity.is("node-1"));
        assert!(identity.is("localhost"));
        assert!(!identity.is("node-2"));
        assert!(!identity.is(""));
    }

    #[test]
    fn empty_chain_is_an_error() {
        let err = peer_identity(&[]).expect_err("no certificate");
        assert!(matches!(err, TlsError::NoPeerCertificate));
    }

    #[test]
    fn each_certificate_gives_its_own_identity_however_often_it_is_read() {
        let issue = |name: &str, sans: &[&str]| {
            let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("params");
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let key = rcgen::KeyPair::generate().expect("key");
            params.self_signed(&key).expect("self-signed").der().clone()
        };
        let one = issue("node-1", &["node-1.example"]);
        let two = issue("node-2", &[]);
        for _ in 0..3 {
            let identity = peer_identity(std::slice::from_ref(&one)).expect("node-1");
            assert_eq!(
                (identity.name.as_str(), identity.dns_names.as_slice()),
                ("node-1", &["node-1.example".to_owned()][..])
            );
            assert_eq!(peer_identity(std::slice::from_ref(&two)).expect("node-2").name, "node-2");
        }
    }

    #[test]
    fn garbage_certificate_is_an_error() {
        let der = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0x00]);
        let err = peer_identity(&[der]).expect_err("not a certificate");
        assert!(matches!(err, TlsError::PeerCertParse { .. }), "{err:?}");
    }
}
