//! [`Shared`]: one service used by many callers at once, without a worker task.
//!
//! Tower's `Buffer` makes a service that is not `Clone` (tower's `Balance`, `Hedge`) shareable
//! by giving it a worker task and a queue: every call is sent to the worker, which makes the
//! service ready, calls it and sends the response future back. That is two task hand-offs per
//! call, often across threads; the node client paid them twice per group read (one buffer for
//! the hedge, one for the balancer), measured at 1.21x the CPU of a bare per-node call.
//!
//! `Shared` puts the service behind a mutex instead, held only while the caller's own task
//! drives `poll_ready` and `call` (both short and non-blocking for the services it wraps; the
//! response future is then polled outside the lock). A call whose service is not ready (a
//! balancer with no ready replica yet) waits without the lock, and this is where a mutex alone
//! would lose wake-ups: the service remembers only the waker of the last task that polled it.
//! So the service is always polled with one waker of the `Shared`'s own, which wakes every
//! waiting caller; each re-polls in turn (a rare path: the node client only routes a group here
//! when it has replicas to choose from). An epoch counter closes the race between a caller
//! seeing `Pending` and registering its waker.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use tower::Service;

/// A service shared by its clones; see the module doc.
pub struct Shared<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    service: Mutex<S>,
    waiters: Arc<Waiters>,
    /// `waiters` as a waker, made once.
    wake_all: Waker,
}

/// The callers waiting for the service to become ready.
#[derive(Default)]
struct Waiters {
    wakers: Mutex<Vec<Waker>>,
    /// Incremented (under `wakers`' lock) by every wake.
    epoch: AtomicU64,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waiting = {
            let mut wakers = self.lock();
            self.epoch.fetch_add(1, Ordering::AcqRel);
            std::mem::take(&mut *wakers)
        };
        for waker in waiting {
            waker.wake();
        }
    }
}

impl<S> Shared<S> {
    /// Shares `service`.
    pub fn new(service: S) -> Self {
        let waiters = Arc::new(Waiters::default());
        let wake_all = Waker::from(waiters.clone());
        Shared { inner: Arc::new(Inner { service: Mutex::new(service), waiters, wake_all }) }
    }
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared { inner: self.inner.clone() }
    }
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl<S, R> Service<R> for Shared<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = SharedFuture<S, R>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Each call waits for the shared service in its own future (see `SharedFuture`), so a
        // caller never holds a reservation it might not use.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> SharedFuture<S, R> {
        SharedFuture { shared: self.inner.clone(), state: State::Waiting(Some(request)) }
    }
}

enum State<F, R> {
    /// Waiting for the service to be ready, to call it with the request.
    Waiting(Option<R>),
    /// Called: the service's response future.
    Called(Pin<Box<F>>),
}

/// The future of [`Shared`]: waits for the service, calls it, then is its response future.
pub struct SharedFuture<S: Service<R>, R> {
    shared: Arc<Inner<S>>,
    state: State<S::Future, R>,
}

// The request and the boxed inner future are never pinned through this type.
impl<S: Service<R>, R> Unpin for SharedFuture<S, R> {}

impl<S: Service<R>, R> fmt::Debug for SharedFuture<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Waiting(_) => "waiting",
            State::Called(_) => "called",
        };
        f.debug_struct("SharedFuture").field("state", &state).finish()
    }
}

impl<S: Service<R>, R> Future for SharedFuture<S, R> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Called(future) => return future.as_mut().poll(cx),
                State::Waiting(request) => {
                    let inner = &this.shared;
                    let epoch = inner.waiters.epoch.load(Ordering::Acquire);
                    let called = {
                        let mut service = inner.service.lock().unwrap_or_else(|p| p.into_inner());
                        let mut shared_cx = Context::from_waker(&inner.wake_all);
                        match service.poll_ready(&mut shared_cx) {
                            Poll::Ready(Ok(())) => {
                                let request = request.take().expect("a waiting call holds its request");
                                Ok(service.call(request))
                            }
                            Poll::Ready(Err(error)) => Err(Some(error)),
                            Poll::Pending => Err(None),
                        }
                    };
                    match called {
                        Ok(future) => this.state = State::Called(Box::pin(future)),
                        Err(Some(error)) => return Poll::Ready(Err(error)),
                        Err(None) => {
                            let mut wakers = inner.waiters.lock();
                            if inner.waiters.epoch.load(Ordering::Acquire) != epoch {
                                // Woken while we polled: the service may be ready now.
                                continue;
                            }
                            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                                wakers.push(cx.waker().clone());
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::sync::Semaphore;
    use tower::ServiceExt as _;

    use super::*;

    /// A service that is ready only while it holds a permit of `gate` (taken on `call`), like a
    /// balancer whose replicas are all busy; it is not Clone, as `Balance` is not.
    struct Gated {
        gate: Arc<Semaphore>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        pending: Option<Pin<Box<dyn Future<Output = tokio::sync::OwnedSemaphorePermit> + Send>>>,
        calls: Arc<AtomicUsize>,
    }

    impl Gated {
        fn new(gate: Arc<Semaphore>, calls: Arc<AtomicUsize>) -> Self {
            Gated { gate, permit: None, pending: None, calls }
        }
    }

    impl Service<u32> for Gated {
        type Response = u32;
        type Error = &'static str;
        type Future = std::future::Ready<Result<u32, &'static str>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
            if self.permit.is_some() {
                return Poll::Ready(Ok(()));
            }
            let gate = self.gate.clone();
            let pending =
                self.pending.get_or_insert_with(|| Box::pin(async move { gate.acquire_owned().await.expect("open") }));
            let permit = std::task::ready!(pending.as_mut().poll(cx));
            self.pending = None;
            self.permit = Some(permit);
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: u32) -> Self::Future {
            // The permit is consumed: the next call waits for another one.
            self.permit.take().expect("called when ready").forget();
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if request == 0 { Err("zero") } else { Ok(request * 2) })
        }
    }

    #[tokio::test]
    async fn every_waiting_caller_is_woken_when_the_service_becomes_ready() {
        let gate = Arc::new(Semaphore::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let shared = Shared::new(Gated::new(gate.clone(), calls.clone()));
        // Twenty callers on their own tasks wait for a service that only the last of them
        // polled; a plain mutex would wake that one alone.
        let waiting: Vec<_> = (1..=20u32).map(|n| tokio::spawn(shared.clone().oneshot(n))).collect::<Vec<_>>();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no call passes a closed gate");
        // One permit at a time, each released while the others wait: every caller gets one.
        for released in 1..=20 {
            gate.add_permits(1);
            tokio::time::timeout(Duration::from_secs(5), async {
                while calls.load(Ordering::SeqCst) < released {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("a waiting caller took permit {released}"));
        }
        let mut answers = Vec::new();
        for task in waiting {
            answers.push(task.await.expect("task").expect("answer"));
        }
        answers.sort_unstable();
        assert_eq!(answers, (1..=20u32).map(|n| n * 2).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_ready_service_is_called_at_once_and_its_errors_come_back() {
        let gate = Arc::new(Semaphore::new(3));
        let calls = Arc::new(AtomicUsize::new(0));
        let shared = Shared::new(Gated::new(gate, calls.clone()));
        assert_eq!(shared.clone().oneshot(21).await, Ok(42));
        assert_eq!(shared.clone().oneshot(0).await, Err("zero"));
        assert_eq!(shared.clone().oneshot(1).await, Ok(2));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_take_the_service_from_the_others() {
        let gate = Arc::new(Semaphore::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let shared = Shared::new(Gated::new(gate.clone(), calls.clone()));
        // The last caller to poll (the one the service would remember) gives up.
        let stays = tokio::spawn(shared.clone().oneshot(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let gives_up = tokio::time::timeout(Duration::from_millis(20), shared.clone().oneshot(7)).await;
        assert!(gives_up.is_err(), "nothing is ready yet");
        gate.add_permits(1);
        let answer = tokio::time::timeout(Duration::from_secs(5), stays).await.expect("woken").expect("task");
        assert_eq!(answer, Ok(10));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
