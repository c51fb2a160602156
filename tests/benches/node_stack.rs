//! Cost per call of the master's node client against the per-node stack it replaced, both
//! calling the same real agent service (ragmesh-agent's `AgentApi` over a real tantivy index,
//! served by tonic over plaintext loopback TCP on its own runtime and threads), with the same
//! request and the same signed context:
//! * old: `AgentServiceClient<ConcurrencyLimit<Timeout<Channel>>>` calling `node_search`;
//! * new: `ragmesh_stack::node_client::build(..)` with `Target::Group` and with `Target::Node`
//!   for that agent: a group of one, so both take the per-node stack (breaker, load, limit,
//!   endpoint) behind the router (a group with a single readable replica skips hedge, retry,
//!   steering and balancer, which have nothing to choose from);
//! * new, with `Target::Group` of two replicas (the agent and an identical sibling, a second
//!   agent on the same runtime): the full group path, hedge, retry, steer, p2c balancer.
//!
//! At concurrency 1 and 16 it prints latency per call, calls/s, CPU per call of the client's
//! threads (the stacks themselves: /proc/self/task/*/schedstat of the `bench-client` runtime,
//! in nanoseconds) and of the whole process (client + agent), and the ratio new/old (goal
//! <= 1.05x), also as the median of the per-round ratios (a neighbour's burst hits one round). Rounds interleave
//! the stacks so that a noisy neighbour hits all of them alike. Timings are never asserted.
//!
//! `cargo bench -p ragmesh-e2e --bench node_stack` (add `--profile dev` for a quick build).
//! DURATION (seconds per stack, concurrency and round, default 3), ROUNDS (default 3),
//! CONCURRENCY (comma-separated levels, default `1,16`) and STACKS (indices of the stacks to run,
//! e.g. `0,2`; the first one is the baseline of the ratios) narrow a run down for `perf record`.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::{Run, Tags, clock_ticks, env_count, env_secs, median, process_ticks, ratio, run_load, thread_cpu_nanos};
use ragmesh_agent::service::{AgentApi, AgentState, CONTEXT_METADATA};
use ragmesh_auth::{Capability, KeyRing, KeyRingConfig, Principal, unix_now};
use ragmesh_e2e::docs_for;
use ragmesh_proto::v1::{self, agent_service_client::AgentServiceClient, agent_service_server::AgentService};
use ragmesh_stack::discover::{Directory, DirectoryNode};
use ragmesh_stack::node_call::{NodeCall, NodeClient, NodeRequest, Target};
use ragmesh_stack::node_client::{ClientConfig, build};
use ragmesh_stack::node_health::{HealthBook, HealthConfig};
use tokio::sync::watch;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceBuilder;
use tower::ServiceExt as _;
use tower::limit::ConcurrencyLimit;
use tower::timeout::Timeout;

const CLIENT_THREADS: &str = "bench-client";
/// The old stack's limit and ceiling (MAX_IN_FLIGHT_PER_NODE and the search deadline).
const MAX_IN_FLIGHT: usize = 256;
const CEILING: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(10);

/// The old per-node client.
type OldClient = AgentServiceClient<ConcurrencyLimit<Timeout<Channel>>>;

/// A channel configured as the master's (lazy, nodelay, keep-alive), plaintext.
fn channel(address: &str) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .expect("loopback address")
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy()
}

/// The master's verification keys and a signed context for the bench's caller.
fn signed_context() -> (Vec<v1::VerificationKey>, AsciiMetadataValue) {
    let now = unix_now();
    let ring = KeyRing::generate(KeyRingConfig::new("ragmesh-master", "ragmesh"), now).expect("key ring");
    let keys: Vec<v1::VerificationKey> = ring.public_keys(now).iter().map(ragmesh_auth::PublicKey::to_wire).collect();
    let principal = Principal {
        subject: "bench".into(),
        tenant: "default".into(),
        capabilities: [Capability::Search, Capability::Ingest, Capability::Admin].into(),
        token_id: "bench".into(),
        expires_at: now + 3600,
        issued_at: now,
    };
    let context = ring.sign_context(&principal, Duration::from_secs(3600), now).expect("sign context").into_string();
    (keys, context.parse().expect("a token is ASCII"))
}

/// An agent: a real `AgentApi` over a fresh index holding 200 documents, served on its own
/// runtime (threads named `bench-agent`), trusting `keys`. Returns its address.
fn start_agent(dir: &std::path::Path, keys: &[v1::VerificationKey], context: &AsciiMetadataValue) -> String {
    let state = AgentState::new("agent".into(), "g".into(), 64);
    state.set_keys(keys).expect("keys");
    let index = ragmesh_index::DocumentIndex::open(dir).expect("open index");
    let _ = state.index.set(Arc::new(index));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let context_for_ingest = context.clone();
    std::thread::Builder::new()
        .name("bench-agent".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("bench-agent")
                .enable_all()
                .build()
                .expect("agent runtime");
            runtime.block_on(async move {
                let api = AgentApi(state);
                let mut request = tonic::Request::new(v1::UpsertDocumentsRequest {
                    documents: docs_for(0, 200),
                    position: Some(v1::LogPosition { shard: "g".into(), seq: 1 }),
                });
                request.metadata_mut().insert(CONTEXT_METADATA, context_for_ingest);
                api.upsert_documents(request).await.expect("ingest");
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind agent");
                let addr = listener.local_addr().expect("agent addr");
                ready_tx.send(addr).expect("bench waits");
                // As the agent's own server does: no Nagle delay on answers.
                let incoming =
                    tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |stream| {
                        let stream = stream?;
                        stream.set_nodelay(true)?;
                        Ok::<_, std::io::Error>(stream)
                    });
                // Serves until the process exits.
                let _ = tonic::transport::Server::builder()
                    .add_service(v1::agent_service_server::AgentServiceServer::new(api))
                    .serve_with_incoming(incoming)
                    .await;
            });
        })
        .expect("agent thread");
    let addr = ready_rx.recv_timeout(Duration::from_secs(30)).expect("agent starts");
    addr.to_string()
}

fn search_request() -> v1::NodeSearchRequest {
    v1::NodeSearchRequest { query: "mesh alpha".into(), limit: 10, ..Default::default() }
}

type Op = Arc<dyn Fn(usize, usize) -> Pin<Box<dyn Future<Output = Tags> + Send>> + Send + Sync>;

fn old_op(client: OldClient, context: AsciiMetadataValue) -> Op {
    let template = search_request();
    Arc::new(move |_, _| {
        let mut client = client.clone();
        let mut request = tonic::Request::new(template.clone());
        request.set_timeout(DEADLINE);
        request.metadata_mut().insert(CONTEXT_METADATA, context.clone());
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + DEADLINE;
            let result = tokio::time::timeout_at(deadline, client.node_search(request)).await;
            let failed = !matches!(result, Ok(Ok(ref r)) if !r.get_ref().hits.is_empty());
            Tags { failed, ..Tags::default() }
        })
    })
}

fn new_op(client: NodeClient, target: Target, context: AsciiMetadataValue) -> Op {
    let template = search_request();
    Arc::new(move |_, _| {
        let client = client.clone();
        let request = NodeRequest::Search(template.clone());
        let call = NodeCall::new(target.clone(), request, tokio::time::Instant::now() + DEADLINE)
            .with_context(context.clone());
        Box::pin(async move {
            let result = client.oneshot(call).await;
            let failed = !matches!(result, Ok(ref answer) if matches!(&answer.reply,
                ragmesh_stack::node_call::NodeReply::Search(r) if !r.hits.is_empty()));
            Tags { failed, ..Tags::default() }
        })
    })
}

/// A run with the CPU it used.
#[derive(Default)]
struct Measured {
    run: Run,
    /// CPU of the client's threads, nanoseconds.
    client_nanos: u64,
    process_ticks: u64,
    /// Client CPU per call of each round, microseconds.
    client_us_per_round: Vec<f64>,
}

impl Measured {
    fn client_us_per_call(&self) -> f64 {
        self.client_nanos as f64 / 1e3 / self.run.count().max(1) as f64
    }

    fn process_us_per_call(&self, hz: f64) -> f64 {
        self.process_ticks as f64 / hz * 1e6 / self.run.count().max(1) as f64
    }

    fn add(&mut self, round: Measured) {
        self.client_us_per_round.push(round.client_us_per_call());
        self.client_nanos += round.client_nanos;
        self.process_ticks += round.process_ticks;
        self.run.merge(round.run);
    }
}

async fn measure(op: &Op, concurrency: usize, duration: Duration) -> Measured {
    let op = op.clone();
    let client_before = thread_cpu_nanos(CLIENT_THREADS);
    let process_before = process_ticks();
    let run = run_load(concurrency, duration, move |w, n| op(w, n)).await;
    Measured {
        run,
        client_nanos: thread_cpu_nanos(CLIENT_THREADS).saturating_sub(client_before),
        process_ticks: process_ticks().saturating_sub(process_before),
        client_us_per_round: Vec::new(),
    }
}

fn main() {
    let duration = env_secs("DURATION", 3.0);
    let rounds = env_count("ROUNDS", 3);
    let levels = common::env_counts("CONCURRENCY", &[1, 16]);
    let hz = clock_ticks();
    let (keys, context) = signed_context();
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let address = start_agent(dirs[0].path(), &keys, &context);
    let sibling = start_agent(dirs[1].path(), &keys, &context);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .expect("client runtime");
    let results = runtime.block_on(async move {
        // Each stack has its own channel (its own connection), built alike.
        let old: OldClient = AgentServiceClient::new(
            ServiceBuilder::new().concurrency_limit(MAX_IN_FLIGHT).timeout(CEILING).service(channel(&address)),
        );
        // Group "g" is the one agent (a group of one); group "pair" is that agent and its
        // sibling (each through its own connection): the full group path.
        let node =
            |address: &str, group: &str| DirectoryNode { address: address.into(), group: group.into(), readable: true };
        let nodes = BTreeMap::from([
            ("agent".to_owned(), node(&address, "g")),
            ("pair-a".to_owned(), node(&address, "pair")),
            ("pair-b".to_owned(), node(&sibling, "pair")),
        ]);
        let (_directory_tx, directory) = watch::channel(Arc::new(Directory { nodes, tls_generation: 0 }));
        let channels = Arc::new(|_: &str, address: &str| Ok::<_, String>(channel(address)));
        let new =
            build(directory, channels, HealthBook::new(HealthConfig::default(), None), false, ClientConfig::default());
        let stacks: Vec<(&str, Op)> = vec![
            ("old: limit+timeout+channel", old_op(old, context.clone())),
            ("new: Target::Group", new_op(new.clone(), Target::Group("g".into()), context.clone())),
            ("new: Target::Node", new_op(new.clone(), Target::Node("agent".into()), context.clone())),
            ("new: Group of 2 replicas", new_op(new, Target::Group("pair".into()), context.clone())),
        ];
        // STACKS (comma-separated indices into the list above) keeps only those, for profiling.
        let stacks: Vec<(&str, Op)> = match std::env::var("STACKS") {
            Ok(list) => {
                let keep: Vec<usize> = list.split(',').filter_map(|i| i.trim().parse().ok()).collect();
                stacks.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, stack)| stack).collect()
            }
            Err(_) => stacks,
        };
        // Warm-up: connections, index caches, the balancer's first endpoint.
        for (_, op) in &stacks {
            measure(op, 4, Duration::from_millis(500)).await;
        }
        let mut results: Vec<(usize, Vec<Measured>)> = Vec::new();
        for &concurrency in &levels {
            let mut per_stack: Vec<Measured> = stacks.iter().map(|_| Measured::default()).collect();
            for round in 0..rounds {
                eprintln!("concurrency {concurrency}, round {}/{rounds}", round + 1);
                for (i, (_, op)) in stacks.iter().enumerate() {
                    per_stack[i].add(measure(op, concurrency, duration).await);
                }
            }
            results.push((concurrency, per_stack));
        }
        let names: Vec<&str> = stacks.iter().map(|(name, _)| *name).collect();
        (names, results)
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let (names, results) = results;

    println!();
    println!(
        "node stack cost: {rounds} rounds x {:.0} s per stack and concurrency, one real agent, plaintext loopback ({} build)",
        duration.as_secs_f64(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!(
        "{:<28} {:>4} {:>8} {:>9} {:>8} {:>8} {:>13} {:>13} {:>6}",
        "stack", "conc", "calls", "calls/s", "p50 us", "p99 us", "client cpu us", "total cpu us", "failed"
    );
    for (concurrency, per_stack) in &results {
        for (name, m) in names.iter().zip(per_stack) {
            println!(
                "{:<28} {:>4} {:>8} {:>9.0} {:>8.0} {:>8.0} {:>13.1} {:>13.1} {:>6}",
                name,
                concurrency,
                m.run.count(),
                m.run.rate(),
                m.run.p50() * 1000.0,
                m.run.p99() * 1000.0,
                m.client_us_per_call(),
                m.process_us_per_call(hz),
                m.run.failed
            );
        }
    }
    println!("ratios new/old (goal <= 1.05x); client cpu/call: over all rounds, and the median of the rounds' ratios");
    for (concurrency, per_stack) in &results {
        let old = &per_stack[0];
        for (name, m) in names.iter().zip(per_stack).skip(1) {
            let round_ratios: Vec<f64> =
                m.client_us_per_round.iter().zip(&old.client_us_per_round).map(|(new, old)| new / old).collect();
            println!(
                "conc {concurrency:>2} {name:<26} p50 {}  p99 {}  client cpu/call {} (median of rounds {})  total cpu/call {}  calls/s {}",
                ratio(m.run.p50(), old.run.p50()),
                ratio(m.run.p99(), old.run.p99()),
                ratio(m.client_us_per_call(), old.client_us_per_call()),
                ratio(median(&round_ratios), 1.0),
                ratio(m.process_us_per_call(hz), old.process_us_per_call(hz)),
                ratio(m.run.rate(), old.run.rate())
            );
        }
    }
}
