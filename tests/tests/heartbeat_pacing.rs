//! Heartbeat pacing end to end: a real master process (mTLS, sled) with a budget of 10
//! heartbeats per second, and 30 simulated agents (`ragmesh_e2e::sim`: each with its own
//! certificate from the mesh CA and a real health stream, paced by the real agent's helpers)
//! that ask for a heartbeat every 200 ms. The master spreads them to one every 3 s, the fleet
//! stays within the budget, and no agent goes down although 3 s is longer than the master's
//! configured 2.5 s timeout: the timeout stretched with the pace.
//!
//! Counts over windows, with bounds far from what the unpaced fleet would send (150/s): a loaded
//! machine only delays heartbeats, so the upper bound is firm and the lower one has a wide margin.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ragmesh_e2e::daemons::ProcessMesh;
use ragmesh_e2e::sim::{SimConfig, SimFleet, SimIdentity};
use ragmesh_proto::v1;

const AGENTS: usize = 30;
const BUDGET: u64 = 10;
/// AGENTS / BUDGET seconds.
const PACE: Duration = Duration::from_secs(3);

/// How many of `names` the master lists as up.
async fn up(mesh: &ProcessMesh, names: &BTreeSet<String>) -> usize {
    let Ok(response) = mesh.client().await.list_nodes(v1::ListNodesRequest {}).await else { return 0 };
    let nodes = response.into_inner().nodes;
    nodes.iter().filter(|n| names.contains(&n.name) && n.state() == v1::NodeState::Up).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_over_the_heartbeat_budget_is_spread_and_stays_up_at_the_slower_pace() {
    let mesh =
        ProcessMesh::builder().master_arg("--max-heartbeats-per-second").master_arg(BUDGET.to_string()).start().await;
    let ca = ragmesh_tls::devca::DevCa::load(&mesh.dir().join("certs")).expect("the mesh CA");
    let identities: Vec<SimIdentity> = (1..=AGENTS)
        .map(|i| {
            let name = format!("paced-{i:02}");
            SimIdentity { cert: ca.issue(&name, &[], 1).expect("an agent certificate"), name }
        })
        .collect();
    let token = mesh
        .auth_client()
        .await
        .create_join_token(v1::CreateJoinTokenRequest { ttl_seconds: 600, uses: AGENTS as u32, note: "pacing".into() })
        .await
        .expect("a join token")
        .into_inner()
        .token;
    let config = SimConfig {
        master: mesh.master_addr(),
        ca_pem: ca.cert_pem().to_owned(),
        join_token: token,
        interval: Duration::from_millis(200),
    };
    let fleet = SimFleet::start(&config, identities);
    let names: BTreeSet<String> = fleet.names().iter().cloned().collect();
    let admitted = Instant::now();
    while up(&mesh, &names).await < AGENTS {
        assert!(
            admitted.elapsed() < Duration::from_secs(60),
            "not every agent came up; last failure: {:?}",
            fleet.stats().last_error()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One paced interval and more: every agent has had an acknowledgement with the final pace.
    tokio::time::sleep(PACE + Duration::from_secs(1)).await;
    let stats = fleet.stats();
    assert_eq!(stats.interval_ms.load(Ordering::Relaxed), PACE.as_millis() as u64, "the pace the master grants");

    let window = Duration::from_secs(9);
    let (beats_before, failures_before) =
        (stats.heartbeats.load(Ordering::Relaxed), stats.failures.load(Ordering::Relaxed));
    tokio::time::sleep(window).await;
    let beats = stats.heartbeats.load(Ordering::Relaxed) - beats_before;
    let budget = BUDGET * window.as_secs();
    println!("{beats} heartbeats in {window:?} from {AGENTS} agents; budget {budget}, unpaced 1350");
    assert!(beats <= budget * 3 / 2, "{beats} heartbeats in {window:?}: over the budget of {BUDGET}/s");
    assert!(beats >= budget / 2, "{beats} heartbeats in {window:?}: the fleet stopped beating");
    assert_eq!(stats.failures.load(Ordering::Relaxed), failures_before, "sessions lost: {:?}", stats.last_error());
    assert_eq!(up(&mesh, &names).await, AGENTS, "every agent is still up after 3 paced intervals");
}
