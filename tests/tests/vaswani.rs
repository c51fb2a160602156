//! The vaswani (NPL) test collection split round-robin across three agents and searched through
//! the master with all 93 queries, beside one local index holding everything: the federated
//! answer must stay close in quality (P@10) to the single index. Skipped, and says so, when
//! ../shared/data/vaswani is not present (a user's clone); CI always has it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use ragmesh_e2e::{Mesh, trace_init};
use ragmesh_index::{DocumentIndex, SearchQuery, Viewer, ingest};
use ragmesh_proto::v1::{self, OutcomeStatus};

fn collection_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/vaswani");
    if dir.join("doc-text.trec").is_file() {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must have ../shared/data/vaswani");
    println!("skipped: ../shared/data/vaswani not present");
    None
}

/// Topics as (id, text) from `<top><num>n</num><title> text </title></top>`.
fn topics(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for block in text.split("<top>").skip(1) {
        let num = block.split("<num>").nth(1).and_then(|s| s.split("</num>").next()).unwrap_or_default().trim();
        let title = block.split("<title>").nth(1).and_then(|s| s.split("</title>").next()).unwrap_or_default();
        out.push((num.to_owned(), title.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()));
    }
    out
}

/// Relevant document ids per query from `query 0 docno relevance`.
fn qrels(text: &str) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [query, _, doc, rel] = fields[..]
            && rel != "0"
        {
            out.entry(query.to_owned()).or_default().insert(doc.to_owned());
        }
    }
    out
}

fn precision_at_10(ranked: &[String], relevant: &HashSet<String>) -> f64 {
    ranked.iter().take(10).filter(|d| relevant.contains(*d)).count() as f64 / 10.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_search_over_three_agents_stays_close_to_one_index() {
    trace_init();
    let Some(dir) = collection_dir() else { return };
    let docs =
        ingest::parse_trec(&std::fs::read_to_string(dir.join("doc-text.trec")).expect("docs"), "npl").expect("parse");
    let topics = topics(&std::fs::read_to_string(dir.join("query-text.trec")).expect("topics"));
    let qrels = qrels(&std::fs::read_to_string(dir.join("qrels")).expect("qrels"));
    assert_eq!(docs.len(), 11_429);
    assert_eq!(topics.len(), 93);

    // Baseline: everything in one local index.
    let single_dir = tempfile::tempdir().expect("tempdir");
    let single = DocumentIndex::open(single_dir.path()).expect("open");
    for batch in docs.chunks(5000) {
        single.upsert(batch.to_vec()).expect("index a batch");
    }

    // The mesh: round-robin split, ingested through the master in batches.
    let mesh = Mesh::builder().agents(3).start().await;
    let mut shards: Vec<Vec<v1::Document>> = vec![Vec::new(); 3];
    for (i, doc) in docs.into_iter().enumerate() {
        shards[i % 3].push(v1::Document {
            id: doc.id,
            collection: doc.collection,
            title: doc.title,
            body: doc.body,
            metadata: doc.metadata.into_iter().collect(),
            acl: None, // operators only, like the single index's documents
        });
    }
    for (i, shard) in shards.into_iter().enumerate() {
        for batch in shard.chunks(1000) {
            mesh.ingest(i, batch.to_vec()).await;
        }
    }

    let (mut p_single, mut p_mesh, mut judged) = (0.0, 0.0, 0);
    for (id, text) in &topics {
        let Some(relevant) = qrels.get(id) else { continue };
        judged += 1;
        let local = single
            .search(&SearchQuery { query: text.clone(), limit: 10, viewer: Viewer::Unrestricted, ..Default::default() })
            .expect("search");
        let local: Vec<String> = local.hits.into_iter().map(|h| h.id).collect();
        let federated = mesh
            .search(v1::SearchRequest { query: text.clone(), limit: 10, timeout_ms: 10_000, ..Default::default() })
            .await;
        assert!(federated.nodes.iter().all(|n| n.status() == OutcomeStatus::Ok), "{:?}", federated.nodes);
        let federated: Vec<String> = federated.hits.into_iter().map(|h| h.doc_id).collect();
        p_single += precision_at_10(&local, relevant);
        p_mesh += precision_at_10(&federated, relevant);
    }
    let (p_single, p_mesh) = (p_single / f64::from(judged), p_mesh / f64::from(judged));
    println!(
        "vaswani P@10 over {judged} queries: single index {p_single:.3}, 3-agent mesh (RRF) {p_mesh:.3}, ratio {:.3}",
        p_mesh / p_single
    );
    assert!(p_single > 0.2, "the single index itself must work: {p_single}");
    assert!(p_mesh >= 0.8 * p_single, "federated P@10 {p_mesh:.3} fell below 80% of the single index's {p_single:.3}");
    mesh.shutdown().await;
}
