//! Remote actions from the client through the master to real agents and back, over real mTLS:
//! the master lists what every agent offers (in the caller's signed name: an agent answers only
//! requests the master signed), runs a built-in on all nodes and drains one so searches skip
//! it, and commits a document write across two shard groups atomically: both groups show the
//! documents once committed, and a transaction with one part the agent refuses leaves no trace.

use ragmesh_e2e::{Mesh, trace_init};
use ragmesh_proto::v1;

fn doc(id: &str, body: &str) -> v1::Document {
    v1::Document {
        id: id.into(),
        collection: "notes".into(),
        title: id.into(),
        body: body.into(),
        acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        ..Default::default()
    }
}

fn write_part(shard: &str, docs: Vec<v1::Document>) -> v1::TransactionPart {
    v1::TransactionPart {
        shard: shard.into(),
        operation: Some(v1::TransactionOperation {
            kind: Some(v1::transaction_operation::Kind::Write(v1::DocumentWrite {
                upserts: docs,
                deletes: Vec::new(),
            })),
        }),
        ..Default::default()
    }
}

fn run_on(action: &str, selector: v1::NodeSelector) -> v1::ExecuteActionRequest {
    v1::ExecuteActionRequest {
        call: Some(v1::ActionCall { action: action.into(), arguments: Default::default() }),
        selector: Some(selector),
        ..Default::default()
    }
}

async fn hits(mesh: &Mesh, query: &str) -> (Vec<String>, v1::SearchResponse) {
    let response = mesh.search(v1::SearchRequest { query: query.into(), limit: 20, ..Default::default() }).await;
    (response.hits.iter().map(|h| h.doc_id.clone()).collect(), response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_lists_and_runs_agents_actions_and_drains_a_node() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    let mut client = mesh.client().await;
    let listed = client
        .list_node_actions(v1::ListNodeActionsRequest::default())
        .await
        .expect("operators may list actions")
        .into_inner();
    assert_eq!(listed.nodes.len(), 2);
    for node in &listed.nodes {
        assert_eq!(node.status(), v1::OutcomeStatus::Ok, "{node:?}");
        let names: Vec<&str> = node.actions.iter().map(|a| a.name.as_str()).collect();
        for builtin in ["node.drain", "node.undrain", "node.labels", "index.compact"] {
            assert!(names.contains(&builtin), "{} offers {builtin}: {names:?}", node.node);
        }
    }

    let all = v1::NodeSelector { all: true, ..Default::default() };
    let job = client.execute_action(run_on("index.compact", all)).await.expect("runs").into_inner().job.expect("job");
    assert!(job.finished, "{job:?}");
    assert_eq!(job.nodes.len(), 2);
    for node in &job.nodes {
        assert_eq!(node.status(), v1::OutcomeStatus::Ok, "{node:?}");
        let result = node.result.as_ref().expect("the node answered");
        assert_eq!(result.status(), v1::ActionStatus::Ok, "{node:?}");
    }

    mesh.ingest(1, vec![doc("d1", "wombat burrow")]).await;
    let drained = mesh.agent_name(1).to_owned();
    let one = v1::NodeSelector { nodes: vec![drained.clone()], ..Default::default() };
    let job = client.execute_action(run_on("node.drain", one.clone())).await.expect("runs").into_inner();
    assert_eq!(job.job.expect("job").nodes[0].result.as_ref().expect("answered").status(), v1::ActionStatus::Ok);
    let (found, response) = hits(&mesh, "wombat").await;
    assert!(found.is_empty(), "a drained node is not searched: {response:?}");
    let outcome = response.nodes.iter().find(|n| n.node == drained).expect("the drained node is reported");
    assert_eq!(outcome.status(), v1::OutcomeStatus::Unavailable, "{outcome:?}");
    client.execute_action(run_on("node.undrain", one)).await.expect("runs");
    assert_eq!(hits(&mesh, "wombat").await.0, vec!["d1".to_owned()], "searched again after undrain");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_write_across_two_groups_commits_everywhere_or_nowhere() {
    trace_init();
    let mesh = Mesh::builder().agents(3).start().await;
    let mut client = mesh.client().await;
    let (a, b, c) = (mesh.agent_name(0).to_owned(), mesh.agent_name(1).to_owned(), mesh.agent_name(2).to_owned());

    let committed = client
        .execute_transaction(v1::ExecuteTransactionRequest {
            parts: vec![
                write_part(&a, vec![doc("t-a", "zebrafish alpha")]),
                write_part(&b, vec![doc("t-b", "zebrafish beta")]),
            ],
            ..Default::default()
        })
        .await
        .expect("the transaction runs")
        .into_inner()
        .transaction
        .expect("state");
    assert_eq!(committed.decision(), v1::TransactionDecision::Commit, "{committed:?}");
    assert_eq!(committed.phase(), v1::TransactionPhase::Committed, "{committed:?}");
    assert!(committed.participants.iter().all(|p| p.vote() == v1::ParticipantVote::Yes && p.acknowledged));
    let (mut found, _) = hits(&mesh, "zebrafish").await;
    found.sort();
    assert_eq!(found, vec!["t-a".to_owned(), "t-b".to_owned()], "both groups show the committed write");

    // One part the agent refuses (an id over the 512-byte limit): nothing anywhere.
    let aborted = client
        .execute_transaction(v1::ExecuteTransactionRequest {
            parts: vec![
                write_part(&a, vec![doc("t-ok", "quokka fine")]),
                write_part(&c, vec![doc(&"x".repeat(600), "quokka bad")]),
            ],
            ..Default::default()
        })
        .await
        .expect("the transaction runs")
        .into_inner()
        .transaction
        .expect("state");
    assert_eq!(aborted.decision(), v1::TransactionDecision::Abort, "{aborted:?}");
    let refused = aborted.participants.iter().find(|p| p.node == c).expect("the refusing participant");
    assert_eq!(refused.vote(), v1::ParticipantVote::No, "{aborted:?}");
    assert!(refused.message.contains("512"), "the refusal says why: {refused:?}");
    assert!(hits(&mesh, "quokka").await.0.is_empty(), "an aborted write is nowhere");
    mesh.shutdown().await;
}
