//! ragmesh TLS: PEM loading and validation, mTLS configs, certificate hot reload and TLS
//! termination for servers, peer identity, a development CA and plain-language explanations of
//! TLS failures.
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
//!
//! The daemons reload their certificate while serving: they hold a [`ReloadableTls`], kept
//! current by [`spawn_reloader`], and terminate TLS with [`tls_incoming`] rather than tonic's
//! fixed `tls_config`:
//!
//! ```no_run
//! # async fn run(files: ragmesh_tls::TlsFiles, router: tonic::transport::server::Router)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use ragmesh_tls::{DEFAULT_RELOAD_INTERVAL, ReloadableTls, spawn_reloader, tls_incoming};
//! let tls = ReloadableTls::load(&files)?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! spawn_reloader(tls.clone(), DEFAULT_RELOAD_INTERVAL, shutdown.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7400").await?;
//! router.serve_with_incoming_shutdown(tls_incoming(listener, tls), shutdown.cancelled_owned()).await?;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod devca;
mod error;
pub mod explain;
pub mod identity;
pub mod incoming;
pub mod pem;
pub mod reload;

pub use devca::{CaPaths, DevCa, IssuedCert, IssuedPaths};
pub use error::{FileRole, TlsError};
pub use explain::{ErrorContext, error_chain, explain_error, explain_error_in};
pub use identity::{PeerIdentity, peer_identity, peer_identity_of};
pub use incoming::tls_incoming;
pub use pem::{LoadedTls, TlsFiles};
pub use reload::{
    DEFAULT_RELOAD_INTERVAL, EXPIRY_WARNING, Expiry, ReloadOutcome, ReloadableTls, report_expiry, spawn_reloader,
};
