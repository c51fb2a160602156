//! Telemetry of the ragmesh binaries: a structured `tracing` subscriber writing to stderr, with
//! ANSI colours only when stderr is a terminal and `NO_COLOR` is not set.
//! The OTLP exporter and W3C trace-context propagation join here in a later issue.
//! [`metrics`]: the Prometheus `/metrics` endpoint over a registry each daemon owns.

pub mod metrics;

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber with `filter` (tracing-subscriber syntax, e.g. `info,ragmesh=debug`).
/// An invalid filter falls back to `info` and says so, rather than failing the process.
/// Colours follow [`stderr_wants_ansi`], so journald and log files get plain text.
pub fn init(filter: &str) {
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(err) => (EnvFilter::new("info"), Some(err)),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_wants_ansi())
        .with_target(false)
        .try_init();
    if let Some(err) = bad {
        eprintln!("warning: log filter {filter:?} is invalid ({err}); using \"info\"");
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
