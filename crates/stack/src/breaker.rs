//! The circuit breaker of one node as a pure state machine: no clock reads, no randomness, no
//! I/O. The async layer around it (issue 7) passes the time and a jitter fraction in, and
//! persists every [`Transition`] it returns; counters (consecutive failures) are not persisted.
//!
//! ```text
//!            failure × threshold              wait elapsed: exactly one probe
//!  Closed ─────────────────────────► Open ─────────────────────────────────► HalfOpen
//!    ▲                                 ▲   probe failed: wait grows ×2 (≤ max)  │
//!    │                                 └────────────────────────────────────────┤
//!    └──────────────────────────────────────────────────────────────────────────┘
//!                                 probe succeeded
//! ```
//! A probe whose outcome never arrives (its caller gave up) does not wedge the breaker: after
//! `probe_timeout` in half-open another single probe is let through.

use std::time::Duration;

/// Tuning of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// Wait before the first probe after opening (before jitter).
    pub min_wait: Duration,
    /// Longest wait between probes.
    pub max_wait: Duration,
    /// How long a half-open breaker waits for its probe's outcome before letting another through.
    pub probe_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 7,
            min_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(10),
        }
    }
}

/// The persisted part of a breaker: which state, and when its current wait ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are refused until `until` (time since the caller's epoch).
    Open {
        /// End of the wait.
        until: Duration,
        /// Consecutive failed openings (0 for the first); the wait doubles with each.
        attempt: u32,
    },
    /// One probe is in flight since `since`; other calls are refused.
    HalfOpen {
        /// When the probe was let through.
        since: Duration,
        /// The attempt the probe belongs to.
        attempt: u32,
    },
}

/// What a breaker says to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: the call passes.
    Pass,
    /// The one probe of a half-open breaker: report its outcome.
    Probe,
    /// Refused locally; the breaker may let a probe through after `retry_in`.
    Refuse {
        /// Time until the next probe may pass.
        retry_in: Duration,
    },
}

/// A state change, to be persisted by the one writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
}

/// One node's breaker: the persisted state plus the in-memory failure count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker::restore(config, BreakerState::Closed)
    }

    /// A breaker in a persisted state (after a master restart). A restored half-open breaker
    /// lost its probe with the old process, so it goes back to open, due at once.
    pub fn restore(config: BreakerConfig, state: BreakerState) -> Self {
        let state = match state {
            BreakerState::HalfOpen { since, attempt } => BreakerState::Open { until: since, attempt },
            other => other,
        };
        Breaker { config, state, consecutive_failures: 0 }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Decides whether a call at `now` may pass.
    pub fn admit(&mut self, now: Duration) -> (Admission, Option<Transition>) {
        match self.state {
            BreakerState::Closed => (Admission::Pass, None),
            BreakerState::Open { until, attempt } if now >= until => {
                let transition = self.set(BreakerState::HalfOpen { since: now, attempt });
                (Admission::Probe, transition)
            }
            BreakerState::Open { until, .. } => (Admission::Refuse { retry_in: until - now }, None),
            BreakerState::HalfOpen { since, attempt } => {
                let probe_due = since.saturating_add(self.config.probe_timeout);
                if now >= probe_due {
                    // The probe's outcome never came: let one more through.
                    self.state = BreakerState::HalfOpen { since: now, attempt };
                    (Admission::Probe, None)
                } else {
                    (Admission::Refuse { retry_in: probe_due - now }, None)
                }
            }
        }
    }

    /// Records a call that succeeded.
    pub fn on_success(&mut self) -> Option<Transition> {
        self.consecutive_failures = 0;
        match self.state {
            BreakerState::HalfOpen { .. } => self.set(BreakerState::Closed),
            _ => None,
        }
    }

    /// Records a call that failed at `now`; `jitter` in (0, 1] scales the next wait down (the
    /// caller draws it at random, so that breakers of many masters do not probe in step).
    pub fn on_failure(&mut self, now: Duration, jitter: f64) -> Option<Transition> {
        match self.state {
            BreakerState::Closed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures < self.config.failure_threshold {
                    return None;
                }
                self.consecutive_failures = 0;
                self.open(now, 0, jitter)
            }
            BreakerState::HalfOpen { attempt, .. } => self.open(now, attempt.saturating_add(1), jitter),
            // A call admitted before the breaker opened failed late: nothing new to learn.
            BreakerState::Open { .. } => None,
        }
    }

    /// The wait before probe number `attempt`: `min_wait × 2^attempt`, at most `max_wait`,
    /// scaled by `jitter` (clamped to 0.5..=1, so the wait never collapses to nothing).
    pub fn wait(&self, attempt: u32, jitter: f64) -> Duration {
        let doubled = self.config.min_wait.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
        let jitter = if jitter.is_finite() { jitter.clamp(0.5, 1.0) } else { 1.0 };
        doubled.min(self.config.max_wait).mul_f64(jitter)
    }

    fn open(&mut self, now: Duration, attempt: u32, jitter: f64) -> Option<Transition> {
        let until = now.saturating_add(self.wait(attempt, jitter));
        self.set(BreakerState::Open { until, attempt })
    }

    fn set(&mut self, to: BreakerState) -> Option<Transition> {
        let from = std::mem::replace(&mut self.state, to);
        (from != to).then_some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig::default())
    }

    #[test]
    fn seven_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() {
        let mut b = breaker();
        for _ in 0..6 {
            assert_eq!(b.on_failure(S, 1.0), None);
        }
        b.on_success();
        for _ in 0..6 {
            assert_eq!(b.on_failure(S, 1.0), None, "the count restarted after the success");
        }
        let opened = b.on_failure(S, 1.0).expect("the 7th consecutive failure opens it");
        assert_eq!(opened.to, BreakerState::Open { until: 2 * S, attempt: 0 });
        assert_eq!(b.admit(S + S / 2).0, Admission::Refuse { retry_in: S / 2 });
    }

    #[test]
    fn after_the_wait_exactly_one_probe_passes_and_its_success_closes_the_breaker() {
        let mut b = breaker();
        for _ in 0..7 {
            b.on_failure(Duration::ZERO, 1.0);
        }
        let (admission, transition) = b.admit(S);
        assert_eq!(admission, Admission::Probe);
        assert_eq!(transition.map(|t| t.to), Some(BreakerState::HalfOpen { since: S, attempt: 0 }));
        assert!(matches!(b.admit(S).0, Admission::Refuse { .. }), "a second caller does not probe too");
        assert_eq!(b.on_success().map(|t| t.to), Some(BreakerState::Closed));
        assert_eq!(b.admit(S).0, Admission::Pass);
    }

    #[test]
    fn a_failed_probe_doubles_the_wait_up_to_the_maximum() {
        let mut b = breaker();
        for _ in 0..7 {
            b.on_failure(Duration::ZERO, 1.0);
        }
        let mut now = Duration::ZERO;
        let mut waits = Vec::new();
        for _ in 0..9 {
            let BreakerState::Open { until, .. } = b.state() else { panic!("open") };
            waits.push((until - now).as_secs());
            now = until;
            assert_eq!(b.admit(now).0, Admission::Probe);
            b.on_failure(now, 1.0).expect("a failed probe reopens it");
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn a_lost_probe_does_not_wedge_the_breaker() {
        let mut b = breaker();
        for _ in 0..7 {
            b.on_failure(Duration::ZERO, 1.0);
        }
        assert_eq!(b.admit(S).0, Admission::Probe);
        // The probe's caller gave up and never reported.
        assert!(matches!(b.admit(S * 5).0, Admission::Refuse { .. }));
        assert_eq!(b.admit(S * 11).0, Admission::Probe, "after probe_timeout another probe passes");
    }

    #[test]
    fn a_restored_half_open_breaker_is_open_and_due_at_once() {
        let state = BreakerState::HalfOpen { since: S * 3, attempt: 2 };
        let mut b = Breaker::restore(BreakerConfig::default(), state);
        assert_eq!(b.state(), BreakerState::Open { until: S * 3, attempt: 2 });
        assert_eq!(b.admit(S * 3).0, Admission::Probe);
    }

    #[derive(Debug, Clone, Copy)]
    enum Event {
        Admit(u64),
        Success,
        Failure(u64, f64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u64..200_000).prop_map(Event::Admit),
            Just(Event::Success),
            ((0u64..200_000), (0.0f64..=1.0)).prop_map(|(t, j)| Event::Failure(t, j)),
        ]
    }

    proptest! {
        #[test]
        fn at_most_one_probe_is_outstanding_until_the_probe_timeout(events in proptest::collection::vec(event(), 0..200)) {
            let config = BreakerConfig::default();
            let mut b = Breaker::new(config);
            let mut now = Duration::ZERO;
            let mut last_probe: Option<Duration> = None;
            for event in events {
                match event {
                    Event::Admit(dt) => {
                        now += Duration::from_millis(dt);
                        let (admission, _) = b.admit(now);
                        if admission == Admission::Probe {
                            if let Some(previous) = last_probe {
                                prop_assert!(now >= previous + config.probe_timeout, "two probes outstanding");
                            }
                            last_probe = Some(now);
                        }
                    }
                    Event::Success => {
                        b.on_success();
                        last_probe = None;
                    }
                    Event::Failure(dt, jitter) => {
                        now += Duration::from_millis(dt);
                        b.on_failure(now, jitter);
                        last_probe = None;
                    }
                }
            }
        }

        #[test]
        fn transitions_are_reported_exactly_when_the_state_changes(events in proptest::collection::vec(event(), 0..200)) {
            let mut b = Breaker::new(BreakerConfig::default());
            let mut now = Duration::ZERO;
            for event in events {
                let before = b.state();
                let transition = match event {
                    Event::Admit(dt) => { now += Duration::from_millis(dt); b.admit(now).1 }
                    Event::Success => b.on_success(),
                    Event::Failure(dt, jitter) => { now += Duration::from_millis(dt); b.on_failure(now, jitter) }
                };
                let kind = |s: BreakerState| std::mem::discriminant(&s);
                match transition {
                    Some(t) => {
                        prop_assert_eq!(t.from, before);
                        prop_assert_eq!(t.to, b.state());
                        prop_assert_ne!(t.from, t.to);
                    }
                    // Only a re-armed half-open probe changes `since` without a transition.
                    None => prop_assert_eq!(kind(before), kind(b.state())),
                }
            }
        }

        #[test]
        fn waits_stay_within_half_the_doubled_minimum_and_the_maximum(attempt in 0u32..100, jitter in proptest::num::f64::ANY) {
            let b = Breaker::new(BreakerConfig::default());
            let wait = b.wait(attempt, jitter);
            prop_assert!(wait <= Duration::from_secs(60));
            prop_assert!(wait >= Duration::from_millis(500));
        }
    }
}
