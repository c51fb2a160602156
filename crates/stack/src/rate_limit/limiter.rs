//! The rate-limit decision, free of tower and HTTP: limits and their validation, governor's keyed
//! GCRA limiter with per-principal overrides, idle-key collection, and the refusal with its
//! retry-after time.

use std::collections::HashMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota};

use super::key::RateKey;
use super::store::CappedStore;

/// How many principals are tracked at most unless configured otherwise: about 100 bytes each
/// plus the principal's length, so roughly 10 MB.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Idle principals are dropped every this many decisions.
const COLLECT_EVERY: u64 = 4096;

/// While new principals overflow the map, idle ones are dropped at most this often: dropping
/// walks the whole map under its write lock, so it must not run on every overflowing request.
const OVERFLOW_COLLECT_INTERVAL: Duration = Duration::from_secs(1);

/// `last_collect` before the first collection for overflow.
const NEVER_COLLECTED: u64 = u64::MAX;

/// The metadata key carrying the wait in milliseconds on a refusal.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// The standard `retry-after` header: the wait in whole seconds, rounded up.
pub const RETRY_AFTER: &str = "retry-after";

/// A rate: a sustained number of requests per second, and how many may arrive at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateQuota {
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl RateQuota {
    /// A quota of `per_second` requests per second with bursts of up to `burst` requests.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self { per_second, burst }
    }

    /// Sustained requests per second.
    pub fn per_second(&self) -> NonZeroU32 {
        self.per_second
    }

    /// Requests that may arrive at once after a quiet period.
    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    fn to_governor(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }

    fn from_config(scope: &str, per_second: u32, burst: u32) -> Result<Self, RateLimitConfigError> {
        let Some(per_second) = NonZeroU32::new(per_second) else {
            return Err(RateLimitConfigError::ZeroRate { scope: scope.to_owned() });
        };
        let Some(burst) = NonZeroU32::new(burst) else {
            return Err(RateLimitConfigError::ZeroBurst { scope: scope.to_owned() });
        };
        Ok(Self::new(per_second, burst))
    }
}

/// Invalid rate-limit settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitConfigError {
    /// A rate of 0 requests per second would refuse everything.
    #[error(
        "rate limit for {scope}: requests per second is 0; set at least 1 (to stop limiting, leave the rate limit out)"
    )]
    ZeroRate {
        /// Whose limit: `every principal` or `principal <key>`.
        scope: String,
    },
    /// A burst of 0 would refuse everything.
    #[error("rate limit for {scope}: burst is 0; set at least 1 (the number of requests allowed at once)")]
    ZeroBurst {
        /// Whose limit: `every principal` or `principal <key>`.
        scope: String,
    },
    /// Tracking no principals at all would charge everyone to one shared budget.
    #[error("rate limit: max tracked principals is 0; set at least 1 (default {DEFAULT_MAX_KEYS})")]
    ZeroMaxKeys,
}

/// Rate-limit settings: one quota for every principal, optional per-principal overrides, and a cap
/// on how many principals are tracked at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// The quota of each principal without an override.
    pub per_principal: RateQuota,
    /// Quotas for particular principals (`subject:ingest-bot`), each with its own budget.
    pub overrides: HashMap<String, RateQuota>,
    /// The most principals tracked at once; see [`Limiter`] for what happens beyond it.
    pub max_keys: NonZeroUsize,
}

impl RateLimits {
    /// Limits from configuration numbers: `rps` requests per second and bursts of `burst` for
    /// every principal, tracking up to [`DEFAULT_MAX_KEYS`] principals.
    pub fn from_config(rps: u32, burst: u32) -> Result<Self, RateLimitConfigError> {
        let per_principal = RateQuota::from_config("every principal", rps, burst)?;
        let max_keys = const { NonZeroUsize::new(DEFAULT_MAX_KEYS).expect("the default is not zero") };
        Ok(Self { per_principal, overrides: HashMap::new(), max_keys })
    }

    /// Adds an override: `principal` gets `rps` requests per second and bursts of `burst`.
    pub fn with_override(mut self, principal: &str, rps: u32, burst: u32) -> Result<Self, RateLimitConfigError> {
        let quota = RateQuota::from_config(&format!("principal {principal}"), rps, burst)?;
        self.overrides.insert(principal.to_owned(), quota);
        Ok(self)
    }

    /// Sets how many principals are tracked at most.
    pub fn with_max_keys(mut self, max_keys: usize) -> Result<Self, RateLimitConfigError> {
        self.max_keys = NonZeroUsize::new(max_keys).ok_or(RateLimitConfigError::ZeroMaxKeys)?;
        Ok(self)
    }
}

/// A refused request: who, under which quota, and how long until a request can pass.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate limit exceeded for {key}: at most {per_second} requests per second (burst {burst}); retry after {retry_after_ms} ms",
    per_second = quota.per_second,
    burst = quota.burst,
    retry_after_ms = self.retry_after_ms()
)]
pub struct RateLimited {
    /// The principal that is over its limit.
    pub key: RateKey,
    /// The principal's quota.
    pub quota: RateQuota,
    /// How long until a request of this principal can pass.
    pub retry_after: Duration,
}

impl RateLimited {
    /// The wait in whole milliseconds, rounded up and at least 1, so that a client waiting this
    /// long is not refused again.
    pub fn retry_after_ms(&self) -> u64 {
        let ms = self.retry_after.as_nanos().div_ceil(1_000_000).max(1);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// The wait in whole seconds, rounded up and at least 1 (the `retry-after` header).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms().div_ceil(1000)
    }

    /// The gRPC status for this refusal: RESOURCE_EXHAUSTED with this error as message and the
    /// wait in [`RETRY_AFTER_MS`] and [`RETRY_AFTER`] metadata.
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::resource_exhausted(self.to_string());
        let metadata = status.metadata_mut();
        metadata.insert(RETRY_AFTER_MS, self.retry_after_ms().into());
        metadata.insert(RETRY_AFTER, self.retry_after_secs().into());
        status
    }
}

/// governor's clock over [`std::time::Instant`]: monotonic, in nanoseconds since the clock was
/// made. (governor's own `MonotonicClock` would need its `std` feature, which brings a second
/// parking_lot into the build.)
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Clock for MonotonicClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.origin.elapsed())
    }
}

type KeyedLimiter<C> = governor::RateLimiter<RateKey, CappedStore, C, NoOpMiddleware<<C as Clock>::Instant>>;
type DirectLimiter<C> = governor::RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Decides whether a principal's request may pass: GCRA (governor), one budget per principal.
///
/// Decisions are lock-free compare-and-swaps on the principal's state, so concurrent requests
/// cannot spend the same budget twice: at most `burst + rate × elapsed` requests of a principal
/// pass in any window.
///
/// Memory is bounded: at most `max_keys` principals are tracked. Principals whose budget is full
/// again are forgotten every 4096 decisions (forgetting them changes no decision), and at most
/// once a second while the map is full. When the map is full of active principals, each new
/// principal is charged to one shared overflow budget with the default quota: a flood of new
/// principals is throttled like a single principal, and tracked principals keep their budgets.
///
/// Principals with an override each have their own limiter, outside the map and the cap.
pub struct Limiter<C: Clock = MonotonicClock> {
    limits: RateLimits,
    keyed: KeyedLimiter<C>,
    overrides: HashMap<RateKey, (RateQuota, DirectLimiter<C>)>,
    clock: C,
    origin: C::Instant,
    overflowed: Arc<AtomicBool>,
    decisions: AtomicU64,
    last_collect: AtomicU64,
}

impl Limiter<MonotonicClock> {
    /// A limiter on the system's monotonic clock.
    pub fn new(limits: RateLimits) -> Self {
        Self::with_clock(limits, MonotonicClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter on `clock`; tests pass governor's `FakeRelativeClock`.
    pub fn with_clock(limits: RateLimits, clock: C) -> Self {
        let store = CappedStore::new(limits.max_keys.get());
        let overflowed = store.overflow_flag();
        let keyed = governor::RateLimiter::new(limits.per_principal.to_governor(), store, clock.clone());
        let mut overrides = HashMap::new();
        for (principal, quota) in &limits.overrides {
            let limiter = governor::RateLimiter::direct_with_clock(quota.to_governor(), clock.clone());
            overrides.insert(RateKey::from(principal.as_str()), (*quota, limiter));
        }
        let origin = clock.now();
        Self {
            limits,
            keyed,
            overrides,
            clock,
            origin,
            overflowed,
            decisions: AtomicU64::new(0),
            last_collect: AtomicU64::new(NEVER_COLLECTED),
        }
    }
}

impl<C: Clock> Limiter<C> {
    /// Charges one request to `key`: `Ok` if it may pass, else how long to wait.
    pub fn check(&self, key: &RateKey) -> Result<(), RateLimited> {
        let (quota, outcome) = match self.overrides.get(key) {
            Some((quota, limiter)) => (*quota, limiter.check()),
            None => (self.limits.per_principal, self.keyed.check_key(key)),
        };
        self.collect_if_due();
        outcome.map_err(|not_until| {
            let refusal = self.refusal(key, quota, &not_until);
            tracing::debug!(rate.key = %key, retry_after_ms = refusal.retry_after_ms(), "rate limit exceeded");
            refusal
        })
    }

    /// How many principals are tracked now (overrides not counted).
    pub fn tracked_keys(&self) -> usize {
        self.keyed.len()
    }

    /// Forgets every principal whose budget is full again; this changes no decision.
    pub fn retain_recent(&self) {
        let before = self.keyed.len();
        self.keyed.retain_recent();
        // Give memory back after a spike of principals, not after every small collection.
        if self.keyed.len() < before / 2 {
            self.keyed.shrink_to_fit();
        }
    }

    /// The limits this limiter enforces.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    fn refusal(&self, key: &RateKey, quota: RateQuota, not_until: &NotUntil<C::Instant>) -> RateLimited {
        let retry_after = not_until.wait_time_from(self.clock.now());
        RateLimited { key: key.clone(), quota, retry_after }
    }

    fn collect_if_due(&self) {
        let decision = self.decisions.fetch_add(1, Ordering::Relaxed);
        if decision % COLLECT_EVERY == COLLECT_EVERY - 1 {
            self.retain_recent();
            return;
        }
        // A plain load: this runs on every request, and an RMW would contend across cores.
        if !self.overflowed.load(Ordering::Relaxed) {
            return;
        }
        let now = self.clock.now().duration_since(self.origin).as_u64();
        let last = self.last_collect.load(Ordering::Relaxed);
        let interval = Nanos::from(OVERFLOW_COLLECT_INTERVAL).as_u64();
        let due = last == NEVER_COLLECTED || now.saturating_sub(last) >= interval;
        // One request collects; the others racing with it go on without waiting for the lock.
        if due && self.last_collect.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.overflowed.store(false, Ordering::Relaxed);
            self.retain_recent();
        }
    }
}

impl<C: Clock> fmt::Debug for Limiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter").field("limits", &self.limits).field("tracked_keys", &self.tracked_keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(rps: u32, burst: u32) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits::from_config(rps, burst).expect("valid limits");
        (Limiter::with_clock(limits, clock.clone()), clock)
    }

    fn admitted(limiter: &Limiter<FakeRelativeClock>, key: &RateKey, attempts: usize) -> usize {
        (0..attempts).filter(|_| limiter.check(key).is_ok()).count()
    }

    #[test]
    fn zero_rate_burst_or_max_keys_is_refused_with_what_to_do() {
        let zero_rate = RateLimits::from_config(0, 10).expect_err("rate 0 is invalid");
        assert_eq!(
            zero_rate.to_string(),
            "rate limit for every principal: requests per second is 0; set at least 1 \
             (to stop limiting, leave the rate limit out)"
        );
        let zero_burst = RateLimits::from_config(10, 0).expect_err("burst 0 is invalid");
        assert_eq!(
            zero_burst.to_string(),
            "rate limit for every principal: burst is 0; set at least 1 (the number of requests allowed at once)"
        );
        let limits = RateLimits::from_config(10, 10).expect("valid limits");
        let zero_override = limits.clone().with_override("subject:bot", 0, 1).expect_err("rate 0 is invalid");
        assert_eq!(zero_override, RateLimitConfigError::ZeroRate { scope: "principal subject:bot".to_owned() });
        assert_eq!(limits.with_max_keys(0), Err(RateLimitConfigError::ZeroMaxKeys));
    }

    #[test]
    fn burst_passes_then_refusal_says_who_what_and_how_long() {
        let (limiter, clock) = limiter(10, 3);
        let alice = RateKey::subject("alice");
        assert_eq!(admitted(&limiter, &alice, 3), 3);

        let refusal = limiter.check(&alice).expect_err("the fourth request is over the burst");
        assert_eq!(refusal.retry_after, Duration::from_millis(100));
        assert_eq!(
            refusal.to_string(),
            "rate limit exceeded for subject:alice: at most 10 requests per second (burst 3); retry after 100 ms"
        );

        clock.advance(Duration::from_millis(99));
        assert!(limiter.check(&alice).is_err(), "1 ms early is still too early");
        clock.advance(Duration::from_millis(1));
        assert!(limiter.check(&alice).is_ok(), "one cell is back after the retry-after time");
        assert!(limiter.check(&alice).is_err());
    }

    #[test]
    fn principals_have_separate_budgets_and_overrides_their_own_quota() {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits::from_config(1, 2)
            .and_then(|limits| limits.with_override("subject:bot", 100, 5))
            .expect("valid limits");
        let limiter = Limiter::with_clock(limits, clock);
        assert_eq!(admitted(&limiter, &RateKey::subject("alice"), 10), 2);
        assert_eq!(admitted(&limiter, &RateKey::subject("bob"), 10), 2);
        assert_eq!(admitted(&limiter, &RateKey::subject("bot"), 10), 5);

        let refusal = limiter.check(&RateKey::subject("bot")).expect_err("over the override's burst");
        assert_eq!(
            refusal.quota,
            RateQuota::new(NonZeroU32::MIN.saturating_add(99), NonZeroU32::MIN.saturating_add(4))
        );
        assert_eq!(refusal.retry_after, Duration::from_millis(10));
        assert_eq!(limiter.tracked_keys(), 2, "overrides live outside the capped map");
    }

    #[test]
    fn retry_after_rounds_up_to_a_wait_that_is_long_enough() {
        let refusal = |retry_after| RateLimited {
            key: RateKey::from("k"),
            quota: RateQuota::new(NonZeroU32::MIN, NonZeroU32::MIN),
            retry_after,
        };
        let cases = [(Duration::ZERO, 1, 1), (Duration::from_micros(300), 1, 1), (Duration::from_micros(1200), 2, 1)];
        for (retry_after, ms, secs) in cases {
            assert_eq!((refusal(retry_after).retry_after_ms(), refusal(retry_after).retry_after_secs()), (ms, secs));
        }
        assert_eq!(refusal(Duration::from_millis(1000)).retry_after_secs(), 1);
        assert_eq!(refusal(Duration::from_millis(1001)).retry_after_secs(), 2);
    }

    #[test]
    fn idle_principals_are_forgotten_without_changing_decisions() {
        // 10/s: one cell every 100 ms. Each user spends one cell, busy its whole burst of 3.
        let (limiter, clock) = limiter(10, 3);
        for n in 0..1000 {
            assert!(limiter.check(&RateKey::subject(&format!("user-{n}"))).is_ok());
        }
        let busy = RateKey::subject("busy");
        assert_eq!(admitted(&limiter, &busy, 3), 3);
        assert_eq!(limiter.tracked_keys(), 1001);

        clock.advance(Duration::from_millis(200));
        limiter.retain_recent();
        assert_eq!(limiter.tracked_keys(), 1, "only the principal whose burst is not back yet is kept");
        assert_eq!(admitted(&limiter, &busy, 10), 2, "busy kept its state: 2 cells came back, not a fresh burst");
        assert_eq!(admitted(&limiter, &RateKey::subject("user-1"), 10), 3, "a forgotten user has its full burst");
    }

    #[test]
    fn collection_runs_by_itself_every_few_thousand_decisions() {
        let (limiter, clock) = limiter(1000, 1);
        for n in 0..100 {
            assert!(limiter.check(&RateKey::subject(&format!("user-{n}"))).is_ok());
        }
        clock.advance(Duration::from_secs(1));
        let steady = RateKey::subject("steady");
        for _ in 0..COLLECT_EVERY {
            clock.advance(Duration::from_millis(1));
            assert!(limiter.check(&steady).is_ok());
        }
        assert_eq!(limiter.tracked_keys(), 1);
    }

    #[test]
    fn a_full_map_charges_new_principals_to_one_shared_budget() {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits::from_config(1, 1).and_then(|l| l.with_max_keys(2)).expect("valid limits");
        let limiter = Limiter::with_clock(limits, clock.clone());
        let (alice, bob) = (RateKey::subject("alice"), RateKey::subject("bob"));
        assert!(limiter.check(&alice).is_ok());
        assert!(limiter.check(&bob).is_ok());

        // The map is full of active principals: newcomers share one budget.
        assert!(limiter.check(&RateKey::subject("mallory-1")).is_ok());
        let refusal = limiter.check(&RateKey::subject("mallory-2")).expect_err("the shared budget is spent");
        assert_eq!(refusal.key, RateKey::subject("mallory-2"));
        assert_eq!(limiter.tracked_keys(), 2);

        // Once alice and bob are idle, the next overflow frees their places.
        clock.advance(Duration::from_secs(2));
        assert!(limiter.check(&RateKey::subject("mallory-3")).is_ok());
        assert_eq!(limiter.tracked_keys(), 0);
        assert!(limiter.check(&RateKey::subject("carol")).is_ok());
        assert!(limiter.check(&RateKey::subject("dave")).is_ok());
        assert!(limiter.check(&RateKey::subject("erin")).is_err(), "full again, and the shared budget is spent");
        assert_eq!(limiter.tracked_keys(), 2);
    }

    #[test]
    fn concurrent_threads_never_spend_the_burst_twice() {
        // The clock stands still, so exactly the burst may pass, however the threads interleave.
        let (limiter, _clock) = limiter(100, 10);
        let key = RateKey::subject("alice");
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..64 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        if limiter.check(&key).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn concurrent_newcomers_never_exceed_the_cap() {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits::from_config(10, 10).and_then(|l| l.with_max_keys(100)).expect("valid limits");
        let limiter = Limiter::with_clock(limits, clock);
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let limiter = &limiter;
                scope.spawn(move || {
                    for n in 0..500 {
                        let _ = limiter.check(&RateKey::subject(&format!("t{thread}-{n}")));
                    }
                });
            }
        });
        assert_eq!(limiter.tracked_keys(), 100);
    }
}
