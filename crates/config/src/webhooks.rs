//! The master's webhooks (`[[webhooks]]` in its TOML file): where events are POSTed, which kinds,
//! and the secret that signs them. Validated at start with every problem listed; a secret comes
//! from a file or an environment variable (or, for tests and demos, inline).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::Secret;
use crate::errors::Problems;

/// Every event kind, as webhook filters and payloads name them (the master's event module checks
/// that its kinds are exactly these).
pub const EVENT_KINDS: [&str; 13] = [
    "node_joined",
    "node_suspect",
    "node_down",
    "node_up",
    "node_evicted",
    "admission_refused",
    "version_mismatch",
    "breaker_opened",
    "breaker_closed",
    "replica_stale",
    "replica_caught_up",
    "signing_key_rotated",
    "certificate_near_expiry",
];

/// Default bound of the webhook outbox (events kept for receivers that have not taken them).
pub const DEFAULT_OUTBOX_MAX_EVENTS: u64 = 10_000;

/// Events and their webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// Where events are POSTed.
    pub webhooks: Vec<WebhookConfig>,
    /// Most events kept in the outbox; at the bound the oldest undelivered event is dropped
    /// (logged) so the newest are kept.
    pub outbox_max_events: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { webhooks: Vec::new(), outbox_max_events: DEFAULT_OUTBOX_MAX_EVENTS }
    }
}

/// One `[[webhooks]]` table as written in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookFile {
    name: Option<String>,
    url: Option<String>,
    events: Option<Vec<String>>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    timeout_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
}

/// A validated webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Name (defaults to the URL); the delivery position is kept under it across restarts.
    pub name: String,
    /// `http://host:port/path` the events are POSTed to.
    pub url: String,
    /// Kinds delivered (names of [`EVENT_KINDS`]); empty means every kind.
    pub events: Vec<String>,
    /// HMAC-SHA256 key of the `X-Ragmesh-Signature` header.
    pub secret: Secret,
    /// Deadline of one delivery attempt.
    pub timeout: Duration,
    /// Longest wait between two attempts of one delivery (the wait doubles from 250 ms up to it).
    pub max_backoff: Duration,
}

impl WebhookConfig {
    /// Whether events of `kind` go to this webhook.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|k| k == kind)
    }
}

/// Validates the `[[webhooks]]` tables; `env` reads an environment variable (injected for tests).
pub(crate) fn resolve_webhooks(
    files: Vec<WebhookFile>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Vec<WebhookConfig> {
    let mut webhooks: Vec<WebhookConfig> = Vec::new();
    for (i, file) in files.into_iter().enumerate() {
        let at = format!("webhooks[{i}]");
        let Some(url) = file.url.filter(|u| !u.trim().is_empty()) else {
            problems.push(format!("{at}: url is missing: set url = \"http://host:port/path\""));
            continue;
        };
        if let Err(problem) = check_url(&url) {
            problems.push(format!("{at}: url {url:?} {problem}"));
        }
        let name = file.name.unwrap_or_else(|| url.clone());
        if webhooks.iter().any(|w| w.name == name) {
            problems.push(format!("{at}: name {name:?} is used by another webhook: give each a distinct name"));
        }
        let mut events = file.events.unwrap_or_default();
        if events.iter().any(|e| e == "*") {
            events.clear();
        }
        for kind in &events {
            if !EVENT_KINDS.contains(&kind.as_str()) {
                problems.push(format!(
                    "{at}: unknown event kind {kind:?}: use \"*\" or some of {}",
                    EVENT_KINDS.join(", ")
                ));
            }
        }
        let secret = resolve_secret(&at, file.secret, file.secret_file, file.secret_env, env, problems);
        let timeout_ms = file.timeout_ms.unwrap_or(10_000);
        crate::check_range(&format!("{at}.timeout_ms"), timeout_ms, 100, 600_000, problems);
        let max_backoff_ms = file.max_backoff_ms.unwrap_or(60_000);
        crate::check_range(&format!("{at}.max_backoff_ms"), max_backoff_ms, 250, 3_600_000, problems);
        webhooks.push(WebhookConfig {
            name,
            url,
            events,
            secret: secret.unwrap_or_else(|| Secret(String::new())),
            timeout: Duration::from_millis(timeout_ms),
            max_backoff: Duration::from_millis(max_backoff_ms),
        });
    }
    webhooks
}

/// `http://HOST:PORT/PATH` (https is not supported: put a local TLS proxy in front).
fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            "uses https, which the master does not speak to webhooks: use http:// (through a local TLS proxy)".into()
        } else {
            "is not an http:// URL".into()
        });
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let valid_port = authority.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_ok());
    if authority.is_empty() || authority.contains('@') || !valid_port {
        return Err("has no valid HOST[:PORT]".into());
    }
    Ok(())
}

fn resolve_secret(
    at: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
    var: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<Secret> {
    let given = usize::from(inline.is_some()) + usize::from(file.is_some()) + usize::from(var.is_some());
    if given != 1 {
        problems.push(format!("{at}: set exactly one of secret_file, secret_env and secret (found {given})"));
        return None;
    }
    let secret = if let Some(path) = file {
        match std::fs::read_to_string(&path) {
            Ok(text) => text.trim_end_matches(['\n', '\r']).to_owned(),
            Err(err) => {
                problems.push(format!("{at}: cannot read secret_file {}: {err}", path.display()));
                return None;
            }
        }
    } else if let Some(var) = var {
        match env(&var) {
            Some(value) => value,
            None => {
                problems.push(format!("{at}: secret_env {var:?} is not set in the master's environment"));
                return None;
            }
        }
    } else {
        inline.unwrap_or_default()
    };
    if secret.len() < 16 {
        problems.push(format!("{at}: the secret is {} bytes long; use at least 16 random bytes", secret.len()));
        return None;
    }
    Some(Secret(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(url: &str) -> WebhookFile {
        WebhookFile { url: Some(url.into()), secret: Some("0123456789abcdef".into()), ..WebhookFile::default() }
    }

    fn resolve(files: Vec<WebhookFile>) -> Result<Vec<WebhookConfig>, Vec<String>> {
        let mut problems = Problems::default();
        let env = |name: &str| (name == "HOOK_SECRET").then(|| "from-the-environment".to_owned());
        let webhooks = resolve_webhooks(files, &env, &mut problems);
        problems.finish(webhooks).map_err(|e| e.problems)
    }

    #[test]
    fn a_valid_webhook_resolves_with_defaults() {
        let hooks = resolve(vec![file("http://127.0.0.1:9000/hook")]).expect("valid");
        assert_eq!(hooks[0].name, "http://127.0.0.1:9000/hook");
        assert!(hooks[0].events.is_empty() && hooks[0].wants("node_down"));
        assert_eq!(hooks[0].timeout, Duration::from_secs(10));
        assert_eq!(hooks[0].max_backoff, Duration::from_secs(60));
    }

    #[test]
    fn secrets_come_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "a-secret-from-a-file\n").expect("write");
        let from_file = WebhookFile { secret: None, secret_file: Some(path), ..file("http://h/a") };
        let from_env = WebhookFile { secret: None, secret_env: Some("HOOK_SECRET".into()), ..file("http://h/b") };
        let hooks = resolve(vec![from_file, from_env]).expect("valid");
        assert_eq!(hooks[0].secret, Secret("a-secret-from-a-file".into()));
        assert_eq!(hooks[1].secret, Secret("from-the-environment".into()));
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let bad = vec![
            WebhookFile { url: None, ..WebhookFile::default() },
            WebhookFile { events: Some(vec!["node_down".into(), "node_exploded".into()]), ..file("https://h/x") },
            WebhookFile { secret: None, secret_env: Some("UNSET".into()), ..file("http://h/y") },
            WebhookFile { secret: Some("short".into()), ..file("http://h:99999/z") },
            WebhookFile { secret_file: Some("/nonexistent".into()), ..file("http://h/w") },
        ];
        let problems = resolve(bad).expect_err("invalid");
        let all = problems.join("\n");
        assert!(all.contains("webhooks[0]: url is missing"), "{all}");
        assert!(all.contains("webhooks[1]: url \"https://h/x\" uses https"), "{all}");
        assert!(all.contains("unknown event kind \"node_exploded\""), "{all}");
        assert!(all.contains("webhooks[2]: secret_env \"UNSET\" is not set"), "{all}");
        assert!(all.contains("webhooks[3]: url \"http://h:99999/z\" has no valid HOST[:PORT]"), "{all}");
        assert!(all.contains("webhooks[3]: the secret is 5 bytes long"), "{all}");
        assert!(all.contains("webhooks[4]: set exactly one of"), "{all}");
        assert_eq!(problems.len(), 7, "{all}");
    }

    #[test]
    fn webhooks_come_from_the_master_file_and_bad_ones_stop_it() {
        use clap::Parser as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.toml");
        let parse = |text: &str| {
            std::fs::write(&path, text).expect("write");
            let path = path.to_str().expect("utf8 path");
            crate::MasterArgs::try_parse_from(["ragmesh-master", "--insecure", "--config", path])
                .expect("flags")
                .resolve()
        };
        let config = parse(
            "webhook_outbox_max_events = 500\n\
             [[webhooks]]\nname = \"pager\"\nurl = \"http://127.0.0.1:9000/hook\"\n\
             events = [\"node_down\"]\nsecret = \"0123456789abcdef\"\nmax_backoff_ms = 1000\n",
        )
        .expect("valid");
        assert_eq!(config.events.outbox_max_events, 500);
        let hook = &config.events.webhooks[0];
        assert_eq!((hook.name.as_str(), hook.events.as_slice()), ("pager", &["node_down".to_owned()][..]));
        assert!(hook.wants("node_down") && !hook.wants("node_up"));
        assert_eq!(hook.max_backoff, Duration::from_secs(1));
        assert!(!format!("{hook:?}").contains("0123456789abcdef"), "Debug never shows the secret");

        let errors = parse("[[webhooks]]\nurl = \"ftp://x\"\nsecrets = \"typo\"\n").expect_err("unknown key");
        assert!(errors.to_string().contains("secrets"), "{errors}");
        let errors = parse("[[webhooks]]\nurl = \"ftp://x\"\n").expect_err("invalid");
        assert_eq!(errors.problems.len(), 2, "{errors}");
    }

    #[test]
    fn a_star_filter_means_every_kind_and_names_must_be_distinct() {
        let hook = WebhookFile { events: Some(vec!["*".into()]), ..file("http://h/a") };
        assert!(resolve(vec![hook]).expect("valid")[0].events.is_empty());
        let twice = resolve(vec![file("http://h/a"), file("http://h/a")]).expect_err("same name");
        assert!(twice[0].contains("is used by another webhook"), "{twice:?}");
    }
}
