//! Certificate hot reload in running daemons: new certificate files for the master and for an
//! agent are picked up without a restart, new connections get them, and the agent's health
//! stream, opened before the reload, keeps flowing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ragmesh_agent::LinkStatus;
use ragmesh_e2e::{Mesh, docs_for, outcome_of, trace_init, wait_for};
use ragmesh_proto::v1::{self, OutcomeStatus};
use ragmesh_tls::TlsFiles;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// File polling (2 s) plus settling, with room for a loaded machine.
const RELOAD_WITHIN: Duration = Duration::from_secs(20);

/// The leaf certificate a server at `addr` presents to a new connection from `client`.
async fn served_leaf(addr: SocketAddr, client: &TlsFiles) -> Option<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&client.ca).expect("read ca") {
        roots.add(ca.expect("ca pem")).expect("add ca");
    }
    let chain = CertificateDer::pem_file_iter(&client.cert).expect("read cert").collect::<Result<Vec<_>, _>>();
    let key = PrivateKeyDer::from_pem_file(&client.key).expect("read key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain.expect("cert pem"), key)
        .expect("client config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from("127.0.0.1").expect("ip name");
    let stream = TlsConnector::from(Arc::new(config)).connect(name, tcp).await.ok()?;
    stream.get_ref().1.peer_certificates()?.first().map(|leaf| leaf.clone().into_owned())
}

fn cert_of(files: &TlsFiles) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(&files.cert).expect("read cert")
}

fn session(link: &LinkStatus) -> String {
    match link {
        LinkStatus::Attached { session } => session.clone(),
        other => panic!("the agent should be attached, it is {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_reload_certificates_without_dropping_the_health_stream() {
    trace_init();
    let mesh = Mesh::builder().agents(1).start().await;
    let agent = mesh.agent_name(0).to_owned();
    let client = mesh.client_tls();
    mesh.ingest(0, docs_for(0, 3)).await;
    let link = mesh.agent_link(0);
    let attached = session(&link.borrow());
    let registry = mesh.master().registry().expect("registry loaded").clone();

    // The master's files get a new certificate; the next connection sees it.
    let before = served_leaf(mesh.master_addr(), &client).await.expect("master handshake");
    let master_files = mesh.pki.issue("master");
    let renewed = cert_of(&master_files);
    assert_ne!(before, renewed);
    let reloaded_at = SystemTime::now();
    wait_for("the master to serve its new certificate", RELOAD_WITHIN, || async {
        (served_leaf(mesh.master_addr(), &client).await? == renewed).then_some(())
    })
    .await;

    // The health stream opened before the reload still carries heartbeats...
    wait_for("a heartbeat on the old stream after the reload", RELOAD_WITHIN, || async {
        let view = registry.get(&agent)?;
        view.last_heartbeat.filter(|at| *at > reloaded_at).map(|_| ())
    })
    .await;
    // ...on the same session: the agent never reconnected.
    assert_eq!(session(&link.borrow()), attached);

    // The agent's files get a new certificate too.
    let agent_files = mesh.pki.issue(&agent);
    let renewed = cert_of(&agent_files);
    wait_for("the agent to serve its new certificate", RELOAD_WITHIN, || async {
        (served_leaf(mesh.agent_addr(0), &client).await? == renewed).then_some(())
    })
    .await;
    assert_eq!(session(&link.borrow()), attached);

    // Federated search works with both new certificates: the master's client for the node is
    // rebuilt with the master's new material and verifies the agent's new certificate.
    let response = mesh.search(v1::SearchRequest { query: "mesh".into(), limit: 10, ..Default::default() }).await;
    let outcome = outcome_of(&response, &agent);
    assert_eq!(outcome.status(), OutcomeStatus::Ok, "{outcome:?}");
    assert_eq!(outcome.hit_count, 3);
    mesh.shutdown().await;
}
