//! Configuration of `ragmesh-master`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ragmesh_tls::TlsFiles;
use serde::Deserialize;

use crate::errors::Problems;
use crate::{ConfigErrors, TlsArgs, TlsFileKeys, check_range, parse_listen, read_file};

/// Command line of `ragmesh-master`. Every flag also reads a `RAGMESH_*` variable, and every
/// flag but --config can be set in the TOML file under its name with `_` for `-`.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "ragmesh-master", version, about = "ragmesh master: node registry and federated search over mTLS")]
pub struct MasterArgs {
    /// TOML config file (keys: listen, data_dir, ca, cert, key, insecure, heartbeat_timeout_ms, search_timeout_ms, max_search_timeout_ms, log)
    #[arg(long, env = "RAGMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on (clients and agents) [default: 127.0.0.1:7400]
    #[arg(long, env = "RAGMESH_LISTEN", value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Directory for the node registry (sled) [default: ./ragmesh-master-data]
    #[arg(long, env = "RAGMESH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// mTLS files, or --insecure
    #[command(flatten)]
    pub tls: TlsArgs,
    /// A node whose heartbeats stop for this long is marked down [default: 2500]
    #[arg(long, env = "RAGMESH_HEARTBEAT_TIMEOUT_MS", value_name = "MS")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// Deadline of a federated search when the caller sets none [default: 2000]
    #[arg(long, env = "RAGMESH_SEARCH_TIMEOUT_MS", value_name = "MS")]
    pub search_timeout_ms: Option<u64>,
    /// Upper bound on any caller-supplied search deadline [default: 30000]
    #[arg(long, env = "RAGMESH_MAX_SEARCH_TIMEOUT_MS", value_name = "MS")]
    pub max_search_timeout_ms: Option<u64>,
    /// Log filter, tracing-subscriber syntax [default: info]
    #[arg(long, env = "RAGMESH_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

/// The TOML file of the master: the same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MasterFile {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    insecure: Option<bool>,
    heartbeat_timeout_ms: Option<u64>,
    search_timeout_ms: Option<u64>,
    max_search_timeout_ms: Option<u64>,
    log: Option<String>,
}

/// Validated configuration of the master.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Directory for persistent state.
    pub data_dir: PathBuf,
    /// TLS files; `None` means plaintext (`--insecure`).
    pub tls: Option<TlsFiles>,
    /// Silence after which a node is down.
    pub heartbeat_timeout: Duration,
    /// Default deadline of a federated search.
    pub search_timeout: Duration,
    /// Upper bound on a caller-supplied deadline.
    pub max_search_timeout: Duration,
    /// Log filter.
    pub log: String,
}

impl MasterArgs {
    /// Merges flags/env over the file over defaults and validates the result.
    pub fn resolve(self) -> Result<MasterConfig, ConfigErrors> {
        let mut problems = Problems::default();
        let file: MasterFile = read_file(self.config.as_deref(), &mut problems);

        let listen = self.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:7400".to_owned());
        let listen = parse_listen("listen", &listen, &mut problems);
        let data_dir = self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("ragmesh-master-data"));
        let file_tls = TlsFileKeys { ca: file.ca, cert: file.cert, key: file.key, insecure: file.insecure };
        let tls = self.tls.resolve(file_tls, &mut problems);
        let heartbeat_timeout_ms = self.heartbeat_timeout_ms.or(file.heartbeat_timeout_ms).unwrap_or(2500);
        check_range("heartbeat-timeout-ms", heartbeat_timeout_ms, 100, 600_000, &mut problems);
        let search_timeout_ms = self.search_timeout_ms.or(file.search_timeout_ms).unwrap_or(2000);
        check_range("search-timeout-ms", search_timeout_ms, 10, 600_000, &mut problems);
        let max_search_timeout_ms = self.max_search_timeout_ms.or(file.max_search_timeout_ms).unwrap_or(30_000);
        check_range("max-search-timeout-ms", max_search_timeout_ms, 10, 600_000, &mut problems);
        if search_timeout_ms > max_search_timeout_ms {
            problems.push(format!(
                "--search-timeout-ms {search_timeout_ms} exceeds --max-search-timeout-ms {max_search_timeout_ms}: lower the first or raise the second"
            ));
        }
        let log = self.log.or(file.log).unwrap_or_else(|| "info".to_owned());

        problems.finish(MasterConfig {
            listen,
            data_dir,
            tls,
            heartbeat_timeout: Duration::from_millis(heartbeat_timeout_ms),
            search_timeout: Duration::from_millis(search_timeout_ms),
            max_search_timeout: Duration::from_millis(max_search_timeout_ms),
            log,
        })
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
    fn unknown_file_keys_are_rejected_with_the_key_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.toml");
        std::fs::write(&path, "insecure = true\nlisten_addr = \"x\"\n").expect("write");
        let errors = args(&["--config", path.to_str().expect("utf8")]).resolve().expect_err("invalid");
        assert!(errors.to_string().contains("listen_addr"), "{errors}");
    }
}
