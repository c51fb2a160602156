//! The innermost service of the node client: one agent, one connection. It turns a
//! [`NodeCall`] into the agent RPC it names, bounded by the call's deadline (also sent to the
//! agent as `grpc-timeout`), with the caller's signed context attached; it maps the outcome to
//! the one vocabulary ([`CallError`]) and appends an [`Attempt`] to the call's log, also when the
//! attempt is abandoned (a hedge won, the caller gave up): then it is recorded as cancelled.
//!
//! Every attempt (first, retry, hedge) is a client span, child of the caller's span, with
//! `node.id`, `ragmesh.shard_group`, `ragmesh.attempt` and `ragmesh.outcome`; its W3C
//! `traceparent` goes to the agent, whose server span continues the trace under it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ragmesh_proto::v1::agent_service_client::AgentServiceClient;
use ragmesh_proto::{ErrorKind, v1};
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::Instrument as _;

use crate::node_call::{
    Attempt, AttemptEnd, AttemptKind, AttemptLog, CallError, NodeAnswer, NodeCall, NodeReply, NodeRequest, Target,
};

/// Metadata key of the caller's signed context on calls to agents.
pub const CONTEXT_METADATA: &str = "x-ragmesh-context";

/// One agent behind a tonic channel.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    node: String,
    client: AgentServiceClient<Channel>,
    tls: bool,
}

impl NodeEndpoint {
    /// The endpoint of node `node` over `channel`; `tls` says whether the channel uses TLS
    /// (which sharpens the explanation of transport failures).
    pub fn new(node: impl Into<String>, channel: Channel, tls: bool) -> Self {
        NodeEndpoint { node: node.into(), client: AgentServiceClient::new(channel), tls }
    }

    /// The node this endpoint calls.
    pub fn node(&self) -> &str {
        &self.node
    }
}

impl tower::Service<NodeCall> for NodeEndpoint {
    type Response = NodeAnswer;
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<NodeAnswer, CallError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The generated client waits for its channel inside `call`, where the deadline bounds
        // the wait; the layers above decide readiness (breaker, concurrency).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: NodeCall) -> Self::Future {
        // Take the clone that was made ready, leave a fresh one (tower's documented pattern).
        let client = self.client.clone();
        let client = std::mem::replace(&mut self.client, client);
        let node = self.node.clone();
        let tls = self.tls;
        // Created here, in the caller's context (the layers above call us from its task), so
        // the caller's span is the parent.
        let span = attempt_span(&node, &call);
        Box::pin(
            async move {
                let mut guard = AttemptGuard::start(&node, &call);
                let result = send(client, &node, &call, tls).await;
                guard.finish(match &result {
                    Ok(_) => AttemptEnd::Ok,
                    Err(err) => AttemptEnd::Failed(err.clone()),
                });
                result
            }
            .instrument(span),
        )
    }
}

/// The client span of one attempt; `ragmesh.outcome` and `rpc.grpc.status_code` are recorded
/// when it ends.
fn attempt_span(node: &str, call: &NodeCall) -> tracing::Span {
    let method = call.request.method();
    let group = match &call.target {
        Target::Group(group) => Some(group.as_str()),
        Target::Node(_) => None,
    };
    tracing::info_span!(
        "node.attempt",
        otel.name = %format_args!("ragmesh.v1.AgentService/{method}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = "ragmesh.v1.AgentService",
        rpc.method = method,
        node.id = %node,
        ragmesh.shard_group = group,
        ragmesh.attempt = attempt_kind(call.kind),
        ragmesh.outcome = tracing::field::Empty,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

/// The `ragmesh.attempt` value of a kind.
pub fn attempt_kind(kind: AttemptKind) -> &'static str {
    match kind {
        AttemptKind::First => "first",
        AttemptKind::Retry => "retry",
        AttemptKind::Hedge => "hedge",
    }
}

async fn send(
    mut client: AgentServiceClient<Channel>,
    node: &str,
    call: &NodeCall,
    tls: bool,
) -> Result<NodeAnswer, CallError> {
    let started = Instant::now();
    let budget = call.budget(started);
    if budget.is_zero() {
        return Err(CallError::Timeout { budget });
    }
    let answer = async {
        match call.request.as_ref() {
            NodeRequest::Search(r) => {
                client.node_search(prepare(r.clone(), call, budget)).await.map(|r| NodeReply::Search(r.into_inner()))
            }
            NodeRequest::TermStatistics(r) => client
                .node_term_statistics(prepare(r.clone(), call, budget))
                .await
                .map(|r| NodeReply::TermStatistics(r.into_inner())),
            NodeRequest::Upsert(r) => client
                .upsert_documents(prepare(r.clone(), call, budget))
                .await
                .map(|r| NodeReply::Upsert(r.into_inner())),
            NodeRequest::Delete(r) => client
                .delete_documents(prepare(r.clone(), call, budget))
                .await
                .map(|r| NodeReply::Delete(r.into_inner())),
            NodeRequest::ListActions(r) => {
                client.list_actions(prepare(*r, call, budget)).await.map(|r| NodeReply::ListActions(r.into_inner()))
            }
            NodeRequest::RunAction(r) => {
                client.run_action(prepare(r.clone(), call, budget)).await.map(|r| NodeReply::RunAction(r.into_inner()))
            }
            NodeRequest::Prepare(r) => client
                .prepare_transaction(prepare(r.clone(), call, budget))
                .await
                .map(|r| NodeReply::Prepare(r.into_inner())),
            NodeRequest::Decide(r) => client
                .decide_transaction(prepare(r.clone(), call, budget))
                .await
                .map(|r| NodeReply::Decide(r.into_inner())),
        }
    };
    match tokio::time::timeout_at(call.deadline, answer).await {
        Err(_elapsed) => Err(CallError::Timeout { budget }),
        Ok(Ok(reply)) => Ok(NodeAnswer { node: node.to_owned(), reply }),
        Ok(Err(status)) => Err(CallError::from_status(&status, tls, Instant::now() >= call.deadline, budget)),
    }
}

/// The tonic request for `message`: the call's remaining `budget` as `grpc-timeout`, and its
/// signed context.
fn prepare<M>(message: M, call: &NodeCall, budget: std::time::Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(budget);
    if let Some(context) = &call.context {
        request.metadata_mut().insert(CONTEXT_METADATA, context.clone());
    }
    // `prepare` runs inside the attempt's span: the agent continues the trace under it.
    ragmesh_telemetry::propagation::inject(&tracing::Span::current(), request.metadata_mut());
    request
}

/// Records one attempt in the call's log when it ends, or as cancelled when it is dropped first.
struct AttemptGuard {
    log: AttemptLog,
    attempt: Option<Attempt>,
    /// The attempt's span (current when the guard starts), for its outcome.
    span: tracing::Span,
}

impl AttemptGuard {
    fn start(node: &str, call: &NodeCall) -> Self {
        let attempt = Attempt {
            node: node.to_owned(),
            kind: call.kind,
            started: Instant::now(),
            took: std::time::Duration::ZERO,
            end: AttemptEnd::Cancelled,
        };
        call.attempts.begin(node);
        AttemptGuard { log: call.attempts.clone(), attempt: Some(attempt), span: tracing::Span::current() }
    }

    fn finish(&mut self, end: AttemptEnd) {
        if let Some(mut attempt) = self.attempt.take() {
            attempt.took = attempt.started.elapsed();
            let span = &self.span;
            span.record("ragmesh.outcome", end.label());
            if let AttemptEnd::Failed(error) = &end {
                span.record("otel.status_code", "error");
                if let CallError::Error { kind, .. } | CallError::Rejected { kind, .. } = error {
                    span.record("rpc.grpc.status_code", kind.code() as i64);
                }
            } else if matches!(end, AttemptEnd::Ok) {
                span.record("rpc.grpc.status_code", 0);
            }
            attempt.end = end;
            self.log.record(attempt);
        }
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        self.finish(AttemptEnd::Cancelled);
    }
}

/// The error kind of a reply-shape mismatch (an agent answering a search with a write reply
/// cannot happen with the generated client; callers that match on [`NodeReply`] use this).
pub fn unexpected_reply(node: &str, expected: &str) -> CallError {
    CallError::Error {
        kind: ErrorKind::Internal,
        message: format!("node {node} answered a {expected} with another reply"),
    }
}

/// The statistics answer of `answer`, or the error for a node that answered something else.
pub fn statistics_reply(answer: NodeAnswer) -> Result<(String, v1::NodeTermStatisticsResponse), CallError> {
    match answer.reply {
        NodeReply::TermStatistics(reply) => Ok((answer.node, reply)),
        _ => Err(unexpected_reply(&answer.node, "term statistics")),
    }
}

/// The search answer of `answer`, or the error for a node that answered something else.
pub fn search_reply(answer: NodeAnswer) -> Result<(String, v1::NodeSearchResponse), CallError> {
    match answer.reply {
        NodeReply::Search(reply) => Ok((answer.node, reply)),
        _ => Err(unexpected_reply(&answer.node, "search")),
    }
}
