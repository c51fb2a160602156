//! A real agent (plaintext, on loopback) at its `--max-concurrent-requests` limit: more agent
//! API calls are refused at once with RESOURCE_EXHAUSTED, while grpc.health.v1 keeps answering.

use std::time::Duration;

use clap::Parser as _;
use ragmesh_agent::AgentHandle;
use ragmesh_config::AgentArgs;
use ragmesh_proto::v1::{self, agent_service_client::AgentServiceClient};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// How long any single call may take here; a call that queues behind the blocked one would hang.
const AT_ONCE: Duration = Duration::from_secs(5);

async fn start_agent(data_dir: &std::path::Path, limit: usize) -> AgentHandle {
    let limit = limit.to_string();
    let data_dir = data_dir.to_str().expect("utf-8 temp path");
    let args = AgentArgs::try_parse_from([
        "ragmesh-agent",
        "--insecure",
        "--name",
        "overload-test",
        "--listen",
        "127.0.0.1:0",
        // No master: the link retries in the background, the agent API serves regardless.
        "--master",
        "127.0.0.1:1",
        "--data-dir",
        data_dir,
        "--max-concurrent-requests",
        &limit,
    ])
    .expect("parse");
    let config = args.resolve().expect("valid config");
    let listener = tokio::net::TcpListener::bind(config.listen).await.expect("bind");
    ragmesh_agent::start(config, listener).await.expect("agent starts")
}

async fn search(channel: &Channel) -> Result<(), Status> {
    let request = v1::NodeSearchRequest { query: "mesh".into(), limit: 10, ..Default::default() };
    let mut client = AgentServiceClient::new(channel.clone());
    tokio::time::timeout(AT_ONCE, client.node_search(request)).await.expect("answered at once, not queued").map(drop)
}

async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(channel.clone());
    let call = client.check(HealthCheckRequest { service: service.into() });
    let response = tokio::time::timeout(AT_ONCE, call).await.expect("answered at once").expect("health check");
    response.into_inner().status()
}

/// Polls `search` until its code satisfies `wanted`, for at most 10 s.
async fn search_until(channel: &Channel, what: &str, wanted: impl Fn(Code) -> bool) -> Status {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = search(channel).await.expect_err("the test never sends a signed context");
        if wanted(status.code()) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: still {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts a NodeSearch whose request body never arrives.
async fn hold_the_slot(
    channel: &Channel,
) -> tokio::task::JoinHandle<Result<tonic::Response<v1::NodeSearchResponse>, Status>> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    tokio::spawn(async move {
        let codec = tonic_prost::ProstCodec::<v1::NodeSearchRequest, v1::NodeSearchResponse>::default();
        let never = tokio_stream::pending::<v1::NodeSearchRequest>();
        let path = PathAndQuery::from_static("/ragmesh.v1.AgentService/NodeSearch");
        grpc.client_streaming(tonic::Request::new(never), path, codec).await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_at_its_limit_sheds_api_calls_at_once_and_still_answers_health_checks() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let agent = start_agent(data_dir.path(), 1).await;
    let channel = Endpoint::from_shared(format!("http://{}", agent.local_addr()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health(&channel, "ragmesh.v1.AgentService").await != ServingStatus::Serving {
        assert!(tokio::time::Instant::now() < deadline, "the index did not open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A NodeSearch whose request body never arrives holds the only slot for as long as the
    // client keeps it open, as a blocked handler would. If it arrives while a probe holds the
    // slot, it is itself shed: then it is sent again, until it holds the slot.
    let mut blocked = hold_the_slot(&channel).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let shed = loop {
        let status = search(&channel).await.expect_err("the test never sends a signed context");
        if status.code() == Code::ResourceExhausted {
            break status;
        }
        if blocked.is_finished() {
            blocked = hold_the_slot(&channel).await;
        }
        assert!(tokio::time::Instant::now() < deadline, "the second call is shed: still {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        shed.message(),
        "overloaded: already serving the maximum of 1 concurrent requests (--max-concurrent-requests 1); retry with backoff, or raise --max-concurrent-requests"
    );
    // Probes are not behind the limit.
    assert_eq!(health(&channel, "").await, ServingStatus::Serving);
    assert_eq!(health(&channel, "ragmesh.v1.AgentService").await, ServingStatus::Serving);
    assert_eq!(search(&channel).await.expect_err("still full").code(), Code::ResourceExhausted);

    // The blocked call goes away (its stream is reset): its slot serves the next call, which
    // gets as far as the handler (refused there: no signed context from the master).
    blocked.abort();
    let served = search_until(&channel, "the slot is freed", |code| code != Code::ResourceExhausted).await;
    assert_eq!(served.code(), Code::Unauthenticated, "{served:?}");

    agent.shutdown().await.expect("agent stops");
}
