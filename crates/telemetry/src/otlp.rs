//! The OTLP/gRPC span exporter of a daemon: which endpoint, sampler and resource apply (flags
//! over the standard `OTEL_*` variables over defaults, [`TraceSettings::resolve`], pure), and
//! the tracer provider built from them ([`provider`]): a batch span processor whose queue is
//! bounded (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048), so a slow or missing collector costs a
//! request nothing: a full queue drops the span (counted by the SDK, reported at shutdown)
//! instead of blocking the caller. Failed exports are reported by [`Reported`]: the first at
//! once, then a summary at most once a minute, and the return to normal (the SDK's own error
//! line for every failed batch, every five seconds while a collector is down, is filtered out
//! of the logs by [`crate::init`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};

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
    let exporter = Reported::new(exporter, traces.endpoint.clone());
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

/// How often failed exports are summarised in the log while they go on.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// What to log about an export that just ended ([`Failures::note`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The first failure after a success (or at start).
    Failing,
    /// Failures went on: batches and spans lost since the last report.
    StillFailing {
        /// Batches that failed since the last report.
        batches: u64,
        /// Spans in them.
        spans: u64,
    },
    /// An export succeeded after failures: batches and spans lost in all.
    Recovered {
        /// Batches that failed in the outage.
        batches: u64,
        /// Spans in them.
        spans: u64,
    },
}

/// The export failures seen so far: the pure core of [`Reported`].
#[derive(Debug, Default)]
pub struct Failures {
    /// Since when exports fail, and when the last report was logged.
    failing: Option<(Instant, Instant)>,
    /// Lost since the last report.
    batches: u64,
    spans: u64,
    /// Lost since exports began to fail.
    outage_batches: u64,
    outage_spans: u64,
}

impl Failures {
    /// Notes an export of `spans` spans that succeeded or not at `now`; says what to log.
    pub fn note(&mut self, now: Instant, ok: bool, spans: usize) -> Option<Report> {
        if ok {
            self.failing.take()?;
            let report = Report::Recovered { batches: self.outage_batches, spans: self.outage_spans };
            *self = Failures::default();
            return Some(report);
        }
        let spans = spans as u64;
        self.outage_batches += 1;
        self.outage_spans += spans;
        let Some((since, last)) = self.failing else {
            self.failing = Some((now, now));
            return Some(Report::Failing);
        };
        self.batches += 1;
        self.spans += spans;
        if now.duration_since(last) < REPORT_EVERY {
            return None;
        }
        self.failing = Some((since, now));
        let report = Report::StillFailing { batches: self.batches, spans: self.spans };
        (self.batches, self.spans) = (0, 0);
        Some(report)
    }
}

/// A span exporter that logs its failures sparingly (see the module's doc).
#[derive(Debug)]
pub struct Reported<E> {
    inner: E,
    endpoint: String,
    failures: Mutex<Failures>,
}

impl<E> Reported<E> {
    /// Wraps `inner`, which exports to `endpoint` (named in the log lines).
    pub fn new(inner: E, endpoint: String) -> Self {
        Reported { inner, endpoint, failures: Mutex::default() }
    }
}

impl<E: SpanExporter> SpanExporter for Reported<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        let report = match self.failures.lock() {
            Ok(mut failures) => failures.note(Instant::now(), result.is_ok(), spans),
            Err(_) => None,
        };
        let endpoint = &self.endpoint;
        match (report, &result) {
            (Some(Report::Failing), Err(err)) => tracing::warn!(
                otlp.endpoint = %endpoint,
                error = %err,
                "cannot export spans: they are dropped until the collector answers (reported at most once a minute)"
            ),
            (Some(Report::StillFailing { batches, spans }), Err(err)) => tracing::warn!(
                otlp.endpoint = %endpoint,
                error = %err,
                batches,
                spans,
                "spans still not exported: these were dropped in the last minute"
            ),
            (Some(Report::Recovered { batches, spans }), _) => {
                tracing::info!(otlp.endpoint = %endpoint, batches, spans, "exporting spans again; these were dropped")
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_reported_first_then_once_a_minute_then_on_recovery() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut failures = Failures::default();
        assert_eq!(failures.note(at(0), true, 10), None, "success is silent");
        assert_eq!(failures.note(at(5), false, 10), Some(Report::Failing));
        for t in (10..60).step_by(5) {
            assert_eq!(failures.note(at(t), false, 10), None, "no line every 5 s");
        }
        assert_eq!(failures.note(at(65), false, 10), Some(Report::StillFailing { batches: 11, spans: 110 }));
        assert_eq!(failures.note(at(70), false, 1), None);
        assert_eq!(failures.note(at(75), true, 10), Some(Report::Recovered { batches: 13, spans: 121 }));
        assert_eq!(failures.note(at(80), true, 10), None);
        assert_eq!(failures.note(at(85), false, 2), Some(Report::Failing), "a new outage is reported at once");
    }

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
