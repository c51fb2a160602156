//! Failure detection and recovery: a killed agent is down within 1 s, a silent one within 3 s;
//! searches keep answering with the survivors and say who was skipped; a restarted agent and a
//! restarted master find each other again, the master's registry coming back from sled.

use std::time::{Duration, Instant};

use ragmesh_e2e::{Mesh, docs_for, outcome_of, trace_init};
use ragmesh_master::node::NodeState;
use ragmesh_proto::v1::{self, OutcomeStatus, SkipReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_is_down_within_a_second_and_skipped_then_rejoins() {
    trace_init();
    let mut mesh = Mesh::builder().agents(3).start().await;
    for i in 0..3 {
        mesh.ingest(i, docs_for(i, 3)).await;
    }

    let killed_at = Instant::now();
    mesh.kill_agent(1);
    mesh.wait_state("agent-2", NodeState::Down, Duration::from_secs(5)).await;
    let detected = killed_at.elapsed();
    println!("kill detected after {detected:?}");
    assert!(detected <= Duration::from_secs(1), "killed agent detected after {detected:?}");

    let response = mesh.search(v1::SearchRequest { query: "mesh".into(), limit: 20, ..Default::default() }).await;
    let dead = outcome_of(&response, "agent-2");
    assert_eq!(dead.status(), OutcomeStatus::Skipped, "{dead:?}");
    assert_eq!(dead.skip_reason(), SkipReason::Down);
    assert_eq!(outcome_of(&response, "agent-1").status(), OutcomeStatus::Ok);
    assert_eq!(outcome_of(&response, "agent-3").status(), OutcomeStatus::Ok);
    assert_eq!(response.hits.len(), 6, "the survivors' hits still come back");
    let reason =
        mesh.master().registry().expect("registry").get("agent-2").expect("known").down_reason.expect("reason");
    assert!(reason.contains("health stream"), "{reason}");

    // Restart on the same data directory: it re-registers and its documents are searched again.
    mesh.restart_agent(1);
    mesh.wait_state("agent-2", NodeState::Up, Duration::from_secs(10)).await;
    let response = mesh.search(v1::SearchRequest { query: "beta".into(), ..Default::default() }).await;
    assert_eq!(outcome_of(&response, "agent-2").status(), OutcomeStatus::Ok);
    assert_eq!(response.hits.len(), 3, "agent-2's index survived its restart");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_is_suspect_then_down_within_three_seconds_and_recovers_when_it_wakes() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    // Let a heartbeat land so the silence starts right after one.
    mesh.wait_state("agent-1", NodeState::Up, Duration::from_secs(5)).await;
    let frozen_at = Instant::now();
    let thaw = mesh.freeze_agent(0);
    mesh.wait_state("agent-1", NodeState::Suspect, Duration::from_secs(5)).await;
    let suspect = frozen_at.elapsed();
    mesh.wait_state("agent-1", NodeState::Down, Duration::from_secs(5)).await;
    let down = frozen_at.elapsed();
    println!("silent agent: suspect after {suspect:?}, down after {down:?}");
    assert!(down <= Duration::from_secs(3), "silent agent detected after {down:?}");
    assert_eq!(mesh.master().registry().expect("registry").get("agent-2").expect("known").state, NodeState::Up);

    drop(thaw);
    mesh.wait_state("agent-1", NodeState::Up, Duration::from_secs(10)).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_master_reloads_its_registry_and_agents_reattach() {
    trace_init();
    let mut mesh = Mesh::builder().agents(3).start().await;
    for i in 0..3 {
        mesh.ingest(i, docs_for(i, 2)).await;
    }
    mesh.restart_master().await;

    // Straight after the restart the master knows every node from sled, before any reconnects.
    let (known, _) = ragmesh_e2e::wait_for("registry loaded", Duration::from_secs(10), || async {
        mesh.master().registry().map(|r| r.snapshot())
    })
    .await;
    let names: Vec<&str> = known.iter().map(|n| n.record.name.as_str()).collect();
    assert_eq!(names, ["agent-1", "agent-2", "agent-3"]);

    for i in 0..3 {
        mesh.wait_state(mesh.agent_name(i), NodeState::Up, Duration::from_secs(15)).await;
    }
    let response = mesh.search(v1::SearchRequest { query: "mesh".into(), limit: 20, ..Default::default() }).await;
    assert_eq!(response.hits.len(), 6);
    assert!(response.nodes.iter().all(|n| n.status() == OutcomeStatus::Ok), "{:?}", response.nodes);
    mesh.shutdown().await;
}
