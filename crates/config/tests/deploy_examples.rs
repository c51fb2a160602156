//! The example configurations under deploy/config parse and validate, so the files operators
//! copy never drift from the code. TLS paths point at /etc/ragmesh, which does not exist here;
//! those (and only those) problems are expected.

use std::path::Path;

use clap::Parser as _;
use ragmesh_config::{AgentArgs, MasterArgs};

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config").join(name).display().to_string()
}

/// Every problem must be a missing /etc/ragmesh file, nothing else.
fn only_missing_tls_files(problems: &[String]) {
    assert_eq!(problems.len(), 3, "{problems:#?}");
    for problem in problems {
        assert!(problem.contains("/etc/ragmesh/") && problem.contains("no such file"), "{problem}");
    }
}

#[test]
fn master_example_is_valid() {
    let args = MasterArgs::try_parse_from(["ragmesh-master", "--config", &example("master.toml")]).expect("parse");
    only_missing_tls_files(&args.resolve().expect_err("tls files absent here").problems);
    let args = MasterArgs::try_parse_from(["ragmesh-master", "--config", &example("master.toml"), "--insecure"])
        .expect("parse");
    let config = args.resolve().expect("valid");
    assert_eq!(config.listen.port(), 7400);
}

#[test]
fn agent_example_is_valid() {
    let args = AgentArgs::try_parse_from(["ragmesh-agent", "--config", &example("agent.toml")]).expect("parse");
    only_missing_tls_files(&args.resolve().expect_err("tls files absent here").problems);
    let args = AgentArgs::try_parse_from([
        "ragmesh-agent",
        "--config",
        &example("agent.toml"),
        "--insecure",
        "--name",
        "app-1",
    ])
    .expect("parse");
    let config = args.resolve().expect("valid");
    assert_eq!(config.labels.get("zone").map(String::as_str), Some("eu-west-1a"));
    assert_eq!(config.advertise.as_deref(), Some("app-server-1.internal:7401"));
    assert_eq!(config.max_concurrent_requests, 64);
}

#[test]
fn agent_actions_example_is_valid() {
    let args = AgentArgs::try_parse_from(["ragmesh-agent", "--config", &example("agent-actions.toml")]).expect("parse");
    only_missing_tls_files(&args.resolve().expect_err("tls files absent here").problems);
    let args = AgentArgs::try_parse_from([
        "ragmesh-agent",
        "--config",
        &example("agent-actions.toml"),
        "--insecure",
        "--name",
        "app-1",
    ])
    .expect("parse");
    let config = args.resolve().expect("valid");
    let summary: Vec<(&str, bool)> = config.actions.iter().map(|a| (a.name.as_str(), a.is_transactional())).collect();
    assert_eq!(summary, [("rotate-logs", false), ("clear-cache", false), ("switch-flags", true)]);
    let kinds: Vec<&str> = config
        .actions
        .iter()
        .map(|a| match &a.steps()[0].1 {
            ragmesh_actions::Step::Exec(_) => "exec",
            ragmesh_actions::Step::Http(_) => "http",
        })
        .collect();
    assert_eq!(kinds, ["exec", "http", "exec"]);
    let clear = &config.actions[1];
    assert_eq!(clear.capability, "actions");
    assert!(clear.arg("api_key").is_some_and(|arg| arg.secret));
}
