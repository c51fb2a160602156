//! A real agent (plaintext, on loopback) applies `--max-message-bytes` to its API and answers an
//! oversized request in gRPC terms.

use clap::Parser as _;
use prost::Message as _;
use ragmesh_config::AgentArgs;
use ragmesh_proto::v1;
use ragmesh_test_util::unary_raw;
use tonic::Code;
use tonic::codegen::Bytes;
use tonic::transport::Endpoint;

/// Regression: the agent parsed --max-message-bytes and then ignored it (tonic's 4 MiB applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_ignored_max_message_bytes() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let data_dir_arg = data_dir.path().to_str().expect("utf-8 temp path");
    let args = AgentArgs::try_parse_from([
        "ragmesh-agent",
        "--insecure",
        "--name",
        "limit-test",
        "--listen",
        "127.0.0.1:0",
        "--master",
        "127.0.0.1:1",
        "--data-dir",
        data_dir_arg,
        "--max-message-bytes",
        "2048",
    ])
    .expect("parse");
    let config = args.resolve().expect("valid config");
    let listener = tokio::net::TcpListener::bind(config.listen).await.expect("bind");
    let agent = ragmesh_agent::start(config, listener).await.expect("agent starts");
    let channel =
        Endpoint::from_shared(format!("http://{}", agent.local_addr())).expect("uri").connect().await.expect("connect");

    let oversized = Bytes::from(vec![0u8; 4096]);
    let status =
        unary_raw(channel.clone(), "/ragmesh.v1.AgentService/NodeSearch", oversized).await.expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "request message of 4096 bytes exceeds the limit of 2048 bytes (--max-message-bytes): send smaller messages (fewer documents per call) or raise --max-message-bytes on the server"
    );
    // A valid request under the limit gets as far as the handler (refused there: no signed context).
    let request = v1::NodeSearchRequest { query: "x".repeat(1000), limit: 10, ..Default::default() };
    let status = unary_raw(channel, "/ragmesh.v1.AgentService/NodeSearch", request.encode_to_vec().into())
        .await
        .expect_err("no context");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    agent.shutdown().await.expect("agent stops");
}
