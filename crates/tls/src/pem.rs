//! Loading the three TLS files (CA, certificate, key) and validating them up front, so a bad
//! file is reported at startup with its path instead of as a handshake failure later.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;

use crate::error::{FileRole, TlsError};
use crate::identity::{PeerIdentity, names_of};

/// Where the TLS files of one party live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The mesh CA certificate(s), PEM; peers must present certificates it issued.
    pub ca: PathBuf,
    /// Our certificate (chain), PEM, leaf first.
    pub cert: PathBuf,
    /// The private key of our certificate, PEM.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads and validates all three files: each must exist and hold PEM of the right kind, the
    /// certificates must be within their validity period, the key must belong to the
    /// certificate, and the certificate must be issued by the CA.
    pub fn load(&self) -> Result<LoadedTls, TlsError> {
        let ca_pem = read(FileRole::Ca, &self.ca)?;
        let cert_pem = read(FileRole::Cert, &self.cert)?;
        let key_pem = read(FileRole::Key, &self.key)?;
        LoadedTls::validate(self.clone(), ca_pem, cert_pem, key_pem)
    }
}

/// Validated TLS material, ready to become tonic server and client configs.
pub struct LoadedTls {
    files: TlsFiles,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    identity: PeerIdentity,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for LoadedTls {
    // The key bytes are secret: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedTls")
            .field("files", &self.files)
            .field("identity", &self.identity)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl LoadedTls {
    /// The name in our own certificate: its CN, else its first DNS SAN.
    pub fn identity_name(&self) -> String {
        self.identity.name.clone()
    }

    /// The names in our own certificate (CN and DNS SANs).
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// When our certificate starts being valid.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// When our certificate stops being valid.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// How long our certificate stays valid from now; `None` once it has expired.
    pub fn expires_in(&self) -> Option<Duration> {
        self.not_after.duration_since(SystemTime::now()).ok()
    }

    /// Where our certificate stands against [`crate::EXPIRY_WARNING`] right now.
    pub fn expiry(&self) -> crate::Expiry {
        crate::Expiry::of(self.not_after, SystemTime::now())
    }

    /// The files this was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The CA file's PEM, as read.
    pub(crate) fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// Our certificate's PEM, as read.
    pub(crate) fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// Our key's PEM, as read.
    pub(crate) fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }

    /// True if both were read from identical file contents (a reload found nothing new).
    pub(crate) fn same_contents(&self, other: &LoadedTls) -> bool {
        self.ca_pem == other.ca_pem && self.cert_pem == other.cert_pem && self.key_pem == other.key_pem
    }

    fn validate(files: TlsFiles, ca_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Self, TlsError> {
        let now = ASN1Time::now();

        let ca_certs = certificates(FileRole::Ca, &files.ca, &ca_pem)?;
        if ca_certs.is_empty() {
            return Err(TlsError::NoCaCertificate { path: files.ca.clone() });
        }
        check_ca_validity(&files.ca, &ca_certs, now)?;

        let chain = certificates(FileRole::Cert, &files.cert, &cert_pem)?;
        let Some(leaf_der) = chain.first() else {
            return Err(TlsError::NoPem { role: FileRole::Cert, path: files.cert.clone(), label: "CERTIFICATE" });
        };
        let leaf = parse_cert(FileRole::Cert, &files.cert, leaf_der)?;
        check_validity(FileRole::Cert, &files.cert, &leaf, now)?;

        let key = private_key(&files.key, &key_pem)?;
        check_key_matches(&files, &leaf, &key)?;
        check_issued_by(&files, &ca_certs, &chain)?;

        let (common_name, dns_names) = names_of(&leaf);
        let Some(name) = common_name.or_else(|| dns_names.first().cloned()) else {
            return Err(TlsError::NoIdentity { what: files.cert.display().to_string() });
        };
        let validity = leaf.validity();
        let not_before = system_time(validity.not_before);
        let not_after = system_time(validity.not_after);
        tracing::debug!(
            tls.identity = %name,
            tls.cert = %files.cert.display(),
            "tls files loaded"
        );
        Ok(Self { files, ca_pem, cert_pem, key_pem, identity: PeerIdentity { name, dns_names }, not_before, not_after })
    }
}

fn read(role: FileRole, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { role, path: path.to_path_buf(), source })
}

/// All PEM sections of a file, in order.
fn sections(role: FileRole, path: &Path, pem: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsError> {
    let mut found = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let section =
            section.map_err(|err| TlsError::BadPem { role, path: path.to_path_buf(), detail: err.to_string() })?;
        found.push(section);
    }
    Ok(found)
}

/// The CERTIFICATE sections of a file, in order; empty if it has none.
pub(crate) fn certificates(role: FileRole, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut certs = Vec::new();
    for (kind, der) in sections(role, path, pem)? {
        if kind == SectionKind::Certificate {
            certs.push(CertificateDer::from(der));
        }
    }
    Ok(certs)
}

/// The first private key in the key file, as DER.
pub(crate) fn private_key_der(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    for (kind, der) in sections(FileRole::Key, path, pem)? {
        if let Some(key) = PrivateKeyDer::from_pem(kind, der) {
            return Ok(key);
        }
    }
    Err(TlsError::NoPem { role: FileRole::Key, path: path.to_path_buf(), label: "PRIVATE KEY" })
}

/// The first private key in the key file, checked to be usable by rustls.
fn private_key(path: &Path, pem: &[u8]) -> Result<Arc<dyn rustls::sign::SigningKey>, TlsError> {
    let key_der = private_key_der(path, pem)?;
    rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|err| TlsError::KeyParse { path: path.to_path_buf(), detail: err.to_string() })
}

fn parse_cert<'a>(role: FileRole, path: &Path, der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, TlsError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_rest, cert)) => Ok(cert),
        Err(err) => Err(TlsError::CertParse { role, path: path.to_path_buf(), detail: err.to_string() }),
    }
}

fn check_validity(role: FileRole, path: &Path, cert: &X509Certificate<'_>, now: ASN1Time) -> Result<(), TlsError> {
    let validity = cert.validity();
    if now > validity.not_after {
        return Err(TlsError::Expired {
            role,
            path: path.to_path_buf(),
            not_before: format_time(validity.not_before),
            not_after: format_time(validity.not_after),
            now: format_time(now),
        });
    }
    if now < validity.not_before {
        return Err(TlsError::NotYetValid {
            role,
            path: path.to_path_buf(),
            not_before: format_time(validity.not_before),
            not_after: format_time(validity.not_after),
            now: format_time(now),
        });
    }
    Ok(())
}

/// A CA file may hold several CAs during a rotation; it is usable while one of them is valid.
fn check_ca_validity(path: &Path, ca_certs: &[CertificateDer<'static>], now: ASN1Time) -> Result<(), TlsError> {
    let mut first_error = None;
    for der in ca_certs {
        let cert = parse_cert(FileRole::Ca, path, der)?;
        match check_validity(FileRole::Ca, path, &cert, now) {
            Ok(()) => return Ok(()),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

fn check_key_matches(
    files: &TlsFiles,
    leaf: &X509Certificate<'_>,
    key: &Arc<dyn rustls::sign::SigningKey>,
) -> Result<(), TlsError> {
    let Some(key_spki) = key.public_key() else {
        // Only keys from outside rustls' own providers lack this; the handshake will tell.
        tracing::debug!(tls.key = %files.key.display(), "cannot derive public key, match not checked");
        return Ok(());
    };
    if key_spki.as_ref() != leaf.tbs_certificate.subject_pki.raw {
        return Err(TlsError::KeyMismatch { key: files.key.clone(), cert: files.cert.clone() });
    }
    Ok(())
}

/// Runs the same verification a peer's server will run on our certificate, so "not issued by
/// this CA" shows up at startup rather than as a refused handshake.
fn check_issued_by(
    files: &TlsFiles,
    ca_certs: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
) -> Result<(), TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in ca_certs {
        roots.add(ca.clone()).map_err(|err| TlsError::CertParse {
            role: FileRole::Ca,
            path: files.ca.clone(),
            detail: err.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|err| TlsError::CertParse { role: FileRole::Ca, path: files.ca.clone(), detail: err.to_string() })?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Ok(());
    };
    let Err(err) = verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) else {
        return Ok(());
    };
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            Err(TlsError::NotIssuedByCa { cert: files.cert.clone(), ca: files.ca.clone(), detail: err.to_string() })
        }
        other => {
            // E.g. a certificate without the clientAuth usage: it can still serve, so this is
            // the peer's call, not a startup failure.
            tracing::warn!(
                tls.cert = %files.cert.display(),
                error = %other,
                "our certificate would not be accepted as a client certificate"
            );
            Ok(())
        }
    }
}

/// `2025-01-31 12:00:00 UTC`: unambiguous, sortable, and what people paste into tickets.
pub(crate) fn format_time(time: ASN1Time) -> String {
    let t = time.to_datetime();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// [`format_time`] for a `SystemTime`; times outside X.509's range print as seconds since 1970.
pub(crate) fn format_system_time(time: SystemTime) -> String {
    let secs = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |secs| -secs),
    };
    match ASN1Time::from_timestamp(secs) {
        Ok(asn1) => format_time(asn1),
        Err(_) => format!("{secs} s after 1970-01-01 UTC"),
    }
}

fn system_time(time: ASN1Time) -> SystemTime {
    let secs = time.timestamp();
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 { UNIX_EPOCH + magnitude } else { UNIX_EPOCH - magnitude }
}
