//! `TlsFiles::load` on real files: each broken file produces its own message naming the file.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ragmesh_tls::devca::{self, CaPaths, DevCa, IssuedPaths};
use ragmesh_tls::{TlsError, TlsFiles};

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// A mesh CA and one certificate ("node-1") issued from it.
struct Fixture {
    dir: tempfile::TempDir,
    ca: CaPaths,
    node: IssuedPaths,
}

impl Fixture {
    fn new() -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let ca = devca::init_ca(&dir.path().join("ca"), false)?;
        let node = devca::issue(&dir.path().join("ca"), "node-1", &[], dir.path())?;
        Ok(Self { dir, ca, node })
    }

    fn files(&self) -> TlsFiles {
        self.node.tls_files(&self.ca.cert)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> Result<PathBuf, BoxError> {
        let path = self.path(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }

    /// A certificate from the mesh CA with the given validity, as files `<name>.pem/.key`.
    fn signed_with_validity(
        &self,
        name: &str,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> Result<TlsFiles, BoxError> {
        let ca = DevCa::load(&self.dir.path().join("ca"))?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let issued = ca.sign(params)?.write(self.dir.path(), name)?;
        Ok(issued.tls_files(&self.ca.cert))
    }
}

fn load_err(files: &TlsFiles) -> TlsError {
    match files.load() {
        Ok(loaded) => panic!("load should have failed, got {loaded:?}"),
        Err(err) => err,
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn good_files_load_with_identity_and_expiry() -> Result<(), BoxError> {
    let fixture = Fixture::new()?;
    let loaded = fixture.files().load()?;
    assert_eq!(loaded.identity_name(), "node-1");
    assert_eq!(loaded.identity().dns_names, ["node-1", "localhost"]);
    let in_a_year = SystemTime::now() + Duration::from_secs(365 * 86_400);
    let slack = Duration::from_secs(3_600);
    assert!(loaded.not_after() < in_a_year + slack);
    assert!(loaded.not_after() > in_a_year - slack);
    assert!(!format!("{loaded:?}").contains("PRIVATE KEY"), "Debug hides the key");
    Ok(())
}

#[test]
fn missing_certificate_says_how_to_create_one() -> Result<(), BoxError> {
    let fixture = Fixture::new()?;
    let missing = fixture.path("nowhere/node.pem");
    let files = TlsFiles { cert: missing.clone(), ..fixture.files() };
    assert_eq!(
        load_err(&files).to_string(),
        format!(
            "cannot read certificate {}: No such file or directory (os error 2): create one \
             with `ragmeshctl certs issue`",
            display(&missing)
        )
    );
    Ok(())
}

#[test]
fn missing_ca_says_where_a_ca_comes_from() -> Result<(), BoxError> {
    let fixture = Fixture::new()?;
    let files = TlsFiles { ca: fixture.path("ca.pem"), ..fixture.files() };
    let message = load_err(&files).to_string();
    assert!(message.starts_with("cannot read CA certificate "), "{message}");
    assert!(message.ends_with("`ragmeshctl certs init`"), "{message}");
    Ok(())
}

#[test]
fn certificate_without_pem_is_named() -> Result<(), BoxError> {
    let fixture = Fixture::new()?;
    let not_pem = fixture.write("not-pem.pem", "hello, I am not a certificate\n")?;
    let files = TlsFiles { cert: not_pem.clone(), ..fixture.files() };
    let message = load_err(&files).to_string();
    assert!(
        message.starts_with(&format!(
            "certificate {} contains no PEM block (expected -----BEGIN CERTIFICATE-----)",
            display(&not_pem)
        )),
        "{message}"
    );
    Ok(())
}

#[test]
fn ca_file_without_certificate_is_named() -> Result<(), BoxError> {
    let fixture = Fixture::new()?;
    // The classic mix-up: the CA key passed as the CA certificate.
    let files = TlsFiles { ca: fixture.ca.key.clone(), ..fixture.files() };
    assert_eq!(
        load_err(&files).to_string(),
        format!(
            "CA file {} contains no certificate (no -----BEGIN CERTIFICATE----- block): pass the \
             mesh CA certificate (ca.pem), not its key",
            display(&fixture.ca.key)
        )
    );
    Ok(())
}

#[test]
fn truncated_pem_is_reported() -> Result<(), BoxError> {
    let fixture = Fixture::new()?;
    let full = std::fs::read_to_string(&fixture.node.cert)?;
    let truncated = full.replace("-----END CERTIFICATE-----", "");
    let path = fixture.write("truncated.pem", &truncated)?;
    let files = TlsFiles { cert: path.clone(), ..fixture.files() };
    let err = load_err(&files);
    assert!(matches!(err, TlsError::BadPem { .. }), "{err:?}");
    assert!(err.to_string().starts_with(&format!("certificate {} is not valid PEM", display(&path))), "{err}");
    Ok(())
}

#[test]
fn key_that_does_not_parse_is_named() -> Result<(), BoxError> {
    let fixture = Fixture::new()?;
    let path =
        fixture.write("garbage.key", "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n")?;
    let files = TlsFiles { key: path.clone(), ..fixture.files() };
    let message = load_err(&files).to_string();
    assert!(message.starts_with(&format!("private key {} does not parse: ", display(&path))), "{message}");
    Ok(())
}

#[test]
fn key_of_another_certificate_is_a_mismatch() -> Result<(), BoxError> {
    let fixture = Fixture::new()?;
    let other = devca::issue(&fixture.dir.path().join("ca"), "node-2", &[], fixture.dir.path())?;
    let files = TlsFiles { key: other.key.clone(), ..fixture.files() };
    assert_eq!(
        load_err(&files).to_string(),
        format!(
            "private key {} does not match certificate {}: pass the key that was issued with \
             this certificate (same name, .key)",
            display(&other.key),
            display(&fixture.node.cert)
        )
    );
    Ok(())
}

#[test]
fn expired_certificate_is_reported_with_its_dates() -> Result<(), BoxError> {
    let fixture = Fixture::new()?;
    let files = fixture.signed_with_validity("old", (2020, 1, 1), (2021, 1, 1))?;
    let message = load_err(&files).to_string();
    assert!(
        message.starts_with(&format!(
            "certificate {} expired on 2021-01-01 00:00:00 UTC (valid from 2020-01-01 00:00:00 \
             UTC; it is now ",
            display(&files.cert)
        )),
        "{message}"
    );
    assert!(message.ends_with("issue a new one with `ragmeshctl certs issue`"), "{message}");
    Ok(())
}

#[test]
fn certificate_not_yet_valid_is_reported() -> Result<(), BoxError> {
    let fixture = Fixture::new()?;
    let files = fixture.signed_with_validity("future", (2200, 1, 1), (2201, 1, 1))?;
    let message = load_err(&files).to_string();
    assert!(
        message
            .starts_with(&format!("certificate {} is not valid until 2200-01-01 00:00:00 UTC", display(&files.cert))),
        "{message}"
    );
    Ok(())
}

#[test]
fn certificate_from_another_ca_is_refused_at_load() -> Result<(), BoxError> {
    let fixture = Fixture::new()?;
    let other_ca = devca::init_ca(&fixture.path("other-ca"), false)?;
    let files = TlsFiles { ca: other_ca.cert.clone(), ..fixture.files() };
    let message = load_err(&files).to_string();
    assert!(
        message.starts_with(&format!(
            "certificate {} is not signed by the CA in {}",
            display(&fixture.node.cert),
            display(&other_ca.cert)
        )),
        "{message}"
    );
    Ok(())
}

#[test]
fn invalid_name_is_refused_before_the_ca_is_read() {
    let dir = Path::new("/nonexistent/ca");
    let err = devca::issue(dir, "Node_1", &[], dir).expect_err("bad name");
    assert!(matches!(err, TlsError::InvalidName { .. }), "{err:?}");
}

#[test]
fn issuing_without_a_ca_says_how_to_create_one() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let err = devca::issue(dir.path(), "node-1", &[], dir.path()).expect_err("no CA there");
    let message = err.to_string();
    let ca_pem = dir.path().join("ca.pem");
    assert!(message.starts_with(&format!("cannot read CA certificate {}", display(&ca_pem))), "{message}");
    assert!(message.ends_with("create one with `ragmeshctl certs init`"), "{message}");
    Ok(())
}
