//! mTLS is on by default and refuses, with a readable reason: a client without a certificate,
//! a certificate from another CA, a client that does not trust the mesh CA, a plaintext client,
//! an agent whose certificate names another node, and an agent of another protocol major.

use std::time::Duration;

use ragmesh_agent::LinkStatus;
use ragmesh_e2e::{Mesh, trace_init};
use ragmesh_proto::v1::{
    self, master_service_client::MasterServiceClient, membership_service_client::MembershipServiceClient,
};
use ragmesh_test_util::TestPki;
use ragmesh_tls::TlsFiles;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Calls ListNodes over `channel` and returns the readable reason it failed (`tls`: whether the
/// client used TLS, which tells a refused certificate from a plaintext client when the server
/// just hangs up).
async fn refused(channel: Result<Channel, String>, tls: bool) -> String {
    let channel = match channel {
        Ok(channel) => channel,
        Err(reason) => return reason,
    };
    let status = MasterServiceClient::new(channel)
        .list_nodes(v1::ListNodesRequest {})
        .await
        .expect_err("the master must refuse this client");
    use std::error::Error as _;
    match status.source() {
        Some(source) => {
            let context = ragmesh_tls::ErrorContext { tls: Some(tls), ..Default::default() };
            ragmesh_tls::explain_error_in(source, &context)
        }
        None => status.message().to_owned(),
    }
}

async fn connect(mesh: &Mesh, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://{}", mesh.master_addr()))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .map_err(|e| ragmesh_tls::explain_error(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_mesh_certificate_are_refused_with_a_clear_reason() {
    trace_init();
    let mesh = Mesh::builder().agents(1).start().await;
    let mesh_ca = Certificate::from_pem(std::fs::read(mesh.pki.ca_pem()).expect("ca"));

    // A client that trusts the mesh CA but presents no certificate.
    let no_cert = ClientTlsConfig::new().ca_certificate(mesh_ca.clone()).domain_name("127.0.0.1");
    let reason = refused(connect(&mesh, no_cert).await, true).await;
    println!("no client certificate: {reason}");
    assert!(reason.contains("client certificate"), "{reason}");

    // A client whose certificate comes from another CA.
    let other = TestPki::new();
    let foreign = other.issue("client");
    let foreign = TlsFiles { ca: mesh.pki.ca_pem(), ..foreign };
    // Our own loader already refuses to use such a pair, before any connection...
    let local = foreign.load().expect_err("loader checks the chain");
    assert!(local.to_string().contains("is not signed by the CA"), "{local}");
    // ...so present it with a hand-built config, as a foreign client would.
    let identity =
        Identity::from_pem(std::fs::read(&foreign.cert).expect("cert"), std::fs::read(&foreign.key).expect("key"));
    let foreign_tls =
        ClientTlsConfig::new().ca_certificate(mesh_ca.clone()).identity(identity).domain_name("127.0.0.1");
    let reason = refused(connect(&mesh, foreign_tls).await, true).await;
    println!("certificate from another CA: {reason}");
    assert!(reason.contains("refused our client certificate"), "{reason}");

    // A client that does not trust the mesh CA (it would talk to an impostor master otherwise).
    let client = mesh.client_tls();
    let identity =
        Identity::from_pem(std::fs::read(&client.cert).expect("cert"), std::fs::read(&client.key).expect("key"));
    let other_ca = Certificate::from_pem(std::fs::read(other.ca_pem()).expect("other ca"));
    let distrust = ClientTlsConfig::new().ca_certificate(other_ca).identity(identity).domain_name("127.0.0.1");
    let reason = refused(connect(&mesh, distrust).await, true).await;
    println!("server certificate from an unknown CA: {reason}");
    assert!(reason.contains("server's certificate is not signed by the CA"), "{reason}");

    // A plaintext client on the TLS port.
    let plaintext = Endpoint::from_shared(format!("http://{}", mesh.master_addr()))
        .expect("uri")
        .connect()
        .await
        .map_err(|e| ragmesh_tls::explain_error(&e));
    let reason = refused(plaintext, false).await;
    println!("plaintext client: {reason}");
    assert!(reason.contains("speaks TLS"), "{reason}");

    // And the legitimate client still works.
    let ok = mesh.client().await.list_nodes(v1::ListNodesRequest {}).await.expect("authorised client");
    assert_eq!(ok.into_inner().nodes.len(), 1);
    mesh.shutdown().await;
}

fn register_request(name: &str) -> v1::RegisterRequest {
    v1::RegisterRequest {
        node_name: name.into(),
        advertised_address: "127.0.0.1:1".into(),
        version: "test".into(),
        protocol_major: ragmesh_proto::PROTOCOL_MAJOR,
        protocol_minor: ragmesh_proto::PROTOCOL_MINOR,
        heartbeat_interval_ms: 1000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_register_under_another_name_or_protocol() {
    trace_init();
    let mesh = Mesh::builder().agents(1).start().await;
    let channel = mesh.channel_with(&mesh.pki.issue("agent-7")).await.expect("agent-7 connects");
    let mut membership = MembershipServiceClient::new(channel);

    let status = membership.register(register_request("agent-1")).await.expect_err("name mismatch");
    println!("name mismatch: {:?}: {}", status.code(), status.message());
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("\"agent-7\"") && status.message().contains("\"agent-1\""),
        "{}",
        status.message()
    );

    let mut future = register_request("agent-7");
    future.protocol_major = ragmesh_proto::PROTOCOL_MAJOR + 1;
    let status = membership.register(future).await.expect_err("protocol mismatch");
    println!("protocol mismatch: {:?}: {}", status.code(), status.message());
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let agent_version = format!("{}.{}", ragmesh_proto::PROTOCOL_MAJOR + 1, ragmesh_proto::PROTOCOL_MINOR);
    let master_version = format!("{}.{}", ragmesh_proto::PROTOCOL_MAJOR, ragmesh_proto::PROTOCOL_MINOR);
    assert!(
        status.message().contains(&agent_version) && status.message().contains(&master_version),
        "{}",
        status.message()
    );

    // A health stream cannot be opened for another node's session either.
    let mut admitted = register_request("agent-7");
    admitted.join_token = mesh.create_join_token(1).await;
    let session = membership.register(admitted).await.expect("own name").into_inner().session_id;
    let hijack = v1::HealthStreamRequest {
        node_name: "agent-1".into(),
        session_id: session,
        heartbeat: Some(v1::Heartbeat::default()),
        in_doubt_transactions: Vec::new(),
    };
    let status = membership.health_stream(tokio_stream::iter(vec![hijack])).await.expect_err("hijack refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // The registry still holds exactly the real agent-1 and the honest agent-7.
    let registry = mesh.master().registry().expect("registry");
    assert_eq!(registry.get("agent-1").expect("agent-1").record.address, mesh.agent_addr(0).to_string());
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_with_a_mismatched_certificate_is_refused_and_says_why() {
    trace_init();
    let mesh = Mesh::builder().agents(0).start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = mesh.agent_config("agent-9", dir.path().to_owned());
    config.tls = Some(mesh.pki.issue("agent-8"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agent = ragmesh_agent::start(config, listener).await.expect("agent starts");
    let mut link = agent.link_status();
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        link.wait_for(|s| matches!(s, LinkStatus::Connecting(Some(e)) if e.contains("certificate names"))),
    )
    .await
    .expect("the agent reports the refusal")
    .expect("link status")
    .clone();
    println!("agent sees: {status:?}");
    assert!(mesh.master().registry().expect("registry").get("agent-9").is_none(), "never admitted");
    agent.shutdown().await.expect("agent stops");
    mesh.shutdown().await;
}
