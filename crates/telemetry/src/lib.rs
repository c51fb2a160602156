//! Telemetry of the ragmesh binaries: a structured `tracing` subscriber writing to stderr.
//! The OTLP exporter and W3C trace-context propagation join here in a later issue.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber with `filter` (tracing-subscriber syntax, e.g. `info,ragmesh=debug`).
/// An invalid filter falls back to `info` and says so, rather than failing the process.
pub fn init(filter: &str) {
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(err) => (EnvFilter::new("info"), Some(err)),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    if let Some(err) = bad {
        eprintln!("warning: log filter {filter:?} is invalid ({err}); using \"info\"");
    }
}
