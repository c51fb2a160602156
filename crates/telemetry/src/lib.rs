//! Telemetry of the ragmesh binaries: a structured `tracing` subscriber writing to stderr, with
//! ANSI colours only when stderr is a terminal and `NO_COLOR` is not set; for the daemons, the
//! OTLP span exporter when an endpoint is configured ([`otlp`]), W3C trace-context propagation in
//! gRPC metadata ([`propagation`]), and the Prometheus `/metrics` endpoint over a registry each
//! daemon owns ([`metrics`]).

pub mod metrics;
pub mod otlp;
pub mod propagation;

use std::ffi::OsStr;
use std::io::IsTerminal as _;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{FilterExt as _, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub use otlp::{ResolvedTraces, TraceSettings};

/// How long shutting down waits for the last spans to reach the collector.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// What can go wrong setting telemetry up. [`init`] reports it and goes on without export: a
/// collector problem never stops a daemon.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (a malformed endpoint).
    #[error("cannot export traces to {endpoint}: {source}: use a URL such as http://jaeger:4317")]
    Exporter {
        /// The endpoint in force.
        endpoint: String,
        /// The exporter's reason.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Installs the global subscriber with `filter` (tracing-subscriber syntax, e.g. `info,ragmesh=debug`).
/// An invalid filter falls back to `info` and says so, rather than failing the process.
/// Colours follow [`stderr_wants_ansi`], so journald and log files get plain text.
///
/// When `traces` resolves to an endpoint ([`TraceSettings::resolve`] over the process
/// environment), ragmesh's spans are also exported over OTLP; `filter` then only chooses log
/// lines, never which spans are exported. Call inside a tokio runtime; keep the guard until
/// exit and call [`TelemetryGuard::shutdown`] to flush the last spans.
pub fn init(filter: &str, traces: Option<&TraceSettings>) -> TelemetryGuard {
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(err) => (EnvFilter::new("info"), Some(err)),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(stderr_wants_ansi())
        .with_target(false)
        .with_filter(env_filter.and(filter_fn(logged)));
    let resolved = traces.and_then(|t| t.resolve(|name| std::env::var(name).ok()));
    let built = resolved.as_ref().map(otlp::provider);
    let provider = match &built {
        Some(Ok(provider)) => Some(provider.clone()),
        _ => None,
    };
    let otel = provider.as_ref().map(|provider| {
        let tracer = provider.tracer("ragmesh");
        // Only ragmesh's own spans (and the events inside them) become trace spans: the
        // transport crates' spans would swamp a trace with connection details.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            // busy_ns/idle_ns would cost two clock reads per poll of every instrumented future.
            .with_tracked_inactivity(false)
            // Activating the OpenTelemetry context on every enter (every poll of an instrumented
            // future) serves other OpenTelemetry instrumentation; ours reads a span's context
            // explicitly (propagation::inject).
            .with_context_activation(false)
            // The span's name and rpc.* attributes say where it comes from.
            .with_target(false)
            .with_filter(Targets::new().with_target("ragmesh", tracing::Level::INFO).and(filter_fn(exported)))
    });
    // Two shapes rather than `.with(otel)` of an `Option`: an absent layer (`None`) reports
    // `Interest::always` for every callsite, which turns each disabled trace span of h2 and
    // hyper (several per frame) into a span the registry creates and drops.
    let _ = match otel {
        Some(otel) => tracing_subscriber::registry().with(fmt).with(otel).try_init(),
        None => tracing_subscriber::registry().with(fmt).try_init(),
    };
    if let Some(err) = bad {
        eprintln!("warning: log filter {filter:?} is invalid ({err}); using \"info\"");
    }
    match (&resolved, built) {
        (Some(traces), Some(Ok(_))) => tracing::info!(
            otlp.endpoint = %traces.endpoint,
            sample_ratio = traces.ratio,
            service.name = %traces.service_name,
            "exporting traces"
        ),
        (_, Some(Err(err))) => tracing::warn!(error = %err, "traces are not exported"),
        _ => {}
    }
    TelemetryGuard { provider }
}

/// Whether an event is written to the log: all but the SDK's line for each failed export batch,
/// which [`otlp::Reported`] summarises instead.
fn logged(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.name() != "BatchSpanProcessor.ExportError"
}

/// Spans that give log lines their context but have no place in a trace: the fan-out's
/// per-group span (each node attempt under it names its node and shard group already), and the
/// spans that live as long as a replica's follower or an agent's health stream (their work is
/// traced per write: `replication.send`).
const LOG_ONLY_SPANS: &[&str] = &["federation.group_search", "replication.follow", "membership.health_stream"];

/// Whether a span or event of this callsite is exported (decided once per callsite).
fn exported(metadata: &tracing::Metadata<'_>) -> bool {
    !(metadata.is_span() && LOG_ONLY_SPANS.contains(&metadata.name()))
}

/// Keeps the exporter alive; [`TelemetryGuard::shutdown`] flushes the spans still queued.
#[derive(Debug)]
#[must_use = "dropping the guard stops exporting traces"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes the queued spans (at most a few seconds, so an unreachable collector does not
    /// hold the exit) and stops the exporter. The SDK logs how many spans a full queue dropped.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            // Shutting down blocks the thread until the exporter thread is done.
            let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_FLUSH)).await;
            if let Ok(Err(err)) = done {
                tracing::warn!(error = %err, "the last spans may not have reached the collector");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown_with_timeout(SHUTDOWN_FLUSH);
        }
    }
}

/// Whether this process's stderr should carry ANSI colour codes: see [`ansi_wanted`].
pub fn stderr_wants_ansi() -> bool {
    ansi_wanted(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

/// The colour decision: only a terminal shows colours (a pipe, a file or journald would store
/// the escape codes), and a non-empty `NO_COLOR` turns them off even there (<https://no-color.org>).
pub fn ansi_wanted(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(ansi_wanted(true, None));
        assert!(ansi_wanted(true, Some(OsStr::new(""))), "an empty NO_COLOR does not count");
        assert!(!ansi_wanted(true, Some(OsStr::new("1"))));
        assert!(!ansi_wanted(false, None), "a pipe or journald never gets escape codes");
        assert!(!ansi_wanted(false, Some(OsStr::new("1"))));
    }
}
