//! Runs the built `ragmeshctl` binary: certificates end to end, help texts, and the exit codes
//! and messages of usage errors.

use std::path::Path;
use std::process::{Command, Output};

use ragmesh_tls::TlsFiles;

fn ragmeshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ragmeshctl"))
        .args(args)
        // The caller's settings must not change what the tests see.
        .env_remove("RAGMESH_MASTER")
        .env_remove("RAGMESH_CA")
        .env_remove("RAGMESH_CERT")
        .env_remove("RAGMESH_KEY")
        .env_remove("RAGMESH_INSECURE")
        .env_remove("RAGMESH_TIMEOUT_MS")
        .env_remove("RAGMESH_TOKEN")
        .env_remove("RAGMESH_REFRESH_TOKEN")
        .output()
        .expect("run ragmeshctl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A loopback `HOST:PORT` where nothing answers for as long as the returned socket lives: the
/// port stays bound, so no other program can take it, but never listens, so every connection
/// is refused.
fn refusing_address() -> (tokio::net::TcpSocket, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("create a socket");
    socket.bind("127.0.0.1:0".parse().expect("loopback address")).expect("bind a loopback port");
    let addr = socket.local_addr().expect("bound address").to_string();
    (socket, addr)
}

#[test]
fn certs_init_and_issue_write_a_usable_ca_and_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let out_dir = dir.path().join("issued");

    let init = ragmeshctl(&["certs", "init", "--dir", path(&ca_dir)]);
    assert_eq!(init.status.code(), Some(0), "{}", stderr(&init));
    assert!(stdout(&init).contains(&format!("wrote {}", ca_dir.join("ca.pem").display())));
    assert!(ca_dir.join("ca.pem").is_file() && ca_dir.join("ca.key").is_file());

    let issue = ragmeshctl(&[
        "certs",
        "issue",
        "--dir",
        path(&ca_dir),
        "master",
        "--host",
        "master.example",
        "--out",
        path(&out_dir),
        "--days",
        "30",
    ]);
    assert_eq!(issue.status.code(), Some(0), "{}", stderr(&issue));
    let printed = stdout(&issue);
    assert!(printed.contains(&format!("wrote {}", out_dir.join("master.pem").display())), "{printed}");
    assert!(printed.contains(&format!("wrote {}", out_dir.join("master.key").display())), "{printed}");

    // Without --out the files land next to the CA.
    let client = ragmeshctl(&["certs", "issue", "--dir", path(&ca_dir), "client"]);
    assert_eq!(client.status.code(), Some(0), "{}", stderr(&client));

    for (dir, name) in [(&out_dir, "master"), (&ca_dir, "client")] {
        let loaded = TlsFiles {
            ca: ca_dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
        .load()
        .expect("issued files load and chain to the CA");
        assert_eq!(loaded.identity_name(), name);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join(format!("{name}.key"))).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}.key is private");
        }
    }
    let master =
        TlsFiles { ca: ca_dir.join("ca.pem"), cert: out_dir.join("master.pem"), key: out_dir.join("master.key") }
            .load()
            .expect("master loads");
    assert!(master.identity().is("master.example"), "extra --host is a SAN");
    assert!(master.identity().is("localhost"), "loopback names are always there");
}

#[test]
fn certs_refuse_to_overwrite_a_ca_and_reject_bad_names_with_exit_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = ragmeshctl(&["certs", "init", "--dir", path(dir.path())]);
    assert_eq!(first.status.code(), Some(0));
    let ca_before = std::fs::read(dir.path().join("ca.pem")).expect("ca.pem");

    let again = ragmeshctl(&["certs", "init", "--dir", path(dir.path())]);
    assert_eq!(again.status.code(), Some(64));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).expect("ca.pem"), ca_before);

    let bad = ragmeshctl(&["certs", "issue", "--dir", path(dir.path()), "Bad_Name"]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(stderr(&bad).contains("invalid certificate name"), "{}", stderr(&bad));

    let no_ca = ragmeshctl(&["certs", "issue", "--dir", path(&dir.path().join("none")), "client"]);
    assert_eq!(no_ca.status.code(), Some(64));
    assert!(stderr(&no_ca).contains("ragmeshctl certs init"), "{}", stderr(&no_ca));
}

#[test]
fn help_lists_every_subcommand_and_global_flag() {
    let help = ragmeshctl(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = stdout(&help);
    for needle in [
        "certs",
        "nodes",
        "node",
        "search",
        "ingest",
        "demo",
        "--master",
        "--ca",
        "--cert",
        "--key",
        "--insecure",
        "--timeout-ms",
        "--token",
        "RAGMESH_MASTER",
        "RAGMESH_TOKEN",
        "token",
        "Exit status",
    ] {
        assert!(text.contains(needle), "--help lacks {needle:?}:\n{text}");
    }
}

#[test]
fn search_help_documents_its_flags() {
    let help = ragmeshctl(&["search", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = stdout(&help);
    for needle in [
        "<QUERY>",
        "--collection",
        "--node",
        "--limit",
        "--min-score",
        "--json",
        "--timeout-ms",
        "[default: 10]",
        "Examples:",
    ] {
        assert!(text.contains(needle), "search --help lacks {needle:?}:\n{text}");
    }
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["certs", "--help"][..],
        &["certs", "init", "--help"],
        &["certs", "issue", "--help"],
        &["nodes", "--help"],
        &["node", "--help"],
        &["ingest", "--help"],
        &["demo", "--help"],
        &["nodes", "evict", "--help"],
        &["token", "--help"],
        &["token", "issue", "--help"],
        &["token", "refresh", "--help"],
        &["token", "revoke", "--help"],
        &["token", "join", "--help"],
        &["token", "rotate-key", "--help"],
        &["token", "keys", "--help"],
        &["action", "--help"],
        &["action", "list", "--help"],
        &["action", "run", "--help"],
        &["action", "status", "--help"],
        &["action", "watch", "--help"],
        &["action", "tx", "--help"],
        &["action", "transactions", "--help"],
        &["action", "history", "--help"],
    ] {
        let help = ragmeshctl(args);
        assert_eq!(help.status.code(), Some(0), "{args:?}");
        assert!(stdout(&help).contains("Usage: ragmeshctl"), "{args:?}: {}", stdout(&help));
    }
}

#[test]
fn usage_errors_exit_64() {
    let none = ragmeshctl(&[]);
    assert_eq!(none.status.code(), Some(64));
    let unknown = ragmeshctl(&["frobnicate"]);
    assert_eq!(unknown.status.code(), Some(64));

    let no_tls = ragmeshctl(&["nodes"]);
    assert_eq!(no_tls.status.code(), Some(64));
    let message = stderr(&no_tls);
    assert!(
        message.contains("missing --ca (or RAGMESH_CA), --cert (or RAGMESH_CERT), --key (or RAGMESH_KEY)"),
        "{message}"
    );
    assert!(message.contains("ragmeshctl certs"), "{message}");

    let bad_master = ragmeshctl(&["--master", "nowhere", "--insecure", "nodes"]);
    assert_eq!(bad_master.status.code(), Some(64));
    assert!(stderr(&bad_master).contains("HOST:PORT"), "{}", stderr(&bad_master));
}

#[test]
fn an_unreachable_master_is_a_runtime_failure_with_advice() {
    let (_closed, addr) = refusing_address();
    let output = ragmeshctl(&["--master", &addr, "--insecure", "nodes"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains(&format!("nothing is listening at {addr}")), "{message}");
}

#[test]
fn token_help_explains_rotation_and_never_shows_secrets_from_the_environment() {
    let help = Command::new(env!("CARGO_BIN_EXE_ragmeshctl"))
        .args(["token", "refresh", "--help"])
        .env("RAGMESH_TOKEN", "access-secret-value")
        .env("RAGMESH_REFRESH_TOKEN", "refresh-secret-value")
        .output()
        .expect("run ragmeshctl");
    assert_eq!(help.status.code(), Some(0));
    let text = stdout(&help);
    assert!(text.contains("RAGMESH_REFRESH_TOKEN"), "{text}");
    assert!(text.contains("revokes the whole token family"), "{text}");
    assert!(!text.contains("secret-value"), "env values are hidden:\n{text}");

    let nodes = ragmeshctl(&["nodes", "--help"]);
    assert!(stdout(&nodes).contains("--pending"), "{}", stdout(&nodes));
    assert!(stdout(&nodes).contains("evict"), "{}", stdout(&nodes));
}

#[test]
fn the_refresh_token_can_come_from_the_environment() {
    let (_closed, addr) = refusing_address();
    let without = ragmeshctl(&["--master", &addr, "--insecure", "token", "refresh"]);
    assert_eq!(without.status.code(), Some(64), "the token is required: {}", stderr(&without));
    assert!(stderr(&without).contains("REFRESH_TOKEN"), "{}", stderr(&without));

    // With the variable set, parsing succeeds and the run fails only at the connection.
    let with = Command::new(env!("CARGO_BIN_EXE_ragmeshctl"))
        .args(["--master", &addr, "--insecure", "token", "refresh"])
        .env("RAGMESH_REFRESH_TOKEN", "rmr_from_env")
        .env_remove("RAGMESH_TOKEN")
        .output()
        .expect("run ragmeshctl");
    assert_eq!(with.status.code(), Some(1), "{}", stderr(&with));
    assert!(stderr(&with).contains("nothing is listening"), "{}", stderr(&with));
    assert!(!stderr(&with).contains("rmr_from_env"), "{}", stderr(&with));
}

#[test]
fn token_flags_are_checked_before_connecting() {
    let empty = ragmeshctl(&["--insecure", "--token", " ", "nodes"]);
    assert_eq!(empty.status.code(), Some(64));
    assert!(stderr(&empty).contains("--token (or RAGMESH_TOKEN) is empty"), "{}", stderr(&empty));

    let conflicting = ragmeshctl(&["--insecure", "token", "join", "--list", "--uses", "2"]);
    assert_eq!(conflicting.status.code(), Some(64), "{}", stderr(&conflicting));
    let no_target = ragmeshctl(&["--insecure", "token", "revoke"]);
    assert_eq!(no_target.status.code(), Some(64), "{}", stderr(&no_target));
}

#[test]
fn action_help_documents_the_exit_statuses() {
    let help = ragmeshctl(&["action", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = stdout(&help);
    for needle in
        ["list", "run", "status", "watch", "tx", "transactions", "history", "Exit status", "  2 ", "  3 ", "  64 "]
    {
        assert!(text.contains(needle), "action --help lacks {needle:?}:\n{text}");
    }
    let run = stdout(&ragmeshctl(&["action", "run", "--help"]));
    for needle in [
        "--node",
        "--all",
        "--label",
        "--shard",
        "--arg",
        "--max-parallel",
        "--max-fail-percent",
        "--idempotency-key",
        "--detach",
        "--output",
        "--json",
        "Examples:",
    ] {
        assert!(run.contains(needle), "action run --help lacks {needle:?}:\n{run}");
    }
}

#[test]
fn wrong_action_command_lines_exit_64_before_connecting() {
    // Nothing listens there: an exit status of 64 (not 1) shows the check ran before connecting.
    let (_closed, addr) = refusing_address();
    let master = ["--master", addr.as_str(), "--insecure"];
    for (args, needle) in [
        (&["action", "run", "x"][..], "--all"),
        (&["action", "run", "x", "--node", "a", "--all"], "--all"),
        (&["action", "run", "x", "--all", "--arg", "novalue"], "NAME=VALUE"),
        (&["action", "run", "x", "--all", "--arg", "k=1", "--arg", "k=2"], "given twice"),
        (&["action", "status", "bogus"], "job-N"),
        (&["action", "watch", "0123456789abcdef0123456789abcdef"], "is a transaction"),
        (&["action", "tx", "--ingest", "a", "--ingest", "b", "--shard", "s"], "in pairs"),
        (&["action", "tx", "t", "--node", "a", "--node", "a"], "given twice"),
        (&["action", "history", "--since", "yesterday"], "RFC 3339"),
    ] {
        let full: Vec<&str> = master.iter().copied().chain(args.iter().copied()).collect();
        let output = ragmeshctl(&full);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(needle), "{args:?}: {}", stderr(&output));
    }
    let secret = ragmeshctl(&["action", "run", "x", "--all", "--arg", "=hunter2"]);
    assert_eq!(secret.status.code(), Some(64));
    assert!(!stderr(&secret).contains("hunter2"), "{}", stderr(&secret));
}

#[test]
fn an_action_run_against_an_unreachable_master_is_a_runtime_failure() {
    let (_closed, addr) = refusing_address();
    let output = ragmeshctl(&["--master", &addr, "--insecure", "action", "run", "x", "--all"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains(&format!("nothing is listening at {addr}")), "{}", stderr(&output));
}
