//! Issue 10, item 2: analysis profiles and BM25 parameters per collection. Each collection's
//! documents are analysed by its own profile (into that profile's title/body fields) and scored
//! with its own `k1` and `b`; global BM25 over several indexes still ranks like one index, term
//! summaries name each collection's profile, and an index whose collection changed profile is
//! refused (and can be rebuilt through a snapshot).

use std::collections::BTreeMap;

use proptest::prelude::*;
use ragmesh_index::analysis::{Stemming, StopWords};
use ragmesh_index::{
    Acl, AnalysisSettings, Bm25Params, Document, DocumentIndex, IndexAnalysis, IndexError, Profile, SearchQuery,
    SnapshotLimits, TermStatistics, Viewer, routing_query_for,
};

/// Unstemmed, English stop words dropped.
fn plain() -> Profile {
    Profile { stemming: Stemming::None, stop_words: StopWords::English }
}

fn settings(profile: Profile, k1: f32, b: f32) -> AnalysisSettings {
    AnalysisSettings { profile, bm25: Bm25Params::new(k1, b).expect("valid bm25") }
}

/// Default analysis (en_stem, 1.2/0.75) but for the given collections.
fn analysis(overrides: &[(&str, AnalysisSettings)]) -> IndexAnalysis {
    let overrides: BTreeMap<String, AnalysisSettings> =
        overrides.iter().map(|(name, settings)| ((*name).to_owned(), *settings)).collect();
    IndexAnalysis::new(AnalysisSettings::default(), overrides).expect("valid analysis")
}

fn doc(collection: &str, id: &str, title: &str, body: &str) -> Document {
    Document {
        id: id.to_owned(),
        collection: collection.to_owned(),
        title: title.to_owned(),
        body: body.to_owned(),
        metadata: BTreeMap::new(),
        acl: Acl::public(),
    }
}

fn query(text: &str, collections: &[&str]) -> SearchQuery {
    SearchQuery {
        query: text.to_owned(),
        collections: collections.iter().map(|c| (*c).to_owned()).collect(),
        limit: ragmesh_index::MAX_LIMIT,
        viewer: Viewer::Unrestricted,
        ..SearchQuery::default()
    }
}

fn open(dir: &std::path::Path, analysis: IndexAnalysis) -> DocumentIndex {
    DocumentIndex::open_with_analysis(dir, analysis).expect("open index")
}

/// `(collection, id)` of every hit, sorted.
fn found(index: &DocumentIndex, q: &SearchQuery) -> Vec<(String, String)> {
    let mut hits: Vec<(String, String)> =
        index.search(q).expect("search").hits.into_iter().map(|hit| (hit.collection, hit.id)).collect();
    hits.sort();
    hits
}

fn pair(collection: &str, id: &str) -> (String, String) {
    (collection.to_owned(), id.to_owned())
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1e-6)
}

#[test]
fn stemming_and_stop_words_apply_only_where_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open(dir.path(), analysis(&[("plain", AnalysisSettings { profile: plain(), ..Default::default() })]));
    index
        .upsert(vec![
            doc("stemmed", "s1", "", "the replicas of the data"),
            doc("plain", "p1", "", "the replicas of the data"),
            doc("plain", "p2", "Replica", "one replica"),
        ])
        .expect("upsert");
    // Stemmed: "replica" finds "replicas"; unstemmed: only the exact word.
    assert_eq!(found(&index, &query("replica", &[])), [pair("plain", "p2"), pair("stemmed", "s1")]);
    assert_eq!(found(&index, &query("replicas", &[])), [pair("plain", "p1"), pair("stemmed", "s1")]);
    assert_eq!(found(&index, &query("replica", &["stemmed"])), [pair("stemmed", "s1")]);
    assert_eq!(found(&index, &query("replica", &["plain"])), [pair("plain", "p2")]);
    // A stop word is no term where stop words are configured, an ordinary word elsewhere.
    assert_eq!(found(&index, &query("the", &[])), [pair("stemmed", "s1")]);
    assert_eq!(found(&index, &query("the", &["plain"])), Vec::<(String, String)>::new());
    // Hits read title, body and snippet from their own collection's fields.
    let hits = index.search(&query("replica", &["plain"])).expect("search").hits;
    assert_eq!(hits[0].title, "Replica");
    assert!(hits[0].snippet.contains("<b>replica</b>"), "{:?}", hits[0].snippet);
    let hits = index.search(&query("replicas", &["stemmed"])).expect("search").hits;
    assert!(hits[0].snippet.contains("<b>replicas</b>"), "{:?}", hits[0].snippet);
    assert_eq!(hits[0].title, "the replicas of the data", "an untitled document shows its first words");
    // The statistics name each profile's fields; every pair indexes every document, so each
    // profile's statistics cover the whole index (as a single profile's always did).
    let stats = index.term_statistics(&query("replicas", &[])).expect("statistics");
    assert_eq!(stats.doc_freq("body", "replica"), Some(3), "{stats:?}");
    assert_eq!(stats.doc_freq("body@stem-none_stop-english", "replicas"), Some(2), "{stats:?}");
    assert_eq!(stats.doc_freq("title@stem-none_stop-english", "replicas"), Some(0));
    // A caller knowing the analysis names the same terms without the index.
    let config = analysis(&[("plain", AnalysisSettings { profile: plain(), ..Default::default() })]);
    let terms = ragmesh_index::QueryAnalyzer::for_analysis(&config).terms(&query("the replicas", &[])).expect("terms");
    let listed: Vec<(&str, &str)> = stats.doc_freqs().map(|(field, term, _)| (field, term)).collect();
    let named: Vec<(&str, &str)> = terms.iter().map(|t| (t.field.as_str(), t.term.as_str())).collect();
    assert!(named.contains(&("body", "the")) && !named.contains(&("body@stem-none_stop-english", "the")), "{named:?}");
    let without_the: Vec<(&str, &str)> = named.into_iter().filter(|(_, term)| *term != "the").collect();
    assert_eq!(without_the, listed);
    // Three stop words dropped per "the replicas of the data" document.
    assert_eq!((stats.total_tokens("body"), stats.total_tokens("body@stem-none_stop-english")), (Some(12), Some(6)));
}

/// BM25 of one body term, as tantivy (and ragmesh's own scorer) compute it.
fn bm25(stats: &TermStatistics, field: &str, term: &str, tf: f32, dl: f32, params: Bm25Params) -> f32 {
    let n = stats.total_docs() as f32;
    let df = stats.doc_freq(field, term).expect("df") as f32;
    let avgdl = stats.total_tokens(field).expect("tokens") as f32 / n;
    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
    idf * (1.0 + params.k1) * tf / (tf + params.k1 * (1.0 - params.b + params.b * dl / avgdl))
}

#[test]
fn k1_and_b_of_a_collection_change_only_its_scores_as_computed_by_hand() {
    let tuned = Bm25Params::new(0.5, 0.2).expect("valid");
    let docs = vec![
        doc("base", "b1", "", "radar radar echoes"),
        doc("base", "b2", "", "radar echoes from the moon over many nights"),
        doc("tuned", "t1", "", "radar radar echoes"),
        doc("tuned", "t2", "", "radar echoes from the moon over many nights"),
        doc("tuned", "t3", "", "nothing relevant here"),
    ];
    let uniform_dir = tempfile::tempdir().expect("tempdir");
    let uniform = open(uniform_dir.path(), IndexAnalysis::default());
    uniform.upsert(docs.clone()).expect("upsert");
    let per_dir = tempfile::tempdir().expect("tempdir");
    let per = open(per_dir.path(), analysis(&[("tuned", AnalysisSettings { bm25: tuned, ..Default::default() })]));
    per.upsert(docs).expect("upsert");

    let q = query("radar", &[]);
    let scores = |index: &DocumentIndex| -> BTreeMap<String, f32> {
        index.search(&q).expect("search").hits.into_iter().map(|hit| (hit.id, hit.score)).collect()
    };
    let (before, after) = (scores(&uniform), scores(&per));
    assert_eq!(before.len(), 4);
    assert_eq!(after.len(), 4);
    let stats = per.term_statistics(&q).expect("statistics");
    for (id, tf, dl) in [("b1", 2.0, 3.0), ("b2", 1.0, 8.0), ("t1", 2.0, 3.0), ("t2", 1.0, 8.0)] {
        let params = if id.starts_with('t') { tuned } else { Bm25Params::default() };
        let want = bm25(&stats, "body", "radar", tf, dl, params);
        assert!(close(after[id], want), "{id}: {} vs hand {want}", after[id]);
        if id.starts_with('b') {
            assert_eq!(after[id], before[id], "{id}: the default collection scores as before");
        } else {
            assert!(!close(after[id], before[id]), "{id}: tuned scores differ: {} vs {}", after[id], before[id]);
        }
    }
    // Asked for alone, the tuned collection scores like an index tuned throughout.
    let all_tuned_dir = tempfile::tempdir().expect("tempdir");
    let all_tuned =
        open(all_tuned_dir.path(), IndexAnalysis::uniform(AnalysisSettings { bm25: tuned, ..Default::default() }));
    all_tuned
        .upsert(vec![
            doc("base", "b1", "", "radar radar echoes"),
            doc("base", "b2", "", "radar echoes from the moon over many nights"),
            doc("tuned", "t1", "", "radar radar echoes"),
            doc("tuned", "t2", "", "radar echoes from the moon over many nights"),
            doc("tuned", "t3", "", "nothing relevant here"),
        ])
        .expect("upsert");
    let only_tuned = query("radar", &["tuned"]);
    let got: Vec<(String, f32)> =
        per.search(&only_tuned).expect("search").hits.into_iter().map(|h| (h.id, h.score)).collect();
    let want: Vec<(String, f32)> =
        all_tuned.search(&only_tuned).expect("search").hits.into_iter().map(|h| (h.id, h.score)).collect();
    assert_eq!(got, want);
}

#[test]
fn a_changed_profile_is_refused_and_a_snapshot_rebuilds_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain_settings = AnalysisSettings { profile: plain(), ..Default::default() };
    {
        let index = open(dir.path(), IndexAnalysis::default());
        index.upsert(vec![doc("papers", "1", "", "the replicas")]).expect("upsert");
    }
    // A profile the index has no fields for: a schema cannot grow.
    let err = DocumentIndex::open_with_analysis(dir.path(), analysis(&[("papers", plain_settings)]))
        .expect_err("no fields for the profile");
    assert!(
        matches!(&err, IndexError::ProfileFieldsMissing { profile, collections, .. }
        if profile == "stem-none_stop-english" && collections == "papers"),
        "{err}"
    );
    assert!(err.to_string().contains("snapshot"), "names the way out: {err}");
    // k1 and b alone are not stored: changing them opens fine.
    let tuned = AnalysisSettings { bm25: Bm25Params::new(0.9, 0.4).expect("valid"), ..Default::default() };
    drop(DocumentIndex::open_with_analysis(dir.path(), analysis(&[("papers", tuned)])).expect("k1/b change opens"));

    // Rebuild: snapshot, fresh directory with the new settings, restore.
    let snapshot = dir.path().join("before.snap");
    let rebuilt_dir = tempfile::tempdir().expect("tempdir");
    {
        let index = open(dir.path(), IndexAnalysis::default());
        index.write_snapshot(&snapshot, false, SnapshotLimits::default()).expect("snapshot");
        let rebuilt = open(rebuilt_dir.path(), analysis(&[("papers", plain_settings), ("notes", plain_settings)]));
        rebuilt.restore_snapshot(&snapshot, SnapshotLimits::default()).expect("restore");
        rebuilt.upsert(vec![doc("stemmed", "s", "", "replicas")]).expect("upsert");
        assert_eq!(found(&rebuilt, &query("replica", &[])), [pair("stemmed", "s")], "papers is unstemmed now");
        assert_eq!(found(&rebuilt, &query("replicas", &["papers"])), [pair("papers", "1")]);
    }
    // The rebuilt index has both pairs, each indexing every document: a collection moves
    // between them with a restart, no rebuild, and is searched (and summarised) the new way.
    let moved = open(rebuilt_dir.path(), analysis(&[("stemmed", plain_settings)]));
    assert_eq!(found(&moved, &query("replica", &[])), [pair("papers", "1")], "papers stemmed, stemmed not");
    let summary = moved.term_summary(0.01).expect("summary");
    assert_eq!(summary.analyzer("papers"), Some("en_stem"));
    assert_eq!(summary.analyzer("stemmed"), Some("stem-none_stop-english"));
    drop(moved);
    let reopened = open(rebuilt_dir.path(), analysis(&[("papers", plain_settings)]));
    assert_eq!(found(&reopened, &query("replicas", &[])), [pair("papers", "1"), pair("stemmed", "s")]);
    assert_eq!(found(&reopened, &query("replica", &[])), [pair("stemmed", "s")]);
    drop(reopened);
    // Another default profile is still refused as before.
    let porter = Profile { stemming: Stemming::Snowball("porter"), stop_words: StopWords::None };
    let err = DocumentIndex::open_with(rebuilt_dir.path(), AnalysisSettings { profile: porter, ..Default::default() })
        .expect_err("default changed");
    assert!(matches!(err, IndexError::ProfileMismatch { .. }), "{err}");
}

#[test]
fn invalid_analysis_is_refused() {
    let settings = |stemming| AnalysisSettings {
        profile: Profile { stemming, stop_words: StopWords::None },
        ..Default::default()
    };
    let mut overrides = BTreeMap::new();
    overrides.insert("bad name!".to_owned(), settings(Stemming::None));
    assert!(IndexAnalysis::new(AnalysisSettings::default(), overrides).expect_err("bad name").contains("invalid"));
    let mut overrides = BTreeMap::new();
    for (i, stemmer) in Stemming::names().into_iter().enumerate() {
        overrides.insert(format!("c{i}"), settings(Stemming::Snowball(stemmer)));
    }
    let err = IndexAnalysis::new(AnalysisSettings::default(), overrides).expect_err("too many profiles");
    assert!(err.contains("profiles"), "{err}");
    // An override equal to the default is no override.
    let mut overrides = BTreeMap::new();
    overrides.insert("same".to_owned(), AnalysisSettings::default());
    assert!(!IndexAnalysis::new(AnalysisSettings::default(), overrides).expect("valid").has_overrides());
}

const WORDS: [&str; 10] =
    ["replica", "replicas", "replicated", "the", "of", "radar", "radars", "moon", "echo", "echoes"];
const COLLECTIONS: [&str; 3] = ["stemmed", "plain", "tuned"];

fn per_collection_analysis() -> IndexAnalysis {
    analysis(&[("plain", settings(plain(), 1.2, 0.75)), ("tuned", settings(Profile::default(), 0.6, 0.3))])
}

fn words(range: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&WORDS[..]), range).prop_map(|words| words.join(" "))
}

fn arb_doc() -> impl Strategy<Value = (usize, String, String)> {
    (0..COLLECTIONS.len(), words(0..3), words(1..12))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Two indexes with per-collection profiles, searched with their merged statistics, rank
    /// like one index holding every document; and each collection's term summary names its
    /// profile and never rules out a collection that has a hit.
    #[test]
    fn global_bm25_and_routing_hold_with_per_collection_profiles(
        docs in prop::collection::vec(arb_doc(), 1..24),
        placement in prop::collection::vec(0usize..2, 24),
        queries in prop::collection::vec(words(1..4), 1..4),
    ) {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let single = open(dirs[0].path(), per_collection_analysis());
        let shards = [open(dirs[1].path(), per_collection_analysis()), open(dirs[2].path(), per_collection_analysis())];
        let mut per_shard = [Vec::new(), Vec::new()];
        let mut all = Vec::new();
        for (i, (collection, title, body)) in docs.iter().enumerate() {
            let document = doc(COLLECTIONS[*collection], &format!("d{i:02}"), title, body);
            per_shard[placement[i]].push(document.clone());
            all.push(document);
        }
        single.upsert(all).expect("upsert");
        for (shard, docs) in shards.iter().zip(per_shard) {
            if !docs.is_empty() {
                shard.upsert(docs).expect("upsert");
            }
        }
        let summary = single.term_summary(0.01).expect("summary");
        for (name, _) in summary.collections() {
            let want = per_collection_analysis().for_collection(name).profile.name();
            prop_assert_eq!(summary.analyzer(name), Some(want.as_str()));
        }
        for text in &queries {
            for collections in [&[][..], &["plain"][..], &["stemmed", "tuned"][..]] {
                let q = query(text, collections);
                let mut stats = TermStatistics::default();
                for shard in &shards {
                    stats.merge(&shard.term_statistics(&q).expect("statistics"));
                }
                let own = single.term_statistics(&q).expect("statistics");
                prop_assert_eq!(&stats, &own, "merged statistics are the single index's");
                let mut got: Vec<(String, f32)> = Vec::new();
                for shard in &shards {
                    let hits = shard.search_with_statistics(&q, &stats).expect("search with statistics").hits;
                    got.extend(hits.into_iter().map(|hit| (hit.id, hit.score)));
                }
                got.sort_by(|a, b| a.0.cmp(&b.0));
                let mut want: Vec<(String, f32)> = single
                    .search_with_statistics(&q, &own)
                    .expect("single with statistics")
                    .hits
                    .into_iter()
                    .map(|hit| (hit.id, hit.score))
                    .collect();
                want.sort_by(|a, b| a.0.cmp(&b.0));
                prop_assert_eq!(got.len(), want.len(), "{:?} vs {:?}", got, want);
                for (g, w) in got.iter().zip(&want) {
                    prop_assert!(g.0 == w.0 && close(g.1, w.1), "{:?} vs {:?}", got, want);
                }
            }
            let routing: BTreeMap<&str, ragmesh_search::RoutingQuery> = summary
                .analyzers()
                .into_iter()
                .map(|analyzer| (analyzer, routing_query_for(analyzer, text).expect("a known profile")))
                .collect();
            for collection in COLLECTIONS {
                let hits = single.search(&query(text, &[collection])).expect("search").hits;
                let routed = summary.may_match_routed(&[collection.to_owned()], |analyzer| routing.get(analyzer));
                prop_assert!(routed || hits.is_empty(), "{collection} has hits for {text:?} but routing skips it");
            }
        }
    }
}

/// Measures per-collection analysis on the vaswani collection split in two collections by
/// document number parity ("even" keeps the default profile, "odd" is unstemmed with stop
/// words): time to build and to reopen (the per-collection profile check), mean search time over
/// the 93 topics against one uniform index, index size, and that "even"'s own ranking does not
/// move (every pair indexes every document, so its statistics are the uniform index's).
/// Ignored by default; run with
/// `cargo test -p ragmesh-index --test per_collection -- --ignored --nocapture`.
#[test]
#[ignore]
fn vaswani_split_in_two_profiles_costs() {
    use std::time::Instant;
    let Some(dir) = ragmesh_test_util::vaswani_dir() else { return };
    let text = std::fs::read_to_string(dir.join("doc-text.trec")).expect("the NPL documents");
    let topics = ragmesh_eval::topics::read_topics_file(&dir.join("query-text.trec")).expect("topics");
    let mut docs = ragmesh_index::ingest::parse_trec(&text, "npl").expect("parse");
    for (i, doc) in docs.iter_mut().enumerate() {
        doc.collection = if i % 2 == 0 { "even".into() } else { "odd".into() };
    }
    let split = analysis(&[("odd", AnalysisSettings { profile: plain(), ..Default::default() })]);
    let mut indexes = Vec::new();
    for (label, config) in [("uniform", IndexAnalysis::default()), ("per-collection", split)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let index = open(dir.path(), config.clone());
        for batch in docs.chunks(5000) {
            index.upsert(batch.to_vec()).expect("upsert");
        }
        let built = started.elapsed();
        drop(index);
        let started = Instant::now();
        let index = open(dir.path(), config);
        let reopened = started.elapsed();
        println!("{label}: built in {built:?}, reopened in {reopened:?}, {} bytes on disk", index.disk_bytes());
        indexes.push((label, dir, index));
    }
    let ids = |index: &DocumentIndex, text: &str, collections: &[&str]| -> Vec<String> {
        let mut q = query(text, collections);
        q.limit = 10;
        index.search(&q).expect("search").hits.into_iter().map(|hit| hit.id).collect()
    };
    for (label, _, index) in &indexes {
        let started = Instant::now();
        for topic in &topics {
            let _ = ids(index, &topic.title.to_lowercase(), &[]);
        }
        println!("{label}: {:?} per search over all collections", started.elapsed() / topics.len() as u32);
    }
    let (mut same, mut overlap) = (0usize, 0usize);
    for topic in &topics {
        let text = topic.title.to_lowercase();
        let uniform = ids(&indexes[0].2, &text, &["even"]);
        let split = ids(&indexes[1].2, &text, &["even"]);
        same += usize::from(uniform == split);
        overlap += uniform.iter().filter(|id| split.contains(id)).count();
        assert!(!uniform.is_empty(), "every topic finds something");
    }
    println!(
        "\"even\" (default profile in both): identical top 10 for {same}/{} topics, mean overlap {:.2}/10",
        topics.len(),
        overlap as f64 / topics.len() as f64
    );
    assert_eq!(same, topics.len(), "another collection's profile changes nothing of this one's ranking");
}
