//! Routing by term summaries, end to end: agents send Bloom-filter summaries of their terms on
//! their health streams (real heartbeats, real mTLS), the master skips a shard group whose
//! trusted summary proves no document can match (`skipped: no_match`), never skips a group after
//! an acknowledged write its summary does not cover, and picks up the new summary once a
//! heartbeat carries it. A property-style scenario checks over random corpora and queries that a
//! skipped group never holds a hit (ground truth: the same documents in a local index).

use std::time::Duration;

use ragmesh_e2e::{Mesh, docs_for, outcome_of, trace_init, wait_for};
use ragmesh_index::{Acl, DocumentIndex, SearchQuery, Viewer};
use ragmesh_proto::v1::{self, OutcomeStatus, SkipReason};

/// Short heartbeats so summaries travel quickly; a generous timeout for a loaded machine.
const INTERVAL: Duration = Duration::from_millis(250);
const TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until the master holds a trusted summary of node `name` describing generation
/// `generation` or later (it then decides exactly as a search would).
async fn wait_trusted_summary(mesh: &Mesh, name: &str, generation: u64) {
    wait_for(
        &format!("a trusted term summary of {name} at generation {generation}"),
        Duration::from_secs(20),
        || async {
            let summaries = mesh.master().registry()?.term_summaries();
            let summary = summaries.get(name)?;
            (summary.trusted() && summary.summary.generation() >= generation).then_some(())
        },
    )
    .await;
}

fn is_no_match(outcome: &v1::NodeOutcome) -> bool {
    outcome.status() == OutcomeStatus::Skipped && outcome.skip_reason() == SkipReason::NoMatch
}

fn alpha_doc(id: &str) -> v1::Document {
    v1::Document {
        id: id.into(),
        collection: "docs".into(),
        title: "late alpha".into(),
        body: "an alpha document written into the second agent".into(),
        acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_proven_not_to_match_are_skipped_and_a_fresh_write_is_never_skipped() {
    trace_init();
    let mesh = Mesh::builder().agents(3).heartbeat(INTERVAL, TIMEOUT).start().await;
    let mut generations = Vec::new();
    for i in 0..3 {
        // Disjoint words per agent: alpha, beta, gamma (and "mesh" everywhere).
        generations.push(mesh.ingest(i, docs_for(i, 3)).await.generation);
    }
    for (i, generation) in generations.iter().enumerate() {
        wait_trusted_summary(&mesh, mesh.agent_name(i), *generation).await;
    }

    let alpha =
        |merge: &str| v1::SearchRequest { query: "alpha".into(), limit: 20, merge: merge.into(), ..Default::default() };
    let global = mesh.search(alpha("global_bm25")).await;
    assert_eq!(global.hits.len(), 3, "{:?}", global.hits);
    assert!(global.hits.iter().all(|h| h.node == "agent-1"));
    let first = outcome_of(&global, "agent-1");
    assert_eq!((first.status(), first.hit_count), (OutcomeStatus::Ok, 3), "{first:?}");
    for name in ["agent-2", "agent-3"] {
        let outcome = outcome_of(&global, name);
        assert!(is_no_match(outcome), "{name}: {outcome:?}");
        assert_eq!(outcome.message, "its term summary proves no document can match");
        let group = global.groups.iter().find(|g| g.shard == name).expect("group reported");
        assert_eq!((group.status(), group.skip_reason()), (OutcomeStatus::Skipped, SkipReason::NoMatch), "{group:?}");
        assert!(group.attempts.is_empty(), "not called: {group:?}");
    }
    // The statistics phase still counted the skipped groups: global BM25 scores "alpha" over 9
    // documents (3 holding it), not over agent-1's 3 (all holding it), so its idf, and every
    // score, is higher than agent-1's local score (what `raw` returns).
    let raw = mesh.search(alpha("raw")).await;
    assert!(is_no_match(outcome_of(&raw, "agent-2")) && is_no_match(outcome_of(&raw, "agent-3")), "{:?}", raw.nodes);
    assert_eq!(raw.hits.len(), 3);
    assert!(
        global.hits[0].score > raw.hits[0].score * 2.0,
        "global {} raw {}",
        global.hits[0].score,
        raw.hits[0].score
    );

    // A word of agent-2 now: the write is acknowledged before any heartbeat can carry a new
    // summary, and the very next search must ask agent-2 (its summary no longer covers its log).
    let written = mesh.ingest(1, vec![alpha_doc("late-alpha")]).await;
    let fresh = mesh.search(alpha("rrf")).await;
    let second = outcome_of(&fresh, "agent-2");
    assert_eq!((second.status(), second.hit_count), (OutcomeStatus::Ok, 1), "no false skip: {second:?}");
    assert!(fresh.hits.iter().any(|h| h.doc_id == "late-alpha" && h.node == "agent-2"), "{:?}", fresh.hits);
    assert!(is_no_match(outcome_of(&fresh, "agent-3")));

    // Once a heartbeat carried agent-2's new summary, it is trusted again, and it holds "alpha".
    wait_trusted_summary(&mesh, "agent-2", written.generation).await;
    let later = mesh.search(alpha("rrf")).await;
    let second = outcome_of(&later, "agent-2");
    assert_eq!((second.status(), second.hit_count), (OutcomeStatus::Ok, 1), "{second:?}");
    assert_eq!(later.hits.len(), 4);
    // A query no agent can match is answered without a single node call: zero hits, not an error.
    let nothing = mesh.search(v1::SearchRequest { query: "zeppelin".into(), ..Default::default() }).await;
    assert!(nothing.hits.is_empty());
    assert!(nothing.nodes.iter().all(is_no_match), "{:?}", nothing.nodes);
    mesh.shutdown().await;
}

/// A small deterministic generator (splitmix64), so a failure names its seed and replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: [&str; 14] = [
    "river", "stone", "cloud", "maple", "tiger", "copper", "violin", "harbor", "lantern", "meadow", "rocket",
    "saffron", "glacier", "orchid",
];

/// A skewed split: agent `i` draws its words mostly from its own slice of the vocabulary, with
/// a few shared ones, so most queries touch one or two agents.
fn corpus(rng: &mut Rng, agent: usize) -> Vec<v1::Document> {
    let own = &WORDS[agent * 4..agent * 4 + 4];
    let docs = 3 + rng.below(4);
    (0..docs)
        .map(|j| {
            let len = 2 + rng.below(4);
            let words: Vec<&str> = (0..len)
                .map(|_| if rng.below(6) == 0 { WORDS[12 + rng.below(2)] } else { own[rng.below(own.len())] })
                .collect();
            v1::Document {
                id: format!("a{agent}-{j}"),
                collection: if j % 2 == 0 { "even".into() } else { "odd".into() },
                title: words[0].to_owned(),
                body: words.join(" "),
                acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
                ..Default::default()
            }
        })
        .collect()
}

fn random_query(rng: &mut Rng) -> String {
    let shape = rng.below(5);
    let mut word = || WORDS[rng.below(WORDS.len())];
    match shape {
        0 => word().to_owned(),
        1 => format!("{} {}", word(), word()),
        2 => format!("+{} +{}", word(), word()),
        3 => format!("\"{} {}\"", word(), word()),
        _ => format!("{} AND {} OR {}", word(), word(), word()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_group_never_holds_a_hit_over_random_corpora_and_queries() {
    trace_init();
    let seed = 0x5eed_0010;
    let mut rng = Rng(seed);
    let mesh = Mesh::builder().agents(3).heartbeat(INTERVAL, TIMEOUT).start().await;
    // The same documents in a local index per agent: the ground truth of "this group has a hit".
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut truth = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let docs = corpus(&mut rng, i);
        let generation = mesh.ingest(i, docs.clone()).await.generation;
        let local = DocumentIndex::open(dir.path()).expect("local index");
        let local_docs = docs
            .into_iter()
            .map(|d| ragmesh_index::Document {
                id: d.id,
                collection: d.collection,
                title: d.title,
                body: d.body,
                metadata: Default::default(),
                acl: Acl::default(),
            })
            .collect();
        local.upsert(local_docs).expect("local upsert");
        truth.push(local);
        wait_trusted_summary(&mesh, mesh.agent_name(i), generation).await;
    }

    let (mut calls, mut skipped) = (0usize, 0usize);
    for round in 0..40 {
        let query = random_query(&mut rng);
        let collections = match rng.below(3) {
            0 => Vec::new(),
            1 => vec!["even".to_owned()],
            _ => vec!["odd".to_owned()],
        };
        let request = v1::SearchRequest {
            query: query.clone(),
            collections: collections.clone(),
            limit: 100,
            merge: "rrf".into(),
            ..Default::default()
        };
        let response = mesh.search(request).await;
        for (i, local) in truth.iter().enumerate() {
            let name = mesh.agent_name(i);
            let expected = local
                .search(&SearchQuery {
                    query: query.clone(),
                    collections: collections.clone(),
                    limit: 100,
                    viewer: Viewer::Unrestricted,
                    ..Default::default()
                })
                .expect("local search")
                .hits
                .len();
            let outcome = outcome_of(&response, name);
            let context =
                format!("seed {seed:#x} round {round} query {query:?} in {collections:?}, {name}: {outcome:?}");
            if is_no_match(outcome) {
                assert_eq!(expected, 0, "a skipped group holds {expected} hits: {context}");
                skipped += 1;
            } else if outcome.status() == OutcomeStatus::Ok {
                assert_eq!(outcome.hit_count as usize, expected, "{context}");
                calls += 1;
            } else {
                // Holding none of the requested collections is the other reason not to ask.
                assert_eq!(outcome.skip_reason(), SkipReason::NotRouted, "{context}");
            }
        }
    }
    println!(
        "routing by term summaries: {skipped} of {} node calls saved ({:.0} %)",
        skipped + calls,
        100.0 * skipped as f64 / (skipped + calls).max(1) as f64
    );
    assert!(skipped > 0, "the summaries skipped nothing over 40 queries of a skewed split");
    mesh.shutdown().await;
}
