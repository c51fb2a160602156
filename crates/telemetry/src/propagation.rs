//! W3C trace context (`traceparent`, `tracestate`) in gRPC metadata: inject the current span's
//! context into an outgoing call, extract a caller's context from an incoming one. Without the
//! OTLP exporter installed the spans carry no context, and nothing is injected.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use opentelemetry::Context;

/// Injects the context of `span` into `metadata`.
pub fn inject(span: &tracing::Span, metadata: &mut MetadataMap) {
    inject_context(&span.context(), metadata);
}

/// Injects `cx` into `metadata` (nothing when `cx` holds no valid span).
pub fn inject_context(cx: &Context, metadata: &mut MetadataMap) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(cx, &mut MetadataInjector(metadata));
}

/// The context of `span` when it belongs to an exported trace (`None` without the exporter), to
/// continue the trace later from another task ([`continue_from`]).
pub fn context_of(span: &tracing::Span) -> Option<Context> {
    let cx = span.context();
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `parent` the parent of `span`, which must not have been entered or asked for its
/// context yet.
pub fn continue_from(span: &tracing::Span, parent: Context) {
    // Fails only without the exporter's layer (nothing to continue) or for a disabled span.
    let _ = span.set_parent(parent);
}

/// The caller's context carried by `metadata` (empty when it carries none, or an invalid one).
pub fn extract(metadata: &MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// The caller's context carried by raw HTTP `headers` (a server layer sees those).
pub fn extract_headers(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes the caller's context in `headers` (when it carries one) the parent of `span`, which
/// must not have been entered or asked for its context yet.
pub fn continue_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = extract_headers(headers);
    if parent.span().span_context().is_valid() {
        // Fails only without the exporter's layer (nothing to continue) or for a disabled span.
        let _ = span.set_parent(parent);
    }
}

/// The trace id of `span` as 32 lowercase hex digits, when it is sampled (so it can be found
/// in the collector); `None` without the exporter or for an unsampled trace.
pub fn sampled_trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let span_ref = cx.span();
    let context = span_ref.span_context();
    (context.is_valid() && context.is_sampled()).then(|| context.trace_id().to_string())
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // traceparent/tracestate are ASCII by construction; a value that is not is skipped.
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value)) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_survives_metadata_both_ways() {
        let mut incoming = MetadataMap::new();
        incoming.insert("traceparent", PARENT.parse().expect("ascii"));
        let cx = extract(&incoming);
        let span_ref = cx.span();
        let remote = span_ref.span_context();
        assert!(remote.is_valid() && remote.is_remote() && remote.is_sampled());
        assert_eq!(remote.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(remote.span_id().to_string(), "00f067aa0ba902b7");

        let mut outgoing = MetadataMap::new();
        inject_context(&cx, &mut outgoing);
        assert_eq!(outgoing.get("traceparent").and_then(|v| v.to_str().ok()), Some(PARENT));
    }

    #[test]
    fn headers_extract_like_metadata() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static(PARENT));
        let cx = extract_headers(&headers);
        assert_eq!(cx.span().span_context().span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn nothing_is_injected_without_a_valid_context() {
        let mut outgoing = MetadataMap::new();
        inject_context(&Context::new(), &mut outgoing);
        assert!(outgoing.is_empty());
        let invalid = SpanContext::new(TraceId::INVALID, SpanId::INVALID, TraceFlags::SAMPLED, true, TraceState::NONE);
        inject_context(&Context::new().with_remote_span_context(invalid), &mut outgoing);
        assert!(outgoing.is_empty());
        let mut garbage = MetadataMap::new();
        garbage.insert("traceparent", "00-zz-yy-01".parse().expect("ascii"));
        assert!(!extract(&garbage).span().span_context().is_valid());
    }
}
