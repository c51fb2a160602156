//! Configuration of `ragmesh-agent`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ragmesh_actions::ActionSpec;
use ragmesh_tls::TlsFiles;
use serde::Deserialize;

use crate::errors::Problems;
use crate::{
    ConfigErrors, ProcessConfig, TlsArgs, TlsFileKeys, check_range, parse_listen, read_file, resolve_addr_file,
    resolve_metrics_addr_file, resolve_metrics_listen,
};

/// Command line of `ragmesh-agent`. Every flag also reads a `RAGMESH_*` variable, and every
/// flag but --config can be set in the TOML file under its name with `_` for `-`.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "ragmesh-agent",
    version,
    about = "ragmesh node agent: local BM25 index, registers with the master over mTLS"
)]
pub struct AgentArgs {
    /// TOML config file (keys: the long flag names with `_` for `-`, e.g. name, shard, master, data_dir, join_token, labels = { k = "v" }; and the [[actions]] this agent offers, file only)
    #[arg(long, env = "RAGMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Node name [default: the name in --cert]; must match the certificate
    #[arg(long, env = "RAGMESH_NODE_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// Shard group this agent serves: agents of one group are replicas of the same documents.
    /// Same rules as node names [default: the node name, a group of one]
    #[arg(long, env = "RAGMESH_SHARD", value_name = "NAME")]
    pub shard: Option<String>,
    /// Address to serve the agent API on [default: 127.0.0.1:7401]
    #[arg(long, env = "RAGMESH_LISTEN", value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Once serving, write the bound address (IP:PORT and a newline) to this file, replacing it
    /// atomically; for supervisors and scripts that start the daemon with --listen IP:0.
    /// Left in place at exit [default: none]
    #[arg(long, env = "RAGMESH_ADDR_FILE", value_name = "FILE")]
    pub addr_file: Option<PathBuf>,
    /// Serve Prometheus metrics over plain HTTP on this address, at /metrics (e.g.
    /// 127.0.0.1:9400); keep it on a private interface: it has no TLS or authentication
    /// [default: off]
    #[arg(long, env = "RAGMESH_METRICS_LISTEN", value_name = "IP:PORT")]
    pub metrics_listen: Option<String>,
    /// Once serving metrics, write their bound address (IP:PORT and a newline) to this file,
    /// as --addr-file does for gRPC; for scripts that use --metrics-listen IP:0 [default: none]
    #[arg(long, env = "RAGMESH_METRICS_ADDR_FILE", value_name = "FILE")]
    pub metrics_addr_file: Option<PathBuf>,
    /// host:port the master should dial [default: the bound listen address]
    #[arg(long, env = "RAGMESH_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// host:port of the master (required)
    #[arg(long, env = "RAGMESH_MASTER", value_name = "HOST:PORT")]
    pub master: Option<String>,
    /// Directory of the local index [default: ./ragmesh-agent-data]
    #[arg(long, env = "RAGMESH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// mTLS files, or --insecure
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Heartbeat interval on the health stream [default: 1000]
    #[arg(long, env = "RAGMESH_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Label reported to the master, repeatable (e.g. --label zone=eu-1)
    #[arg(long = "label", env = "RAGMESH_LABELS", value_name = "KEY=VALUE", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Join token from an operator (`ragmeshctl token join`); needed until the node is admitted
    #[arg(long, env = "RAGMESH_JOIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Largest gRPC message accepted, bytes [default: 4194304]
    #[arg(long, env = "RAGMESH_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Requests served at once (search, ingest, delete); more are refused at once with
    /// RESOURCE_EXHAUSTED instead of queueing. Health checks and reflection are never refused
    /// [default: 64]
    #[arg(long, env = "RAGMESH_MAX_CONCURRENT_REQUESTS", value_name = "N")]
    pub max_concurrent_requests: Option<usize>,
    /// Memory budget of the index writer, bytes, shared by its indexing threads (one per core,
    /// at most 8, each given 15 MB at least). Bounds ingest memory: a write batch whose terms
    /// outgrow it is flushed in several segments, so a write takes at most this budget plus its
    /// request (--max-message-bytes; at most 10000 documents per batch). Range 15000000 to
    /// 1073741824 [default: 50000000]
    #[arg(long, env = "RAGMESH_WRITER_HEAP_BYTES", value_name = "BYTES")]
    pub writer_heap_bytes: Option<usize>,
    /// Release the index writer (its threads and the memory they keep) after this long without
    /// a write, first merging the index's segments of similar size (searches then cost less);
    /// the next write creates it again, in a few milliseconds. Every write is still committed
    /// before it is acknowledged. 0 keeps the writer for the agent's life (and merges only as
    /// ingest does). Range 0 or 100 to 86400000 [default: 30000]
    #[arg(long, env = "RAGMESH_WRITER_IDLE_RELEASE_MS", value_name = "MS")]
    pub writer_idle_release_ms: Option<u64>,
    /// Trace export over OTLP
    #[command(flatten)]
    pub trace: crate::TraceArgs,
    /// Log filter, tracing-subscriber syntax [default: info]
    #[arg(long, env = "RAGMESH_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

/// A secret string whose Debug output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The TOML file of the agent: the same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    name: Option<String>,
    shard: Option<String>,
    listen: Option<String>,
    addr_file: Option<PathBuf>,
    metrics_listen: Option<String>,
    metrics_addr_file: Option<PathBuf>,
    advertise: Option<String>,
    master: Option<String>,
    data_dir: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    insecure: Option<bool>,
    heartbeat_interval_ms: Option<u64>,
    labels: Option<BTreeMap<String, String>>,
    join_token: Option<String>,
    max_message_bytes: Option<usize>,
    max_concurrent_requests: Option<usize>,
    writer_heap_bytes: Option<usize>,
    writer_idle_release_ms: Option<u64>,
    log: Option<String>,
    otlp_endpoint: Option<String>,
    trace_sample_ratio: Option<f64>,
    /// Operator-declared actions (`[[actions]]`); the file is their only source.
    #[serde(default)]
    actions: Vec<ActionSpec>,
    /// Text analysis and BM25 parameters of the index (`[analysis]`); file only.
    #[serde(default)]
    analysis: AnalysisFile,
}

/// `[analysis]` of the agent file: how the index analyses text and scores matches.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalysisFile {
    stemming: Option<String>,
    stop_words: Option<String>,
    k1: Option<f32>,
    b: Option<f32>,
    /// Per-collection overrides (`[analysis.collections.NAME]`).
    #[serde(default)]
    collections: BTreeMap<String, CollectionAnalysisFile>,
}

/// `[analysis.collections.NAME]`: what one collection analyses and scores differently; each
/// key left out is taken from `[analysis]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectionAnalysisFile {
    stemming: Option<String>,
    stop_words: Option<String>,
    k1: Option<f32>,
    b: Option<f32>,
}

/// Most `[analysis.collections.NAME]` tables (ragmesh-index's `MAX_COLLECTION_OVERRIDES`).
pub const MAX_COLLECTION_OVERRIDES: usize = 1024;
/// Most distinct (stemming, stop_words) pairs over `[analysis]` and its collections
/// (ragmesh-index's `MAX_PROFILES`: each adds a title and a body field to the index).
pub const MAX_ANALYSIS_PROFILES: usize = 8;
/// Longest collection name (ragmesh-index's `MAX_COLLECTION_CHARS`).
const MAX_COLLECTION_CHARS: usize = 64;

/// Stemmer names `[analysis] stemming` accepts besides "none" (ragmesh-index's
/// `analysis::Stemming::names`; the agent's tests check the two lists agree).
pub const STEMMING_NAMES: &[&str] = &[
    "english",
    "porter",
    "arabic",
    "danish",
    "dutch",
    "finnish",
    "french",
    "german",
    "greek",
    "hungarian",
    "italian",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "spanish",
    "swedish",
    "tamil",
    "turkish",
];

/// Validated `[analysis]`: the index's analysis profile and BM25 parameters. The defaults were
/// chosen by measurement on the vaswani collection (ragmesh-index's `analysis_vaswani` test).
/// Changing `stemming` or `stop_words` needs the index rebuilt (the agent refuses to open an
/// index built otherwise and says how); `k1` and `b` take effect at the next start, and must be
/// the same on every agent serving the same collections, or a federated ranking mixes scales.
///
/// `[analysis.collections.NAME]` tables override any of the four keys for one collection (the
/// others are taken from `[analysis]`). A collection's overrides must be identical on every agent
/// serving it. Each (stemming, stop_words) pair in use gets its own fields in the index, which
/// index every document: a collection may switch to a pair the index already has at the next
/// start, while a pair the index has no fields for needs the index rebuilt through a snapshot
/// (the agent refuses to start and names the collections and the way out).
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisConfig {
    /// Stemmer: "none" or one of [`STEMMING_NAMES`].
    pub stemming: String,
    /// Stop words: "english" or "none".
    pub stop_words: String,
    /// BM25 term saturation, 0 to 10.
    pub k1: f32,
    /// BM25 length normalisation, 0 to 1.
    pub b: f32,
    /// Collections analysed or scored differently, by name, fully resolved.
    pub collections: BTreeMap<String, CollectionAnalysisConfig>,
}

/// The resolved analysis of one `[analysis.collections.NAME]` (keys it leaves out taken from
/// `[analysis]`).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionAnalysisConfig {
    /// Stemmer: "none" or one of [`STEMMING_NAMES`].
    pub stemming: String,
    /// Stop words: "english" or "none".
    pub stop_words: String,
    /// BM25 term saturation, 0 to 10.
    pub k1: f32,
    /// BM25 length normalisation, 0 to 1.
    pub b: f32,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            stemming: "english".to_owned(),
            stop_words: "none".to_owned(),
            k1: 1.2,
            b: 0.75,
            collections: BTreeMap::new(),
        }
    }
}

/// Checks one set of analysis values, naming `table` in each problem.
fn check_analysis(table: &str, stemming: &str, stop_words: &str, k1: f32, b: f32, problems: &mut Problems) {
    if stemming != "none" && !STEMMING_NAMES.contains(&stemming) {
        problems.push(format!(
            "{table} stemming = {stemming:?} is unknown: use \"none\" or one of {}",
            STEMMING_NAMES.join(", ")
        ));
    }
    if stop_words != "english" && stop_words != "none" {
        problems.push(format!("{table} stop_words = {stop_words:?} is unknown: use \"english\" or \"none\""));
    }
    if !(0.0..=10.0).contains(&k1) {
        problems.push(format!("{table} k1 = {k1} is out of range: use 0 to 10 (the usual is 1.2)"));
    }
    if !(0.0..=1.0).contains(&b) {
        problems.push(format!("{table} b = {b} is out of range: use 0 to 1 (the usual is 0.75)"));
    }
}

impl AnalysisFile {
    fn resolve(self, problems: &mut Problems) -> AnalysisConfig {
        let defaults = AnalysisConfig::default();
        let stemming = self.stemming.unwrap_or(defaults.stemming);
        let stop_words = self.stop_words.unwrap_or(defaults.stop_words);
        let k1 = self.k1.unwrap_or(defaults.k1);
        let b = self.b.unwrap_or(defaults.b);
        check_analysis("[analysis]", &stemming, &stop_words, k1, b, problems);
        if self.collections.len() > MAX_COLLECTION_OVERRIDES {
            problems.push(format!(
                "[analysis.collections] has {} collections, more than the {MAX_COLLECTION_OVERRIDES} allowed",
                self.collections.len()
            ));
        }
        let mut collections = BTreeMap::new();
        for (name, file) in self.collections {
            let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if name.is_empty() || name.len() > MAX_COLLECTION_CHARS || !valid_chars {
                problems.push(format!(
                    "[analysis.collections.{name:?}] names no valid collection: use 1-{MAX_COLLECTION_CHARS} \
                     characters from A-Z a-z 0-9 _ . -"
                ));
                continue;
            }
            let resolved = CollectionAnalysisConfig {
                stemming: file.stemming.unwrap_or_else(|| stemming.clone()),
                stop_words: file.stop_words.unwrap_or_else(|| stop_words.clone()),
                k1: file.k1.unwrap_or(k1),
                b: file.b.unwrap_or(b),
            };
            let table = format!("[analysis.collections.{name}]");
            check_analysis(&table, &resolved.stemming, &resolved.stop_words, resolved.k1, resolved.b, problems);
            collections.insert(name, resolved);
        }
        let mut profiles: Vec<(&str, &str)> = vec![(stemming.as_str(), stop_words.as_str())];
        for resolved in collections.values() {
            let profile = (resolved.stemming.as_str(), resolved.stop_words.as_str());
            if !profiles.contains(&profile) {
                profiles.push(profile);
            }
        }
        if profiles.len() > MAX_ANALYSIS_PROFILES {
            problems.push(format!(
                "[analysis] and its collections use {} distinct (stemming, stop_words) pairs, more than the \
                 {MAX_ANALYSIS_PROFILES} one index may hold: give more collections the same ones",
                profiles.len()
            ));
        }
        AnalysisConfig { stemming, stop_words, k1, b, collections }
    }
}

/// Validated configuration of an agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name; `None` means "take it from the certificate".
    pub name: Option<String>,
    /// Shard group served; `None` means the node name (a group of one).
    pub shard: Option<String>,
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Address to advertise; `None` means the bound address.
    pub advertise: Option<String>,
    /// Master address, `host:port`.
    pub master: String,
    /// Directory of the local index and state.
    pub data_dir: PathBuf,
    /// TLS files; `None` means plaintext (`--insecure`).
    pub tls: Option<TlsFiles>,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Labels reported at registration.
    pub labels: BTreeMap<String, String>,
    /// Join token for the first admission.
    pub join_token: Option<Secret>,
    /// Largest message accepted.
    pub max_message_bytes: usize,
    /// Requests of the agent API served at once; more are shed with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Memory budget of the index writer, bytes (`--writer-heap-bytes`).
    pub writer_heap_bytes: usize,
    /// How long the index writer may stay idle before it is released; `None` keeps it
    /// (`--writer-idle-release-ms 0`).
    pub writer_idle_release: Option<Duration>,
    /// Log filter.
    pub log: String,
    /// The operator-declared actions this agent offers (`[[actions]]` in the TOML file), each
    /// validated; the agent runs nothing else but its built-ins.
    pub actions: Vec<ActionSpec>,
    /// How the index analyses text and scores matches (`[analysis]` in the TOML file).
    pub analysis: AnalysisConfig,
}

/// Default of `--max-concurrent-requests`: enough for bursts of federated searches from the
/// master on a few cores, while bounding the blocking threads an overloaded agent starts.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 64;
/// Bounds and default of `--writer-heap-bytes`, as ragmesh-index enforces them.
pub use ragmesh_types::writer::{DEFAULT_WRITER_HEAP_BYTES, MAX_WRITER_HEAP_BYTES, MIN_WRITER_HEAP_BYTES};
/// Default of `--writer-idle-release-ms`: long enough that the batches of one ingest run reuse
/// one writer, short enough that an agent idles without the writer's memory.
pub const DEFAULT_WRITER_IDLE_RELEASE_MS: u64 = 30_000;

/// A node name is a DNS label, so it can appear in certificates: 1-63 of `[a-z0-9-]`.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Checks a `host:port` the way the transport will use it, without resolving the host.
fn check_host_port(flag: &str, value: &str, problems: &mut Problems) {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !ok {
        problems.push(format!("--{flag} {value:?} is not HOST:PORT (e.g. master.internal:7400)"));
    }
}

impl AgentArgs {
    /// Merges flags/env over the file over defaults and validates the result.
    pub fn resolve(self) -> Result<AgentConfig, ConfigErrors> {
        self.resolve_daemon().map(|(config, _process)| config)
    }

    /// [`Self::resolve`] plus the settings of the process around the service
    /// ([`ProcessConfig`]: `--addr-file`), validated together: what the daemon's `main` uses.
    pub fn resolve_daemon(self) -> Result<(AgentConfig, ProcessConfig), ConfigErrors> {
        let mut problems = Problems::default();
        let file: AgentFile = read_file(self.config.as_deref(), &mut problems);

        let name = self.name.or(file.name);
        if let Some(name) = &name
            && !valid_node_name(name)
        {
            problems.push(format!("--name {name:?} is invalid: use 1-63 characters of a-z, 0-9 and '-'"));
        }
        let shard = self.shard.or(file.shard);
        if let Some(shard) = &shard
            && !valid_node_name(shard)
        {
            problems.push(format!(
                "--shard {shard:?} is invalid: a shard group is named like a node, 1-63 characters of a-z, 0-9 and '-'"
            ));
        }
        let listen = self.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:7401".to_owned());
        let listen = parse_listen("listen", &listen, &mut problems);
        let addr_file = resolve_addr_file("addr-file", self.addr_file, file.addr_file, &mut problems);
        let metrics_listen = resolve_metrics_listen(self.metrics_listen.or(file.metrics_listen), &mut problems);
        let metrics_addr_file =
            resolve_metrics_addr_file(self.metrics_addr_file, file.metrics_addr_file, metrics_listen, &mut problems);
        let advertise = self.advertise.or(file.advertise);
        match &advertise {
            Some(advertise) => check_host_port("advertise", advertise, &mut problems),
            None if listen.ip().is_unspecified() => problems.push(format!(
                "--advertise is required when --listen is {listen}: give the HOST:PORT the master should dial"
            )),
            None => {}
        }
        let master = self.master.or(file.master).unwrap_or_default();
        if master.is_empty() {
            problems.push("--master is required (or RAGMESH_MASTER): the master's HOST:PORT".to_owned());
        } else {
            check_host_port("master", &master, &mut problems);
        }
        let data_dir = self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("ragmesh-agent-data"));
        let insecure = self.tls.insecure || file.insecure.unwrap_or(false);
        let file_tls = TlsFileKeys { ca: file.ca, cert: file.cert, key: file.key, insecure: file.insecure };
        let tls = self.tls.resolve(file_tls, &mut problems);
        if insecure && name.is_none() {
            problems.push("--name is required with --insecure: there is no certificate to take it from".to_owned());
        }
        let heartbeat_interval_ms = self.heartbeat_interval_ms.or(file.heartbeat_interval_ms).unwrap_or(1000);
        check_range("heartbeat-interval-ms", heartbeat_interval_ms, 50, 60_000, &mut problems);

        let mut labels = file.labels.unwrap_or_default();
        for label in self.labels {
            match label.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    labels.insert(key.to_owned(), value.to_owned());
                }
                _ => problems.push(format!("--label {label:?} is not KEY=VALUE")),
            }
        }
        let join_token = self.join_token.or(file.join_token).filter(|t| !t.is_empty()).map(Secret);
        let max_message_bytes = self.max_message_bytes.or(file.max_message_bytes).unwrap_or(4 * 1024 * 1024);
        check_range("max-message-bytes", max_message_bytes as u64, 1024, 256 * 1024 * 1024, &mut problems);
        let max_concurrent_requests =
            self.max_concurrent_requests.or(file.max_concurrent_requests).unwrap_or(DEFAULT_MAX_CONCURRENT_REQUESTS);
        check_range("max-concurrent-requests", max_concurrent_requests as u64, 1, 100_000, &mut problems);
        let writer_heap_bytes = self.writer_heap_bytes.or(file.writer_heap_bytes).unwrap_or(DEFAULT_WRITER_HEAP_BYTES);
        check_range(
            "writer-heap-bytes",
            writer_heap_bytes as u64,
            MIN_WRITER_HEAP_BYTES as u64,
            MAX_WRITER_HEAP_BYTES as u64,
            &mut problems,
        );
        let writer_idle_release_ms =
            self.writer_idle_release_ms.or(file.writer_idle_release_ms).unwrap_or(DEFAULT_WRITER_IDLE_RELEASE_MS);
        if writer_idle_release_ms != 0 && !(100..=86_400_000).contains(&writer_idle_release_ms) {
            problems.push(format!(
                "--writer-idle-release-ms {writer_idle_release_ms} is out of range: use 0 (never release) or 100..=86400000"
            ));
        }
        let writer_idle_release = (writer_idle_release_ms != 0).then(|| Duration::from_millis(writer_idle_release_ms));
        let log = self.log.or(file.log).unwrap_or_else(|| "info".to_owned());
        let trace = self.trace.resolve(file.otlp_endpoint, file.trace_sample_ratio, &mut problems);
        for problem in ragmesh_actions::validate_specs(&file.actions) {
            problems.push(problem);
        }
        let analysis = file.analysis.resolve(&mut problems);

        let config = AgentConfig {
            join_token,
            max_message_bytes,
            max_concurrent_requests,
            writer_heap_bytes,
            writer_idle_release,
            name,
            shard,
            listen,
            advertise,
            master,
            data_dir,
            tls,
            heartbeat_interval: Duration::from_millis(heartbeat_interval_ms),
            labels,
            log,
            actions: file.actions,
            analysis,
        };
        problems.finish((config, ProcessConfig { addr_file, metrics_listen, metrics_addr_file, trace }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> AgentArgs {
        AgentArgs::try_parse_from(std::iter::once("ragmesh-agent").chain(list.iter().copied())).expect("parse")
    }

    #[test]
    fn minimal_insecure_agent_resolves() {
        let config = args(&["--insecure", "--name", "n1", "--master", "127.0.0.1:7400", "--label", "zone=a"])
            .resolve()
            .expect("valid");
        assert_eq!(config.name.as_deref(), Some("n1"));
        assert_eq!(config.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(config.heartbeat_interval, Duration::from_millis(1000));
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let errors = args(&["--name", "Bad Name", "--label", "novalue", "--heartbeat-interval-ms", "1"])
            .resolve()
            .expect_err("invalid");
        let text = errors.to_string();
        for needle in [
            "--name \"Bad Name\"",
            "--master is required",
            "--label \"novalue\"",
            "--heartbeat-interval-ms 1",
            "--ca is required",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
    }

    #[test]
    fn a_wildcard_listen_address_needs_an_advertised_address() {
        let base = ["--insecure", "--name", "n1", "--master", "m:7400", "--listen", "0.0.0.0:7401"];
        let errors = args(&base).resolve().expect_err("needs --advertise");
        assert!(errors.to_string().contains("--advertise is required"), "{errors}");
        let mut with = base.to_vec();
        with.extend(["--advertise", "node1.internal:7401"]);
        assert!(args(&with).resolve().is_ok());
    }

    #[test]
    fn max_concurrent_requests_comes_from_flag_env_or_file_and_is_validated() {
        let base = ["--insecure", "--name", "n1", "--master", "m:7400"];
        let config = args(&base).resolve().expect("valid");
        assert_eq!(config.max_concurrent_requests, DEFAULT_MAX_CONCURRENT_REQUESTS);

        let mut with = base.to_vec();
        with.extend(["--max-concurrent-requests", "8"]);
        assert_eq!(args(&with).resolve().expect("valid").max_concurrent_requests, 8);

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "max_concurrent_requests = 3\n").expect("write config");
        let mut from_file = base.to_vec();
        let file_arg = file.to_str().expect("utf-8 path");
        from_file.extend(["--config", file_arg]);
        assert_eq!(args(&from_file).resolve().expect("valid").max_concurrent_requests, 3);

        let mut zero = base.to_vec();
        zero.extend(["--max-concurrent-requests", "0"]);
        let errors = args(&zero).resolve().expect_err("zero serves nothing");
        assert!(errors.to_string().contains("--max-concurrent-requests 0 is out of range: use 1..=100000"), "{errors}");
    }

    #[test]
    fn writer_memory_keys_come_from_flag_env_or_file_and_are_validated() {
        let base = ["--insecure", "--name", "n1", "--master", "m:7400"];
        let config = args(&base).resolve().expect("valid");
        assert_eq!(config.writer_heap_bytes, DEFAULT_WRITER_HEAP_BYTES);
        assert_eq!(config.writer_idle_release, Some(Duration::from_millis(DEFAULT_WRITER_IDLE_RELEASE_MS)));

        let mut with = base.to_vec();
        with.extend(["--writer-heap-bytes", "20000000", "--writer-idle-release-ms", "0"]);
        let config = args(&with).resolve().expect("valid");
        assert_eq!((config.writer_heap_bytes, config.writer_idle_release), (20_000_000, None));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "writer_heap_bytes = 16000000\nwriter_idle_release_ms = 500\n").expect("write config");
        let mut from_file = base.to_vec();
        from_file.extend(["--config", file.to_str().expect("utf-8 path")]);
        let config = args(&from_file).resolve().expect("valid");
        assert_eq!(
            (config.writer_heap_bytes, config.writer_idle_release),
            (16_000_000, Some(Duration::from_millis(500)))
        );

        let mut bad = base.to_vec();
        bad.extend(["--writer-heap-bytes", "1000000", "--writer-idle-release-ms", "50"]);
        let text = args(&bad).resolve().expect_err("both out of range").to_string();
        assert!(text.contains("--writer-heap-bytes 1000000 is out of range: use 15000000..=1073741824"), "{text}");
        assert!(text.contains("--writer-idle-release-ms 50 is out of range: use 0 (never release)"), "{text}");
    }

    #[test]
    fn addr_file_is_an_agent_setting_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wanted = dir.path().join("agent-1.addr");
        let base = ["--insecure", "--name", "n1", "--master", "m:7400", "--listen", "127.0.0.1:0"];
        let mut with = base.to_vec();
        with.extend(["--addr-file", wanted.to_str().expect("utf8")]);
        let (config, process) = args(&with).resolve_daemon().expect("valid");
        assert_eq!(config.listen.port(), 0);
        assert_eq!(process.addr_file.as_deref(), Some(wanted.as_path()));
        // clap refuses an empty flag value; the file can still hold one.
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "addr_file = \"\"\n").expect("write config");
        let mut bad = base.to_vec();
        bad.extend(["--config", file.to_str().expect("utf-8 path")]);
        let errors = args(&bad).resolve_daemon().expect_err("empty");
        assert!(errors.to_string().contains("--addr-file is empty"), "{errors}");
    }

    #[test]
    fn shard_defaults_to_none_and_comes_from_flag_env_or_file() {
        let base = ["--insecure", "--name", "n1", "--master", "m:7400"];
        assert_eq!(args(&base).resolve().expect("valid").shard, None, "unset: the node name decides later");

        let mut with = base.to_vec();
        with.extend(["--shard", "group-a"]);
        assert_eq!(args(&with).resolve().expect("valid").shard.as_deref(), Some("group-a"));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "shard = \"group-b\"\n").expect("write config");
        let mut from_file = base.to_vec();
        from_file.extend(["--config", file.to_str().expect("utf-8 path")]);
        assert_eq!(args(&from_file).resolve().expect("valid").shard.as_deref(), Some("group-b"));
        // The flag wins over the file.
        from_file.extend(["--shard", "group-c"]);
        assert_eq!(args(&from_file).resolve().expect("valid").shard.as_deref(), Some("group-c"));
    }

    #[test]
    fn shard_env_variable_is_read() {
        // The variable name is part of the interface; read from clap's definition rather than
        // set in the process environment, which other tests share.
        use clap::CommandFactory as _;
        let command = AgentArgs::command();
        let shard = command.get_arguments().find(|a| a.get_id() == "shard").expect("--shard exists");
        assert_eq!(shard.get_env(), Some(std::ffi::OsStr::new("RAGMESH_SHARD")));
    }

    #[test]
    fn an_invalid_shard_is_refused_with_the_naming_rule() {
        for bad in ["Group A", "a-", "under_score"] {
            let errors = args(&["--insecure", "--name", "n1", "--master", "m:7400", "--shard", bad])
                .resolve()
                .expect_err("invalid shard");
            let text = errors.to_string();
            assert!(text.contains(&format!("--shard {bad:?} is invalid")), "{text}");
            assert!(text.contains("1-63 characters of a-z, 0-9 and '-'"), "{text}");
        }
    }

    fn with_file(base: &[&str], text: &str) -> (tempfile::TempDir, AgentArgs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, text).expect("write config");
        let mut list = base.to_vec();
        let file_arg = file.to_str().expect("utf-8 path").to_owned();
        list.extend(["--config", &file_arg]);
        let parsed = args(&list);
        (dir, parsed)
    }

    #[test]
    fn analysis_defaults_and_file_settings_are_checked() {
        let base = ["--insecure", "--name", "n1", "--master", "m:7400"];
        assert_eq!(args(&base).resolve().expect("valid").analysis, AnalysisConfig::default());
        let (_dir, parsed) =
            with_file(&base, "[analysis]\nstemming = \"porter\"\nstop_words = \"english\"\nk1 = 0.9\nb = 0.4\n");
        let analysis = parsed.resolve().expect("valid").analysis;
        assert_eq!(
            analysis,
            AnalysisConfig {
                stemming: "porter".into(),
                stop_words: "english".into(),
                k1: 0.9,
                b: 0.4,
                collections: BTreeMap::new()
            }
        );
        let (_dir, parsed) =
            with_file(&base, "[analysis]\nstemming = \"klingon\"\nstop_words = \"french\"\nk1 = -1.0\nb = 1.5\n");
        let errors = parsed.resolve().expect_err("invalid");
        let text = errors.to_string();
        assert_eq!(errors.problems.len(), 4, "{text}");
        assert!(
            text.contains("porter") && text.contains("\"english\" or \"none\"") && text.contains("0 to 10"),
            "{text}"
        );
        let (_dir, parsed) = with_file(&base, "[analysis]\nstemmer = \"porter\"\n");
        assert!(parsed.resolve().is_err(), "unknown keys are refused");
    }

    #[test]
    fn collections_override_analysis_keys_and_inherit_the_rest() {
        let base = ["--insecure", "--name", "n1", "--master", "m:7400"];
        let text = "[analysis]\nstop_words = \"english\"\nk1 = 1.0\n\n\
                    [analysis.collections.logs]\nstemming = \"none\"\n\n\
                    [analysis.collections.\"papers.v2\"]\nk1 = 0.8\nb = 0.3\n";
        let (_dir, parsed) = with_file(&base, text);
        let analysis = parsed.resolve().expect("valid").analysis;
        assert_eq!(analysis.stop_words, "english");
        let logs = &analysis.collections["logs"];
        assert_eq!(
            *logs,
            CollectionAnalysisConfig { stemming: "none".into(), stop_words: "english".into(), k1: 1.0, b: 0.75 }
        );
        let papers = &analysis.collections["papers.v2"];
        assert_eq!(
            *papers,
            CollectionAnalysisConfig { stemming: "english".into(), stop_words: "english".into(), k1: 0.8, b: 0.3 }
        );
    }

    #[test]
    fn bad_collection_overrides_are_refused_with_their_table_named() {
        let base = ["--insecure", "--name", "n1", "--master", "m:7400"];
        let bad = "[analysis.collections.logs]\nstemming = \"klingon\"\nb = 2.0\n\n\
                   [analysis.collections.\"bad name\"]\nk1 = 1.0\n";
        let (_dir, parsed) = with_file(&base, bad);
        let errors = parsed.resolve().expect_err("invalid");
        let text = errors.to_string();
        assert_eq!(errors.problems.len(), 3, "{text}");
        assert!(text.contains("[analysis.collections.logs] stemming = \"klingon\""), "{text}");
        assert!(text.contains("[analysis.collections.logs] b = 2"), "{text}");
        assert!(text.contains("\"bad name\"] names no valid collection"), "{text}");
        let (_dir, parsed) = with_file(&base, "[analysis.collections.logs]\nstemmer = \"none\"\n");
        assert!(parsed.resolve().is_err(), "unknown keys are refused");
        let mut many = String::new();
        for (i, stemmer) in STEMMING_NAMES.iter().enumerate() {
            many.push_str(&format!("[analysis.collections.c{i}]\nstemming = \"{stemmer}\"\n"));
        }
        let (_dir, parsed) = with_file(&base, &many);
        let text = parsed.resolve().expect_err("too many profiles").to_string();
        assert!(text.contains("distinct (stemming, stop_words) pairs"), "{text}");
    }

    #[test]
    fn declared_actions_come_from_the_file() {
        let base = ["--insecure", "--name", "n1", "--master", "m:7400"];
        assert!(args(&base).resolve().expect("valid").actions.is_empty(), "none unless declared");
        let text = r#"
[[actions]]
name = "clear-cache"
tenants = ["*"]
[actions.run.http]
url = "http://127.0.0.1:8000/internal/clear-cache"
"#;
        let (_dir, parsed) = with_file(&base, text);
        let config = parsed.resolve().expect("valid");
        let names: Vec<&str> = config.actions.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["clear-cache"]);
    }

    #[test]
    fn action_problems_join_the_other_config_problems() {
        let text = r#"
[[actions]]
name = "index.wipe"
tenants = ["*"]
timeout_ms = 0
[actions.run.exec]
program = "rm"
argv = ["-rf", "{path}"]
"#;
        let (_dir, parsed) = with_file(&["--insecure", "--name", "Bad Name", "--master", "m:7400"], text);
        let errors = parsed.resolve().expect_err("invalid");
        let text = errors.to_string();
        for needle in [
            "--name \"Bad Name\" is invalid",
            "action \"index.wipe\": names starting with \"index.\" are reserved",
            "action \"index.wipe\": timeout_ms 0 is out of range",
            "action \"index.wipe\": run step: program rm is a relative path",
            "action \"index.wipe\": run step: placeholder {path} names no declared argument",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
        assert_eq!(errors.problems.len(), 5, "{text}");
    }

    #[test]
    fn a_malformed_action_is_a_config_file_problem() {
        let text =
            "[[actions]]\nname = \"x\"\ntenants = []\n[actions.run.exec]\nprogram = \"/bin/true\"\nshell = true\n";
        let (_dir, parsed) = with_file(&["--insecure", "--name", "n1", "--master", "m:7400"], text);
        let errors = parsed.resolve().expect_err("unknown key");
        assert!(errors.to_string().contains("unknown field `shell`"), "{errors}");
    }

    #[test]
    fn node_names_are_dns_labels() {
        assert!(valid_node_name("agent-1"));
        assert!(!valid_node_name("Agent"));
        assert!(!valid_node_name("-a"));
        assert!(!valid_node_name(&"a".repeat(64)));
    }
}
