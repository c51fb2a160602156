//! The caller's deadline bounds the whole search: a node that does not answer in time is
//! reported `timeout` and the others' hits still come back on time. Time bounds are derived
//! from the deadlines the test sets, well apart from the master's own default search timeout so
//! that a deadline that was ignored cannot pass for one that was honoured.

use std::time::{Duration, Instant};

use ragmesh_e2e::{Expect, Mesh, assert_outcomes, docs_for, trace_init};
use ragmesh_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_is_reported_timeout_and_the_answer_arrives_on_time() {
    trace_init();
    let mesh = Mesh::builder().agents(3).start().await;
    let mut generations = Vec::new();
    for i in 0..3 {
        generations.push(mesh.ingest(i, docs_for(i, 3)).await.generation);
    }
    let mut client = mesh.client().await;
    // Warm the master's connections to every node so connection setup does not count.
    let warm = mesh.search(v1::SearchRequest { query: "mesh".into(), ..Default::default() }).await;
    let answered = |i: usize| Expect::Ok { generation: generations[i], hits: 3 };
    assert_outcomes(&warm, &[("agent-1", answered(0)), ("agent-2", answered(1)), ("agent-3", answered(2))]);

    // The request's own deadline, far below the master's default.
    let deadline = Duration::from_secs(1);
    let fallback = mesh.search_timeout();
    assert!(deadline * 4 <= fallback, "the default {fallback:?} must stay far above the deadline {deadline:?}");
    let thaw = mesh.freeze_agent(2);
    let started = Instant::now();
    let timeout_ms = u32::try_from(deadline.as_millis()).expect("deadline fits in u32");
    let response = client
        .search(v1::SearchRequest { query: "mesh".into(), limit: 20, timeout_ms, ..Default::default() })
        .await
        .expect("search succeeds despite a slow node")
        .into_inner();
    let elapsed = started.elapsed();
    drop(thaw);
    println!("search with a frozen node answered in {elapsed:?} (deadline {deadline:?}, default {fallback:?})");

    assert_outcomes(&response, &[("agent-1", answered(0)), ("agent-2", answered(1)), ("agent-3", Expect::Timeout)]);
    assert_eq!(response.hits.len(), 6);
    // It waited for the frozen node (not giving up at once: the statistics phase of the default
    // global-BM25 merge gives each group up to half of the deadline, and a group that misses it
    // is not asked to search), and not much past the deadline: twice the deadline is still half
    // of the default it would have waited for otherwise.
    assert!(elapsed >= deadline / 4, "answered after only {elapsed:?}, deadline was {deadline:?}");
    assert!(elapsed < deadline * 2, "answered after {elapsed:?}, deadline was {deadline:?}");

    // The gRPC deadline of the caller wins when it is shorter than timeout_ms. The client
    // enforces its own deadline, so a successful answer is the proof that the master kept to it.
    let grpc_deadline = Duration::from_secs(1);
    let asked = grpc_deadline * 5;
    let thaw = mesh.freeze_agent(2);
    let mut request = tonic::Request::new(v1::SearchRequest {
        query: "mesh".into(),
        timeout_ms: u32::try_from(asked.as_millis()).expect("fits in u32"),
        ..Default::default()
    });
    request.set_timeout(grpc_deadline);
    let started = Instant::now();
    let response = client.search(request).await.expect("answers within the grpc deadline").into_inner();
    let elapsed = started.elapsed();
    drop(thaw);
    println!("search with a frozen node and a gRPC deadline of {grpc_deadline:?} answered in {elapsed:?}");
    assert_outcomes(&response, &[("agent-1", answered(0)), ("agent-2", answered(1)), ("agent-3", Expect::Timeout)]);
    assert!(elapsed < asked, "answered after {elapsed:?}: the master waited for timeout_ms {asked:?}");
    mesh.shutdown().await;
}
