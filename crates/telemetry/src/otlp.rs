//! The OTLP/gRPC span exporter of a daemon: which endpoint, sampler and resource apply (flags
//! over the standard `OTEL_*` variables over defaults, [`TraceSettings::resolve`], pure), and
//! the tracer provider built from them ([`provider`]): a batch span processor whose queue is
//! bounded (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048), so a slow or missing collector costs a
//! request nothing: a full queue drops the span (counted by the SDK, reported at shutdown)
//! instead of blocking the caller.

use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};

use crate::TelemetryError;

/// What a daemon asks of the trace exporter: its flags and identity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceSettings {
    /// `--otlp-endpoint` (e.g. `http://jaeger:4317`); `None` leaves `OTEL_EXPORTER_OTLP_*` to decide.
    pub otlp_endpoint: Option<String>,
    /// `--trace-sample-ratio`; `None` leaves `OTEL_TRACES_SAMPLER_ARG` to decide (else 1.0).
    pub sample_ratio: Option<f64>,
    /// The default `service.name` (`ragmesh-master`, `ragmesh-agent`); `OTEL_SERVICE_NAME` overrides it.
    pub service_name: &'static str,
    /// `service.instance.id`: the node name, when known.
    pub instance_id: Option<String>,
}

/// The exporter settings in force, once flags and environment are merged.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTraces {
    /// Collector endpoint (OTLP over gRPC).
    pub endpoint: String,
    /// Fraction of new traces sampled (a caller's sampled flag is followed: parent-based).
    pub ratio: f64,
    /// `service.name`.
    pub service_name: String,
    /// `service.instance.id`.
    pub instance_id: Option<String>,
}

impl TraceSettings {
    /// The settings in force given the environment `env` (a lookup such as `std::env::var`):
    /// flags win over `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// `--trace-sample-ratio` over `OTEL_TRACES_SAMPLER_ARG`; `OTEL_SERVICE_NAME` over the
    /// daemon's default name. `None` when no endpoint is set or `OTEL_SDK_DISABLED=true`: no
    /// export, today's behaviour.
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Option<ResolvedTraces> {
        let set = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if self.otlp_endpoint.is_none() && set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let endpoint = self
            .otlp_endpoint
            .clone()
            .or_else(|| set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let from_env =
            set("OTEL_TRACES_SAMPLER_ARG").and_then(|v| v.parse::<f64>().ok()).filter(|r| (0.0..=1.0).contains(r));
        let ratio = self.sample_ratio.or(from_env).unwrap_or(1.0);
        let service_name = set("OTEL_SERVICE_NAME").unwrap_or_else(|| self.service_name.to_owned());
        Some(ResolvedTraces { endpoint, ratio, service_name, instance_id: self.instance_id.clone() })
    }
}

/// The tracer provider exporting to `traces.endpoint`. Call inside a tokio runtime (the tonic
/// channel is created there, and connects lazily: an unreachable collector fails exports, not
/// this call).
pub fn provider(traces: &ResolvedTraces) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(traces.endpoint.clone())
        .build()
        .map_err(|source| TelemetryError::Exporter { endpoint: traces.endpoint.clone(), source })?;
    // The builder's defaults read OTEL_BSP_* (queue size, delay, batch size, export timeout).
    let batch = BatchSpanProcessor::builder(exporter).with_batch_config(BatchConfigBuilder::default().build()).build();
    let mut resource = Resource::builder().with_service_name(traces.service_name.clone());
    if let Some(instance) = &traces.instance_id {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", instance.clone()));
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(traces.ratio))))
        .with_resource(resource.build())
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    fn agent() -> TraceSettings {
        TraceSettings { service_name: "ragmesh-agent", instance_id: Some("n1".into()), ..TraceSettings::default() }
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert_eq!(agent().resolve(env(&[("OTEL_TRACES_SAMPLER_ARG", "0.5")])), None);
    }

    #[test]
    fn the_standard_variables_apply_when_no_flag_is_given() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SERVICE_NAME", "search-agents"),
        ];
        let resolved = agent().resolve(env(&vars)).expect("endpoint from the environment");
        assert_eq!(resolved.endpoint, "http://collector:4317");
        assert_eq!(resolved.ratio, 0.25);
        assert_eq!(resolved.service_name, "search-agents");
        assert_eq!(resolved.instance_id.as_deref(), Some("n1"));
        let traces_only =
            [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317")];
        assert_eq!(agent().resolve(env(&traces_only)).expect("set").endpoint, "http://b:4317");
    }

    #[test]
    fn flags_win_over_the_environment() {
        let settings =
            TraceSettings { otlp_endpoint: Some("http://flag:4317".into()), sample_ratio: Some(0.1), ..agent() };
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.9"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        let resolved = settings.resolve(env(&vars)).expect("flag endpoint");
        assert_eq!((resolved.endpoint.as_str(), resolved.ratio), ("http://flag:4317", 0.1));
        assert_eq!(resolved.service_name, "ragmesh-agent");
    }

    #[test]
    fn defaults_and_bad_environment_values() {
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_SAMPLER_ARG", "2")];
        assert_eq!(agent().resolve(env(&vars)).expect("set").ratio, 1.0, "an out-of-range ratio is ignored");
        let disabled = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SDK_DISABLED", "TRUE")];
        assert_eq!(agent().resolve(env(&disabled)), None);
    }
}
