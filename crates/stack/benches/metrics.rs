//! Benchmark: the cost of the gRPC server metrics per request, layer on against off, side by
//! side in one run, with the ratio: (1) the layer alone over a service answering at once, body
//! read to its trailers (the layer's whole overhead, in ns); (2) unary gRPC calls to a real tonic
//! server on loopback (grpc.health.v1 Check), plain HTTP/2, with and without the layer.
//! `cargo bench -p ragmesh-stack --bench metrics`.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use prometheus_client::registry::Registry;
use ragmesh_stack::metrics::{GrpcMetricsLayer, KnownMethods};
use tower::{Layer, Service, ServiceExt, service_fn};

const REQUESTS: usize = 200_000;
const CALLS: usize = 5_000;
const ROUNDS: usize = 5;
const PATH: &str = "/grpc.health.v1.Health/Check";

type TestBody = http_body_util::combinators::WithTrailers<
    Full<Bytes>,
    std::future::Ready<Option<Result<http::HeaderMap, Infallible>>>,
>;

fn inner() -> impl Service<http::Request<()>, Response = http::Response<TestBody>, Error = Infallible> + Clone {
    service_fn(|request: http::Request<()>| async move {
        black_box(&request);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = Full::new(Bytes::from_static(b"\0\0\0\0\x02\x08\x01"))
            .with_trailers(std::future::ready(Some(Ok(trailers))));
        Ok::<_, Infallible>(http::Response::new(body))
    })
}

/// Best of `ROUNDS`, ns per request (call, then read the body to its end).
async fn measure<S, B>(mut service: S) -> f64
where
    S: Service<http::Request<()>, Response = http::Response<B>, Error = Infallible>,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..REQUESTS {
            let request = http::Request::builder().uri(PATH).body(()).expect("request");
            let ready = match service.ready().await {
                Ok(ready) => ready,
                Err(never) => match never {},
            };
            let response = match ready.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            black_box(response.into_body().collect().await.expect("body"));
        }
        best = best.min(start.elapsed());
    }
    best.as_nanos() as f64 / REQUESTS as f64
}

fn layer() -> (GrpcMetricsLayer, Registry) {
    let mut registry = Registry::default();
    let known = KnownMethods::from_descriptor_sets(&ragmesh_proto::reflection::DESCRIPTOR_SETS);
    (GrpcMetricsLayer::register(&mut registry, known), registry)
}

/// A tonic server with grpc.health.v1 on loopback, with or without the layer; best of `ROUNDS`,
/// µs per sequential unary call.
async fn calls(with_metrics: bool) -> Result<f64, Box<dyn std::error::Error>> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let (metrics, registry) = layer();
    let server = if with_metrics {
        let router = tonic::transport::Server::builder().layer(metrics).add_service(health);
        tokio::spawn(async move { router.serve_with_incoming(incoming).await })
    } else {
        let router = tonic::transport::Server::builder().add_service(health);
        tokio::spawn(async move { router.serve_with_incoming(incoming).await })
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..CALLS {
            black_box(client.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?);
        }
        best = best.min(start.elapsed());
    }
    if with_metrics {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        let handled = format!(
            r#"grpc_server_handled_total{{grpc_service="grpc.health.v1.Health",grpc_method="Check",grpc_code="OK"}} {}"#,
            CALLS * ROUNDS
        );
        assert!(text.contains(&handled), "every call counted: {text}");
    }
    server.abort();
    Ok(best.as_secs_f64() * 1e6 / CALLS as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let bare = measure(inner()).await;
        let (metrics, _registry) = layer();
        let measured = measure(metrics.layer(inner())).await;
        println!("metrics (layer alone): {REQUESTS} requests per run, best of {ROUNDS} runs");
        println!("  bare service                 {bare:8.1} ns/request");
        println!("  + gRPC server metrics        {measured:8.1} ns/request  ({:.2}x bare, +{:.1} ns)", measured / bare, measured - bare);
        // Alternated, best of each: the loopback numbers move with the machine's other load.
        let (mut off, mut on) = (f64::MAX, f64::MAX);
        for round in 0..4 {
            // Each goes first half of the time: the first server of a pair runs on a colder machine.
            if round % 2 == 0 {
                off = off.min(calls(false).await?);
                on = on.min(calls(true).await?);
            } else {
                on = on.min(calls(true).await?);
                off = off.min(calls(false).await?);
            }
        }
        println!("metrics (unary gRPC over loopback, grpc.health.v1 Check): {CALLS} sequential calls per run, best of {ROUNDS} x 4, alternated");
        println!("  metrics off                  {off:8.1} µs/call");
        println!("  metrics on                   {on:8.1} µs/call  ({:.3}x off)", on / off);
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
