//! Hedged reads: when a group's replica has not answered a read after the group's recent p95
//! latency, the same read goes to a second replica and the first answer wins. It is tower's
//! [`Hedge`](tower::hedge::Hedge) (rotating latency histogram, delay at a percentile, select
//! the first answer) with [`HedgePolicy`] deciding what is hedged:
//! * only reads to a shard group (a write or an explicit node pick has no stand-in);
//! * the copy is marked [`AttemptKind::Hedge`], so its attempt is reported as a hedge;
//! * extra load is capped by its own [`TpsBudget`] (ttl 10 s, 5 % of reads plus a reserve of 10
//!   hedges per second), shared by all groups: when replicas are uniformly slow, hedging them all
//!   would only double the load. The 5 % alone is what hedging at the p95 spends on the ordinary
//!   tail; the reserve is what is left for a replica that stalls, whose reads in flight all need
//!   a hedge at once. The budget is checked when the hedge is due, not before.
//! * no hedge before the deadline's end is near: a copy that cannot start before the deadline
//!   is not sent.
//!
//! The hedge goes to a replica the call is not already waiting on (see `node_client`'s steering).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::{Budget as _, TpsBudget};

use crate::node_call::{AttemptKind, NodeCall, Target};

/// Tuning of hedging.
#[derive(Debug, Clone, Copy)]
pub struct HedgeConfig {
    /// Latency percentile after which a read is hedged.
    pub percentile: f32,
    /// Latencies the histogram needs before any hedge.
    pub min_data_points: u64,
    /// Rotation period of the latency histogram.
    pub period: Duration,
    /// How long deposits to the hedge budget count.
    pub ttl: Duration,
    /// Hedges per second always allowed.
    pub min_per_sec: u32,
    /// Hedges allowed as a fraction of reads.
    pub ratio: f32,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            percentile: 0.95,
            min_data_points: 20,
            period: Duration::from_secs(10),
            ttl: Duration::from_secs(10),
            min_per_sec: 10,
            ratio: 0.05,
        }
    }
}

impl HedgeConfig {
    /// The budget these settings describe (share one among all groups).
    pub fn budget(&self) -> Arc<TpsBudget> {
        Arc::new(TpsBudget::new(self.ttl, self.min_per_sec, self.ratio))
    }
}

/// What is hedged, under a shared budget.
#[derive(Debug, Clone)]
pub struct HedgePolicy {
    budget: Arc<TpsBudget>,
}

impl HedgePolicy {
    /// Hedges under `budget`.
    pub fn new(budget: Arc<TpsBudget>) -> Self {
        HedgePolicy { budget }
    }
}

impl tower::hedge::Policy<NodeCall> for HedgePolicy {
    fn clone_request(&self, call: &NodeCall) -> Option<NodeCall> {
        if !call.request.is_read() || !matches!(call.target, Target::Group(_)) {
            return None;
        }
        self.budget.deposit();
        let mut copy = call.clone();
        copy.kind = AttemptKind::Hedge;
        Some(copy)
    }

    fn can_retry(&self, call: &NodeCall) -> bool {
        Instant::now() < call.deadline && self.budget.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use ragmesh_proto::v1;
    use tower::hedge::Policy as _;

    use super::*;
    use crate::node_call::NodeRequest;

    fn call(target: Target, request: NodeRequest) -> NodeCall {
        NodeCall::new(target, request, Instant::now() + Duration::from_secs(1))
    }

    #[test]
    fn only_group_reads_are_hedged_and_the_copy_says_so() {
        let policy = HedgePolicy::new(HedgeConfig::default().budget());
        let read = call(Target::Group("g".into()), NodeRequest::Search(v1::NodeSearchRequest::default()));
        let copy = policy.clone_request(&read).expect("a group read is hedged");
        assert_eq!(copy.kind, AttemptKind::Hedge);
        assert!(Arc::ptr_eq(&copy.request, &read.request));
        let pinned = call(Target::Node("n".into()), NodeRequest::Search(v1::NodeSearchRequest::default()));
        assert!(policy.clone_request(&pinned).is_none(), "an explicit node pick has no stand-in");
        let write = call(Target::Group("g".into()), NodeRequest::Delete(v1::DeleteDocumentsRequest::default()));
        assert!(policy.clone_request(&write).is_none(), "writes are never hedged");
    }

    #[test]
    fn hedges_are_capped_by_their_budget() {
        let config = HedgeConfig::default();
        let policy = HedgePolicy::new(config.budget());
        let read = call(Target::Group("g".into()), NodeRequest::Search(v1::NodeSearchRequest::default()));
        let mut hedged = 0;
        for _ in 0..1000 {
            let copy = policy.clone_request(&read).expect("hedgeable");
            if policy.can_retry(&copy) {
                hedged += 1;
            }
        }
        // Within one ttl: the reserve (10/s × 10 s) plus 5 % of 1000 reads.
        assert!(hedged <= 100 + 50, "{hedged} hedges");
        assert!(hedged >= 50, "the budget is used: {hedged}");
        let late = NodeCall::new(Target::Group("g".into()), NodeRequest::Search(Default::default()), Instant::now());
        assert!(!policy.can_retry(&late), "no hedge after the deadline");
    }
}
