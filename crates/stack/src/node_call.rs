//! The typed node call: what the master sends to a shard group or to one agent, and how it ends.
//!
//! The master's fan-out and its writes speak only this vocabulary to the node client (a
//! `Service<NodeCall>` built once, see `node_client`); the layers of that client (hedge, retry,
//! balance, breaker) work on it too. A `NodeCall` is cheap to clone (its request sits behind an
//! `Arc`), which retry and hedging need: the raw HTTP body under a generated client is not Clone.
//!
//! Every call made to a replica on behalf of one `NodeCall` (first, retries, hedges) appends an
//! [`Attempt`] to the call's shared [`AttemptLog`], so the caller can report which replicas were
//! tried and why each attempt ended.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragmesh_proto::{ErrorKind, v1};
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;

/// The node client: one boxed, cloneable service for every call the master makes to agents.
pub type NodeClient = tower::util::BoxCloneSyncService<NodeCall, NodeAnswer, CallError>;

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// One in-sync replica of this shard group, chosen by the balancer; retried and hedged.
    Group(String),
    /// Exactly this node: no other replica stands in for it, no retry, no hedge.
    Node(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Group(group) => write!(f, "shard group {group}"),
            Target::Node(node) => write!(f, "node {node}"),
        }
    }
}

/// The agent RPC a call makes.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeRequest {
    /// `AgentService/NodeSearch`: a read, may be retried and hedged.
    Search(v1::NodeSearchRequest),
    /// `AgentService/NodeTermStatistics`: the statistics phase of a global-BM25 search; a read,
    /// may be retried and hedged.
    TermStatistics(v1::NodeTermStatisticsRequest),
    /// `AgentService/UpsertDocuments`: a write, never retried blindly.
    Upsert(v1::UpsertDocumentsRequest),
    /// `AgentService/DeleteDocuments`: a write, never retried blindly.
    Delete(v1::DeleteDocumentsRequest),
    /// `AgentService/ListActions`: what the node offers; a read, sent to one node.
    ListActions(v1::ListActionsRequest),
    /// `AgentService/RunAction`: runs an action once per `call_id` (the agent answers a repeated
    /// id with the first result), so resending the same request is safe.
    RunAction(v1::RunActionRequest),
    /// `AgentService/PrepareTransaction`: phase one; idempotent per transaction id.
    Prepare(v1::PrepareTransactionRequest),
    /// `AgentService/DecideTransaction`: phase two; idempotent per transaction id.
    Decide(v1::DecideTransactionRequest),
}

impl NodeRequest {
    /// Whether the request is a search read (so the group path may retry and hedge it).
    pub fn is_read(&self) -> bool {
        matches!(self, NodeRequest::Search(_) | NodeRequest::TermStatistics(_))
    }

    /// Whether sending the same request to the same node twice does no harm: reads, and the
    /// action calls the agent deduplicates (a run by its `call_id`, a transaction step by its
    /// transaction id). Document writes are not: they go through the write log.
    pub fn is_repeatable(&self) -> bool {
        match self {
            NodeRequest::Search(_)
            | NodeRequest::TermStatistics(_)
            | NodeRequest::ListActions(_)
            | NodeRequest::Prepare(_)
            | NodeRequest::Decide(_) => true,
            NodeRequest::RunAction(run) => !run.call_id.is_empty(),
            NodeRequest::Upsert(_) | NodeRequest::Delete(_) => false,
        }
    }

    /// The gRPC method name, for spans and logs.
    pub fn method(&self) -> &'static str {
        match self {
            NodeRequest::Search(_) => "NodeSearch",
            NodeRequest::TermStatistics(_) => "NodeTermStatistics",
            NodeRequest::Upsert(_) => "UpsertDocuments",
            NodeRequest::Delete(_) => "DeleteDocuments",
            NodeRequest::ListActions(_) => "ListActions",
            NodeRequest::RunAction(_) => "RunAction",
            NodeRequest::Prepare(_) => "PrepareTransaction",
            NodeRequest::Decide(_) => "DecideTransaction",
        }
    }
}

/// An agent's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeReply {
    /// Answer to [`NodeRequest::Search`].
    Search(v1::NodeSearchResponse),
    /// Answer to [`NodeRequest::TermStatistics`].
    TermStatistics(v1::NodeTermStatisticsResponse),
    /// Answer to [`NodeRequest::Upsert`].
    Upsert(v1::UpsertDocumentsResponse),
    /// Answer to [`NodeRequest::Delete`].
    Delete(v1::DeleteDocumentsResponse),
    /// Answer to [`NodeRequest::ListActions`].
    ListActions(v1::ListActionsResponse),
    /// Answer to [`NodeRequest::RunAction`].
    RunAction(v1::RunActionResponse),
    /// Answer to [`NodeRequest::Prepare`].
    Prepare(v1::PrepareTransactionResponse),
    /// Answer to [`NodeRequest::Decide`].
    Decide(v1::DecideTransactionResponse),
}

/// A successful call: the answer and the replica that gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeAnswer {
    /// The node that answered.
    pub node: String,
    /// Its answer.
    pub reply: NodeReply,
}

/// Why a call made on the caller's behalf was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptKind {
    /// The first call.
    First,
    /// A retry after a retryable failure.
    Retry,
    /// A hedge: the earlier call was slower than the group's recent p95.
    Hedge,
}

/// One request to the node client.
#[derive(Debug, Clone)]
pub struct NodeCall {
    /// Where it goes.
    pub target: Target,
    /// What it asks.
    pub request: Arc<NodeRequest>,
    /// The caller, signed for the agents (`x-ragmesh-context` metadata), when there is one.
    pub context: Option<AsciiMetadataValue>,
    /// When the caller stops waiting; every attempt ends by then, and the agent is told
    /// (`grpc-timeout`) so it can stop working on an answer nobody waits for.
    pub deadline: Instant,
    /// Why this copy of the call is made (set by the retry and hedge layers on their copies).
    pub kind: AttemptKind,
    /// Every attempt made for the caller, shared by all copies.
    pub attempts: AttemptLog,
}

impl NodeCall {
    /// A first call to `target`.
    pub fn new(target: Target, request: NodeRequest, deadline: Instant) -> Self {
        NodeCall {
            target,
            request: Arc::new(request),
            context: None,
            deadline,
            kind: AttemptKind::First,
            attempts: AttemptLog::default(),
        }
    }

    /// The same call with the caller's signed context attached.
    pub fn with_context(mut self, context: AsciiMetadataValue) -> Self {
        self.context = Some(context);
        self
    }

    /// Time left until the deadline, from `now`.
    pub fn budget(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}

/// How a call to a node failed. The vocabulary is the fan-out's: `timeout`, `unavailable`,
/// `error`, and `skipped (breaker_open)` for a call the breaker refused locally.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No answer before the deadline.
    #[error("timeout (no answer within {} ms)", budget_millis(*.budget))]
    Timeout {
        /// The time the attempt was given.
        budget: Duration,
    },
    /// The node could not be reached, or the connection broke mid-call.
    #[error("unavailable ({0})")]
    Unavailable(String),
    /// The node's circuit breaker is open: the call was refused without being sent.
    #[error("breaker open (next probe in {} ms)", retry_in.as_millis())]
    BreakerOpen {
        /// Time until the breaker lets a probe through.
        retry_in: Duration,
    },
    /// The node did not apply a write-log entry and says where its log stands: at `applied_seq`
    /// below the entry's sequence, a gap (resend from there); at or past it, the node refused
    /// the entry as a whole and consumed its sequence (as every replica does).
    #[error("error ({kind}: {message})")]
    Rejected {
        /// Its kind, from the node's status code.
        kind: ErrorKind,
        /// The node's message.
        message: String,
        /// The last sequence of its group's log the node applied.
        applied_seq: u64,
    },
    /// The node answered with an error.
    #[error("error ({kind}: {message})")]
    Error {
        /// Its kind, from the node's status code.
        kind: ErrorKind,
        /// The node's message.
        message: String,
    },
}

/// Milliseconds of a budget, rounded up so that a 1 ms deadline never reports 0 ms.
fn budget_millis(budget: Duration) -> u128 {
    budget.as_micros().div_ceil(1000).max(1)
}

impl CallError {
    /// Maps an agent's gRPC status to the vocabulary. Only a missed deadline is a timeout: a
    /// call cancelled or reset before the deadline (the agent was killed, its connection
    /// dropped) means the node became unreachable, whatever code the transport chose for it.
    /// `tls` sharpens the explanation of transport failures.
    pub fn from_status(status: &tonic::Status, tls: bool, past_deadline: bool, budget: Duration) -> Self {
        // Transport failures include the channel's own enforcement of `grpc-timeout`, which
        // fails the call (with a source error) just as the deadline passes.
        match ErrorKind::of(status) {
            ErrorKind::DeadlineExceeded => CallError::Timeout { budget },
            ErrorKind::Unavailable | ErrorKind::Cancelled if past_deadline => CallError::Timeout { budget },
            ErrorKind::Unavailable | ErrorKind::Cancelled => CallError::Unavailable(transport_message(status, tls)),
            kind => match applied_seq_of(status) {
                Some(applied_seq) => CallError::Rejected { kind, message: status.message().to_owned(), applied_seq },
                None => CallError::Error { kind, message: status.message().to_owned() },
            },
        }
    }

    /// Whether another replica may well answer where this one failed: it was unreachable, its
    /// breaker is open, or it was overloaded. A timeout is not retried (the deadline is spent;
    /// hedging covers slowness) and neither is an answer the caller caused.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Unavailable(_) | CallError::BreakerOpen { .. } => true,
            CallError::Error { kind, .. } => matches!(kind, ErrorKind::ResourceExhausted | ErrorKind::Unavailable),
            CallError::Timeout { .. } | CallError::Rejected { .. } => false,
        }
    }

    /// Whether the failure says something about the node's health (and so counts towards its
    /// breaker). A timeout counts only when the node had `min_budget` at least: a caller's own
    /// 1 ms deadline says nothing about the node.
    pub fn blames_node(&self, min_budget: Duration) -> bool {
        match self {
            CallError::Unavailable(_) => true,
            CallError::Timeout { budget } => *budget >= min_budget,
            CallError::Error { kind, .. } => {
                matches!(kind, ErrorKind::Unavailable | ErrorKind::ResourceExhausted | ErrorKind::Internal)
            }
            CallError::BreakerOpen { .. } | CallError::Rejected { .. } => false,
        }
    }
}

/// The log position an agent reports on a write it did not apply (`x-ragmesh-applied-seq`).
fn applied_seq_of(status: &tonic::Status) -> Option<u64> {
    status.metadata().get(ragmesh_proto::APPLIED_SEQ_METADATA)?.to_str().ok()?.parse().ok()
}

/// The readable reason of a transport failure (unreachable, refused certificate, ...).
pub fn transport_message(status: &tonic::Status, tls: bool) -> String {
    use std::error::Error as _;
    match status.source() {
        Some(source) => {
            let context = ragmesh_tls::ErrorContext { tls: Some(tls), ..Default::default() };
            ragmesh_tls::explain_error_in(source, &context)
        }
        None => status.message().to_owned(),
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEnd {
    /// The node answered.
    Ok,
    /// It failed.
    Failed(CallError),
    /// It was abandoned: another attempt answered first, or the caller stopped waiting.
    Cancelled,
}

impl AttemptEnd {
    /// The fan-out vocabulary's word for how the attempt ended (`ok`, `timeout`, `unavailable`,
    /// `breaker_open`, `error`, `cancelled`): the span attribute `ragmesh.outcome` and the
    /// metrics' `outcome` label.
    pub fn label(&self) -> &'static str {
        match self {
            AttemptEnd::Ok => "ok",
            AttemptEnd::Cancelled => "cancelled",
            AttemptEnd::Failed(CallError::Timeout { .. }) => "timeout",
            AttemptEnd::Failed(CallError::Unavailable(_)) => "unavailable",
            AttemptEnd::Failed(CallError::BreakerOpen { .. }) => "breaker_open",
            AttemptEnd::Failed(CallError::Error { .. } | CallError::Rejected { .. }) => "error",
        }
    }
}

/// One call to one replica on behalf of a [`NodeCall`].
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Replica asked.
    pub node: String,
    /// Why the call was made.
    pub kind: AttemptKind,
    /// When it started.
    pub started: Instant,
    /// How long it took.
    pub took: Duration,
    /// How it ended.
    pub end: AttemptEnd,
}

/// The attempts of one caller's call, shared by every copy of it: those that ended, and the
/// nodes of those still in flight (so a hedge or a retry can go elsewhere).
#[derive(Debug, Clone, Default)]
pub struct AttemptLog(Arc<Mutex<Attempts>>);

#[derive(Debug, Default)]
struct Attempts {
    ended: Vec<Attempt>,
    /// Nodes with an attempt in flight, once per attempt.
    in_flight: Vec<String>,
}

impl AttemptLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Attempts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that an attempt to `node` started (it ends with [`AttemptLog::record`]).
    pub fn begin(&self, node: &str) {
        self.lock().in_flight.push(node.to_owned());
    }

    /// Appends an attempt that ended (begun or not: a call refused before it was sent).
    pub fn record(&self, attempt: Attempt) {
        let mut attempts = self.lock();
        if let Some(at) = attempts.in_flight.iter().position(|node| *node == attempt.node) {
            attempts.in_flight.swap_remove(at);
        }
        attempts.ended.push(attempt);
    }

    /// The attempts that ended so far, in the order they started.
    pub fn snapshot(&self) -> Vec<Attempt> {
        let mut attempts = self.lock().ended.clone();
        attempts.sort_by_key(|a| a.started);
        attempts
    }

    /// Nodes whose attempt failed.
    pub fn failed_nodes(&self) -> Vec<String> {
        let attempts = self.lock();
        attempts.ended.iter().filter(|a| matches!(a.end, AttemptEnd::Failed(_))).map(|a| a.node.clone()).collect()
    }

    /// Nodes this call has been sent to: in flight, or ended however. A retry or a hedge goes
    /// to another one while there is one.
    pub fn tried_nodes(&self) -> std::collections::BTreeSet<String> {
        let attempts = self.lock();
        attempts.ended.iter().map(|a| a.node.clone()).chain(attempts.in_flight.iter().cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_shared_vocabulary() {
        let budget = Duration::from_millis(500);
        let timeout = CallError::Timeout { budget };
        assert_eq!(CallError::from_status(&tonic::Status::deadline_exceeded("late"), true, false, budget), timeout);
        assert_eq!(CallError::from_status(&tonic::Status::cancelled("gone"), true, true, budget), timeout);
        assert_eq!(
            CallError::from_status(&tonic::Status::unavailable("down"), true, false, budget),
            CallError::Unavailable("down".into())
        );
        assert_eq!(
            CallError::from_status(&tonic::Status::invalid_argument("bad query"), true, false, budget),
            CallError::Error { kind: ErrorKind::InvalidArgument, message: "bad query".into() }
        );
    }

    #[test]
    fn a_write_the_node_did_not_apply_carries_its_log_position() {
        let budget = Duration::from_secs(1);
        let mut gap = tonic::Status::failed_precondition("gap");
        gap.metadata_mut().insert(ragmesh_proto::APPLIED_SEQ_METADATA, 41.into());
        assert_eq!(
            CallError::from_status(&gap, true, false, budget),
            CallError::Rejected { kind: ErrorKind::FailedPrecondition, message: "gap".into(), applied_seq: 41 }
        );
        let rejected = CallError::from_status(&gap, true, false, budget);
        assert!(!rejected.is_retryable() && !rejected.blames_node(Duration::ZERO));
    }

    #[test]
    fn a_node_killed_mid_call_is_unavailable_not_timeout_or_error() {
        let budget = Duration::from_secs(2);
        let mut reset = tonic::Status::unknown("transport error");
        reset.set_source(Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert!(matches!(CallError::from_status(&reset, true, false, budget), CallError::Unavailable(_)));
        let mut expired = tonic::Status::cancelled("Timeout expired");
        expired.set_source(Arc::new(std::io::Error::from(std::io::ErrorKind::TimedOut)));
        assert_eq!(CallError::from_status(&expired, true, true, budget), CallError::Timeout { budget });
    }

    #[test]
    fn retry_and_blame_follow_the_kind_of_failure() {
        let min = Duration::from_millis(100);
        let unreachable = CallError::Unavailable("refused".into());
        assert!(unreachable.is_retryable() && unreachable.blames_node(min));
        let open = CallError::BreakerOpen { retry_in: Duration::from_secs(1) };
        assert!(open.is_retryable() && !open.blames_node(min));
        let slow = CallError::Timeout { budget: Duration::from_secs(2) };
        assert!(!slow.is_retryable() && slow.blames_node(min));
        let impatient = CallError::Timeout { budget: Duration::from_millis(1) };
        assert!(!impatient.blames_node(min), "a caller's 1 ms deadline says nothing about the node");
        let bad = CallError::Error { kind: ErrorKind::InvalidArgument, message: "bad".into() };
        assert!(!bad.is_retryable() && !bad.blames_node(min));
        let busy = CallError::Error { kind: ErrorKind::ResourceExhausted, message: "busy".into() };
        assert!(busy.is_retryable() && busy.blames_node(min));
    }

    #[test]
    fn a_node_counts_as_tried_from_the_start_of_its_attempt() {
        let log = AttemptLog::default();
        log.begin("a");
        assert_eq!(log.tried_nodes().into_iter().collect::<Vec<_>>(), ["a"], "in flight counts");
        assert!(log.snapshot().is_empty(), "nothing ended yet");
        let ended = Attempt {
            node: "a".into(),
            kind: AttemptKind::First,
            started: Instant::now(),
            took: Duration::ZERO,
            end: AttemptEnd::Failed(CallError::Unavailable("refused".into())),
        };
        log.record(ended.clone());
        log.record(Attempt { node: "b".into(), end: AttemptEnd::Ok, ..ended });
        assert_eq!(log.tried_nodes().into_iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(log.failed_nodes(), ["a"]);
        assert!(log.lock().in_flight.is_empty());
    }

    #[test]
    fn only_requests_the_agent_deduplicates_are_repeatable() {
        assert!(NodeRequest::ListActions(v1::ListActionsRequest {}).is_repeatable());
        let run = v1::RunActionRequest { call_id: "c1".into(), ..Default::default() };
        assert!(NodeRequest::RunAction(run).is_repeatable());
        assert!(!NodeRequest::RunAction(v1::RunActionRequest::default()).is_repeatable(), "no call id, no dedupe");
        assert!(NodeRequest::Prepare(v1::PrepareTransactionRequest::default()).is_repeatable());
        assert!(NodeRequest::Decide(v1::DecideTransactionRequest::default()).is_repeatable());
        assert!(!NodeRequest::Upsert(v1::UpsertDocumentsRequest::default()).is_repeatable());
        for request in [
            NodeRequest::ListActions(v1::ListActionsRequest {}),
            NodeRequest::RunAction(v1::RunActionRequest::default()),
            NodeRequest::Prepare(v1::PrepareTransactionRequest::default()),
        ] {
            assert!(!request.is_read(), "{} is never hedged or retried by the group path", request.method());
        }
    }

    #[test]
    fn timeouts_never_claim_0_ms() {
        assert_eq!(CallError::Timeout { budget: Duration::ZERO }.to_string(), "timeout (no answer within 1 ms)");
        assert_eq!(
            CallError::Timeout { budget: Duration::from_millis(2000) }.to_string(),
            "timeout (no answer within 2000 ms)"
        );
    }
}
