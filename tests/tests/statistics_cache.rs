//! The master's term-level statistics cache over real mTLS: once "alpha" and "beta" were
//! searched, "alpha beta" (and "beta alpha") cost no statistics call to any agent and score
//! exactly as a mesh without caches scores them; after a write to one group only that group is
//! asked again. Statistics calls are counted where they are served (each agent's
//! `grpc_server_started_total` of `NodeTermStatistics`), beside the master's lookup series.
//! The vaswani measurement (topics searched twice, the second time in reversed word order)
//! prints the calls saved; it is skipped when ../shared/data/vaswani is not present.

use std::time::Duration;

use ragmesh_e2e::{Mesh, docs_for, scrape, trace_init, wait_for};
use ragmesh_proto::v1;

fn search(query: &str) -> v1::SearchRequest {
    // bypass_cache: every search fans out, so only the statistics cache saves calls.
    v1::SearchRequest { query: query.into(), limit: 100, bypass_cache: true, ..Default::default() }
}

/// The value of the series named exactly `series` in a scrape (0 when absent).
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// `NodeTermStatistics` calls each agent has served so far.
async fn statistics_calls(mesh: &Mesh, agents: usize) -> Vec<u64> {
    let mut calls = Vec::with_capacity(agents);
    for i in 0..agents {
        let metrics = scrape(mesh.agent_metrics_addr(i)).await;
        let served: f64 = metrics
            .lines()
            .filter(|line| {
                line.starts_with("grpc_server_started_total{") && line.contains(r#"grpc_method="NodeTermStatistics""#)
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        calls.push(served as u64);
    }
    calls
}

/// The master's statistics cache lookups: (hits, misses).
async fn lookups(mesh: &Mesh) -> (f64, f64) {
    let metrics = scrape(mesh.master_metrics_addr()).await;
    let series =
        |result: &str| format!(r#"ragmesh_search_cache_lookups_total{{cache="statistics",result="{result}"}}"#);
    (value(&metrics, &series("hit")), value(&metrics, &series("miss")))
}

fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Waits until the master holds a summary of `name` at `generation` or later: it names the
/// node's analysis profile, which the master analyses queries with.
async fn wait_summary(mesh: &Mesh, name: &str, generation: u64) {
    wait_for(&format!("a term summary of {name} at generation {generation}"), Duration::from_secs(30), || async {
        let summaries = mesh.master().registry()?.term_summaries();
        let summary = summaries.get(name)?;
        (summary.summary.generation() >= generation && summary.summary.analyzers().len() == 1).then_some(())
    })
    .await;
}

fn scored(response: &v1::SearchResponse) -> Vec<(String, String, u64)> {
    response.hits.iter().map(|h| (h.node.clone(), h.doc_id.clone(), h.score.to_bits())).collect()
}

async fn loaded_mesh(cache: ragmesh_config::CacheConfig) -> Mesh {
    let mesh = Mesh::builder().agents(3).cache(cache).start().await;
    for i in 0..3 {
        let generation = mesh.ingest(i, docs_for(i, 3)).await.generation;
        wait_summary(&mesh, mesh.agent_name(i), generation).await;
    }
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_whose_terms_were_all_asked_before_costs_no_statistics_call() {
    trace_init();
    let mesh = loaded_mesh(ragmesh_config::CacheConfig::default()).await;
    let start = statistics_calls(&mesh, 3).await;

    let alpha = mesh.search(search("alpha")).await;
    assert_eq!(alpha.hits.len(), 3, "{:?}", alpha.hits);
    let after_alpha = statistics_calls(&mesh, 3).await;
    assert_eq!(delta(&after_alpha, &start), [1, 1, 1], "cold: every group asked once");
    mesh.search(search("beta")).await;
    let after_beta = statistics_calls(&mesh, 3).await;
    assert_eq!(delta(&after_beta, &after_alpha), [1, 1, 1], "beta is a new term everywhere");
    assert_eq!(lookups(&mesh).await, (0.0, 6.0));

    let both = mesh.search(search("alpha beta")).await;
    let reordered = mesh.search(search("Beta ALPHA")).await;
    assert_eq!(statistics_calls(&mesh, 3).await, after_beta, "no agent asked for alpha beta");
    assert_eq!(lookups(&mesh).await, (6.0, 6.0), "two searches, three groups each, all hits");
    assert_eq!(both.hits.len(), 6, "{:?}", both.hits);
    assert_eq!(scored(&reordered), scored(&both), "the same terms, the same statistics");

    // A mesh without caches gathers every statistic afresh: the same hits, the same scores.
    let cold = loaded_mesh(ragmesh_config::CacheConfig { result_bytes: 0, statistics_bytes: 0 }).await;
    let reference = cold.search(search("alpha beta")).await;
    assert_eq!(scored(&both), scored(&reference), "cached statistics score exactly like fresh ones");
    cold.shutdown().await;

    // A write to group 0: only it is asked again, and its new answer serves the next search.
    let written = v1::Document {
        id: "late-alpha".into(),
        collection: "docs".into(),
        title: "late".into(),
        body: "one more alpha beta document".into(),
        acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        ..Default::default()
    };
    mesh.ingest(0, vec![written]).await;
    let before_write = statistics_calls(&mesh, 3).await;
    let after = mesh.search(search("beta alpha")).await;
    let asked = statistics_calls(&mesh, 3).await;
    assert_eq!(delta(&asked, &before_write), [1, 0, 0], "only the written group is asked");
    assert!(after.hits.iter().any(|h| h.doc_id == "late-alpha"), "{:?}", after.hits);
    assert_eq!(after.hits.len(), 7);
    mesh.search(search("alpha")).await;
    assert_eq!(statistics_calls(&mesh, 3).await, asked, "group 0's new answer covers alpha");
    mesh.shutdown().await;
}

/// Measurement: the 93 vaswani topics over three agents, then again with each topic's words
/// reversed. Prints the statistics calls each pass made; asserts the reversed pass asked no
/// agent (every term was met in the first) and scored every topic's top 10 alike (within float
/// tolerance: another word order sums the same term scores in another order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaswani_topics_in_another_word_order_cost_no_statistics_call() {
    trace_init();
    let Some(dir) = ragmesh_test_util::vaswani_dir() else { return };
    let docs =
        ragmesh_index::ingest::parse_trec(&std::fs::read_to_string(dir.join("doc-text.trec")).expect("docs"), "npl")
            .expect("parse");
    let topics = ragmesh_eval::topics::read_topics_file(&dir.join("query-text.trec")).expect("topics");
    let mesh = Mesh::builder().agents(3).cache(ragmesh_config::CacheConfig::default()).start().await;
    let shards = ragmesh_e2e::round_robin(docs, 3);
    for (i, shard) in shards.into_iter().enumerate() {
        let mut generation = 0;
        for batch in shard.chunks(1000) {
            generation = mesh.ingest(i, batch.to_vec()).await.generation;
        }
        wait_summary(&mesh, mesh.agent_name(i), generation).await;
    }
    let texts: Vec<String> = topics.iter().map(|topic| topic.title.to_lowercase()).collect();
    let mut passes = Vec::new();
    for reversed in [false, true] {
        let before = statistics_calls(&mesh, 3).await;
        let mut rankings = Vec::with_capacity(texts.len());
        for text in &texts {
            let query =
                if reversed { text.split_whitespace().rev().collect::<Vec<_>>().join(" ") } else { text.clone() };
            let response = mesh.search(v1::SearchRequest { limit: 10, ..search(&query) }).await;
            rankings.push(scored(&response));
        }
        let calls: u64 = delta(&statistics_calls(&mesh, 3).await, &before).iter().sum();
        println!("vaswani pass reversed={reversed}: {} topics, {calls} statistics calls", texts.len());
        passes.push((calls, rankings));
    }
    assert!(passes[0].0 > 0 && passes[0].0 <= 3 * texts.len() as u64, "first pass: {}", passes[0].0);
    assert_eq!(passes[1].0, 0, "every term of the reversed topics was cached");
    for (first, second) in passes[0].1.iter().zip(&passes[1].1) {
        assert_eq!(first.len(), second.len());
        for (a, b) in first.iter().zip(second) {
            let (a, b) = (f64::from_bits(a.2), f64::from_bits(b.2));
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{first:?} vs {second:?}");
        }
    }
    mesh.shutdown().await;
}
