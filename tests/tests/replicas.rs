//! Shard groups of replicas over real mTLS: every group answers once, a write reaches every
//! replica, and a replica that dies, freezes or comes back changes nothing for searches.

use std::collections::BTreeSet;
use std::time::Duration;

use ragmesh_e2e::{Mesh, docs_for, shard_name, trace_init};
use ragmesh_proto::v1;

const OK: i32 = v1::OutcomeStatus::Ok as i32;

fn request(query: &str) -> v1::SearchRequest {
    v1::SearchRequest { query: query.into(), limit: 100, timeout_ms: 5000, ..Default::default() }
}

/// `collection/id` of every hit, sorted.
fn documents(response: &v1::SearchResponse) -> BTreeSet<String> {
    response.hits.iter().map(|h| format!("{}/{}", h.collection, h.doc_id)).collect()
}

/// Asserts every group answered, and returns who answered for each.
fn assert_every_group_answered(response: &v1::SearchResponse, groups: usize) -> Vec<String> {
    assert_eq!(response.groups.len(), groups, "one entry per group: {:?}", response.groups);
    for group in &response.groups {
        assert_eq!(group.status, OK, "group {} did not answer: {group:?}", group.shard);
        assert!(!group.answered_by.is_empty(), "{group:?}");
    }
    response.groups.iter().map(|g| g.answered_by.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_is_asked_once_and_a_write_reaches_every_replica() {
    trace_init();
    let mesh = Mesh::builder().agents(4).replicas(2).start().await;
    let written = mesh.ingest_shard(&shard_name(0), docs_for(0, 5)).await;
    assert_eq!((written.shard.as_str(), written.seq), ("shard-1", 1));
    let applied: BTreeSet<&str> = written.replicas.iter().filter(|r| r.status == OK).map(|r| r.node.as_str()).collect();
    assert!(!applied.is_empty(), "the quorum applied it: {:?}", written.replicas);
    mesh.ingest_shard(&shard_name(1), docs_for(1, 3)).await;
    for i in 0..4 {
        mesh.wait_in_sync(mesh.agent_name(i), Duration::from_secs(10)).await;
    }

    let response = mesh.search(request("mesh")).await;
    let answered = assert_every_group_answered(&response, 2);
    assert_eq!(response.hits.len(), 8, "5 documents in shard-1 and 3 in shard-2, each once");
    assert!(answered[0].starts_with("agent-1") || answered[0] == "agent-2", "{answered:?}");
    let asked = response.nodes.iter().filter(|n| n.status == OK).count();
    assert_eq!(asked, 2, "one replica per group answered: {:?}", response.nodes);
    let other = response.nodes.iter().filter(|n| n.skip_reason == v1::SkipReason::OtherReplica as i32).count();
    assert_eq!(other, 2, "the other replica of each group is reported as such: {:?}", response.nodes);

    // Both replicas of shard-1 hold the same documents at the same log position.
    let (one, two) = (mesh.node_info("agent-1").await, mesh.node_info("agent-2").await);
    assert_eq!((one.applied_seq, one.generation), (two.applied_seq, two.generation));
    assert_eq!(one.collections, two.collections);
    for name in ["agent-1", "agent-2"] {
        let only = v1::SearchRequest { nodes: vec![name.into()], ..request("mesh") };
        assert_eq!(mesh.search(only).await.hits.len(), 5, "{name} holds shard-1's documents");
    }

    let listed = mesh.client().await.list_nodes(v1::ListNodesRequest {}).await.expect("list").into_inner();
    let groups: Vec<(&str, usize, usize)> =
        listed.groups.iter().map(|g| (g.shard.as_str(), g.replicas.len(), g.in_sync.len())).collect();
    assert_eq!(groups, [("shard-1", 2, 2), ("shard-2", 2, 2)]);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_changes_nothing_for_the_next_search() {
    trace_init();
    let mut mesh = Mesh::builder().agents(4).replicas(2).start().await;
    mesh.ingest_shard(&shard_name(0), docs_for(0, 4)).await;
    mesh.ingest_shard(&shard_name(1), docs_for(1, 4)).await;
    for i in 0..4 {
        mesh.wait_in_sync(mesh.agent_name(i), Duration::from_secs(10)).await;
    }
    let before = mesh.search(request("mesh")).await;
    assert_every_group_answered(&before, 2);

    // Kill one replica of each group; search at once, before the master noticed anything.
    mesh.kill_agent(0);
    mesh.kill_agent(3);
    for _ in 0..10 {
        let after = mesh.search(request("mesh")).await;
        let answered = assert_every_group_answered(&after, 2);
        assert_eq!(answered, ["agent-2", "agent-3"], "the live replicas answered");
        assert_eq!(documents(&after), documents(&before), "the same documents");
    }
    mesh.shutdown().await;
}
