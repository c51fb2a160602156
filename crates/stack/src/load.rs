//! The balancer's load metric for one node: [`Measured`] wraps a per-node service, counts its
//! calls in flight and their round-trip times into the node's [`NodeHealth`] (outside the
//! stack, see [`crate::node_health`]), and implements [`tower::load::Load`] with a metric that
//! orders replicas for tower's p2c balancer: a replica whose breaker refuses calls or that failed
//! recently ranks after every healthy one; then replicas compare by peak-EWMA RTT times one plus
//! a sixteenth of their calls in flight (tower's `PeakEwma` cost, with calls in flight weighted
//! by [`PENDING_WEIGHT`]), where the age of the oldest call still in flight bounds the RTT from
//! below (a frozen replica's estimate would otherwise only rise once its calls end, so a hedge
//! could land on the very replica it is meant to get around), and so does the replica's silence
//! (the age of the oldest call abandoned unanswered since it last answered one: a frozen
//! replica's calls are abandoned when their hedges win). So p2c avoids a replica that just
//! failed, is slow or has stopped answering, and the retry of a failed read lands on another
//! replica.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;

use crate::breaker::BreakerState;
use crate::node_health::NodeHealth;

/// The balancer's view of a node: lower is better, compared by `tier` first, then `cost`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct NodeLoad {
    /// 0: healthy (or its breaker is due for a probe); 1: failed recently; 2: breaker open or
    /// its probe in flight.
    pub tier: u8,
    /// Peak-EWMA RTT (ns) × (calls in flight / [`PENDING_WEIGHT`] + 1).
    pub cost: f64,
}

/// Calls in flight that count as one more RTT of waiting. Tower's `PeakEwma` counts each call in
/// flight as a full RTT (a server that serves one call at a time); an agent serves calls
/// concurrently and its measured RTT already includes the queueing they cause, so a full weight
/// counts it twice and sends reads to a slow idle replica as soon as its fast sibling has a few
/// calls in flight. Measured with one replica 50 ms slower than its sibling, 16 reads in flight,
/// 10 s per row (`DURATION=10 cargo bench -p ragmesh-e2e --bench replica_tail`): with a weight
/// of 1, p99 was 2.8x the all-healthy p99; with 4, 2.5-2.8x (1.16x in 5 s rows, which were too
/// short to show it: the slow replica still answered 1.6-2.2 % of reads, more than the 1 % a
/// p99 tolerates); with 16, 1.08x and 0.1 % (healthy replicas still share reads 57/43).
pub const PENDING_WEIGHT: f64 = 16.0;

/// The pure ranking of [`NodeLoad`]: what a node's state means to the balancer.
pub fn rank(state: BreakerState, now: Duration, recently_failed: bool, rtt_nanos: f64, pending: u32) -> NodeLoad {
    let cost = rtt_nanos * (f64::from(pending) / PENDING_WEIGHT + 1.0);
    match state {
        // A due probe must be sent somewhere, or a breaker in front of a node the balancer
        // always avoids would never close again: rank it first, its one probe is a real call
        // (retried elsewhere if it fails).
        BreakerState::Open { until, .. } if now >= until => NodeLoad { tier: 0, cost: 0.0 },
        BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => NodeLoad { tier: 2, cost },
        BreakerState::Closed if recently_failed => NodeLoad { tier: 1, cost },
        BreakerState::Closed => NodeLoad { tier: 0, cost },
    }
}

/// Applies [`Measured`] with a node's health cell.
#[derive(Debug, Clone)]
pub struct MeasuredLayer {
    health: Arc<NodeHealth>,
}

impl MeasuredLayer {
    /// Measures calls into `health`.
    pub fn new(health: Arc<NodeHealth>) -> Self {
        MeasuredLayer { health }
    }
}

impl<S> tower::Layer<S> for MeasuredLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner, health: self.health.clone() }
    }
}

/// A node's service whose calls are counted and timed into its health cell; its [`Load`] is
/// the node's [`NodeLoad`].
///
/// [`Load`]: tower::load::Load
#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
    health: Arc<NodeHealth>,
}

impl<S> tower::load::Load for Measured<S> {
    type Metric = NodeLoad;

    fn load(&self) -> NodeLoad {
        self.health.load()
    }
}

impl<S, R> Service<R> for Measured<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MeasuredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let sent = self.health.start();
        let guard = InFlight { health: self.health.clone(), sent, answered: false };
        MeasuredFuture { inner: self.inner.call(request), guard: Some(guard) }
    }
}

/// One call in flight; ends when the call is answered or abandoned. An abandoned call's age
/// counts too (tower's `PeakEwma` takes it as a sample): a replica that lost a hedge race was
/// at least that slow, and has said nothing since (see [`NodeHealth::finish`]).
#[derive(Debug)]
struct InFlight {
    health: Arc<NodeHealth>,
    sent: Instant,
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.health.finish(self.sent, self.answered);
    }
}

pin_project! {
    /// The future of [`Measured`].
    #[derive(Debug)]
    pub struct MeasuredFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F: Future> Future for MeasuredFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Some(mut guard) = this.guard.take() {
            guard.answered = true;
        }
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tower::ServiceExt as _;
    use tower::load::Load as _;

    use super::*;
    use crate::node_health::{HealthBook, HealthConfig};

    #[tokio::test(start_paused = true)]
    async fn in_flight_calls_raise_the_cost_and_slow_answers_raise_the_estimate() {
        let book = HealthBook::new(HealthConfig::default(), None);
        let slow = Measured {
            inner: tower::service_fn(|d: Duration| async move {
                tokio::time::sleep(d).await;
                Ok::<_, std::convert::Infallible>(())
            }),
            health: book.node("slow"),
        };
        let idle = slow.load();
        let mut held = slow.clone();
        let pending = held.ready().await.expect("ready").call(Duration::from_secs(2));
        let busy = slow.load();
        assert!(busy.cost > idle.cost, "a call in flight raises the cost: {idle:?} -> {busy:?}");
        tokio::time::advance(Duration::from_secs(1)).await;
        let stuck = slow.load();
        let weighted = 1e9 * (1.0 / PENDING_WEIGHT + 1.0);
        assert!(stuck.cost >= weighted, "a call in flight for 1 s counts as a 1 s RTT, with its own weight: {stuck:?}");
        pending.await.expect("answers");
        assert_eq!(book.snapshot("slow").map(|s| s.pending), Some(0));
        assert!(book.snapshot("slow").expect("known").rtt >= Duration::from_millis(1900), "2 s peak taken");
        let abandoned = slow.clone().oneshot(Duration::from_secs(5));
        assert!(tokio::time::timeout(Duration::from_millis(10), abandoned).await.is_err());
        assert_eq!(book.snapshot("slow").map(|s| s.pending), Some(0), "an abandoned call is no longer in flight");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_replica_looks_ever_slower_until_it_answers_or_its_silence_is_forgotten() {
        let config = HealthConfig::default();
        let book = HealthBook::new(config, None);
        let node = Measured {
            inner: tower::service_fn(|d: Duration| async move {
                tokio::time::sleep(d).await;
                Ok::<_, std::convert::Infallible>(())
            }),
            health: book.node("n"),
        };
        node.clone().oneshot(Duration::from_millis(20)).await.expect("answers");
        let answered = node.load();
        // A call abandoned at 100 ms (its hedge won): the node has said nothing since it was sent.
        let abandoned = node.clone().oneshot(Duration::from_secs(60));
        assert!(tokio::time::timeout(Duration::from_millis(100), abandoned).await.is_err());
        let at_abandon = node.load();
        assert!(at_abandon.cost >= 100e6, "at least as slow as the abandoned call: {at_abandon:?}");
        tokio::time::advance(Duration::from_secs(1)).await;
        let silent = node.load();
        assert!(silent.cost >= 1.1e9, "nothing in flight, yet a second of silence counts: {silent:?}");
        // A younger call abandoned sooner neither restarts the silence nor lowers the estimate.
        let short = node.clone().oneshot(Duration::from_secs(60));
        assert!(tokio::time::timeout(Duration::from_millis(1), short).await.is_err());
        assert!(node.load().cost >= silent.cost, "{:?} after {silent:?}", node.load());
        // The silence is forgotten after `suspect_for`: a fresh chance, at the abandoned peak.
        tokio::time::advance(config.suspect_for).await;
        let forgiven = node.load();
        assert!(forgiven.cost < 100e6, "{forgiven:?}");
        // An answer ends a silence at once.
        let again = node.clone().oneshot(Duration::from_secs(60));
        assert!(tokio::time::timeout(Duration::from_millis(100), again).await.is_err());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(node.load().cost >= 600e6, "silent again: {:?}", node.load());
        node.clone().oneshot(Duration::from_millis(20)).await.expect("answers");
        let spoke = node.load();
        assert!(spoke.cost < 200e6, "the answer ended the silence: {spoke:?}");
        assert!(answered.cost < at_abandon.cost);
    }

    fn state() -> impl Strategy<Value = BreakerState> {
        prop_oneof![
            Just(BreakerState::Closed),
            (0u64..100, 0u32..5).prop_map(|(s, attempt)| BreakerState::Open { until: Duration::from_secs(s), attempt }),
            (0u64..100, 0u32..5)
                .prop_map(|(s, attempt)| BreakerState::HalfOpen { since: Duration::from_secs(s), attempt }),
        ]
    }

    proptest! {
        #[test]
        fn a_healthy_replica_always_ranks_before_a_failed_or_refusing_one(
            bad in state(), now in 0u64..100, bad_failed: bool,
            good_rtt in 0f64..1e10, bad_rtt in 0f64..1e10, good_pending in 0u32..1000, bad_pending in 0u32..1000,
        ) {
            let now = Duration::from_secs(now);
            let good = rank(BreakerState::Closed, now, false, good_rtt, good_pending);
            let bad_load = rank(bad, now, bad_failed, bad_rtt, bad_pending);
            let probe_due = matches!(bad, BreakerState::Open { until, .. } if now >= until);
            let refusing = matches!(bad, BreakerState::HalfOpen { .. }) || (matches!(bad, BreakerState::Open { .. }) && !probe_due);
            if refusing || (bad == BreakerState::Closed && bad_failed) {
                prop_assert!(good < bad_load, "{good:?} should rank before {bad_load:?}");
            }
            if probe_due {
                prop_assert!(bad_load <= good, "a due probe ranks first");
            }
        }

        #[test]
        fn among_healthy_replicas_cost_grows_with_rtt_and_pending(
            rtt in 1f64..1e10, more in 1f64..1e10, pending in 0u32..1000, extra in 1u32..1000,
        ) {
            let now = Duration::ZERO;
            let base = rank(BreakerState::Closed, now, false, rtt, pending);
            prop_assert!(base < rank(BreakerState::Closed, now, false, rtt + more, pending));
            prop_assert!(base < rank(BreakerState::Closed, now, false, rtt, pending + extra));
        }
    }
}
