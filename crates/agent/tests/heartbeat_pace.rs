//! Heartbeat pacing, from the agent's side: a real agent attached to the stand-in master (a
//! real tonic MembershipService over a loopback socket) beats at whatever interval the master's
//! acknowledgements carry, slower or faster, without re-registering.
//!
//! Counts over windows, with bounds far from what either pace would give: a loaded machine only
//! delays heartbeats, so the upper bound is firm and the lower one has a wide margin.

use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;

use common::{Master, start_agent};

/// Heartbeats the stand-in master receives within `window`.
async fn beats_within(master: &mut Master, window: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + window;
    let mut beats = 0;
    while tokio::time::timeout_at(deadline, master.heartbeats.recv()).await.is_ok() {
        beats += 1;
    }
    beats
}

/// Waits for the next heartbeat and the one after it, so that an acknowledgement carrying the
/// current pace has certainly reached the agent (it acknowledges the first).
async fn settle(master: &mut Master) {
    master.next_heartbeat("after the pace changed").await;
    master.next_heartbeat("at the new pace").await;
}

#[tokio::test]
async fn an_agent_beats_at_the_interval_its_master_acknowledges_slower_or_faster() {
    let mut master = Master::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = start_agent("paced", &master.addr, dir.path()).await;
    master.next_registration().await;

    // At its own 50 ms (the stand-in's acknowledgements say nothing): about 40 in 2 s.
    let own = beats_within(&mut master, Duration::from_secs(2)).await;
    assert!(own >= 8, "{own} heartbeats in 2 s at 50 ms");

    // Told 1.5 s: at most 4.5 / 1.5 + 1 in 4.5 s, however the machine is loaded.
    master.pace_ms.store(1500, Ordering::Relaxed);
    settle(&mut master).await;
    let slow = beats_within(&mut master, Duration::from_millis(4500)).await;
    assert!(slow <= 4, "{slow} heartbeats in 4.5 s at a 1.5 s pace");
    assert!(slow >= 1, "the agent stopped beating at the slower pace");

    // Faster from the acknowledgement that says so, not once the slow interval has run out.
    master.pace_ms.store(50, Ordering::Relaxed);
    master.next_heartbeat("acknowledged with the faster pace").await;
    let acknowledged = tokio::time::Instant::now();
    master.next_heartbeat("at the faster pace").await;
    let gap = acknowledged.elapsed();
    assert!(gap < Duration::from_millis(1000), "the next heartbeat came {gap:?} after the faster pace, not ~50 ms");
    let fast = beats_within(&mut master, Duration::from_secs(2)).await;
    assert!(fast >= 8, "{fast} heartbeats in 2 s back at 50 ms");

    // Nothing above lost the session.
    assert!(master.registrations.try_recv().is_err(), "the agent re-registered");
    assert!(matches!(*agent.link_status().borrow(), ragmesh_agent::LinkStatus::Attached { .. }));
    agent.shutdown().await.expect("shuts down cleanly");
}
