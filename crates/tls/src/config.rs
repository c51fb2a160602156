//! tonic TLS configs built from validated files: servers require a client certificate from the
//! mesh CA, clients trust only the mesh CA and present our certificate.

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::pem::LoadedTls;

impl LoadedTls {
    /// Server TLS presenting our certificate and REQUIRING a client certificate issued by the
    /// mesh CA; for `tonic::transport::Server::tls_config`.
    ///
    /// With this config tonic fills `Request::peer_certs()`, so handlers can call
    /// [`crate::peer_identity_of`].
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.tonic_identity())
            .client_ca_root(self.tonic_ca())
            .client_auth_optional(false)
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
