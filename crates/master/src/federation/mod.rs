//! Federated search: choose the shard groups to ask ([`plan`], pure), for a global-BM25 search
//! gather each group's statistics for the query's terms first ([`gather_statistics`]), ask each
//! group once through the node client under one deadline ([`fan_out`]), and report an outcome
//! for every group and every node considered ([`report`], pure).
//!
//! The node client balances a group's call over its in-sync replicas, retries it elsewhere when
//! a replica is unreachable and hedges it when a replica is slow, so the fan-out itself only
//! makes one call per group; the attempts it made come back in the call's attempt log. Every
//! call is also bounded here by `timeout_at`, so one slow group costs at most the deadline.

pub mod plan;
pub mod report;

use std::time::Duration;

use futures::future::join_all;
use ragmesh_proto::{ErrorKind, v1};
use ragmesh_stack::endpoint::{search_reply, statistics_reply};
use ragmesh_stack::node_call::{Attempt, CallError, NodeAnswer, NodeCall, NodeClient, NodeRequest};
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::merge::{HitPayload, NodeHit};
use crate::registry::NodeView;
pub use plan::{
    GroupTarget, NodeTermSummary, Plan, QueryReadings, Replica, RoutingParsers, SkipReason, Unanswerable, considered,
    plan, skip_no_match,
};
pub use report::{GroupEnd, GroupReport, NoAnswer, group_reports, node_results, verdict};

/// What happened on one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The node answered.
    Ok {
        /// Its hits in rank order.
        hits: Vec<NodeHit>,
        /// Index generation it searched.
        generation: u64,
    },
    /// The node did not answer in time.
    Timeout {
        /// The time it was given (what was left of the search's deadline when it was asked).
        budget: Duration,
    },
    /// The node could not be reached, or the connection to it broke mid-call.
    Unavailable(String),
    /// The node answered with an error.
    Error {
        /// What kind of error (from the node's status code).
        kind: ErrorKind,
        /// The node's message.
        message: String,
    },
    /// The call was abandoned because another replica answered first.
    Cancelled,
    /// A readable replica of a group whose call ended (failed, or ran out of time) before it
    /// was asked.
    NotAsked(CallError),
    /// The node was not asked.
    Skipped(SkipReason),
}

impl Outcome {
    /// The outcome of a failed call.
    pub fn failed(error: &CallError) -> Outcome {
        match error {
            CallError::Timeout { budget } => Outcome::Timeout { budget: *budget },
            CallError::Unavailable(message) => Outcome::Unavailable(message.clone()),
            CallError::BreakerOpen { .. } => Outcome::Skipped(SkipReason::BreakerOpen),
            CallError::Error { kind, message } | CallError::Rejected { kind, message, .. } => {
                Outcome::Error { kind: *kind, message: message.clone() }
            }
        }
    }
}

/// Outcome of one node with its timing.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeResult {
    /// Node name.
    pub node: String,
    /// What happened.
    pub outcome: Outcome,
    /// Time spent waiting for it.
    pub took: Duration,
}

/// The nodes as the plan sees them: shard group, liveness, sync state; `breaker_open` says
/// whether a node's breaker refuses calls now.
pub fn replicas_of(nodes: &[NodeView], breaker_open: impl Fn(&str) -> bool) -> Vec<Replica> {
    nodes
        .iter()
        .map(|node| Replica {
            name: node.record.name.clone(),
            group: node.record.group().to_owned(),
            searchable: node.state.is_searchable(),
            in_sync: node.sync.is_in_sync(),
            breaker_open: breaker_open(&node.record.name),
            collections: node.record.collections.keys().cloned().collect(),
        })
        .collect()
}

/// The query sent to each group.
#[derive(Debug, Clone)]
pub struct NodeQuery {
    /// Query string.
    pub query: String,
    /// Collections filter.
    pub collections: Vec<String>,
    /// Hits wanted from each group.
    pub limit: u32,
    /// Minimum node score.
    pub min_score: f64,
    /// The caller, signed for the agents (`x-ragmesh-context`).
    pub context: AsciiMetadataValue,
    /// Collection-wide statistics every node scores with (global BM25), or none (each node's own).
    pub statistics: Option<v1::TermStatistics>,
}

/// How one group's call ended.
#[derive(Debug, Clone)]
pub struct GroupResult {
    /// The call made.
    pub target: GroupTarget,
    /// The replica that answered and its answer, or why none did.
    pub answer: Result<(String, v1::NodeSearchResponse), CallError>,
    /// Every attempt made to the group's replicas.
    pub attempts: Vec<Attempt>,
    /// Time from the call to its end.
    pub took: Duration,
}

/// How one group's statistics call ended.
#[derive(Debug, Clone)]
pub struct StatisticsResult {
    /// The call made.
    pub target: GroupTarget,
    /// The replica that answered and its statistics, or why none did.
    pub answer: Result<(String, v1::NodeTermStatisticsResponse), CallError>,
    /// Every attempt made to the group's replicas.
    pub attempts: Vec<Attempt>,
    /// Time from the call to its end.
    pub took: Duration,
}

impl StatisticsResult {
    /// A group that failed the statistics phase, as a search result: it is reported with that
    /// failure and not asked to search (it would be scored with statistics it did not add to).
    pub fn into_failed_search(self) -> Option<GroupResult> {
        match self.answer {
            Ok(_) => None,
            Err(error) => {
                Some(GroupResult { target: self.target, answer: Err(error), attempts: self.attempts, took: self.took })
            }
        }
    }
}

/// The statistics phase of a global-BM25 search: asks every target concurrently for the BM25
/// statistics of `query`'s terms; each call ends by `deadline` at the latest.
pub async fn gather_statistics(
    client: &NodeClient,
    targets: &[GroupTarget],
    query: &NodeQuery,
    deadline: Instant,
) -> Vec<StatisticsResult> {
    let calls = targets.iter().map(|target| {
        let span = tracing::info_span!(
            "federation.group_statistics",
            shard = %target.group,
            target = %target.target,
            rpc.method = "NodeTermStatistics"
        );
        let request = NodeRequest::TermStatistics(v1::NodeTermStatisticsRequest { query: query.query.clone() });
        async move {
            let asked = ask(client.clone(), target, request, query, deadline).await;
            StatisticsResult {
                target: target.clone(),
                answer: asked.answer.and_then(statistics_reply),
                attempts: asked.attempts,
                took: asked.took,
            }
        }
        .instrument(span)
    });
    join_all(calls).await
}

/// Asks every target concurrently through `client`; each call ends by `deadline` at the latest.
pub async fn fan_out(
    client: &NodeClient,
    targets: &[GroupTarget],
    query: &NodeQuery,
    deadline: Instant,
) -> Vec<GroupResult> {
    let calls = targets.iter().map(|target| {
        let span = tracing::info_span!(
            "federation.group_search",
            shard = %target.group,
            target = %target.target,
            rpc.method = "NodeSearch"
        );
        ask_group(client.clone(), target, query, deadline).instrument(span)
    });
    join_all(calls).await
}

async fn ask_group(client: NodeClient, target: &GroupTarget, query: &NodeQuery, deadline: Instant) -> GroupResult {
    let request = NodeRequest::Search(v1::NodeSearchRequest {
        query: query.query.clone(),
        collections: query.collections.clone(),
        limit: query.limit,
        min_score: query.min_score,
        statistics: query.statistics.clone(),
    });
    let asked = ask(client, target, request, query, deadline).await;
    GroupResult {
        target: target.clone(),
        answer: asked.answer.and_then(search_reply),
        attempts: asked.attempts,
        took: asked.took,
    }
}

/// One group's call, however it ended.
struct Asked {
    answer: Result<NodeAnswer, CallError>,
    attempts: Vec<Attempt>,
    took: Duration,
}

/// Makes `request` to `target` in the caller's name, bounded by `deadline`.
async fn ask(
    client: NodeClient,
    target: &GroupTarget,
    request: NodeRequest,
    query: &NodeQuery,
    deadline: Instant,
) -> Asked {
    let started = Instant::now();
    let method = request.method();
    let call = NodeCall::new(target.target.clone(), request, deadline).with_context(query.context.clone());
    let attempts = call.attempts.clone();
    let budget = deadline.saturating_duration_since(started);
    let answer = match tokio::time::timeout_at(deadline, client.oneshot(call)).await {
        Err(_elapsed) => Err(CallError::Timeout { budget }),
        Ok(result) => result,
    };
    let took = started.elapsed();
    tracing::debug!(shard = %target.group, method, took_ms = took.as_millis() as u64, ok = answer.is_ok(), "group answered");
    Asked { answer, attempts: attempts.snapshot(), took }
}

/// The message of a timeout outcome. Sub-millisecond budgets round up, so a search with
/// `timeout_ms=1` never claims a node had 0 ms.
pub fn timeout_message(budget: Duration) -> String {
    let millis = budget.as_micros().div_ceil(1000).max(1);
    format!("no answer within {millis} ms")
}

/// A node's hits as merge input; ranks come from list order, not from the node's claim, so a
/// node cannot promote itself.
pub(crate) fn to_node_hits(node: &str, hits: Vec<v1::Hit>) -> Vec<NodeHit> {
    let mut out = Vec::with_capacity(hits.len());
    for (i, hit) in hits.into_iter().enumerate() {
        out.push(NodeHit {
            node: node.to_owned(),
            collection: hit.collection,
            doc_id: hit.doc_id,
            node_score: hit.score,
            node_rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
            payload: HitPayload { title: hit.title, snippet: hit.snippet, metadata: hit.metadata },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_1_ms_timeout_never_reports_0_ms() {
        assert_eq!(timeout_message(Duration::ZERO), "no answer within 1 ms");
        assert_eq!(timeout_message(Duration::from_micros(500)), "no answer within 1 ms");
        assert_eq!(timeout_message(Duration::from_millis(2000)), "no answer within 2000 ms");
    }

    #[test]
    fn breaker_refusals_are_reported_as_skipped_breaker_open() {
        let open = CallError::BreakerOpen { retry_in: Duration::from_secs(3) };
        assert_eq!(Outcome::failed(&open), Outcome::Skipped(SkipReason::BreakerOpen));
        let gone = CallError::Unavailable("connection refused".into());
        assert_eq!(Outcome::failed(&gone), Outcome::Unavailable("connection refused".into()));
    }
}
