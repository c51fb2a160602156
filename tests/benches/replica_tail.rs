//! Tail latency with one slow replica of two. A real master and two real agents (one shard
//! group, two replicas) over mTLS on loopback (the e2e harness); agent-2 sits behind a
//! [`DelayProxy`] that adds 50 ms to everything it sends back. Side by side, at concurrency 1
//! and 16, p50/p99 of searches through the master:
//! * (c) the group while both replicas are healthy (the proxy adds nothing);
//! * (a) the group with agent-2 slow: the master's p2c balancer (peak-EWMA) and hedging at the
//!   group's p95 should keep the tail near (c) (goal: p99(a) <= 1.2x p99(c));
//! * (b) the slow replica asked by name (`nodes: ["agent-2"]`): the "fixed replica" baseline.
//!
//! Each group phase is preceded by a warm-up (default 12 s: tower's hedge histogram needs a
//! full 10 s period of the traffic it hedges). Failed searches are counted, not timed; the
//! per-principal rate limit is lifted. Timings are printed, never asserted.
//!
//! `cargo bench -p ragmesh-e2e --bench replica_tail` (add `--profile dev` for a quick build).
//! DURATION (seconds per measured phase, default 5), WARMUP (seconds, default 12),
//! DELAY_MS (default 50).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Run, Tags, env_count, env_secs, ratio, report_first_failure, run_load, warm_up};
use ragmesh_e2e::{DelayProxy, Mesh, docs_for, shard_name};
use ragmesh_proto::v1::{self, AttemptKind, OutcomeStatus, master_service_client::MasterServiceClient};
use tonic::transport::Channel;

const SLOW: &str = "agent-2";

/// One search; tags: `a` = the slow replica answered, `b` = a hedge was sent.
async fn search(client: MasterServiceClient<Channel>, nodes: Vec<String>) -> Tags {
    let request = v1::SearchRequest { query: "mesh".into(), limit: 10, nodes, ..Default::default() };
    let response = match client.clone().search(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            report_first_failure("search", &status);
            return Tags { failed: true, ..Tags::default() };
        }
    };
    // Complete means: one hit list from one group (or the named node), and every node reported
    // either answered, was not needed, or lost to the replica that answered.
    let answered = response.nodes.iter().filter(|n| n.status() == OutcomeStatus::Ok).count();
    let slow_answered = response.nodes.iter().any(|n| n.node == SLOW && n.status() == OutcomeStatus::Ok);
    let hedged = response.groups.iter().flat_map(|g| &g.attempts).any(|a| a.kind() == AttemptKind::Hedge);
    Tags { failed: answered != 1 || response.hits.is_empty(), a: slow_answered, b: hedged }
}

fn searcher(
    client: MasterServiceClient<Channel>,
    nodes: Vec<String>,
) -> impl Fn(usize, usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = Tags> + Send>> + Clone + Send + 'static
{
    let nodes = Arc::new(nodes);
    move |_, _| {
        let client = client.clone();
        let nodes = nodes.as_ref().clone();
        Box::pin(search(client, nodes))
    }
}

struct Row {
    scenario: &'static str,
    concurrency: usize,
    run: Run,
}

#[tokio::main]
async fn main() {
    let duration = env_secs("DURATION", 5.0);
    let warm = env_secs("WARMUP", 12.0);
    let delay = Duration::from_millis(env_count("DELAY_MS", 50) as u64);

    let proxy = DelayProxy::start().await;
    let mesh = Mesh::builder()
        .agents(2)
        .replicas(2)
        .advertise(1, proxy.addr())
        // The bench's client is one principal: the default 200/s would measure the rate limit.
        .rate_limit(1_000_000, 1_000_000)
        .start()
        .await;
    proxy.set_upstream(mesh.agent_addr(1));
    let shard = shard_name(0);
    mesh.ingest_shard(&shard, docs_for(0, 200)).await;
    for name in ["agent-1", SLOW] {
        mesh.wait_in_sync(name, Duration::from_secs(30)).await;
    }
    let info = mesh.node_info(SLOW).await;
    assert_eq!(info.address, proxy.addr().to_string(), "the slow replica is reached through the proxy");
    let client = mesh.client().await;
    let group = searcher(client.clone(), Vec::new());
    let pinned = searcher(client.clone(), vec![SLOW.to_owned()]);
    let mut rows = Vec::new();

    // (c) all healthy: the same mesh, the proxy adding nothing.
    warm_up("the healthy group", 4, warm, group.clone()).await;
    for concurrency in [1, 16] {
        rows.push(Row {
            scenario: "(c) group, all healthy",
            concurrency,
            run: run_load(concurrency, duration, group.clone()).await,
        });
    }
    // (a) one replica slow, searched as a group.
    proxy.set_delay(delay);
    warm_up("the group with a slow replica", 4, warm, group.clone()).await;
    for concurrency in [1, 16] {
        rows.push(Row {
            scenario: "(a) group, one slow",
            concurrency,
            run: run_load(concurrency, duration, group.clone()).await,
        });
    }
    // (b) the slow replica by name.
    warm_up("the slow replica by name", 4, Duration::from_secs(2), pinned.clone()).await;
    for concurrency in [1, 16] {
        rows.push(Row {
            scenario: "(b) slow replica by name",
            concurrency,
            run: run_load(concurrency, duration, pinned.clone()).await,
        });
    }
    mesh.shutdown().await;
    drop(proxy);

    println!();
    println!(
        "replica tail: 1 group x 2 replicas, {SLOW} +{} ms; {:.0} s per row, warm-up {:.0} s ({} build)",
        delay.as_millis(),
        duration.as_secs_f64(),
        warm.as_secs_f64(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!(
        "{:<26} {:>4} {:>7} {:>8} {:>8} {:>8} {:>10} {:>7} {:>6}",
        "scenario", "conc", "n", "p50 ms", "p99 ms", "max ms", "slow ans.", "hedged", "failed"
    );
    for row in &rows {
        let run = &row.run;
        println!(
            "{:<26} {:>4} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>9.1}% {:>6.1}% {:>6}",
            row.scenario,
            row.concurrency,
            run.count(),
            run.p50(),
            run.p99(),
            run.quantile_ms(1.0),
            100.0 * run.a as f64 / run.count().max(1) as f64,
            100.0 * run.b as f64 / run.count().max(1) as f64,
            run.failed
        );
    }
    let find = |scenario: &str, concurrency: usize| {
        rows.iter().find(|r| r.scenario.starts_with(scenario) && r.concurrency == concurrency).map(|r| &r.run)
    };
    for concurrency in [1, 16] {
        let (Some(a), Some(b), Some(c)) =
            (find("(a)", concurrency), find("(b)", concurrency), find("(c)", concurrency))
        else {
            continue;
        };
        println!(
            "conc {concurrency:>2}: p99(a)/p99(c) = {} (goal <= 1.20x)   p99(b)/p99(a) = {}   p50(a)/p50(c) = {}",
            ratio(a.p99(), c.p99()),
            ratio(b.p99(), a.p99()),
            ratio(a.p50(), c.p50())
        );
    }
}
