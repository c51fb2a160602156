//! An agent process whose writes stop merges its index's segments before it releases its
//! writer, and answers the same afterwards: a real master and agent over mTLS, the agent's
//! writer released after 200 ms without writes (`RAGMESH_WRITER_IDLE_RELEASE_MS`). Three ingest
//! batches leave several segments; once the agent has released its writer at the last batch's
//! generation, its last merge left one segment, a federated search gives the very same hits,
//! scores and snippets, and the next write (on a writer created again) is found.
//!
//! On a loaded machine 200 ms may pass between two batches, so idle merges may also run
//! mid-ingest, and a batch may land during one (which then keeps the writer): the test only
//! trusts the release logged at the final generation and the merge just before it.

use std::time::Duration;

use ragmesh_e2e::daemons::ProcessMesh;
use ragmesh_proto::v1;

/// Every hit of `query` through the master, as (node, collection, id, score, snippet).
async fn hits(mesh: &ProcessMesh, query: &str) -> Vec<(String, String, String, f64, String)> {
    let request = v1::SearchRequest { query: query.to_owned(), limit: 50, bypass_cache: true, ..Default::default() };
    let response = mesh.client().await.search(request).await.expect("search").into_inner();
    assert!(
        response.nodes.iter().all(|outcome| outcome.status() == v1::OutcomeStatus::Ok),
        "every node answers: {:?}",
        response.nodes
    );
    response.hits.into_iter().map(|hit| (hit.node, hit.collection, hit.doc_id, hit.score, hit.snippet)).collect()
}

fn documents(from: usize, to: usize) -> Vec<v1::Document> {
    let words = ["radar", "echo", "moon", "antenna", "signal"];
    (from..to)
        .map(|j| v1::Document {
            id: format!("d{j}"),
            collection: "notes".into(),
            title: format!("{} note {j}", words[j % words.len()]),
            body: format!(
                "the {} and the {} measured in run {j}",
                words[j % words.len()],
                words[(j / 5) % words.len()]
            ),
            acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
            ..Default::default()
        })
        .collect()
}

/// Waits (bounded) until the agent's log holds `line` `times` times.
async fn wait_log(mesh: &ProcessMesh, line: &str, times: usize) {
    let logged = mesh.wait_log("agent-1", line, times, Duration::from_secs(60)).await;
    assert!(logged, "agent-1 never logged {line:?} {times} times:\n{}", mesh.log("agent-1"));
}

/// The agent's log line of a writer released after idle at `generation`.
fn released_at(generation: u64) -> String {
    format!("index writer released after idle index.generation={generation} ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_merges_its_segments_once_writes_stop_and_answers_the_same() {
    let mesh = ProcessMesh::builder().agents(1).agent_env(0, "RAGMESH_WRITER_IDLE_RELEASE_MS", "200").start().await;
    let mut generation = 0;
    for batch in 0..3 {
        generation = mesh.ingest(0, documents(batch * 60, batch * 60 + 60)).await;
    }
    let queries = ["radar", "moon signal", "\"the antenna\"", "echo -radar"];
    let mut before = Vec::new();
    for query in queries {
        before.push(hits(&mesh, query).await);
    }
    assert!(before.iter().all(|hits| !hits.is_empty()), "{before:?}");

    let final_release = released_at(generation);
    wait_log(&mesh, &final_release, 1).await;
    let log = mesh.log("agent-1");
    let released = log.find(&final_release).expect("the release line");
    let merged = log[..released].lines().rev().find(|line| line.contains("idle index segments merged"));
    let merged = merged.expect("a merge before the final release");
    assert!(
        merged.contains(&format!("index.generation={generation} "))
            && merged.contains("segments.after=1 ")
            && merged.contains("index.written_during_merge=false"),
        "the last merge, at the final generation {generation}, left one segment: {merged}"
    );
    let mut after = Vec::new();
    for query in queries {
        after.push(hits(&mesh, query).await);
    }
    assert_eq!(after, before, "the same hits, scores and snippets from the merged index");

    // A write after the release creates the writer again and is found.
    let written = mesh.ingest(0, documents(1000, 1001)).await;
    assert_eq!(written, generation + 1, "one more commit");
    let found = hits(&mesh, "\"run 1000\"").await;
    assert_eq!(found.iter().map(|hit| hit.2.as_str()).collect::<Vec<_>>(), ["d1000"], "{found:?}");
    wait_log(&mesh, &released_at(written), 1).await;
}
