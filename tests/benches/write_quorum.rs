//! Write latency and throughput of a shard group of three replicas, write quorum `all` against
//! `majority`. Two meshes (real master and three real agents each, over mTLS on loopback, the
//! e2e harness) run side by side; the phases alternate between them:
//! * sequential writes of small batches (2 documents, new ids each time): latency p50/p99;
//! * 16 concurrent writers: writes/s and latency.
//!
//! Each write is checked: acknowledged with a sequence number and at least the quorum of
//! replicas reported applied (`replicas at ack` is the mean number reported ok). Timings are
//! printed, never asserted.
//!
//! `cargo bench -p ragmesh-e2e --bench write_quorum` (add `--profile dev` for a quick build).
//! DURATION (seconds per phase, default 6), ROUNDS (alternations per phase, default 2).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Run, Tags, env_count, env_secs, ratio, report_first_failure, run_load};
use ragmesh_config::WriteQuorum;
use ragmesh_e2e::{Mesh, shard_name};
use ragmesh_proto::v1::{self, master_service_client::MasterServiceClient};
use tonic::transport::Channel;

const REPLICAS: usize = 3;

/// Two new documents for writer `worker`, operation `n` of `phase`.
fn batch(phase: &str, worker: usize, n: usize) -> Vec<v1::Document> {
    (0..2)
        .map(|j| v1::Document {
            id: format!("{phase}-{worker}-{n}-{j}"),
            collection: "docs".into(),
            title: format!("write {n} of writer {worker}"),
            body: format!("the mesh replicates this write number {n} of writer {worker} in phase {phase}"),
            metadata: Default::default(),
            acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        })
        .collect()
}

/// A write op for `load`; tags: `failed` = not acknowledged at the quorum; `a`/`b` unused. The
/// number of replicas that reported ok is added to `applied`.
fn writer(
    client: MasterServiceClient<Channel>,
    phase: String,
    quorum: usize,
    applied: Arc<std::sync::atomic::AtomicUsize>,
) -> impl Fn(usize, usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = Tags> + Send>> + Clone + Send + 'static
{
    let phase = Arc::new(phase);
    move |worker, n| {
        let mut client = client.clone();
        let request = v1::IngestDocumentsRequest {
            shard: shard_name(0),
            documents: batch(&phase, worker, n),
            node: String::new(),
        };
        let applied = applied.clone();
        Box::pin(async move {
            let response = match client.ingest_documents(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    report_first_failure("write", &status);
                    return Tags { failed: true, ..Tags::default() };
                }
            };
            let ok = response.replicas.iter().filter(|r| r.status() == v1::OutcomeStatus::Ok).count();
            applied.fetch_add(ok, std::sync::atomic::Ordering::Relaxed);
            Tags { failed: response.seq == 0 || response.upserted != 2 || ok < quorum, ..Tags::default() }
        })
    }
}

struct Side {
    name: &'static str,
    quorum: usize,
    mesh: Mesh,
    client: MasterServiceClient<Channel>,
    sequential: Run,
    sequential_applied: usize,
    concurrent: Run,
    concurrent_applied: usize,
}

async fn side(name: &'static str, quorum: WriteQuorum, needed: usize) -> Side {
    let mesh = Mesh::builder()
        .agents(REPLICAS)
        .replicas(REPLICAS)
        .write_quorum(quorum)
        // One principal writes everything: the default 200/s would measure the rate limit.
        .rate_limit(1_000_000, 1_000_000)
        .start()
        .await;
    for i in 1..=REPLICAS {
        mesh.wait_in_sync(&format!("agent-{i}"), Duration::from_secs(30)).await;
    }
    let client = mesh.client().await;
    Side {
        name,
        quorum: needed,
        mesh,
        client,
        sequential: Run::default(),
        sequential_applied: 0,
        concurrent: Run::default(),
        concurrent_applied: 0,
    }
}

async fn phase(side: &Side, tag: String, concurrency: usize, duration: Duration) -> (Run, usize) {
    let applied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let op = writer(side.client.clone(), tag, side.quorum, applied.clone());
    let run = run_load(concurrency, duration, op).await;
    (run, applied.load(std::sync::atomic::Ordering::Relaxed))
}

#[tokio::main]
async fn main() {
    let duration = env_secs("DURATION", 6.0);
    let rounds = env_count("ROUNDS", 2);
    let slice = duration / u32::try_from(rounds).unwrap_or(1);
    let mut sides =
        vec![side("all", WriteQuorum::All, REPLICAS).await, side("majority", WriteQuorum::Majority, 2).await];
    // Warm-up: connections, followers, first index commits.
    for side in &sides {
        phase(side, format!("warm-{}", side.name), 4, Duration::from_secs(2)).await;
    }
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for side in &mut sides {
            let (run, applied) = phase(side, format!("seq-{}-{round}", side.name), 1, slice).await;
            side.sequential.merge(run);
            side.sequential_applied += applied;
        }
        for side in &mut sides {
            let (run, applied) = phase(side, format!("conc-{}-{round}", side.name), 16, slice).await;
            side.concurrent.merge(run);
            side.concurrent_applied += applied;
        }
    }

    println!();
    println!(
        "write quorum: 1 group x {REPLICAS} replicas, 2-document batches, {:.0} s per phase in {rounds} rounds ({} build)",
        duration.as_secs_f64(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!(
        "{:<9} {:<12} {:>6} {:>9} {:>8} {:>8} {:>16} {:>6}",
        "quorum", "writers", "n", "writes/s", "p50 ms", "p99 ms", "replicas at ack", "failed"
    );
    for side in &sides {
        for (label, run, applied) in [
            ("sequential", &side.sequential, side.sequential_applied),
            ("16 parallel", &side.concurrent, side.concurrent_applied),
        ] {
            println!(
                "{:<9} {:<12} {:>6} {:>9.1} {:>8.1} {:>8.1} {:>16.2} {:>6}",
                side.name,
                label,
                run.count(),
                run.rate(),
                run.p50(),
                run.p99(),
                applied as f64 / run.count().max(1) as f64,
                run.failed
            );
        }
    }
    let (all, majority) = (&sides[0], &sides[1]);
    println!(
        "all/majority: sequential p50 {}  p99 {}   16 writers: throughput {}  p99 {}",
        ratio(all.sequential.p50(), majority.sequential.p50()),
        ratio(all.sequential.p99(), majority.sequential.p99()),
        ratio(all.concurrent.rate(), majority.concurrent.rate()),
        ratio(all.concurrent.p99(), majority.concurrent.p99())
    );
    for side in sides {
        side.mesh.shutdown().await;
    }
}
