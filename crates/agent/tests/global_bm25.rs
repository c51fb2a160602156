//! Global BM25 over the wire: three real agents (plaintext, loopback) under a stand-in master.
//! Two hold halves of a corpus, the third all of it. The halves' `NodeTermStatistics`, summed,
//! make their `NodeSearch` scores those of the whole; statistics count only what the caller may
//! read; a search whose statistics lack a query term is refused.

mod common;

use std::collections::BTreeMap;

use common::{Master, client, signed, start_agent};
use ragmesh_agent::statistics::{from_wire, to_wire};
use ragmesh_auth::Capability;
use ragmesh_proto::v1::{self, agent_service_client::AgentServiceClient};
use tonic::Code;
use tonic::transport::Channel;

const WORDS: [&str; 8] = ["mesh", "index", "replica", "shard", "token", "breaker", "search", "write"];

/// Document `i`: a few words chosen by `i`, readable by `tenant`.
fn doc(i: usize, tenant: &str) -> v1::Document {
    let body: Vec<&str> = (0..3 + i % 5).map(|k| WORDS[(i * 7 + k * 3) % WORDS.len()]).collect();
    v1::Document {
        id: format!("d{i}"),
        collection: "notes".into(),
        title: WORDS[i % WORDS.len()].into(),
        body: body.join(" "),
        acl: Some(v1::DocumentAcl { tenants: vec![tenant.into()], ..Default::default() }),
        ..Default::default()
    }
}

fn entry(shard: &str, docs: Vec<v1::Document>) -> v1::UpsertDocumentsRequest {
    v1::UpsertDocumentsRequest { documents: docs, position: Some(v1::LogPosition { shard: shard.into(), seq: 1 }) }
}

async fn statistics(client: &mut AgentServiceClient<Channel>, query: &str, context: &str) -> v1::TermStatistics {
    let request = signed(v1::NodeTermStatisticsRequest { query: query.into() }, context);
    client.node_term_statistics(request).await.expect("statistics").into_inner().statistics.expect("present")
}

async fn scores(
    client: &mut AgentServiceClient<Channel>,
    query: &str,
    statistics: Option<v1::TermStatistics>,
    context: &str,
) -> BTreeMap<String, f64> {
    let request = v1::NodeSearchRequest { query: query.into(), limit: 100, statistics, ..Default::default() };
    let hits = client.node_search(signed(request, context)).await.expect("search").into_inner().hits;
    hits.into_iter().map(|hit| (hit.doc_id, hit.score)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summed_statistics_make_two_halves_score_as_the_whole() {
    let master = Master::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["half-a", "half-b", "whole"];
    let mut agents = Vec::new();
    let mut clients = Vec::new();
    for name in names {
        let agent = start_agent(name, &master.addr, &dir.path().join(name)).await;
        clients.push(client(&agent).await);
        agents.push(agent);
    }
    let operator = master.operator();
    let docs: Vec<v1::Document> = (0..40).map(|i| doc(i, if i % 3 == 0 { "globex" } else { "acme" })).collect();
    let (a, b): (Vec<_>, Vec<_>) = docs.iter().cloned().enumerate().partition(|(i, _)| i % 4 == 0);
    let a: Vec<v1::Document> = a.into_iter().map(|(_, d)| d).collect();
    let b: Vec<v1::Document> = b.into_iter().map(|(_, d)| d).collect();
    for (i, batch) in [a, b, docs.clone()].into_iter().enumerate() {
        clients[i].upsert_documents(signed(entry(names[i], batch), &operator)).await.expect("ingest");
    }

    for query in ["mesh replica", "token", "breaker search write", "shard index"] {
        let mut merged = from_wire(&statistics(&mut clients[0], query, &operator).await);
        merged.merge(&from_wire(&statistics(&mut clients[1], query, &operator).await));
        let whole = from_wire(&statistics(&mut clients[2], query, &operator).await);
        assert_eq!(merged, whole, "{query}: the halves sum to the whole");

        let reference = scores(&mut clients[2], query, None, &operator).await;
        let mut federated = scores(&mut clients[0], query, Some(to_wire(&merged)), &operator).await;
        federated.extend(scores(&mut clients[1], query, Some(to_wire(&merged)), &operator).await);
        assert_eq!(federated.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>(), "{query}");
        for (id, score) in &reference {
            let got = federated[id];
            assert!(
                (got - score).abs() <= 1e-4 * score.abs().max(1.0),
                "{query}: {id} scored {got}, one index {score}"
            );
        }
        // Each half alone, with its own statistics, scores differently: the phase matters.
        let local = scores(&mut clients[0], query, None, &operator).await;
        assert!(local.iter().any(|(id, s)| (reference[id] - s).abs() > 1e-3), "{query}: {local:?} vs {reference:?}");
    }

    // A tenant's statistics count only the documents it may read.
    let acme = master.context("acme", &[Capability::Search]);
    let readable = docs.iter().filter(|d| d.acl.as_ref().is_some_and(|acl| acl.tenants == ["acme"])).count();
    assert_eq!(statistics(&mut clients[2], "mesh", &acme).await.total_docs, readable as u64);
    assert_eq!(statistics(&mut clients[2], "mesh", &operator).await.total_docs, docs.len() as u64);

    // Statistics that lack a term of the query are refused, never silently replaced.
    let partial = statistics(&mut clients[0], "mesh", &operator).await;
    let request = v1::NodeSearchRequest {
        query: "mesh token".into(),
        limit: 10,
        statistics: Some(partial),
        ..Default::default()
    };
    let refused = clients[0].node_search(signed(request, &operator)).await.expect_err("a term is missing");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    drop(agents);
}
