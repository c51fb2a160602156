//! Remote actions on the master over real mTLS with real agents: node selection errors, jobs
//! with an outcome for every selected node (nodes that cannot run the action are ERROR
//! outcomes, nodes down at the start are not started), idempotency keys (replay, conflict),
//! the audit trail and its paging, and who sees which history.
//!
//! Whatever the agents answer to ListActions (UNIMPLEMENTED before the agent side of actions,
//! a list without `no.such.action` after it), `no.such.action` cannot run on them: every
//! node's outcome is ERROR, which is what the master owns here.

use std::time::Duration;

use ragmesh_e2e::{Mesh, trace_init};
use ragmesh_master::node::NodeState;
use ragmesh_proto::v1;
use tonic::Code;

const ACTION: &str = "no.such.action";

fn run(selector: v1::NodeSelector, key: &str, args: &[(&str, &str)]) -> v1::ExecuteActionRequest {
    v1::ExecuteActionRequest {
        call: Some(v1::ActionCall {
            action: ACTION.into(),
            arguments: args.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }),
        selector: Some(selector),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

fn nodes(names: &[&str]) -> v1::NodeSelector {
    v1::NodeSelector { nodes: names.iter().map(|n| (*n).to_owned()).collect(), ..Default::default() }
}

fn all() -> v1::NodeSelector {
    v1::NodeSelector { all: true, ..Default::default() }
}

fn history(limit: u32, before: u64) -> v1::ActionHistoryRequest {
    v1::ActionHistoryRequest { limit, before_sequence: before, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selections_that_name_unknown_nodes_or_select_nothing_are_refused() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    let mut client = mesh.client().await;

    let unknown = client.execute_action(run(nodes(&["agent-1", "ghost"]), "", &[])).await.expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("ghost") && unknown.message().contains("agent-2"), "{}", unknown.message());

    let shard = v1::NodeSelector { shards: vec!["no-such-group".into()], ..Default::default() };
    let unknown = client.execute_action(run(shard, "", &[])).await.expect_err("unknown shard");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let empty = client.execute_action(run(v1::NodeSelector::default(), "", &[])).await.expect_err("no criteria");
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    let mars = v1::NodeSelector { labels: [("zone".to_owned(), "mars".to_owned())].into(), ..Default::default() };
    let nobody = client.execute_action(run(mars, "", &[])).await.expect_err("matches nobody");
    assert_eq!(nobody.code(), Code::InvalidArgument, "{nobody:?}");
    assert!(nobody.message().contains("matches no node"), "{}", nobody.message());

    let no_call = v1::ExecuteActionRequest { selector: Some(all()), ..Default::default() };
    let refused = client.execute_action(no_call).await.expect_err("no call");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let percent = v1::ExecuteActionRequest { max_fail_percent: Some(101), ..run(all(), "", &[]) };
    assert_eq!(client.execute_action(percent).await.expect_err("101 %").code(), Code::InvalidArgument);

    let history = client.action_history(history(0, 0)).await.expect("history").into_inner();
    assert!(history.records.is_empty(), "nothing refused is audited as run: {:?}", history.records);
    let missing = client.get_action_job(v1::GetActionJobRequest { job_id: "job-999".into() }).await;
    assert_eq!(missing.expect_err("no such job").code(), Code::NotFound);
    let missing = client.watch_action_job(v1::WatchActionJobRequest { job_id: "nonsense".into() }).await;
    assert_eq!(missing.expect_err("no such job").code(), Code::NotFound);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_selected_node_gets_an_outcome_in_the_job_and_the_audit_log() {
    trace_init();
    let mut mesh = Mesh::builder().agents(3).start().await;
    let mut client = mesh.client().await;

    // One node: a job of one, finished, its node an ERROR outcome (it cannot run the action).
    let single = client.execute_action(run(nodes(&["agent-1"]), "k-single", &[])).await.expect("runs");
    let single = single.into_inner();
    assert!(!single.replayed);
    let job = single.job.clone().expect("a job");
    let single_id = job.job_id.clone();
    assert!(job.finished, "{job:?}");
    assert_eq!(job.nodes.len(), 1);
    let node = &job.nodes[0];
    assert_eq!((node.node.as_str(), node.state), ("agent-1", v1::NodeActionState::Done as i32), "{node:?}");
    assert_eq!(node.status, v1::OutcomeStatus::Error as i32, "{node:?}");
    assert!(!node.message.is_empty(), "the error says why: {node:?}");

    // All: one outcome per node; the job reads back the same, and a watch of a finished job
    // gives its final state and ends.
    let broadcast = client.execute_action(run(all(), "k-all", &[])).await.expect("runs").into_inner();
    let job = broadcast.job.expect("a job");
    assert!(job.finished && job.job_id != single_id, "{job:?}");
    let names: Vec<&str> = job.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["agent-1", "agent-2", "agent-3"]);
    assert!(job.nodes.iter().all(|n| n.status == v1::OutcomeStatus::Error as i32), "{job:?}");
    let read = client.get_action_job(v1::GetActionJobRequest { job_id: job.job_id.clone() }).await.expect("get");
    assert_eq!(read.into_inner().job.as_ref().map(|j| &j.nodes), Some(&job.nodes));
    let mut watch = client
        .watch_action_job(v1::WatchActionJobRequest { job_id: job.job_id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("in time");
    assert!(first.expect("stream ok").expect("one state").job.expect("job").finished);
    let end = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("in time");
    assert!(end.expect("stream ok").is_none(), "the watch of a finished job ends");

    // The audit log: 1 + 3 node calls, newest first, paged.
    let page = client.action_history(history(2, 0)).await.expect("history").into_inner();
    assert_eq!(page.records.len(), 2);
    assert!(page.records[0].sequence > page.records[1].sequence, "newest first");
    assert_ne!(page.next_before_sequence, 0, "a second page");
    let rest = client.action_history(history(10, page.next_before_sequence)).await.expect("page 2").into_inner();
    assert_eq!(rest.records.len(), 2, "{:?}", rest.records);
    assert_eq!(rest.next_before_sequence, 0, "no third page");
    let mut all_records = page.records;
    all_records.extend(rest.records);
    for record in &all_records {
        assert_eq!((record.action.as_str(), record.status.as_str()), (ACTION, "error"), "{record:?}");
        assert!(record.subject.starts_with("operator:"), "{record:?}");
    }
    let single_record = all_records.last().expect("oldest");
    assert_eq!(single_record.kind, v1::AuditKind::Single as i32);
    assert_eq!(single_record.node, "agent-1");
    assert!(all_records[..3].iter().all(|r| r.kind == v1::AuditKind::Broadcast as i32 && r.operation_id == job.job_id));

    // A node down when the job starts is not started, and says why.
    mesh.kill_agent(2);
    mesh.wait_state("agent-3", NodeState::Down, Duration::from_secs(20)).await;
    let job = client.execute_action(run(all(), "k-down", &[])).await.expect("runs").into_inner().job.expect("job");
    let down = job.nodes.iter().find(|n| n.node == "agent-3").expect("agent-3 is selected");
    assert_eq!(down.state, v1::NodeActionState::NotStarted as i32, "{down:?}");
    assert!(down.message.contains("node is down"), "{down:?}");
    assert!(job.finished);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_replays_the_first_result_and_refuses_other_parameters() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    let mut client = mesh.client().await;

    let first = client.execute_action(run(all(), "key-1", &[("a", "1")])).await.expect("runs").into_inner();
    let audited = client.action_history(history(100, 0)).await.expect("history").into_inner().records.len();
    assert_eq!(audited, 2, "one record per node");

    let again = client.execute_action(run(all(), "key-1", &[("a", "1")])).await.expect("replays").into_inner();
    assert!(again.replayed && !first.replayed);
    assert_eq!(again.job, first.job, "the first result, job id included");
    let after = client.action_history(history(100, 0)).await.expect("history").into_inner().records.len();
    assert_eq!(after, audited, "nothing ran again");

    let other = client.execute_action(run(all(), "key-1", &[("a", "2")])).await.expect_err("other args");
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    assert!(other.message().contains("idempotency key"), "{}", other.message());
    let elsewhere = client.execute_action(run(nodes(&["agent-1"]), "key-1", &[("a", "1")])).await;
    assert_eq!(elsewhere.expect_err("other selector").code(), Code::FailedPrecondition);

    // A detached call returns at once with its job; replaying it returns the same job id.
    let detached = v1::ExecuteActionRequest { detach: true, ..run(all(), "key-2", &[]) };
    let started = client.execute_action(detached.clone()).await.expect("detached").into_inner();
    let job_id = started.job.expect("job").job_id;
    let replay = client.execute_action(detached).await.expect("replays").into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.job.expect("job").job_id, job_id);
    let mut watch = client.watch_action_job(v1::WatchActionJobRequest { job_id }).await.expect("watch").into_inner();
    let mut finished = false;
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_secs(20), watch.message()).await.expect("in time") {
            Ok(Some(state)) => finished = state.job.is_some_and(|j| j.finished),
            Ok(None) => break,
            Err(status) => panic!("watch failed: {status:?}"),
        }
    }
    assert!(finished, "the watch ends with the finished job");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_reads_only_its_own_history_and_needs_the_actions_capability() {
    trace_init();
    let mesh = Mesh::builder().agents(1).start().await;
    let mut operator = mesh.client().await;
    operator.execute_action(run(all(), "op", &[])).await.expect("operator runs");

    let alice = mesh.issue_token("alice", "t1", &["actions"]).await;
    let mut alice = mesh.client_with_token(&alice.access_token).await;
    alice.execute_action(run(all(), "alice-1", &[])).await.expect("alice runs");
    let mine = alice.action_history(history(0, 0)).await.expect("history").into_inner().records;
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!((mine[0].subject.as_str(), mine[0].tenant.as_str()), ("alice", "t1"));
    let theirs = v1::ActionHistoryRequest { subject: "operator:client".into(), ..history(0, 0) };
    assert_eq!(alice.action_history(theirs).await.expect_err("not hers").code(), Code::InvalidArgument);
    let everyone = operator.action_history(history(0, 0)).await.expect("history").into_inner().records;
    assert_eq!(everyone.len(), 2, "operators read every record");

    let bob = mesh.issue_token("bob", "t1", &["search"]).await;
    let mut bob = mesh.client_with_token(&bob.access_token).await;
    let refused = bob.execute_action(run(all(), "bob-1", &[])).await.expect_err("no actions capability");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    mesh.shutdown().await;
}

/// A write part of `node`'s group that every agent refuses at prepare (its document id is
/// longer than the index allows), so the transaction aborts in the vote.
fn tx_part(node: &str) -> v1::TransactionPart {
    let doc = v1::Document {
        id: "x".repeat(5000),
        collection: "notes".into(),
        body: "refused".into(),
        acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        ..Default::default()
    };
    let write = v1::DocumentWrite { upserts: vec![doc], deletes: Vec::new() };
    v1::TransactionPart {
        node: node.into(),
        shard: String::new(),
        operation: Some(v1::TransactionOperation { kind: Some(v1::transaction_operation::Kind::Write(write)) }),
    }
}

/// An action part of an action `node` does not offer.
fn undeclared_part(node: &str) -> v1::TransactionPart {
    let call = v1::ActionCall { action: ACTION.into(), arguments: Default::default() };
    v1::TransactionPart {
        node: node.into(),
        shard: String::new(),
        operation: Some(v1::TransactionOperation { kind: Some(v1::transaction_operation::Kind::Action(call)) }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_participants_cannot_prepare_aborts_and_survives_a_master_restart() {
    trace_init();
    let mut mesh = Mesh::builder().agents(2).start().await;
    let mut client = mesh.client().await;

    let empty = client.execute_transaction(v1::ExecuteTransactionRequest::default()).await.expect_err("no parts");
    assert_eq!(empty.code(), Code::InvalidArgument);
    let twice =
        v1::ExecuteTransactionRequest { parts: vec![tx_part("agent-1"), tx_part("agent-1")], ..Default::default() };
    assert_eq!(client.execute_transaction(twice).await.expect_err("twice").code(), Code::InvalidArgument);
    let ghost = v1::ExecuteTransactionRequest { parts: vec![tx_part("ghost")], ..Default::default() };
    assert_eq!(client.execute_transaction(ghost).await.expect_err("unknown").code(), Code::NotFound);
    let bad_id = client.get_transaction(v1::GetTransactionRequest { tx_id: "xyz".into() }).await;
    assert_eq!(bad_id.expect_err("not an id").code(), Code::InvalidArgument);
    let unknown = client.get_transaction(v1::GetTransactionRequest { tx_id: format!("{:032x}", 1) }).await;
    assert_eq!(unknown.expect_err("never existed").code(), Code::NotFound);
    // An action the node does not offer is refused by the master before anything is prepared.
    let undeclared = v1::ExecuteTransactionRequest {
        parts: vec![undeclared_part("agent-1"), undeclared_part("agent-2")],
        ..Default::default()
    };
    let refused = client.execute_transaction(undeclared).await.expect_err("not offered");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("does not offer action") && refused.message().contains("nothing was prepared"));

    // Neither agent can prepare its write (an id over the limit): both vote no, the abort is
    // logged and sent.
    let request = v1::ExecuteTransactionRequest {
        parts: vec![tx_part("agent-1"), tx_part("agent-2")],
        timeout_ms: 5000,
        ..Default::default()
    };
    let answer = client.execute_transaction(request).await.expect("decided").into_inner();
    let tx = answer.transaction.expect("a status");
    assert_eq!(tx.decision, v1::TransactionDecision::Abort as i32, "{tx:?}");
    assert!(
        [v1::TransactionPhase::Aborted as i32, v1::TransactionPhase::Aborting as i32].contains(&tx.phase),
        "{tx:?}"
    );
    assert_eq!(tx.participants.len(), 2);
    // The first no decides: a later vote may not be counted, but no one voted yes.
    assert!(tx.participants.iter().any(|p| p.vote == v1::ParticipantVote::No as i32), "{tx:?}");
    assert!(tx.participants.iter().all(|p| p.vote != v1::ParticipantVote::Yes as i32), "{tx:?}");
    assert!(tx.participants.iter().all(|p| !p.message.is_empty()), "each says why: {tx:?}");
    assert!(tx.message.contains("did not vote") || tx.message.contains("voted no"), "{}", tx.message);
    assert_ne!(tx.decided_unix_ms, 0);
    let read = client.get_transaction(v1::GetTransactionRequest { tx_id: tx.tx_id.clone() }).await.expect("get");
    assert_eq!(read.into_inner().transaction.expect("status").decision, v1::TransactionDecision::Abort as i32);
    let all = v1::ListTransactionsRequest { include_finished: true, limit: 0 };
    let listed = client.list_transactions(all).await.expect("list").into_inner().transactions;
    assert!(listed.iter().any(|t| t.tx_id == tx.tx_id), "{listed:?}");

    // Every participant is audited as part of the transaction.
    let records = client.action_history(history(0, 0)).await.expect("history").into_inner().records;
    let audited: Vec<&str> = records.iter().filter(|r| r.operation_id == tx.tx_id).map(|r| r.node.as_str()).collect();
    assert_eq!(audited.len(), 2, "{records:?}");
    assert!(records.iter().filter(|r| r.operation_id == tx.tx_id).all(|r| r.kind == v1::AuditKind::Transaction as i32
        && r.status == "aborted"
        && r.action == "documents.write"));

    // An idempotency key makes a retry return the first outcome without a second transaction.
    let keyed = v1::ExecuteTransactionRequest {
        parts: vec![tx_part("agent-1")],
        timeout_ms: 2000,
        idempotency_key: "tx-key".into(),
        ..Default::default()
    };
    let first = client.execute_transaction(keyed.clone()).await.expect("decided").into_inner();
    let again = client.execute_transaction(keyed.clone()).await.expect("replayed").into_inner();
    assert!(again.replayed && !first.replayed);
    assert_eq!(again.transaction.map(|t| t.tx_id), first.transaction.map(|t| t.tx_id));
    let other = v1::ExecuteTransactionRequest { timeout_ms: 3000, ..keyed };
    assert_eq!(client.execute_transaction(other).await.expect_err("other parameters").code(), Code::FailedPrecondition);

    // A restarted master reads its log: the logged abort is still the decision.
    mesh.restart_master().await;
    let mut client = mesh.client().await;
    let after = ragmesh_e2e::wait_for("transactions served again", Duration::from_secs(20), || {
        let mut client = client.clone();
        let tx_id = tx.tx_id.clone();
        async move { client.get_transaction(v1::GetTransactionRequest { tx_id }).await.ok() }
    })
    .await
    .0
    .into_inner()
    .transaction
    .expect("status");
    assert_eq!(after.decision, v1::TransactionDecision::Abort as i32, "{after:?}");
    let all = v1::ListTransactionsRequest { include_finished: true, limit: 0 };
    assert!(
        client
            .list_transactions(all)
            .await
            .expect("list")
            .into_inner()
            .transactions
            .iter()
            .any(|t| t.tx_id == tx.tx_id)
    );
    mesh.shutdown().await;
}
