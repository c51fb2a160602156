//! Which failed reads are tried again, on another replica of the group: a
//! [`tower::retry::Policy`] for the node client's group path.
//!
//! A call is retried only when all of these hold:
//! * it is a read (`NodeRequest::is_read`): writes go through the write log, never blindly twice;
//! * its failure is retryable (`CallError::is_retryable`: unreachable, breaker open, overloaded);
//! * it goes to a shard group, which has a readable replica this call has not seen fail: at most
//!   `replicas - 1` retries, counting a replica that failed this call and has since left the
//!   directory (it died while the call was in flight);
//! * its deadline leaves at least `min_time_left`;
//! * the retry budget has a token: tower's [`TpsBudget`], shared by all groups, with Linkerd's
//!   defaults (ttl 10 s, 10 retries per second, plus 20 % of requests): every first call
//!   deposits, every retry withdraws, so a failing mesh sees at most that much extra load.
//!
//! The retry runs at once (no backoff): it goes to another replica, which the balancer picks
//! because the failed one now ranks after every healthy replica (see [`crate::load`]). The
//! retried copy is marked [`AttemptKind::Retry`], so its attempt is reported as a retry.

use std::future::Ready;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tower::retry::budget::{Budget as _, TpsBudget};

use crate::discover::Directory;
use crate::node_call::{AttemptKind, CallError, NodeAnswer, NodeCall, Target};

/// Tuning of retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// How long deposits count.
    pub ttl: Duration,
    /// Retries per second always allowed.
    pub min_per_sec: u32,
    /// Retries allowed as a fraction of requests.
    pub ratio: f32,
    /// A retry is made only when the deadline leaves at least this much.
    pub min_time_left: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            ttl: Duration::from_secs(10),
            min_per_sec: 10,
            ratio: 0.2,
            min_time_left: Duration::from_millis(5),
        }
    }
}

impl RetryConfig {
    /// The budget these settings describe (share one among all groups).
    pub fn budget(&self) -> Arc<TpsBudget> {
        Arc::new(TpsBudget::new(self.ttl, self.min_per_sec, self.ratio))
    }
}

/// The retry policy of one call (tower clones it per request, so `retries` counts one call's).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    budget: Arc<TpsBudget>,
    directory: watch::Receiver<Arc<Directory>>,
    min_time_left: Duration,
    retries: usize,
}

impl RetryPolicy {
    /// Retries under `budget` (shared), with replica counts from `directory`.
    pub fn new(budget: Arc<TpsBudget>, directory: watch::Receiver<Arc<Directory>>, config: &RetryConfig) -> Self {
        RetryPolicy { budget, directory, min_time_left: config.min_time_left, retries: 0 }
    }

    /// Whether `call`, failed with `error`, is tried again; withdraws from the budget if so.
    fn should_retry(&mut self, call: &NodeCall, error: &CallError) -> bool {
        if !call.request.is_read() || !error.is_retryable() {
            return false;
        }
        let Target::Group(group) = &call.target else { return false };
        // The replicas this call can count on: the readable ones now, plus those it already
        // tried and saw fail. A replica that just died may have left the directory before its
        // failed call came back here; it still counts, or the retry to its live sibling would
        // be refused (a killed replica's in-flight reads would fail instead of moving over).
        let failed = call.attempts.failed_nodes();
        let (replicas, untried) = {
            let directory = self.directory.borrow();
            let readable: Vec<&String> = directory.readable(group).map(|(name, _)| name).collect();
            // A replica a hedge of this call is still waiting on counts as untried: tower's
            // hedge answers with whichever copy ends first, even a failure, so this copy must
            // be retried (there, if nowhere else) rather than fail while the hedge would answer.
            let untried = readable.iter().filter(|name| !failed.contains(name)).count();
            let gone = failed.iter().filter(|name| !readable.contains(name)).collect::<std::collections::BTreeSet<_>>();
            (readable.len() + gone.len(), untried)
        };
        if untried == 0 || self.retries + 1 >= replicas.max(1) {
            return false;
        }
        if call.budget(Instant::now()) < self.min_time_left {
            return false;
        }
        // Last: a withdrawal is spent even if nothing else would have stopped the retry.
        self.budget.withdraw()
    }
}

impl tower::retry::Policy<NodeCall, NodeAnswer, CallError> for RetryPolicy {
    type Future = Ready<()>;

    fn retry(&mut self, call: &mut NodeCall, result: &mut Result<NodeAnswer, CallError>) -> Option<Ready<()>> {
        let Err(error) = result else { return None };
        if !self.should_retry(call, error) {
            return None;
        }
        self.retries += 1;
        tracing::debug!(target.group = %call.target, retry = self.retries, %error, "retrying a read on another replica");
        call.kind = AttemptKind::Retry;
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, call: &NodeCall) -> Option<NodeCall> {
        if !call.request.is_read() {
            return None;
        }
        // Called again for every retry's copy; only a request (first or hedge) deposits.
        if call.kind != AttemptKind::Retry {
            self.budget.deposit();
        }
        Some(call.clone())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ragmesh_proto::v1;
    use tower::retry::Policy as _;

    use super::*;
    use crate::discover::DirectoryNode;
    use crate::node_call::NodeRequest;

    fn directory(replicas: usize) -> watch::Receiver<Arc<Directory>> {
        let nodes = (0..replicas)
            .map(|i| (format!("n{i}"), DirectoryNode { address: format!("h:{i}"), group: "g".into(), readable: true }))
            .collect();
        watch::channel(Arc::new(Directory { nodes, tls_generation: 0 })).1
    }

    fn read(deadline: Duration) -> NodeCall {
        let request = NodeRequest::Search(v1::NodeSearchRequest::default());
        NodeCall::new(Target::Group("g".into()), request, Instant::now() + deadline)
    }

    fn unavailable() -> Result<NodeAnswer, CallError> {
        Err(CallError::Unavailable("refused".into()))
    }

    /// Runs one call that fails every time; returns how many retries the policy allowed.
    fn failing_call(service_policy: &mut RetryPolicy, deadline: Duration) -> usize {
        let call = read(deadline);
        let Some(mut copy) = service_policy.clone_request(&call) else { return 0 };
        let mut policy = service_policy.clone();
        let mut retries = 0;
        while policy.retry(&mut copy, &mut unavailable()).is_some() {
            assert_eq!(copy.kind, AttemptKind::Retry);
            retries += 1;
            let Some(next) = policy.clone_request(&copy) else { break };
            copy = next;
        }
        retries
    }

    #[test]
    fn reads_are_retried_up_to_replicas_minus_one_and_writes_or_caller_errors_never() {
        let config = RetryConfig::default();
        let mut policy = RetryPolicy::new(config.budget(), directory(3), &config);
        assert_eq!(failing_call(&mut policy, Duration::from_secs(1)), 2);
        let mut single = RetryPolicy::new(config.budget(), directory(1), &config);
        assert_eq!(failing_call(&mut single, Duration::from_secs(1)), 0, "no other replica");
        assert_eq!(failing_call(&mut policy, Duration::from_millis(1)), 0, "no time left");

        let write = NodeCall::new(
            Target::Group("g".into()),
            NodeRequest::Upsert(v1::UpsertDocumentsRequest::default()),
            Instant::now() + Duration::from_secs(1),
        );
        assert!(policy.clone_request(&write).is_none(), "a write is never cloned for a retry");
        let mut copy = read(Duration::from_secs(1));
        let mut bad: Result<NodeAnswer, CallError> =
            Err(CallError::Error { kind: ragmesh_proto::ErrorKind::InvalidArgument, message: "bad query".into() });
        assert!(policy.clone().retry(&mut copy, &mut bad).is_none(), "the caller's error is not retried");
        let mut slow: Result<NodeAnswer, CallError> = Err(CallError::Timeout { budget: Duration::from_secs(1) });
        assert!(policy.clone().retry(&mut copy, &mut slow).is_none(), "a timeout is not retried");
    }

    /// A directory of `live` readable replicas of group `g` named `n0`, `n1`, ...
    fn directory_of(live: &[&str]) -> watch::Receiver<Arc<Directory>> {
        let nodes = live
            .iter()
            .map(|name| {
                ((*name).to_owned(), DirectoryNode { address: "h:1".into(), group: "g".into(), readable: true })
            })
            .collect();
        watch::channel(Arc::new(Directory { nodes, tls_generation: 0 })).1
    }

    fn failed_on(call: &NodeCall, node: &str) {
        call.attempts.record(crate::node_call::Attempt {
            node: node.into(),
            kind: call.kind,
            started: Instant::now(),
            took: Duration::ZERO,
            end: crate::node_call::AttemptEnd::Failed(CallError::Unavailable("connection reset".into())),
        });
    }

    #[test]
    fn regression_a_read_whose_hedge_is_in_flight_is_still_retried_when_it_fails() {
        // Tower's hedge answers with whichever copy ends first, even a failure: the first copy
        // failing on a killed replica while the hedge waits on the live one must be retried
        // (next to the hedge) rather than fail the group. Seen in CI: shard-2 answered
        // `agent-4 FIRST unavailable, agent-3 HEDGE cancelled`.
        let config = RetryConfig::default();
        let mut policy = RetryPolicy::new(config.budget(), directory_of(&["n0", "n1"]), &config);
        let call = read(Duration::from_secs(1));
        let mut copy = policy.clone_request(&call).expect("a read is cloned");
        call.attempts.begin("n1");
        failed_on(&call, "n0");
        assert!(policy.retry(&mut copy, &mut unavailable()).is_some(), "n1 has not failed this call");
    }

    #[test]
    fn regression_a_read_on_a_replica_that_died_moves_to_its_sibling_after_the_directory_dropped_it() {
        // n0 was killed with the read in flight; the master noticed (n0 left the directory)
        // before the read's failure came back: n1 is left, untried, and must get the retry.
        let config = RetryConfig::default();
        let policy = RetryPolicy::new(config.budget(), directory_of(&["n1"]), &config);
        let mut call = read(Duration::from_secs(1));
        failed_on(&call, "n0");
        let mut first = policy.clone();
        assert!(first.retry(&mut call, &mut unavailable()).is_some(), "the read moves to n1");
        // n1 failed too: no replica is left untried.
        failed_on(&call, "n1");
        assert!(first.retry(&mut call, &mut unavailable()).is_none(), "nothing left to try");
        // A replica that failed this call is not tried again, even while still readable.
        let both = RetryPolicy::new(config.budget(), directory_of(&["n0"]), &config);
        let mut stale = read(Duration::from_secs(1));
        failed_on(&stale, "n0");
        assert!(both.clone().retry(&mut stale, &mut unavailable()).is_none(), "n0 already failed this call");
    }

    proptest! {
        #[test]
        fn retries_never_exceed_the_budget(requests in 1usize..3000, replicas in 2usize..5) {
            let config = RetryConfig::default();
            let mut policy = RetryPolicy::new(config.budget(), directory(replicas), &config);
            let mut retries = 0;
            for _ in 0..requests {
                retries += failing_call(&mut policy, Duration::from_secs(1));
            }
            // Within one ttl (no time passes here): the reserve plus 20 % of the requests.
            let reserve = (config.min_per_sec as usize) * (config.ttl.as_secs() as usize);
            let allowed = reserve + (requests as f64 * f64::from(config.ratio)).ceil() as usize;
            prop_assert!(retries <= allowed, "{retries} retries for {requests} requests, budget {allowed}");
            prop_assert!(retries <= requests * (replicas - 1));
            // And the budget is actually used: it is not a policy that never retries.
            prop_assert!(retries >= allowed.min(requests * (replicas - 1)).saturating_sub(2));
        }
    }
}
