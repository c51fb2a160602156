//! One master, many agents (issue 11): a real master process (over mTLS, real sled) and AGENTS
//! simulated agents in this process (`ragmesh_e2e::sim`: each with its own certificate from the
//! mesh CA, registering with a join token and holding a real health stream, asking for a
//! heartbeat every second and beating at the pace the master grants, each serving the agent
//! gRPC service on its own listener with synthetic answers).
//!
//! Prints, each against its goal as a ratio:
//! - admission: from the first registration attempt until the master lists every agent `up`
//!   (`ListNodes`), goal < 10 s;
//! - heartbeat CPU: the master's CPU (utime + stime from /proc) over a quiet window of
//!   heartbeats only, as % of one core (goal <= 5 %) and per heartbeat, at the pace the master
//!   grants under its heartbeat budget (`--max-heartbeats-per-second`, 200 by default: 1,000
//!   agents beat every 5 s; MAX_HEARTBEATS_PER_SECOND=0 measures the unpaced fleet);
//! - master RSS (VmRSS) after admission and after the searches, goal <= 150 MB;
//! - a search naming SEARCH_NODES (100) of the agents: latency (p50, max) and the master's CPU per
//!   search; the bench fails unless every node outcome of every search is `ok`.
//!
//! `cargo build --release --bins && RAGMESH_BIN_DIR=$PWD/target/release cargo bench -p ragmesh-e2e --bench scale`
//! (an absolute path: benches run from `tests/`). Without `--bench` (`cargo test -p ragmesh-e2e
//! --bench scale`, debug daemons from `cargo build --workspace --bins`) it is a smoke run: 8
//! agents, a 3 s window. Settings: AGENTS (1000), WINDOW_SECS (20), SEARCH_NODES (100),
//! SEARCHES (20), HEARTBEAT_MS (1000, the agent's default), MAX_HEARTBEATS_PER_SECOND (the
//! master's default).
//!
//! File descriptors: this process needs about two per agent (its listener and its connection to
//! the master) and the master about one; both are checked against RLIMIT_NOFILE up front (the
//! master inherits this process's limit), with a message saying how to raise it.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{env_count, env_secs, pid_ticks, process_ticks};
use ragmesh_e2e::daemons::ProcessMesh;
use ragmesh_e2e::sim::{SimConfig, SimFleet, SimIdentity};
use ragmesh_proto::v1::{self, master_service_client::MasterServiceClient};
use tonic::transport::Channel;

/// Goals of issue 11.
const GOAL_ADMISSION: Duration = Duration::from_secs(10);
const GOAL_HEARTBEAT_CORE_PCT: f64 = 5.0;
const GOAL_RSS_MB: f64 = 150.0;
/// Longest the bench waits for every agent to be up before it fails.
const ADMISSION_DEADLINE: Duration = Duration::from_secs(180);
/// Pause between admission and the quiet window: stragglers' first acks, the registry settling.
const SETTLE: Duration = Duration::from_secs(3);

/// The soft RLIMIT_NOFILE of process `pid` ("self" for this one), from /proc.
fn open_files_limit(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// VmRSS of process `pid` in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

/// `(up, listed)`: how many of `names` the master lists, and how many of those are up.
async fn count_up(client: &mut MasterServiceClient<Channel>, names: &BTreeSet<&str>) -> (usize, usize) {
    let Ok(response) = client.list_nodes(v1::ListNodesRequest {}).await else { return (0, 0) };
    let nodes = response.into_inner().nodes;
    let ours: Vec<&v1::NodeInfo> = nodes.iter().filter(|n| names.contains(n.name.as_str())).collect();
    let up = ours.iter().filter(|n| n.state() == v1::NodeState::Up).count();
    (up, ours.len())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let agents = env_count("AGENTS", if full { 1000 } else { 8 });
    let window = env_secs("WINDOW_SECS", if full { 20.0 } else { 3.0 });
    let search_nodes = env_count("SEARCH_NODES", 100).min(agents);
    let searches = env_count("SEARCHES", if full { 20 } else { 3 });
    let interval = Duration::from_millis(env_count("HEARTBEAT_MS", 1000) as u64);
    // 0 is meaningful here (pacing off), so not read with env_count.
    let budget: u32 = std::env::var("MAX_HEARTBEATS_PER_SECOND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ragmesh_config::DEFAULT_MAX_HEARTBEATS_PER_SECOND);
    let ticks_per_sec = common::clock_ticks();
    println!("daemons from {}", ragmesh_e2e::daemons::bin_dir().display());

    let need_here = agents as u64 * 2 + search_nodes as u64 + 256;
    let limit_here = open_files_limit("self").unwrap_or(0);
    assert!(
        limit_here >= need_here,
        "RLIMIT_NOFILE is {limit_here}, {agents} agents need about {need_here} here: raise it (`ulimit -n {need_here}`) or lower AGENTS"
    );

    // Rate limits far above the bench's few calls: a refusal would be a failed search.
    let mesh = ProcessMesh::builder()
        .master_arg("--rate-limit-rps")
        .master_arg("50000")
        .master_arg("--rate-limit-burst")
        .master_arg("50000")
        .master_arg("--max-heartbeats-per-second")
        .master_arg(budget.to_string())
        .start()
        .await;
    let master = mesh.master_pid().expect("the master runs");
    let limit_master = open_files_limit(&master.to_string()).unwrap_or(0);
    let need_master = agents as u64 + search_nodes as u64 + 256;
    assert!(
        limit_master >= need_master,
        "the master's RLIMIT_NOFILE is {limit_master}, {agents} agents need about {need_master}: raise it or lower AGENTS"
    );
    println!("open files limit: bench {limit_here}, master {limit_master}");

    let certs = mesh.dir().join("certs");
    let ca = ragmesh_tls::devca::DevCa::load(&certs).expect("the mesh CA");
    let issued = Instant::now();
    let identities: Vec<SimIdentity> = (1..=agents)
        .map(|i| {
            let name = format!("sim-{i:04}");
            let cert = ca.issue(&name, &[], 30).expect("an agent certificate");
            SimIdentity { name, cert }
        })
        .collect();
    println!("{agents} agent certificates issued in {:.2} s", issued.elapsed().as_secs_f64());
    let token = mesh
        .auth_client()
        .await
        .create_join_token(v1::CreateJoinTokenRequest {
            ttl_seconds: 3600,
            uses: u32::try_from(agents).expect("AGENTS fits a u32"),
            note: "scale bench".into(),
        })
        .await
        .expect("a join token")
        .into_inner()
        .token;
    let config =
        SimConfig { master: mesh.master_addr(), ca_pem: ca.cert_pem().to_owned(), join_token: token, interval };
    let mut client = mesh.client().await;

    // Admission: every agent starts at once, as after a datacentre-wide restart.
    let master_before = pid_ticks(master);
    let started = Instant::now();
    let fleet = SimFleet::start(&config, identities);
    let names: BTreeSet<&str> = fleet.names().iter().map(String::as_str).collect();
    let mut last_report = Instant::now();
    let admission = loop {
        let (up, listed) = count_up(&mut client, &names).await;
        if up == agents {
            break started.elapsed();
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  {:>5.1} s: {up} up, {listed} listed, {} attached, {} failures (last: {:?})",
                started.elapsed().as_secs_f64(),
                fleet.stats().attached.load(std::sync::atomic::Ordering::Relaxed),
                fleet.stats().failures.load(std::sync::atomic::Ordering::Relaxed),
                fleet.stats().last_error(),
            );
        }
        assert!(
            started.elapsed() < ADMISSION_DEADLINE,
            "only {up} of {agents} agents up after {ADMISSION_DEADLINE:?} ({} ended; last failure: {:?})\n{}",
            fleet.ended(),
            fleet.stats().last_error(),
            mesh.log("master").lines().rev().take(20).collect::<Vec<_>>().join("\n"),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let admission_cpu = (pid_ticks(master) - master_before) as f64 / ticks_per_sec;
    let admission_failures = fleet.stats().failures.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(SETTLE).await;
    let rss_admitted = rss_mb(master);

    // The quiet window: heartbeats only (nothing else calls the master meanwhile).
    let stats = fleet.stats();
    let failures_before = stats.failures.load(std::sync::atomic::Ordering::Relaxed);
    let (beats_before, master_before, bench_before) =
        (stats.heartbeats.load(std::sync::atomic::Ordering::Relaxed), pid_ticks(master), process_ticks());
    // Announced, so a profiler can attach for the window: `perf record -g -p PID`.
    println!("quiet window of {:.0} s: master pid {master}", window.as_secs_f64());
    let window_started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = window_started.elapsed().as_secs_f64();
    let beats = stats.heartbeats.load(std::sync::atomic::Ordering::Relaxed) - beats_before;
    let master_cpu = (pid_ticks(master) - master_before) as f64 / ticks_per_sec;
    let bench_cpu = (process_ticks() - bench_before) as f64 / ticks_per_sec;
    let failures_in_window = stats.failures.load(std::sync::atomic::Ordering::Relaxed) - failures_before;
    let (up_after, _) = count_up(&mut client, &names).await;
    assert_eq!(failures_in_window, 0, "sessions were lost during the quiet window: {:?}", stats.last_error());
    assert_eq!(up_after, agents, "agents went down during the quiet window");
    assert!(beats > 0, "no heartbeats were sent in the window");
    let heartbeat_pct = master_cpu / elapsed * 100.0;
    let per_heartbeat_us = master_cpu * 1e6 / beats as f64;
    let paced_ms = stats.interval_ms.load(std::sync::atomic::Ordering::Relaxed);

    // A search naming SEARCH_NODES agents, each its own call; every outcome must be ok.
    let named: Vec<String> = fleet.names().iter().take(search_nodes).cloned().collect();
    let mut latencies = Vec::with_capacity(searches);
    let master_before = pid_ticks(master);
    for n in 0..searches {
        let merge = if n % 2 == 0 { "rrf" } else { "global_bm25" };
        let request = v1::SearchRequest {
            query: format!("federated mesh search {n}"),
            limit: 10,
            nodes: named.clone(),
            timeout_ms: 10_000,
            merge: merge.to_owned(),
            bypass_cache: true,
            ..Default::default()
        };
        let begun = Instant::now();
        let response = client.search(request).await.expect("the search over the named agents answers").into_inner();
        latencies.push(begun.elapsed());
        let ok = response.nodes.iter().filter(|o| o.status() == v1::OutcomeStatus::Ok).count();
        let failed: Vec<String> = response
            .nodes
            .iter()
            .filter(|o| o.status() != v1::OutcomeStatus::Ok)
            .take(5)
            .map(|o| format!("{}: {:?} {}", o.node, o.status(), o.message))
            .collect();
        assert_eq!(response.nodes.len(), search_nodes, "one outcome per named node ({merge})");
        assert_eq!(ok, search_nodes, "every named node answers ok ({merge}); first failures: {failed:?}");
        assert_eq!(response.hits.len(), 10, "a full page of hits from the synthetic answers ({merge})");
    }
    let search_cpu_ms = (pid_ticks(master) - master_before) as f64 / ticks_per_sec * 1000.0 / searches as f64;
    latencies.sort_unstable();
    let p50 = latencies[latencies.len() / 2].as_secs_f64() * 1000.0;
    let max = latencies.last().expect("at least one search").as_secs_f64() * 1000.0;
    let rss_searched = rss_mb(master);

    println!(
        "\none master, {agents} simulated agents (asking for a heartbeat every {} ms, granted {paced_ms} ms under a budget of {budget}/s), {} cores here",
        interval.as_millis(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "admission      {:>8.2} s    goal < {:>5.1} s   {:>6.2}x  {}   (master cpu {admission_cpu:.2} s, {admission_failures} attach retries)",
        admission.as_secs_f64(),
        GOAL_ADMISSION.as_secs_f64(),
        admission.as_secs_f64() / GOAL_ADMISSION.as_secs_f64(),
        verdict(admission < GOAL_ADMISSION),
    );
    println!(
        "heartbeat cpu  {heartbeat_pct:>8.2} %    goal <= {GOAL_HEARTBEAT_CORE_PCT:>4.1} %   {:>6.2}x  {}   ({per_heartbeat_us:.1} us per heartbeat, {beats} heartbeats in {elapsed:.1} s; the cost per heartbeat includes the idle fleet's fixed cost, so it rises as the pace slows; simulated agents' process {:.1} % of a core)",
        heartbeat_pct / GOAL_HEARTBEAT_CORE_PCT,
        verdict(heartbeat_pct <= GOAL_HEARTBEAT_CORE_PCT),
        bench_cpu / elapsed * 100.0,
    );
    println!(
        "master rss     {rss_admitted:>8.1} MB   goal <= {GOAL_RSS_MB:>4.0} MB  {:>6.2}x  {}   (after the searches {rss_searched:.1} MB)",
        rss_admitted.max(rss_searched) / GOAL_RSS_MB,
        verdict(rss_admitted.max(rss_searched) <= GOAL_RSS_MB),
    );
    println!(
        "search         {search_nodes} of {search_nodes} nodes ok in each of {searches} searches (rrf and global_bm25 alternating): p50 {p50:.1} ms, max {max:.1} ms, master cpu {search_cpu_ms:.2} ms per search ({:.1} us per node call)",
        search_cpu_ms * 1000.0 / search_nodes as f64,
    );
}
