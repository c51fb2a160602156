//! Federated search: choose the nodes to ask (pure), ask them concurrently under one deadline,
//! and report an outcome for every node considered. One slow or dead node costs at most the
//! deadline, never more: every call is bounded by `timeout_at`, and the deadline also travels to
//! the agent as `grpc-timeout` so it can stop working on an answer nobody waits for.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use ragmesh_proto::{ErrorKind, v1};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::clients::NodeClients;
use crate::merge::{HitPayload, NodeHit};
use crate::registry::NodeView;

/// Why a node was not asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The node is down.
    Down,
    /// The node holds none of the requested collections.
    NotRouted,
}

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
    /// The node was not asked.
    Skipped(SkipReason),
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

/// Which nodes to ask and which to report as skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Nodes to ask.
    pub targets: Vec<NodeView>,
    /// Nodes considered but not asked.
    pub skipped: Vec<(String, SkipReason)>,
}

/// Chooses targets among `nodes`: restricted to `selected` when non-empty (unknown names are an
/// error listing them), skipping down nodes and nodes holding none of `collections` (empty = all).
pub fn plan(nodes: &[NodeView], collections: &[String], selected: &[String]) -> Result<Plan, Vec<String>> {
    let known: BTreeSet<&str> = nodes.iter().map(|n| n.record.name.as_str()).collect();
    let unknown: Vec<String> = selected.iter().filter(|s| !known.contains(s.as_str())).cloned().collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    let mut plan = Plan { targets: Vec::new(), skipped: Vec::new() };
    for node in considered(nodes, selected) {
        let routed = collections.is_empty() || collections.iter().any(|c| node.record.collections.contains_key(c));
        if !node.state.is_searchable() {
            plan.skipped.push((node.record.name.clone(), SkipReason::Down));
        } else if !routed {
            plan.skipped.push((node.record.name.clone(), SkipReason::NotRouted));
        } else {
            plan.targets.push(node.clone());
        }
    }
    Ok(plan)
}

/// The nodes a search considers: the `selected` ones, or all when none is selected.
pub fn considered<'a>(nodes: &'a [NodeView], selected: &'a [String]) -> impl Iterator<Item = &'a NodeView> {
    nodes.iter().filter(|node| selected.is_empty() || selected.contains(&node.record.name))
}

/// The query sent to each node.
#[derive(Debug, Clone)]
pub struct NodeQuery {
    /// Query string.
    pub query: String,
    /// Collections filter.
    pub collections: Vec<String>,
    /// Hits wanted from each node.
    pub limit: u32,
    /// Minimum node score.
    pub min_score: f64,
    /// The caller, signed for the agents (`x-ragmesh-context`).
    pub context: String,
}

/// Asks every target concurrently; each call ends by `deadline` at the latest.
pub async fn fan_out(
    clients: &NodeClients,
    targets: &[NodeView],
    query: &NodeQuery,
    deadline: Instant,
) -> Vec<NodeResult> {
    let calls = targets.iter().map(|node| {
        let span =
            tracing::info_span!("federation.node_search", node.id = %node.record.name, rpc.method = "NodeSearch");
        ask_node(clients, node, query, deadline).instrument(span)
    });
    join_all(calls).await
}

async fn ask_node(clients: &NodeClients, node: &NodeView, query: &NodeQuery, deadline: Instant) -> NodeResult {
    let started = Instant::now();
    let name = node.record.name.clone();
    let finish = |outcome| NodeResult { node: name.clone(), outcome, took: started.elapsed() };

    let mut client = match clients.client(&node.record.name, &node.record.address) {
        Ok(client) => client,
        Err(message) => return finish(Outcome::Unavailable(message)),
    };
    let budget = deadline.saturating_duration_since(started);
    let mut request = tonic::Request::new(v1::NodeSearchRequest {
        query: query.query.clone(),
        collections: query.collections.clone(),
        limit: query.limit,
        min_score: query.min_score,
    });
    request.set_timeout(budget);
    match query.context.parse() {
        Ok(value) => {
            request.metadata_mut().insert(crate::access::CONTEXT_METADATA, value);
        }
        Err(_) => {
            let message = "request context is not valid metadata".to_owned();
            return finish(Outcome::Error { kind: ErrorKind::Internal, message });
        }
    }
    let outcome = match tokio::time::timeout_at(deadline, client.node_search(request)).await {
        Err(_elapsed) => Outcome::Timeout { budget },
        Ok(Ok(response)) => {
            let response = response.into_inner();
            Outcome::Ok { hits: to_node_hits(&name, response.hits), generation: response.generation }
        }
        Ok(Err(status)) => {
            let past_deadline = Instant::now() >= deadline;
            classify(&status, clients.uses_tls(), past_deadline, budget)
        }
    };
    tracing::debug!(node.id = %name, took_ms = started.elapsed().as_millis() as u64, ?outcome, "node answered");
    finish(outcome)
}

/// Maps a node's gRPC status to an outcome of the shared vocabulary. Only a missed deadline is a
/// timeout: a call cancelled or reset before the deadline (the agent was killed, its connection
/// dropped) means the node became unreachable, whatever code the transport chose for it.
fn classify(status: &tonic::Status, tls: bool, past_deadline: bool, budget: Duration) -> Outcome {
    // Transport failures include the channel's own enforcement of `grpc-timeout`, which fails
    // the call (with a source error) just as the deadline passes.
    match ErrorKind::of(status) {
        ErrorKind::DeadlineExceeded => Outcome::Timeout { budget },
        ErrorKind::Unavailable | ErrorKind::Cancelled if past_deadline => Outcome::Timeout { budget },
        ErrorKind::Unavailable | ErrorKind::Cancelled => {
            Outcome::Unavailable(crate::error::transport_message(status, tls))
        }
        kind => Outcome::Error { kind, message: status.message().to_owned() },
    }
}

/// Why a search has no answer to give, when no node answered.
#[derive(Debug, Clone, PartialEq)]
pub enum NoAnswer {
    /// No agent has ever registered.
    NoNodes,
    /// No node considered, up or down, holds any requested collection.
    NoSuchCollections {
        /// Collections the caller asked for.
        requested: Vec<String>,
        /// Collections that exist on the considered nodes.
        existing: BTreeSet<String>,
    },
    /// Nodes were considered but none answered; `kind` says how the search failed.
    NoneAnswered {
        /// The kind of failure to report.
        kind: ErrorKind,
        /// One line per node: name and outcome.
        summary: String,
    },
}

/// Decides whether a search has an answer: `Ok` when at least one node answered (even with no
/// hits); otherwise why not. The nodes considered are those of `nodes` the caller `selected`
/// (all when none is), `collections` the requested collections (empty = all).
pub fn verdict(
    results: &[NodeResult],
    nodes: &[NodeView],
    selected: &[String],
    collections: &[String],
) -> Result<(), NoAnswer> {
    if results.iter().any(|r| matches!(r.outcome, Outcome::Ok { .. })) {
        return Ok(());
    }
    if considered(nodes, selected).next().is_none() {
        return Err(NoAnswer::NoNodes);
    }
    let holds_any = |node: &NodeView| collections.iter().any(|c| node.record.collections.contains_key(c));
    if !collections.is_empty() && !considered(nodes, selected).any(holds_any) {
        let existing = considered(nodes, selected).flat_map(|n| n.record.collections.keys().cloned()).collect();
        return Err(NoAnswer::NoSuchCollections { requested: collections.to_vec(), existing });
    }
    let asked: Vec<&Outcome> =
        results.iter().map(|r| &r.outcome).filter(|o| !matches!(o, Outcome::Skipped(_))).collect();
    let all = |f: fn(&Outcome) -> bool| !asked.is_empty() && asked.iter().all(|o| f(o));
    let kind = if all(|o| matches!(o, Outcome::Timeout { .. })) {
        ErrorKind::DeadlineExceeded
    } else if let Some(Outcome::Error { kind, .. }) = asked.first()
        && kind.is_callers_fault()
        && asked.iter().all(|o| matches!(o, Outcome::Error { kind: k, .. } if k == kind))
    {
        // Every node refused the request for the same reason the caller can fix: say so.
        *kind
    } else {
        ErrorKind::Unavailable
    };
    let summary = results.iter().map(describe).collect::<Vec<_>>().join("; ");
    Err(NoAnswer::NoneAnswered { kind, summary })
}

/// `node: outcome (detail)`, for error messages.
fn describe(result: &NodeResult) -> String {
    let node = &result.node;
    match &result.outcome {
        Outcome::Ok { hits, .. } => format!("{node}: ok ({} hits)", hits.len()),
        Outcome::Timeout { budget } => format!("{node}: timeout ({})", timeout_message(*budget)),
        Outcome::Unavailable(message) => format!("{node}: unavailable ({message})"),
        Outcome::Error { kind, message } => format!("{node}: error ({kind}: {message})"),
        Outcome::Skipped(SkipReason::Down) => format!("{node}: skipped (down)"),
        Outcome::Skipped(SkipReason::NotRouted) => format!("{node}: skipped (holds none of the collections)"),
    }
}

/// The message of a timeout outcome. Sub-millisecond budgets round up, so a search with
/// `timeout_ms=1` never claims a node had 0 ms.
pub fn timeout_message(budget: Duration) -> String {
    let millis = budget.as_micros().div_ceil(1000).max(1);
    format!("no answer within {millis} ms")
}

fn to_node_hits(node: &str, hits: Vec<v1::Hit>) -> Vec<NodeHit> {
    let mut out = Vec::with_capacity(hits.len());
    for (i, hit) in hits.into_iter().enumerate() {
        out.push(NodeHit {
            node: node.to_owned(),
            collection: hit.collection,
            doc_id: hit.doc_id,
            node_score: hit.score,
            // Ranks come from list order, not from the node's claim, so a node cannot promote itself.
            node_rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
            payload: HitPayload { title: hit.title, snippet: hit.snippet, metadata: hit.metadata },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeState;

    fn view(name: &str, state: NodeState, collections: &[&str]) -> NodeView {
        NodeView::for_tests(name, state, collections)
    }

    #[test]
    fn plan_skips_down_and_unrouted_nodes_and_reports_them() {
        let nodes = [
            view("a", NodeState::Up, &["docs"]),
            view("b", NodeState::Down, &["docs"]),
            view("c", NodeState::Suspect, &["tickets"]),
        ];
        let plan = plan(&nodes, &["docs".to_owned()], &[]).expect("plan");
        assert_eq!(plan.targets.iter().map(|n| n.record.name.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(plan.skipped, vec![("b".to_owned(), SkipReason::Down), ("c".to_owned(), SkipReason::NotRouted)]);
    }

    #[test]
    fn node_statuses_map_to_the_shared_vocabulary() {
        let budget = Duration::from_millis(500);
        let timeout = Outcome::Timeout { budget };
        assert_eq!(classify(&tonic::Status::deadline_exceeded("late"), true, false, budget), timeout);
        assert_eq!(classify(&tonic::Status::cancelled("gone"), true, true, budget), timeout);
        assert!(matches!(
            classify(&tonic::Status::unavailable("down"), true, false, budget),
            Outcome::Unavailable(m) if m == "down"
        ));
        let Outcome::Error { kind, message } =
            classify(&tonic::Status::invalid_argument("bad query"), true, false, budget)
        else {
            panic!("an application error is an error outcome");
        };
        assert_eq!((kind, message.as_str()), (ErrorKind::InvalidArgument, "bad query"));
    }

    #[test]
    fn regression_a_node_killed_mid_search_is_unavailable_not_timeout_or_error() {
        let budget = Duration::from_secs(2);
        // The connection was reset: tonic reports Unknown "transport error" with the io error as source.
        let mut reset = tonic::Status::unknown("transport error");
        reset.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert!(matches!(classify(&reset, true, false, budget), Outcome::Unavailable(_)));
        // The stream was cancelled long before the deadline: not a timeout.
        assert!(matches!(
            classify(&tonic::Status::cancelled("h2 reset"), true, false, budget),
            Outcome::Unavailable(_)
        ));
        // The channel enforcing grpc-timeout at the deadline: a timeout.
        let mut expired = tonic::Status::cancelled("Timeout expired");
        expired.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::TimedOut)));
        assert_eq!(classify(&expired, true, true, budget), Outcome::Timeout { budget });
    }

    #[test]
    fn regression_a_1_ms_timeout_never_reports_0_ms() {
        assert_eq!(timeout_message(Duration::ZERO), "no answer within 1 ms");
        assert_eq!(timeout_message(Duration::from_micros(500)), "no answer within 1 ms");
        assert_eq!(timeout_message(Duration::from_millis(2000)), "no answer within 2000 ms");
    }

    fn result(node: &str, outcome: Outcome) -> NodeResult {
        NodeResult { node: node.to_owned(), outcome, took: Duration::ZERO }
    }

    #[test]
    fn regression_a_search_no_node_answered_is_an_error_not_zero_hits() {
        let nodes = [view("a", NodeState::Up, &["docs"]), view("b", NodeState::Down, &["docs"])];
        let timeout = Outcome::Timeout { budget: Duration::from_millis(100) };
        let results = [result("a", timeout.clone()), result("b", Outcome::Skipped(SkipReason::Down))];
        let Err(NoAnswer::NoneAnswered { kind, summary }) = verdict(&results, &nodes, &[], &[]) else {
            panic!("no answer");
        };
        assert_eq!(kind, ErrorKind::DeadlineExceeded);
        assert_eq!(summary, "a: timeout (no answer within 100 ms); b: skipped (down)");

        let results = [result("a", timeout), result("b", Outcome::Unavailable("connection refused".into()))];
        let Err(NoAnswer::NoneAnswered { kind, summary }) = verdict(&results, &nodes, &[], &[]) else {
            panic!("no answer");
        };
        assert_eq!(kind, ErrorKind::Unavailable);
        assert!(summary.contains("b: unavailable (connection refused)"), "{summary}");

        let bad = |n: &str| result(n, Outcome::Error { kind: ErrorKind::InvalidArgument, message: "bad".into() });
        let Err(NoAnswer::NoneAnswered { kind, .. }) = verdict(&[bad("a"), bad("b")], &nodes, &[], &[]) else {
            panic!("no answer");
        };
        assert_eq!(kind, ErrorKind::InvalidArgument, "every node refused the query for the same reason");

        let only_down = [result("b", Outcome::Skipped(SkipReason::Down))];
        let Err(NoAnswer::NoneAnswered { kind, .. }) = verdict(&only_down, &nodes[1..], &[], &[]) else {
            panic!("no answer");
        };
        assert_eq!(kind, ErrorKind::Unavailable);
    }

    #[test]
    fn one_answer_even_without_hits_is_an_answer() {
        let nodes = [view("a", NodeState::Up, &["docs"]), view("b", NodeState::Up, &["docs"])];
        let results = [
            result("a", Outcome::Ok { hits: Vec::new(), generation: 1 }),
            result("b", Outcome::Unavailable("refused".into())),
        ];
        assert_eq!(verdict(&results, &nodes, &[], &[]), Ok(()));
    }

    #[test]
    fn regression_collections_no_node_holds_are_not_found() {
        let nodes = [view("a", NodeState::Up, &["docs"]), view("b", NodeState::Down, &["faq"])];
        let results =
            [result("a", Outcome::Skipped(SkipReason::NotRouted)), result("b", Outcome::Skipped(SkipReason::Down))];
        let Err(NoAnswer::NoSuchCollections { requested, existing }) =
            verdict(&results, &nodes, &[], &["nope".to_owned()])
        else {
            panic!("not found");
        };
        assert_eq!(requested, ["nope"]);
        assert_eq!(existing.into_iter().collect::<Vec<_>>(), ["docs", "faq"]);
        // A collection only a down node holds exists: the search is unavailable, not not-found.
        let Err(NoAnswer::NoneAnswered { kind, .. }) = verdict(&results, &nodes, &[], &["faq".to_owned()]) else {
            panic!("unavailable");
        };
        assert_eq!(kind, ErrorKind::Unavailable);
        // Only the selected nodes count: "faq" is on b, but the caller asked a alone.
        let only_a = [result("a", Outcome::Skipped(SkipReason::NotRouted))];
        let Err(NoAnswer::NoSuchCollections { existing, .. }) =
            verdict(&only_a, &nodes, &["a".to_owned()], &["faq".to_owned()])
        else {
            panic!("not found among the selected nodes");
        };
        assert_eq!(existing.into_iter().collect::<Vec<_>>(), ["docs"]);
        assert_eq!(verdict(&[], &[], &[], &[]), Err(NoAnswer::NoNodes));
    }

    #[test]
    fn plan_restricts_to_selected_nodes_and_names_unknown_ones() {
        let nodes = [view("a", NodeState::Up, &["docs"]), view("b", NodeState::Up, &["docs"])];
        let plan = plan(&nodes, &[], &["b".to_owned()]).expect("plan");
        assert_eq!(plan.targets.len(), 1);
        assert!(plan.skipped.is_empty(), "unselected nodes are not considered");
        let unknown = super::plan(&nodes, &[], &["b".to_owned(), "zz".to_owned()]).expect_err("unknown");
        assert_eq!(unknown, vec!["zz".to_owned()]);
    }
}
