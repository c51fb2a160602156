//! Remote actions on a real agent (plaintext, on loopback) attached to a stand-in master (a real
//! tonic MembershipService over a socket that hands out verification keys, records heartbeats
//! and can send transaction decisions down the health stream). The master's own action code is
//! bypassed: every call here carries a context signed with the master's key exactly as the
//! master signs it, so these tests show what the agent enforces by itself.

use std::path::Path;
use std::time::Duration;

use clap::Parser as _;
use ragmesh_agent::AgentHandle;
use ragmesh_auth::Capability;
use ragmesh_config::AgentArgs;
use ragmesh_proto::v1::{self, agent_service_client::AgentServiceClient};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Request};

mod common;

use common::{Master, WAIT, client, signed};

/// Waits for a heartbeat whose in-doubt list satisfies `check`.
async fn heartbeat_where(master: &mut Master, what: &str, check: impl Fn(&[String]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let beat = tokio::time::timeout_at(deadline, master.heartbeats.recv())
            .await
            .unwrap_or_else(|_| panic!("no heartbeat where {what} in time"))
            .expect("open");
        if check(&beat.in_doubt_transactions) {
            return;
        }
    }
}

const ACTIONS: &str = r#"
[[actions]]
name = "count"
description = "appends a line to a file"
tenants = ["acme"]
[[actions.args]]
name = "word"
type = "string"
required = true
pattern = "[a-z]+"
[actions.run.exec]
program = "/bin/sh"
argv = ["-c", "echo \"$1\" >> \"$0\"", "COUNT_FILE", "{word}"]

[[actions]]
name = "hang"
tenants = ["*"]
timeout_ms = 300
[actions.run.exec]
program = "/bin/sleep"
argv = ["30"]

[[actions]]
name = "ops-only"
tenants = []
[actions.run.exec]
program = "/bin/true"

[[actions]]
name = "flip"
description = "transactional: prepare, commit and abort each append their name"
tenants = ["*"]
[actions.prepare.exec]
program = "/bin/sh"
argv = ["-c", "echo prepare >> \"$0\"", "TX_FILE"]
[actions.commit.exec]
program = "/bin/sh"
argv = ["-c", "echo commit >> \"$0\"", "TX_FILE"]
[actions.abort.exec]
program = "/bin/sh"
argv = ["-c", "echo abort >> \"$0\"", "TX_FILE"]
"#;

/// Files the declared actions append to.
struct Files {
    count: std::path::PathBuf,
    tx: std::path::PathBuf,
}

fn write_config(dir: &Path) -> (std::path::PathBuf, Files) {
    let files = Files { count: dir.join("count.txt"), tx: dir.join("tx.txt") };
    let text = ACTIONS
        .replace("COUNT_FILE", files.count.to_str().expect("utf-8"))
        .replace("TX_FILE", files.tx.to_str().expect("utf-8"));
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).expect("write config");
    (path, files)
}

async fn start_agent(master: &str, data_dir: &Path, config: &Path) -> AgentHandle {
    common::start_agent_with("agent-a", master, data_dir, &["--config", config.to_str().expect("utf-8")]).await
}

fn run(action: &str, args: &[(&str, &str)], call_id: &str) -> v1::RunActionRequest {
    v1::RunActionRequest {
        call: Some(v1::ActionCall {
            action: action.into(),
            arguments: args.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }),
        call_id: call_id.into(),
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|text| text.lines().map(str::to_owned).collect()).unwrap_or_default()
}

#[tokio::test]
async fn an_exec_action_validates_arguments_times_out_and_runs_a_repeated_call_id_once() {
    let master = Master::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, files) = write_config(dir.path());
    let agent = start_agent(&master.addr, &dir.path().join("data"), &config).await;
    let mut client = client(&agent).await;
    let acme = master.context("acme", &[Capability::Actions]);

    let listed = client.list_actions(signed(v1::ListActionsRequest {}, &acme)).await.expect("list").into_inner();
    let names: Vec<&str> = listed.actions.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "node.drain",
            "node.undrain",
            "node.labels",
            "index.compact",
            "index.snapshot",
            "index.restore",
            "count",
            "flip",
            "hang",
            "ops-only"
        ]
    );
    assert!(listed.actions.iter().take(6).all(|a| a.builtin) && listed.actions.iter().skip(6).all(|a| !a.builtin));
    let count = listed.actions.iter().find(|a| a.name == "count").expect("count");
    assert_eq!(count.arguments[0].pattern, "[a-z]+", "the schema travels with the descriptor");

    let refused = client
        .run_action(signed(run("count", &[("word", "NOT-LOWER"), ("extra", "1")], ""), &acme))
        .await
        .expect_err("invalid arguments");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("\"word\"") && refused.message().contains("\"extra\""),
        "every problem: {}",
        refused.message()
    );
    assert!(lines(&files.count).is_empty(), "nothing ran");

    let first = client.run_action(signed(run("count", &[("word", "one")], "call-1"), &acme)).await.expect("run");
    let first = first.into_inner();
    assert!(!first.repeated_call);
    let result = first.result.expect("result");
    assert_eq!(result.status, v1::ActionStatus::Ok as i32, "{result:?}");
    assert_eq!(result.steps[0].exit_code, Some(0));
    let again = client.run_action(signed(run("count", &[("word", "one")], "call-1"), &acme)).await.expect("repeat");
    let again = again.into_inner();
    assert!(again.repeated_call, "a repeated call id is answered from the first run");
    assert_eq!(again.result.expect("result").status, v1::ActionStatus::Ok as i32);
    let reused = client
        .run_action(signed(run("count", &[("word", "two")], "call-1"), &acme))
        .await
        .expect_err("same id, other arguments");
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert_eq!(lines(&files.count), ["one"], "the program ran once for call-1");

    let started = std::time::Instant::now();
    let hung = client.run_action(signed(run("hang", &[], "call-2"), &acme)).await.expect("run").into_inner();
    let hung = hung.result.expect("result");
    assert_eq!(hung.status, v1::ActionStatus::Timeout as i32, "{hung:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "killed at its 300 ms timeout, not after 30 s");

    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn tenants_capabilities_and_undeclared_actions_are_enforced_by_the_agent_itself() {
    let master = Master::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, files) = write_config(dir.path());
    let agent = start_agent(&master.addr, &dir.path().join("data"), &config).await;
    let mut client = client(&agent).await;

    let globex = master.context("globex", &[Capability::Actions]);
    let denied =
        client.run_action(signed(run("count", &[("word", "x")], ""), &globex)).await.expect_err("other tenant");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("\"acme\"") && denied.message().contains("\"globex\""), "{}", denied.message());

    let no_capability = master.context("acme", &[Capability::Search]);
    let denied =
        client.run_action(signed(run("count", &[("word", "x")], ""), &no_capability)).await.expect_err("capability");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("\"actions\""), "names the capability: {}", denied.message());

    let acme = master.context("acme", &[Capability::Actions]);
    let denied = client.run_action(signed(run("ops-only", &[], ""), &acme)).await.expect_err("operators only");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = client.run_action(signed(run("node.drain", &[], ""), &acme)).await.expect_err("built-ins: operators");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // A validly signed context does not make an undeclared action exist.
    let operator = master.operator();
    let unknown = client.run_action(signed(run("rm-rf", &[], ""), &operator)).await.expect_err("undeclared");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains("count") && unknown.message().contains("node.drain"), "{}", unknown.message());
    let unsigned = client.run_action(Request::new(run("count", &[("word", "x")], ""))).await.expect_err("no context");
    assert_eq!(unsigned.code(), Code::Unauthenticated);
    assert!(lines(&files.count).is_empty(), "nothing ran");

    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn drain_makes_node_search_unavailable_across_a_restart_and_undrain_restores_it() {
    let mut master = Master::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, _files) = write_config(dir.path());
    let data = dir.path().join("data");
    let agent = start_agent(&master.addr, &data, &config).await;
    let mut client = client(&agent).await;
    let operator = master.operator();
    let search = || v1::NodeSearchRequest { query: "anything".into(), limit: 5, ..Default::default() };

    client.node_search(signed(search(), &operator)).await.expect("serving before the drain");
    client.run_action(signed(run("node.drain", &[], ""), &operator)).await.expect("drain");
    let drained = client.node_search(signed(search(), &operator)).await.expect_err("drained");
    assert_eq!(drained.code(), Code::Unavailable);
    assert_eq!(drained.message(), "drained by an operator: run node.undrain");

    // Labels set by an operator reach the master at the re-registration that follows.
    while master.registrations.try_recv().is_ok() {}
    client.run_action(signed(run("node.labels", &[("set", "zone=b,rack=r7")], ""), &operator)).await.expect("labels");
    let registration =
        tokio::time::timeout(WAIT, master.registrations.recv()).await.expect("re-registers").expect("open");
    assert_eq!(registration.labels.get("rack").map(String::as_str), Some("r7"));

    agent.shutdown().await.expect("clean shutdown");
    let agent = start_agent(&master.addr, &data, &config).await;
    let mut client = self::client(&agent).await;
    let drained = client.node_search(signed(search(), &operator)).await.expect_err("still drained after a restart");
    assert_eq!(drained.code(), Code::Unavailable);
    let registration = tokio::time::timeout(WAIT, master.registrations.recv()).await.expect("registers").expect("open");
    assert_eq!(registration.labels.get("zone").map(String::as_str), Some("b"), "labels survive a restart");
    client.run_action(signed(run("node.undrain", &[], ""), &operator)).await.expect("undrain");
    client.node_search(signed(search(), &operator)).await.expect("serving again");
    let compacted = client.run_action(signed(run("index.compact", &[], ""), &operator)).await.expect("compact");
    let compacted = compacted.into_inner().result.expect("result");
    assert_eq!(compacted.status, v1::ActionStatus::Ok as i32, "{compacted:?}");
    assert!(compacted.steps[0].stdout.starts_with("compacted:"), "{compacted:?}");
    agent.shutdown().await.expect("clean shutdown");
}

fn write(tx: &str, doc: v1::Document) -> v1::PrepareTransactionRequest {
    let kind = v1::transaction_operation::Kind::Write(v1::DocumentWrite { upserts: vec![doc], deletes: Vec::new() });
    v1::PrepareTransactionRequest { operation: Some(v1::TransactionOperation { kind: Some(kind) }), ..prepare(tx, "") }
}

#[tokio::test]
async fn a_transactional_write_votes_by_the_index_rules_and_applies_nothing_itself_on_commit() {
    let mut master = Master::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, _files) = write_config(dir.path());
    let agent = start_agent(&master.addr, &dir.path().join("data"), &config).await;
    let mut client = client(&agent).await;
    let acme = master.context("acme", &[Capability::Ingest]);
    let acl = |public: bool| Some(v1::DocumentAcl { public, tenants: vec!["acme".into()], subjects: Vec::new() });
    let doc = |id: &str, public: bool| v1::Document {
        id: id.into(),
        collection: "notes".into(),
        title: "t".into(),
        body: "b".into(),
        acl: acl(public),
        ..Default::default()
    };

    let refused = client.prepare_transaction(signed(write("000000000000000000000000000000a1", doc("p", true)), &acme));
    let refused = refused.await.expect("a vote").into_inner();
    assert!(!refused.vote_yes && refused.message.contains("public"), "a tenant may not publish: {refused:?}");
    let tx = "000000000000000000000000000000a2";
    let vote = client.prepare_transaction(signed(write(tx, doc("d1", false)), &acme)).await.expect("vote").into_inner();
    assert!(vote.vote_yes, "{vote:?}");
    heartbeat_where(&mut master, "the write is in doubt", |txs| txs == [tx]).await;
    let decide = v1::DecideTransactionRequest { tx_id: tx.into(), decision: v1::TransactionDecision::Commit as i32 };
    client.decide_transaction(signed(decide, &acme)).await.expect("commit acknowledged");
    heartbeat_where(&mut master, "nothing in doubt", <[String]>::is_empty).await;
    // The master delivers committed writes through the group's write log; the agent wrote nothing.
    let search = v1::NodeSearchRequest { query: "t".into(), limit: 5, ..Default::default() };
    let found = client.node_search(signed(search, &master.operator())).await.expect("search").into_inner();
    assert_eq!(found.generation, 0, "{found:?}");
    agent.shutdown().await.expect("clean shutdown");
}

fn prepare(tx: &str, action: &str) -> v1::PrepareTransactionRequest {
    v1::PrepareTransactionRequest {
        tx_id: tx.into(),
        operation: Some(v1::TransactionOperation {
            kind: Some(v1::transaction_operation::Kind::Action(v1::ActionCall {
                action: action.into(),
                arguments: Default::default(),
            })),
        }),
        deadline_unix_ms: u64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis(),
        )
        .expect("ms")
            + 60_000,
    }
}

#[tokio::test]
async fn a_prepared_transaction_survives_a_restart_in_doubt_and_applies_the_decision_it_then_receives_once() {
    let mut master = Master::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, files) = write_config(dir.path());
    let data = dir.path().join("data");
    let agent = start_agent(&master.addr, &data, &config).await;
    let mut client = client(&agent).await;
    let operator = master.operator();
    let tx = "0123456789abcdef0123456789abcdef";

    let not_tx =
        client.prepare_transaction(signed(prepare("00000000000000000000000000000001", "ops-only"), &operator)).await;
    let not_tx = not_tx.expect("a vote").into_inner();
    assert!(!not_tx.vote_yes && not_tx.message.contains("not transactional"), "{not_tx:?}");

    let vote = client.prepare_transaction(signed(prepare(tx, "flip"), &operator)).await.expect("vote").into_inner();
    assert!(vote.vote_yes, "{vote:?}");
    assert_eq!(lines(&files.tx), ["prepare"]);
    heartbeat_where(&mut master, "the tx is in doubt", |txs| txs == [tx]).await;

    // Down before any decision: the prepared state is all that is left.
    agent.shutdown().await.expect("clean shutdown");
    let agent = start_agent(&master.addr, &data, &config).await;
    // Only heartbeats of the restarted agent count (start_agent waited for its attachment).
    while master.heartbeats.try_recv().is_ok() {}
    heartbeat_where(&mut master, "the tx is in doubt after the restart", |txs| txs == [tx]).await;

    let outcome = v1::TransactionOutcome { tx_id: tx.into(), decision: v1::TransactionDecision::Commit as i32 };
    let decisions = v1::TransactionDecisions { outcomes: vec![outcome] };
    let _ = master
        .down
        .send(v1::HealthStreamResponse { body: Some(v1::health_stream_response::Body::Decisions(decisions)) });
    heartbeat_where(&mut master, "the decision is applied", <[String]>::is_empty).await;
    assert_eq!(lines(&files.tx), ["prepare", "commit"]);

    // A repeated decision (the coordinator re-sends until acknowledged) does not run commit again.
    let mut client = self::client(&agent).await;
    let decide = v1::DecideTransactionRequest { tx_id: tx.into(), decision: v1::TransactionDecision::Commit as i32 };
    client.decide_transaction(signed(decide, &operator)).await.expect("acknowledged again");
    let unknown = v1::DecideTransactionRequest {
        tx_id: "fedcba9876543210fedcba9876543210".into(),
        decision: v1::TransactionDecision::Abort as i32,
    };
    client.decide_transaction(signed(unknown, &operator)).await.expect("an unknown tx is acknowledged");
    assert_eq!(lines(&files.tx), ["prepare", "commit"], "commit ran exactly once");
    drop(client);
    agent.shutdown().await.expect("clean shutdown");
}

/// The agent binary, started as its own process.
fn spawn_agent(master: &str, data_dir: &Path, config: &Path, addr_file: &Path) -> std::process::Child {
    let _ = std::fs::remove_file(addr_file);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ragmesh-agent"));
    // Settings come from the flags alone, not from the environment the tests run in.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RAGMESH_") {
            command.env_remove(key);
        }
    }
    command
        .args(["--insecure", "--name", "agent-p", "--listen", "127.0.0.1:0", "--heartbeat-interval-ms", "50"])
        .arg("--master")
        .arg(master)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--config")
        .arg(config)
        .arg("--addr-file")
        .arg(addr_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command.spawn().expect("start the agent binary")
}

/// The address an agent process wrote to its addr file (bounded wait).
async fn addr_of(addr_file: &Path) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(addr_file)
            && text.ends_with('\n')
        {
            return text.trim().to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no address in {} in time", addr_file.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client_at(addr: &str) -> AgentServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the agent process");
    AgentServiceClient::new(channel)
}

/// Kills `child` when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_participant_killed_after_voting_yes_reports_the_tx_in_doubt_and_commits_it_once_after_a_restart() {
    let mut master = Master::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, files) = write_config(dir.path());
    let data = dir.path().join("data");
    let addr_file = dir.path().join("agent.addr");
    let mut agent = Killed(spawn_agent(&master.addr, &data, &config, &addr_file));
    let addr = addr_of(&addr_file).await;
    heartbeat_where(&mut master, "the agent is attached", <[String]>::is_empty).await;

    // A second agent on the same data directory refuses to start instead of sharing the log.
    let mut second = spawn_agent(&master.addr, &data, &config, &dir.path().join("second.addr"));
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the second agent did not give up in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut stderr).expect("read stderr");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("held by another process"), "{stderr}");

    let operator = master.operator();
    let tx = "00112233445566778899aabbccddeeff";
    let mut client = client_at(&addr).await;
    let vote = client.prepare_transaction(signed(prepare(tx, "flip"), &operator)).await.expect("vote").into_inner();
    assert!(vote.vote_yes, "{vote:?}");
    drop(client);
    agent.0.kill().expect("kill -9 the agent after its yes vote");
    agent.0.wait().expect("reap");

    while master.registrations.try_recv().is_ok() {}
    let agent = Killed(spawn_agent(&master.addr, &data, &config, &addr_file));
    let _addr = addr_of(&addr_file).await;
    tokio::time::timeout(WAIT, master.registrations.recv()).await.expect("re-registers").expect("open");
    // Heartbeats of the killed process said the same; only the new process's count from here.
    while master.heartbeats.try_recv().is_ok() {}
    heartbeat_where(&mut master, "the restarted agent reports the tx in doubt", |txs| txs == [tx]).await;
    assert_eq!(lines(&files.tx), ["prepare"], "nothing decided alone");
    let outcome = v1::TransactionOutcome { tx_id: tx.into(), decision: v1::TransactionDecision::Commit as i32 };
    let body =
        v1::health_stream_response::Body::Decisions(v1::TransactionDecisions { outcomes: vec![outcome.clone()] });
    let _ = master.down.send(v1::HealthStreamResponse { body: Some(body.clone()) });
    heartbeat_where(&mut master, "the decision is applied", <[String]>::is_empty).await;
    // The coordinator re-sends until it sees the tx gone; a repeat applies nothing again.
    let _ = master.down.send(v1::HealthStreamResponse { body: Some(body) });
    heartbeat_where(&mut master, "still nothing in doubt", <[String]>::is_empty).await;
    assert_eq!(lines(&files.tx), ["prepare", "commit"], "commit ran exactly once");
    drop(agent);
}

#[tokio::test]
async fn an_action_requiring_a_capability_no_token_can_carry_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    let declared = "[[actions]]\nname = \"clear-cache\"\ncapability = \"ops\"\ntenants = [\"*\"]\n[actions.run.exec]\nprogram = \"/bin/true\"\nargv = []\n";
    std::fs::write(&config, declared).expect("write config");
    let args = AgentArgs::try_parse_from([
        "ragmesh-agent",
        "--insecure",
        "--name",
        "agent-a",
        "--listen",
        "127.0.0.1:0",
        "--master",
        "127.0.0.1:9",
        "--data-dir",
        dir.path().join("data").to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ])
    .expect("parse");
    let config = args.resolve().expect("the file itself is valid");
    let listener = TcpListener::bind(config.listen).await.expect("bind");
    let Err(err) = ragmesh_agent::start(config, listener).await else {
        panic!("an unknown capability must be refused")
    };
    let message = err.to_string();
    assert!(message.contains("\"clear-cache\"") && message.contains("\"ops\""), "{message}");
    assert!(message.contains("search, ingest, actions, admin"), "the message lists what is allowed: {message}");
}
