//! Requests tonic cannot decode, sent over mTLS to a real master and a real agent, are answered
//! in gRPC terms: INVALID_ARGUMENT for a body that is not protobuf (tonic says INTERNAL).

use ragmesh_e2e::{Mesh, trace_init};
use ragmesh_test_util::unary_raw;
use tonic::Code;
use tonic::codegen::Bytes;
use tonic::transport::{Channel, Endpoint};

/// Not protobuf: field 1 with wire type 7, which does not exist.
const GARBAGE: &[u8] = b"\x0f\xff\xff";

async fn agent_channel(mesh: &Mesh) -> Channel {
    let tls = mesh.client_tls().load().expect("client certificate");
    Endpoint::from_shared(format!("https://{}", mesh.agent_addr(0)))
        .expect("agent uri")
        .tls_config(tls.client_config("127.0.0.1"))
        .expect("tls config")
        .connect()
        .await
        .expect("connect to the agent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_body_that_is_not_protobuf_is_invalid_argument_on_master_and_agent() {
    trace_init();
    let mesh = Mesh::builder().agents(1).start().await;

    let master = mesh.channel_with(&mesh.client_tls()).await.expect("connect to the master");
    let status = unary_raw(master, "/ragmesh.v1.MasterService/Search", Bytes::from_static(GARBAGE))
        .await
        .expect_err("garbage is refused");
    println!("master: {:?}: {}", status.code(), status.message());
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(
            "request to /ragmesh.v1.MasterService/Search is not a valid protobuf message for that method ("
        ),
        "{status:?}"
    );

    let status =
        unary_raw(agent_channel(&mesh).await, "/ragmesh.v1.AgentService/NodeSearch", Bytes::from_static(GARBAGE))
            .await
            .expect_err("garbage is refused");
    println!("agent: {:?}: {}", status.code(), status.message());
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("/ragmesh.v1.AgentService/NodeSearch is not a valid protobuf"), "{status:?}");

    // Both keep serving.
    mesh.search(ragmesh_proto::v1::SearchRequest { query: "mesh".into(), ..Default::default() }).await;
    mesh.shutdown().await;
}
