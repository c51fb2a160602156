//! The rate-limit layer in a real tonic server on loopback, called by a real tonic client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::HeaderName;
use ragmesh_stack::rate_limit::{
    KeyExtractor, RETRY_AFTER, RETRY_AFTER_MS, RateLimitLayer, RateLimits, key_from_extension, key_from_header,
    key_from_peer_ip,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PRINCIPAL: &str = "x-ragmesh-principal";

/// A health server behind the rate-limit layer on 127.0.0.1:0, stopped when the sender drops.
struct TestServer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start<K: KeyExtractor + std::fmt::Debug>(layer: RateLimitLayer<K>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::builder().layer(layer).add_service(health);
        let task = tokio::spawn(server.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stopped.await;
        }));
        Ok(Self { addr, _stop: stop, task })
    }

    async fn client(&self) -> anyhow::Result<HealthClient<Channel>> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))?.connect().await?;
        Ok(HealthClient::new(channel))
    }

    async fn stop(self) -> anyhow::Result<()> {
        drop(self._stop);
        self.task.await?.context("server stopped with an error")
    }
}

async fn check(client: &mut HealthClient<Channel>, principal: Option<&str>) -> Result<(), Status> {
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    if let Some(principal) = principal {
        request.metadata_mut().insert(PRINCIPAL, principal.parse().map_err(|_| Status::internal("bad principal"))?);
    }
    client.check(request).await.map(drop)
}

fn metadata_number(status: &Status, key: &str) -> anyhow::Result<u64> {
    let value = status.metadata().get(key).with_context(|| format!("no {key} in {status:?}"))?;
    Ok(value.to_str()?.parse()?)
}

#[tokio::test]
async fn burst_passes_then_resource_exhausted_with_retry_after_then_passes_again() -> anyhow::Result<()> {
    let limits = RateLimits::from_config(5, 3)?;
    let server =
        TestServer::start(RateLimitLayer::new(limits, key_from_header(HeaderName::from_static(PRINCIPAL)))).await?;
    let mut client = server.client().await?;

    for n in 0..3 {
        check(&mut client, Some("subject:alice")).await.with_context(|| format!("request {n} is within the burst"))?;
    }
    let refused = check(&mut client, Some("subject:alice")).await.expect_err("the fourth request is over the burst");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let retry_after_ms = metadata_number(&refused, RETRY_AFTER_MS)?;
    assert!((1..=200).contains(&retry_after_ms), "at 5/s a cell is back within 200 ms, not {retry_after_ms}");
    assert_eq!(metadata_number(&refused, RETRY_AFTER)?, 1);
    assert_eq!(
        refused.message(),
        format!(
            "rate limit exceeded for subject:alice: at most 5 requests per second (burst 3); retry after {retry_after_ms} ms"
        )
    );

    // Other principals and requests without one are not affected.
    check(&mut client, Some("subject:bob")).await?;
    check(&mut client, None).await?;

    // Waiting as told is enough: the request passes within twice the retry-after time.
    let deadline = Instant::now() + 2 * Duration::from_millis(retry_after_ms);
    tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
    loop {
        match check(&mut client, Some("subject:alice")).await {
            Ok(()) => break,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(status) => anyhow::bail!("still refused after twice the retry-after time: {status:?}"),
        }
    }
    server.stop().await
}

#[tokio::test]
async fn without_an_authenticated_principal_the_peer_address_is_the_key() -> anyhow::Result<()> {
    let limits = RateLimits::from_config(1, 2)?;
    let server = TestServer::start(RateLimitLayer::new(limits, key_from_extension().or(key_from_peer_ip()))).await?;
    let mut client = server.client().await?;

    check(&mut client, None).await?;
    check(&mut client, None).await?;
    let refused = check(&mut client, None).await.expect_err("the peer's burst is spent");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().starts_with("rate limit exceeded for peer:127.0.0.1: "), "{}", refused.message());
    server.stop().await
}
