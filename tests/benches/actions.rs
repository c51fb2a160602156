//! What a remote action costs, end to end through the master (issue 9, "Measure"): a mesh of
//! real processes (a master and 3 agents over mTLS) whose agents declare a no-op `exec` action
//! (`/bin/true`), a no-op `http` action (a POST to a tiny HTTP server this bench runs beside
//! them) and a transactional `exec` action (prepare, commit and abort all `/bin/true`). Every
//! call goes through the master's API with a fresh idempotency key, as `ragmeshctl` sends, and
//! is checked (every node ran ok; the transaction committed), so a fast failure is counted, not
//! timed. Scenarios, each a closed loop of one caller:
//! * one node: the cheapest built-in (`node.undrain` on a node that is not drained: an unlink of
//!   a missing file, nothing else), the `exec` and the `http` no-ops;
//! * the same three broadcast to all 3 nodes (ratio to one node);
//! * a 3-node transaction of the transactional action, against the naive way: three
//!   independent `ExecuteAction` calls of the same action (each runs prepare then commit, the
//!   same two processes per node), one after another, and the three in parallel;
//! * a transaction writing one document into each of the 3 shard groups, against three plain
//!   `IngestDocuments` calls (one after another, and in parallel).
//!
//! Rounds alternate between the scenarios (order rotated each round), so drift on a shared
//! machine falls on all alike, and every epoch starts fresh processes; p50/p90/p99, the
//! daemons' CPU per call (the four daemons from /proc, and the master's share; the spawned `/bin/true` processes
//! themselves are not counted, their fork and exec in the agent are) and the ratios, with the
//! median of the per-round p50 ratios (steadier than pooled percentiles on a shared machine),
//! are printed; nothing is asserted.
//!
//! `cargo build --release --bins && RAGMESH_BIN_DIR=$PWD/target/release cargo bench -p ragmesh-e2e --bench actions`
//! (an absolute path: benches run from `tests/`), or with debug daemons and a debug bench:
//! `cargo build --workspace --bins && cargo test -p ragmesh-e2e --bench actions`.
//! Settings: EPOCHS (2: fresh meshes each), ROUNDS (3 per epoch), ROUND_SECS (1.5 per scenario
//! and round), ONLY (comma-separated parts of scenario labels: run just those, e.g.
//! `ONLY="1 node,3 nodes"`); QUICK=1 makes the defaults 1 epoch of 1 round of 0.4 s (a smoke
//! run, well under 30 s once built).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Run, Tags, env_count, env_secs, median, ratio, report_first_failure, run_load};
use ragmesh_e2e::daemons::ProcessMesh;
use ragmesh_proto::v1::{self, master_service_client::MasterServiceClient};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Agents of the mesh (and nodes of a broadcast, parts of a transaction).
const AGENTS: usize = 3;

/// The agents' declared actions; `PORT` becomes the bench's HTTP server's port.
const AGENT_TOML: &str = r#"
[[actions]]
name = "noop"
description = "does nothing: /bin/true"
tenants = []
timeout_ms = 10000
[actions.run.exec]
program = "/bin/true"
argv = []

[[actions]]
name = "ping"
description = "does nothing: a POST to the bench's HTTP server, which answers 204"
tenants = []
timeout_ms = 10000
[actions.run.http]
method = "POST"
url = "http://127.0.0.1:PORT/noop"
body = "none"

[[actions]]
name = "noop-tx"
description = "a transactional no-op: prepare, commit and abort are /bin/true"
tenants = []
timeout_ms = 10000
[actions.prepare.exec]
program = "/bin/true"
argv = []
[actions.commit.exec]
program = "/bin/true"
argv = []
[actions.abort.exec]
program = "/bin/true"
argv = []
"#;

/// One measured scenario: what one timed call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// `ExecuteAction` of `action` on agent-1 alone.
    One(&'static str),
    /// `ExecuteAction` of `action` on every node (selector `all`).
    All(&'static str),
    /// `ExecuteTransaction` of `noop-tx` on the 3 nodes.
    ActionTx,
    /// Three `ExecuteAction` calls of `noop-tx`, one node each; in parallel or one after another.
    ActionCalls { parallel: bool },
    /// `ExecuteTransaction` writing one document into each of the 3 shard groups.
    WriteTx,
    /// Three `IngestDocuments` calls of one document, one group each.
    Ingests { parallel: bool },
}

const BUILTIN: &str = "node.undrain";
const EXEC: &str = "noop";
const HTTP: &str = "ping";
const TX_ACTION: &str = "noop-tx";

/// Every scenario with its label, in printing order.
const SCENARIOS: [(Scenario, &str); 12] = [
    (Scenario::One(BUILTIN), "1 node, built-in node.undrain"),
    (Scenario::One(EXEC), "1 node, exec /bin/true"),
    (Scenario::One(HTTP), "1 node, http POST"),
    (Scenario::All(BUILTIN), "3 nodes, built-in"),
    (Scenario::All(EXEC), "3 nodes, exec"),
    (Scenario::All(HTTP), "3 nodes, http"),
    (Scenario::ActionTx, "tx of noop-tx on 3 nodes"),
    (Scenario::ActionCalls { parallel: false }, "3 calls of noop-tx, sequential"),
    (Scenario::ActionCalls { parallel: true }, "3 calls of noop-tx, parallel"),
    (Scenario::WriteTx, "tx writing 3 groups"),
    (Scenario::Ingests { parallel: false }, "3 IngestDocuments, sequential"),
    (Scenario::Ingests { parallel: true }, "3 IngestDocuments, parallel"),
];

/// Ratios printed at the end: (numerator, denominator, what), indices into [`SCENARIOS`].
const RATIOS: [(usize, usize, &str); 7] = [
    (3, 0, "broadcast / 1 node, built-in"),
    (4, 1, "broadcast / 1 node, exec"),
    (5, 2, "broadcast / 1 node, http"),
    (6, 7, "action tx / 3 sequential calls"),
    (6, 8, "action tx / 3 parallel calls"),
    (9, 10, "write tx / 3 sequential ingests"),
    (9, 11, "write tx / 3 parallel ingests"),
];

/// Fresh idempotency keys and document ids (unique within the process; the nonce keeps them
/// unique across runs too, should two benches ever share a master).
#[derive(Debug)]
struct Fresh {
    nonce: u128,
    next: AtomicU64,
}

impl Fresh {
    fn new() -> Self {
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Fresh { nonce, next: AtomicU64::new(0) }
    }

    fn key(&self, what: &str) -> String {
        format!("bench-{what}-{:x}-{}", self.nonce, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// The local application the `http` action calls: answers every request 204, no body.
async fn http_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the http server");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        // The connections live in this set, dropped with the server at the end of the run.
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let service = hyper::service::service_fn(|_request: http::Request<hyper::body::Incoming>| async {
                let mut response = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                *response.status_mut() = http::StatusCode::NO_CONTENT;
                Ok::<_, Infallible>(response)
            });
            connections.spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
            // Reap finished connections so the set stays bounded by the open ones.
            while connections.try_join_next().is_some() {}
        }
    });
    addr
}

async fn mesh(http: SocketAddr) -> ProcessMesh {
    // A rate limit far above the load: a refusal would be a fast, untimed failure.
    ProcessMesh::builder()
        .agents(AGENTS)
        .master_arg("--rate-limit-rps")
        .master_arg("50000")
        .agent_toml(AGENT_TOML.replace("PORT", &http.port().to_string()))
        .start()
        .await
}

fn call(action: &str) -> Option<v1::ActionCall> {
    Some(v1::ActionCall { action: action.to_owned(), arguments: Default::default() })
}

/// Runs `action` on `selector`; false unless every node ran it ok.
async fn execute(
    client: &mut MasterServiceClient<Channel>,
    fresh: &Fresh,
    action: &str,
    selector: v1::NodeSelector,
) -> bool {
    let request = v1::ExecuteActionRequest {
        call: call(action),
        selector: Some(selector),
        idempotency_key: fresh.key("run"),
        ..Default::default()
    };
    let job = match client.execute_action(request).await {
        Ok(response) => response.into_inner().job,
        Err(status) => {
            report_first_failure(action, &status);
            return false;
        }
    };
    let Some(job) = job else { return false };
    let ok = job.finished
        && !job.nodes.is_empty()
        && job.nodes.iter().all(|node| {
            node.status() == v1::OutcomeStatus::Ok
                && node.result.as_ref().is_some_and(|r| r.status() == v1::ActionStatus::Ok)
        });
    if !ok {
        report_first_failure(action, &format!("{job:?}"));
    }
    ok
}

fn on(node: &str) -> v1::NodeSelector {
    v1::NodeSelector { nodes: vec![node.to_owned()], ..Default::default() }
}

/// Runs a transaction of `parts`; false unless it committed everywhere.
async fn transaction(
    client: &mut MasterServiceClient<Channel>,
    fresh: &Fresh,
    parts: Vec<v1::TransactionPart>,
) -> bool {
    let request = v1::ExecuteTransactionRequest { parts, idempotency_key: fresh.key("tx"), ..Default::default() };
    match client.execute_transaction(request).await {
        Ok(response) => {
            let tx = response.into_inner().transaction.unwrap_or_default();
            let ok = tx.decision() == v1::TransactionDecision::Commit && tx.phase() == v1::TransactionPhase::Committed;
            if !ok {
                report_first_failure("transaction", &format!("{tx:?}"));
            }
            ok
        }
        Err(status) => {
            report_first_failure("transaction", &status);
            false
        }
    }
}

/// One new small public document.
fn document(fresh: &Fresh) -> v1::Document {
    let id = fresh.key("doc");
    v1::Document {
        id: id.clone(),
        collection: "bench".into(),
        title: id,
        body: "a document written by the actions bench".into(),
        acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        ..Default::default()
    }
}

async fn ingest(client: &mut MasterServiceClient<Channel>, fresh: &Fresh, node: &str) -> bool {
    let request =
        v1::IngestDocumentsRequest { node: node.to_owned(), documents: vec![document(fresh)], shard: String::new() };
    match client.ingest_documents(request).await {
        Ok(_) => true,
        Err(status) => {
            report_first_failure("ingest", &status);
            false
        }
    }
}

/// Runs `op` once per node, in parallel or one after another; true when all succeeded.
async fn per_node<F, Fut>(client: &MasterServiceClient<Channel>, parallel: bool, op: F) -> bool
where
    F: Fn(MasterServiceClient<Channel>, String) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let nodes = (1..=AGENTS).map(|i| format!("agent-{i}"));
    if parallel {
        let mut calls = JoinSet::new();
        for node in nodes {
            calls.spawn(op(client.clone(), node));
        }
        let mut ok = true;
        while let Some(done) = calls.join_next().await {
            ok &= done.unwrap_or(false);
        }
        ok
    } else {
        for node in nodes {
            if !op(client.clone(), node).await {
                return false;
            }
        }
        true
    }
}

/// One timed call of `scenario`; true when it succeeded.
async fn once(scenario: Scenario, mut client: MasterServiceClient<Channel>, fresh: Arc<Fresh>) -> bool {
    let nodes = || (1..=AGENTS).map(|i| format!("agent-{i}"));
    match scenario {
        Scenario::One(action) => execute(&mut client, &fresh, action, on("agent-1")).await,
        Scenario::All(action) => {
            execute(&mut client, &fresh, action, v1::NodeSelector { all: true, ..Default::default() }).await
        }
        Scenario::ActionTx => {
            let parts = nodes()
                .map(|node| v1::TransactionPart {
                    node,
                    operation: Some(v1::TransactionOperation {
                        kind: Some(v1::transaction_operation::Kind::Action(v1::ActionCall {
                            action: TX_ACTION.into(),
                            arguments: Default::default(),
                        })),
                    }),
                    ..Default::default()
                })
                .collect();
            transaction(&mut client, &fresh, parts).await
        }
        Scenario::ActionCalls { parallel } => {
            per_node(&client, parallel, |mut client, node| {
                let fresh = fresh.clone();
                async move { execute(&mut client, &fresh, TX_ACTION, on(&node)).await }
            })
            .await
        }
        Scenario::WriteTx => {
            let parts = nodes()
                .map(|shard| v1::TransactionPart {
                    shard,
                    operation: Some(v1::TransactionOperation {
                        kind: Some(v1::transaction_operation::Kind::Write(v1::DocumentWrite {
                            upserts: vec![document(&fresh)],
                            deletes: Vec::new(),
                        })),
                    }),
                    ..Default::default()
                })
                .collect();
            transaction(&mut client, &fresh, parts).await
        }
        Scenario::Ingests { parallel } => {
            per_node(&client, parallel, |mut client, node| {
                let fresh = fresh.clone();
                async move { ingest(&mut client, &fresh, &node).await }
            })
            .await
        }
    }
}

/// A closed loop of one caller running `scenario` for `duration`.
async fn measure(
    scenario: Scenario,
    client: &MasterServiceClient<Channel>,
    fresh: &Arc<Fresh>,
    duration: Duration,
) -> Run {
    let (client, fresh) = (client.clone(), fresh.clone());
    run_load(1, duration, move |_worker, _n| {
        let (client, fresh) = (client.clone(), fresh.clone());
        async move { Tags { failed: !once(scenario, client, fresh).await, ..Tags::default() } }
    })
    .await
}

/// One scenario's calls pooled over rounds and epochs, each round's p50, and the CPU its
/// daemons spent.
#[derive(Debug, Default)]
struct Measured {
    pooled: Run,
    round_p50: Vec<f64>,
    cpu_ticks: u64,
    /// The master's share of `cpu_ticks`.
    master_ticks: u64,
}

impl Measured {
    /// Daemon CPU (all four processes) per successful call, in ms.
    fn cpu_ms_per_call(&self, ticks_per_sec: f64) -> f64 {
        per_call_ms(self.cpu_ticks, self.pooled.count(), ticks_per_sec)
    }
}

fn per_call_ms(ticks: u64, calls: usize, ticks_per_sec: f64) -> f64 {
    ticks as f64 / ticks_per_sec * 1000.0 / calls as f64
}

/// CPU ticks so far of the master and of all four daemons.
fn mesh_ticks(mesh: &ProcessMesh) -> (u64, u64) {
    // `pids` lists the master first.
    let ticks: Vec<u64> = mesh.pids().into_iter().map(common::pid_ticks).collect();
    (ticks.first().copied().unwrap_or(0), ticks.iter().sum())
}

fn row(label: &str, m: &Measured, ticks_per_sec: f64) {
    println!(
        "{label:<34} n={:<6} failed={:<3} p50={:>7.2} ms  p90={:>7.2} ms  p99={:>7.2} ms  cpu/call={:>6.2} ms (master {:>6.2})",
        m.pooled.count(),
        m.pooled.failed,
        m.pooled.p50(),
        m.pooled.quantile_ms(0.90),
        m.pooled.p99(),
        m.cpu_ms_per_call(ticks_per_sec),
        per_call_ms(m.master_ticks, m.pooled.count(), ticks_per_sec),
    );
}

fn ratio_row(label: &str, run: &Measured, base: &Measured, ticks_per_sec: f64) {
    let round_ratios: Vec<f64> = run.round_p50.iter().zip(&base.round_p50).map(|(r, b)| r / b).collect();
    println!(
        "{label:<34} p50 {:>6} (per round {:>5.2}x)  p90 {:>6}  p99 {:>6}  cpu/call {:>6}",
        ratio(run.pooled.p50(), base.pooled.p50()),
        median(&round_ratios),
        ratio(run.pooled.quantile_ms(0.90), base.pooled.quantile_ms(0.90)),
        ratio(run.pooled.p99(), base.pooled.p99()),
        ratio(run.cpu_ms_per_call(ticks_per_sec), base.cpu_ms_per_call(ticks_per_sec)),
    );
}

#[tokio::main]
async fn main() {
    let quick = std::env::var("QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let epochs = env_count("EPOCHS", if quick { 1 } else { 2 });
    let rounds = env_count("ROUNDS", if quick { 1 } else { 3 });
    let round = env_secs("ROUND_SECS", if quick { 0.4 } else { 1.5 });
    // ONLY: comma-separated parts of scenario labels, to run just those (e.g. ONLY="1 node").
    let only: Vec<String> = std::env::var("ONLY")
        .map(|v| v.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let selected: Vec<usize> = (0..SCENARIOS.len())
        .filter(|&i| only.is_empty() || only.iter().any(|term| SCENARIOS[i].1.contains(term.as_str())))
        .collect();
    let warm = if quick { Duration::from_millis(100) } else { Duration::from_millis(400) };
    let ticks_per_sec = common::clock_ticks();
    println!("daemons from {}", ragmesh_e2e::daemons::bin_dir().display());

    let http = http_server().await;
    let fresh = Arc::new(Fresh::new());
    let mut results: Vec<Measured> = SCENARIOS.iter().map(|_| Measured::default()).collect();
    for epoch in 0..epochs {
        eprintln!("epoch {}/{epochs}: starting a master and {AGENTS} agents", epoch + 1);
        let mesh = mesh(http).await;
        let client = mesh.client().await;
        // Warm-up: connections, descriptor caches, first index segments.
        for &i in &selected {
            measure(SCENARIOS[i].0, &client, &fresh, warm).await;
        }
        for r in 0..rounds {
            // Rotate the order, so no scenario always runs first in a round.
            for k in 0..selected.len() {
                let i = selected[(r + k) % selected.len()];
                let (master_before, before) = mesh_ticks(&mesh);
                let run = measure(SCENARIOS[i].0, &client, &fresh, round).await;
                let (master_after, after) = mesh_ticks(&mesh);
                results[i].cpu_ticks += after - before;
                results[i].master_ticks += master_after - master_before;
                results[i].round_p50.push(run.p50());
                results[i].pooled.merge(run);
            }
        }
    }

    println!(
        "\nremote actions through the master, {AGENTS} agents (processes, mTLS), one caller, a fresh idempotency key per call, {epochs} epochs of {rounds} rounds of {round:?} per scenario (cpu is the four daemons', of which the master's in parentheses):"
    );
    for (i, (_, label)) in SCENARIOS.iter().enumerate() {
        if matches!(i, 3 | 6 | 9) {
            println!();
        }
        if selected.contains(&i) {
            row(label, &results[i], ticks_per_sec);
        }
    }
    println!("\nratios (\"per round\" is the median of the rounds' p50 ratios):");
    for (numerator, denominator, label) in RATIOS {
        if !(selected.contains(&numerator) && selected.contains(&denominator)) {
            continue;
        }
        ratio_row(label, &results[numerator], &results[denominator], ticks_per_sec);
    }
}
