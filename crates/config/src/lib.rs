//! Typed configuration of the two daemons. Each value comes from, in rising precedence: a
//! built-in default, the optional TOML file (`--config`), a `RAGMESH_*` environment variable, a
//! flag. [`MasterArgs::resolve`] and [`AgentArgs::resolve`] validate everything at once and
//! return every problem, so an operator fixes a bad config in one go.

mod agent;
mod errors;
mod master;
mod trace;
mod webhooks;

pub use agent::{
    AgentArgs, AgentConfig, AnalysisConfig, CollectionAnalysisConfig, DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_WRITER_HEAP_BYTES, DEFAULT_WRITER_IDLE_RELEASE_MS, MAX_ANALYSIS_PROFILES, MAX_COLLECTION_OVERRIDES,
    MAX_WRITER_HEAP_BYTES, MIN_WRITER_HEAP_BYTES, STEMMING_NAMES, Secret, valid_node_name,
};
pub use errors::{ConfigErrors, EXIT_CONFIG};
pub use master::{
    AccessConfig, ActionsConfig, CacheConfig, DEFAULT_MAX_HEARTBEATS_PER_SECOND, MasterArgs, MasterConfig,
    ReplicationConfig, ResilienceConfig, WriteQuorum,
};
pub use trace::{TraceArgs, TraceConfig};
pub use webhooks::{DEFAULT_OUTBOX_MAX_EVENTS, EVENT_KINDS, EventsConfig, WebhookConfig};

use std::path::{Path, PathBuf};

use errors::Problems;
use ragmesh_tls::TlsFiles;

/// Reads and parses the optional TOML file; a missing or malformed file is a problem, not a panic.
fn read_file<T: serde::de::DeserializeOwned + Default>(path: Option<&Path>, problems: &mut Problems) -> T {
    let Some(path) = path else {
        return T::default();
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            problems.push(format!("cannot read config file {}: {err}", path.display()));
            return T::default();
        }
    };
    match toml::from_str(&text) {
        Ok(file) => file,
        Err(err) => {
            let message = err.message();
            // toml stops at 80 levels with a terse "recursion limit" / "max recursion depth met".
            let hint = if message.contains("recursion") {
                " (the file nests arrays, inline tables or dotted keys too deep: flatten it)"
            } else {
                ""
            };
            problems.push(format!("config file {}: {message}{hint}", path.display()));
            T::default()
        }
    }
}

/// Settings of a daemon's process rather than of the service it runs: what its `main` does
/// around `start`, which the library never sees. Kept apart from [`MasterConfig`] and
/// [`AgentConfig`], which tests build field by field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessConfig {
    /// Where to report the bound address once serving (`--addr-file`); `None` writes nothing.
    pub addr_file: Option<PathBuf>,
    /// Trace export (`--otlp-endpoint`, `--trace-sample-ratio`).
    pub trace: TraceConfig,
    /// Where to serve Prometheus metrics (`--metrics-listen`); `None`: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where to report the metrics listener's bound address (`--metrics-addr-file`).
    pub metrics_addr_file: Option<PathBuf>,
}

/// Resolves `--metrics-addr-file` (flag over file), which only makes sense with a metrics
/// listener.
fn resolve_metrics_addr_file(
    flag: Option<PathBuf>,
    file: Option<PathBuf>,
    metrics_listen: Option<std::net::SocketAddr>,
    problems: &mut Problems,
) -> Option<PathBuf> {
    let path = resolve_addr_file("metrics-addr-file", flag, file, problems)?;
    if metrics_listen.is_none() {
        problems.push(format!(
            "--metrics-addr-file {} is set but --metrics-listen is not: give both, or neither",
            path.display()
        ));
        return None;
    }
    Some(path)
}

/// Resolves `--metrics-listen` (flag over file): an IP:PORT, or nothing (metrics off).
fn resolve_metrics_listen(value: Option<String>, problems: &mut Problems) -> Option<std::net::SocketAddr> {
    value.map(|value| parse_listen("metrics-listen", &value, problems))
}

/// Resolves `--<name>` (`addr-file` or `metrics-addr-file`; flag over file) and checks that it
/// names a file in a directory that exists, so a typo is a config error (exit 64) rather than a
/// failure after binding.
fn resolve_addr_file(
    name: &str,
    flag: Option<PathBuf>,
    file: Option<PathBuf>,
    problems: &mut Problems,
) -> Option<PathBuf> {
    let path = flag.or(file)?;
    if path.as_os_str().is_empty() {
        problems.push(format!("--{name} is empty: give the file to write the bound address to"));
        return None;
    }
    let names_a_directory =
        path.is_dir() || path.file_name().is_none() || path.as_os_str().to_string_lossy().ends_with('/');
    if names_a_directory {
        problems.push(format!("--{name} {} is a directory: give a file path, e.g. DIR/master.addr", path.display()));
        return None;
    }
    let parent = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        problems.push(format!(
            "--{name} {}: directory {} does not exist: create it first",
            path.display(),
            parent.display()
        ));
        return None;
    }
    Some(path)
}

/// The TLS flags both daemons share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM bundle of the mesh CA; peers must present certificates it issued
    #[arg(long, env = "RAGMESH_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM certificate of this process (its name is its identity in the mesh)
    #[arg(long, env = "RAGMESH_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of this process
    #[arg(long, env = "RAGMESH_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Plaintext without client authentication (development only; logs a warning)
    #[arg(long, env = "RAGMESH_INSECURE")]
    pub insecure: bool,
}

/// The TLS keys of a daemon's TOML file.
#[derive(Debug, Clone, Default)]
struct TlsFileKeys {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    insecure: Option<bool>,
}

impl TlsArgs {
    /// Resolves the TLS file paths (flags over file): all three are needed unless the operator
    /// explicitly chose plaintext.
    fn resolve(self, file: TlsFileKeys, problems: &mut Problems) -> Option<TlsFiles> {
        let insecure = self.insecure || file.insecure.unwrap_or(false);
        resolve_tls(insecure, self.ca.or(file.ca), self.cert.or(file.cert), self.key.or(file.key), problems)
    }
}

/// Checks the three TLS files exist: all are needed unless the operator explicitly chose plaintext.
fn resolve_tls(
    insecure: bool,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    problems: &mut Problems,
) -> Option<TlsFiles> {
    if insecure {
        return None;
    }
    let mut need = |value: Option<PathBuf>, flag: &str, env: &str| match value {
        Some(path) if path.is_file() => Some(path),
        Some(path) => {
            problems.push(format!("--{flag} {}: no such file", path.display()));
            None
        }
        None => {
            problems.push(format!(
                "--{flag} is required (or {env}): mTLS is on by default; create files with `ragmeshctl certs`, or pass --insecure for plaintext"
            ));
            None
        }
    };
    let ca = need(ca, "ca", "RAGMESH_CA");
    let cert = need(cert, "cert", "RAGMESH_CERT");
    let key = need(key, "key", "RAGMESH_KEY");
    Some(TlsFiles { ca: ca?, cert: cert?, key: key? })
}

/// Checks that a millisecond setting lies in `[min, max]`.
fn check_range(name: &str, value: u64, min: u64, max: u64, problems: &mut Problems) {
    if !(min..=max).contains(&value) {
        problems.push(format!("--{name} {value} is out of range: use {min}..={max}"));
    }
}

/// Parses a listen address (`host:port`, IP literal only, so nothing is resolved at start).
fn parse_listen(flag: &str, value: &str, problems: &mut Problems) -> std::net::SocketAddr {
    value.parse().unwrap_or_else(|_| {
        problems.push(format!(
            "--{flag} {value:?} is not a socket address: use IP:PORT, e.g. 0.0.0.0:7400 (port 0 picks a free port)"
        ));
        std::net::SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `text` as a config file on a thread with a tokio blocking thread's stack (2 MiB,
    /// less than a main thread's 8 MiB), returning the problems found.
    fn problems_reading(text: String) -> Vec<String> {
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("deep.toml");
                std::fs::write(&path, text).expect("write config");
                let mut problems = Problems::default();
                let _: toml::Table = read_file(Some(&path), &mut problems);
                problems.finish(()).err().map(|errors| errors.problems).unwrap_or_default()
            })
            .expect("spawn")
            .join()
            .expect("config reader panicked")
    }

    #[test]
    fn regression_deeply_nested_toml_is_a_problem_not_a_stack_overflow() {
        // toml 1.x (toml_parser's RecursionGuard) stops at 80 levels of arrays, inline tables
        // and dotted keys, unless its `unbounded` feature is on: this pins both.
        let deep = 100_000;
        let inputs = [
            ("arrays", format!("a = {}", "[".repeat(deep))),
            ("closed arrays", format!("a = {}1{}", "[".repeat(deep), "]".repeat(deep))),
            ("inline tables", format!("a = {}", "{a = ".repeat(deep))),
            ("mixed", format!("a = {}", "[{a = ".repeat(deep / 2))),
            ("dotted key", format!("{} = 1", vec!["a"; deep].join("."))),
            ("table header", format!("[{}]", vec!["a"; deep].join("."))),
            ("array of tables header", format!("[[{}]]", vec!["a"; deep].join("."))),
        ];
        for (what, text) in inputs {
            let problems = problems_reading(text);
            assert_eq!(problems.len(), 1, "{what}: {problems:?}");
            assert!(problems[0].contains("deep.toml"), "{what}: {problems:?}");
            assert!(
                problems[0].contains("nests arrays, inline tables or dotted keys too deep"),
                "{what}: {problems:?}"
            );
        }
    }
}
