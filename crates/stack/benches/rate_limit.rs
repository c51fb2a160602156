//! Benchmark: nanoseconds per admitted request through the rate-limit layer against the bare inner
//! service, side by side in one run, with the ratio. `cargo bench -p ragmesh-stack`.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use http::HeaderName;
use ragmesh_stack::rate_limit::{RateLimitLayer, RateLimits, key_from_header};
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt, service_fn};

const REQUESTS: usize = 500_000;
const ROUNDS: usize = 5;
const PRINCIPAL: &str = "x-ragmesh-principal";

fn inner() -> impl Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone {
    service_fn(|request: http::Request<Body>| async move {
        black_box(&request);
        Ok::<_, Infallible>(http::Response::new(Body::empty()))
    })
}

fn requests(principals: &[String]) -> Vec<http::Request<Body>> {
    (0..REQUESTS)
        .map(|n| {
            http::Request::builder()
                .uri("/ragmesh.v1.Master/Search")
                .header(PRINCIPAL, principals[n % principals.len()].as_str())
                .body(Body::empty())
                .expect("valid request")
        })
        .collect()
}

/// The best of `ROUNDS` runs, in nanoseconds per request; panics if any request was refused,
/// as this measures admitted requests only.
async fn measure<S>(mut service: S, principals: &[String]) -> f64
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let batch = requests(principals);
        let start = Instant::now();
        for request in batch {
            let ready = match service.ready().await {
                Ok(ready) => ready,
                Err(never) => match never {},
            };
            let response = match ready.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            assert!(response.headers().get("grpc-status").is_none(), "a request was refused; raise the quota");
            black_box(response);
        }
        best = best.min(start.elapsed());
    }
    best.as_nanos() as f64 / REQUESTS as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    // A quota no benchmark run reaches: every request is admitted and goes through the full check.
    let limits = RateLimits::from_config(1_000_000_000, 1_000_000_000)?;
    let key = || key_from_header(HeaderName::from_static(PRINCIPAL));
    let one = vec!["subject:alice".to_owned()];
    let many: Vec<String> = (0..10_000).map(|n| format!("subject:user-{n}")).collect();

    runtime.block_on(async {
        let bare = measure(inner(), &one).await;
        let one_key = measure(RateLimitLayer::new(limits.clone(), key()).layer(inner()), &one).await;
        let many_keys = measure(RateLimitLayer::new(limits.clone(), key()).layer(inner()), &many).await;
        println!("rate_limit: {REQUESTS} admitted requests per run, best of {ROUNDS} runs");
        println!("  bare inner service             {bare:8.1} ns/request");
        println!("  + rate limit, 1 principal      {one_key:8.1} ns/request  ({:.2}x bare)", one_key / bare);
        println!("  + rate limit, 10k principals   {many_keys:8.1} ns/request  ({:.2}x bare)", many_keys / bare);
        println!(
            "  layer overhead: {:.1} ns (1 principal), {:.1} ns (10k principals)",
            one_key - bare,
            many_keys - bare
        );
    });
    Ok(())
}
