//! Real mTLS over real sockets: a tonic health server on 127.0.0.1:0 with `server_config()`,
//! clients with `client_config()` or deliberately broken configs, and the explanation each
//! real failure gets.

use std::error::Error;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ragmesh_tls::devca::{self, CaPaths, DevCa, IssuedCert};
use ragmesh_tls::{ErrorContext, LoadedTls, PeerIdentity, explain_error, explain_error_in};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Upper bound for one client attempt; failures here are immediate, this only stops a hang.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// A mesh CA with a server ("master") and a client ("client-1"), plus an unrelated CA with its
/// own client ("rogue"), all as files in one temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: CaPaths,
    other_ca: CaPaths,
    server: LoadedTls,
    client: LoadedTls,
    /// A client of the other CA, trusting the other CA.
    other_client: LoadedTls,
}

impl Pki {
    fn new() -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let ca_dir = dir.path().join("ca");
        let other_dir = dir.path().join("other-ca");
        let certs = dir.path().join("certs");
        let ca = devca::init_ca(&ca_dir, false)?;
        let other_ca = devca::init_ca(&other_dir, false)?;
        let server = devca::issue(&ca_dir, "master", &[], &certs)?.tls_files(&ca.cert).load()?;
        let client = devca::issue(&ca_dir, "client-1", &[], &certs)?.tls_files(&ca.cert).load()?;
        let other_client = devca::issue(&other_dir, "rogue", &[], &certs)?.tls_files(&other_ca.cert).load()?;
        Ok(Self { dir, ca, other_ca, server, client, other_client })
    }

    fn ca_certificate(&self) -> Result<Certificate, BoxError> {
        Ok(Certificate::from_pem(std::fs::read(&self.ca.cert)?))
    }

    /// A certificate from the mesh CA that expired in 2021.
    fn expired(&self, name: &str) -> Result<IssuedCert, BoxError> {
        let ca = DevCa::load(self.ca_dir())?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        Ok(ca.sign(params)?)
    }

    fn ca_dir(&self) -> &Path {
        self.ca.cert.parent().unwrap_or(self.dir.path())
    }
}

/// A tonic health server that reports the client identity of every request it gets.
struct TestServer {
    addr: SocketAddr,
    identities: mpsc::UnboundedReceiver<Option<PeerIdentity>>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_server(tls: Option<ServerTlsConfig>) -> Result<TestServer, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (tx, identities) = mpsc::unbounded_channel();
    let record_identity = move |req: tonic::Request<()>| {
        // The receiver lives as long as the test; a send error only means the test is over.
        let _ = tx.send(ragmesh_tls::peer_identity_of(&req));
        Ok(req)
    };
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let router = builder.layer(tonic::service::InterceptorLayer::new(record_identity)).add_service(health);
    let task = tokio::spawn(async move {
        if let Err(err) = router.serve_with_incoming(TcpIncoming::from(listener)).await {
            panic!("test server failed: {err}");
        }
    });
    Ok(TestServer { addr, identities, task })
}

/// Connects and calls Health/Check once; the error is whichever step failed first.
async fn check(uri: String, tls: Option<ClientTlsConfig>) -> Result<ServingStatus, BoxError> {
    let attempt = async move {
        let mut endpoint =
            Endpoint::from_shared(uri)?.connect_timeout(Duration::from_secs(10)).timeout(Duration::from_secs(10));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect().await?;
        let response = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await?;
        Ok::<_, BoxError>(response.into_inner().status())
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await?
}

async fn expect_failure(uri: String, tls: Option<ClientTlsConfig>) -> BoxError {
    match check(uri, tls).await {
        Ok(status) => panic!("call should have failed, got {status:?}"),
        Err(err) => err,
    }
}

fn https(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

fn plain_ctx() -> ErrorContext {
    ErrorContext { tls: Some(false), ..ErrorContext::default() }
}

#[tokio::test]
async fn mutual_tls_call_succeeds_and_server_sees_the_client_identity() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let mut server = start_server(Some(pki.server.server_config())).await?;

    let status = check(https(server.addr), Some(pki.client.client_config("master"))).await?;
    assert_eq!(status, ServingStatus::Serving);

    let identity = server
        .identities
        .recv()
        .await
        .expect("the server saw the request")
        .expect("tonic terminated TLS, so peer_certs is filled");
    assert_eq!(identity.name, "client-1");
    assert!(identity.is("client-1"));
    assert!(identity.is("localhost"));
    assert!(!identity.is("master"));
    assert_eq!(pki.client.identity_name(), "client-1");
    Ok(())
}

#[tokio::test]
async fn server_name_may_be_an_ip_san() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let server = start_server(Some(pki.server.server_config())).await?;
    let status = check(https(server.addr), Some(pki.client.client_config("127.0.0.1"))).await?;
    assert_eq!(status, ServingStatus::Serving);
    Ok(())
}

#[tokio::test]
async fn client_without_a_certificate_is_told_to_present_one() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let mut server = start_server(Some(pki.server.server_config())).await?;
    let no_identity = ClientTlsConfig::new().ca_certificate(pki.ca_certificate()?).domain_name("master");

    let err = expect_failure(https(server.addr), Some(no_identity)).await;
    assert_eq!(explain_error(&*err), "the server requires a client certificate: pass --cert and --key");
    assert!(server.identities.try_recv().is_err(), "no request reached the service");
    Ok(())
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let server = start_server(Some(pki.server.server_config())).await?;
    let rogue_files = pki.other_client.files();
    let rogue = ClientTlsConfig::new()
        .ca_certificate(pki.ca_certificate()?)
        .identity(Identity::from_pem(std::fs::read(&rogue_files.cert)?, std::fs::read(&rogue_files.key)?))
        .domain_name("master");

    let err = expect_failure(https(server.addr), Some(rogue)).await;
    assert_eq!(
        explain_error(&*err),
        "the server refused our client certificate: present a certificate issued by the mesh \
         CA (--cert/--key)"
    );
    Ok(())
}

#[tokio::test]
async fn client_trusting_another_ca_rejects_the_server() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let server = start_server(Some(pki.server.server_config())).await?;

    let err = expect_failure(https(server.addr), Some(pki.other_client.client_config("master"))).await;
    let ctx = ErrorContext { ca: Some(pki.other_ca.cert.clone()), ..ErrorContext::default() };
    assert_eq!(
        explain_error_in(&*err, &ctx),
        format!(
            "the server's certificate is not signed by the CA in {}: use the mesh CA (ca.pem) \
             the server's certificate was issued by",
            pki.other_ca.cert.display()
        )
    );
    assert!(explain_error(&*err).contains("not signed by the CA in --ca"));
    Ok(())
}

#[tokio::test]
async fn wrong_server_name_lists_the_names_the_certificate_holds() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let server = start_server(Some(pki.server.server_config())).await?;

    let err = expect_failure(https(server.addr), Some(pki.client.client_config("node-9"))).await;
    let explained = explain_error(&*err);
    assert_eq!(
        explained,
        "the server's certificate is not valid for node-9: it is valid for master, localhost, \
         127.0.0.1, ::1; connect with one of those names, or reissue it with node-9 as an extra \
         host"
    );
    Ok(())
}

#[tokio::test]
async fn plaintext_client_to_tls_server_is_told_to_use_tls() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let server = start_server(Some(pki.server.server_config())).await?;

    let err = expect_failure(format!("http://{}", server.addr), None).await;
    assert_eq!(
        explain_error_in(&*err, &plain_ctx()),
        "the server speaks TLS: drop --insecure and pass --ca/--cert/--key"
    );
    // Without knowing our mode the explanation still names it.
    assert!(explain_error(&*err).contains("the server speaks TLS"));
    Ok(())
}

#[tokio::test]
async fn tls_client_to_plaintext_server_is_told_the_server_has_no_tls() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let server = start_server(None).await?;

    let err = expect_failure(https(server.addr), Some(pki.client.client_config("master"))).await;
    assert_eq!(
        explain_error(&*err),
        "the server is not using TLS (started with --insecure?): restart it with TLS, or \
         connect with --insecure"
    );
    Ok(())
}

#[tokio::test]
async fn connection_refused_names_the_address() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    // A port that stays bound for the whole test but never listens: connections are refused,
    // and no other program can start listening there meanwhile.
    let closed = tokio::net::TcpSocket::new_v4()?;
    closed.bind("127.0.0.1:0".parse()?)?;
    let addr = closed.local_addr()?;

    let err = expect_failure(https(addr), Some(pki.client.client_config("master"))).await;
    assert_eq!(explain_error(&*err), format!("nothing is listening at {addr}: start the server or check the address"));
    Ok(())
}

#[tokio::test]
async fn expired_server_certificate_is_reported_with_its_date() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let expired = pki.expired("master")?;
    // LoadedTls refuses expired files, so build this broken server by hand.
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&expired.cert_pem, &expired.key_pem))
        .client_ca_root(pki.ca_certificate()?);
    let server = start_server(Some(tls)).await?;

    let err = expect_failure(https(server.addr), Some(pki.client.client_config("master"))).await;
    assert_eq!(
        explain_error(&*err),
        "the server's certificate expired on 2021-01-01 00:00:00 UTC: reissue it with \
         `ragmeshctl certs issue` and restart the server"
    );
    Ok(())
}

#[tokio::test]
async fn expired_client_certificate_is_refused_by_the_server() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let server = start_server(Some(pki.server.server_config())).await?;
    let expired = pki.expired("client-1")?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(pki.ca_certificate()?)
        .identity(Identity::from_pem(&expired.cert_pem, &expired.key_pem))
        .domain_name("master");

    let err = expect_failure(https(server.addr), Some(tls)).await;
    assert_eq!(
        explain_error(&*err),
        "the server refused our client certificate because it has expired: issue a new one \
         with `ragmeshctl certs issue`"
    );
    Ok(())
}
