//! TLS configs built from validated files: servers require a client certificate from the mesh
//! CA, clients trust only the mesh CA and present our certificate.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::{FileRole, TlsError};
use crate::pem::{LoadedTls, certificates, private_key_der};

/// The ALPN protocol of gRPC: HTTP/2. Clients (tonic included) insist on it.
const ALPN_H2: &[u8] = b"h2";

impl LoadedTls {
    /// Server TLS presenting our certificate and REQUIRING a client certificate issued by the
    /// mesh CA; for `tonic::transport::Server::tls_config`.
    ///
    /// tonic cannot swap such a config while serving; the daemons use
    /// [`crate::ReloadableTls`] and [`crate::tls_incoming`] instead. With either, tonic fills
    /// `Request::peer_certs()`, so handlers can call [`crate::peer_identity_of`].
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.tonic_identity())
            .client_ca_root(self.tonic_ca())
            .client_auth_optional(false)
    }

    /// The same policy as [`LoadedTls::server_config`] as a rustls config, for terminating TLS
    /// ourselves ([`crate::tls_incoming`]): our certificate chain, a client certificate from
    /// the CA file required, ALPN `h2`.
    pub fn rustls_server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let files = self.files();
        let config_error =
            |detail: String| TlsError::ServerConfig { cert: files.cert.clone(), key: files.key.clone(), detail };

        let mut roots = RootCertStore::empty();
        for ca in certificates(FileRole::Ca, &files.ca, self.ca_pem())? {
            roots.add(ca).map_err(|err| TlsError::CertParse {
                role: FileRole::Ca,
                path: files.ca.clone(),
                detail: err.to_string(),
            })?;
        }
        let chain = certificates(FileRole::Cert, &files.cert, self.cert_pem())?;
        let key = private_key_der(&files.key, self.key_pem())?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|err| config_error(err.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| config_error(err.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|err| config_error(err.to_string()))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }

    /// Client TLS trusting only the mesh CA (no system roots), presenting our certificate, and
    /// verifying that the server's certificate is valid for `server_name` (a DNS SAN or an IP
    /// SAN such as `127.0.0.1`); for `tonic::transport::Endpoint::tls_config`.
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(self.tonic_ca()).identity(self.tonic_identity()).domain_name(server_name)
    }

    fn tonic_identity(&self) -> Identity {
        Identity::from_pem(self.cert_pem(), self.key_pem())
    }

    fn tonic_ca(&self) -> Certificate {
        Certificate::from_pem(self.ca_pem())
    }
}
