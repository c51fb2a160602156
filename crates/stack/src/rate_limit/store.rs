//! The keyed GCRA state store behind [`Limiter`](super::Limiter): one governor `InMemoryState` per
//! principal, a hard cap on how many principals are tracked, and one shared overflow state.
//!
//! governor's own keyed stores take a lock for every decision (`HashMapStateStore`) or add a
//! dependency (`DashMapStateStore`), and neither can be capped. Here a known principal needs only a
//! shared read lock: the decision itself is governor's lock-free compare-and-swap on the
//! principal's state, so concurrent requests can never spend the same cell twice.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

use super::key::RateKey;

/// GCRA states by principal, at most `max_keys` of them.
///
/// When the map is full, a principal it does not know is charged to the shared overflow state:
/// a flood of new principals is throttled as if it were one principal, while principals already
/// tracked keep their own budgets. [`super::Limiter`] notices the overflow and drops idle keys.
pub(crate) struct CappedStore {
    states: RwLock<HashMap<RateKey, InMemoryState>>,
    overflow: InMemoryState,
    overflowed: Arc<AtomicBool>,
    max_keys: usize,
}

impl CappedStore {
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            states: RwLock::new(HashMap::new()),
            overflow: InMemoryState::default(),
            overflowed: Arc::new(AtomicBool::new(false)),
            max_keys,
        }
    }

    /// The flag raised whenever a principal is turned away from the full map. The limiter keeps
    /// it, as governor owns the store and gives no access to it.
    pub(crate) fn overflow_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.overflowed)
    }
}

/// The theoretical arrival time stored in `state`, read without changing it: the closure refuses
/// to produce a new value, so governor's compare-and-swap loop returns what it saw.
fn tat(state: &InMemoryState) -> Nanos {
    let seen: Result<(), Option<Nanos>> = state.measure_and_replace(&NotKeyed::NonKey, Err);
    match seen {
        Err(Some(tat)) => tat,
        Ok(()) | Err(None) => Nanos::from(0),
    }
}

impl StateStore for CappedStore {
    type Key = RateKey;

    fn measure_and_replace<T, F, E>(&self, key: &RateKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // States are only atomics, so a panic elsewhere cannot leave the map inconsistent.
        {
            let states = self.states.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(state) = states.get(key) {
                return state.measure_and_replace(&NotKeyed::NonKey, f);
            }
        }
        let mut states = self.states.write().unwrap_or_else(PoisonError::into_inner);
        if !states.contains_key(key) && states.len() >= self.max_keys {
            self.overflowed.store(true, Ordering::Relaxed);
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        states.entry(key.clone()).or_default().measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<RateKey> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        // A state at or below `drop_below` has a full burst again: dropping it changes no decision.
        let mut states = self.states.write().unwrap_or_else(PoisonError::into_inner);
        states.retain(|_, state| tat(state) > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.states.write().unwrap_or_else(PoisonError::into_inner).shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.states.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn is_empty(&self) -> bool {
        self.states.read().unwrap_or_else(PoisonError::into_inner).is_empty()
    }
}

impl fmt::Debug for CappedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CappedStore").field("len", &self.len()).field("max_keys", &self.max_keys).finish()
    }
}
