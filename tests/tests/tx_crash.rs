//! Two-phase commit over three agent processes with crash injection (issue 9): the master is
//! killed with SIGKILL (at a failpoint, `RAGMESH_FAILPOINT`) after every vote is in but before
//! the decision is logged, after logging commit before telling anyone, and after the first
//! acknowledgement; a participant is killed after voting yes, when the decision arrives. Each
//! daemon is restarted without the failpoint, and then:
//!
//! - every participant ends in the same state (the master lists every participant acknowledged,
//!   and each agent's own participant log, read from its data directory once it is stopped,
//!   holds that outcome and nothing in doubt);
//! - the documents of the transaction are on all three shard groups, each exactly once, or on
//!   none (searched per node through the master, and counted by each node's heartbeats);
//! - `ListTransactions` shows nothing unfinished.
//!
//! Each mesh then runs a second transaction of a declared transactional `exec` action on every
//! node, crashed at the same point: each step leaves one new marker file per run in the agent's
//! data directory (`/bin/mktemp`, never a shell), so the test counts that the prepare ran once
//! per node and then commit ran exactly once per node, or abort did (resent decisions and the
//! answers to in-doubt heartbeats never run a step twice).

use std::time::{Duration, Instant};

use ragmesh_coordinator::log::ParticipantLog;
use ragmesh_coordinator::{Decision, TxId};
use ragmesh_e2e::daemons::ProcessMesh;
use ragmesh_proto::v1;
use ragmesh_proto::v1::master_service_client::MasterServiceClient;
use std::os::unix::process::ExitStatusExt as _;
use tonic::transport::Channel;

const AGENTS: usize = 3;
/// How long recovery may take on a loaded machine (resend backoff, reconnects, catch-up).
const RECOVERY: Duration = Duration::from_secs(90);
const FAILPOINT: &str = "RAGMESH_FAILPOINT";
const COLLECTION: &str = "notes";

/// Every agent declares `mark`: each step creates one new file `<step>.XXXXXX` in the agent's
/// data directory, so the files count the runs of each step.
const AGENT_TOML: &str = r#"
[[actions]]
name = "mark"
description = "transactional: every prepare, commit and abort run leaves one new marker file"
tenants = ["*"]
timeout_ms = 10000
[actions.prepare.exec]
program = "/bin/mktemp"
argv = ["-p", "{dir}/{name}", "prepare.XXXXXX"]
[actions.commit.exec]
program = "/bin/mktemp"
argv = ["-p", "{dir}/{name}", "commit.XXXXXX"]
[actions.abort.exec]
program = "/bin/mktemp"
argv = ["-p", "{dir}/{name}", "abort.XXXXXX"]
"#;

/// Where the daemons crash.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// The master, at this failpoint.
    Master(&'static str),
    /// Agent `i` (from 0), at this failpoint.
    Agent(usize, &'static str),
}

async fn mesh(crash: Crash) -> ProcessMesh {
    let builder = ProcessMesh::builder()
        .agents(AGENTS)
        .agent_toml(AGENT_TOML)
        // Fast heartbeats (the agents' in-doubt asks ride on them); quick breaker probes so a
        // restarted node is called again soon.
        .env("RAGMESH_HEARTBEAT_INTERVAL_MS", "200")
        .master_arg("--breaker-min-wait-ms")
        .master_arg("200")
        .master_arg("--breaker-max-wait-ms")
        .master_arg("1000");
    let builder = match crash {
        Crash::Master(point) => builder.master_env(FAILPOINT, point),
        Crash::Agent(i, point) => builder.agent_env(i, FAILPOINT, point),
    };
    builder.start().await
}

fn doc(id: &str, body: &str) -> v1::Document {
    v1::Document {
        id: id.into(),
        collection: COLLECTION.into(),
        title: id.into(),
        body: body.into(),
        acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        ..Default::default()
    }
}

/// A transaction writing one document (`<word>-<agent>`) to each agent's shard group.
fn writes(mesh: &ProcessMesh, word: &str) -> v1::ExecuteTransactionRequest {
    let parts = (0..AGENTS)
        .map(|i| {
            let group = mesh.agent_name(i);
            let write = v1::DocumentWrite { upserts: vec![doc(&doc_id(word, &group), word)], deletes: Vec::new() };
            v1::TransactionPart {
                shard: group,
                operation: Some(v1::TransactionOperation { kind: Some(v1::transaction_operation::Kind::Write(write)) }),
                ..Default::default()
            }
        })
        .collect();
    v1::ExecuteTransactionRequest { parts, timeout_ms: 20_000, ..Default::default() }
}

fn doc_id(word: &str, group: &str) -> String {
    format!("{word}-{group}")
}

/// A transaction of the `mark` action on every agent.
fn marks(mesh: &ProcessMesh) -> v1::ExecuteTransactionRequest {
    let parts = (0..AGENTS)
        .map(|i| {
            let call = v1::ActionCall { action: "mark".into(), arguments: Default::default() };
            v1::TransactionPart {
                node: mesh.agent_name(i),
                operation: Some(v1::TransactionOperation { kind: Some(v1::transaction_operation::Kind::Action(call)) }),
                ..Default::default()
            }
        })
        .collect();
    v1::ExecuteTransactionRequest { parts, timeout_ms: 20_000, ..Default::default() }
}

/// Polls `check` every 100 ms until it gives a value; panics with `what` and the last
/// observation after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every transaction the master keeps, finished ones included.
async fn all_transactions(client: &mut MasterServiceClient<Channel>) -> Vec<v1::TransactionStatus> {
    let request = v1::ListTransactionsRequest { include_finished: true, limit: 0 };
    client.list_transactions(request).await.expect("list transactions").into_inner().transactions
}

/// The one transaction the master keeps that is not in `known` (the crashed call never answered,
/// so its id is learned from the restarted master).
async fn new_transaction(client: &mut MasterServiceClient<Channel>, known: &[String]) -> String {
    let mut fresh: Vec<String> =
        all_transactions(client).await.into_iter().map(|t| t.tx_id).filter(|id| !known.contains(id)).collect();
    assert_eq!(fresh.len(), 1, "exactly one new transaction is kept: {fresh:?}");
    fresh.remove(0)
}

/// Waits until `tx_id` is finished everywhere: decided `decision`, every participant voted yes
/// and acknowledged it. Returns its final status.
async fn settled(mesh: &ProcessMesh, tx_id: &str, decision: v1::TransactionDecision) -> v1::TransactionStatus {
    let client = mesh.client().await;
    let done = eventually(&format!("transaction {tx_id} finished everywhere"), RECOVERY, || {
        let mut client = client.clone();
        let tx_id = tx_id.to_owned();
        async move {
            let status = client
                .get_transaction(v1::GetTransactionRequest { tx_id })
                .await
                .map_err(|e| format!("{e:?}"))?
                .into_inner()
                .transaction
                .ok_or("no status")?;
            let finished = [v1::TransactionPhase::Committed, v1::TransactionPhase::Aborted].contains(&status.phase());
            if finished { Ok(status) } else { Err(format!("{status:?}")) }
        }
    })
    .await;
    assert_eq!(done.decision(), decision, "{done:?}");
    let expected_phase = match decision {
        v1::TransactionDecision::Commit => v1::TransactionPhase::Committed,
        _ => v1::TransactionPhase::Aborted,
    };
    assert_eq!(done.phase(), expected_phase, "{done:?}");
    assert_eq!(done.participants.len(), AGENTS, "{done:?}");
    for p in &done.participants {
        assert!(p.acknowledged, "every participant acknowledged the decision: {done:?}");
    }
    assert_ne!(done.decided_unix_ms, 0, "{done:?}");
    done
}

/// Nothing unfinished on the master.
async fn nothing_unfinished(mesh: &ProcessMesh) {
    let mut client = mesh.client().await;
    let request = v1::ListTransactionsRequest { include_finished: false, limit: 0 };
    let open = client.list_transactions(request).await.expect("list").into_inner().transactions;
    assert!(open.is_empty(), "no transaction stays unfinished: {open:?}");
}

/// Document ids a search for `word` finds on `node` alone (asserting the node answered).
async fn found_on(client: &mut MasterServiceClient<Channel>, node: &str, word: &str) -> Result<Vec<String>, String> {
    let request = v1::SearchRequest { query: word.into(), nodes: vec![node.into()], limit: 20, ..Default::default() };
    let response = client.search(request).await.map_err(|e| format!("{e:?}"))?.into_inner();
    let outcome = response.nodes.iter().find(|n| n.node == node).ok_or(format!("{node} not asked: {response:?}"))?;
    if outcome.status() != v1::OutcomeStatus::Ok {
        return Err(format!("{node} did not answer: {outcome:?}"));
    }
    Ok(response.hits.iter().map(|h| h.doc_id.clone()).collect())
}

/// Documents of collection `notes` each node reports in its heartbeats.
async fn doc_counts(client: &mut MasterServiceClient<Channel>) -> Result<Vec<(String, u64)>, String> {
    let nodes = client.list_nodes(v1::ListNodesRequest {}).await.map_err(|e| format!("{e:?}"))?.into_inner().nodes;
    Ok(nodes
        .into_iter()
        .map(|n| {
            let count = n.collections.iter().find(|c| c.name == COLLECTION).map_or(0, |c| c.doc_count);
            (n.name, count)
        })
        .collect())
}

/// The write transaction's documents are on every group, once each (`committed`), or nowhere.
async fn documents_all_or_none(mesh: &ProcessMesh, word: &str, committed: bool) {
    let client = mesh.client().await;
    for i in 0..AGENTS {
        let node = mesh.agent_name(i);
        let expected = if committed { vec![doc_id(word, &node)] } else { Vec::new() };
        eventually(&format!("{node} holds {expected:?}"), RECOVERY, || {
            let (mut client, node, expected) = (client.clone(), node.clone(), expected.clone());
            async move {
                let found = found_on(&mut client, &node, word).await?;
                if found == expected { Ok(()) } else { Err(format!("found {found:?}")) }
            }
        })
        .await;
    }
    let expected_count = u64::from(committed);
    let counts = eventually("every node's heartbeat counts the documents", RECOVERY, || {
        let mut client = client.clone();
        async move {
            let counts = doc_counts(&mut client).await?;
            let right = counts.len() == AGENTS && counts.iter().all(|(_, c)| *c == expected_count);
            if right { Ok(counts) } else { Err(format!("{counts:?}")) }
        }
    })
    .await;
    assert_eq!(counts.len(), AGENTS);
    // Through the master, across all groups: all three, or none.
    let request = v1::SearchRequest { query: word.into(), limit: 20, ..Default::default() };
    let response = client.clone().search(request).await.expect("search").into_inner();
    let mut ids: Vec<String> = response.hits.iter().map(|h| h.doc_id.clone()).collect();
    ids.sort();
    let mut expected: Vec<String> =
        if committed { (0..AGENTS).map(|i| doc_id(word, &mesh.agent_name(i))).collect() } else { Vec::new() };
    expected.sort();
    assert_eq!(ids, expected, "{response:?}");
}

/// Marker files of each step on agent `i`: (prepare, commit, abort) runs.
fn step_runs(mesh: &ProcessMesh, i: usize) -> (usize, usize, usize) {
    let dir = mesh.dir().join(mesh.agent_name(i));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let count = |step: &str| names.iter().filter(|n| n.starts_with(&format!("{step}."))).count();
    (count("prepare"), count("commit"), count("abort"))
}

/// Asserts the `mark` steps ran: prepare once per node, then commit or abort exactly once.
fn marks_ran_once(mesh: &ProcessMesh, decision: Decision) {
    for i in 0..AGENTS {
        let expected = match decision {
            Decision::Commit => (1, 1, 0),
            Decision::Abort => (1, 0, 1),
        };
        assert_eq!(step_runs(mesh, i), expected, "{}: (prepare, commit, abort) runs", mesh.agent_name(i));
    }
}

/// Stops every agent and reads its own participant log: every transaction in `expected` has
/// that outcome there, and nothing is in doubt.
async fn agents_agree(mesh: &mut ProcessMesh, expected: &[(String, Decision)]) {
    for i in 0..AGENTS {
        mesh.kill_agent(i);
        let name = mesh.agent_name(i);
        let dir = mesh.dir().join(&name).join("transactions");
        let store = ragmesh_store::SledStore::open_waiting(&dir).expect("open the agent's participant log");
        let log = ParticipantLog::new(std::sync::Arc::new(store));
        let in_doubt = log.in_doubt().expect("read the log");
        assert!(in_doubt.is_empty(), "{name} has nothing in doubt: {in_doubt:?}");
        let records = log.records().expect("read the log");
        for (tx_id, decision) in expected {
            let tx = TxId::parse(tx_id).expect("a transaction id");
            let record = records.iter().find(|r| r.tx == tx);
            let record = record.unwrap_or_else(|| panic!("{name} keeps {tx_id}: {records:?}"));
            assert!(record.prepared_ms.is_some(), "{name} prepared {tx_id}: {record:?}");
            assert_eq!(record.outcome, Some(*decision), "{name}'s outcome of {tx_id}: {record:?}");
        }
    }
}

/// The crashed process died of SIGKILL at the failpoint.
fn killed_at(status: std::process::ExitStatus, log: &str, point: &str) {
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL ({status}):\n{log}");
    let reached = log.lines().any(|l| l.contains("failpoint reached") && l.contains(point));
    assert!(reached, "the log says the failpoint {point} was reached:\n{log}");
}

fn wire(decision: Decision) -> v1::TransactionDecision {
    match decision {
        Decision::Commit => v1::TransactionDecision::Commit,
        Decision::Abort => v1::TransactionDecision::Abort,
    }
}

/// Runs `request` while the master crashes at `point`, restarts it without the failpoint, and
/// waits until the transaction is finished everywhere with `decision`. Returns its id.
async fn through_a_master_crash(
    mesh: &mut ProcessMesh,
    point: &str,
    request: v1::ExecuteTransactionRequest,
    decision: Decision,
) -> String {
    let mut client = mesh.client().await;
    let known: Vec<String> = all_transactions(&mut client).await.into_iter().map(|t| t.tx_id).collect();
    let call = tokio::spawn(async move { client.execute_transaction(request).await });
    let status = mesh.wait_master_exit().await;
    killed_at(status, &mesh.log("master"), point);
    let answer = tokio::time::timeout(RECOVERY, call).await.expect("the call ends").expect("the task");
    assert!(answer.is_err(), "the caller hears no outcome from a master killed mid-transaction: {answer:?}");

    mesh.restart_master(&[]).await;
    for i in 0..AGENTS {
        mesh.wait_agent_up(&mesh.agent_name(i)).await;
    }
    let mut client = mesh.client().await;
    let tx_id = new_transaction(&mut client, &known).await;
    settled(mesh, &tx_id, wire(decision)).await;
    nothing_unfinished(mesh).await;
    tx_id
}

/// One master failpoint: a write transaction and then an action transaction, each crashed there.
async fn master_crash(point: &'static str, word: &str, decision: Decision) {
    ragmesh_e2e::trace_init();
    let mut mesh = mesh(Crash::Master(point)).await;
    let request = writes(&mesh, word);
    let writes_tx = through_a_master_crash(&mut mesh, point, request, decision).await;
    assert!(
        mesh.log("master").contains("transaction resumed after restart"),
        "the restarted master resumed the transaction from its log"
    );
    documents_all_or_none(&mesh, word, decision == Decision::Commit).await;

    // The same crash with the declared action on every node; the master armed again.
    mesh.restart_master(&[(FAILPOINT, point)]).await;
    for i in 0..AGENTS {
        mesh.wait_agent_up(&mesh.agent_name(i)).await;
    }
    let request = marks(&mesh);
    let marks_tx = through_a_master_crash(&mut mesh, point, request, decision).await;
    marks_ran_once(&mesh, decision);
    documents_all_or_none(&mesh, word, decision == Decision::Commit).await;
    agents_agree(&mut mesh, &[(writes_tx, decision), (marks_tx, decision)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_after_the_votes_before_logging_a_decision_aborts_everywhere_after_its_restart() {
    master_crash("coordinator.before_decision_logged", "walrus", Decision::Abort).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_after_logging_commit_before_sending_it_commits_everywhere_after_its_restart() {
    master_crash("coordinator.after_decision_logged", "narwhal", Decision::Commit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_after_the_first_commit_acknowledgement_commits_everywhere_after_its_restart() {
    master_crash("coordinator.after_ack", "manatee", Decision::Commit).await;
}

/// Waits until `tx_id` is committing with every participant but `down` acknowledged, and
/// checks `down` is not.
async fn waiting_for(mesh: &ProcessMesh, tx_id: &str, down: &str) -> v1::TransactionStatus {
    let client = mesh.client().await;
    let what = format!("{tx_id} acknowledged by every participant but {down}");
    let read = eventually(&what, RECOVERY, || {
        let mut client = client.clone();
        let tx_id = tx_id.to_owned();
        async move {
            let read =
                client.get_transaction(v1::GetTransactionRequest { tx_id }).await.map_err(|e| format!("{e:?}"))?;
            let read = read.into_inner().transaction.ok_or("no status")?;
            let others = read.participants.iter().filter(|p| p.node != down).all(|p| p.acknowledged);
            if others && read.participants.len() == AGENTS { Ok(read) } else { Err(format!("{read:?}")) }
        }
    })
    .await;
    assert_eq!(read.phase(), v1::TransactionPhase::Committing, "not finished while {down} is down: {read:?}");
    assert_eq!(read.decision(), v1::TransactionDecision::Commit, "{read:?}");
    let participant = read.participants.iter().find(|p| p.node == down).expect("the crashed participant");
    assert!(!participant.acknowledged, "{read:?}");
    read
}

/// Runs `request` while agent `i` crashes when its decision arrives: while it is down the
/// master shows the transaction committing with that participant unacknowledged; restarted
/// without the failpoint, the agent resolves it and everyone ends committed. Returns its id.
async fn through_a_participant_crash(
    mesh: &mut ProcessMesh,
    i: usize,
    request: v1::ExecuteTransactionRequest,
) -> String {
    let point = "participant.before_apply";
    let name = mesh.agent_name(i);
    let mut client = mesh.client().await;
    let call = tokio::spawn(async move { client.execute_transaction(request).await });
    let status = mesh.wait_agent_exit(i).await;
    killed_at(status, &mesh.log(&name), point);
    let answer = tokio::time::timeout(RECOVERY, call).await.expect("the call ends").expect("the task");
    let answer = answer.expect("the master answers").into_inner().transaction.expect("a status");
    let tx_id = answer.tx_id.clone();
    assert_eq!(answer.decision(), v1::TransactionDecision::Commit, "{answer:?}");
    assert_eq!(answer.phase(), v1::TransactionPhase::Committing, "not finished while {name} is down: {answer:?}");
    assert!(answer.participants.iter().all(|p| p.vote() == v1::ParticipantVote::Yes), "{answer:?}");

    // While the agent is down, the master keeps the transaction open and says who it waits for.
    let read = waiting_for(mesh, &tx_id, &name).await;
    let down = read.participants.iter().find(|p| p.node == name).expect("the crashed participant");
    assert!(down.message.contains("not acknowledged"), "the master says what it waits for: {read:?}");
    let mut client = mesh.client().await;
    let open = client.list_transactions(v1::ListTransactionsRequest::default()).await.expect("list");
    let open: Vec<String> = open.into_inner().transactions.into_iter().map(|t| t.tx_id).collect();
    assert_eq!(open, vec![tx_id.clone()], "listed unfinished while a participant is in doubt");

    mesh.restart_agent(i, &[]).await;
    settled(mesh, &tx_id, v1::TransactionDecision::Commit).await;
    nothing_unfinished(mesh).await;
    tx_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_killed_after_voting_yes_resolves_its_doubt_after_its_restart_and_commits_everywhere() {
    ragmesh_e2e::trace_init();
    let crashed = AGENTS - 1;
    let point = "participant.before_apply";
    let mut mesh = mesh(Crash::Agent(crashed, point)).await;
    let word = "dugong";
    let name = mesh.agent_name(crashed);
    let request = writes(&mesh, word);
    let writes_tx = through_a_participant_crash(&mut mesh, crashed, request).await;
    assert!(
        mesh.log(&name).contains("transaction in doubt after a restart"),
        "{name} came back with the transaction in doubt"
    );
    documents_all_or_none(&mesh, word, true).await;

    // The same crash with the declared action: after the restart, commit runs there exactly once.
    mesh.restart_agent(crashed, &[(FAILPOINT, point)]).await;
    let request = marks(&mesh);
    let marks_tx = through_a_participant_crash(&mut mesh, crashed, request).await;
    marks_ran_once(&mesh, Decision::Commit);
    documents_all_or_none(&mesh, word, true).await;
    agents_agree(&mut mesh, &[(writes_tx, Decision::Commit), (marks_tx, Decision::Commit)]).await;
}

/// Kill -9 of a participant between its yes vote and the decision (while the master is down
/// too, killed after logging commit): the restarted master must tell the live participants
/// and get their acknowledgements while the dead one's group cannot take its write, and
/// finish once that participant is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_killed_before_it_hears_a_logged_commit_does_not_hold_up_the_others() {
    ragmesh_e2e::trace_init();
    let point = "coordinator.after_decision_logged";
    let mut mesh = mesh(Crash::Master(point)).await;
    let word = "beluga";
    let dead = AGENTS - 1;
    let name = mesh.agent_name(dead);
    let mut client = mesh.client().await;
    let request = writes(&mesh, word);
    let call = tokio::spawn(async move { client.execute_transaction(request).await });
    let status = mesh.wait_master_exit().await;
    killed_at(status, &mesh.log("master"), point);
    assert!(tokio::time::timeout(RECOVERY, call).await.expect("the call ends").expect("the task").is_err());
    // Prepared, voted yes, never told: killed while the master is down.
    mesh.kill_agent(dead);
    mesh.restart_master(&[]).await;
    for i in 0..dead {
        mesh.wait_agent_up(&mesh.agent_name(i)).await;
    }
    let mut client = mesh.client().await;
    let tx_id = new_transaction(&mut client, &[]).await;
    // Within far less than the write timeout, the live participants hear and acknowledge.
    let started = Instant::now();
    waiting_for(&mesh, &tx_id, &name).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "the live participants acknowledged only after {took:?}");
    let client = mesh.client().await;
    for i in 0..dead {
        let node = mesh.agent_name(i);
        let expected = vec![doc_id(word, &node)];
        eventually(&format!("{node} holds {expected:?}"), RECOVERY, || {
            let (mut client, node, expected) = (client.clone(), node.clone(), expected.clone());
            async move {
                let found = found_on(&mut client, &node, word).await?;
                if found == expected { Ok(()) } else { Err(format!("found {found:?}")) }
            }
        })
        .await;
    }

    mesh.restart_agent(dead, &[]).await;
    settled(&mesh, &tx_id, v1::TransactionDecision::Commit).await;
    nothing_unfinished(&mesh).await;
    documents_all_or_none(&mesh, word, true).await;
    agents_agree(&mut mesh, &[(tx_id, Decision::Commit)]).await;
}
