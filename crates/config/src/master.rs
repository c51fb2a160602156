//! Configuration of `ragmesh-master`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ragmesh_tls::TlsFiles;
use serde::Deserialize;

use crate::errors::Problems;
use crate::{
    ConfigErrors, ProcessConfig, TlsArgs, TlsFileKeys, check_range, parse_listen, read_file, resolve_addr_file,
    resolve_metrics_addr_file, resolve_metrics_listen,
};

/// Command line of `ragmesh-master`. Every flag also reads a `RAGMESH_*` variable, and every
/// flag but --config can be set in the TOML file under its name with `_` for `-`.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "ragmesh-master", version, about = "ragmesh master: node registry and federated search over mTLS")]
pub struct MasterArgs {
    /// TOML config file (keys: the long flag names with `_` for `-`, e.g. listen, data_dir, ca, operators = ["client"], rate_limit_rps)
    #[arg(long, env = "RAGMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on (clients and agents) [default: 127.0.0.1:7400]
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
    /// Directory for the node registry (sled) [default: ./ragmesh-master-data]
    #[arg(long, env = "RAGMESH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// mTLS files, or --insecure
    #[command(flatten)]
    pub tls: TlsArgs,
    /// A node whose heartbeats stop for this long is marked down [default: 2500]
    #[arg(long, env = "RAGMESH_HEARTBEAT_TIMEOUT_MS", value_name = "MS")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// Heartbeats per second the whole fleet may send: a fleet larger than this many times the
    /// agents' interval beats more slowly (each agent is told its interval, and its timeout
    /// stretches to at least 2.5 of them); 0 turns pacing off [default: 200]
    #[arg(long, env = "RAGMESH_MAX_HEARTBEATS_PER_SECOND", value_name = "N")]
    pub max_heartbeats_per_second: Option<u32>,
    /// Deadline of a federated search when the caller sets none [default: 2000]
    #[arg(long, env = "RAGMESH_SEARCH_TIMEOUT_MS", value_name = "MS")]
    pub search_timeout_ms: Option<u64>,
    /// Upper bound on any caller-supplied search deadline [default: 30000]
    #[arg(long, env = "RAGMESH_MAX_SEARCH_TIMEOUT_MS", value_name = "MS")]
    pub max_search_timeout_ms: Option<u64>,
    /// Certificate names (CN) that are operators: full access without a token, e.g. `client`
    /// [default: none]
    #[arg(long, env = "RAGMESH_OPERATORS", value_name = "NAME", value_delimiter = ',')]
    pub operators: Vec<String>,
    /// Lifetime of access tokens issued without an explicit ttl, seconds [default: 900]
    #[arg(long, env = "RAGMESH_ACCESS_TOKEN_TTL_S", value_name = "S")]
    pub access_token_ttl_s: Option<u64>,
    /// Longest access-token lifetime anyone may ask for, seconds; a subject revocation is kept
    /// this long plus the token leeway (until every token it refuses has expired), then
    /// forgotten [default: 86400]
    #[arg(long, env = "RAGMESH_MAX_ACCESS_TOKEN_TTL_S", value_name = "S")]
    pub max_access_token_ttl_s: Option<u64>,
    /// Lifetime of refresh tokens, seconds [default: 604800 (7 days)]
    #[arg(long, env = "RAGMESH_REFRESH_TOKEN_TTL_S", value_name = "S")]
    pub refresh_token_ttl_s: Option<u64>,
    /// Clock-skew allowance when verifying access tokens: a token is still accepted this many
    /// seconds past its expiry (and this many seconds before its issue time); 0 for exact expiry
    /// [default: 30]
    #[arg(long, env = "RAGMESH_TOKEN_LEEWAY_SECS", value_name = "S")]
    pub token_leeway_secs: Option<u64>,
    /// Most refused join attempts remembered for `ragmeshctl nodes --pending`; beyond it the
    /// oldest attempt is forgotten first [default: 256]
    #[arg(long, env = "RAGMESH_MAX_PENDING_JOINS", value_name = "N")]
    pub max_pending_joins: Option<usize>,
    /// A refused join attempt not repeated for this long is forgotten, seconds [default: 86400]
    #[arg(long, env = "RAGMESH_PENDING_JOIN_TTL_S", value_name = "S")]
    pub pending_join_ttl_s: Option<u64>,
    /// Requests per second allowed per principal (token subject, operator or node) [default: 1000]
    #[arg(long, env = "RAGMESH_RATE_LIMIT_RPS", value_name = "N")]
    pub rate_limit_rps: Option<u32>,
    /// Burst allowed per principal above the steady rate [default: 2000]
    #[arg(long, env = "RAGMESH_RATE_LIMIT_BURST", value_name = "N")]
    pub rate_limit_burst: Option<u32>,
    /// Largest gRPC message accepted, bytes [default: 4194304]
    #[arg(long, env = "RAGMESH_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Concurrent HTTP/2 streams per connection [default: 256]
    #[arg(long, env = "RAGMESH_MAX_STREAMS_PER_CONNECTION", value_name = "N")]
    pub max_streams_per_connection: Option<u32>,
    /// Replicas of a shard group that must apply a write before it is acknowledged: `all` or
    /// `majority` (of every registered replica of the group, whatever its liveness)
    /// [default: majority]
    #[arg(long, env = "RAGMESH_WRITE_QUORUM", value_name = "all|majority")]
    pub write_quorum: Option<String>,
    /// Most entries a shard group's write log keeps; beyond it the oldest are dropped even if a
    /// replica still needs them (that replica becomes stale) [default: 100000]
    #[arg(long, env = "RAGMESH_WRITE_LOG_MAX_ENTRIES", value_name = "N")]
    pub write_log_max_entries: Option<u64>,
    /// Most bytes a shard group's write log keeps, like --write-log-max-entries
    /// [default: 268435456 (256 MiB)]
    #[arg(long, env = "RAGMESH_WRITE_LOG_MAX_BYTES", value_name = "BYTES")]
    pub write_log_max_bytes: Option<u64>,
    /// Failed calls in a row that open a node's circuit breaker [default: 7]
    #[arg(long, env = "RAGMESH_BREAKER_FAILURES", value_name = "N")]
    pub breaker_failures: Option<u32>,
    /// Wait before an open breaker's first probe; it doubles after each failed probe
    /// [default: 1000]
    #[arg(long, env = "RAGMESH_BREAKER_MIN_WAIT_MS", value_name = "MS")]
    pub breaker_min_wait_ms: Option<u64>,
    /// Longest wait between probes of an open breaker [default: 60000]
    #[arg(long, env = "RAGMESH_BREAKER_MAX_WAIT_MS", value_name = "MS")]
    pub breaker_max_wait_ms: Option<u64>,
    /// Retries of failed reads allowed, as a percentage of reads over the last 10 s, on top of
    /// --retry-min-per-second [default: 20]
    #[arg(long, env = "RAGMESH_RETRY_BUDGET_PERCENT", value_name = "PERCENT")]
    pub retry_budget_percent: Option<u32>,
    /// Retries of failed reads always allowed per second [default: 10]
    #[arg(long, env = "RAGMESH_RETRY_MIN_PER_SECOND", value_name = "N")]
    pub retry_min_per_second: Option<u32>,
    /// Hedged reads allowed, as a percentage of reads over the last 10 s (plus 10 per
    /// second for replicas that stall); 0 turns hedging off [default: 5]
    #[arg(long, env = "RAGMESH_HEDGE_BUDGET_PERCENT", value_name = "PERCENT")]
    pub hedge_budget_percent: Option<u32>,
    /// How long an action call's idempotency key is kept after its first use: a retry with the
    /// key within it replays the first result, seconds [default: 86400]
    #[arg(long, env = "RAGMESH_IDEMPOTENCY_TTL_S", value_name = "S")]
    pub idempotency_ttl_s: Option<u64>,
    /// Most idempotency keys held; beyond it calls with a new key are refused (never evicted:
    /// an evicted key would let its retry run twice) [default: 100000]
    #[arg(long, env = "RAGMESH_IDEMPOTENCY_MAX_KEYS", value_name = "N")]
    pub idempotency_max_keys: Option<usize>,
    /// Most records the action audit log keeps; the oldest are pruned first [default: 1000000]
    #[arg(long, env = "RAGMESH_AUDIT_MAX_RECORDS", value_name = "N")]
    pub audit_max_records: Option<u64>,
    /// Age after which action audit records are pruned, days [default: 90]
    #[arg(long, env = "RAGMESH_AUDIT_MAX_AGE_DAYS", value_name = "DAYS")]
    pub audit_max_age_days: Option<u64>,
    /// Most action jobs kept for `ragmeshctl action status`; the oldest finished ones are
    /// pruned first [default: 1000]
    #[arg(long, env = "RAGMESH_ACTION_JOBS_MAX", value_name = "N")]
    pub action_jobs_max: Option<u64>,
    /// Bytes the result cache of merged search answers may hold (keys and answers); 0 turns
    /// it off [default: 67108864 (64 MiB)]
    #[arg(long, env = "RAGMESH_RESULT_CACHE_BYTES", value_name = "BYTES")]
    pub result_cache_bytes: Option<u64>,
    /// Bytes the cache of per-group BM25 statistics may hold; 0 turns it off
    /// [default: 16777216 (16 MiB)]
    #[arg(long, env = "RAGMESH_STATISTICS_CACHE_BYTES", value_name = "BYTES")]
    pub statistics_cache_bytes: Option<u64>,
    /// Trace export over OTLP
    #[command(flatten)]
    pub trace: crate::TraceArgs,
    /// Log filter, tracing-subscriber syntax [default: info]
    #[arg(long, env = "RAGMESH_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

/// How many replicas of a shard group must apply a write before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteQuorum {
    /// Every registered replica.
    All,
    /// More than half of the registered replicas.
    #[default]
    Majority,
}

impl WriteQuorum {
    /// Replicas needed out of `replicas` (at least 1 when there is any replica).
    pub fn needed(self, replicas: usize) -> usize {
        match self {
            WriteQuorum::All => replicas,
            WriteQuorum::Majority => replicas / 2 + 1,
        }
        .min(replicas)
    }
}

impl std::fmt::Display for WriteQuorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriteQuorum::All => "all",
            WriteQuorum::Majority => "majority",
        })
    }
}

/// How the master's calls to agents survive slow, dead and flapping nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResilienceConfig {
    /// Failed calls in a row that open a node's circuit breaker.
    pub breaker_failures: u32,
    /// Wait before an open breaker's first probe.
    pub breaker_min_wait: Duration,
    /// Longest wait between probes.
    pub breaker_max_wait: Duration,
    /// Retries allowed as a percentage of reads (over 10 s), on top of the minimum.
    pub retry_budget_percent: u32,
    /// Retries always allowed per second.
    pub retry_min_per_second: u32,
    /// Hedges allowed as a percentage of reads (over 10 s); 0 turns hedging off.
    pub hedge_budget_percent: u32,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            breaker_failures: 7,
            breaker_min_wait: Duration::from_secs(1),
            breaker_max_wait: Duration::from_secs(60),
            retry_budget_percent: 20,
            retry_min_per_second: 10,
            hedge_budget_percent: 5,
        }
    }
}

/// Replicated writes: the quorum and the bounds of each shard group's write log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// Replicas that must apply a write before it is acknowledged.
    pub write_quorum: WriteQuorum,
    /// Most entries kept per group log.
    pub write_log_max_entries: u64,
    /// Most bytes kept per group log.
    pub write_log_max_bytes: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            write_quorum: WriteQuorum::Majority,
            write_log_max_entries: 100_000,
            write_log_max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Retention of the master's records of remote actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionsConfig {
    /// How long an idempotency key is kept after its first use.
    pub idempotency_ttl: Duration,
    /// Most idempotency keys held (new keys are refused beyond it).
    pub idempotency_max_keys: usize,
    /// Most audit records kept.
    pub audit_max_records: u64,
    /// Age after which audit records are pruned.
    pub audit_max_age: Duration,
    /// Most action jobs kept.
    pub max_jobs: u64,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig {
            idempotency_ttl: Duration::from_secs(86_400),
            idempotency_max_keys: 100_000,
            audit_max_records: 1_000_000,
            audit_max_age: Duration::from_secs(90 * 86_400),
            max_jobs: 1_000,
        }
    }
}

/// Checks the ranges of the action settings.
fn resolve_actions(actions: ActionsConfig, problems: &mut Problems) -> ActionsConfig {
    check_range("idempotency-ttl-s", actions.idempotency_ttl.as_secs(), 1, 30 * 86_400, problems);
    check_range("idempotency-max-keys", actions.idempotency_max_keys as u64, 1, 100_000_000, problems);
    check_range("audit-max-records", actions.audit_max_records, 1, 1_000_000_000, problems);
    check_range("audit-max-age-days", actions.audit_max_age.as_secs() / 86_400, 1, 36_500, problems);
    check_range("action-jobs-max", actions.max_jobs, 1, 10_000_000, problems);
    actions
}

/// Identity, access and abuse limits of the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    /// Certificate names with operator (admin) rights.
    pub operators: std::collections::BTreeSet<String>,
    /// Default access-token lifetime.
    pub access_token_ttl: Duration,
    /// Longest access-token lifetime.
    pub max_access_token_ttl: Duration,
    /// Refresh-token lifetime.
    pub refresh_token_ttl: Duration,
    /// Clock-skew allowance when verifying access tokens (past `exp`, before `iat`/`nbf`).
    pub token_leeway: Duration,
    /// Most refused join attempts kept for `ListPendingNodes` (the oldest is dropped first).
    pub max_pending_joins: usize,
    /// How long a refused join attempt is remembered after its last try.
    pub pending_join_ttl: Duration,
    /// Steady requests per second per principal.
    pub rate_limit_rps: u32,
    /// Burst per principal.
    pub rate_limit_burst: u32,
    /// Largest message accepted.
    pub max_message_bytes: usize,
    /// Concurrent streams per connection.
    pub max_streams_per_connection: u32,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            operators: std::collections::BTreeSet::new(),
            access_token_ttl: Duration::from_secs(900),
            max_access_token_ttl: Duration::from_secs(86_400),
            refresh_token_ttl: Duration::from_secs(7 * 86_400),
            token_leeway: Duration::from_secs(30),
            max_pending_joins: 256,
            pending_join_ttl: Duration::from_secs(86_400),
            // Above what one identity gets from a small mesh (README "Performance": ~400 uncached
            // searches/s on 2 cores, ~4,000 from the result cache): the limit stops a runaway
            // client, it does not ration a healthy one.
            rate_limit_rps: 1000,
            rate_limit_burst: 2000,
            max_message_bytes: 4 * 1024 * 1024,
            max_streams_per_connection: 256,
        }
    }
}

/// The TOML file of the master: the same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MasterFile {
    listen: Option<String>,
    addr_file: Option<PathBuf>,
    metrics_listen: Option<String>,
    metrics_addr_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    insecure: Option<bool>,
    heartbeat_timeout_ms: Option<u64>,
    max_heartbeats_per_second: Option<u32>,
    search_timeout_ms: Option<u64>,
    max_search_timeout_ms: Option<u64>,
    operators: Option<Vec<String>>,
    access_token_ttl_s: Option<u64>,
    max_access_token_ttl_s: Option<u64>,
    refresh_token_ttl_s: Option<u64>,
    token_leeway_secs: Option<u64>,
    max_pending_joins: Option<usize>,
    pending_join_ttl_s: Option<u64>,
    rate_limit_rps: Option<u32>,
    rate_limit_burst: Option<u32>,
    max_message_bytes: Option<usize>,
    max_streams_per_connection: Option<u32>,
    write_quorum: Option<String>,
    write_log_max_entries: Option<u64>,
    write_log_max_bytes: Option<u64>,
    breaker_failures: Option<u32>,
    breaker_min_wait_ms: Option<u64>,
    breaker_max_wait_ms: Option<u64>,
    retry_budget_percent: Option<u32>,
    retry_min_per_second: Option<u32>,
    hedge_budget_percent: Option<u32>,
    idempotency_ttl_s: Option<u64>,
    idempotency_max_keys: Option<usize>,
    audit_max_records: Option<u64>,
    audit_max_age_days: Option<u64>,
    action_jobs_max: Option<u64>,
    log: Option<String>,
    webhooks: Option<Vec<crate::webhooks::WebhookFile>>,
    webhook_outbox_max_events: Option<u64>,
    result_cache_bytes: Option<u64>,
    statistics_cache_bytes: Option<u64>,
    otlp_endpoint: Option<String>,
    trace_sample_ratio: Option<f64>,
}

/// Heartbeats per second a master accepts from its whole fleet unless told otherwise: 1,000
/// agents beat every 5 s, about 4 % of a core here instead of 10 % (README "Performance").
pub const DEFAULT_MAX_HEARTBEATS_PER_SECOND: u32 = 200;

/// Validated configuration of the master.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Directory for persistent state.
    pub data_dir: PathBuf,
    /// TLS files; `None` means plaintext (`--insecure`).
    pub tls: Option<TlsFiles>,
    /// Silence after which a node beating at its agreed interval is down.
    pub heartbeat_timeout: Duration,
    /// Heartbeats per second the fleet may send (0: unpaced).
    pub max_heartbeats_per_second: u32,
    /// Default deadline of a federated search.
    pub search_timeout: Duration,
    /// Upper bound on a caller-supplied deadline.
    pub max_search_timeout: Duration,
    /// Identity, access and abuse limits.
    pub access: AccessConfig,
    /// Write quorum and write-log bounds.
    pub replication: ReplicationConfig,
    /// Circuit breakers, retries and hedging of calls to agents.
    pub resilience: ResilienceConfig,
    /// Retention of the records of remote actions (idempotency keys, audit log, jobs).
    pub actions: ActionsConfig,
    /// Log filter.
    pub log: String,
    /// Events and webhooks (`[[webhooks]]` in the file).
    pub events: crate::EventsConfig,
    /// Sizes of the search caches.
    pub cache: CacheConfig,
}

/// Byte bounds of the master's search caches (0 turns one off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Merged search answers (`--result-cache-bytes`).
    pub result_bytes: u64,
    /// Per-group BM25 statistics of a query (`--statistics-cache-bytes`).
    pub statistics_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { result_bytes: 64 * 1024 * 1024, statistics_bytes: 16 * 1024 * 1024 }
    }
}

impl MasterArgs {
    /// Merges flags/env over the file over defaults and validates the result.
    pub fn resolve(self) -> Result<MasterConfig, ConfigErrors> {
        self.resolve_daemon().map(|(config, _process)| config)
    }

    /// [`Self::resolve`] plus the settings of the process around the service
    /// ([`ProcessConfig`]: `--addr-file`), validated together: what the daemon's `main` uses.
    pub fn resolve_daemon(self) -> Result<(MasterConfig, ProcessConfig), ConfigErrors> {
        let mut problems = Problems::default();
        let file: MasterFile = read_file(self.config.as_deref(), &mut problems);
        let access = resolve_access(&self, file_access(&file), &mut problems);

        let listen = self.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:7400".to_owned());
        let listen = parse_listen("listen", &listen, &mut problems);
        let addr_file = resolve_addr_file("addr-file", self.addr_file, file.addr_file, &mut problems);
        let metrics_listen = resolve_metrics_listen(self.metrics_listen.or(file.metrics_listen), &mut problems);
        let metrics_addr_file =
            resolve_metrics_addr_file(self.metrics_addr_file, file.metrics_addr_file, metrics_listen, &mut problems);
        let data_dir = self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("ragmesh-master-data"));
        let file_tls = TlsFileKeys { ca: file.ca, cert: file.cert, key: file.key, insecure: file.insecure };
        let tls = self.tls.resolve(file_tls, &mut problems);
        let heartbeat_timeout_ms = self.heartbeat_timeout_ms.or(file.heartbeat_timeout_ms).unwrap_or(2500);
        check_range("heartbeat-timeout-ms", heartbeat_timeout_ms, 100, 600_000, &mut problems);
        let max_heartbeats_per_second = self
            .max_heartbeats_per_second
            .or(file.max_heartbeats_per_second)
            .unwrap_or(DEFAULT_MAX_HEARTBEATS_PER_SECOND);
        check_range("max-heartbeats-per-second", u64::from(max_heartbeats_per_second), 0, 1_000_000, &mut problems);
        let search_timeout_ms = self.search_timeout_ms.or(file.search_timeout_ms).unwrap_or(2000);
        check_range("search-timeout-ms", search_timeout_ms, 10, 600_000, &mut problems);
        let max_search_timeout_ms = self.max_search_timeout_ms.or(file.max_search_timeout_ms).unwrap_or(30_000);
        check_range("max-search-timeout-ms", max_search_timeout_ms, 10, 600_000, &mut problems);
        if search_timeout_ms > max_search_timeout_ms {
            problems.push(format!(
                "--search-timeout-ms {search_timeout_ms} exceeds --max-search-timeout-ms {max_search_timeout_ms}: lower the first or raise the second"
            ));
        }
        let replication = resolve_replication(
            self.write_quorum.or(file.write_quorum),
            self.write_log_max_entries.or(file.write_log_max_entries),
            self.write_log_max_bytes.or(file.write_log_max_bytes),
            &mut problems,
        );
        let resilience = resolve_resilience(
            ResilienceKeys {
                breaker_failures: self.breaker_failures.or(file.breaker_failures),
                breaker_min_wait_ms: self.breaker_min_wait_ms.or(file.breaker_min_wait_ms),
                breaker_max_wait_ms: self.breaker_max_wait_ms.or(file.breaker_max_wait_ms),
                retry_budget_percent: self.retry_budget_percent.or(file.retry_budget_percent),
                retry_min_per_second: self.retry_min_per_second.or(file.retry_min_per_second),
                hedge_budget_percent: self.hedge_budget_percent.or(file.hedge_budget_percent),
            },
            &mut problems,
        );
        let actions = resolve_actions(
            ActionsConfig {
                idempotency_ttl: Duration::from_secs(
                    self.idempotency_ttl_s.or(file.idempotency_ttl_s).unwrap_or(86_400),
                ),
                idempotency_max_keys: self
                    .idempotency_max_keys
                    .or(file.idempotency_max_keys)
                    .unwrap_or(ActionsConfig::default().idempotency_max_keys),
                audit_max_records: self
                    .audit_max_records
                    .or(file.audit_max_records)
                    .unwrap_or(ActionsConfig::default().audit_max_records),
                audit_max_age: Duration::from_secs(
                    self.audit_max_age_days.or(file.audit_max_age_days).unwrap_or(90).saturating_mul(86_400),
                ),
                max_jobs: self.action_jobs_max.or(file.action_jobs_max).unwrap_or(ActionsConfig::default().max_jobs),
            },
            &mut problems,
        );
        let log = self.log.or(file.log).unwrap_or_else(|| "info".to_owned());
        let events = resolve_events(file.webhooks.unwrap_or_default(), file.webhook_outbox_max_events, &mut problems);
        let defaults = CacheConfig::default();
        let cache = CacheConfig {
            result_bytes: self.result_cache_bytes.or(file.result_cache_bytes).unwrap_or(defaults.result_bytes),
            statistics_bytes: self
                .statistics_cache_bytes
                .or(file.statistics_cache_bytes)
                .unwrap_or(defaults.statistics_bytes),
        };
        // Bounded: a cache may not be told to hold more than 64 GiB.
        check_range("result-cache-bytes", cache.result_bytes, 0, 1 << 36, &mut problems);
        check_range("statistics-cache-bytes", cache.statistics_bytes, 0, 1 << 36, &mut problems);
        let trace = self.trace.resolve(file.otlp_endpoint, file.trace_sample_ratio, &mut problems);

        let config = MasterConfig {
            listen,
            data_dir,
            tls,
            heartbeat_timeout: Duration::from_millis(heartbeat_timeout_ms),
            max_heartbeats_per_second,
            search_timeout: Duration::from_millis(search_timeout_ms),
            max_search_timeout: Duration::from_millis(max_search_timeout_ms),
            access,
            replication,
            resilience,
            actions,
            log,
            events,
            cache,
        };
        problems.finish((config, ProcessConfig { addr_file, metrics_listen, metrics_addr_file, trace }))
    }
}

/// `[[webhooks]]` and the outbox bound, from the file only (secrets from files or the environment).
fn resolve_events(
    webhooks: Vec<crate::webhooks::WebhookFile>,
    outbox_max_events: Option<u64>,
    problems: &mut Problems,
) -> crate::EventsConfig {
    let env = |name: &str| std::env::var(name).ok();
    let webhooks = crate::webhooks::resolve_webhooks(webhooks, &env, problems);
    let outbox_max_events = outbox_max_events.unwrap_or(crate::webhooks::DEFAULT_OUTBOX_MAX_EVENTS);
    check_range("webhook-outbox-max-events", outbox_max_events, 10, 10_000_000, problems);
    crate::EventsConfig { webhooks, outbox_max_events }
}

/// The resilience settings as given (flag, environment or file).
struct ResilienceKeys {
    breaker_failures: Option<u32>,
    breaker_min_wait_ms: Option<u64>,
    breaker_max_wait_ms: Option<u64>,
    retry_budget_percent: Option<u32>,
    retry_min_per_second: Option<u32>,
    hedge_budget_percent: Option<u32>,
}

fn resolve_resilience(keys: ResilienceKeys, problems: &mut Problems) -> ResilienceConfig {
    let defaults = ResilienceConfig::default();
    let breaker_failures = keys.breaker_failures.unwrap_or(defaults.breaker_failures);
    check_range("breaker-failures", u64::from(breaker_failures), 1, 1000, problems);
    let min_wait_ms = keys.breaker_min_wait_ms.unwrap_or(millis(defaults.breaker_min_wait));
    check_range("breaker-min-wait-ms", min_wait_ms, 10, 3_600_000, problems);
    let max_wait_ms = keys.breaker_max_wait_ms.unwrap_or(millis(defaults.breaker_max_wait));
    check_range("breaker-max-wait-ms", max_wait_ms, 10, 3_600_000, problems);
    if min_wait_ms > max_wait_ms {
        problems.push(format!(
            "--breaker-min-wait-ms {min_wait_ms} exceeds --breaker-max-wait-ms {max_wait_ms}: lower the first or raise the second"
        ));
    }
    let retry_budget_percent = keys.retry_budget_percent.unwrap_or(defaults.retry_budget_percent);
    check_range("retry-budget-percent", u64::from(retry_budget_percent), 0, 1000, problems);
    let retry_min_per_second = keys.retry_min_per_second.unwrap_or(defaults.retry_min_per_second);
    check_range("retry-min-per-second", u64::from(retry_min_per_second), 0, 100_000, problems);
    let hedge_budget_percent = keys.hedge_budget_percent.unwrap_or(defaults.hedge_budget_percent);
    check_range("hedge-budget-percent", u64::from(hedge_budget_percent), 0, 100, problems);
    ResilienceConfig {
        breaker_failures,
        breaker_min_wait: Duration::from_millis(min_wait_ms),
        breaker_max_wait: Duration::from_millis(max_wait_ms),
        retry_budget_percent,
        retry_min_per_second,
        hedge_budget_percent,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn resolve_replication(
    quorum: Option<String>,
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
    problems: &mut Problems,
) -> ReplicationConfig {
    let defaults = ReplicationConfig::default();
    let write_quorum = match quorum.as_deref().map(str::trim) {
        None => defaults.write_quorum,
        Some("all") => WriteQuorum::All,
        Some("majority") => WriteQuorum::Majority,
        Some(other) => {
            problems.push(format!("--write-quorum {other:?} is not a quorum: use all or majority"));
            defaults.write_quorum
        }
    };
    let write_log_max_entries = max_entries.unwrap_or(defaults.write_log_max_entries);
    check_range("write-log-max-entries", write_log_max_entries, 1, 100_000_000, problems);
    let write_log_max_bytes = max_bytes.unwrap_or(defaults.write_log_max_bytes);
    check_range("write-log-max-bytes", write_log_max_bytes, 1024, 64 * 1024 * 1024 * 1024, problems);
    ReplicationConfig { write_quorum, write_log_max_entries, write_log_max_bytes }
}

/// The access-related keys of the file, taken before the file is consumed.
fn file_access(file: &MasterFile) -> MasterFile {
    MasterFile {
        operators: file.operators.clone(),
        access_token_ttl_s: file.access_token_ttl_s,
        max_access_token_ttl_s: file.max_access_token_ttl_s,
        refresh_token_ttl_s: file.refresh_token_ttl_s,
        token_leeway_secs: file.token_leeway_secs,
        max_pending_joins: file.max_pending_joins,
        pending_join_ttl_s: file.pending_join_ttl_s,
        rate_limit_rps: file.rate_limit_rps,
        rate_limit_burst: file.rate_limit_burst,
        max_message_bytes: file.max_message_bytes,
        max_streams_per_connection: file.max_streams_per_connection,
        ..MasterFile::default()
    }
}

fn resolve_access(args: &MasterArgs, file: MasterFile, problems: &mut Problems) -> AccessConfig {
    let defaults = AccessConfig::default();
    let mut operators: std::collections::BTreeSet<String> = file.operators.unwrap_or_default().into_iter().collect();
    operators.extend(args.operators.iter().cloned());
    for name in &operators {
        if !crate::valid_node_name(name) {
            problems.push(format!(
                "--operators {name:?} is not a certificate name: use 1-63 characters of a-z, 0-9 and '-'"
            ));
        }
    }
    let secs = |flag: Option<u64>, file: Option<u64>, default: Duration| flag.or(file).unwrap_or(default.as_secs());
    let access_ttl = secs(args.access_token_ttl_s, file.access_token_ttl_s, defaults.access_token_ttl);
    let max_access_ttl = secs(args.max_access_token_ttl_s, file.max_access_token_ttl_s, defaults.max_access_token_ttl);
    let refresh_ttl = secs(args.refresh_token_ttl_s, file.refresh_token_ttl_s, defaults.refresh_token_ttl);
    check_range("access-token-ttl-s", access_ttl, 10, 86_400 * 30, problems);
    check_range("max-access-token-ttl-s", max_access_ttl, 10, 86_400 * 30, problems);
    check_range("refresh-token-ttl-s", refresh_ttl, 60, 86_400 * 365, problems);
    let leeway = secs(args.token_leeway_secs, file.token_leeway_secs, defaults.token_leeway);
    check_range("token-leeway-secs", leeway, 0, 600, problems);
    let max_pending = args.max_pending_joins.or(file.max_pending_joins).unwrap_or(defaults.max_pending_joins);
    check_range("max-pending-joins", max_pending as u64, 1, 100_000, problems);
    let pending_ttl = secs(args.pending_join_ttl_s, file.pending_join_ttl_s, defaults.pending_join_ttl);
    check_range("pending-join-ttl-s", pending_ttl, 60, 86_400 * 30, problems);
    if access_ttl > max_access_ttl {
        problems.push(format!(
            "--access-token-ttl-s {access_ttl} exceeds --max-access-token-ttl-s {max_access_ttl}: lower the first or raise the second"
        ));
    }
    let rps = args.rate_limit_rps.or(file.rate_limit_rps).unwrap_or(defaults.rate_limit_rps);
    let burst = args.rate_limit_burst.or(file.rate_limit_burst).unwrap_or(defaults.rate_limit_burst);
    check_range("rate-limit-rps", u64::from(rps), 1, 1_000_000, problems);
    check_range("rate-limit-burst", u64::from(burst), 1, 1_000_000, problems);
    let max_message_bytes = args.max_message_bytes.or(file.max_message_bytes).unwrap_or(defaults.max_message_bytes);
    check_range("max-message-bytes", max_message_bytes as u64, 1024, 256 * 1024 * 1024, problems);
    let streams = args
        .max_streams_per_connection
        .or(file.max_streams_per_connection)
        .unwrap_or(defaults.max_streams_per_connection);
    check_range("max-streams-per-connection", u64::from(streams), 1, 65_536, problems);
    AccessConfig {
        operators,
        access_token_ttl: Duration::from_secs(access_ttl),
        max_access_token_ttl: Duration::from_secs(max_access_ttl),
        refresh_token_ttl: Duration::from_secs(refresh_ttl),
        token_leeway: Duration::from_secs(leeway),
        max_pending_joins: max_pending,
        pending_join_ttl: Duration::from_secs(pending_ttl),
        rate_limit_rps: rps,
        rate_limit_burst: burst,
        max_message_bytes,
        max_streams_per_connection: streams,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> MasterArgs {
        MasterArgs::try_parse_from(std::iter::once("ragmesh-master").chain(list.iter().copied())).expect("parse")
    }

    #[test]
    fn insecure_defaults_resolve() {
        let config = args(&["--insecure"]).resolve().expect("valid");
        assert_eq!(config.listen.port(), 7400);
        assert!(config.tls.is_none());
        assert_eq!(config.heartbeat_timeout, Duration::from_millis(2500));
        assert_eq!(config.max_heartbeats_per_second, 200);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let errors = args(&["--listen", "nope", "--heartbeat-timeout-ms", "1", "--search-timeout-ms", "99999999"])
            .resolve()
            .expect_err("invalid");
        let text = errors.to_string();
        assert!(text.contains("--listen \"nope\""), "{text}");
        assert!(text.contains("--heartbeat-timeout-ms 1"), "{text}");
        assert!(text.contains("--search-timeout-ms 99999999"), "{text}");
        assert!(text.contains("--ca is required"), "{text}");
        assert!(text.contains("--cert is required"), "{text}");
        assert!(text.contains("--key is required"), "{text}");
    }

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\ninsecure = true\nsearch_timeout_ms = 500\n")
            .expect("write");
        let config =
            args(&["--config", path.to_str().expect("utf8"), "--search-timeout-ms", "700"]).resolve().expect("valid");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.search_timeout, Duration::from_millis(700));
    }

    #[test]
    fn access_settings_resolve_and_are_checked() {
        let config =
            args(&["--insecure", "--operators", "client,ops-1", "--rate-limit-rps", "5"]).resolve().expect("valid");
        assert!(config.access.operators.contains("client") && config.access.operators.contains("ops-1"));
        assert_eq!(config.access.rate_limit_rps, 5);
        let errors = args(&[
            "--insecure",
            "--operators",
            "Bad Name",
            "--access-token-ttl-s",
            "999999",
            "--rate-limit-burst",
            "0",
        ])
        .resolve()
        .expect_err("invalid");
        let text = errors.to_string();
        for needle in ["--operators \"Bad Name\"", "--access-token-ttl-s 999999", "--rate-limit-burst 0"] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
    }

    #[test]
    fn token_leeway_defaults_to_30s_and_comes_from_file_then_flag() {
        assert_eq!(args(&["--insecure"]).resolve().expect("valid").access.token_leeway, Duration::from_secs(30));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.toml");
        std::fs::write(&path, "insecure = true\ntoken_leeway_secs = 5\n").expect("write");
        let path = path.to_str().expect("utf8");
        let from_file = args(&["--config", path]).resolve().expect("valid");
        assert_eq!(from_file.access.token_leeway, Duration::from_secs(5));
        let from_flag = args(&["--config", path, "--token-leeway-secs", "0"]).resolve().expect("valid");
        assert_eq!(from_flag.access.token_leeway, Duration::ZERO, "0 means exact expiry");
        let errors = args(&["--insecure", "--token-leeway-secs", "601"]).resolve().expect_err("too large");
        assert!(errors.to_string().contains("--token-leeway-secs 601 is out of range"), "{errors}");
    }

    #[test]
    fn pending_join_bounds_default_resolve_and_are_checked() {
        let config = args(&["--insecure"]).resolve().expect("valid");
        assert_eq!(config.access.max_pending_joins, 256);
        assert_eq!(config.access.pending_join_ttl, Duration::from_secs(86_400));
        let config =
            args(&["--insecure", "--max-pending-joins", "3", "--pending-join-ttl-s", "600"]).resolve().expect("valid");
        assert_eq!(config.access.max_pending_joins, 3);
        assert_eq!(config.access.pending_join_ttl, Duration::from_secs(600));
        let errors = args(&["--insecure", "--max-pending-joins", "0", "--pending-join-ttl-s", "1"])
            .resolve()
            .expect_err("invalid");
        let text = errors.to_string();
        assert!(text.contains("--max-pending-joins 0") && text.contains("--pending-join-ttl-s 1"), "{text}");
    }

    #[test]
    fn new_access_options_have_help_text_and_environment_variables() {
        use clap::CommandFactory as _;
        let mut command = MasterArgs::command();
        let help = command.render_long_help().to_string();
        for (id, env, flag) in [
            ("token_leeway_secs", "RAGMESH_TOKEN_LEEWAY_SECS", "--token-leeway-secs"),
            ("max_pending_joins", "RAGMESH_MAX_PENDING_JOINS", "--max-pending-joins"),
            ("pending_join_ttl_s", "RAGMESH_PENDING_JOIN_TTL_S", "--pending-join-ttl-s"),
            ("idempotency_ttl_s", "RAGMESH_IDEMPOTENCY_TTL_S", "--idempotency-ttl-s"),
            ("audit_max_records", "RAGMESH_AUDIT_MAX_RECORDS", "--audit-max-records"),
        ] {
            let arg = command.get_arguments().find(|a| a.get_id() == id).expect("argument exists");
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env));
            let text = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
            assert!(text.contains("[default:"), "{flag} help names its default: {text}");
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_comes_from_flag_env_name_or_file() {
        let (_, process) = args(&["--insecure"]).resolve_daemon().expect("valid");
        assert_eq!(process.metrics_listen, None, "metrics are off unless asked for");
        let (_, process) = args(&["--insecure", "--metrics-listen", "127.0.0.1:9400"]).resolve_daemon().expect("valid");
        assert_eq!(process.metrics_listen, Some("127.0.0.1:9400".parse().expect("addr")));
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("master.toml");
        std::fs::write(&config, "insecure = true\nmetrics_listen = '0.0.0.0:9400'\n").expect("write");
        let (_, process) = args(&["--config", config.to_str().expect("utf8")]).resolve_daemon().expect("valid");
        assert_eq!(process.metrics_listen, Some("0.0.0.0:9400".parse().expect("addr")));
        let errors =
            args(&["--insecure", "--metrics-listen", "localhost:9400"]).resolve_daemon().expect_err("not an IP");
        assert!(errors.to_string().contains("--metrics-listen \"localhost:9400\" is not a socket address"), "{errors}");
        let command = <MasterArgs as clap::CommandFactory>::command();
        let arg = command.get_arguments().find(|a| a.get_id() == "metrics_listen").expect("argument exists");
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some("RAGMESH_METRICS_LISTEN"));
    }

    #[test]
    fn metrics_addr_file_needs_metrics_listen_and_an_existing_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wanted = dir.path().join("master.metrics.addr");
        let wanted_arg = wanted.to_str().expect("utf8");
        let (_, process) = args(&["--insecure", "--metrics-listen", "127.0.0.1:0", "--metrics-addr-file", wanted_arg])
            .resolve_daemon()
            .expect("valid");
        assert_eq!(process.metrics_addr_file.as_deref(), Some(wanted.as_path()));
        assert_eq!(process.addr_file, None, "the gRPC address file is a separate setting");
        let errors =
            args(&["--insecure", "--metrics-addr-file", wanted_arg]).resolve_daemon().expect_err("no listener");
        assert!(errors.to_string().contains("--metrics-listen is not: give both, or neither"), "{errors}");
        let missing = dir.path().join("missing").join("m.addr");
        let errors = args(&[
            "--insecure",
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-addr-file",
            missing.to_str().expect("utf8"),
        ])
        .resolve_daemon()
        .expect_err("no such directory");
        assert!(errors.to_string().contains("--metrics-addr-file"), "the message names the flag: {errors}");
    }

    #[test]
    fn addr_file_comes_from_flag_or_file_and_must_be_a_file_in_an_existing_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wanted = dir.path().join("master.addr");
        let wanted_arg = wanted.to_str().expect("utf8");
        let (_, process) = args(&["--insecure", "--addr-file", wanted_arg]).resolve_daemon().expect("valid");
        assert_eq!(process.addr_file.as_deref(), Some(wanted.as_path()));
        let (_, process) = args(&["--insecure"]).resolve_daemon().expect("valid");
        assert_eq!(process.addr_file, None, "no file unless asked for");

        let config = dir.path().join("master.toml");
        std::fs::write(&config, format!("insecure = true\naddr_file = '{wanted_arg}'\n")).expect("write");
        let (_, process) = args(&["--config", config.to_str().expect("utf8")]).resolve_daemon().expect("valid");
        assert_eq!(process.addr_file.as_deref(), Some(wanted.as_path()));

        let missing = dir.path().join("missing").join("master.addr");
        let errors = args(&["--insecure", "--addr-file", missing.to_str().expect("utf8")])
            .resolve_daemon()
            .expect_err("no such directory");
        assert!(errors.to_string().contains("does not exist: create it first"), "{errors}");
        let errors = args(&["--insecure", "--addr-file", dir.path().to_str().expect("utf8")])
            .resolve_daemon()
            .expect_err("a directory");
        assert!(errors.to_string().contains("is a directory"), "{errors}");
    }

    #[test]
    fn action_settings_default_come_from_file_then_flag_and_are_checked() {
        let defaults = args(&["--insecure"]).resolve().expect("valid").actions;
        assert_eq!(defaults, ActionsConfig::default());
        assert_eq!(defaults.idempotency_ttl, Duration::from_secs(86_400));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("master.toml");
        std::fs::write(&file, "insecure = true\nidempotency_ttl_s = 60\naudit_max_records = 500\n").expect("write");
        let path = file.to_str().expect("utf-8 path");
        let from_file = args(&["--config", path]).resolve().expect("valid").actions;
        assert_eq!(from_file.idempotency_ttl, Duration::from_secs(60));
        assert_eq!(from_file.audit_max_records, 500);
        let from_flag = args(&["--config", path, "--idempotency-ttl-s", "120", "--action-jobs-max", "7"])
            .resolve()
            .expect("valid")
            .actions;
        assert_eq!((from_flag.idempotency_ttl, from_flag.max_jobs), (Duration::from_secs(120), 7));
        let errors = args(&["--insecure", "--idempotency-ttl-s", "0", "--audit-max-records", "0"])
            .resolve()
            .expect_err("out of range");
        let text = errors.to_string();
        assert!(text.contains("idempotency-ttl-s") && text.contains("audit-max-records"), "{text}");
    }

    #[test]
    fn replication_settings_default_come_from_file_then_flag_and_are_checked() {
        let defaults = args(&["--insecure"]).resolve().expect("valid").replication;
        assert_eq!(defaults, ReplicationConfig::default());
        assert_eq!(defaults.write_quorum, WriteQuorum::Majority);
        assert_eq!((defaults.write_log_max_entries, defaults.write_log_max_bytes), (100_000, 256 * 1024 * 1024));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.toml");
        std::fs::write(&path, "insecure = true\nwrite_quorum = \"all\"\nwrite_log_max_entries = 10\n").expect("write");
        let path = path.to_str().expect("utf8");
        let from_file = args(&["--config", path]).resolve().expect("valid").replication;
        assert_eq!((from_file.write_quorum, from_file.write_log_max_entries), (WriteQuorum::All, 10));
        let from_flag = args(&["--config", path, "--write-quorum", "majority"]).resolve().expect("valid").replication;
        assert_eq!(from_flag.write_quorum, WriteQuorum::Majority);
        let errors = args(&["--insecure", "--write-quorum", "most", "--write-log-max-entries", "0"])
            .resolve()
            .expect_err("invalid");
        let text = errors.to_string();
        assert!(text.contains("--write-quorum \"most\"") && text.contains("--write-log-max-entries 0"), "{text}");
    }

    #[test]
    fn breaker_retry_and_hedge_settings_come_from_flags_or_file_and_are_checked() {
        assert_eq!(args(&["--insecure"]).resolve().expect("valid").resilience, ResilienceConfig::default());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.toml");
        std::fs::write(&path, "insecure = true\nbreaker_failures = 3\nhedge_budget_percent = 0\n").expect("write");
        let path = path.to_str().expect("utf8");
        let resilience = args(&["--config", path, "--breaker-min-wait-ms", "200"]).resolve().expect("valid").resilience;
        assert_eq!(
            (resilience.breaker_failures, resilience.hedge_budget_percent, resilience.breaker_min_wait),
            (3, 0, Duration::from_millis(200))
        );
        let errors = args(&[
            "--insecure",
            "--breaker-failures",
            "0",
            "--breaker-min-wait-ms",
            "5000",
            "--breaker-max-wait-ms",
            "1000",
            "--hedge-budget-percent",
            "101",
        ])
        .resolve()
        .expect_err("invalid");
        let text = errors.to_string();
        for needle in ["--breaker-failures 0", "--breaker-min-wait-ms 5000 exceeds", "--hedge-budget-percent 101"] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }

    #[test]
    fn quorum_needs_all_or_more_than_half() {
        assert_eq!((WriteQuorum::All.needed(3), WriteQuorum::Majority.needed(3)), (3, 2));
        assert_eq!((WriteQuorum::Majority.needed(1), WriteQuorum::Majority.needed(2)), (1, 2));
        assert_eq!((WriteQuorum::Majority.needed(4), WriteQuorum::All.needed(0)), (3, 0));
    }

    #[test]
    fn unknown_file_keys_are_rejected_with_the_key_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.toml");
        std::fs::write(&path, "insecure = true\nlisten_addr = \"x\"\n").expect("write");
        let errors = args(&["--config", path.to_str().expect("utf8")]).resolve().expect_err("invalid");
        assert!(errors.to_string().contains("listen_addr"), "{errors}");
    }
}
