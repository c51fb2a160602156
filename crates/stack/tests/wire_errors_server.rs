//! The wire-errors layer in a real tonic server on loopback (plaintext), called with raw bytes:
//! what tonic's codec refuses reaches the caller in gRPC terms, what a handler returns does not
//! change.

use std::net::SocketAddr;

use bytes::Bytes;
use prost::Message as _;
use ragmesh_stack::wire_errors::WireErrorsLayer;
use ragmesh_test_util::{server_streaming_raw, unary_raw};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const CHECK: &str = "/grpc.health.v1.Health/Check";
const WATCH: &str = "/grpc.health.v1.Health/Watch";
const LIMIT: usize = 256;
/// Not protobuf: field 1 with wire type 7, which does not exist.
const GARBAGE: &[u8] = b"\x0f\xff\xff";

/// A health service whose handler returns, for some service names, statuses that look exactly
/// like tonic's codec errors: those are the handler's and must reach the caller unchanged.
#[derive(Debug)]
struct Lookalikes;

fn answer(service: &str) -> Result<HealthCheckResponse, Status> {
    match service {
        "lookalike-decode" => Err(Status::internal("failed to decode Protobuf message: invalid varint")),
        "lookalike-too-large" => Err(Status::out_of_range(
            "Error, decoded message length too large: found 9999 bytes, the limit is: 256 bytes",
        )),
        _ => Ok(HealthCheckResponse { status: ServingStatus::Serving.into() }),
    }
}

#[tonic::async_trait]
impl Health for Lookalikes {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        answer(&request.into_inner().service).map(Response::new)
    }

    type WatchStream = tokio_stream::Once<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let first = answer(&request.into_inner().service)?;
        Ok(Response::new(tokio_stream::once(Ok(first))))
    }
}

struct TestServer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl TestServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let health = HealthServer::new(Lookalikes).max_decoding_message_size(LIMIT);
        let server = Server::builder().layer(WireErrorsLayer::new("--max-message-bytes")).add_service(health);
        tokio::spawn(server.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stopped.await;
        }));
        TestServer { addr, _stop: stop }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).expect("uri").connect().await.expect("connect")
    }
}

fn check_request(service: &str) -> Bytes {
    HealthCheckRequest { service: service.to_owned() }.encode_to_vec().into()
}

#[tokio::test]
async fn a_body_that_is_not_protobuf_is_invalid_argument_for_unary_and_server_streaming_calls() {
    let server = TestServer::start().await;
    let status = unary_raw(server.channel().await, CHECK, Bytes::from_static(GARBAGE)).await.expect_err("garbage");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "request to /grpc.health.v1.Health/Check is not a valid protobuf message for that method (invalid wire type value: 7): check that the client uses the server's .proto files"
    );
    let status =
        server_streaming_raw(server.channel().await, WATCH, Bytes::from_static(GARBAGE)).await.expect_err("garbage");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("request to /grpc.health.v1.Health/Watch is not a valid protobuf"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_message_over_the_limit_is_resource_exhausted_naming_the_limit_and_the_flag() {
    let server = TestServer::start().await;
    let big = check_request(&"x".repeat(1000));
    assert_eq!(big.len(), 1003, "tag, two length bytes, 1000 bytes");
    let status = unary_raw(server.channel().await, CHECK, big.clone()).await.expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "request message of 1003 bytes exceeds the limit of 256 bytes (--max-message-bytes): send smaller messages (fewer documents per call) or raise --max-message-bytes on the server"
    );
    let status = server_streaming_raw(server.channel().await, WATCH, big).await.expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test]
async fn statuses_a_handler_returns_pass_unchanged_even_when_they_look_like_tonics() {
    let server = TestServer::start().await;
    let status =
        unary_raw(server.channel().await, CHECK, check_request("lookalike-decode")).await.expect_err("handler");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "failed to decode Protobuf message: invalid varint");
    let status =
        unary_raw(server.channel().await, CHECK, check_request("lookalike-too-large")).await.expect_err("handler");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let status = server_streaming_raw(server.channel().await, WATCH, check_request("lookalike-decode"))
        .await
        .expect_err("handler");
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    let ok = unary_raw(server.channel().await, CHECK, check_request("")).await.expect("a valid request is served");
    assert_eq!(HealthCheckResponse::decode(ok).expect("a health response").status(), ServingStatus::Serving);
}
