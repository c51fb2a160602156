//! What an agent's memory is at rest and while ingesting, side by side in one run (issue 11:
//! idle RSS <= 30 MB with the NPL quarter loaded, and a bounded memory use while ingesting).
//! One master and three agents (real processes over mTLS): `before` runs as agents did before
//! issue 11, glibc's allocator untuned (`RAGMESH_MALLOC_TUNING=off`) and the writer kept for its
//! life (`--writer-idle-release-ms 0`); `tuned` with the allocator tuned (ragmesh-malloc: a fixed
//! mmap threshold and 2 arenas) but the writer kept; `default` as shipped, tuned and with the
//! idle release after IDLE_MS. All ingest the same quarter of the NPL collection (every fourth document,
//! ~2,860 of 11,429; a generated corpus when ../shared is absent) in batches of BATCH,
//! alternately, while a sampler reads their VmRSS every 10 ms. Printed per agent: RSS empty,
//! peak while ingesting (sampled, and the kernel's VmHWM), right after, after the idle release
//! (both agents measured at the same moment), and after a burst of searches, with the anon /
//! file-backed split (RssAnon / RssFile: heap vs the index's mmapped files) and the ratio to
//! the 30 MB goal.
//!
//! `cargo build --release --bins && RAGMESH_BIN_DIR=$PWD/target/release cargo bench -p ragmesh-e2e --bench agent_memory`
//! (an absolute path: benches run from `tests/`). Settings: BATCH (250 documents), IDLE_MS
//! (1000), SEARCHES (500), WRITER_HEAP_BYTES (the agents' default when unset).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{env_count, rss_kib, status_kib};
use ragmesh_e2e::daemons::ProcessMesh;
use ragmesh_proto::v1;

/// The goal of issue 11 for an idle agent holding the NPL quarter, in KiB.
const GOAL_KIB: f64 = 30e6 / 1024.0;

/// The corpus (the NPL quarter, else generated) and the queries.
fn corpus() -> (Vec<v1::Document>, Vec<String>) {
    if let Some((docs, queries)) = common::npl() {
        let quarter: Vec<v1::Document> = docs.into_iter().step_by(4).map(ragmesh_e2e::wire_document).collect();
        println!("corpus: the NPL quarter ({} documents, {} topics)", quarter.len(), queries.len());
        return (quarter, queries);
    }
    println!("corpus: generated (../shared/data/vaswani is absent)");
    let docs = ragmesh_e2e::docs_for(0, 2860);
    (docs, ["mesh", "federates search", "alpha things", "document number"].map(str::to_owned).to_vec())
}

/// One agent's memory at each moment, KiB.
#[derive(Debug, Default, Clone, Copy)]
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
}

fn memory(pid: u32) -> Memory {
    Memory { rss: rss_kib(pid), anon: status_kib(pid, "RssAnon"), file: status_kib(pid, "RssFile") }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    let batch = env_count("BATCH", 250);
    let idle_ms = env_count("IDLE_MS", 1000);
    let searches = env_count("SEARCHES", 500);
    println!("daemons from {}", ragmesh_e2e::daemons::bin_dir().display());
    let (docs, queries) = corpus();

    let mut builder = ProcessMesh::builder()
        .master_arg("--rate-limit-rps")
        .master_arg("50000")
        .master_arg("--rate-limit-burst")
        .master_arg("50000")
        .agents(3)
        .agent_env(0, "RAGMESH_WRITER_IDLE_RELEASE_MS", "0")
        .agent_env(0, "RAGMESH_MALLOC_TUNING", "off")
        .agent_env(1, "RAGMESH_WRITER_IDLE_RELEASE_MS", "0")
        .agent_env(2, "RAGMESH_WRITER_IDLE_RELEASE_MS", idle_ms.to_string());
    if let Ok(heap) = std::env::var("WRITER_HEAP_BYTES") {
        builder = builder.env("RAGMESH_WRITER_HEAP_BYTES", heap);
    }
    let mesh = builder.start().await;
    let pids = mesh.pids();
    let agents = [pids[1], pids[2], pids[3]];
    let names = ["before", "tuned", "default"];
    println!(
        "agents: before (glibc untuned, writer kept), tuned (allocator tuned, writer kept), default (tuned, writer released after {idle_ms} ms idle)"
    );

    let empty = agents.map(memory);

    // Sample both agents' RSS while they ingest; the kernel's VmHWM backs the sampled peak.
    let peaks = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peaks, sampling) = (Arc::clone(&peaks), Arc::clone(&sampling));
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                for (peak, pid) in peaks.iter().zip(agents) {
                    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let started = Instant::now();
    for chunk in docs.chunks(batch) {
        for i in 0..agents.len() {
            mesh.ingest(i, chunk.to_vec()).await;
        }
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let peak = [0, 1, 2].map(|i| peaks[i].load(Ordering::Relaxed));
    let hwm = agents.map(|pid| status_kib(pid, "VmHWM"));
    let after_ingest = agents.map(memory);

    // The default agent lets its writer go between IDLE_MS and twice that after the last write.
    let within = Duration::from_millis(idle_ms as u64 * 2) + Duration::from_secs(30);
    for name in ["agent-3"] {
        let released = mesh.wait_log(name, "index writer released after idle", 1, within).await;
        assert!(released, "{name} never released its writer:\n{}", mesh.log(name));
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the release ends before it is logged
    let after_release = agents.map(memory);

    let mut client = mesh.client().await;
    let mut failed = 0;
    for n in 0..searches {
        let request = v1::SearchRequest {
            query: queries[n % queries.len()].clone(),
            limit: 10,
            timeout_ms: 5000,
            bypass_cache: true,
            ..Default::default()
        };
        match client.search(request).await {
            Ok(response) => {
                failed += usize::from(response.into_inner().nodes.iter().any(|n| n.status() != v1::OutcomeStatus::Ok));
            }
            Err(error) => {
                common::report_first_failure("search", &error);
                failed += 1;
            }
        }
    }
    let after_searches = agents.map(memory);

    println!(
        "\nagent memory, {} documents per agent in batches of {batch} ({ingest_secs:.1} s for both), MiB (anon + file-backed):",
        docs.len()
    );
    let row = |label: &str, values: [Memory; 3]| {
        print!("{label:<30}");
        for m in values {
            print!("  {:>6.1} ({:>5.1} + {:>5.1})", mib(m.rss), mib(m.anon), mib(m.file));
        }
        println!(
            "  {} {}",
            common::ratio(values[1].rss as f64, values[0].rss as f64),
            common::ratio(values[2].rss as f64, values[0].rss as f64)
        );
    };
    println!("{:<30}  {:>22}  {:>22}  {:>22}  (ratios to before)", "", names[0], names[1], names[2]);
    row("empty", empty);
    print!("{:<30}", "peak while ingesting (VmHWM)");
    for i in 0..3 {
        print!("  {:>6.1} (VmHWM {:>6.1})   ", mib(peak[i]), mib(hwm[i]));
    }
    println!("  {} {}", common::ratio(peak[1] as f64, peak[0] as f64), common::ratio(peak[2] as f64, peak[0] as f64));
    row("right after ingesting", after_ingest);
    row("after the idle release", after_release);
    row(&format!("after {searches} searches ({failed} failed)"), after_searches);
    for (i, name) in names.iter().enumerate() {
        println!(
            "{name}: idle RSS after the release {:.1} MiB = {} of the 30 MB goal; after searches {}",
            mib(after_release[i].rss),
            common::ratio(after_release[i].rss as f64, GOAL_KIB),
            common::ratio(after_searches[i].rss as f64, GOAL_KIB),
        );
    }
}
