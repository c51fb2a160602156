//! The operator-declared actions the demo gives each agent (its `--config` file), so that
//! `ragmeshctl action ...` has something real to run besides the built-ins:
//!
//! | action | kind | what it does |
//! |---|---|---|
//! | `app.log-tail` | exec | `tail -n LINES` of the agent's own log |
//! | `app.clear-cache` | http | `POST /internal/clear-cache/{region}` on the agent's app |
//! | `app.health` | http | `GET /internal/health` (503 while in maintenance) |
//! | `app.maintenance` | http | `POST /internal/maintenance {"on": ...}` |
//! | `app.release` | transactional http | stage / make live / drop a release (refused in maintenance) |
//!
//! The apps are the demo's stand-ins ([`super::app`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The agent config file (TOML) declaring the demo's actions for one agent whose app listens
/// on `app` and whose log is `log`; `tail` is the absolute path of `tail`, if found.
pub fn agent_config(app: SocketAddr, log: &Path, tail: Option<&Path>) -> String {
    let mut toml = String::from(
        "# Written by `ragmeshctl demo`: the actions this agent offers besides its built-ins.\n\
         # An agent runs nothing that is not declared here (see deploy/config/agent-actions.toml).\n",
    );
    if let Some(tail) = tail {
        let _ = write!(
            toml,
            r#"
[[actions]]
name = "app.log-tail"
description = "The last lines of this agent's log (exec: tail, never a shell)"
tenants = []
timeout_ms = 5000
[[actions.args]]
name = "lines"
type = "integer"
default = 5
min = 1
max = 200
[actions.run.exec]
program = {tail}
argv = ["-n", "{{lines}}", {log}]
"#,
            tail = toml_str(&tail.display().to_string()),
            log = toml_str(&log.display().to_string()),
        );
    }
    let _ = write!(
        toml,
        r#"
[[actions]]
name = "app.clear-cache"
description = "Clear one cache region of the application beside this agent"
tenants = ["*"]
timeout_ms = 5000
[[actions.args]]
name = "region"
type = "string"
required = true
enum = ["sessions", "search", "templates"]
[actions.run.http]
method = "POST"
url = "http://{app}/internal/clear-cache/{{region}}"

[[actions]]
name = "app.health"
description = "The application's health and live release (fails with 503 while in maintenance)"
tenants = ["*"]
timeout_ms = 5000
[actions.run.http]
method = "GET"
url = "http://{app}/internal/health"
body = "none"

[[actions]]
name = "app.maintenance"
description = "Put the application in or out of maintenance (it then refuses new releases)"
tenants = []
timeout_ms = 5000
[[actions.args]]
name = "on"
type = "boolean"
required = true
[actions.run.http]
method = "POST"
url = "http://{app}/internal/maintenance"

[[actions]]
name = "app.release"
description = "Make a release live on every node of a transaction, or on none"
tenants = []
timeout_ms = 10000
[[actions.args]]
name = "version"
type = "string"
required = true
pattern = "v[0-9]+\\.[0-9]+\\.[0-9]+"
max_len = 32
[actions.prepare.http]
method = "POST"
url = "http://{app}/internal/release/prepare"
[actions.commit.http]
method = "POST"
url = "http://{app}/internal/release/commit"
[actions.abort.http]
method = "POST"
url = "http://{app}/internal/release/abort"
"#
    );
    toml
}

/// `program` found in `PATH` (exec actions need absolute programs).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// A TOML basic string.
fn toml_str(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_declares_valid_actions_for_the_agent() {
        use clap::Parser as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = agent_config(
            "127.0.0.1:8123".parse().expect("addr"),
            Path::new("/tmp/demo \"dir\"/logs/agent-1.log"),
            Some(Path::new("/usr/bin/tail")),
        );
        let file = dir.path().join("agent-1.toml");
        std::fs::write(&file, &config).expect("write");
        let data = dir.path().join("data");
        let args = ragmesh_config::AgentArgs::try_parse_from([
            "ragmesh-agent".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
            "--insecure".as_ref(),
            "--name".as_ref(),
            "agent-1".as_ref(),
            "--master".as_ref(),
            "127.0.0.1:7400".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ])
        .expect("parse");
        // The agent's own validation: schema, absolute programs, placeholders, steps.
        let resolved = args.resolve().unwrap_or_else(|errors| panic!("{config}\n{errors}"));
        let names: Vec<(&str, bool)> =
            resolved.actions.iter().map(|a| (a.name.as_str(), a.is_transactional())).collect();
        assert_eq!(
            names,
            [
                ("app.log-tail", false),
                ("app.clear-cache", false),
                ("app.health", false),
                ("app.maintenance", false),
                ("app.release", true)
            ]
        );
        let tail = &resolved.actions[0];
        match &tail.steps()[0].1 {
            ragmesh_actions::Step::Exec(exec) => {
                let last = exec.argv.last().expect("argv");
                assert_eq!(last, &ragmesh_actions::ArgvItem::Literal("/tmp/demo \"dir\"/logs/agent-1.log".to_owned()));
            }
            ragmesh_actions::Step::Http(_) => panic!("app.log-tail is an exec action"),
        }
    }
}
