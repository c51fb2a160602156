//! A development CA made with rcgen: `init_ca` writes `ca.pem`/`ca.key`, `issue` writes a leaf
//! certificate usable as both TLS server and TLS client (every mesh party is both).
//!
//! Not for production PKI: keys are written unencrypted (mode 0600) and there is no revocation.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use x509_parser::time::ASN1Time;

use crate::error::TlsError;

/// The common name of every development CA.
pub const CA_COMMON_NAME: &str = "ragmesh development CA";
/// How long a development CA is valid: 10 years.
pub const CA_VALIDITY_DAYS: u32 = 3653;
/// How long an issued certificate is valid unless asked otherwise: 1 year.
pub const DEFAULT_LEAF_DAYS: u32 = 365;
/// The CA certificate's file name inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// The names every issued certificate holds besides its own, so local tools and tests can reach
/// any party by loopback.
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Backdating `not_before` tolerates small clock differences between machines.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

const SECONDS_PER_DAY: u64 = 24 * 60 * 60;

/// Where `init_ca` wrote the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    /// `dir/ca.pem`: distribute it to every party (`--ca`).
    pub cert: PathBuf,
    /// `dir/ca.key`: keep it where certificates are issued, nowhere else.
    pub key: PathBuf,
}

/// Where `issue` wrote a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedPaths {
    /// `out_dir/<name>.pem` (`--cert`).
    pub cert: PathBuf,
    /// `out_dir/<name>.key`, mode 0600 (`--key`).
    pub key: PathBuf,
}

impl IssuedPaths {
    /// The three files a party loads, given the CA certificate's path.
    pub fn tls_files(&self, ca: impl Into<PathBuf>) -> crate::TlsFiles {
        crate::TlsFiles { ca: ca.into(), cert: self.cert.clone(), key: self.key.clone() }
    }
}

/// A certificate and its private key, PEM encoded, not yet written anywhere.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM. Secret.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert").field("cert_pem", &self.cert_pem).field("key_pem", &"[secret]").finish()
    }
}

impl IssuedCert {
    /// Writes `out_dir/<name>.pem` and `out_dir/<name>.key` (mode 0600), replacing earlier ones
    /// and creating `out_dir` if needed.
    pub fn write(&self, out_dir: &Path, name: &str) -> Result<IssuedPaths, TlsError> {
        create_dir(out_dir)?;
        let paths = IssuedPaths { cert: out_dir.join(format!("{name}.pem")), key: out_dir.join(format!("{name}.key")) };
        write_file(&paths.cert, self.cert_pem.as_bytes(), false)?;
        write_file(&paths.key, self.key_pem.as_bytes(), true)?;
        Ok(paths)
    }
}

/// A CA held in memory: what `init_ca` writes and `issue` reads back. Tests use it directly to
/// make throwaway CAs (two of them for "signed by the wrong CA" cases).
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa").field("issuer", &self.issuer).field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA with a fresh P-256 key, CN "ragmesh development CA", valid for 10 years.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate()
            .map_err(|source| TlsError::Generate { action: "generate the CA key".to_owned(), source })?;

        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, CA_COMMON_NAME);
        subject.push(DnType::OrganizationName, "ragmesh");
        params.distinguished_name = subject;
        // Path length 0: this CA signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, CA_VALIDITY_DAYS);

        let cert = params
            .self_signed(&key)
            .map_err(|source| TlsError::Generate { action: "sign the CA certificate".to_owned(), source })?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self { issuer: Issuer::new(params, key), cert_pem, key_pem })
    }

    /// Reads `dir/ca.pem` and `dir/ca.key`, checking that the key belongs to the certificate.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_ca_file(crate::FileRole::Ca, &cert_path)?;
        let key_pem = read_ca_file(crate::FileRole::CaKey, &key_path)?;

        let key = KeyPair::from_pem(&key_pem)
            .map_err(|source| TlsError::Generate { action: format!("parse CA key {}", key_path.display()), source })?;
        let cert_der = match CertificateDer::from_pem_slice(cert_pem.as_bytes()) {
            Ok(der) => der,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(TlsError::NoCaCertificate { path: cert_path });
            }
            Err(err) => {
                return Err(TlsError::BadPem { role: crate::FileRole::Ca, path: cert_path, detail: err.to_string() });
            }
        };
        let spki_matches = match x509_parser::parse_x509_certificate(&cert_der) {
            Ok((_rest, cert)) => cert.tbs_certificate.subject_pki.raw == key.subject_public_key_info(),
            Err(err) => {
                return Err(TlsError::CertParse {
                    role: crate::FileRole::Ca,
                    path: cert_path,
                    detail: err.to_string(),
                });
            }
        };
        if !spki_matches {
            return Err(TlsError::CaKeyMismatch { key: key_path, cert: cert_path });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|source| TlsError::Generate { action: format!("use {} as a CA", cert_path.display()), source })?;
        Ok(Self { issuer, cert_pem, key_pem })
    }

    /// The CA certificate, PEM: what every party trusts (`ca.pem`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM. Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `dir/ca.pem` and `dir/ca.key` (mode 0600), creating `dir` if needed. Refuses to
    /// replace an existing CA unless `force`: every certificate it issued would stop working.
    pub fn write(&self, dir: &Path, force: bool) -> Result<CaPaths, TlsError> {
        let paths = CaPaths { cert: dir.join(CA_CERT_FILE), key: dir.join(CA_KEY_FILE) };
        if !force {
            for existing in [&paths.cert, &paths.key] {
                if existing.exists() {
                    return Err(TlsError::CaExists { path: existing.clone() });
                }
            }
        }
        create_dir(dir)?;
        write_file(&paths.key, self.key_pem.as_bytes(), true)?;
        write_file(&paths.cert, self.cert_pem.as_bytes(), false)?;
        Ok(paths)
    }

    /// A certificate for `name` valid for `days`: CN = name; SANs = name, localhost, 127.0.0.1,
    /// ::1 and `extra_hosts` (IP strings become IP SANs, others DNS SANs); usable as TLS server
    /// and TLS client.
    pub fn issue(&self, name: &str, extra_hosts: &[String], days: u32) -> Result<IssuedCert, TlsError> {
        validate_name(name)?;
        if days == 0 {
            return Err(TlsError::InvalidDays { days });
        }
        for host in extra_hosts {
            validate_host(host)?;
        }

        let mut hosts: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        let all_hosts = std::iter::once(name).chain(LOOPBACK_HOSTS).chain(extra_hosts.iter().map(String::as_str));
        for host in all_hosts {
            if seen.insert(host) {
                hosts.push(host.to_owned());
            }
        }

        // CertificateParams::new makes IP SANs from IP strings and DNS SANs from the rest.
        let mut params = CertificateParams::new(hosts)
            .map_err(|source| TlsError::Generate { action: format!("build the certificate for {name}"), source })?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, days);
        self.sign(params)
    }

    /// Signs arbitrary `params` with a fresh key: for certificates `issue` will not make, such
    /// as already-expired ones in tests. The authority key identifier is always set.
    pub fn sign(&self, mut params: CertificateParams) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate()
            .map_err(|source| TlsError::Generate { action: "generate a certificate key".to_owned(), source })?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| TlsError::Generate { action: "sign the certificate".to_owned(), source })?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Creates a development CA in `dir` (`ca.pem`, `ca.key` mode 0600). Refuses to replace an
/// existing CA unless `force`.
pub fn init_ca(dir: &Path, force: bool) -> Result<CaPaths, TlsError> {
    let paths = DevCa::generate()?.write(dir, force)?;
    tracing::info!(ca.cert = %paths.cert.display(), "development CA created");
    Ok(paths)
}

/// Issues a 1-year certificate for `name` from the CA in `ca_dir`, writing
/// `out_dir/<name>.pem` and `out_dir/<name>.key`. See [`DevCa::issue`] for its contents.
pub fn issue(ca_dir: &Path, name: &str, extra_hosts: &[String], out_dir: &Path) -> Result<IssuedPaths, TlsError> {
    issue_for_days(ca_dir, name, extra_hosts, out_dir, DEFAULT_LEAF_DAYS)
}

/// [`issue`] with a validity of `days` instead of one year.
pub fn issue_for_days(
    ca_dir: &Path,
    name: &str,
    extra_hosts: &[String],
    out_dir: &Path,
    days: u32,
) -> Result<IssuedPaths, TlsError> {
    // Check the name before touching the CA, so a typo is reported as such.
    validate_name(name)?;
    let ca = DevCa::load(ca_dir)?;
    issue_with_ca(&ca, name, extra_hosts, out_dir, days)
}

/// [`issue_for_days`] with a CA already in memory.
pub fn issue_with_ca(
    ca: &DevCa,
    name: &str,
    extra_hosts: &[String],
    out_dir: &Path,
    days: u32,
) -> Result<IssuedPaths, TlsError> {
    let paths = ca.issue(name, extra_hosts, days)?.write(out_dir, name)?;
    tracing::info!(tls.identity = name, tls.cert = %paths.cert.display(), "certificate issued");
    Ok(paths)
}

/// A certificate name is also a file name and a DNS label: 1-63 characters of `a-z`, `0-9` and
/// `-`, not starting or ending with `-`.
pub fn validate_name(name: &str) -> Result<(), TlsError> {
    let invalid = |reason| Err(TlsError::InvalidName { name: name.to_owned(), reason });
    if name.is_empty() {
        return invalid("it is empty: use 1-63 characters of a-z, 0-9 and -");
    }
    if name.len() > 63 {
        return invalid("it is longer than 63 characters");
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !name.chars().all(allowed) {
        return invalid("use only lowercase letters a-z, digits 0-9 and -");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("it must not start or end with -");
    }
    Ok(())
}

fn validate_host(host: &str) -> Result<(), TlsError> {
    // The same check a client applies to the name it connects to: if it passes here, the name is
    // usable with `client_config(host)`.
    if host.parse::<IpAddr>().is_ok() || ServerName::try_from(host).is_ok() {
        return Ok(());
    }
    Err(TlsError::InvalidHost { host: host.to_owned() })
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = ASN1Time::now().to_datetime();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + Duration::from_secs(u64::from(days) * SECONDS_PER_DAY);
}

fn read_ca_file(role: crate::FileRole, path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read { role, path: path.to_path_buf(), source })
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })
}

/// Writes `contents` to `path`; a secret file is made owner-only before anything is written.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), TlsError> {
    let write_err = |source| TlsError::Write { path: path.to_path_buf(), source };
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(write_err)?;
    #[cfg(unix)]
    if secret {
        // `mode` only applies to new files: tighten a pre-existing one too.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(write_err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    use x509_parser::extensions::GeneralName;

    #[test]
    fn name_validation_accepts_dns_labels() {
        for name in ["a", "node-1", "master", "0", &"x".repeat(63)] {
            assert!(validate_name(name).is_ok(), "{name} should be valid");
        }
    }

    #[test]
    fn name_validation_rejects_with_a_reason() {
        let cases = [
            ("", "empty"),
            (&"x".repeat(64) as &str, "longer than 63"),
            ("Node-1", "lowercase"),
            ("node_1", "lowercase"),
            ("node.1", "lowercase"),
            ("../etc", "lowercase"),
            ("-node", "start or end"),
            ("node-", "start or end"),
        ];
        for (name, reason) in cases {
            let err = validate_name(name).expect_err(name);
            let message = err.to_string();
            assert!(message.contains(reason), "{name:?}: {message}");
            assert!(message.starts_with("invalid certificate name"), "{message}");
        }
    }

    #[test]
    fn issue_refuses_bad_names_hosts_and_days() -> Result<(), TlsError> {
        let ca = DevCa::generate()?;
        assert!(matches!(ca.issue("Bad Name", &[], 1), Err(TlsError::InvalidName { .. })));
        assert!(matches!(ca.issue("node-1", &["not a host".to_owned()], 1), Err(TlsError::InvalidHost { .. })));
        assert!(matches!(ca.issue("node-1", &[], 0), Err(TlsError::InvalidDays { days: 0 })));
        Ok(())
    }

    #[test]
    fn issued_certificate_has_cn_sans_and_both_usages() -> Result<(), TlsError> {
        let ca = DevCa::generate()?;
        let extra = vec![
            "node-1.example".to_owned(),
            "10.1.2.3".to_owned(),
            "localhost".to_owned(), // already there: must not be duplicated
        ];
        let issued = ca.issue("node-1", &extra, 30)?;
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("issued PEM holds a certificate");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("issued cert parses");

        let cn: Vec<_> = cert.subject().iter_common_name().map(|cn| cn.as_str().expect("utf-8 CN")).collect();
        assert_eq!(cn, ["node-1"]);

        let san = cert.subject_alternative_name().expect("one SAN extension").expect("SAN present");
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                GeneralName::IPAddress(bytes) => ips.push(ip_from_bytes(bytes)),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(dns, ["node-1", "localhost", "node-1.example"]);
        let expected_ips: Vec<IpAddr> =
            ["127.0.0.1", "::1", "10.1.2.3"].iter().map(|ip| ip.parse().expect("literal IP")).collect();
        assert_eq!(ips, expected_ips);

        let eku = cert.extended_key_usage().expect("one EKU extension").expect("EKU present").value;
        assert!(eku.server_auth, "serverAuth");
        assert!(eku.client_auth, "clientAuth");

        let basic = cert.basic_constraints().expect("one basic constraints");
        assert!(basic.is_none_or(|bc| !bc.value.ca), "leaf must not be a CA");

        let validity = cert.validity();
        let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
        assert_eq!(days, 30, "30 days plus the clock-skew allowance, rounded down");

        let issuer_cn: Vec<_> = cert.issuer().iter_common_name().map(|cn| cn.as_str().expect("utf-8 CN")).collect();
        assert_eq!(issuer_cn, [CA_COMMON_NAME]);
        Ok(())
    }

    #[test]
    fn ca_certificate_is_a_ten_year_ca() -> Result<(), TlsError> {
        let ca = DevCa::generate()?;
        let der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("CA PEM holds a certificate");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("CA cert parses");
        let basic = cert.basic_constraints().expect("one basic constraints").expect("present");
        assert!(basic.value.ca);
        let validity = cert.validity();
        let years = (validity.not_after.timestamp() - validity.not_before.timestamp()) / (365 * 86_400);
        assert_eq!(years, 10);
        Ok(())
    }

    #[test]
    fn files_round_trip_and_existing_ca_is_kept() -> Result<(), TlsError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = init_ca(dir.path(), false)?;
        let first = fs::read_to_string(&paths.cert).expect("ca.pem written");

        let err = init_ca(dir.path(), false).expect_err("CA exists");
        assert!(err.to_string().contains("pass --force"), "{err}");
        assert_eq!(fs::read_to_string(&paths.cert).expect("still there"), first);

        let issued = issue(dir.path(), "node-1", &[], &dir.path().join("out"))?;
        assert!(issued.cert.ends_with("out/node-1.pem"));
        assert!(issued.key.ends_with("out/node-1.key"));
        let loaded = issued.tls_files(&paths.cert).load()?;
        assert_eq!(loaded.identity_name(), "node-1");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for key in [&paths.key, &issued.key] {
                let mode = fs::metadata(key).expect("key written").permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", key.display());
            }
        }

        let replaced = init_ca(dir.path(), true)?;
        assert_ne!(fs::read_to_string(&replaced.cert).expect("ca.pem rewritten"), first);
        Ok(())
    }

    #[test]
    fn load_rejects_a_key_from_another_ca() -> Result<(), TlsError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let other = tempfile::tempdir().expect("temp dir");
        init_ca(dir.path(), false)?;
        let other_paths = init_ca(other.path(), false)?;
        fs::copy(&other_paths.key, dir.path().join(CA_KEY_FILE)).expect("copy key");
        let err = DevCa::load(dir.path()).expect_err("mismatched CA key");
        assert!(matches!(err, TlsError::CaKeyMismatch { .. }), "{err:?}");
        Ok(())
    }

    fn ip_from_bytes(bytes: &[u8]) -> IpAddr {
        match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")),
            16 => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")),
            n => panic!("IP SAN of {n} bytes"),
        }
    }
}
