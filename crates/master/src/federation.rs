//! Federated search: choose the nodes to ask (pure), ask them concurrently under one deadline,
//! and report an outcome for every node considered. One slow or dead node costs at most the
//! deadline, never more: every call is bounded by `timeout_at`, and the deadline also travels to
//! the agent as `grpc-timeout` so it can stop working on an answer nobody waits for.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use ragmesh_proto::v1;
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
    Timeout,
    /// The node could not be reached.
    Unavailable(String),
    /// The node answered with an error.
    Error(String),
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
    for node in nodes {
        if !selected.is_empty() && !selected.contains(&node.record.name) {
            continue;
        }
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
    let mut request = tonic::Request::new(v1::NodeSearchRequest {
        query: query.query.clone(),
        collections: query.collections.clone(),
        limit: query.limit,
        min_score: query.min_score,
    });
    request.set_timeout(deadline.saturating_duration_since(started));
    match query.context.parse() {
        Ok(value) => {
            request.metadata_mut().insert(crate::access::CONTEXT_METADATA, value);
        }
        Err(_) => return finish(Outcome::Error("request context is not valid metadata".to_owned())),
    }
    let outcome = match tokio::time::timeout_at(deadline, client.node_search(request)).await {
        Err(_elapsed) => Outcome::Timeout,
        Ok(Ok(response)) => {
            let response = response.into_inner();
            Outcome::Ok { hits: to_node_hits(&name, response.hits), generation: response.generation }
        }
        Ok(Err(status)) => classify(&status, clients.uses_tls()),
    };
    tracing::debug!(node.id = %name, took_ms = started.elapsed().as_millis() as u64, ?outcome, "node answered");
    finish(outcome)
}

/// Maps a node's gRPC status to an outcome of the shared vocabulary.
fn classify(status: &tonic::Status, tls: bool) -> Outcome {
    use tonic::Code;
    match status.code() {
        Code::DeadlineExceeded | Code::Cancelled => Outcome::Timeout,
        Code::Unavailable => Outcome::Unavailable(crate::error::transport_message(status, tls)),
        _ => Outcome::Error(format!("{:?}: {}", status.code(), status.message())),
    }
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
    use std::collections::BTreeMap;

    use super::*;
    use crate::node::NodeState;
    use crate::registry::NodeRecord;

    fn view(name: &str, state: NodeState, collections: &[&str]) -> NodeView {
        NodeView {
            record: NodeRecord {
                name: name.into(),
                address: "127.0.0.1:1".into(),
                version: String::new(),
                protocol_major: 1,
                protocol_minor: 0,
                collections: collections.iter().map(|c| ((*c).to_owned(), 1)).collect::<BTreeMap<_, _>>(),
                labels: BTreeMap::new(),
                generation: 0,
                registered_at_ms: 0,
                heartbeat_interval_ms: 1000,
            },
            state,
            down_reason: None,
            last_heartbeat: None,
            in_flight: 0,
        }
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
        assert_eq!(classify(&tonic::Status::deadline_exceeded("late"), true), Outcome::Timeout);
        assert_eq!(classify(&tonic::Status::cancelled("gone"), true), Outcome::Timeout);
        assert!(matches!(classify(&tonic::Status::unavailable("down"), true), Outcome::Unavailable(m) if m == "down"));
        let Outcome::Error(message) = classify(&tonic::Status::invalid_argument("bad query"), true) else {
            panic!("an application error is an error outcome");
        };
        assert!(message.contains("InvalidArgument") && message.contains("bad query"), "{message}");
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
