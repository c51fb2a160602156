//! Certificate hot reload over real sockets and real mTLS: a tonic health server behind
//! `tls_incoming`, a long-lived Health/Watch stream that must survive reloads, fresh
//! connections that must see the new certificate, broken files that must not break the
//! server, CA rotation, and bad clients that must not disturb it.

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ragmesh_tls::devca::IssuedCert;
use ragmesh_tls::{
    DevCa, PeerIdentity, ReloadOutcome, ReloadableTls, TlsError, TlsFiles, explain_error, spawn_reloader, tls_incoming,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tonic_health::ServingStatus as ReportedStatus;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthReporter;

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Upper bound for anything that should happen promptly; only stops a hung test.
const PROMPTLY: Duration = Duration::from_secs(20);

/// A mesh CA, the server's files ("master", rewritten by the tests) and a client ("client-1"),
/// plus an unrelated CA for rotation and rejection cases.
struct Pki {
    dir: tempfile::TempDir,
    ca: DevCa,
    other_ca: DevCa,
    server: TlsFiles,
    client: TlsFiles,
}

impl Pki {
    fn new() -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let ca = DevCa::generate()?;
        let other_ca = DevCa::generate()?;
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.cert_pem())?;
        let server = ca.issue("master", &[], 30)?.write(dir.path(), "master")?.tls_files(&ca_pem);
        let client = ca.issue("client-1", &[], 30)?.write(dir.path(), "client-1")?.tls_files(&ca_pem);
        Ok(Pki { dir, ca, other_ca, server, client })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a new "master" certificate valid for `days` and writes it over the server's files.
    fn rotate_server_cert(&self, days: u32) -> Result<IssuedCert, BoxError> {
        let issued = self.ca.issue("master", &[], days)?;
        issued.write(self.dir.path(), "master")?;
        Ok(issued)
    }

    /// Client TLS for `tonic`, from PEM strings, trusting the mesh CA file.
    fn client_tls(&self, cert_pem: &str, key_pem: &str) -> Result<ClientTlsConfig, BoxError> {
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&self.server.ca)?))
            .identity(Identity::from_pem(cert_pem, key_pem))
            .domain_name("127.0.0.1"))
    }

    fn good_client(&self) -> Result<ClientTlsConfig, BoxError> {
        Ok(self.client.load()?.client_config("127.0.0.1"))
    }
}

/// A health server behind `tls_incoming`, reporting the client identity of every request.
struct TestServer {
    addr: SocketAddr,
    reporter: HealthReporter,
    identities: mpsc::UnboundedReceiver<Option<PeerIdentity>>,
    shutdown: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_server(tls: ReloadableTls) -> Result<TestServer, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    let (tx, identities) = mpsc::unbounded_channel();
    let record_identity = move |req: tonic::Request<()>| {
        // The receiver lives as long as the test; a send error only means the test is over.
        let _ = tx.send(ragmesh_tls::peer_identity_of(&req));
        Ok(req)
    };
    let router = Server::builder().layer(tonic::service::InterceptorLayer::new(record_identity)).add_service(health);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone().cancelled_owned();
    tokio::spawn(async move {
        if let Err(err) = router.serve_with_incoming_shutdown(tls_incoming(listener, tls), stop).await {
            panic!("test server failed: {err}");
        }
    });
    Ok(TestServer { addr, reporter, identities, shutdown })
}

async fn connect(addr: SocketAddr, tls: ClientTlsConfig) -> Result<Channel, BoxError> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)?;
    Ok(tokio::time::timeout(PROMPTLY, endpoint.connect()).await??)
}

/// Connects anew and calls Health/Check once.
async fn check(addr: SocketAddr, tls: ClientTlsConfig) -> Result<ServingStatus, BoxError> {
    let channel = connect(addr, tls).await?;
    let mut client = HealthClient::new(channel);
    let request = client.check(HealthCheckRequest { service: String::new() });
    Ok(tokio::time::timeout(PROMPTLY, request).await??.into_inner().status())
}

/// Opens a Health/Watch stream for the whole server on its own connection.
async fn watch(addr: SocketAddr, tls: ClientTlsConfig) -> Result<Streaming<HealthCheckResponse>, BoxError> {
    let channel = connect(addr, tls).await?;
    let mut client = HealthClient::new(channel);
    let request = client.watch(HealthCheckRequest { service: String::new() });
    Ok(tokio::time::timeout(PROMPTLY, request).await??.into_inner())
}

async fn next_status(stream: &mut Streaming<HealthCheckResponse>) -> Result<ServingStatus, BoxError> {
    let message = tokio::time::timeout(PROMPTLY, stream.message()).await??;
    Ok(message.ok_or("the watch stream ended")?.status())
}

/// Flips the server's status both ways and checks that `stream` sees both updates: proof that
/// the connection and its stream are alive.
async fn assert_stream_alive(
    reporter: &HealthReporter,
    stream: &mut Streaming<HealthCheckResponse>,
) -> Result<(), BoxError> {
    reporter.set_service_status("", ReportedStatus::NotServing).await;
    assert_eq!(next_status(stream).await?, ServingStatus::NotServing);
    reporter.set_service_status("", ReportedStatus::Serving).await;
    assert_eq!(next_status(stream).await?, ServingStatus::Serving);
    Ok(())
}

/// Connects with a bare rustls client presenting `client`'s certificate and returns the leaf
/// certificate the server presented, checking that ALPN settled on h2.
async fn served_leaf(addr: SocketAddr, client: &TlsFiles) -> Result<CertificateDer<'static>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&client.ca)? {
        roots.add(ca?)?;
    }
    let chain = CertificateDer::pem_file_iter(&client.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&client.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];

    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from("127.0.0.1")?;
    let stream =
        tokio::time::timeout(PROMPTLY, TlsConnector::from(Arc::new(config)).connect(server_name, tcp)).await??;
    let (_, session) = stream.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "gRPC needs ALPN h2");
    let leaf =
        session.peer_certificates().and_then(|certs| certs.first()).ok_or("the server presented no certificate")?;
    Ok(leaf.clone().into_owned())
}

fn der_of(cert_pem: &str) -> Result<CertificateDer<'static>, BoxError> {
    Ok(CertificateDer::from_pem_slice(cert_pem.as_bytes())?)
}

fn der_of_file(path: &Path) -> Result<CertificateDer<'static>, BoxError> {
    Ok(CertificateDer::from_pem_file(path)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_established_streams_and_new_connections_get_the_new_certificate() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let cert_a = der_of_file(&pki.server.cert)?;
    let tls = ReloadableTls::load(&pki.server)?;
    let server = start_server(tls.clone()).await?;

    let mut stream = watch(server.addr, pki.good_client()?).await?;
    assert_eq!(next_status(&mut stream).await?, ServingStatus::Serving);
    assert_eq!(served_leaf(server.addr, &pki.client).await?, cert_a);
    assert_eq!(tls.generation(), 0);

    let b = pki.rotate_server_cert(20)?;
    let cert_b = der_of(&b.cert_pem)?;
    assert_ne!(cert_a, cert_b);
    assert_eq!(tls.reload()?, ReloadOutcome::Reloaded { generation: 1 });
    assert_eq!(tls.generation(), 1);
    assert_eq!(tls.current().identity().name, "master");

    // (a) The stream opened with certificate A still delivers updates.
    assert_stream_alive(&server.reporter, &mut stream).await?;
    // (b) A new connection is served with certificate B.
    assert_eq!(served_leaf(server.addr, &pki.client).await?, cert_b);
    assert_eq!(check(server.addr, pki.good_client()?).await?, ServingStatus::Serving);

    // Reloading the same files again changes nothing, and clients need not rebuild.
    assert_eq!(tls.reload()?, ReloadOutcome::Unchanged);
    assert_eq!(tls.generation(), 1);
    assert_stream_alive(&server.reporter, &mut stream).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_poller_reloads_changed_files_by_itself() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let tls = ReloadableTls::load(&pki.server)?;
    let server = start_server(tls.clone()).await?;
    let stop = CancellationToken::new();
    let reloader = spawn_reloader(tls.clone(), Duration::from_millis(50), stop.clone());
    let mut generations = tls.subscribe();

    let mut stream = watch(server.addr, pki.good_client()?).await?;
    assert_eq!(next_status(&mut stream).await?, ServingStatus::Serving);

    let b = pki.rotate_server_cert(20)?;
    tokio::time::timeout(PROMPTLY, generations.changed()).await??;
    assert_eq!(*generations.borrow_and_update(), 1);
    assert_eq!(served_leaf(server.addr, &pki.client).await?, der_of(&b.cert_pem)?);
    assert_stream_alive(&server.reporter, &mut stream).await?;

    // And again: the poller keeps watching after a reload.
    let c = pki.rotate_server_cert(10)?;
    tokio::time::timeout(PROMPTLY, generations.changed()).await??;
    assert_eq!(*generations.borrow_and_update(), 2);
    assert_eq!(served_leaf(server.addr, &pki.client).await?, der_of(&c.cert_pem)?);
    assert_stream_alive(&server.reporter, &mut stream).await?;

    stop.cancel();
    tokio::time::timeout(PROMPTLY, reloader).await??;
    Ok(())
}

/// Sends SIGHUP to this test process. Safe only once a handler is installed: the default
/// action ends the process.
#[cfg(unix)]
fn send_sighup() -> Result<(), BoxError> {
    let status = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status()?;
    if !status.success() {
        return Err(format!("kill -HUP failed: {status}").into());
    }
    Ok(())
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_without_waiting_for_the_poller() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let tls = ReloadableTls::load(&pki.server)?;
    let server = start_server(tls.clone()).await?;
    let stop = CancellationToken::new();
    // A poll interval longer than any test: only SIGHUP can cause these reloads.
    let reloader = spawn_reloader(tls.clone(), Duration::from_secs(3600), stop.clone());
    let mut generations = tls.subscribe();

    // The first change may also be found by the reload the task does when it starts; the
    // second one can only be SIGHUP's doing.
    for expected in 1..=2 {
        let renewed = pki.rotate_server_cert(20)?;
        send_sighup()?;
        tokio::time::timeout(PROMPTLY, generations.wait_for(|generation| *generation == expected)).await??;
        assert_eq!(served_leaf(server.addr, &pki.client).await?, der_of(&renewed.cert_pem)?);
    }

    stop.cancel();
    tokio::time::timeout(PROMPTLY, reloader).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_fail_the_reload_and_the_server_keeps_its_certificate() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let tls = ReloadableTls::load(&pki.server)?;
    let server = start_server(tls.clone()).await?;
    let mut stream = watch(server.addr, pki.good_client()?).await?;
    assert_eq!(next_status(&mut stream).await?, ServingStatus::Serving);

    let b = pki.rotate_server_cert(20)?;
    assert_eq!(tls.reload()?, ReloadOutcome::Reloaded { generation: 1 });
    let cert_b = der_of(&b.cert_pem)?;

    // (c) The key of another certificate: a clear error naming both files.
    let unrelated = pki.ca.issue("master", &[], 20)?;
    std::fs::write(&pki.server.key, &unrelated.key_pem)?;
    let err = tls.reload().expect_err("a mismatched key must not be loaded");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("does not match certificate"), "{message}");
    assert!(message.contains(&pki.server.key.display().to_string()), "{message}");

    // Garbage where the key should be.
    std::fs::write(&pki.server.key, "-----BEGIN PRIVATE KEY-----\nnot base64\n")?;
    let err = tls.reload().expect_err("a broken key must not be loaded");
    assert!(matches!(err, TlsError::BadPem { .. } | TlsError::NoPem { .. }), "{err:?}");

    // A missing file.
    std::fs::remove_file(&pki.server.key)?;
    let err = tls.reload().expect_err("a missing key must not be loaded");
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");

    // Still certificate B, for old and new connections alike.
    assert_eq!(tls.generation(), 1);
    assert_eq!(served_leaf(server.addr, &pki.client).await?, cert_b);
    assert_eq!(check(server.addr, pki.good_client()?).await?, ServingStatus::Serving);
    assert_stream_alive(&server.reporter, &mut stream).await?;

    // Fixing the files makes the next reload succeed.
    let c = pki.rotate_server_cert(10)?;
    assert_eq!(tls.reload()?, ReloadOutcome::Reloaded { generation: 2 });
    assert_eq!(served_leaf(server.addr, &pki.client).await?, der_of(&c.cert_pem)?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ca_in_the_bundle_admits_its_clients_after_reload() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let tls = ReloadableTls::load(&pki.server)?;
    let server = start_server(tls.clone()).await?;
    let mut stream = watch(server.addr, pki.good_client()?).await?;
    assert_eq!(next_status(&mut stream).await?, ServingStatus::Serving);

    // A client of the new CA, trusting the mesh CA for the server's certificate.
    let newcomer = pki.other_ca.issue("client-2", &[], 30)?;
    let err = check(server.addr, pki.client_tls(&newcomer.cert_pem, &newcomer.key_pem)?)
        .await
        .expect_err("the new CA is not trusted yet");
    assert!(explain_error(&*err).contains("refused our client certificate"), "{}", explain_error(&*err));

    // (d) Rotation: the CA file now holds both CAs.
    let bundle = format!("{}{}", pki.ca.cert_pem(), pki.other_ca.cert_pem());
    std::fs::write(&pki.server.ca, bundle)?;
    assert_eq!(tls.reload()?, ReloadOutcome::Reloaded { generation: 1 });

    let status = check(server.addr, pki.client_tls(&newcomer.cert_pem, &newcomer.key_pem)?).await?;
    assert_eq!(status, ServingStatus::Serving);
    // Clients of the old CA are still welcome, and the old stream lives on.
    assert_eq!(check(server.addr, pki.good_client()?).await?, ServingStatus::Serving);
    assert_stream_alive(&server.reporter, &mut stream).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_do_not_disturb_the_server() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let tls = ReloadableTls::load(&pki.server)?;
    let mut server = start_server(tls).await?;

    // A client that connects and never says anything holds one handshake slot, nothing more.
    let silent = TcpStream::connect(server.addr).await?;

    // Plaintext bytes (an HTTP/2 preface) where a TLS ClientHello belongs.
    let mut plaintext = TcpStream::connect(server.addr).await?;
    plaintext.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut answer = Vec::new();
    // The server answers with at most an alert, then closes.
    let _ = tokio::time::timeout(PROMPTLY, plaintext.read_to_end(&mut answer)).await?;

    // A TLS client without a certificate.
    let no_cert = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.server.ca)?))
        .domain_name("127.0.0.1");
    let err = check(server.addr, no_cert).await.expect_err("a client certificate is required");
    // Usually "the server requires a client certificate"; on a multi-threaded runtime hyper
    // sometimes reports only that the connection closed, whose explanation still says why.
    assert!(explain_error(&*err).contains("client certificate"), "{}", explain_error(&*err));

    // A client of another CA.
    let rogue = pki.other_ca.issue("rogue", &[], 30)?;
    let err = check(server.addr, pki.client_tls(&rogue.cert_pem, &rogue.key_pem)?)
        .await
        .expect_err("another CA's client is refused");
    assert!(explain_error(&*err).contains("refused our client certificate"), "{}", explain_error(&*err));

    // None of them reached the service, and a good client is served as ever.
    assert!(server.identities.try_recv().is_err(), "no refused client reached the service");
    assert_eq!(check(server.addr, pki.good_client()?).await?, ServingStatus::Serving);
    drop(silent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_still_see_the_client_certificate() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let tls = ReloadableTls::load(&pki.server)?;
    let mut server = start_server(tls).await?;

    assert_eq!(check(server.addr, pki.good_client()?).await?, ServingStatus::Serving);
    let identity = tokio::time::timeout(PROMPTLY, server.identities.recv())
        .await?
        .ok_or("the server saw no request")?
        .ok_or("peer_certs() must be filled when we terminate TLS")?;
    assert_eq!(identity.name, "client-1");
    Ok(())
}

#[test]
fn expiry_is_exposed_and_debug_hides_the_key() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let tls = ReloadableTls::load(&pki.server)?;
    let left = tls.expires_in().ok_or("a fresh certificate has not expired")?;
    assert!(left > Duration::from_secs(29 * 24 * 3600) && left <= Duration::from_secs(30 * 24 * 3600), "{left:?}");
    assert!(matches!(tls.current().expiry(), ragmesh_tls::Expiry::Valid { .. }));

    let soon = pki.ca.issue("master", &[], 3)?;
    soon.write(pki.dir.path(), "master")?;
    tls.reload()?;
    assert!(matches!(tls.current().expiry(), ragmesh_tls::Expiry::ExpiresSoon { .. }));

    let debug = format!("{tls:?}");
    let key = std::fs::read_to_string(pki.path("master.key"))?;
    let key_body = key.lines().nth(1).ok_or("a PEM key has a body")?;
    assert!(!debug.contains(key_body), "Debug must not print the key: {debug}");
    assert!(debug.contains("master"), "{debug}");
    Ok(())
}
