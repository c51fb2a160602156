//! Overload protection for one tonic service: at most `max` requests served at once, and every
//! request beyond that answered at once with RESOURCE_EXHAUSTED instead of queueing without bound.
//!
//! It is tower's own [`LoadShed`] around tower's own [`ConcurrencyLimit`] (load shedding outside
//! the limit: when no permit is free, `LoadShed` refuses instead of waiting for one); this layer
//! only turns tower's `Overloaded` error into a gRPC answer and keeps the service's gRPC name, so
//! it can wrap one service of a router and leave the others (grpc.health.v1, reflection) alone:
//!
//! ```no_run
//! # use ragmesh_stack::overload::OverloadLayer;
//! # use tower::Layer as _;
//! # fn wrap<S>(agent_service: S) -> ragmesh_stack::overload::Overload<S> {
//! let layer = OverloadLayer::new(64, "--max-concurrent-requests");
//! layer.layer(agent_service) // then `router.add_service(...)` it like the bare service
//! # }
//! ```
//!
//! A shed request gets RESOURCE_EXHAUSTED, not UNAVAILABLE: the node is up and answering, it is
//! busy, and callers (the master) keep UNAVAILABLE for "this node cannot be reached". The
//! message names the limit and the setting: `overloaded: already serving the maximum of 64
//! concurrent requests (--max-concurrent-requests 64); retry with backoff, or raise
//! --max-concurrent-requests`.
//!
//! A request holds its permit from the moment its headers are routed until its response
//! headers are produced: while its body arrives, while it is decoded and while a unary handler
//! runs. Work a handler leaves behind when its caller gives up (a dropped future, a blocking
//! task still running) is not counted here.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tonic::Status;
use tonic::server::NamedService;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tower::load_shed::error::Overloaded;
use tower::{BoxError, Layer, Service};

/// The limit and the setting that changes it, as the refusal names them.
#[derive(Debug)]
struct Limit {
    max: usize,
    setting: &'static str,
}

impl Limit {
    fn refusal(&self) -> Status {
        let Limit { max, setting } = self;
        Status::resource_exhausted(format!(
            "overloaded: already serving the maximum of {max} concurrent requests ({setting} {max}); retry with backoff, or raise {setting}"
        ))
    }
}

/// Applies [`Overload`]: every service it wraps shares one limit of `max` requests at once.
#[derive(Debug, Clone)]
pub struct OverloadLayer {
    limit: Arc<Limit>,
}

impl OverloadLayer {
    /// At most `max` requests at once; `setting` (e.g. `--max-concurrent-requests`) is the flag
    /// an operator changes the limit with, named in the refusal. `max` must be at least 1.
    pub fn new(max: usize, setting: &'static str) -> Self {
        Self { limit: Arc::new(Limit { max, setting }) }
    }
}

impl<S> Layer<S> for OverloadLayer {
    type Service = Overload<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Overload {
            inner: LoadShed::new(ConcurrencyLimit::new(inner, self.limit.max)),
            limit: Arc::clone(&self.limit),
            not_ready: None,
        }
    }
}

/// Serves at most the layer's `max` requests at once (across all its clones) and answers the
/// others at once with RESOURCE_EXHAUSTED. Never fails: errors become gRPC statuses, so it can be
/// added to a tonic router like the service it wraps.
pub struct Overload<S> {
    inner: LoadShed<ConcurrencyLimit<S>>,
    limit: Arc<Limit>,
    /// The inner service failed `poll_ready`: answered by the next `call`.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for Overload<S> {
    fn clone(&self) -> Self {
        // A clone shares the permits (tower's ConcurrencyLimit shares its semaphore) but not
        // this clone's readiness.
        Self { inner: self.inner.clone(), limit: Arc::clone(&self.limit), not_ready: None }
    }
}

impl<S> fmt::Debug for Overload<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overload").field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl<S: NamedService> NamedService for Overload<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Overload<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture<tower::limit::concurrency::future::ResponseFuture<S::Future>, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // LoadShed never waits: it is ready at once, and remembers whether a permit was free.
        if let Poll::Ready(Err(err)) = self.inner.poll_ready(cx) {
            self.not_ready = Some(err);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if let Some(err) = self.not_ready.take() {
            return ResponseFuture::answered(Status::from_error(err).into_http());
        }
        ResponseFuture { kind: Kind::Called { future: self.inner.call(request), limit: Arc::clone(&self.limit) } }
    }
}

pin_project! {
    /// The response of [`Overload`]: the inner service's, or the refusal.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Called { #[pin] future: tower::load_shed::future::ResponseFuture<F>, limit: Arc<Limit> },
        Answered { response: Option<http::Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn answered(response: http::Response<B>) -> Self {
        Self { kind: Kind::Answered { response: Some(response) } }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Default,
{
    type Output = Result<http::Response<B>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, limit } => {
                let response = match std::task::ready!(future.poll(cx)) {
                    Ok(response) => response,
                    Err(err) if err.is::<Overloaded>() => {
                        tracing::debug!(limit = limit.max, "request shed: concurrency limit reached");
                        limit.refusal().into_http()
                    }
                    Err(err) => Status::from_error(err).into_http(),
                };
                Poll::Ready(Ok(response))
            }
            KindProj::Answered { response } => {
                Poll::Ready(Ok(response.take().expect("an answered response future is polled only until it is ready")))
            }
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Answered { .. } => "answered",
        };
        f.debug_struct("ResponseFuture").field("kind", &kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio::sync::{Semaphore, mpsc};
    use tonic::body::Body;
    use tower::{ServiceExt as _, service_fn};

    use super::*;

    type TestService = tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

    /// The layer (limit 2) over a service that reports each call on `entered`, then blocks
    /// until `gate` gives it a permit.
    fn gated(gate: Arc<Semaphore>, entered: mpsc::UnboundedSender<()>) -> TestService {
        let inner = service_fn(move |_request: http::Request<Body>| {
            let gate = Arc::clone(&gate);
            let _ = entered.send(());
            async move {
                let _pass = gate.acquire().await;
                Ok::<_, Infallible>(http::Response::new(Body::empty()))
            }
        });
        tower::util::BoxCloneSyncService::new(OverloadLayer::new(2, "--max-concurrent-requests").layer(inner))
    }

    fn request() -> http::Request<Body> {
        http::Request::builder().uri("/ragmesh.v1.AgentService/NodeSearch").body(Body::empty()).expect("request")
    }

    async fn send(service: &TestService) -> Option<Status> {
        let response = match service.clone().oneshot(request()).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        Status::from_header_map(response.headers())
    }

    #[tokio::test]
    async fn beyond_the_limit_requests_are_shed_at_once_and_pass_again_when_a_slot_frees() {
        let gate = Arc::new(Semaphore::new(0));
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let service = gated(Arc::clone(&gate), entered_tx);
        let blocked: Vec<_> = (0..2).map(|_| tokio::spawn(service.clone().oneshot(request()))).collect();
        for _ in 0..2 {
            entered.recv().await.expect("a blocked request reached the inner service");
        }

        let shed = send(&service).await.expect("the third request is refused");
        assert_eq!(shed.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            shed.message(),
            "overloaded: already serving the maximum of 2 concurrent requests (--max-concurrent-requests 2); retry with backoff, or raise --max-concurrent-requests"
        );
        assert!(entered.try_recv().is_err(), "the shed request never reached the inner service");

        gate.add_permits(2);
        for task in blocked {
            let response = task.await.expect("join");
            let response = match response {
                Ok(response) => response,
                Err(never) => match never {},
            };
            assert!(Status::from_header_map(response.headers()).is_none(), "blocked requests complete normally");
        }
        assert_eq!(send(&service).await.map(|s| s.code()), None, "freed permits serve new requests");
    }
}
