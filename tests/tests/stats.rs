//! `Stats` over two shard groups of two replicas each: documents per node and per group, mesh
//! totals that count each group once, every node's index size from its heartbeats, and the
//! operators-only rule.

use std::time::Duration;

use ragmesh_e2e::{Mesh, docs_for, trace_init, wait_for};
use ragmesh_proto::v1;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_each_group_once_and_show_every_nodes_index_size() {
    trace_init();
    let mesh = Mesh::builder().agents(4).replicas(2).start().await;
    let (first, second) = (mesh.shard_of(0), mesh.shard_of(2));
    mesh.ingest_shard(&first, docs_for(0, 5)).await;
    mesh.ingest_shard(&second, docs_for(1, 3)).await;
    for i in 0..4 {
        mesh.wait_in_sync(mesh.agent_name(i), Duration::from_secs(15)).await;
    }
    let mut client = mesh.client().await;
    // Index sizes arrive with heartbeats; every replica has written its documents by now.
    let stats = wait_for("every node's counts and index size", Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            let stats = client.stats(v1::StatsRequest {}).await.expect("stats").into_inner();
            (stats.nodes.len() == 4 && stats.nodes.iter().all(|n| n.index_bytes > 0 && n.docs > 0)).then_some(stats)
        }
    })
    .await
    .0;
    let docs_of = |name: &str| stats.nodes.iter().find(|n| n.name == name).expect("listed").docs;
    assert_eq!((docs_of(mesh.agent_name(0)), docs_of(mesh.agent_name(1))), (5, 5));
    assert_eq!((docs_of(mesh.agent_name(2)), docs_of(mesh.agent_name(3))), (3, 3));
    let groups: Vec<(&str, u64, usize)> =
        stats.groups.iter().map(|g| (g.shard.as_str(), g.docs, g.replicas.len())).collect();
    assert_eq!(groups, [(first.as_str(), 5, 2), (second.as_str(), 3, 2)]);
    assert_eq!(stats.total_docs, 8, "replicas are not counted twice: {stats:?}");
    assert_eq!(stats.total_index_bytes, stats.nodes.iter().map(|n| n.index_bytes).sum::<u64>());
    let info = mesh.node_info(mesh.agent_name(0)).await;
    assert!(info.index_bytes > 0, "NodeInfo carries the size too: {info:?}");

    // Counts across tenants are for operators only.
    let token = mesh.issue_token("reader", "acme", &["search"]).await.access_token;
    let refused = mesh.client_with_token(&token).await.stats(v1::StatsRequest {}).await.expect_err("not an operator");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let _ = client.list_nodes(v1::ListNodesRequest {}).await.expect("the operator still can");
}
