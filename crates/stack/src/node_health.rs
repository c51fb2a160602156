//! What the master knows about each node's health, kept OUTSIDE the per-node client stack: the
//! node's circuit breaker (the pure machine of [`crate::breaker`]), its consecutive failures,
//! a peak-EWMA round-trip estimate and the number of calls in flight.
//!
//! A per-node stack is rebuilt when the node's address or the TLS material changes; if this
//! state lived inside it, a certificate reload would close every open breaker and forget which
//! replica is slow. So each node has one [`NodeHealth`] cell in a [`HealthBook`], and the stack's
//! layers (breaker, load) only hold an `Arc` to it.
//!
//! That is also why the peak-EWMA estimate is written here rather than taken from tower:
//! `tower::load::PeakEwma` keeps its estimate inside the service it wraps, so a rebuilt stack
//! would start from scratch. [`PeakEwma`] is the same idea as tower's (and Finagle's): a sample
//! above the estimate replaces it at once (the peak), lower samples pull it down exponentially
//! with the time since the last sample, and an idle estimate decays towards zero so that a node
//! avoided for being slow is tried again after a while.
//!
//! Breaker transitions are sent, while the cell's lock is held (so in the order they happened),
//! to one [`BreakerSink`]: the master's single writer persists them (see `ragmesh-master`'s
//! `breakers`). The breaker's time is wall-clock time since the UNIX epoch (persisted waits
//! stay meaningful across a master restart); tests use [`Clock::tokio`] to drive it with tokio's
//! paused clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::breaker::{Admission, Breaker, BreakerConfig, BreakerState, Transition};
use crate::load::{NodeLoad, rank};
use crate::node_call::CallError;

/// A breaker state change of one node, for the one writer that persists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerUpdate {
    /// The node.
    pub node: String,
    /// Its new state.
    pub state: BreakerState,
}

/// Where transitions go: one writer task drains it. Unbounded, so that no transition is ever
/// dropped or waited for on the call path (there are at most a few per node per probe wait).
pub type BreakerSink = mpsc::UnboundedSender<BreakerUpdate>;

/// The breaker's notion of now: time since the UNIX epoch.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system clock.
    Wall,
    /// Tokio's clock (pausable in tests), anchored at the wall time it was created.
    Tokio {
        /// Tokio instant of the anchor.
        base: Instant,
        /// Wall time since the epoch at the anchor.
        epoch: Duration,
    },
}

impl Clock {
    /// A clock that follows tokio's (paused, in tests) time.
    pub fn tokio() -> Self {
        Clock::Tokio { base: Instant::now(), epoch: wall_now() }
    }

    /// Now, as time since the UNIX epoch.
    pub fn now(&self) -> Duration {
        match self {
            Clock::Wall => wall_now(),
            Clock::Tokio { base, epoch } => *epoch + base.elapsed(),
        }
    }
}

fn wall_now() -> Duration {
    // A clock before 1970 is a broken host; treating it as the epoch keeps breakers working.
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Tuning of the health book.
#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    /// The breaker of every node.
    pub breaker: BreakerConfig,
    /// RTT assumed for a node never measured (linkerd's default is 30 ms).
    pub default_rtt: Duration,
    /// Decay time of the peak-EWMA estimate.
    pub decay: Duration,
    /// How long a failure makes a node suspect to the balancer (it is avoided while another
    /// replica is healthy); after that it gets a fresh chance.
    pub suspect_for: Duration,
    /// A timeout counts against a node only when the call had at least this budget.
    pub blame_min_budget: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            breaker: BreakerConfig::default(),
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            suspect_for: Duration::from_secs(5),
            blame_min_budget: Duration::from_millis(100),
        }
    }
}

/// A peak-sensitive exponentially weighted moving average of round-trip times (pure: the time
/// is passed in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    /// Estimate in nanoseconds, as of `stamp`.
    estimate: f64,
    stamp: Instant,
    decay_nanos: f64,
}

impl PeakEwma {
    /// An estimate starting at `initial` at `now`, decaying with time constant `decay`.
    pub fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        PeakEwma { estimate: nanos(initial), stamp: now, decay_nanos: nanos(decay).max(1.0) }
    }

    /// Adds a lower bound taken at `now` (the age of a call abandoned before it was answered):
    /// it raises the estimate when above it, and says nothing when below.
    pub fn observe_at_least(&mut self, rtt: Duration, now: Instant) {
        if nanos(rtt) > self.estimate_at(now) {
            self.observe(rtt, now);
        }
    }

    /// Adds a sample taken at `now`: a peak replaces the estimate, a lower sample is averaged in
    /// with a weight growing with the time since the last sample.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = nanos(rtt);
        let current = self.estimate_at(now);
        self.estimate = if rtt > current {
            rtt
        } else {
            let weight = self.weight(now);
            current * weight + rtt * (1.0 - weight)
        };
        self.stamp = now;
    }

    /// The estimate at `now` in nanoseconds: decayed towards zero since the last sample.
    pub fn estimate_at(&self, now: Instant) -> f64 {
        self.estimate * self.weight(now)
    }

    fn weight(&self, now: Instant) -> f64 {
        let elapsed = nanos(now.saturating_duration_since(self.stamp));
        (-elapsed / self.decay_nanos).exp()
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// What ListNodes shows of a node's health.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthSnapshot {
    /// Breaker state.
    pub state: BreakerState,
    /// When (time since the epoch) the breaker lets its next probe through, when open.
    pub next_probe: Option<Duration>,
    /// Consecutive failed calls.
    pub consecutive_failures: u32,
    /// Current peak-EWMA RTT estimate.
    pub rtt: Duration,
    /// Calls in flight.
    pub pending: u32,
}

impl HealthSnapshot {
    /// Whether the breaker refuses calls (open, or half-open with its one probe out).
    pub fn refuses_calls(&self) -> bool {
        !matches!(self.state, BreakerState::Closed)
    }
}

#[derive(Debug)]
struct Cell {
    breaker: Breaker,
    consecutive_failures: u32,
    last_failure: Option<Instant>,
    ewma: PeakEwma,
    pending: u32,
    /// Send times of the calls in flight (with their multiplicity).
    in_flight: BTreeMap<Instant, u32>,
    /// Send time of the oldest call abandoned unanswered since the node last answered one: the
    /// node has said nothing since (see [`NodeHealth::load`]).
    silent_since: Option<Instant>,
}

impl Cell {
    /// When the node's silence began, if one is still running at `now`: it is forgotten
    /// `forget_after` its start.
    fn silence(&self, now: Instant, forget_after: Duration) -> Option<Instant> {
        self.silent_since.filter(|since| now.saturating_duration_since(*since) < forget_after)
    }
}

#[derive(Debug)]
struct Shared {
    config: HealthConfig,
    clock: Clock,
    sink: Option<BreakerSink>,
}

/// One node's health; shared by every stack ever built for the node.
#[derive(Debug)]
pub struct NodeHealth {
    node: String,
    shared: Arc<Shared>,
    cell: Mutex<Cell>,
}

/// How a call that passed the breaker ended, for the breaker and the failure count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The node answered (even with an error the caller caused): it is alive.
    Healthy,
    /// The failure is the node's (unreachable, overloaded, slow with a fair budget).
    Failed,
    /// Says nothing about the node (a caller's own tiny deadline).
    Neutral,
}

impl Verdict {
    /// Classifies a call's outcome; timeouts count only with at least `min_budget`.
    pub fn of<T>(result: &Result<T, CallError>, min_budget: Duration) -> Self {
        match result {
            Ok(_) => Verdict::Healthy,
            Err(err) if err.blames_node(min_budget) => Verdict::Failed,
            Err(CallError::Error { .. }) => Verdict::Healthy,
            Err(_) => Verdict::Neutral,
        }
    }
}

impl NodeHealth {
    /// The node.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn lock(&self) -> MutexGuard<'_, Cell> {
        self.cell.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, transition: Option<Transition>) {
        let Some(transition) = transition else { return };
        tracing::info!(node.id = %self.node, from = ?transition.from, to = ?transition.to, "breaker transition");
        if let Some(sink) = &self.shared.sink {
            // The writer is gone only at shutdown; nothing is left to persist to then.
            let _ = sink.send(BreakerUpdate { node: self.node.clone(), state: transition.to });
        }
    }

    /// Asks the breaker whether a call may pass now. Under the cell's lock, so that however
    /// many callers race for a due probe, exactly one gets [`Admission::Probe`].
    pub fn admit(&self) -> Admission {
        let now = self.shared.clock.now();
        let mut cell = self.lock();
        let (admission, transition) = cell.breaker.admit(now);
        self.publish(transition);
        admission
    }

    /// Records how a call that passed the breaker ended.
    pub fn record(&self, verdict: Verdict) {
        let mut cell = self.lock();
        let transition = match verdict {
            Verdict::Healthy => {
                cell.consecutive_failures = 0;
                cell.last_failure = None;
                cell.breaker.on_success()
            }
            Verdict::Failed => {
                cell.consecutive_failures = cell.consecutive_failures.saturating_add(1);
                cell.last_failure = Some(Instant::now());
                // Jitter in (0, 1] so that masters do not probe in step.
                let jitter = 1.0 - rand::random::<f64>();
                cell.breaker.on_failure(self.shared.clock.now(), jitter)
            }
            Verdict::Neutral => None,
        };
        self.publish(transition);
    }

    /// A call is sent now: one more in flight. Returns when, for [`Self::finish`].
    pub fn start(&self) -> Instant {
        let sent = Instant::now();
        let mut cell = self.lock();
        cell.pending = cell.pending.saturating_add(1);
        *cell.in_flight.entry(sent).or_default() += 1;
        sent
    }

    /// A call sent at `sent` was answered (`answered`: with a response or an error) or
    /// abandoned by its caller (a hedge won, the search ended): one fewer in flight. An answer
    /// is an RTT sample and ends the node's silence; an abandoned call's age is a lower bound
    /// only (it raises the estimate, never lowers it) and starts a silence, if none is running.
    pub fn finish(&self, sent: Instant, answered: bool) {
        let now = Instant::now();
        let silence_ends = self.shared.config.suspect_for;
        let mut cell = self.lock();
        cell.pending = cell.pending.saturating_sub(1);
        if let Some(count) = cell.in_flight.get_mut(&sent) {
            *count -= 1;
            if *count == 0 {
                cell.in_flight.remove(&sent);
            }
        }
        let age = now.saturating_duration_since(sent);
        if answered {
            cell.ewma.observe(age, now);
            cell.silent_since = None;
        } else {
            cell.ewma.observe_at_least(age, now);
            cell.silent_since = Some(cell.silence(now, silence_ends).map_or(sent, |since| since.min(sent)));
        }
    }

    /// The balancer's view of the node now.
    pub fn load(&self) -> NodeLoad {
        let now = Instant::now();
        let cell = self.lock();
        let recently_failed = cell.consecutive_failures > 0
            && cell.last_failure.is_some_and(|t| now.saturating_duration_since(t) < self.shared.config.suspect_for);
        // A call still in flight is a sample not yet taken: a frozen node's estimate would only
        // rise when its calls end, so its oldest call's age bounds the estimate from below. So
        // does a silence: a frozen node's calls are abandoned when their hedges win, at about
        // the hedge delay, and an estimate of that age would keep drawing reads to it (each one
        // spending a hedge) until heartbeats call it suspect. A silence counts for as long as a
        // failure does (`suspect_for`); then the node gets a fresh chance.
        let age = |since: Instant| nanos(now.saturating_duration_since(since));
        let oldest = cell.in_flight.keys().next().map_or(0.0, |sent| age(*sent));
        let silent = cell.silence(now, self.shared.config.suspect_for).map_or(0.0, age);
        let rtt = cell.ewma.estimate_at(now).max(oldest).max(silent);
        rank(cell.breaker.state(), self.shared.clock.now(), recently_failed, rtt, cell.pending)
    }

    /// What ListNodes shows.
    pub fn snapshot(&self) -> HealthSnapshot {
        let now = Instant::now();
        let cell = self.lock();
        let state = cell.breaker.state();
        HealthSnapshot {
            state,
            next_probe: match state {
                BreakerState::Open { until, .. } => Some(until),
                _ => None,
            },
            consecutive_failures: cell.consecutive_failures,
            rtt: Duration::from_nanos(cell.ewma.estimate_at(now) as u64),
            pending: cell.pending,
        }
    }
}

/// Every node's health, by node name. Cheap to clone; clones share the book.
#[derive(Debug, Clone)]
pub struct HealthBook {
    shared: Arc<Shared>,
    nodes: Arc<Mutex<HashMap<String, Arc<NodeHealth>>>>,
}

impl HealthBook {
    /// A book with the wall clock; transitions go to `sink` when there is one.
    pub fn new(config: HealthConfig, sink: Option<BreakerSink>) -> Self {
        HealthBook::with_clock(config, sink, Clock::Wall)
    }

    /// A book whose breakers read `clock`.
    pub fn with_clock(config: HealthConfig, sink: Option<BreakerSink>, clock: Clock) -> Self {
        HealthBook { shared: Arc::new(Shared { config, clock, sink }), nodes: Arc::default() }
    }

    /// The book's tuning.
    pub fn config(&self) -> &HealthConfig {
        &self.shared.config
    }

    fn nodes(&self) -> MutexGuard<'_, HashMap<String, Arc<NodeHealth>>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, node: &str, breaker: Breaker) -> Arc<NodeHealth> {
        let cell = Cell {
            breaker,
            consecutive_failures: 0,
            last_failure: None,
            ewma: PeakEwma::new(self.shared.config.default_rtt, self.shared.config.decay, Instant::now()),
            pending: 0,
            in_flight: BTreeMap::new(),
            silent_since: None,
        };
        Arc::new(NodeHealth { node: node.to_owned(), shared: self.shared.clone(), cell: Mutex::new(cell) })
    }

    /// The health cell of `node`, created (closed breaker) on first use.
    pub fn node(&self, node: &str) -> Arc<NodeHealth> {
        let mut nodes = self.nodes();
        if let Some(health) = nodes.get(node) {
            return health.clone();
        }
        let health = self.fresh(node, Breaker::new(self.shared.config.breaker));
        nodes.insert(node.to_owned(), health.clone());
        health
    }

    /// Restores a persisted breaker state (at master startup), replacing what the book had.
    pub fn restore(&self, node: &str, state: BreakerState) {
        let health = self.node(node);
        let mut cell = health.lock();
        cell.breaker = Breaker::restore(self.shared.config.breaker, state);
    }

    /// What ListNodes shows of `node`, if the book knows it.
    pub fn snapshot(&self, node: &str) -> Option<HealthSnapshot> {
        let health = self.nodes().get(node).cloned()?;
        Some(health.snapshot())
    }

    /// Forgets nodes for which `keep` is false (evicted nodes).
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.nodes().retain(|node, _| keep(node));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_peak_replaces_the_estimate_and_lower_samples_pull_it_down_slowly() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(30 * MS, Duration::from_secs(10), t0);
        ewma.observe(2000 * MS, t0);
        assert_eq!(ewma.estimate_at(t0), nanos(2000 * MS), "a peak is taken at once");
        ewma.observe(10 * MS, t0 + 100 * MS);
        let after = ewma.estimate_at(t0 + 100 * MS);
        assert!(after > nanos(1900 * MS), "one fast sample 100 ms later barely moves it: {after}");
        assert!(ewma.estimate_at(t0 + Duration::from_secs(60)) < nanos(10 * MS), "an idle estimate decays");
    }

    #[tokio::test(start_paused = true)]
    async fn transitions_reach_the_sink_in_order_and_snapshots_show_the_state() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let book = HealthBook::with_clock(HealthConfig::default(), Some(tx), Clock::tokio());
        let health = book.node("a");
        for _ in 0..7 {
            assert_eq!(health.admit(), Admission::Pass);
            health.record(Verdict::Failed);
        }
        let opened = rx.try_recv().expect("opening is published");
        assert!(matches!(opened.state, BreakerState::Open { attempt: 0, .. }));
        let snapshot = book.snapshot("a").expect("known node");
        assert_eq!(snapshot.consecutive_failures, 7);
        assert!(snapshot.next_probe.is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(health.admit(), Admission::Probe);
        assert!(matches!(rx.try_recv().expect("half-open").state, BreakerState::HalfOpen { .. }));
        health.record(Verdict::Healthy);
        assert_eq!(rx.try_recv().expect("closed").state, BreakerState::Closed);
        assert_eq!(book.snapshot("a").expect("known").consecutive_failures, 0);
    }

    #[test]
    fn a_restored_breaker_survives_in_the_book() {
        let book = HealthBook::new(HealthConfig::default(), None);
        let until = wall_now() + Duration::from_secs(30);
        book.restore("a", BreakerState::Open { until, attempt: 3 });
        assert!(matches!(book.node("a").admit(), Admission::Refuse { .. }));
        assert_eq!(book.snapshot("a").map(|s| s.state), Some(BreakerState::Open { until, attempt: 3 }));
    }
}
