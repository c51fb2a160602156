//! The caller's deadline bounds the whole search: a node that does not answer in time is
//! reported `timeout` and the others' hits still come back on time.

use std::time::{Duration, Instant};

use ragmesh_e2e::{Mesh, docs_for, outcome_of, trace_init};
use ragmesh_proto::v1::{self, OutcomeStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_is_reported_timeout_and_the_answer_arrives_on_time() {
    trace_init();
    let mesh = Mesh::builder().agents(3).start().await;
    for i in 0..3 {
        mesh.ingest(i, docs_for(i, 3)).await;
    }
    let mut client = mesh.client().await;
    // Warm the master's connections to every node so connection setup does not count.
    mesh.search(v1::SearchRequest { query: "mesh".into(), ..Default::default() }).await;

    let thaw = mesh.freeze_agent(2);
    let started = Instant::now();
    let response = client
        .search(v1::SearchRequest { query: "mesh".into(), limit: 20, timeout_ms: 400, ..Default::default() })
        .await
        .expect("search succeeds despite a slow node")
        .into_inner();
    let elapsed = started.elapsed();
    drop(thaw);
    println!("search with a frozen node answered in {elapsed:?}");

    assert!(elapsed < Duration::from_millis(900), "answered after {elapsed:?}, deadline was 400 ms");
    let slow = outcome_of(&response, "agent-3");
    assert_eq!(slow.status(), OutcomeStatus::Timeout, "{slow:?}");
    assert_eq!(outcome_of(&response, "agent-1").status(), OutcomeStatus::Ok);
    assert_eq!(outcome_of(&response, "agent-2").status(), OutcomeStatus::Ok);
    assert_eq!(response.hits.len(), 6);

    // The gRPC deadline of the caller wins when it is shorter than timeout_ms.
    let thaw = mesh.freeze_agent(2);
    let mut request =
        tonic::Request::new(v1::SearchRequest { query: "mesh".into(), timeout_ms: 5000, ..Default::default() });
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let response = client.search(request).await.expect("answers within the grpc deadline").into_inner();
    let elapsed = started.elapsed();
    drop(thaw);
    assert!(elapsed < Duration::from_millis(800), "answered after {elapsed:?}");
    assert_eq!(outcome_of(&response, "agent-3").status(), OutcomeStatus::Timeout);
    mesh.shutdown().await;
}
