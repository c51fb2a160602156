//! gRPC server metrics as a tower layer at the HTTP level, with the conventional names
//! (go-grpc-prometheus, tonic's and linkerd's dashboards read them):
//! `grpc_server_started_total{grpc_service,grpc_method}`,
//! `grpc_server_handled_total{grpc_service,grpc_method,grpc_code}` and
//! `grpc_server_handling_seconds{grpc_service,grpc_method}` (histogram); plus the helpers both
//! daemons share for their own series: [`Gauges`], a scrape-time gauge family, and
//! [`certificate_expiry`].
//!
//! The status of a call is read where gRPC puts it: in the response headers for a
//! "trailers-only" answer (tonic's errors, a rate-limit refusal), else in the trailers at the
//! end of the body. A body dropped before its trailers (the client went away) counts as
//! CANCELLED. The call's time runs until its status is known, so a stream is timed whole.
//!
//! Labels stay low-cardinality: a path that names no method the daemon serves (anyone can send
//! one) is counted under `grpc_service="unknown",grpc_method="unknown"`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

/// Latency buckets of the request histograms, seconds: 1 ms to ~16 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// The methods a daemon serves, as `/package.Service/Method` paths.
#[derive(Debug, Clone, Default)]
pub struct KnownMethods(HashSet<String>);

/// One method's series, resolved once (on its first call) so that a call touches no label
/// strings: its started counter and histogram, and a handled counter per status code, each
/// created on first use.
#[derive(Debug)]
struct MethodSeries {
    labels: MethodLabels,
    started: Counter,
    seconds: Histogram,
    handled: [OnceLock<Counter>; 17],
}

impl KnownMethods {
    /// Every method of every service in the encoded `FileDescriptorSet`s (the ones reflection
    /// serves). An undecodable set adds nothing (its calls are then counted as unknown).
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Self {
        use prost::Message as _;
        let mut methods = HashSet::new();
        for encoded in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*encoded) else { continue };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    let full = if package.is_empty() { service_name } else { format!("{package}.{service_name}") };
                    for method in service.method {
                        methods.insert(format!("/{full}/{}", method.name.unwrap_or_default()));
                    }
                }
            }
        }
        KnownMethods(methods)
    }

    /// The labels of `path`: its service and method when served, else `unknown` for both.
    #[cfg(test)]
    fn labels(&self, path: &str) -> MethodLabels {
        if self.0.contains(path) { Self::labels_of(path) } else { Self::labels_of("") }
    }

    /// The labels of a known `path` (`unknown` for both when it is not `/service/method`).
    fn labels_of(path: &str) -> MethodLabels {
        if let Some((service, method)) = path.trim_start_matches('/').split_once('/') {
            return MethodLabels { grpc_service: service.to_owned(), grpc_method: method.to_owned() };
        }
        MethodLabels { grpc_service: "unknown".to_owned(), grpc_method: "unknown".to_owned() }
    }
}

/// The labels of a method's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `package.Service`.
    pub grpc_service: String,
    /// The method's name.
    pub grpc_method: String,
}

/// The labels of a handled call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    /// `package.Service`.
    pub grpc_service: String,
    /// The method's name.
    pub grpc_method: String,
    /// The status code's name, e.g. `OK`, `RESOURCE_EXHAUSTED`.
    pub grpc_code: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug)]
struct Series {
    /// Every known path, its series once called; the other paths share `unknown`.
    methods: HashMap<String, OnceLock<Arc<MethodSeries>>>,
    unknown: OnceLock<Arc<MethodSeries>>,
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    seconds: HistogramFamily<MethodLabels>,
}

impl Series {
    /// The series of `path`, created on the method's first call.
    fn method(&self, path: &str) -> Arc<MethodSeries> {
        let (cell, labels) = match self.methods.get_key_value(path) {
            Some((known, cell)) => (cell, known.as_str()),
            None => (&self.unknown, ""),
        };
        cell.get_or_init(|| {
            let labels = KnownMethods::labels_of(labels);
            Arc::new(MethodSeries {
                started: self.started.get_or_create_owned(&labels),
                seconds: self.seconds.get_or_create_owned(&labels),
                handled: Default::default(),
                labels,
            })
        })
        .clone()
    }

    fn handled(&self, method: &MethodSeries, code: tonic::Code) -> Counter {
        let slot = (code as usize).min(method.handled.len() - 1);
        method.handled[slot]
            .get_or_init(|| {
                self.handled.get_or_create_owned(&HandledLabels {
                    grpc_service: method.labels.grpc_service.clone(),
                    grpc_method: method.labels.grpc_method.clone(),
                    grpc_code: code_name(code).to_owned(),
                })
            })
            .clone()
    }
}

/// The gRPC server metrics of one daemon, registered in its registry; the layer is cheap to clone.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    series: Arc<Series>,
}

impl GrpcMetricsLayer {
    /// Registers the three series in `registry`; calls are labelled when `known` lists them.
    pub fn register(registry: &mut Registry, known: KnownMethods) -> Self {
        let series = Series {
            methods: known.0.into_iter().map(|path| (path, OnceLock::new())).collect(),
            unknown: OnceLock::new(),
            started: Family::default(),
            handled: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram),
        };
        registry.register("grpc_server_started", "RPCs started on the server", series.started.clone());
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their status",
            series.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (a stream is timed whole)",
            series.seconds.clone(),
        );
        GrpcMetricsLayer { series: Arc::new(series) }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner, series: self.series.clone() }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    series: Arc<Series>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body,
{
    type Response = http::Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = self.series.method(request.uri().path());
        method.started.inc();
        let call = Call { series: self.series.clone(), method, started: Instant::now() };
        ResponseFuture { inner: self.inner.call(request), call: Some(call) }
    }
}

/// One call being measured; [`Call::end`] records it once.
#[derive(Debug)]
struct Call {
    series: Arc<Series>,
    method: Arc<MethodSeries>,
    started: Instant,
}

impl Call {
    fn end(self, code: tonic::Code) {
        self.series.handled(&self.method, code).inc();
        self.method.seconds.observe(self.started.elapsed().as_secs_f64());
    }
}

/// The code of a `grpc-status` header or trailer; a value that is not a code is UNKNOWN.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok().and_then(|v| v.parse::<i32>().ok()).map_or(tonic::Code::Unknown, tonic::Code::from);
    Some(code)
}

/// The conventional upper-case name of `code` (as grpc-go and go-grpc-prometheus write it).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pin_project! {
    /// The response of [`GrpcMetrics`]: the inner service's, with its body measured.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<http::Response<MetricsBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                // Trailers-only: the status is already in the headers and the body is empty.
                let call = match (call, status_in(response.headers())) {
                    (Some(call), Some(code)) => {
                        call.end(code);
                        None
                    }
                    (call, _) => call,
                };
                Ok(response.map(|body| MetricsBody { inner: body, call }))
            }
            Err(error) => {
                if let Some(call) = call {
                    call.end(tonic::Code::Unknown);
                }
                Err(error)
            }
        })
    }
}

pin_project! {
    /// A response body that records its call's status when the trailers pass (or CANCELLED
    /// when it is dropped before them).
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for MetricsBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.end(tonic::Code::Cancelled);
            }
        }
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    call.end(status_in(trailers).unwrap_or(tonic::Code::Unknown));
                }
            }
            // The stream broke (the connection failed): no status reached the client.
            Some(Err(_)) => {
                if let Some(call) = this.call.take() {
                    call.end(tonic::Code::Unknown);
                }
            }
            // Ended without trailers: a gRPC server always sends a status, so none is unknown.
            None => {
                if let Some(call) = this.call.take() {
                    call.end(tonic::Code::Unknown);
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A gauge family computed at scrape time (from a registry snapshot, a health book...), for
/// a [`prometheus_client::collector::Collector`].
#[derive(Debug, Default)]
pub struct Gauges(Family<Vec<(&'static str, String)>, Gauge<f64, AtomicU64>>);

impl Gauges {
    /// Sets the gauge of `labels` to `value`.
    pub fn set(&self, labels: Vec<(&'static str, String)>, value: f64) {
        self.0.get_or_create(&labels).set(value);
    }

    /// Writes the family as `name` (a gauge) with `help`.
    pub fn encode(&self, encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str) -> Result<(), std::fmt::Error> {
        let metric = encoder.encode_descriptor(name, help, None, self.0.metric_type())?;
        self.0.encode(metric)
    }
}

/// Seconds until `not_after` (negative once it has passed).
pub fn seconds_until(not_after: std::time::SystemTime) -> f64 {
    let now = std::time::SystemTime::now();
    match not_after.duration_since(now) {
        Ok(left) => left.as_secs_f64(),
        Err(past) => -past.duration().as_secs_f64(),
    }
}

/// `ragmesh_tls_certificate_expiry_seconds`: seconds until this process's certificate (as
/// currently loaded, so a reload shows at once) expires; absent in plaintext mode.
#[derive(Debug)]
pub struct CertificateExpiry(pub ragmesh_tls::ReloadableTls);

impl prometheus_client::collector::Collector for CertificateExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let gauges = Gauges::default();
        gauges.set(Vec::new(), seconds_until(self.0.current().not_after()));
        gauges.encode(
            &mut encoder,
            "ragmesh_tls_certificate_expiry_seconds",
            "Seconds until this process's certificate expires (negative once expired)",
        )
    }
}

/// Registers [`CertificateExpiry`] when the daemon runs with TLS.
pub fn certificate_expiry(registry: &mut Registry, tls: Option<&ragmesh_tls::ReloadableTls>) {
    if let Some(tls) = tls {
        registry.register_collector(Box::new(CertificateExpiry(tls.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    const PATH: &str = "/ragmesh.v1.MasterService/Search";

    fn known() -> KnownMethods {
        KnownMethods(HashSet::from([PATH.to_owned()]))
    }

    fn text(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).expect("request")
    }

    type TestService = tower::util::BoxCloneService<
        http::Request<()>,
        http::Response<http_body_util::StreamBody<futures_stream::Frames>>,
        std::convert::Infallible,
    >;

    /// A service answering with a `grpc-status` header and/or a body ending in trailers.
    fn answering(header_status: Option<&'static str>, trailer_status: Option<&'static str>) -> TestService {
        TestService::new(tower::service_fn(move |_request: http::Request<()>| async move {
            let mut frames = vec![Ok(Frame::data(Bytes::from_static(b"x")))];
            if let Some(code) = trailer_status {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static(code));
                frames.push(Ok(Frame::trailers(trailers)));
            }
            let mut response = http::Response::new(http_body_util::StreamBody::new(futures_stream::Frames(frames)));
            if let Some(code) = header_status {
                response.headers_mut().insert("grpc-status", http::HeaderValue::from_static(code));
            }
            Ok(response)
        }))
    }

    mod futures_stream {
        use super::*;

        /// A finite stream of body frames.
        pub(super) struct Frames(pub(super) Vec<Result<Frame<Bytes>, std::convert::Infallible>>);

        impl tokio_stream::Stream for Frames {
            type Item = Result<Frame<Bytes>, std::convert::Infallible>;

            fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
                if self.0.is_empty() {
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(self.0.remove(0)))
            }
        }
    }

    #[tokio::test]
    async fn codes_come_from_trailers_from_trailers_only_headers_and_a_dropped_body_is_cancelled() {
        let mut registry = Registry::default();
        let layer = GrpcMetricsLayer::register(&mut registry, known());

        // A status in the trailers (an ordinary answer, or an error after the first message).
        let service = layer.layer(answering(None, Some("14")));
        let response = service.oneshot(request(PATH)).await.expect("response");
        let before = text(&registry);
        assert!(!before.contains("grpc_code"), "nothing is handled before the trailers: {before}");
        response.into_body().collect().await.expect("body");
        // Trailers-only (tonic's errors, rate-limit refusals).
        let service = layer.layer(answering(Some("8"), None));
        drop(service.oneshot(request(PATH)).await.expect("response"));
        // The client went away before the status.
        let service = layer.layer(answering(None, Some("0")));
        drop(service.oneshot(request(PATH)).await.expect("response"));
        // A path nobody serves.
        let service = layer.layer(answering(Some("12"), None));
        drop(service.oneshot(request("/evil.Service/AnyName123")).await.expect("response"));

        let text = text(&registry);
        let search = r#"grpc_service="ragmesh.v1.MasterService",grpc_method="Search""#;
        assert!(text.contains(&format!("grpc_server_started_total{{{search}}} 3")), "{text}");
        for code in ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"] {
            assert!(
                text.contains(&format!("grpc_server_handled_total{{{search},grpc_code=\"{code}\"}} 1")),
                "{code}: {text}"
            );
        }
        assert!(text.contains(&format!("grpc_server_handling_seconds_count{{{search}}} 3")), "{text}");
        assert!(
            text.contains(
                r#"grpc_server_handled_total{grpc_service="unknown",grpc_method="unknown",grpc_code="UNIMPLEMENTED"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains("evil"), "an unknown path never becomes a label: {text}");
    }

    #[test]
    fn known_methods_come_from_the_descriptor_sets() {
        let known = KnownMethods::from_descriptor_sets(&[ragmesh_proto::FILE_DESCRIPTOR_SET]);
        assert_eq!(known.labels(PATH).grpc_method, "Search");
        assert_eq!(known.labels("/ragmesh.v1.MasterService/Nope").grpc_method, "unknown");
        let garbage = KnownMethods::from_descriptor_sets(&[b"\xff\xff not a descriptor"]);
        assert_eq!(garbage.labels(PATH).grpc_service, "unknown");
    }
}
