//! Distributed traces end to end: a master and three agents, each its own process, export
//! their spans over OTLP to a collector inside the test (the real OTLP `TraceService` from
//! opentelemetry-proto). One federated search must be one trace: the master's server span,
//! one attempt span per node under it, each agent's server span under the master's attempt
//! span for that node and the index search under that. A client's own `traceparent` is
//! continued; a write's trace reaches the replica that applies it; and a collector that
//! refuses connections changes nothing for searches and is reported once in the logs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use ragmesh_e2e::daemons::ProcessMesh;
use ragmesh_e2e::{ClosedPort, docs_for};
use ragmesh_proto::{TRACE_ID_METADATA, v1};
use tokio_stream::wrappers::TcpListenerStream;

/// OTLP span kinds.
const KIND_SERVER: i32 = 2;
const KIND_CLIENT: i32 = 3;

/// One span as the collector received it, flattened with its resource.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    instance: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    attributes: HashMap<String, String>,
}

impl Span {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// The in-test collector: every span exported to it.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = attributes(&resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Span {
                        service: resource.get("service.name").cloned().unwrap_or_default(),
                        instance: resource.get("service.instance.id").cloned().unwrap_or_default(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.spans.lock().expect("collector lock").extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Serves the collector on a fresh loopback port; returns its endpoint URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector");
        let addr = listener.local_addr().expect("collector addr");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans.lock().expect("collector lock").iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }

    /// The spans of `trace_id` once `complete` holds for them (bounded wait).
    async fn wait_trace(&self, trace_id: &str, complete: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.trace(trace_id);
            if complete(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "trace {trace_id} incomplete after 30 s: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const AGENTS: usize = 3;

/// A master and agents exporting to `endpoint`, flushing every 100 ms.
async fn mesh(endpoint: &str) -> ProcessMesh {
    let mesh = ProcessMesh::builder()
        .agents(AGENTS)
        .arg("--otlp-endpoint")
        .arg(endpoint)
        .arg("--trace-sample-ratio")
        .arg("1")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await;
    for i in 0..AGENTS {
        mesh.ingest(i, docs_for(i, 3)).await;
    }
    mesh
}

fn search_request() -> v1::SearchRequest {
    v1::SearchRequest { query: "mesh".into(), limit: 20, timeout_ms: 10_000, ..Default::default() }
}

/// Searches, optionally as part of the caller's trace `traceparent`; the response and the
/// trace id the master returned.
async fn search(mesh: &ProcessMesh, traceparent: Option<&str>) -> (v1::SearchResponse, String) {
    let mut request = tonic::Request::new(search_request());
    if let Some(traceparent) = traceparent {
        request.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
    }
    let response = mesh.client().await.search(request).await.expect("search succeeds");
    let trace_id = response
        .metadata()
        .get(TRACE_ID_METADATA)
        .and_then(|v| v.to_str().ok())
        .expect("the master returns the trace id")
        .to_owned();
    assert!(trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()), "trace id {trace_id:?}");
    (response.into_inner(), trace_id)
}

fn status_label(outcome: &v1::NodeOutcome) -> &'static str {
    match outcome.status() {
        v1::OutcomeStatus::Ok => "ok",
        v1::OutcomeStatus::Timeout => "timeout",
        v1::OutcomeStatus::Unavailable => "unavailable",
        v1::OutcomeStatus::Error => "error",
        v1::OutcomeStatus::Cancelled => "cancelled",
        v1::OutcomeStatus::Skipped | v1::OutcomeStatus::Unspecified => "skipped",
    }
}

/// Whether the trace holds everything one search over every agent produces.
fn complete(spans: &[Span]) -> bool {
    let agent_servers = spans.iter().filter(|s| s.service == "ragmesh-agent" && s.kind == KIND_SERVER).count();
    let index_searches = spans.iter().filter(|s| s.name == "index.search").count();
    let master_server = spans.iter().any(|s| s.service == "ragmesh-master" && s.kind == KIND_SERVER);
    master_server && agent_servers >= AGENTS && index_searches >= AGENTS
}

/// Checks the tree of one search's trace against its response; returns the master's server span.
fn check_tree(spans: &[Span], response: &v1::SearchResponse) -> Span {
    let servers: Vec<&Span> =
        spans.iter().filter(|s| s.service == "ragmesh-master" && s.name == "ragmesh.v1.MasterService/Search").collect();
    assert_eq!(servers.len(), 1, "one master server span: {spans:#?}");
    let server = servers[0];
    assert_eq!(server.kind, KIND_SERVER);
    assert_eq!(server.instance, "master");
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "ragmesh.v1.MasterService"),
        ("rpc.method", "Search"),
        ("rpc.grpc.status_code", "0"),
    ] {
        assert_eq!(server.attr(key), value, "{key} of {server:#?}");
    }

    let attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == "ragmesh-master" && s.name == "ragmesh.v1.AgentService/NodeSearch")
        .collect();
    let mut nodes_seen = HashSet::new();
    for attempt in &attempts {
        assert_eq!(attempt.kind, KIND_CLIENT, "{attempt:#?}");
        assert_eq!(attempt.attr("rpc.system"), "grpc");
        assert_eq!(attempt.attr("ragmesh.attempt"), "first", "no retry or hedge on a healthy mesh: {attempt:#?}");
        // The attempt is a child of the master's server span: the fan-out's per-group span is
        // for log lines only and is not exported.
        assert_eq!(attempt.parent, server.span_id, "{attempt:#?} is not a child of the server span");
        let node = attempt.attr("node.id");
        assert_eq!(attempt.attr("ragmesh.shard_group"), node, "each agent is its own shard group");
        let outcome =
            response.nodes.iter().find(|n| n.node == node).unwrap_or_else(|| panic!("{node} not in the response"));
        assert_eq!(attempt.attr("ragmesh.outcome"), status_label(outcome), "outcome of {node}");
        assert_eq!(attempt.attr("ragmesh.outcome"), "ok");
        nodes_seen.insert(node.to_owned());

        // The agent's server span continues the trace under exactly this attempt.
        let agent_spans: Vec<&Span> = spans
            .iter()
            .filter(|s| s.service == "ragmesh-agent" && s.kind == KIND_SERVER && s.parent == attempt.span_id)
            .collect();
        assert_eq!(agent_spans.len(), 1, "one agent server span under {attempt:#?}");
        let agent = agent_spans[0];
        assert_eq!(agent.instance, node, "the agent that served it is the attempt's node");
        assert_eq!(agent.name, "ragmesh.v1.AgentService/NodeSearch");
        assert_eq!(agent.attr("rpc.method"), "NodeSearch");
        assert_eq!(agent.attr("rpc.grpc.status_code"), "0");
        let index = spans.iter().filter(|s| s.name == "index.search" && s.parent == agent.span_id).count();
        assert_eq!(index, 1, "the index search is a child of {node}'s server span");
    }
    let expected: HashSet<String> = (1..=AGENTS).map(|i| format!("agent-{i}")).collect();
    assert_eq!(nodes_seen, expected, "every node has an attempt span");
    assert_eq!(attempts.len(), AGENTS);
    assert_eq!(response.nodes.len(), AGENTS);
    server.clone()
}

/// The spans under `parent` as an indented tree, for the test's output (and the README).
fn tree(spans: &[Span], parent: &str, depth: usize) -> String {
    let mut out = String::new();
    let mut children: Vec<&Span> = spans.iter().filter(|s| s.parent == parent).collect();
    children.sort_by(|a, b| (a.attr("node.id"), &a.instance).cmp(&(b.attr("node.id"), &b.instance)));
    for span in children {
        let mut details = format!("{} {}", span.service, span.instance);
        for key in ["node.id", "ragmesh.shard_group", "ragmesh.attempt", "ragmesh.outcome", "rpc.grpc.status_code"] {
            if !span.attr(key).is_empty() {
                details.push_str(&format!(" {key}={}", span.attr(key)));
            }
        }
        out.push_str(&format!("{}{} ({details})\n", "  ".repeat(depth), span.name));
        out.push_str(&tree(spans, &span.span_id, depth + 1));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn one_search_is_one_trace_across_master_and_agents_and_a_callers_trace_continues() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let mesh = mesh(&endpoint).await;

    let (response, trace_id) = search(&mesh, None).await;
    assert!(!response.hits.is_empty(), "every agent holds documents about the mesh");
    let spans = collector.wait_trace(&trace_id, complete).await;
    let server = check_tree(&spans, &response);
    assert_eq!(server.parent, "", "without a caller's traceparent the master's span is the root");
    println!("trace {trace_id}, as the collector received it:\n{}", tree(&spans, "", 0));

    // A caller's own trace goes on through the mesh.
    let caller_trace = "5b8efff798038103d269b633813fc60c";
    let caller_span = "eee19b7ec3c1b174";
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let (response, trace_id) = search(&mesh, Some(&traceparent)).await;
    assert_eq!(trace_id, caller_trace, "the master continues the caller's trace");
    let spans = collector.wait_trace(&trace_id, complete).await;
    let server = check_tree(&spans, &response);
    assert_eq!(server.parent, caller_span, "the master's server span is a child of the caller's span");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_one_trace_down_to_the_replica_that_applies_it() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let mesh = mesh(&endpoint).await;
    let caller_trace = "7a1f2e3d4c5b69788796a5b4c3d2e1f0";
    let caller_span = "0123456789abcdef";
    let mut request = tonic::Request::new(v1::IngestDocumentsRequest {
        node: mesh.agent_name(1),
        documents: docs_for(1, 2),
        shard: String::new(),
    });
    request.metadata_mut().insert("traceparent", format!("00-{caller_trace}-{caller_span}-01").parse().expect("ascii"));
    let response = mesh.client().await.ingest_documents(request).await.expect("ingest succeeds");
    let trace_id = response.metadata().get(TRACE_ID_METADATA).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(trace_id, caller_trace, "the master continues the writer's trace");

    let agent = mesh.agent_name(1);
    let spans = collector
        .wait_trace(caller_trace, |spans| {
            let has = |service: &str, name: &str| spans.iter().any(|s| s.service == service && s.name == name);
            has("ragmesh-agent", "ragmesh.v1.AgentService/UpsertDocuments")
                && has("ragmesh-master", "ragmesh.v1.AgentService/UpsertDocuments")
                && has("ragmesh-master", "replication.send")
                && has("ragmesh-master", "ragmesh.v1.MasterService/IngestDocuments")
        })
        .await;
    println!("write trace, as the collector received it:\n{}", tree(&spans, caller_span, 0));
    let one = |what: &str, pick: &dyn Fn(&Span) -> bool| -> Span {
        let found: Vec<&Span> = spans.iter().filter(|s| pick(s)).collect();
        assert_eq!(found.len(), 1, "one {what} in {spans:#?}");
        found[0].clone()
    };
    let server = one("master server span", &|s| s.name == "ragmesh.v1.MasterService/IngestDocuments");
    assert_eq!((server.service.as_str(), server.parent.as_str()), ("ragmesh-master", caller_span));
    let send = one("replica send", &|s| s.name == "replication.send");
    assert_eq!(send.parent, server.span_id, "the replica's send is part of the write: {send:#?}");
    assert_eq!(send.attr("node.id"), agent);
    let attempt =
        one("attempt", &|s| s.service == "ragmesh-master" && s.name == "ragmesh.v1.AgentService/UpsertDocuments");
    assert_eq!((attempt.kind, attempt.parent.as_str()), (KIND_CLIENT, send.span_id.as_str()));
    assert_eq!(attempt.attr("ragmesh.outcome"), "ok");
    let applied = one("agent server span", &|s| s.service == "ragmesh-agent");
    assert_eq!((applied.instance.as_str(), applied.parent.as_str()), (agent.as_str(), attempt.span_id.as_str()));
    assert_eq!(applied.attr("rpc.grpc.status_code"), "0");
}

/// The trace id the master returned in `metadata`.
fn returned_trace(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata.get(TRACE_ID_METADATA).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_and_transactions_keep_the_trace_of_the_call_that_started_them() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let mesh = mesh(&endpoint).await;
    let mut client = mesh.client().await;

    let run = v1::ExecuteActionRequest {
        call: Some(v1::ActionCall { action: "node.undrain".into(), arguments: Default::default() }),
        selector: Some(v1::NodeSelector { all: true, ..Default::default() }),
        ..Default::default()
    };
    let response = client.execute_action(run).await.expect("runs");
    let trace = returned_trace(response.metadata());
    assert_eq!(trace.len(), 32, "traced: {trace:?}");
    let job = response.into_inner().job.expect("job");
    assert_eq!(job.trace_id, trace);
    let read = client.get_action_job(v1::GetActionJobRequest { job_id: job.job_id.clone() }).await.expect("get");
    assert_eq!(read.into_inner().job.expect("job").trace_id, trace, "GetActionJob carries it too");
    let spans = collector
        .wait_trace(&trace, |spans| {
            spans
                .iter()
                .filter(|s| s.service == "ragmesh-agent" && s.name == "ragmesh.v1.AgentService/RunAction")
                .count()
                == AGENTS
                && spans.iter().any(|s| s.name == "ragmesh.v1.MasterService/ExecuteAction")
        })
        .await;
    assert!(spans.iter().any(|s| s.name == "ragmesh.v1.MasterService/ExecuteAction"), "{spans:#?}");

    let write = v1::TransactionOperation {
        kind: Some(v1::transaction_operation::Kind::Write(v1::DocumentWrite {
            upserts: docs_for(0, 1),
            deletes: Vec::new(),
        })),
    };
    let tx = v1::ExecuteTransactionRequest {
        selector: Some(v1::NodeSelector { all: true, ..Default::default() }),
        operation: Some(write),
        ..Default::default()
    };
    let response = client.execute_transaction(tx).await.expect("runs");
    let trace = returned_trace(response.metadata());
    let status = response.into_inner().transaction.expect("status");
    assert_eq!(status.phase(), v1::TransactionPhase::Committed, "{status:?}");
    assert_eq!(status.participants.len(), AGENTS, "every group takes part: {status:?}");
    assert_eq!(status.trace_id, trace);
    let read = client.get_transaction(v1::GetTransactionRequest { tx_id: status.tx_id.clone() }).await.expect("get");
    assert_eq!(read.into_inner().transaction.expect("status").trace_id, trace, "GetTransaction carries it too");
    let spans = collector
        .wait_trace(&trace, |spans| {
            let on_agents =
                |name: &str| spans.iter().filter(|s| s.service == "ragmesh-agent" && s.name == name).count();
            on_agents("ragmesh.v1.AgentService/PrepareTransaction") == AGENTS
                && on_agents("ragmesh.v1.AgentService/DecideTransaction") == AGENTS
                // The master's server span ends after the answer, so it may be exported last.
                && spans.iter().any(|s| s.name == "ragmesh.v1.MasterService/ExecuteTransaction")
        })
        .await;
    assert!(spans.iter().any(|s| s.name == "ragmesh.v1.MasterService/ExecuteTransaction"), "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_refuses_connections_changes_nothing_for_searches() {
    let refusing = ClosedPort::bind();
    let mesh = mesh(&format!("http://{}", refusing.addr())).await;
    let started = Instant::now();
    for _ in 0..20 {
        let (response, _trace_id) = search(&mesh, None).await;
        assert_eq!(response.nodes.len(), AGENTS);
        for node in &response.nodes {
            assert_eq!(status_label(node), "ok", "{node:?}");
        }
    }
    let took = started.elapsed();
    // Generous: 20 searches over 3 agents take well under a second on an idle machine.
    assert!(took < Duration::from_secs(20), "20 searches took {took:?}");
    println!("20 searches with the collector down: {took:?}");

    // The failed exports (one batch every 100 ms here) are reported once, not once a batch.
    let reported = mesh.wait_log("master", "cannot export spans", 1, Duration::from_secs(20)).await;
    assert!(reported, "no export failure reported:\n{}", mesh.log("master"));
    let more = Instant::now() + Duration::from_millis(800);
    while Instant::now() < more {
        search(&mesh, None).await;
    }
    for name in ["master", "agent-1"] {
        let log = mesh.log(name);
        assert_eq!(log.matches("cannot export spans").count(), 1, "{name} reports the outage once:\n{log}");
        assert!(!log.contains("ExportError"), "the SDK's line for each failed batch is not logged:\n{log}");
    }
}
