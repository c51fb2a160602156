//! What the statistics phase of a global-BM25 search costs, side by side in one run: a master
//! and 3 agents (real processes over mTLS) holding the NPL collection split round-robin (or a
//! generated corpus when ../shared is absent), searched with the 93 NPL topics (or a word list)
//! by `merge=rrf` (one round trip) and `merge=global_bm25` (statistics, then search), in
//! alternating closed-loop rounds, at each concurrency. Prints p50/p99, the median of the
//! per-round p50 ratios, and the daemons' CPU per search from /proc (issue 10: the two-phase
//! search's latency vs one phase at concurrency 1 and 16).
//!
//! The master runs with its caches on, and four modes are measured: `rrf` and
//! `bm25-cold` (global BM25, a unique unmatched word appended to each query so the statistics
//! cache never has it) bypass the result cache; `bm25-warm` (the topics themselves, whose
//! statistics are cached after the warm-up) bypasses the result cache too; `result-hit` asks
//! without bypass, so after the warm-up every answer comes from the result cache.
//!
//! `cargo build --release --bins && RAGMESH_BIN_DIR=$PWD/target/release cargo bench -p ragmesh-e2e --bench merge`
//! (an absolute path: benches run from `tests/`), or with debug daemons:
//! `cargo build --workspace --bins && cargo test -p ragmesh-e2e --bench merge`. Settings:
//! EPOCHS (2: fresh meshes each), ROUNDS (3 per epoch), ROUND_SECS (2), CONCURRENCY (1,16).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Run, Tags, env_count, env_secs, ratio, run_load};
use ragmesh_e2e::daemons::ProcessMesh;
use ragmesh_proto::v1;

/// The corpus and the queries: NPL when present, else generated.
fn corpus() -> (Vec<v1::Document>, Vec<String>) {
    if let Some((docs, queries)) = common::npl() {
        println!("corpus: NPL ({} topics)", queries.len());
        return (docs.into_iter().map(ragmesh_e2e::wire_document).collect(), queries);
    }
    println!("corpus: generated (../shared/data/vaswani is absent)");
    let docs = (0..3).flat_map(|i| ragmesh_e2e::docs_for(i, 300)).collect();
    (docs, ["mesh", "federates search", "replica shard", "token breaker index"].map(str::to_owned).to_vec())
}

async fn mesh(docs: &[v1::Document]) -> ProcessMesh {
    // A rate limit far above the load: a refusal would be a fast, untimed failure.
    let mesh = ProcessMesh::builder()
        .agents(3)
        .master_arg("--rate-limit-rps")
        .master_arg("50000")
        .master_arg("--rate-limit-burst")
        .master_arg("50000")
        .master_arg("--result-cache-bytes")
        .master_arg("67108864")
        .master_arg("--statistics-cache-bytes")
        .master_arg("16777216")
        .start()
        .await;
    for i in 0..3 {
        let part: Vec<v1::Document> = docs.iter().skip(i).step_by(3).cloned().collect();
        for batch in part.chunks(1000) {
            mesh.ingest(i, batch.to_vec()).await;
        }
    }
    mesh
}

/// One measured way of searching.
#[derive(Debug, Clone, Copy)]
struct Mode {
    name: &'static str,
    merge: &'static str,
    /// Skip the result cache's lookup.
    bypass: bool,
    /// Append a word no query had before, so the statistics cache misses.
    unique: bool,
}

const MODES: [Mode; 4] = [
    Mode { name: "rrf", merge: "rrf", bypass: true, unique: false },
    Mode { name: "bm25-cold", merge: "global_bm25", bypass: true, unique: true },
    Mode { name: "bm25-warm", merge: "global_bm25", bypass: true, unique: false },
    Mode { name: "result-hit", merge: "global_bm25", bypass: false, unique: false },
];

async fn searches(
    mesh: &ProcessMesh,
    mode: Mode,
    queries: &Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> Run {
    let client = mesh.client().await;
    let queries = queries.clone();
    // Unique across calls too: this call's start time, then the worker and its count.
    let call = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    run_load(concurrency, duration, move |worker, n| {
        let (mut client, queries) = (client.clone(), queries.clone());
        async move {
            let mut query = queries[n % queries.len()].clone();
            if mode.unique {
                query.push_str(&format!(" zqx{call}w{worker}n{n}"));
            }
            let request = v1::SearchRequest {
                query,
                limit: 10,
                timeout_ms: 5000,
                merge: mode.merge.to_owned(),
                bypass_cache: mode.bypass,
                ..Default::default()
            };
            let failed = match client.search(request).await {
                Ok(response) => response.into_inner().nodes.iter().any(|n| n.status() != v1::OutcomeStatus::Ok),
                Err(error) => {
                    common::report_first_failure("search", &error);
                    true
                }
            };
            Tags { failed, ..Tags::default() }
        }
    })
    .await
}

/// One strategy's runs at one concurrency.
#[derive(Debug, Default)]
struct Scenario {
    pooled: Run,
    round_p50: Vec<f64>,
    cpu_ticks: u64,
}

fn mesh_ticks(mesh: &ProcessMesh) -> u64 {
    mesh.pids().into_iter().map(common::pid_ticks).sum()
}

#[tokio::main]
async fn main() {
    let epochs = env_count("EPOCHS", 2);
    let rounds = env_count("ROUNDS", 3);
    let round = env_secs("ROUND_SECS", 2.0);
    let concurrencies = common::env_counts("CONCURRENCY", &[1, 16]);
    let ticks_per_sec = common::clock_ticks();
    println!("daemons from {}", ragmesh_e2e::daemons::bin_dir().display());
    let (docs, queries) = corpus();
    let queries = Arc::new(queries);

    let mut results: Vec<[Scenario; MODES.len()]> = concurrencies.iter().map(|_| Default::default()).collect();
    for epoch in 0..epochs {
        println!("epoch {}/{epochs}: starting a master and 3 agents, loading {} documents", epoch + 1, docs.len());
        let mesh = mesh(&docs).await;
        for mode in MODES {
            searches(&mesh, mode, &queries, 2, Duration::from_millis(500)).await; // warm-up
        }
        // Every topic once more: the statistics and result caches hold them all.
        searches(&mesh, MODES[3], &queries, 1, Duration::from_secs(3)).await;
        for (c, &concurrency) in concurrencies.iter().enumerate() {
            for r in 0..rounds {
                for k in 0..MODES.len() {
                    let i = (r + k) % MODES.len();
                    let before = mesh_ticks(&mesh);
                    let run = searches(&mesh, MODES[i], &queries, concurrency, round).await;
                    let scenario = &mut results[c][i];
                    scenario.cpu_ticks += mesh_ticks(&mesh) - before;
                    scenario.round_p50.push(run.p50());
                    scenario.pooled.merge(run);
                }
            }
        }
    }
    for (c, concurrency) in concurrencies.iter().enumerate() {
        println!(
            "\nfederated search, master + 3 agents, concurrency {concurrency}, {epochs} epochs of {rounds} rounds of {round:?} (ratios to rrf; cpu is the four daemons'):"
        );
        let base = &results[c][0];
        for (i, mode) in MODES.iter().enumerate() {
            let merge = mode.name;
            let run = &results[c][i];
            let round_ratios: Vec<f64> = run.round_p50.iter().zip(&base.round_p50).map(|(r, b)| r / b).collect();
            let cpu = |s: &Scenario| s.cpu_ticks as f64 / ticks_per_sec * 1000.0 / s.pooled.count().max(1) as f64;
            println!(
                "{merge:<12} n={:<6} failed={:<3} p50={:>7.3} ms ({:>5}, per round {:>5.2}x)  p99={:>7.3} ms ({:>5})  {:>7.1}/s  cpu/search={:>6.3} ms ({:>5})",
                run.pooled.count(),
                run.pooled.failed,
                run.pooled.p50(),
                ratio(run.pooled.p50(), base.pooled.p50()),
                common::median(&round_ratios),
                run.pooled.p99(),
                ratio(run.pooled.p99(), base.pooled.p99()),
                run.pooled.rate(),
                cpu(run),
                ratio(cpu(run), cpu(base)),
            );
        }
        let p50 = |i: usize| results[c][i].pooled.p50();
        println!(
            "p50 ratios: statistics cache warm/cold {}, result-cache hit/miss (cold) {}, hit/miss (warm statistics) {}",
            ratio(p50(2), p50(1)),
            ratio(p50(3), p50(1)),
            ratio(p50(3), p50(2)),
        );
    }
}
