//! The master's own Prometheus series (the gRPC server series come from
//! `ragmesh_stack::metrics`). One [`MasterMetrics`] handle, registered in the registry
//! [`crate::start`] creates, is passed to the few places that count: the search's result
//! handling ([`MasterMetrics::record_search`]), the breaker transitions on their way to the
//! writer, and the rate limiter. Membership and breaker state are read at scrape time
//! ([`StateCollector`]) from the registry and the health book, so they are never stale.
//!
//! Labels are node names (admitted nodes only), outcomes and states: never queries, subjects
//! or tenants.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as MetricsRegistry;
use ragmesh_stack::breaker::BreakerState;
use ragmesh_stack::metrics::{Gauges, latency_buckets};
use ragmesh_stack::node_call::{Attempt, AttemptKind};
use ragmesh_stack::node_health::HealthBook;

use crate::federation::{GroupResult, Plan, SkipReason};
use crate::node::NodeState;
use crate::registry::Registry;

/// Labels of a per-node series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// The node's name.
    pub node: String,
}

/// Labels of a per-node outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The node's name.
    pub node: String,
    /// `ok`, `timeout`, `unavailable`, `error`, `breaker_open` or `cancelled`.
    pub outcome: String,
}

/// Labels of a breaker transition.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The node's name.
    pub node: String,
    /// The state entered: `closed`, `open`, `half_open`.
    pub to: String,
}

/// Labels of a search-cache lookup.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLookupLabels {
    /// `result` or `statistics`.
    pub cache: String,
    /// `hit`, `miss`, `coalesced` (waited for another caller's fan-out) or `bypass`.
    pub result: String,
}

/// Labels of a search cache's size.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `result` or `statistics`.
    pub cache: String,
}

/// The counters the master's request paths update.
#[derive(Debug, Clone)]
pub struct MasterMetrics {
    calls: Family<OutcomeLabels, Counter>,
    call_seconds: Family<NodeLabels, Histogram, fn() -> Histogram>,
    retries: Family<NodeLabels, Counter>,
    hedges: Family<NodeLabels, Counter>,
    groups_asked: Counter,
    groups_answered: Counter,
    groups_no_match: Counter,
    breaker_transitions: Family<TransitionLabels, Counter>,
    rate_limit_refusals: Counter,
    cache_lookups: Family<CacheLookupLabels, Counter>,
    cache_entries: Family<CacheLabels, Gauge>,
    cache_bytes: Family<CacheLabels, Gauge>,
}

fn call_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

impl MasterMetrics {
    /// Registers the master's series in `metrics`, and the scrape-time [`StateCollector`] over
    /// `registry` (set once loaded) and `health`.
    pub fn register(metrics: &mut MetricsRegistry, registry: Arc<OnceLock<Registry>>, health: HealthBook) -> Self {
        let handle = MasterMetrics::detached();
        metrics.register(
            "ragmesh_node_client_calls",
            "Calls of the node client to each node, by outcome (ok, timeout, unavailable, error, breaker_open, cancelled)",
            handle.calls.clone(),
        );
        metrics.register(
            "ragmesh_node_client_call_seconds",
            "Latency of the node client's calls to each node that ended with an answer or a failure",
            handle.call_seconds.clone(),
        );
        metrics.register("ragmesh_node_client_retries", "Retries sent to each node", handle.retries.clone());
        metrics.register("ragmesh_node_client_hedges", "Hedged reads sent to each node", handle.hedges.clone());
        metrics.register(
            "ragmesh_search_groups_asked",
            "Shard groups a federated search asked (fan-out coverage: compare with answered)",
            handle.groups_asked.clone(),
        );
        metrics.register(
            "ragmesh_search_groups_answered",
            "Shard groups that answered a federated search",
            handle.groups_answered.clone(),
        );
        metrics.register(
            "ragmesh_search_groups_no_match",
            "Shard groups a federated search did not ask to search because their term summary proves no match",
            handle.groups_no_match.clone(),
        );
        metrics.register(
            "ragmesh_breaker_transitions",
            "Circuit breaker transitions of each node, by state entered",
            handle.breaker_transitions.clone(),
        );
        metrics.register(
            "ragmesh_rate_limit_refusals",
            "Requests refused by the per-principal rate limit",
            handle.rate_limit_refusals.clone(),
        );
        metrics.register(
            "ragmesh_search_cache_lookups",
            "Lookups of the search caches (result, statistics), by result (hit, miss, coalesced, bypass)",
            handle.cache_lookups.clone(),
        );
        metrics.register(
            "ragmesh_search_cache_entries",
            "Entries held by each search cache (after its last insertion)",
            handle.cache_entries.clone(),
        );
        metrics.register(
            "ragmesh_search_cache_bytes",
            "Bytes (keys and values, as weighed) held by each search cache (after its last insertion)",
            handle.cache_bytes.clone(),
        );
        metrics.register_collector(Box::new(StateCollector { registry, health }));
        handle
    }

    /// Series registered nowhere, for a component built without a daemon's registry (tests).
    pub fn detached() -> Self {
        MasterMetrics {
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(call_histogram),
            retries: Family::default(),
            hedges: Family::default(),
            groups_asked: Counter::default(),
            groups_answered: Counter::default(),
            groups_no_match: Counter::default(),
            breaker_transitions: Family::default(),
            rate_limit_refusals: Counter::default(),
            cache_lookups: Family::default(),
            cache_entries: Family::default(),
            cache_bytes: Family::default(),
        }
    }

    /// Counts one lookup of search cache `cache` (`result`, `statistics`) ending in `result`.
    pub fn cache_lookup(&self, cache: &str, result: &str) {
        let labels = CacheLookupLabels { cache: cache.to_owned(), result: result.to_owned() };
        self.cache_lookups.get_or_create(&labels).inc();
    }

    /// Sets the size of search cache `cache`.
    pub fn cache_size(&self, cache: &str, entries: u64, bytes: u64) {
        let labels = CacheLabels { cache: cache.to_owned() };
        self.cache_entries.get_or_create(&labels).set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.cache_bytes.get_or_create(&labels).set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The counter the rate limiter increments on each refusal.
    pub fn rate_limit_refusals(&self) -> Counter {
        self.rate_limit_refusals.clone()
    }

    /// Counts one search's fan-out: groups asked and answered, and every attempt to every
    /// node (outcome, latency, retries, hedges); nodes the plan skipped because their breaker
    /// was open count as `breaker_open`.
    pub fn record_search(&self, plan: &Plan, groups: &[GroupResult]) {
        for (node, reason) in &plan.skipped {
            if *reason == SkipReason::BreakerOpen {
                self.outcome(node, "breaker_open");
            }
        }
        self.groups_asked.inc_by(groups.len() as u64);
        let answered = groups.iter().filter(|group| group.answer.is_ok()).count();
        self.groups_answered.inc_by(answered as u64);
        self.groups_no_match.inc_by(plan.no_match.len() as u64);
        for group in groups {
            self.record_attempts(&group.attempts);
        }
    }

    /// Counts every attempt of one node call (a search's group call or a replicated write):
    /// outcome, latency, retries, hedges.
    pub fn record_attempts(&self, attempts: &[Attempt]) {
        for attempt in attempts {
            let node = NodeLabels { node: attempt.node.clone() };
            match attempt.kind {
                AttemptKind::First => {}
                AttemptKind::Retry => {
                    self.retries.get_or_create(&node).inc();
                }
                AttemptKind::Hedge => {
                    self.hedges.get_or_create(&node).inc();
                }
            }
            let outcome = attempt.end.label();
            self.outcome(&attempt.node, outcome);
            // Latency of calls that reached an end; a refusal or an abandoned copy says
            // nothing about the node's speed.
            if !matches!(outcome, "breaker_open" | "cancelled") {
                self.call_seconds.get_or_create(&node).observe(attempt.took.as_secs_f64());
            }
        }
    }

    fn outcome(&self, node: &str, outcome: &str) {
        self.calls.get_or_create(&OutcomeLabels { node: node.to_owned(), outcome: outcome.to_owned() }).inc();
    }

    /// Counts a breaker transition of `node` into `state`.
    pub fn breaker_transition(&self, node: &str, state: &BreakerState) {
        let to = breaker_state_name(state).to_owned();
        self.breaker_transitions.get_or_create(&TransitionLabels { node: node.to_owned(), to }).inc();
    }
}

/// Every `outcome` label [`MasterMetrics::record_search`] writes (the words of
/// `AttemptEnd::label`).
const OUTCOMES: [&str; 6] = ["ok", "timeout", "unavailable", "error", "breaker_open", "cancelled"];

/// Every `to` label of a breaker transition.
const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

impl MasterMetrics {
    /// Drops every series of `node`, so an evicted node stops being exported (the scrape-time
    /// gauges follow the registry by themselves). A node that joins again starts from zero,
    /// which `rate()` reads as a counter reset.
    pub fn forget_node(&self, node: &str) {
        let labels = NodeLabels { node: node.to_owned() };
        self.call_seconds.remove(&labels);
        self.retries.remove(&labels);
        self.hedges.remove(&labels);
        for outcome in OUTCOMES {
            self.calls.remove(&OutcomeLabels { node: node.to_owned(), outcome: outcome.to_owned() });
        }
        for to in BREAKER_STATES {
            self.breaker_transitions.remove(&TransitionLabels { node: node.to_owned(), to: to.to_owned() });
        }
    }
}

/// Forgets the series of every node that leaves the membership, until `shutdown`.
pub async fn forget_departed(
    mut membership: tokio::sync::watch::Receiver<crate::registry::Membership>,
    metrics: MasterMetrics,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut previous = membership.borrow_and_update().clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = membership.changed() => if changed.is_err() { return },
        }
        let current = membership.borrow_and_update().clone();
        for name in previous.keys().filter(|name| !current.contains_key(*name)) {
            metrics.forget_node(name);
        }
        previous = current;
    }
}

fn breaker_state_name(state: &BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open { .. } => "open",
        BreakerState::HalfOpen { .. } => "half_open",
    }
}

/// The value of `ragmesh_breaker_state`: 0 closed, 1 half-open, 2 open.
fn breaker_state_value(state: &BreakerState) -> f64 {
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen { .. } => 1.0,
        BreakerState::Open { .. } => 2.0,
    }
}

const NODE_STATES: [NodeState; 4] = [NodeState::Joining, NodeState::Up, NodeState::Suspect, NodeState::Down];

/// Node states, heartbeat lag and breaker states, read from the registry and the health book
/// at each scrape. Nothing before the registry is loaded.
#[derive(Debug)]
pub struct StateCollector {
    registry: Arc<OnceLock<Registry>>,
    health: HealthBook,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(registry) = self.registry.get() else { return Ok(()) };
        let now = SystemTime::now();
        let states = Gauges::default();
        let lag = Gauges::default();
        let breakers = Gauges::default();
        for view in registry.snapshot() {
            let node = view.record.name.clone();
            for state in NODE_STATES {
                let value = if view.state == state { 1.0 } else { 0.0 };
                states.set(vec![("node", node.clone()), ("state", state.to_string())], value);
            }
            if let Some(last) = view.last_heartbeat {
                let seconds = now.duration_since(last).map_or(0.0, |d| d.as_secs_f64());
                lag.set(vec![("node", node.clone())], seconds);
            }
            if let Some(health) = self.health.snapshot(&node) {
                breakers.set(vec![("node", node)], breaker_state_value(&health.state));
            }
        }
        states.encode(
            &mut encoder,
            "ragmesh_membership_node_state",
            "1 for each node's current state (joining, up, suspect, down), 0 for the others",
        )?;
        lag.encode(
            &mut encoder,
            "ragmesh_membership_heartbeat_lag_seconds",
            "Seconds since each node's last heartbeat",
        )?;
        breakers.encode(
            &mut encoder,
            "ragmesh_breaker_state",
            "Circuit breaker state of each node: 0 closed, 1 half-open, 2 open",
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ragmesh_stack::node_call::{Attempt, AttemptEnd, CallError, Target};
    use ragmesh_stack::node_health::HealthConfig;
    use tokio::time::Instant;

    use super::*;
    use crate::federation::GroupTarget;

    fn attempt(node: &str, kind: AttemptKind, end: AttemptEnd) -> Attempt {
        Attempt { node: node.into(), kind, started: Instant::now(), took: Duration::from_millis(3), end }
    }

    fn group(name: &str, answer: Result<(), CallError>, attempts: Vec<Attempt>) -> GroupResult {
        GroupResult {
            target: GroupTarget {
                group: name.into(),
                target: Target::Group(name.into()),
                readable: Vec::new(),
                breaker_open: Vec::new(),
            },
            answer: answer.map(|()| ("a".to_owned(), ragmesh_proto::v1::NodeSearchResponse::default())),
            attempts,
            took: Duration::from_millis(5),
        }
    }

    fn text(registry: &MetricsRegistry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    #[tokio::test]
    async fn a_search_counts_coverage_outcomes_retries_hedges_and_skipped_open_breakers() {
        let mut registry = MetricsRegistry::default();
        let metrics = MasterMetrics::register(
            &mut registry,
            Arc::new(OnceLock::new()),
            HealthBook::new(HealthConfig::default(), None),
        );
        let plan = Plan {
            skipped: vec![("c".into(), SkipReason::BreakerOpen), ("d".into(), SkipReason::Down)],
            no_match: vec![ragmesh_stack::node_call::Target::Group("g3".into())],
            ..Plan::default()
        };
        let unavailable = CallError::Unavailable("connection refused".into());
        let groups = vec![
            group(
                "g1",
                Ok(()),
                vec![
                    attempt("a", AttemptKind::First, AttemptEnd::Ok),
                    attempt("b", AttemptKind::Hedge, AttemptEnd::Cancelled),
                ],
            ),
            group(
                "g2",
                Err(unavailable.clone()),
                vec![
                    attempt("e", AttemptKind::First, AttemptEnd::Failed(unavailable.clone())),
                    attempt("f", AttemptKind::Retry, AttemptEnd::Failed(CallError::Timeout { budget: Duration::ZERO })),
                ],
            ),
        ];
        metrics.record_search(&plan, &groups);
        metrics.breaker_transition("e", &BreakerState::Open { until: Duration::ZERO, attempt: 0 });
        metrics.rate_limit_refusals().inc();
        let text = text(&registry);
        for line in [
            "ragmesh_search_groups_asked_total 2",
            "ragmesh_search_groups_answered_total 1",
            "ragmesh_search_groups_no_match_total 1",
            r#"ragmesh_node_client_calls_total{node="a",outcome="ok"} 1"#,
            r#"ragmesh_node_client_calls_total{node="b",outcome="cancelled"} 1"#,
            r#"ragmesh_node_client_calls_total{node="c",outcome="breaker_open"} 1"#,
            r#"ragmesh_node_client_calls_total{node="e",outcome="unavailable"} 1"#,
            r#"ragmesh_node_client_calls_total{node="f",outcome="timeout"} 1"#,
            r#"ragmesh_node_client_hedges_total{node="b"} 1"#,
            r#"ragmesh_node_client_retries_total{node="f"} 1"#,
            r#"ragmesh_node_client_call_seconds_count{node="a"} 1"#,
            r#"ragmesh_breaker_transitions_total{node="e",to="open"} 1"#,
            "ragmesh_rate_limit_refusals_total 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(!text.contains(r#"node="d""#), "a node skipped as down made no call: {text}");
        assert!(!text.contains(r#"ragmesh_node_client_call_seconds_count{node="b"}"#), "a lost hedge has no latency");
        assert!(!text.contains("ragmesh_membership_node_state"), "no registry yet, no membership series");
    }

    #[tokio::test]
    async fn a_forgotten_node_leaves_no_series_and_the_others_stay() {
        let mut registry = MetricsRegistry::default();
        let metrics = MasterMetrics::register(
            &mut registry,
            Arc::new(OnceLock::new()),
            HealthBook::new(HealthConfig::default(), None),
        );
        let timeout = CallError::Timeout { budget: Duration::ZERO };
        let ends = [
            AttemptEnd::Ok,
            AttemptEnd::Cancelled,
            AttemptEnd::Failed(timeout),
            AttemptEnd::Failed(CallError::Unavailable("down".into())),
            AttemptEnd::Failed(CallError::BreakerOpen { retry_in: Duration::ZERO }),
            AttemptEnd::Failed(CallError::Error { kind: ragmesh_proto::ErrorKind::Internal, message: "x".into() }),
        ];
        for node in ["gone", "kept"] {
            let attempts = ends
                .iter()
                .zip([AttemptKind::First, AttemptKind::Retry, AttemptKind::Hedge].into_iter().cycle())
                .map(|(end, kind)| attempt(node, kind, end.clone()))
                .collect();
            metrics.record_search(&Plan::default(), &[group(node, Ok(()), attempts)]);
            for state in [
                BreakerState::Open { until: Duration::ZERO, attempt: 0 },
                BreakerState::HalfOpen { since: Duration::ZERO, attempt: 0 },
                BreakerState::Closed,
            ] {
                metrics.breaker_transition(node, &state);
            }
        }
        assert!(text(&registry).contains(r#"node="gone""#));
        metrics.forget_node("gone");
        let text = text(&registry);
        assert!(!text.contains(r#"node="gone""#), "every series of an evicted node is dropped:\n{text}");
        for end in &ends {
            assert!(OUTCOMES.contains(&end.label()), "{} is forgotten too", end.label());
            let line = format!(r#"ragmesh_node_client_calls_total{{node="kept",outcome="{}"}} 1"#, end.label());
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
        assert!(text.contains(r#"ragmesh_breaker_transitions_total{node="kept",to="half_open"} 1"#), "{text}");
    }
}
