//! The server span of every gRPC call a daemon serves, per the OpenTelemetry RPC conventions:
//! named `{rpc.service}/{rpc.method}`, kind server, with `rpc.system=grpc`, `rpc.service`,
//! `rpc.method`, and `rpc.grpc.status_code` once the answer is known, whether the status comes
//! in the response headers (a trailers-only error) or in the trailers after the body.
//!
//! The span continues the caller's trace when the request carries a W3C `traceparent` (the
//! master's attempt span when an agent serves the master; a client's own span otherwise), the
//! handler runs inside it (so its own spans are children), and the trace id goes back to the
//! caller in the `x-ragmesh-trace-id` response header when the trace is exported. The span
//! ends when the response body does, so streaming calls last as long as their stream; the
//! streams that last as long as a connection ([`UNTRACED`]: health streams, event watches) get
//! no server span: one span per connection lifetime says nothing a trace viewer can show.
//!
//! Without the OTLP exporter the span is a plain `tracing` span (logs carry its fields) and no
//! header is added: this layer then costs one span per call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use ragmesh_proto::TRACE_ID_METADATA;
use tower::{Layer, Service};
use tracing::Span;
use tracing::instrument::{Instrument as _, Instrumented};

/// Paths of the streams that live as long as their connection, served without a span.
pub const UNTRACED: &[&str] = &[
    "/ragmesh.v1.MembershipService/HealthStream",
    "/ragmesh.v1.MasterService/WatchEvents",
    "/grpc.health.v1.Health/Watch",
];

/// Applies [`Trace`] to a daemon's whole router (outermost, so refusals by the layers inside
/// it, such as authentication, are in the trace too).
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        TraceLayer
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

/// Opens the server span of each call (see the module documentation).
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

/// `rpc.service` and `rpc.method` of a gRPC path (`/ragmesh.v1.MasterService/Search`); a path
/// of another shape is its own service with an empty method.
pub fn rpc_names(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

/// Whether a server span with this gRPC status is an error, per the OpenTelemetry gRPC
/// conventions (the server's own failures, not the caller's mistakes).
pub fn is_server_error(code: i32) -> bool {
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Trace<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if UNTRACED.contains(&request.uri().path()) {
            let inner = self.inner.call(request).instrument(Span::none());
            return ResponseFuture { inner, span: None, trace_id: None };
        }
        let (service, method) = rpc_names(request.uri().path());
        let span = tracing::info_span!(
            "rpc.server",
            otel.name = %request.uri().path().trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        // Before anything reads the span's context: the parent is fixed when it is built.
        ragmesh_telemetry::propagation::continue_from_headers(&span, request.headers());
        let trace_id =
            ragmesh_telemetry::propagation::sampled_trace_id(&span).and_then(|id| HeaderValue::from_str(&id).ok());
        let inner = self.inner.call(request).instrument(span.clone());
        ResponseFuture { inner, span: Some(span), trace_id }
    }
}

pin_project! {
    /// The answer of [`Trace`]: the response, its body carrying the span to its end.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        span: Option<Span>,
        trace_id: Option<HeaderValue>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").field("span", &self.span).finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TracedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let span = this.span.take().unwrap_or_else(Span::none);
        Poll::Ready(match result {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                if let Some(trace_id) = this.trace_id.take() {
                    parts.headers.insert(TRACE_ID_METADATA, trace_id);
                }
                // A trailers-only answer (most errors) carries its status in the headers.
                let done = record_status(&span, &parts.headers);
                let span = if done { None } else { Some(span) };
                Ok(Response::from_parts(parts, TracedBody { inner: body, span }))
            }
            Err(err) => {
                span.record("otel.status_code", "error");
                Err(err)
            }
        })
    }
}

/// Records the `grpc-status` of `headers` (headers or trailers) on `span`; whether there was one.
fn record_status(span: &Span, headers: &HeaderMap) -> bool {
    let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok())
    else {
        return false;
    };
    span.record("rpc.grpc.status_code", code);
    if is_server_error(code) {
        span.record("otel.status_code", "error");
    }
    true
}

pin_project! {
    /// A response body that ends the server span when it ends, recording the status in its
    /// trailers.
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Option<Span>,
    }
}

impl<B> std::fmt::Debug for TracedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedBody").field("span", &self.span).finish_non_exhaustive()
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(trailers), Some(span)) = (frame.trailers_ref(), this.span.as_ref()) {
                    record_status(span, trailers);
                    *this.span = None;
                }
            }
            Some(Err(_)) => {
                if let Some(span) = this.span.take() {
                    span.record("otel.status_code", "error");
                }
            }
            None => *this.span = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_name_service_and_method() {
        assert_eq!(rpc_names("/ragmesh.v1.MasterService/Search"), ("ragmesh.v1.MasterService", "Search"));
        assert_eq!(rpc_names("/grpc.health.v1.Health/Watch"), ("grpc.health.v1.Health", "Watch"));
        assert_eq!(rpc_names("/odd"), ("odd", ""));
    }

    #[test]
    fn only_the_servers_own_failures_are_errors() {
        for code in [2, 4, 12, 13, 14, 15] {
            assert!(is_server_error(code), "{code}");
        }
        for code in [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 16] {
            assert!(!is_server_error(code), "{code}");
        }
    }
}
