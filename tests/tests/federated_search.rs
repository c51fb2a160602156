//! Federated search over three agents: hits from every node, per-node ok, deduplication of a
//! replicated document with provenance, routing by collection and clear request errors.

use std::time::Duration;

use ragmesh_e2e::{ClosedPort, Expect, Mesh, assert_outcomes, docs_for, outcome_of, trace_init};
use ragmesh_proto::v1::{self, OutcomeStatus, SkipReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_returns_hits_from_every_agent_with_per_node_status() {
    trace_init();
    let mesh = Mesh::builder().agents(3).start().await;
    let mut generations = Vec::new();
    for i in 0..3 {
        let written = mesh.ingest(i, docs_for(i, 5)).await;
        assert_eq!(written.upserted, 5);
        assert!(written.generation >= 1);
        generations.push(written.generation);
    }

    let response = mesh.search(v1::SearchRequest { query: "mesh".into(), limit: 30, ..Default::default() }).await;
    assert_eq!(response.merge_strategy, "rrf");
    assert_eq!(response.hits.len(), 15, "every document of every agent matches");
    for (i, generation) in generations.iter().enumerate() {
        let name = mesh.agent_name(i);
        let outcome = outcome_of(&response, name);
        assert_eq!(outcome.status(), OutcomeStatus::Ok, "{outcome:?}");
        assert_eq!(outcome.hit_count, 5);
        assert_eq!(outcome.generation, *generation, "{name} searched the index it was written to");
        assert_eq!(response.hits.iter().filter(|h| h.node == name).count(), 5);
    }
    // RRF interleaves the nodes: the top three hits come from three different nodes.
    let mut top: Vec<&str> = response.hits[..3].iter().map(|h| h.node.as_str()).collect();
    top.sort_unstable();
    assert_eq!(top, ["agent-1", "agent-2", "agent-3"]);
    assert!(response.hits.windows(2).all(|w| w[0].score >= w[1].score), "hits sorted by merged score");
    assert!(response.hits.iter().all(|h| h.node_rank >= 1 && h.snippet.contains("<b>mesh</b>")));

    // A word only agent-2 has: hits only from agent-2, but all three searched and report ok.
    let response = mesh.search(v1::SearchRequest { query: "beta".into(), limit: 10, ..Default::default() }).await;
    assert_outcomes(
        &response,
        &[
            ("agent-1", Expect::Ok { generation: generations[0], hits: 0 }),
            ("agent-2", Expect::Ok { generation: generations[1], hits: 5 }),
            ("agent-3", Expect::Ok { generation: generations[2], hits: 0 }),
        ],
    );
    assert_eq!(response.hits.len(), 5);
    assert!(response.hits.iter().all(|h| h.node == "agent-2"));
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_document_is_returned_once_with_provenance() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    let shared = v1::Document {
        id: "shared-1".into(),
        collection: "docs".into(),
        title: "replicated".into(),
        body: "a replicated mesh document".into(),
        ..Default::default()
    };
    let first = mesh.ingest(0, vec![shared.clone()]).await.generation;
    let second = mesh.ingest(1, vec![shared]).await.generation;
    let response = mesh.search(v1::SearchRequest { query: "replicated".into(), ..Default::default() }).await;
    // Both nodes found it: one merged hit is deduplication, not a node that failed.
    assert_outcomes(
        &response,
        &[
            ("agent-1", Expect::Ok { generation: first, hits: 1 }),
            ("agent-2", Expect::Ok { generation: second, hits: 1 }),
        ],
    );
    assert_eq!(response.hits.len(), 1, "{:?}", response.hits);
    let hit = &response.hits[0];
    let mut holders = vec![hit.node.clone()];
    holders.extend(hit.also_on.clone());
    holders.sort();
    assert_eq!(holders, ["agent-1", "agent-2"]);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_route_the_search_and_unrouted_nodes_are_reported_skipped() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    let docs = mesh.ingest(0, docs_for(0, 2)).await.generation;
    let mut tickets = docs_for(1, 2);
    for doc in &mut tickets {
        doc.collection = "tickets".into();
    }
    let tickets = mesh.ingest(1, tickets).await.generation;
    // The collection counts reach the master with the next heartbeat.
    ragmesh_e2e::wait_for("agent-2 reports its tickets collection", Duration::from_secs(5), || async {
        let node = mesh.master().registry()?.get("agent-2")?;
        node.record.collections.contains_key("tickets").then_some(())
    })
    .await;

    let response = mesh
        .search(v1::SearchRequest { query: "mesh".into(), collections: vec!["tickets".into()], ..Default::default() })
        .await;
    assert_outcomes(
        &response,
        &[
            ("agent-1", Expect::Skipped(SkipReason::NotRouted)),
            ("agent-2", Expect::Ok { generation: tickets, hits: 2 }),
        ],
    );
    assert_eq!(response.hits.len(), 2);
    assert!(response.hits.iter().all(|h| h.collection == "tickets" && h.node == "agent-2"));

    // Node selection: only agent-1 is considered.
    let response = mesh
        .search(v1::SearchRequest { query: "mesh".into(), nodes: vec!["agent-1".into()], ..Default::default() })
        .await;
    assert_outcomes(&response, &[("agent-1", Expect::Ok { generation: docs, hits: 2 })]);
    assert_eq!(response.hits.len(), 2);
    assert!(response.hits.iter().all(|h| h.node == "agent-1"));
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_that_say_what_to_do() {
    trace_init();
    let mesh = Mesh::builder().agents(1).start().await;
    let mut client = mesh.client().await;

    let empty = client.search(v1::SearchRequest { query: "  ".into(), ..Default::default() }).await.expect_err("empty");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(empty.message().contains("query is empty"), "{}", empty.message());

    let unknown = client
        .search(v1::SearchRequest { query: "x".into(), nodes: vec!["nope".into()], ..Default::default() })
        .await
        .expect_err("unknown node");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(unknown.message().contains("nope") && unknown.message().contains("agent-1"), "{}", unknown.message());

    let limit = client
        .search(v1::SearchRequest { query: "x".into(), limit: 5000, ..Default::default() })
        .await
        .expect_err("limit");
    assert_eq!(limit.code(), tonic::Code::InvalidArgument);

    let bad_doc = client
        .ingest_documents(v1::IngestDocumentsRequest {
            shard: String::new(),
            node: "agent-1".into(),
            documents: vec![v1::Document { id: "a".into(), collection: "bad name".into(), ..Default::default() }],
        })
        .await
        .expect_err("invalid collection");
    assert_eq!(bad_doc.code(), tonic::Code::InvalidArgument);
    assert!(bad_doc.message().contains("agent-1") && bad_doc.message().contains("collection"), "{}", bad_doc.message());

    let node = client.get_node(v1::GetNodeRequest { name: "agent-1".into() }).await.expect("get node").into_inner();
    let node = node.node.expect("node");
    assert_eq!(node.state(), v1::NodeState::Up);
    assert_eq!(node.protocol_major, ragmesh_proto::PROTOCOL_MAJOR);
    assert_eq!(node.labels.get("test").map(String::as_str), Some("e2e"));
    assert!(node.last_heartbeat.is_some());
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_be_reached_is_reported_unavailable_with_the_reason() {
    trace_init();
    let mesh = Mesh::builder().agents(1).start().await;
    let generation = mesh.ingest(0, docs_for(0, 2)).await.generation;
    // An agent that advertises an address where nothing listens: registered and up (its health
    // stream works), but the master cannot reach its data plane. The port stays bound (never
    // listening) until the end of the test, so nothing else can start answering there.
    let unreachable = ClosedPort::bind();
    let dead_address = unreachable.addr().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = mesh.agent_config("agent-9", dir.path().to_owned());
    config.advertise = Some(dead_address.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agent = ragmesh_agent::start(config, listener).await.expect("agent starts");
    mesh.wait_state("agent-9", ragmesh_master::node::NodeState::Up, Duration::from_secs(10)).await;

    let response = mesh.search(v1::SearchRequest { query: "mesh".into(), ..Default::default() }).await;
    let outcome = outcome_of(&response, "agent-9");
    assert_eq!(outcome.status(), OutcomeStatus::Unavailable, "{outcome:?}");
    assert!(outcome.message.contains(&dead_address), "{}", outcome.message);
    println!("unreachable node: {}", outcome.message);
    assert_outcomes(&response, &[("agent-1", Expect::Ok { generation, hits: 2 }), ("agent-9", Expect::Unavailable)]);
    assert_eq!(response.hits.len(), 2);
    agent.shutdown().await.expect("agent stops");
    drop(unreachable);
    mesh.shutdown().await;
}
