//! The circuit breaker as a tower layer around one node's service. The state machine is
//! [`crate::breaker`]'s, kept in the node's [`NodeHealth`] cell (outside the stack, so a
//! rebuilt stack keeps its breaker).
//!
//! * `poll_ready` delegates and never waits for the breaker: an open breaker refuses the call
//!   at once in `call` with [`CallError::BreakerOpen`], so the retry layer moves the read to
//!   another replica instead of waiting (and tower's balancer, which drops a service whose
//!   `poll_ready` fails, keeps the node).
//! * When the wait has elapsed, exactly one call passes as the probe, however many race for it:
//!   the machine's `admit()` runs under the cell's lock.
//! * Outcomes are classified with [`CallError::blames_node`] (timeouts count with a budget of
//!   at least `blame_min_budget`); an answer, even an error the caller caused, counts as a
//!   success; a probe's success closes the breaker, its failure reopens it with a longer wait.
//! * A refused call is recorded in the call's attempt log, ended by `BreakerOpen`, so the
//!   caller can report `skipped: breaker_open`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;

use crate::breaker::Admission;
use crate::node_call::{Attempt, AttemptEnd, CallError, NodeCall};
use crate::node_health::{NodeHealth, Verdict};

/// Applies [`CircuitBreaker`] with a node's health cell.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    health: Arc<NodeHealth>,
    blame_min_budget: Duration,
}

impl CircuitBreakerLayer {
    /// A breaker over `health`; a timeout blames the node when its budget was at least
    /// `blame_min_budget`.
    pub fn new(health: Arc<NodeHealth>, blame_min_budget: Duration) -> Self {
        CircuitBreakerLayer { health, blame_min_budget }
    }
}

impl<S> tower::Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker { inner, health: self.health.clone(), blame_min_budget: self.blame_min_budget }
    }
}

/// One node's service behind its circuit breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    health: Arc<NodeHealth>,
    blame_min_budget: Duration,
}

impl<S: tower::load::Load> tower::load::Load for CircuitBreaker<S> {
    type Metric = S::Metric;

    fn load(&self) -> S::Metric {
        self.inner.load()
    }
}

impl<S, T> Service<NodeCall> for CircuitBreaker<S>
where
    S: Service<NodeCall, Response = T, Error = CallError>,
{
    type Response = T;
    type Error = CallError;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: NodeCall) -> Self::Future {
        match self.health.admit() {
            Admission::Refuse { retry_in } => {
                let error = CallError::BreakerOpen { retry_in };
                call.attempts.record(Attempt {
                    node: self.health.node().to_owned(),
                    kind: call.kind,
                    started: Instant::now(),
                    took: Duration::ZERO,
                    end: AttemptEnd::Failed(error.clone()),
                });
                tracing::debug!(node.id = %self.health.node(), retry_in_ms = retry_in.as_millis() as u64, "breaker refused a call");
                BreakerFuture { state: State::Refused { error: Some(error) } }
            }
            Admission::Pass | Admission::Probe => BreakerFuture {
                state: State::Called {
                    inner: self.inner.call(call),
                    health: self.health.clone(),
                    blame_min_budget: self.blame_min_budget,
                },
            },
        }
    }
}

pin_project! {
    /// The future of [`CircuitBreaker`].
    #[derive(Debug)]
    pub struct BreakerFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Refused { error: Option<CallError> },
        Called { #[pin] inner: F, health: Arc<NodeHealth>, blame_min_budget: Duration },
    }
}

impl<F, T> Future for BreakerFuture<F>
where
    F: Future<Output = Result<T, CallError>>,
{
    type Output = Result<T, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { error } => {
                let error = error.take().unwrap_or(CallError::BreakerOpen { retry_in: Duration::ZERO });
                Poll::Ready(Err(error))
            }
            StateProj::Called { inner, health, blame_min_budget } => {
                let result = std::task::ready!(inner.poll(cx));
                health.record(Verdict::of(&result, *blame_min_budget));
                Poll::Ready(result)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ragmesh_proto::v1;
    use tokio::sync::mpsc;
    use tower::{Layer as _, ServiceExt as _};

    use super::*;
    use crate::breaker::BreakerState;
    use crate::node_call::{NodeAnswer, NodeReply, NodeRequest, Target};
    use crate::node_health::{Clock, HealthBook, HealthConfig};

    /// A node whose answers the test controls, counting the calls that reach it.
    #[derive(Clone)]
    struct FakeNode {
        calls: Arc<AtomicUsize>,
        fail: Arc<std::sync::atomic::AtomicBool>,
        delay: Duration,
    }

    impl FakeNode {
        fn new(fail: bool, delay: Duration) -> Self {
            FakeNode { calls: Arc::default(), fail: Arc::new(fail.into()), delay }
        }
    }

    impl Service<NodeCall> for FakeNode {
        type Response = NodeAnswer;
        type Error = CallError;
        type Future = Pin<Box<dyn Future<Output = Result<NodeAnswer, CallError>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _call: NodeCall) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let fail = self.fail.load(Ordering::SeqCst);
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if fail {
                    Err(CallError::Unavailable("connection refused".into()))
                } else {
                    Ok(NodeAnswer { node: "a".into(), reply: NodeReply::Search(v1::NodeSearchResponse::default()) })
                }
            })
        }
    }

    fn call() -> NodeCall {
        let request = NodeRequest::Search(v1::NodeSearchRequest::default());
        NodeCall::new(Target::Node("a".into()), request, Instant::now() + Duration::from_secs(5))
    }

    fn breaker(
        node: &FakeNode,
    ) -> (CircuitBreaker<FakeNode>, mpsc::UnboundedReceiver<crate::node_health::BreakerUpdate>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let book = HealthBook::with_clock(HealthConfig::default(), Some(tx), Clock::tokio());
        let layer = CircuitBreakerLayer::new(book.node("a"), Duration::from_millis(100));
        (layer.layer(node.clone()), rx)
    }

    async fn open(service: &CircuitBreaker<FakeNode>) {
        for _ in 0..7 {
            let result = service.clone().oneshot(call()).await;
            assert!(matches!(result, Err(CallError::Unavailable(_))));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_7_failures_and_then_the_node_receives_no_calls() {
        let node = FakeNode::new(true, Duration::ZERO);
        let (service, mut transitions) = breaker(&node);
        open(&service).await;
        assert_eq!(node.calls.load(Ordering::SeqCst), 7);
        assert!(matches!(transitions.try_recv().map(|u| u.state), Ok(BreakerState::Open { attempt: 0, .. })));
        for _ in 0..50 {
            let refused = call();
            let result = service.clone().oneshot(refused.clone()).await;
            assert!(matches!(result, Err(CallError::BreakerOpen { .. })), "{result:?}");
            let attempts = refused.attempts.snapshot();
            assert_eq!(attempts.len(), 1);
            assert!(matches!(attempts[0].end, AttemptEnd::Failed(CallError::BreakerOpen { .. })));
        }
        assert_eq!(node.calls.load(Ordering::SeqCst), 7, "an open breaker sends nothing to the node");
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_one_probe_passes_under_100_concurrent_calls_and_its_success_closes() {
        let node = FakeNode::new(true, Duration::from_millis(50));
        let (service, mut transitions) = breaker(&node);
        open(&service).await;
        node.fail.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..100 {
            calls.spawn(service.clone().oneshot(call()));
        }
        let results = calls.join_all().await;
        let passed = results.iter().filter(|r| r.is_ok()).count();
        let refused = results.iter().filter(|r| matches!(r, Err(CallError::BreakerOpen { .. }))).count();
        assert_eq!((passed, refused), (1, 99), "one probe, the rest refused");
        assert_eq!(node.calls.load(Ordering::SeqCst), 8);
        let states: Vec<_> = std::iter::from_fn(|| transitions.try_recv().ok()).map(|u| u.state).collect();
        assert!(matches!(states[..], [BreakerState::Open { .. }, BreakerState::HalfOpen { .. }, BreakerState::Closed]));
        assert!(service.clone().oneshot(call()).await.is_ok(), "closed again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_with_a_longer_wait() {
        let node = FakeNode::new(true, Duration::ZERO);
        let (service, mut transitions) = breaker(&node);
        open(&service).await;
        let Ok(BreakerState::Open { until: first, .. }) = transitions.try_recv().map(|u| u.state) else {
            panic!("opened")
        };
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(service.clone().oneshot(call()).await, Err(CallError::Unavailable(_))), "the probe fails");
        let states: Vec<_> = std::iter::from_fn(|| transitions.try_recv().ok()).map(|u| u.state).collect();
        let [BreakerState::HalfOpen { since, .. }, BreakerState::Open { until: second, attempt: 1 }] = states[..]
        else {
            panic!("half-open then reopened: {states:?}")
        };
        let first_wait = first.saturating_sub(since - Duration::from_secs(1));
        assert!(second - since > first_wait, "the wait grew: {:?} after {:?}", second - since, first_wait);
        assert!(second - since >= Duration::from_secs(1), "2 s jittered down to at least 1 s");
        assert!(matches!(service.clone().oneshot(call()).await, Err(CallError::BreakerOpen { .. })));
        assert_eq!(node.calls.load(Ordering::SeqCst), 8);
    }
}
