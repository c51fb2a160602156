//! Measures analysis profiles (stemming, stop words) and BM25 `k1`/`b` on the vaswani (NPL) test
//! collection, one index, all 93 topics, against the default (`en_stem`, k1 1.2, b 0.75), and
//! prints the table the defaults were chosen from (nDCG@10, MAP@100, P@10, paired randomization
//! test p-values against the default) plus the cost of the configurable-BM25 scorer.
//!
//! Ignored by default (it builds six indexes of 11,429 documents). Run it with
//! `cargo test -p ragmesh-index --release --test analysis_vaswani -- --ignored --nocapture`.
//! It asserts only what must hold whatever the figures: every configuration answers every
//! topic and the default is a working baseline.

use std::time::Instant;

use ragmesh_eval::{Averaging, Comparison, Evaluation, Metric, Qrels, RandomizationTest, Run, compare};
use ragmesh_index::analysis::{Profile, Stemming, StopWords};
use ragmesh_index::{AnalysisSettings, Bm25Params, Document, DocumentIndex, SearchQuery, Viewer, ingest};

const METRICS: [Metric; 3] = [Metric::Ndcg(10), Metric::Map(100), Metric::P(10)];

struct Collection {
    docs: Vec<Document>,
    topics: Vec<(String, String)>,
    qrels: Qrels,
}

fn load() -> Option<Collection> {
    let dir = ragmesh_test_util::vaswani_dir()?;
    let docs = ingest::parse_trec(&std::fs::read_to_string(dir.join("doc-text.trec")).expect("docs"), "npl")
        .expect("parse documents");
    let topics = ragmesh_eval::topics::read_topics_file(&dir.join("query-text.trec")).expect("topics");
    let topics = topics.into_iter().map(|t| (t.id.clone(), t.title.to_lowercase())).collect();
    let qrels = Qrels::read_file(&dir.join("qrels")).expect("qrels");
    Some(Collection { docs, topics, qrels })
}

fn build(dir: &std::path::Path, profile: Profile, docs: &[Document]) {
    let index =
        DocumentIndex::open_with(dir, AnalysisSettings { profile, ..AnalysisSettings::default() }).expect("open index");
    for batch in docs.chunks(5000) {
        index.upsert(batch.to_vec()).expect("index a batch");
    }
}

fn run(index: &DocumentIndex, collection: &Collection, limit: usize) -> Run {
    let mut run = Run::new("measured").expect("run tag");
    for (id, text) in &collection.topics {
        let q = SearchQuery { query: text.clone(), limit, viewer: Viewer::Unrestricted, ..SearchQuery::default() };
        let results = index.search(&q).expect("search");
        run.push_empty(id).expect("query");
        for hit in &results.hits {
            run.push(id, &hit.id, f64::from(hit.score)).expect("hit");
        }
    }
    run
}

fn evaluate(run: &Run, qrels: &Qrels) -> Evaluation {
    ragmesh_eval::evaluate(run, qrels, &METRICS, Averaging::Complete).expect("evaluate")
}

fn row(name: &str, base: &Evaluation, e: &Evaluation) {
    let test = RandomizationTest { rounds: 20_000, ..RandomizationTest::default() };
    let cmp = |m: Metric| -> Comparison { compare(base, e, m, &test).expect("compare") };
    let (ndcg, map) = (cmp(Metric::Ndcg(10)), cmp(Metric::Map(100)));
    println!(
        "  {name:<34} {:>7.4} {:>7.4} {:>7.4}   p(nDCG)={:<7.4} p(MAP)={:.4}",
        e.mean(Metric::Ndcg(10)).unwrap_or_default(),
        e.mean(Metric::Map(100)).unwrap_or_default(),
        e.mean(Metric::P(10)).unwrap_or_default(),
        ndcg.p_value,
        map.p_value
    );
}

#[test]
#[ignore = "measurement: builds six vaswani indexes; run with --ignored --nocapture"]
fn analysis_and_bm25_parameters_on_vaswani() {
    let Some(collection) = load() else { return };
    assert_eq!(collection.topics.len(), 93);
    let root = tempfile::tempdir().expect("tempdir");
    let profiles = [
        Profile::default(),
        Profile { stemming: Stemming::Snowball("english"), stop_words: StopWords::English },
        Profile { stemming: Stemming::Snowball("porter"), stop_words: StopWords::None },
        Profile { stemming: Stemming::Snowball("porter"), stop_words: StopWords::English },
        Profile { stemming: Stemming::None, stop_words: StopWords::None },
        Profile { stemming: Stemming::None, stop_words: StopWords::English },
    ];
    println!("vaswani, 93 topics, one index; p-values: paired randomization test vs the default, 20,000 rounds");
    println!("  {:<34} {:>7} {:>7} {:>7}", "profile (k1 1.2, b 0.75)", "nDCG@10", "MAP@100", "P@10");
    let mut base = None;
    for profile in profiles {
        let dir = root.path().join(profile.name());
        let started = Instant::now();
        build(&dir, profile, &collection.docs);
        let built = started.elapsed();
        let index = DocumentIndex::open_with(&dir, AnalysisSettings { profile, ..AnalysisSettings::default() })
            .expect("reopen");
        let e = evaluate(&run(&index, &collection, 100), &collection.qrels);
        assert_eq!(e.num_queries(), 93);
        let base = base.get_or_insert(e.clone());
        row(&format!("{} ({:.0}s)", profile.name(), built.as_secs_f64()), base, &e);
    }
    let base = base.expect("the default was measured");
    assert!(base.mean(Metric::P(10)).unwrap_or_default() > 0.2, "the default must work");

    let default_dir = root.path().join(Profile::default().name());
    println!("  {:<34} {:>7} {:>7} {:>7}", "k1 / b (en_stem)", "nDCG@10", "MAP@100", "P@10");
    for k1 in [0.6, 0.9, 1.2, 1.5, 2.0] {
        for b in [0.3, 0.5, 0.75, 0.9] {
            let bm25 = Bm25Params::new(k1, b).expect("valid");
            let index =
                DocumentIndex::open_with(&default_dir, AnalysisSettings { bm25, ..AnalysisSettings::default() })
                    .expect("reopen with parameters");
            let e = evaluate(&run(&index, &collection, 100), &collection.qrels);
            row(&format!("k1={k1} b={b}"), &base, &e);
        }
    }

    // Cost: tantivy's native path (block-max WAND) against the configurable scorer at
    // (practically) the same parameters, top 10, all topics, five rounds each.
    println!("  scoring cost, top 10, 93 topics x 5:");
    for (name, bm25) in [
        ("native (k1 1.2, b 0.75)", Bm25Params::default()),
        ("configurable (k1 1.2, b 0.7500001)", Bm25Params::new(1.2, 0.750_000_1).expect("valid")),
    ] {
        let index = DocumentIndex::open_with(&default_dir, AnalysisSettings { bm25, ..AnalysisSettings::default() })
            .expect("reopen");
        let started = Instant::now();
        for _ in 0..5 {
            run(&index, &collection, 10);
        }
        let seconds = started.elapsed().as_secs_f64();
        println!("    {name:<36} {:>8.0} queries/s", 93.0 * 5.0 / seconds);
    }
}
