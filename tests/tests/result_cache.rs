//! The master's result cache and statistics cache over real mTLS: a repeated search is served
//! from the cache with the same hits, an acknowledged write makes the old entry unreachable at
//! once, callers with different visibility never share an entry, an answer with a group down is
//! not stored, `bypass_cache` skips the lookup, a write to one group makes only that group's
//! statistics be asked again, and under concurrent writers and readers no search started after
//! a write's acknowledgement misses that write.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragmesh_e2e::{Mesh, WithToken, docs_for, scrape, trace_init};
use ragmesh_master::node::NodeState;
use ragmesh_proto::v1;
use ragmesh_proto::v1::master_service_client::MasterServiceClient;

fn caches_on() -> ragmesh_config::CacheConfig {
    ragmesh_config::CacheConfig::default()
}

fn search(query: &str) -> v1::SearchRequest {
    v1::SearchRequest { query: query.into(), limit: 100, ..Default::default() }
}

fn ids(response: &v1::SearchResponse) -> Vec<(String, String)> {
    response.hits.iter().map(|h| (h.node.clone(), h.doc_id.clone())).collect()
}

fn public_doc(id: &str, body: &str) -> v1::Document {
    v1::Document {
        id: id.into(),
        collection: "docs".into(),
        title: id.into(),
        body: body.into(),
        acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        ..Default::default()
    }
}

/// The value of the series named exactly `series` in a scrape (0 when absent).
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

fn lookups(cache: &str, result: &str) -> String {
    format!(r#"ragmesh_search_cache_lookups_total{{cache="{cache}",result="{result}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_search_is_cached_until_an_acknowledged_write_and_bypass_skips_the_lookup() {
    trace_init();
    let mesh = Mesh::builder().agents(2).cache(caches_on()).start().await;
    mesh.ingest(0, docs_for(0, 3)).await;
    mesh.ingest(1, docs_for(1, 3)).await;

    let first = mesh.search(search("mesh")).await;
    assert!(!first.cached, "the first search fans out");
    assert_eq!(first.hits.len(), 6);
    let second = mesh.search(search("mesh")).await;
    assert!(second.cached, "the same search again is a hit");
    assert_eq!(ids(&second), ids(&first), "identical hits");
    assert_eq!(second.nodes, first.nodes, "the same per-node report");
    // Another timeout: the same entry.
    let same = v1::SearchRequest { timeout_ms: 5000, ..search("mesh") };
    assert!(mesh.search(same).await.cached);

    // An acknowledged write: the next search misses and shows the new document.
    mesh.ingest(0, vec![public_doc("fresh-1", "the mesh grew a new document")]).await;
    let after = mesh.search(search("mesh")).await;
    assert!(!after.cached, "a write to a considered group makes the old entry unreachable");
    assert!(after.hits.iter().any(|h| h.doc_id == "fresh-1"), "{:?}", ids(&after));
    assert!(mesh.search(search("mesh")).await.cached, "and the new answer is cached");

    // bypass_cache: no lookup (a fan-out), its complete answer is stored.
    let bypass = mesh.search(v1::SearchRequest { bypass_cache: true, ..search("mesh") }).await;
    assert!(!bypass.cached);
    assert_eq!(ids(&bypass), ids(&after));
    let metrics = scrape(mesh.master_metrics_addr()).await;
    assert_eq!(value(&metrics, &lookups("result", "hit")), 3.0, "{metrics}");
    assert_eq!(value(&metrics, &lookups("result", "miss")), 2.0);
    assert_eq!(value(&metrics, &lookups("result", "bypass")), 1.0);
    assert!(value(&metrics, r#"ragmesh_search_cache_entries{cache="result"}"#) >= 1.0);
    assert!(value(&metrics, r#"ragmesh_search_cache_bytes{cache="result"}"#) > 0.0);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_with_different_visibility_never_share_an_entry() {
    trace_init();
    let mesh = Mesh::builder().agents(1).cache(caches_on()).start().await;
    let acme = v1::DocumentAcl { tenants: vec!["acme".into()], ..Default::default() };
    let secret = v1::Document { acl: Some(acme), ..public_doc("acme-plan", "the secret mesh plan of acme") };
    mesh.ingest(0, vec![public_doc("open", "an open mesh note"), secret]).await;

    let operator = mesh.search(search("mesh")).await;
    assert_eq!(operator.hits.len(), 2, "an operator reads everything");
    assert!(mesh.search(search("mesh")).await.cached);

    let mut clients = Vec::new();
    for (subject, tenant) in [("ann", "acme"), ("bob", "other"), ("cid", "acme")] {
        let token = mesh.issue_token(subject, tenant, &["search"]).await.access_token;
        clients.push(mesh.client_with_token(&token).await);
    }
    let [mut ann, mut bob, mut cid] = <[_; 3]>::try_from(clients).expect("three clients");
    async fn run(client: &mut MasterServiceClient<WithToken>) -> v1::SearchResponse {
        client.search(search("mesh")).await.expect("search").into_inner()
    }
    let first = run(&mut ann).await;
    assert!(!first.cached, "ann may not get the operator's entry");
    assert_eq!(ids(&first).len(), 2, "ann's tenant may read the acme plan");
    let again = run(&mut ann).await;
    assert!(again.cached, "ann's own entry");
    let other = run(&mut bob).await;
    assert!(!other.cached, "another tenant never gets ann's entry");
    assert_eq!(other.hits.iter().map(|h| h.doc_id.as_str()).collect::<Vec<_>>(), ["open"]);
    assert!(run(&mut bob).await.cached);
    let colleague = run(&mut cid).await;
    assert!(!colleague.cached, "another subject of the same tenant has its own entry (subject grants differ)");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_a_group_down_is_not_cached() {
    trace_init();
    let mut mesh = Mesh::builder().agents(2).cache(caches_on()).start().await;
    mesh.ingest(0, docs_for(0, 2)).await;
    mesh.ingest(1, docs_for(1, 2)).await;
    assert!(!mesh.search(search("mesh")).await.cached);
    mesh.kill_agent(1);
    let name = mesh.agent_name(1).to_owned();
    mesh.wait_state(&name, NodeState::Down, Duration::from_secs(30)).await;
    for attempt in 0..2 {
        let partial = mesh.search(search("mesh")).await;
        assert!(!partial.cached, "attempt {attempt}: an incomplete answer is never stored");
        assert_eq!(partial.hits.len(), 2, "only the live group's documents");
        let down = partial.groups.iter().find(|g| g.shard == name).expect("the dead group is reported");
        assert_ne!(down.status, v1::OutcomeStatus::Ok as i32);
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_one_group_makes_only_that_group_be_asked_for_statistics_again() {
    trace_init();
    let mesh = Mesh::builder().agents(3).cache(caches_on()).start().await;
    for i in 0..3 {
        mesh.ingest(i, docs_for(i, 3)).await;
    }
    // bypass_cache: every search fans out, so only the statistics cache saves calls.
    let request = v1::SearchRequest { bypass_cache: true, ..search("mesh") };
    let counts = async || {
        let metrics = scrape(mesh.master_metrics_addr()).await;
        (value(&metrics, &lookups("statistics", "hit")), value(&metrics, &lookups("statistics", "miss")))
    };
    let cold = mesh.search(request.clone()).await;
    assert_eq!(counts().await, (0.0, 3.0), "cold: every group asked");
    let warm = mesh.search(request.clone()).await;
    assert_eq!(counts().await, (3.0, 3.0), "warm: no group asked");
    assert_eq!(ids(&warm), ids(&cold), "the same statistics, the same ranking");
    let scores = |r: &v1::SearchResponse| r.hits.iter().map(|h| h.score.to_bits()).collect::<Vec<_>>();
    assert_eq!(scores(&warm), scores(&cold), "identical global scores");

    mesh.ingest(0, vec![public_doc("new-a", "one more mesh document in group a")]).await;
    let after = mesh.search(request.clone()).await;
    assert_eq!(counts().await, (5.0, 4.0), "only the written group is asked again");
    assert!(after.hits.iter().any(|h| h.doc_id == "new-a"));
    assert_eq!(after.hits.len(), 10);
    mesh.shutdown().await;
}

/// Writers ingest documents with a unique id while readers search concurrently; after every
/// acknowledged write, every search that started after the acknowledgement shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammer_no_search_started_after_an_acknowledged_write_misses_it() {
    trace_init();
    const WRITERS: usize = 3;
    const READERS: usize = 4;
    const MAX_WRITES: usize = 60;
    let run_for = Duration::from_secs(6);
    // Cache hits come back in well under a millisecond: four readers in closed loops outrun the
    // default per-principal rate limit, which is not what this test is about.
    let mesh = Mesh::builder().agents(3).cache(caches_on()).rate_limit(100_000, 100_000).start().await;
    for i in 0..3 {
        mesh.ingest(i, docs_for(i, 2)).await;
    }
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio::time::Instant::now() + run_for;

    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let mut client = mesh.client().await;
        let node = mesh.agent_name(w).to_owned();
        let acked = acked.clone();
        writers.spawn(async move {
            for seq in 0..MAX_WRITES {
                if tokio::time::Instant::now() >= stop {
                    break;
                }
                let id = format!("w{w}-s{seq}");
                let doc = public_doc(&id, &format!("hammer mesh write {id}"));
                let request =
                    v1::IngestDocumentsRequest { node: node.clone(), documents: vec![doc], shard: String::new() };
                client.ingest_documents(request).await.expect("ingest acknowledged");
                // Recorded only after the acknowledgement.
                acked.lock().expect("acked").push(id);
                // Room between writes, so identical searches can hit the cache.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        });
    }
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..READERS {
        let mut client = mesh.client().await;
        let acked = acked.clone();
        readers.spawn(async move {
            let (mut checked, mut cached, mut stale) = (0usize, 0usize, Vec::new());
            while tokio::time::Instant::now() < stop {
                let must: Vec<String> = acked.lock().expect("acked").clone();
                let request = v1::SearchRequest { query: "hammer".into(), limit: 1000, ..Default::default() };
                let response = client.search(request).await.expect("search").into_inner();
                let seen: BTreeSet<&str> = response.hits.iter().map(|h| h.doc_id.as_str()).collect();
                let missing: Vec<&String> = must.iter().filter(|id| !seen.contains(id.as_str())).collect();
                if !missing.is_empty() {
                    stale.push(format!("cached={} missing {missing:?}", response.cached));
                }
                checked += 1;
                cached += usize::from(response.cached);
            }
            (checked, cached, stale)
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
    let (mut checked, mut cached, mut stale) = (0, 0, Vec::new());
    while let Some(done) = readers.join_next().await {
        let (c, h, s) = done.expect("reader");
        checked += c;
        cached += h;
        stale.extend(s);
    }
    let writes = acked.lock().expect("acked").len();
    tracing::info!(writes, checked, cached, stale = stale.len(), "hammer done");
    assert!(writes >= WRITERS, "every writer wrote ({writes})");
    assert!(checked > writes, "readers checked {checked} answers");
    assert!(stale.is_empty(), "{} stale answers of {checked}: {:?}", stale.len(), &stale[..stale.len().min(5)]);
    assert!(cached > 0, "the cache served none of {checked} answers: it was not exercised");
    // Every acknowledged write is visible at the end.
    let last = mesh.search(v1::SearchRequest { query: "hammer".into(), limit: 1000, ..Default::default() }).await;
    assert_eq!(last.hits.len(), writes);
    eprintln!("hammer: {writes} writes, {checked} answers checked, {cached} served from the cache, 0 stale");
    mesh.shutdown().await;
}
