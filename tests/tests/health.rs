//! grpc.health.v1 on both daemons: NOT_SERVING while their state is not usable yet (the master's
//! registry store, the agent's index, here held by another "process"), SERVING once it is, with
//! Check and Watch; and the data plane answers UNAVAILABLE with a reason meanwhile.

use std::time::Duration;

use ragmesh_e2e::{Mesh, trace_init};
use ragmesh_proto::v1::{self, master_service_client::MasterServiceClient};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn channel(addr: std::net::SocketAddr, tls: &ragmesh_tls::TlsFiles) -> Channel {
    let loaded = tls.load().expect("client tls");
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(loaded.client_config("127.0.0.1"))
        .expect("tls")
        .connect()
        .await
        .expect("connect")
}

async fn check(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let response = health.check(HealthCheckRequest { service: service.into() }).await.expect("check");
    response.into_inner().status()
}

/// Waits on a Watch stream until it reports SERVING.
async fn watch_until_serving(health: &mut HealthClient<Channel>, service: &str) {
    let mut stream = health.watch(HealthCheckRequest { service: service.into() }).await.expect("watch").into_inner();
    let serving = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(update) = stream.message().await.expect("watch stream") {
            if update.status() == ServingStatus::Serving {
                return;
            }
        }
        panic!("watch stream ended before SERVING");
    })
    .await;
    serving.expect("SERVING within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_is_not_serving_until_its_registry_loads() {
    trace_init();
    let mesh = Mesh::builder().agents(0).start().await;
    // A second master on a fresh data directory whose registry store is held by "another process".
    let dir = tempfile::tempdir().expect("tempdir");
    let held = ragmesh_store::SledStore::open(&dir.path().join("state")).expect("hold the store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = ragmesh_config::MasterConfig {
        listen: addr,
        data_dir: dir.path().to_owned(),
        tls: Some(mesh.pki.issue("master")),
        heartbeat_timeout: ragmesh_e2e::HEARTBEAT_TIMEOUT,
        max_heartbeats_per_second: ragmesh_config::DEFAULT_MAX_HEARTBEATS_PER_SECOND,
        search_timeout: ragmesh_e2e::SEARCH_TIMEOUT,
        max_search_timeout: ragmesh_e2e::MAX_SEARCH_TIMEOUT,
        access: ragmesh_config::AccessConfig::default(),
        replication: ragmesh_config::ReplicationConfig::default(),
        resilience: ragmesh_config::ResilienceConfig::default(),
        actions: ragmesh_config::ActionsConfig::default(),
        log: "info".into(),
        events: ragmesh_config::EventsConfig::default(),
        cache: ragmesh_config::CacheConfig::default(),
    };
    let master = ragmesh_master::start(config, listener).await.expect("starts");
    let channel = channel(addr, &mesh.client_tls()).await;
    let mut health = HealthClient::new(channel.clone());
    assert_eq!(check(&mut health, "").await, ServingStatus::NotServing);
    assert_eq!(check(&mut health, "ragmesh.v1.MasterService").await, ServingStatus::NotServing);
    let status = MasterServiceClient::new(channel)
        .search(v1::SearchRequest { query: "x".into(), ..Default::default() })
        .await
        .expect_err("not ready");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("still loading"), "{}", status.message());

    drop(held);
    watch_until_serving(&mut health, "ragmesh.v1.MasterService").await;
    assert_eq!(check(&mut health, "").await, ServingStatus::Serving);
    assert_eq!(check(&mut health, "ragmesh.v1.MembershipService").await, ServingStatus::Serving);
    master.shutdown().await.expect("stops");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_is_not_serving_until_its_index_opens() {
    trace_init();
    let mesh = Mesh::builder().agents(0).start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let held = ragmesh_index::DocumentIndex::open(&dir.path().join("index")).expect("hold the index");
    let config = mesh.agent_config("agent-5", dir.path().to_owned());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agent = ragmesh_agent::start(config, listener).await.expect("starts");
    let mut health = HealthClient::new(channel(agent.local_addr(), &mesh.client_tls()).await);
    assert_eq!(check(&mut health, "").await, ServingStatus::NotServing);
    assert_eq!(check(&mut health, "ragmesh.v1.AgentService").await, ServingStatus::NotServing);
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    drop(held);
    watch_until_serving(&mut health, "ragmesh.v1.AgentService").await;
    // Once the index is open the agent registers with the master.
    mesh.wait_state("agent-5", ragmesh_master::node::NodeState::Up, Duration::from_secs(10)).await;
    agent.shutdown().await.expect("stops");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_near_expiry_is_reported_in_health_without_taking_the_node_out() {
    trace_init();
    let mesh = Mesh::builder().agents(0).start().await;
    let mut master_health = HealthClient::new(channel(mesh.master_addr(), &mesh.client_tls()).await);
    assert_eq!(check(&mut master_health, ragmesh_server::CERTIFICATE_HEALTH).await, ServingStatus::Serving);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = mesh.agent_config("agent-6", dir.path().to_owned());
    config.tls = Some(mesh.pki.issue_for_days("agent-6", 7));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agent = ragmesh_agent::start(config, listener).await.expect("starts");
    mesh.wait_state("agent-6", ragmesh_master::node::NodeState::Up, Duration::from_secs(10)).await;
    let mut agent_health = HealthClient::new(channel(agent.local_addr(), &mesh.client_tls()).await);
    assert_eq!(check(&mut agent_health, ragmesh_server::CERTIFICATE_HEALTH).await, ServingStatus::NotServing);
    assert_eq!(check(&mut agent_health, "ragmesh.v1.AgentService").await, ServingStatus::Serving);
    agent.shutdown().await.expect("stops");
    mesh.shutdown().await;
}
