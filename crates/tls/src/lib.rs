//! ragmesh TLS: PEM loading and validation, tonic mTLS configs, peer identity, a development CA
//! and plain-language explanations of TLS failures.
//!
//! Every party of the mesh (master, agents, `ragmeshctl`) is both a TLS client and a TLS server,
//! and every connection is mutually authenticated against one mesh CA:
//!
//! ```no_run
//! # fn main() -> Result<(), ragmesh_tls::TlsError> {
//! use ragmesh_tls::TlsFiles;
//! let tls = TlsFiles {
//!     ca: "certs/ca.pem".into(),
//!     cert: "certs/node-1.pem".into(),
//!     key: "certs/node-1.key".into(),
//! }
//! .load()?;
//! let server = tls.server_config(); // for tonic::transport::Server::tls_config
//! let client = tls.client_config("master"); // for tonic::transport::Endpoint::tls_config
//! # let _ = (server, client);
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod devca;
mod error;
pub mod explain;
pub mod identity;
pub mod pem;

pub use devca::{CaPaths, DevCa, IssuedCert, IssuedPaths};
pub use error::{FileRole, TlsError};
pub use explain::{ErrorContext, error_chain, explain_error, explain_error_in};
pub use identity::{PeerIdentity, peer_identity, peer_identity_of};
pub use pem::{LoadedTls, TlsFiles};
