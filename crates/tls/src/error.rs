//! The crate's error type: every failure names the file involved and, where the user can fix it,
//! says how.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The command that creates a mesh CA; quoted by errors about missing CA files.
pub(crate) const INIT_CA_HINT: &str = "`ragmeshctl certs init`";
/// The command that issues a certificate; quoted by errors about missing or bad certificates.
pub(crate) const ISSUE_HINT: &str = "`ragmeshctl certs issue`";

/// Which of the three TLS files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    /// The mesh CA certificate (`--ca`, usually `ca.pem`).
    Ca,
    /// Our own certificate (`--cert`).
    Cert,
    /// The private key of our own certificate (`--key`).
    Key,
    /// The development CA's private key (`ca.key`), read only to issue certificates.
    CaKey,
}

impl FileRole {
    /// What the user can do when the file is missing.
    fn create_hint(self) -> String {
        match self {
            FileRole::Ca => {
                format!("copy the mesh CA (ca.pem) here or create one with {INIT_CA_HINT}")
            }
            FileRole::Cert | FileRole::Key => format!("create one with {ISSUE_HINT}"),
            FileRole::CaKey => {
                format!("issue certificates where the CA key is kept, or create a CA with {INIT_CA_HINT}")
            }
        }
    }
}

impl fmt::Display for FileRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileRole::Ca => "CA certificate",
            FileRole::Cert => "certificate",
            FileRole::Key => "private key",
            FileRole::CaKey => "CA private key",
        })
    }
}

/// Everything that can go wrong while loading, checking or issuing certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read {role} {}: {source}: {}", path.display(), role.create_hint())]
    Read {
        /// Which file.
        role: FileRole,
        /// Where it was looked for.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },

    /// A file holds no PEM block of the expected kind.
    #[error(
        "{role} {} contains no PEM block (expected -----BEGIN {label}-----): pass a PEM file, {}",
        path.display(),
        role.create_hint()
    )]
    NoPem {
        /// Which file.
        role: FileRole,
        /// The file.
        path: PathBuf,
        /// The PEM label that was expected (`CERTIFICATE`, `PRIVATE KEY`).
        label: &'static str,
    },

    /// The CA file holds PEM blocks, but no certificate.
    #[error(
        "CA file {} contains no certificate (no -----BEGIN CERTIFICATE----- block): \
         pass the mesh CA certificate (ca.pem), not its key",
        path.display()
    )]
    NoCaCertificate {
        /// The CA file.
        path: PathBuf,
    },

    /// A PEM file is malformed (bad base64, missing END line).
    #[error("{role} {} is not valid PEM: {detail}", path.display())]
    BadPem {
        /// Which file.
        role: FileRole,
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        detail: String,
    },

    /// A certificate is not valid X.509.
    #[error("{role} {} does not parse as an X.509 certificate: {detail}", path.display())]
    CertParse {
        /// Which file.
        role: FileRole,
        /// The file.
        path: PathBuf,
        /// What the X.509 parser said.
        detail: String,
    },

    /// The private key is not a key rustls can use.
    #[error(
        "private key {} does not parse: {detail}: expected an ECDSA, Ed25519 or RSA key \
         (PKCS#8, SEC1 or PKCS#1), as written by {ISSUE_HINT}",
        path.display()
    )]
    KeyParse {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        detail: String,
    },

    /// A certificate's validity period has ended.
    #[error(
        "{role} {} expired on {not_after} (valid from {not_before}; it is now {now}): {}",
        path.display(),
        if matches!(role, FileRole::Ca) {
            format!("create a new CA with {INIT_CA_HINT} and reissue every certificate")
        } else {
            format!("issue a new one with {ISSUE_HINT}")
        }
    )]
    Expired {
        /// Which file.
        role: FileRole,
        /// The file.
        path: PathBuf,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
        /// The time of the check.
        now: String,
    },

    /// A certificate's validity period has not started yet.
    #[error(
        "{role} {} is not valid until {not_before} (valid to {not_after}; it is now {now}): \
         check this machine's clock",
        path.display()
    )]
    NotYetValid {
        /// Which file.
        role: FileRole,
        /// The file.
        path: PathBuf,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
        /// The time of the check.
        now: String,
    },

    /// The private key does not belong to the certificate.
    #[error(
        "private key {} does not match certificate {}: pass the key that was issued with \
         this certificate (same name, .key)",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },

    /// Our certificate was not issued by the CA we trust, so no peer would accept it.
    #[error(
        "certificate {} is not signed by the CA in {} ({detail}): issue it from this CA with \
         {ISSUE_HINT} or pass the CA that issued it",
        cert.display(),
        ca.display()
    )]
    NotIssuedByCa {
        /// Our certificate.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// What the verifier said.
        detail: String,
    },

    /// A certificate names no identity: no common name and no DNS subject alternative name.
    #[error("certificate {what} names no identity (no CN and no DNS SAN): reissue it with {ISSUE_HINT}")]
    NoIdentity {
        /// The certificate (a path, or "peer certificate").
        what: String,
    },

    /// Validated files still could not become a TLS server configuration.
    #[error(
        "cannot build the TLS server configuration from {} and {}: {detail}: reissue the \
         certificate with {ISSUE_HINT}",
        cert.display(),
        key.display()
    )]
    ServerConfig {
        /// Our certificate.
        cert: PathBuf,
        /// Our key.
        key: PathBuf,
        /// What rustls said.
        detail: String,
    },

    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,

    /// The peer's certificate is not valid X.509.
    #[error("the peer's certificate does not parse: {detail}")]
    PeerCertParse {
        /// What the X.509 parser said.
        detail: String,
    },

    /// A certificate name for the development CA is not acceptable.
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// An extra host for a development certificate is neither an IP address nor a DNS name.
    #[error("invalid host {host:?}: use a DNS name (node-1.example) or an IP address (10.0.0.7)")]
    InvalidHost {
        /// The host given.
        host: String,
    },

    /// A validity period of zero days was asked for.
    #[error("invalid validity of {days} days: ask for at least 1 day")]
    InvalidDays {
        /// The number of days given.
        days: u32,
    },

    /// `init_ca` found a CA already there.
    #[error(
        "a CA already exists at {}: pass --force to replace it (every certificate it issued \
         will stop being trusted)",
        path.display()
    )]
    CaExists {
        /// The existing CA file.
        path: PathBuf,
    },

    /// The CA key does not belong to the CA certificate.
    #[error(
        "CA key {} does not match CA certificate {}: keep ca.pem and ca.key from the same \
         {INIT_CA_HINT}",
        key.display(),
        cert.display()
    )]
    CaKeyMismatch {
        /// The CA key file.
        key: PathBuf,
        /// The CA certificate file.
        cert: PathBuf,
    },

    /// rcgen refused to generate or parse something.
    #[error("cannot {action}: {source}")]
    Generate {
        /// What was being done ("generate the CA key", "parse CA key /x/ca.key").
        action: String,
        /// The rcgen error.
        source: rcgen::Error,
    },

    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}
