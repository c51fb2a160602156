//! Per-collection analysis end to end (issue 10, item 2): two agents configured with
//! `[analysis.collections.plain]` (unstemmed, English stop words, its own k1 and b) beside the
//! default (stemmed) analysis, real mTLS, a real master. A global-BM25 search through the master
//! finds "replicas" by "replica" only in the stemmed collection, ignores stop words only in the
//! plain one, and scores every hit exactly as one local index with the same per-collection
//! analysis holding every document does (statistics keyed by each profile's field names add up
//! across the agents); term summaries name each collection's profile, so routing never skips an
//! agent holding a hit.

use std::collections::BTreeMap;
use std::time::Duration;

use ragmesh_e2e::{Agent, Mesh, outcome_of, trace_init, wait_for};
use ragmesh_index::analysis::{Stemming, StopWords};
use ragmesh_index::{
    Acl, AnalysisSettings, Bm25Params, Document, DocumentIndex, IndexAnalysis, Profile, SearchQuery, Viewer,
};
use ragmesh_master::node::NodeState;
use ragmesh_proto::v1::{self, OutcomeStatus, SkipReason};

const INTERVAL: Duration = Duration::from_millis(250);
const TIMEOUT: Duration = Duration::from_secs(5);

/// The agent file's analysis: `[analysis]` defaults, `[analysis.collections.plain]` overridden.
fn analysis_config() -> ragmesh_config::AnalysisConfig {
    let mut config = ragmesh_config::AnalysisConfig::default();
    config.collections.insert(
        "plain".into(),
        ragmesh_config::CollectionAnalysisConfig {
            stemming: "none".into(),
            stop_words: "english".into(),
            k1: 0.6,
            b: 0.3,
        },
    );
    config
}

/// The same analysis, as the index takes it (the local reference).
fn index_analysis() -> IndexAnalysis {
    let plain = AnalysisSettings {
        profile: Profile { stemming: Stemming::None, stop_words: StopWords::English },
        bm25: Bm25Params::new(0.6, 0.3).expect("valid"),
    };
    IndexAnalysis::new(AnalysisSettings::default(), BTreeMap::from([("plain".to_owned(), plain)])).expect("valid")
}

/// `(agent, collection, id, body)`.
const CORPUS: [(usize, &str, &str, &str); 8] = [
    (0, "stemmed", "s1", "the replicas of the data agree"),
    (0, "stemmed", "s2", "one replica lags behind the others"),
    (1, "stemmed", "s3", "replicated logs and the replicas"),
    (0, "plain", "p1", "the replicas of the data agree"),
    (1, "plain", "p2", "one replica lags behind the others"),
    (1, "plain", "p3", "replica replica of a replica set"),
    (1, "stemmed", "s4", "nothing about copies here"),
    (0, "plain", "p4", "radar echoes from the moon"),
];

fn wire(collection: &str, id: &str, body: &str) -> v1::Document {
    v1::Document {
        id: id.into(),
        collection: collection.into(),
        title: String::new(),
        body: body.into(),
        acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_analyse_and_score_by_their_own_settings_across_agents() {
    trace_init();
    let mesh = Mesh::builder().agents(0).heartbeat(INTERVAL, TIMEOUT).start().await;
    let names = ["pc-1", "pc-2"];
    let mut agents = Vec::new();
    let mut dirs = Vec::new();
    for name in names {
        let dir = tempfile::tempdir().expect("agent dir");
        let mut config = mesh.agent_config(name, dir.path().to_owned());
        config.analysis = analysis_config();
        agents.push(Agent::start(config));
        dirs.push(dir);
    }
    for name in names {
        mesh.wait_state(name, NodeState::Up, Duration::from_secs(20)).await;
    }
    let reference_dir = tempfile::tempdir().expect("reference dir");
    let reference = DocumentIndex::open_with_analysis(reference_dir.path(), index_analysis()).expect("open reference");
    let mut generations = [0u64; 2];
    for (agent, name) in names.iter().enumerate() {
        let docs: Vec<v1::Document> = CORPUS
            .iter()
            .filter(|(on, ..)| *on == agent)
            .map(|(_, collection, id, body)| wire(collection, id, body))
            .collect();
        generations[agent] = mesh.ingest_shard(name, docs).await.generation;
    }
    let all: Vec<Document> = CORPUS
        .iter()
        .map(|(_, collection, id, body)| Document {
            id: (*id).into(),
            collection: (*collection).into(),
            title: String::new(),
            body: (*body).into(),
            metadata: BTreeMap::new(),
            acl: Acl::public(),
        })
        .collect();
    reference.upsert(all).expect("reference upsert");
    // Wait until the master trusts both summaries, so routing decides every search below.
    for (agent, name) in names.iter().enumerate() {
        wait_for(&format!("a trusted summary of {name}"), Duration::from_secs(20), || async {
            let summaries = mesh.master().registry()?.term_summaries();
            let summary = summaries.get(*name)?;
            (summary.trusted() && summary.summary.generation() >= generations[agent]).then_some(())
        })
        .await;
    }
    let summaries = mesh.master().registry().expect("registry").term_summaries();
    for name in names {
        let summary = &summaries[name].summary;
        assert_eq!(summary.analyzer("plain"), Some("stem-none_stop-english"), "{name}");
        assert_eq!(summary.analyzer("stemmed"), Some("en_stem"), "{name}");
    }

    let search = |query: &str, collections: &[&str]| v1::SearchRequest {
        query: query.into(),
        collections: collections.iter().map(|c| (*c).to_owned()).collect(),
        limit: 50,
        merge: "global_bm25".into(),
        ..Default::default()
    };
    let ids = |response: &v1::SearchResponse| {
        let mut ids: Vec<String> = response.hits.iter().map(|hit| hit.doc_id.clone()).collect();
        ids.sort();
        ids
    };
    // Stemmed: "replica" finds replicas, replica and replicated; plain: only the exact word.
    let replica = mesh.search(search("replica", &[])).await;
    assert_eq!(ids(&replica), ["p2", "p3", "s1", "s2", "s3"], "{:?}", replica.hits);
    // A stop word is a term only where stop words are not configured.
    let the = mesh.search(search("the", &[])).await;
    assert_eq!(ids(&the), ["s1", "s2", "s3"], "{:?}", the.hits);
    // "replicas" within the plain collection: only pc-1 holds it; pc-2's plain documents hold
    // "replica" only, which the plain profile keeps apart: pc-2 is skipped by its summary.
    let plain = mesh.search(search("replicas", &["plain"])).await;
    assert_eq!(ids(&plain), ["p1"], "{:?}", plain.hits);
    let skipped = outcome_of(&plain, "pc-2");
    assert_eq!((skipped.status(), skipped.skip_reason()), (OutcomeStatus::Skipped, SkipReason::NoMatch), "{skipped:?}");
    assert_eq!(outcome_of(&plain, "pc-1").status(), OutcomeStatus::Ok);

    // Every score is the one a single index with the same analysis gives.
    for (text, collections) in [("replica", &[][..]), ("the replicas", &[][..]), ("replica", &["plain"][..])] {
        let response = mesh.search(search(text, collections)).await;
        for outcome in &response.nodes {
            assert!(matches!(outcome.status(), OutcomeStatus::Ok | OutcomeStatus::Skipped), "{text}: {outcome:?}");
        }
        let q = SearchQuery {
            query: text.into(),
            collections: collections.iter().map(|c| (*c).to_owned()).collect(),
            limit: 50,
            viewer: Viewer::Unrestricted,
            ..SearchQuery::default()
        };
        let own = reference.term_statistics(&q).expect("reference statistics");
        let want: BTreeMap<String, f32> = reference
            .search_with_statistics(&q, &own)
            .expect("reference search")
            .hits
            .into_iter()
            .map(|hit| (hit.id, hit.score))
            .collect();
        let got: BTreeMap<String, f32> =
            response.hits.iter().map(|hit| (hit.doc_id.clone(), hit.score as f32)).collect();
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{text} {collections:?}");
        for (id, score) in &want {
            let delta = (got[id] - score).abs();
            assert!(delta <= 1e-4 * score.abs().max(1e-6), "{text}: {id} scored {} vs one index {score}", got[id]);
        }
    }
    for agent in agents {
        agent.stop();
    }
    mesh.shutdown().await;
}
