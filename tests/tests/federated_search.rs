//! Federated search over three agents: hits from every node, per-node ok, deduplication of a
//! replicated document with provenance, routing by collection and clear request errors.

use std::time::Duration;

use ragmesh_e2e::{
    ClosedPort, Expect, Mesh, assert_no_hits_or_no_match, assert_outcomes, docs_for, outcome_of, trace_init,
};
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

    let rrf = v1::SearchRequest { query: "mesh".into(), limit: 30, merge: "rrf".into(), ..Default::default() };
    let response = mesh.search(rrf).await;
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

    // A word only agent-2 has: hits only from agent-2.
    let response = mesh.search(v1::SearchRequest { query: "beta".into(), limit: 10, ..Default::default() }).await;
    assert_eq!(response.nodes.len(), 3, "{:?}", response.nodes);
    let beta = outcome_of(&response, "agent-2");
    assert_eq!((beta.status(), beta.hit_count, beta.generation), (OutcomeStatus::Ok, 5, generations[1]));
    // The others hold no "beta".
    for (i, name) in [(0, "agent-1"), (2, "agent-3")] {
        assert_no_hits_or_no_match(&response, name, generations[i]);
    }
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

/// Document `i` of a small corpus whose words repeat unevenly, so statistics differ per node.
fn skewed_doc(i: usize) -> v1::Document {
    const WORDS: [&str; 6] = ["mesh", "replica", "shard", "breaker", "token", "index"];
    let body: Vec<&str> = (0..2 + i % 6).map(|k| WORDS[(i * 5 + k * k) % WORDS.len()]).collect();
    v1::Document {
        id: format!("s{i}"),
        collection: "notes".into(),
        title: WORDS[(i / 3) % WORDS.len()].into(),
        body: body.join(" "),
        acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        ..Default::default()
    }
}

/// Hits grouped by equal score (within float tolerance), best first: (score, document ids).
fn levels(response: &v1::SearchResponse) -> Vec<(f64, std::collections::BTreeSet<String>)> {
    let mut out: Vec<(f64, std::collections::BTreeSet<String>)> = Vec::new();
    for hit in &response.hits {
        match out.last_mut() {
            Some((score, ids)) if (*score - hit.score).abs() <= 1e-4 * score.abs().max(1.0) => {
                ids.insert(hit.doc_id.clone());
            }
            _ => out.push((hit.score, [hit.doc_id.clone()].into())),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_bm25_over_three_shards_ranks_and_scores_as_one_index() {
    trace_init();
    let mesh = Mesh::builder().agents(4).start().await;
    let docs: Vec<v1::Document> = (0..60).map(skewed_doc).collect();
    // Skewed split over agents 1-3 (the first takes most "mesh" documents); agent-4 holds all.
    for i in 0..3 {
        let part: Vec<v1::Document> =
            docs.iter().enumerate().filter(|(n, _)| (n * n + n / 7) % 3 == i).map(|(_, d)| d.clone()).collect();
        mesh.ingest(i, part).await;
    }
    mesh.ingest(3, docs.clone()).await;
    let shards: Vec<String> = (0..3).map(|i| mesh.agent_name(i).to_owned()).collect();
    let whole = vec![mesh.agent_name(3).to_owned()];

    let mut rrf_differs = 0;
    for query in ["mesh", "replica token", "breaker shard index", "mesh replica shard"] {
        let ask = |nodes: &[String], merge: &str| v1::SearchRequest {
            query: query.into(),
            limit: 20,
            nodes: nodes.to_vec(),
            merge: merge.into(),
            ..Default::default()
        };
        let one = mesh.search(ask(&whole, "")).await;
        let federated = mesh.search(ask(&shards, "")).await;
        assert_eq!(federated.merge_strategy, "global_bm25");
        for name in &shards {
            assert_eq!(outcome_of(&federated, name).status(), OutcomeStatus::Ok, "{query}: {name}");
        }
        // The same ranking, ties aside: the same scores in the same order, and at every score
        // level but the last (which the limit may cut) the same documents.
        let (got, want) = (levels(&federated), levels(&one));
        assert_eq!(got.len(), want.len(), "{query}: {got:?} vs {want:?}");
        for (i, ((got_score, got_ids), (want_score, want_ids))) in got.iter().zip(&want).enumerate() {
            assert!((got_score - want_score).abs() <= 1e-4 * want_score.abs().max(1.0), "{query}: {got:?} vs {want:?}");
            if i + 1 < want.len() {
                assert_eq!(got_ids, want_ids, "{query}: level {i}");
            } else {
                assert_eq!(got_ids.len(), want_ids.len(), "{query}: last level");
            }
        }
        // Rank fusion of the same shards does not reproduce it (the reason global BM25 exists).
        let fused = mesh.search(ask(&shards, "rrf")).await;
        assert_eq!(fused.merge_strategy, "rrf");
        let top = |r: &v1::SearchResponse| r.hits.iter().take(10).map(|h| h.doc_id.clone()).collect::<Vec<_>>();
        let same_scores =
            |r: &v1::SearchResponse| r.hits.iter().take(10).map(|h| format!("{:.4}", h.score)).collect::<Vec<_>>();
        if top(&fused) != top(&one) && same_scores(&federated) == same_scores(&one) {
            rrf_differs += 1;
        }
    }

    assert!(rrf_differs >= 1, "on a skewed split rank fusion departs from one index's ranking");

    let refused = mesh
        .client()
        .await
        .search(v1::SearchRequest { query: "mesh".into(), merge: "bm25-ish".into(), ..Default::default() })
        .await
        .expect_err("unknown merge");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("global_bm25"), "{}", refused.message());
}
