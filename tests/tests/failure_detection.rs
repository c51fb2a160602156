//! Failure detection and recovery: a killed agent is down as soon as its connection closes,
//! long before a heartbeat could be missed; a silent one turns suspect, then down once the
//! heartbeat timeout has passed (and not before); searches keep answering with the survivors
//! and say who was skipped; a restarted agent and a restarted master find each other again, the
//! master's registry coming back from sled. Time bounds are derived from the mesh's configured
//! heartbeat interval and timeout, with headroom for a loaded machine.

use std::time::{Duration, Instant, SystemTime};

use ragmesh_e2e::{
    Expect, Mesh, assert_no_hits_or_no_match, assert_outcomes, docs_for, outcome_of, trace_init, wait_for,
};
use ragmesh_master::node::NodeState;
use ragmesh_proto::v1::{self, OutcomeStatus, SkipReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_is_down_at_once_and_skipped_then_rejoins() {
    trace_init();
    let mut mesh = Mesh::builder().agents(3).start().await;
    let mut generations = Vec::new();
    for i in 0..3 {
        generations.push(mesh.ingest(i, docs_for(i, 3)).await.generation);
    }
    let timeout = mesh.heartbeat_timeout();

    let killed_at = Instant::now();
    mesh.kill_agent(1);
    mesh.wait_state("agent-2", NodeState::Down, timeout * 4).await;
    let detected = killed_at.elapsed();
    println!("kill detected after {detected:?} (heartbeat timeout {timeout:?})");
    // The closed connection tells, not the silence: the reason says so, and it came before the
    // heartbeat timeout could have run out (it takes milliseconds; the bound leaves the rest).
    let reason =
        mesh.master().registry().expect("registry").get("agent-2").expect("known").down_reason.expect("reason");
    assert!(reason.contains("health stream"), "{reason}");
    assert!(detected < timeout, "killed agent detected after {detected:?}, as late as silence would be");

    let response = mesh.search(v1::SearchRequest { query: "mesh".into(), limit: 20, ..Default::default() }).await;
    assert_outcomes(
        &response,
        &[
            ("agent-1", Expect::Ok { generation: generations[0], hits: 3 }),
            ("agent-2", Expect::Skipped(SkipReason::Down)),
            ("agent-3", Expect::Ok { generation: generations[2], hits: 3 }),
        ],
    );
    assert_eq!(response.hits.len(), 6, "the survivors' hits still come back");

    // Restart on the same data directory: it re-registers and its documents are searched again.
    mesh.restart_agent(1);
    mesh.wait_state("agent-2", NodeState::Up, Duration::from_secs(10)).await;
    let response = mesh.search(v1::SearchRequest { query: "beta".into(), ..Default::default() }).await;
    assert_eq!(response.nodes.len(), 3, "{:?}", response.nodes);
    let beta = outcome_of(&response, "agent-2");
    assert_eq!((beta.status(), beta.hit_count, beta.generation), (OutcomeStatus::Ok, 3, generations[1]));
    // The others hold no "beta".
    for (i, name) in [(0, "agent-1"), (2, "agent-3")] {
        assert_no_hits_or_no_match(&response, name, generations[i]);
    }
    assert_eq!(response.hits.len(), 3, "agent-2's index survived its restart");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_is_suspect_then_down_after_the_heartbeat_timeout_and_recovers_when_it_wakes() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    let (interval, timeout) = (mesh.heartbeat_interval(), mesh.heartbeat_timeout());
    let registry = mesh.master().registry().expect("registry").clone();
    let last_heartbeat = |name: &str| registry.get(name).and_then(|n| n.last_heartbeat);

    // Freeze right after a heartbeat lands, so the silence starts with the freeze.
    let before = last_heartbeat("agent-1");
    wait_for("a fresh heartbeat from agent-1", interval * 5, || async {
        (last_heartbeat("agent-1") > before).then_some(())
    })
    .await;
    let frozen_at = Instant::now();
    let thaw = mesh.freeze_agent(0);

    // Generous: the timeout, plus two heartbeat intervals for a loaded machine.
    let within = timeout + 2 * interval;
    mesh.wait_state("agent-1", NodeState::Suspect, within * 2).await;
    let (suspect, suspect_seen) = (frozen_at.elapsed(), SystemTime::now());
    mesh.wait_state("agent-1", NodeState::Down, within * 2).await;
    let (down, down_seen) = (frozen_at.elapsed(), SystemTime::now());
    println!("silent agent: suspect after {suspect:?}, down after {down:?} (timeout {timeout:?}, bound {within:?})");

    let view = registry.get("agent-1").expect("known");
    let reason = view.down_reason.expect("reason");
    assert!(reason.contains("no heartbeat"), "down for its silence, not a broken connection: {reason}");
    // Never early: suspect once a heartbeat is overdue (1.5 intervals, at most half the timeout),
    // down only after the whole timeout of silence. The registry stamps heartbeats with the wall
    // clock while the master times silence on the monotonic one: allow 1% for clock slew.
    let last = view.last_heartbeat.expect("agent-1 sent heartbeats");
    let silence = |seen: SystemTime| seen.duration_since(last).unwrap_or_default();
    let overdue = (interval * 3 / 2).min(timeout / 2);
    assert!(silence(suspect_seen) >= overdue.mul_f64(0.99), "suspect after {:?} of silence", silence(suspect_seen));
    assert!(silence(down_seen) >= timeout.mul_f64(0.99), "down after only {:?} of silence", silence(down_seen));
    // Never late.
    assert!(down <= within, "silent agent detected after {down:?}, bound {within:?}");
    assert_eq!(registry.get("agent-2").expect("known").state, NodeState::Up, "the other agent is unaffected");

    drop(thaw);
    mesh.wait_state("agent-1", NodeState::Up, Duration::from_secs(10)).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_master_reloads_its_registry_and_agents_reattach() {
    trace_init();
    let mut mesh = Mesh::builder().agents(3).start().await;
    let mut generations = Vec::new();
    for i in 0..3 {
        generations.push(mesh.ingest(i, docs_for(i, 2)).await.generation);
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
    assert_outcomes(
        &response,
        &[
            ("agent-1", Expect::Ok { generation: generations[0], hits: 2 }),
            ("agent-2", Expect::Ok { generation: generations[1], hits: 2 }),
            ("agent-3", Expect::Ok { generation: generations[2], hits: 2 }),
        ],
    );
    assert_eq!(response.hits.len(), 6);
    mesh.shutdown().await;
}
