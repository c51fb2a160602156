//! What distributed tracing costs a search, side by side in one run: four meshes of real
//! processes (a master and 3 agents each): tracing off; a second one with tracing off, the
//! control (its ratio to the first is the noise floor of the run: two identical meshes);
//! tracing on (sample ratio 1.0, every daemon exporting to a live OTLP collector in this
//! process); and exporting to a collector address that refuses connections. Rounds of
//! closed-loop searches alternate between the meshes, so drift on a shared machine falls on
//! all alike, and every epoch starts fresh processes; p50/p99 and ratios to "off"
//! are printed, with the median of the per-round p50 ratios (steadier than pooled percentiles on a
//! shared machine) and the daemons' CPU per search from /proc (goal: p50 with tracing on within
//! 1.05x of off).
//!
//! Then a micro-benchmark of one span (created, entered, closed) in this process: with no
//! subscriber, through the OpenTelemetry layer sampled (exported to a discarding exporter
//! through the same batch processor the daemons use) and unsampled.
//!
//! `cargo build --release --bins && RAGMESH_BIN_DIR=$PWD/target/release cargo bench -p ragmesh-e2e --bench tracing`
//! (an absolute path: benches run from `tests/`),
//! or with debug daemons and a debug bench: `cargo build --workspace --bins && cargo test -p ragmesh-e2e --bench tracing`. Settings: EPOCHS (3: fresh meshes each), ROUNDS (4 per epoch), ROUND_SECS (2), CONCURRENCY (a list, 1,2), SPANS (100000).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Run, Tags, env_count, env_secs, ratio, run_load};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};
use ragmesh_e2e::daemons::ProcessMesh;
use ragmesh_e2e::{ClosedPort, docs_for};
use ragmesh_proto::v1;
use tokio_stream::wrappers::TcpListenerStream;
use tracing_subscriber::layer::SubscriberExt as _;

/// A collector that counts the spans it receives.
#[derive(Debug, Clone, Default)]
struct CountingCollector(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for CountingCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.into_inner().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn mesh(endpoint: Option<&str>) -> ProcessMesh {
    // The daemons' default log filter (info), as deployed: with tracing off, the spans still
    // exist for the log lines.
    // A rate limit far above the load: a refusal would be a fast, untimed failure.
    let mut builder = ProcessMesh::builder().agents(3).master_arg("--rate-limit-rps").master_arg("50000");
    if let Some(endpoint) = endpoint {
        builder = builder.arg("--otlp-endpoint").arg(endpoint).arg("--trace-sample-ratio").arg("1.0");
    }
    let mesh = builder.start().await;
    for i in 0..3 {
        mesh.ingest(i, docs_for(i, 50)).await;
    }
    mesh
}

async fn searches(mesh: &ProcessMesh, concurrency: usize, duration: Duration) -> Run {
    let client = mesh.client().await;
    run_load(concurrency, duration, move |_worker, n| {
        let mut client = client.clone();
        async move {
            let query = if n % 2 == 0 { "mesh" } else { "federates search" };
            let request = v1::SearchRequest { query: query.into(), limit: 10, timeout_ms: 5000, ..Default::default() };
            let failed = match client.search(request).await {
                Ok(response) => response.into_inner().nodes.iter().any(|n| n.status() != v1::OutcomeStatus::Ok),
                Err(_) => true,
            };
            Tags { failed, ..Tags::default() }
        }
    })
    .await
}

/// An exporter that drops every batch: the cost of a span up to the export itself.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

/// Nanoseconds per span for `n` spans made under `dispatch`.
fn span_cost(n: usize, dispatch: Option<tracing::Dispatch>) -> f64 {
    let one = || {
        let span =
            tracing::info_span!(target: "ragmesh_bench", "bench.span", node.id = "agent-1", ragmesh.outcome = "ok");
        span.in_scope(|| std::hint::black_box(1));
    };
    let run = || {
        let started = Instant::now();
        for _ in 0..n {
            one();
        }
        started.elapsed().as_nanos() as f64 / n as f64
    };
    match dispatch {
        Some(dispatch) => tracing::dispatcher::with_default(&dispatch, run),
        None => run(),
    }
}

fn otel_dispatch(ratio: f64, spans: usize) -> (tracing::Dispatch, SdkTracerProvider) {
    // A queue that holds every span of the run: a full queue's cheap drop would flatter the cost.
    let batch = BatchConfigBuilder::default().with_max_queue_size(spans + 1).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(Discard).with_batch_config(batch).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("bench"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false);
    (tracing::Dispatch::new(tracing_subscriber::registry().with(layer)), provider)
}

/// One mesh's runs at one concurrency: the latencies pooled over rounds, each round's p50, and
/// the CPU its daemons spent.
#[derive(Debug, Default)]
struct Scenario {
    pooled: Run,
    round_p50: Vec<f64>,
    cpu_ticks: u64,
}

impl Scenario {
    /// Daemon CPU (all four processes) per successful search, in ms.
    fn cpu_ms_per_search(&self, ticks_per_sec: f64) -> f64 {
        self.cpu_ticks as f64 / ticks_per_sec * 1000.0 / self.pooled.count() as f64
    }
}

fn mesh_ticks(mesh: &ProcessMesh) -> u64 {
    mesh.pids().into_iter().map(common::pid_ticks).sum()
}

fn row(label: &str, run: &Scenario, base: &Scenario, ticks_per_sec: f64) {
    let round_ratios: Vec<f64> = run.round_p50.iter().zip(&base.round_p50).map(|(r, b)| r / b).collect();
    let (cpu, cpu_base) = (run.cpu_ms_per_search(ticks_per_sec), base.cpu_ms_per_search(ticks_per_sec));
    println!(
        "{label:<26} n={:<6} failed={:<3} p50={:>6.3} ms ({:>5}, per round {:>5.2}x)  p99={:>6.3} ms ({:>5})  cpu/search={:>5.3} ms ({:>5})",
        run.pooled.count(),
        run.pooled.failed,
        run.pooled.p50(),
        ratio(run.pooled.p50(), base.pooled.p50()),
        common::median(&round_ratios),
        run.pooled.p99(),
        ratio(run.pooled.p99(), base.pooled.p99()),
        cpu,
        ratio(cpu, cpu_base),
    );
}

#[tokio::main]
async fn main() {
    let epochs = env_count("EPOCHS", 3);
    let rounds = env_count("ROUNDS", 4);
    let round = env_secs("ROUND_SECS", 2.0);
    let concurrencies = common::env_counts("CONCURRENCY", &[1, 2]);
    let spans = env_count("SPANS", 100_000);
    let ticks_per_sec = common::clock_ticks();
    println!("daemons from {}", ragmesh_e2e::daemons::bin_dir().display());

    let collector = CountingCollector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let refusing = ClosedPort::bind();
    let refusing_endpoint = format!("http://{}", refusing.addr());

    const LABELS: [&str; 4] =
        ["tracing off", "tracing off (control)", "tracing on, collector up", "tracing on, collector down"];
    let mut results: Vec<[Scenario; 4]> = concurrencies.iter().map(|_| Default::default()).collect();
    for _ in 0..epochs {
        // Fresh processes each epoch: two identical meshes can differ by several percent for
        // the life of their processes, which rounds alone never average out.
        let meshes =
            [mesh(None).await, mesh(None).await, mesh(Some(&endpoint)).await, mesh(Some(&refusing_endpoint)).await];
        for mesh in &meshes {
            searches(mesh, 2, Duration::from_millis(500)).await; // warm-up
        }
        for (c, &concurrency) in concurrencies.iter().enumerate() {
            let runs = &mut results[c];
            for r in 0..rounds {
                // Rotate the order, so no mesh always runs first in a round.
                for k in 0..meshes.len() {
                    let i = (r + k) % meshes.len();
                    let before = mesh_ticks(&meshes[i]);
                    let run = searches(&meshes[i], concurrency, round).await;
                    runs[i].cpu_ticks += mesh_ticks(&meshes[i]) - before;
                    runs[i].round_p50.push(run.p50());
                    runs[i].pooled.merge(run);
                }
            }
        }
    }
    for (c, concurrency) in concurrencies.iter().enumerate() {
        println!(
            "\nfederated search, master + 3 agents (processes), concurrency {concurrency}, {epochs} epochs of {rounds} rounds of {round:?} (ratios to off; \"per round\" is the median of the rounds' p50 ratios; cpu is the four daemons'):"
        );
        for (i, label) in LABELS.iter().enumerate() {
            row(label, &results[c][i], &results[c][0], ticks_per_sec);
        }
    }
    println!("spans received by the collector: {}", collector.0.load(Ordering::Relaxed));

    println!("\none span (create, enter, exit, close), {spans} spans each:");
    let bare = span_cost(spans, None);
    println!("  no subscriber:                  {bare:>8.0} ns");
    let (sampled, provider) = otel_dispatch(1.0, spans);
    let cost_sampled = span_cost(spans, Some(sampled));
    println!("  OpenTelemetry layer, sampled:   {cost_sampled:>8.0} ns");
    let (unsampled, provider_off) = otel_dispatch(0.0, spans);
    let cost_unsampled = span_cost(spans, Some(unsampled));
    println!("  OpenTelemetry layer, unsampled: {cost_unsampled:>8.0} ns");
    let _ = tokio::task::spawn_blocking(move || {
        let _ = provider.shutdown();
        let _ = provider_off.shutdown();
    })
    .await;
}
