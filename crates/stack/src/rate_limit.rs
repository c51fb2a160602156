//! Per-principal GCRA rate limiting for tonic servers, as a tower layer at the HTTP level.
//!
//! ```no_run
//! use ragmesh_stack::rate_limit::{KeyExtractor, RateLimitLayer, RateLimits, key_from_extension, key_from_peer_ip};
//!
//! # fn build() -> Result<(), ragmesh_stack::rate_limit::RateLimitConfigError> {
//! let limits = RateLimits::from_config(100, 20)?.with_override("subject:ingest-bot", 1000, 200)?;
//! // The verified principal an authentication layer inserted, else the peer's address.
//! let layer = RateLimitLayer::new(limits, key_from_extension().or(key_from_peer_ip()));
//! let server = tonic::transport::Server::builder().layer(layer);
//! # let _ = server;
//! # Ok(())
//! # }
//! ```
//!
//! A request whose key is over its limit never reaches the inner service: it is answered at once
//! with RESOURCE_EXHAUSTED, the message `rate limit exceeded for subject:alice: at most 100
//! requests per second (burst 20); retry after 120 ms`, and the metadata `retry-after-ms: 120`
//! and `retry-after: 1` (seconds, rounded up). Requests without a key pass unlimited.

mod key;
mod limiter;
mod store;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::clock::Clock;
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tower::{Layer, Service};

pub use key::{
    ExtensionKey, FnKey, HeaderKey, KeyExtractor, MAX_HEADER_KEY_LEN, Or, PeerIpKey, RateKey, key_fn,
    key_from_extension, key_from_header, key_from_peer_ip,
};
pub use limiter::{
    DEFAULT_MAX_KEYS, Limiter, MonotonicClock, RETRY_AFTER, RETRY_AFTER_MS, RateLimitConfigError, RateLimited,
    RateLimits, RateQuota,
};

/// Applies [`RateLimit`] to a service: one shared [`Limiter`] for every connection.
pub struct RateLimitLayer<K, C: Clock = MonotonicClock> {
    limiter: Arc<Limiter<C>>,
    key: Arc<K>,
    refusals: Option<Counter>,
}

impl<K: KeyExtractor> RateLimitLayer<K> {
    /// A layer enforcing `limits` on the principal `key` finds in each request.
    pub fn new(limits: RateLimits, key: K) -> Self {
        Self::with_limiter(Arc::new(Limiter::new(limits)), key)
    }
}

impl<K: KeyExtractor, C: Clock> RateLimitLayer<K, C> {
    /// A layer over an existing limiter, to share it between servers or watch it from a test.
    pub fn with_limiter(limiter: Arc<Limiter<C>>, key: K) -> Self {
        Self { limiter, key: Arc::new(key), refusals: None }
    }

    /// Counts every refusal in `refusals` (`ragmesh_rate_limit_refusals_total`).
    pub fn with_refusals(mut self, refusals: Counter) -> Self {
        self.refusals = Some(refusals);
        self
    }

    /// The limiter, for its number of tracked principals (a metric) or its limits.
    pub fn limiter(&self) -> &Arc<Limiter<C>> {
        &self.limiter
    }
}

impl<K, C: Clock> Clone for RateLimitLayer<K, C> {
    fn clone(&self) -> Self {
        Self { limiter: Arc::clone(&self.limiter), key: Arc::clone(&self.key), refusals: self.refusals.clone() }
    }
}

impl<K: fmt::Debug, C: Clock> fmt::Debug for RateLimitLayer<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer").field("limiter", &self.limiter).field("key", &self.key).finish()
    }
}

impl<S, K, C: Clock> Layer<S> for RateLimitLayer<K, C> {
    type Service = RateLimit<S, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
            key: Arc::clone(&self.key),
            refusals: self.refusals.clone(),
        }
    }
}

/// Refuses requests whose principal is over its limit with RESOURCE_EXHAUSTED, without calling
/// the inner service; passes the others (and requests without a principal) on.
pub struct RateLimit<S, K, C: Clock = MonotonicClock> {
    inner: S,
    limiter: Arc<Limiter<C>>,
    key: Arc<K>,
    refusals: Option<Counter>,
}

impl<S: Clone, K, C: Clock> Clone for RateLimit<S, K, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
            key: Arc::clone(&self.key),
            refusals: self.refusals.clone(),
        }
    }
}

impl<S: fmt::Debug, K: fmt::Debug, C: Clock> fmt::Debug for RateLimit<S, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("key", &self.key)
            .finish()
    }
}

impl<S, K, C, ReqBody, ResBody> Service<http::Request<ReqBody>> for RateLimit<S, K, C>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    K: KeyExtractor,
    C: Clock,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A refused request leaves this readiness unused; the next call on this clone uses it.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if let Some(key) = self.key.extract(&request)
            && let Err(limited) = self.limiter.check(&key)
        {
            if let Some(refusals) = &self.refusals {
                refusals.inc();
            }
            return ResponseFuture::refused(limited.to_status().into_http());
        }
        ResponseFuture::inner(self.inner.call(request))
    }
}

pin_project! {
    /// The response of [`RateLimit`]: the inner service's, or an immediate refusal.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        Refused { response: Option<http::Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn inner(future: F) -> Self {
        Self { kind: Kind::Inner { future } }
    }

    fn refused(response: http::Response<B>) -> Self {
        Self { kind: Kind::Refused { response: Some(response) } }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("a refused response future is polled only until it is ready")))
            }
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Refused { .. } => "refused",
        };
        f.debug_struct("ResponseFuture").field("kind", &kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use governor::clock::FakeRelativeClock;
    use http::HeaderName;
    use tonic::body::Body;
    use tower::{ServiceExt, service_fn};

    use super::*;

    const PRINCIPAL: &str = "x-ragmesh-principal";

    type TestService = tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

    /// The layer over an inner service that counts its calls and answers OK.
    fn service<C: Clock + Send + Sync + 'static>(limiter: Limiter<C>) -> (TestService, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let inner_calls = Arc::clone(&calls);
        let inner = service_fn(move |_request: http::Request<Body>| {
            inner_calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(http::Response::new(Body::empty())) }
        });
        let layer =
            RateLimitLayer::with_limiter(Arc::new(limiter), key_from_header(HeaderName::from_static(PRINCIPAL)));
        (tower::util::BoxCloneSyncService::new(layer.layer(inner)), calls)
    }

    fn fake_clock_service(rps: u32, burst: u32) -> (TestService, Arc<AtomicUsize>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits::from_config(rps, burst).expect("valid limits");
        let (service, calls) = service(Limiter::with_clock(limits, clock.clone()));
        (service, calls, clock)
    }

    fn request(principal: Option<&str>) -> http::Request<Body> {
        let mut builder = http::Request::builder().uri("/grpc.health.v1.Health/Check");
        if let Some(principal) = principal {
            builder = builder.header(PRINCIPAL, principal);
        }
        builder.body(Body::empty()).expect("valid request")
    }

    async fn send(service: &TestService, principal: Option<&str>) -> http::Response<Body> {
        let response = service.clone().oneshot(request(principal)).await;
        match response {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    fn header<'a>(response: &'a http::Response<Body>, name: &str) -> Option<&'a str> {
        response.headers().get(name).and_then(|value| value.to_str().ok())
    }

    #[tokio::test]
    async fn within_quota_every_request_reaches_the_inner_service() {
        let (service, calls, _clock) = fake_clock_service(10, 5);
        for _ in 0..5 {
            let response = send(&service, Some("subject:alice")).await;
            assert_eq!(header(&response, "grpc-status"), None, "passed through untouched");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn over_quota_is_resource_exhausted_with_retry_after_and_the_inner_service_is_not_called() {
        let (service, calls, _clock) = fake_clock_service(8, 2);
        send(&service, Some("subject:alice")).await;
        send(&service, Some("subject:alice")).await;

        let response = send(&service, Some("subject:alice")).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the refused request never reached the inner service");
        assert_eq!(response.status(), http::StatusCode::OK, "gRPC errors travel in headers");
        assert_eq!(header(&response, "content-type"), Some("application/grpc"));
        assert_eq!(header(&response, "grpc-status"), Some("8"));
        assert_eq!(header(&response, RETRY_AFTER_MS), Some("125"));
        assert_eq!(header(&response, RETRY_AFTER), Some("1"));
        let status = tonic::Status::from_header_map(response.headers()).expect("a gRPC status in the headers");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "rate limit exceeded for subject:alice: at most 8 requests per second (burst 2); retry after 125 ms"
        );
    }

    #[tokio::test]
    async fn principals_have_separate_budgets_and_requests_without_one_pass() {
        let (service, calls, _clock) = fake_clock_service(1, 1);
        assert_eq!(header(&send(&service, Some("subject:alice")).await, "grpc-status"), None);
        assert_eq!(header(&send(&service, Some("subject:alice")).await, "grpc-status"), Some("8"));
        assert_eq!(header(&send(&service, Some("subject:bob")).await, "grpc-status"), None);
        for _ in 0..10 {
            assert_eq!(header(&send(&service, None).await, "grpc-status"), None, "no key, no limit");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 12);
    }

    #[tokio::test]
    async fn after_the_retry_after_time_requests_pass_again() {
        let (service, calls, clock) = fake_clock_service(4, 1);
        send(&service, Some("node:agent-1")).await;
        let refused = send(&service, Some("node:agent-1")).await;
        let retry_after_ms: u64 = header(&refused, RETRY_AFTER_MS).and_then(|ms| ms.parse().ok()).expect("a wait");
        assert_eq!(retry_after_ms, 250);

        clock.advance(Duration::from_millis(retry_after_ms));
        assert_eq!(header(&send(&service, Some("node:agent-1")).await, "grpc-status"), None);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn limits_hold_under_concurrency() {
        const RATE: u32 = 100;
        const BURST: u32 = 10;
        const TASKS: usize = 64;
        const TOTAL: usize = 1000;
        let limits = RateLimits::from_config(RATE, BURST).expect("valid limits");
        let (service, calls) = service(Limiter::new(limits));

        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..TASKS {
            let service = service.clone();
            // 1000 requests spread over the tasks, paced so the window spans a few hundred ms.
            let requests = TOTAL / TASKS + usize::from(task < TOTAL % TASKS);
            tasks.spawn(async move {
                let mut admitted = 0usize;
                for _ in 0..requests {
                    if header(&send(&service, Some("subject:alice")).await, "grpc-status").is_none() {
                        admitted += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (requests, admitted)
            });
        }
        let (mut sent, mut admitted) = (0, 0);
        while let Some(outcome) = tasks.join_next().await {
            let (requests, passed) = outcome.expect("task finished");
            sent += requests;
            admitted += passed;
        }
        let elapsed = start.elapsed();

        let bound = f64::from(BURST) + f64::from(RATE) * elapsed.as_secs_f64() + 1.0;
        assert_eq!(sent, TOTAL);
        assert_eq!(calls.load(Ordering::SeqCst), admitted, "only admitted requests reach the inner service");
        assert!(admitted >= BURST as usize, "at least the burst passes: {admitted}");
        assert!(
            admitted as f64 <= bound,
            "{admitted} admitted in {elapsed:?}; at most burst + rate x elapsed + 1 = {bound:.1} may pass"
        );
    }
}
