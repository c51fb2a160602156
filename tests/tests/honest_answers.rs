//! The master's answers are honest about what happened: an acknowledged write is visible at
//! once, a search no node answered is an error naming every node's outcome, a node that dies
//! mid-search is `unavailable`, and only agents may hold a health stream open.

use std::time::{Duration, Instant};

use ragmesh_e2e::{Expect, Mesh, assert_outcomes, docs_for, trace_init};
use ragmesh_proto::v1::{self, SkipReason, membership_service_client::MembershipServiceClient};
use tonic::Code;

/// Heartbeats far apart, so nothing the master learns within a test comes from a heartbeat.
const SLOW_HEARTBEAT: Duration = Duration::from_secs(20);
const SLOW_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_write_is_visible_to_the_next_search_and_to_list_nodes() {
    trace_init();
    let mesh = Mesh::builder().agents(2).heartbeat(SLOW_HEARTBEAT, SLOW_HEARTBEAT_TIMEOUT).start().await;
    let mut client = mesh.client().await;
    for trial in 0..5 {
        let collection = format!("fresh-{trial}");
        let mut docs = docs_for(0, 3);
        for doc in &mut docs {
            doc.collection = collection.clone();
        }
        let written = mesh.ingest(0, docs).await;

        // The very next search, restricted to the new collection, is routed to the writer.
        let response = mesh
            .search(v1::SearchRequest {
                query: "mesh".into(),
                collections: vec![collection.clone()],
                ..Default::default()
            })
            .await;
        assert_outcomes(
            &response,
            &[
                ("agent-1", Expect::Ok { generation: written.generation, hits: 3 }),
                ("agent-2", Expect::Skipped(SkipReason::NotRouted)),
            ],
        );

        // ListNodes counts it too.
        let nodes = client.list_nodes(v1::ListNodesRequest {}).await.expect("list nodes").into_inner().nodes;
        let agent = nodes.iter().find(|n| n.name == "agent-1").expect("agent-1 listed");
        assert_eq!(agent.generation, written.generation, "{agent:?}");
        let counted = agent.collections.iter().find(|c| c.name == collection).map(|c| c.doc_count);
        assert_eq!(counted, Some(3), "{agent:?}");
    }

    // A removal is visible at once as well: the emptied collection is no longer routed to.
    let refs = (0..3).map(|j| v1::DocumentRef { collection: "fresh-0".into(), id: format!("alpha-{j}") }).collect();
    let removed = client
        .remove_documents(v1::RemoveDocumentsRequest { shard: String::new(), node: "agent-1".into(), refs })
        .await
        .expect("remove")
        .into_inner();
    let nodes = client.list_nodes(v1::ListNodesRequest {}).await.expect("list nodes").into_inner().nodes;
    let agent = nodes.iter().find(|n| n.name == "agent-1").expect("agent-1 listed");
    assert_eq!(agent.generation, removed.generation);
    assert!(agent.collections.iter().all(|c| c.name != "fresh-0"), "{agent:?}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_search_no_node_answered_is_an_error_naming_every_node() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    for i in 0..2 {
        mesh.ingest(i, docs_for(i, 2)).await;
    }
    let mut client = mesh.client().await;

    // Every node too slow: DEADLINE_EXCEEDED, not OK with zero hits.
    let thaw_1 = mesh.freeze_agent(0);
    let thaw_2 = mesh.freeze_agent(1);
    let failed = client
        .search(v1::SearchRequest { query: "mesh".into(), timeout_ms: 300, ..Default::default() })
        .await
        .expect_err("no node answered");
    drop((thaw_1, thaw_2));
    assert_eq!(failed.code(), Code::DeadlineExceeded, "{failed:?}");
    for node in ["agent-1: timeout (no answer within", "agent-2: timeout (no answer within"] {
        assert!(failed.message().contains(node), "{node} missing from {:?}", failed.message());
    }

    // A 1 ms budget never claims a node had 0 ms.
    let rushed = client
        .search(v1::SearchRequest { query: "mesh".into(), timeout_ms: 1, ..Default::default() })
        .await
        .expect_err("no node answers within 1 ms");
    assert_eq!(rushed.code(), Code::DeadlineExceeded, "{rushed:?}");
    assert!(rushed.message().contains("no answer within 1 ms"), "{:?}", rushed.message());
    assert!(!rushed.message().contains("within 0 ms"), "{:?}", rushed.message());

    // Collections that no node holds: NOT_FOUND, listing the ones that exist.
    let missing = client
        .search(v1::SearchRequest { query: "mesh".into(), collections: vec!["nope".into()], ..Default::default() })
        .await
        .expect_err("no such collection");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(missing.message().contains("nope") && missing.message().contains("docs"), "{:?}", missing.message());

    // The mesh still answers normally afterwards.
    let response = mesh.search(v1::SearchRequest { query: "mesh".into(), ..Default::default() }).await;
    assert_outcomes(
        &response,
        &[("agent-1", Expect::Ok { generation: 1, hits: 2 }), ("agent-2", Expect::Ok { generation: 1, hits: 2 })],
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_an_agent_killed_mid_search_is_unavailable_not_error_or_timeout() {
    trace_init();
    let mut mesh = Mesh::builder().agents(2).start().await;
    for i in 0..2 {
        mesh.ingest(i, docs_for(i, 2)).await;
    }
    // Warm the master's connections so the call to agent-2 travels on an open connection.
    mesh.search(v1::SearchRequest { query: "mesh".into(), ..Default::default() }).await;
    let deadline = Duration::from_secs(20);

    let thaw = mesh.freeze_agent(1);
    let mut client = mesh.client().await;
    let started = Instant::now();
    let search = tokio::spawn(async move {
        let timeout_ms = u32::try_from(deadline.as_millis()).expect("fits");
        client.search(v1::SearchRequest { query: "mesh".into(), timeout_ms, ..Default::default() }).await
    });
    // The search reaches agent-1 (which answers) and waits on agent-2, which dies without ever
    // reading it. Nothing outside the master shows that the call has left, so give it a moment:
    // the one sleep here only decides whether the call is cut mid-flight (the case under test)
    // or refused at connect; both must be reported unavailable, so it cannot make the test pass.
    tokio::time::sleep(Duration::from_millis(200)).await;
    mesh.kill_frozen_agent(1, thaw);
    let response = search.await.expect("search task").expect("agent-1 answered").into_inner();
    let elapsed = started.elapsed();
    assert_outcomes(&response, &[("agent-1", Expect::Ok { generation: 1, hits: 2 }), ("agent-2", Expect::Unavailable)]);
    assert!(elapsed < deadline / 2, "a dead node must not cost the deadline: answered after {elapsed:?}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_certificate_that_is_not_an_agent_cannot_hold_a_health_stream_open() {
    trace_init();
    let mesh = Mesh::builder().agents(1).heartbeat(SLOW_HEARTBEAT, SLOW_HEARTBEAT_TIMEOUT).start().await;
    let channel = mesh.channel_with(&mesh.client_tls()).await.expect("operator connects");
    let mut membership = MembershipServiceClient::new(channel);
    let started = Instant::now();
    // The stream opens and never sends anything.
    let refused = membership
        .health_stream(tokio_stream::pending::<v1::HealthStreamRequest>())
        .await
        .expect_err("an operator certificate is not an agent");
    let elapsed = started.elapsed();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("\"client\""), "{:?}", refused.message());
    // Refused when the stream opens, not when the first heartbeat is overdue.
    assert!(elapsed < SLOW_HEARTBEAT_TIMEOUT / 4, "refused only after {elapsed:?}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_an_unknown_join_token_id_is_not_found() {
    trace_init();
    let mesh = Mesh::builder().agents(0).start().await;
    let mut auth = mesh.auth_client().await;
    let missing = auth
        .revoke_join_token(v1::RevokeJoinTokenRequest { id: "no-such-token".into() })
        .await
        .expect_err("unknown id");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(missing.message().contains("no-such-token"), "{:?}", missing.message());
    assert!(missing.message().contains("ragmeshctl token join --list"), "{:?}", missing.message());
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_deeply_nested_query_is_refused_and_every_agent_survives() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    for i in 0..2 {
        mesh.ingest(i, docs_for(i, 2)).await;
    }
    let token = mesh.issue_token("mallory", "acme", &["search"]).await;
    let mut tenant = mesh.client_with_token(&token.access_token).await;
    // About half a KB, far under the 4 KiB query limit; before the fix it aborted every agent.
    for hostile in ["(".repeat(300) + "a" + &")".repeat(300), "NOT ".repeat(200) + "a", "(".repeat(2000)] {
        let refused = tenant
            .search(v1::SearchRequest { query: hostile.clone(), ..Default::default() })
            .await
            .expect_err("too deep");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("the limit is 32"), "{:?}", refused.message());
    }
    // Both agents are still up and answering.
    let response =
        mesh.search(v1::SearchRequest { query: "(mesh OR (alpha AND beta))".into(), ..Default::default() }).await;
    assert_outcomes(
        &response,
        &[("agent-1", Expect::Ok { generation: 1, hits: 2 }), ("agent-2", Expect::Ok { generation: 1, hits: 2 })],
    );
    mesh.shutdown().await;
}
