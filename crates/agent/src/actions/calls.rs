//! `call_id` deduplication for `RunAction`: a bounded in-memory map of call id -> result, kept
//! for [`CALL_TTL`]. The first call with an id runs (in its own task, so it finishes even when its
//! caller gives up); a repeat while it runs waits for the same result (single flight), and a
//! repeat afterwards gets the remembered result; both are answered with `repeated_call`.
//!
//! This protects against a retry of one call after a lost answer. The master's idempotency keys
//! (durable, 24 h) are the user-facing guarantee; this map is lost on restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ragmesh_proto::v1;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a call id is remembered.
pub const CALL_TTL: Duration = Duration::from_secs(600);
/// Most call ids remembered; the oldest are forgotten first.
pub const MAX_CALLS: usize = 4096;

/// A call's result, once it is known.
type Slot = watch::Receiver<Option<v1::ActionResult>>;

#[derive(Debug)]
struct Remembered {
    at: Instant,
    /// What was called: a repeat of the id with another call is refused.
    fingerprint: Vec<u8>,
    result: Slot,
}

#[derive(Debug, Default)]
struct Inner {
    calls: HashMap<String, Remembered>,
    /// Ids in insertion order, for expiry and the bound.
    order: VecDeque<(Instant, String)>,
}

/// What [`CallCache::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// A new call: run it and publish the result with the sender.
    First(watch::Sender<Option<v1::ActionResult>>),
    /// A repeat: wait for (or read) the first call's result.
    Repeat(Slot),
    /// The id was used for another call (other action or arguments).
    Conflict,
}

/// The map of recent call ids.
#[derive(Debug, Default)]
pub struct CallCache {
    inner: Mutex<Inner>,
}

impl CallCache {
    /// Registers `call_id` for the call whose canonical form is `fingerprint`.
    pub fn begin(&self, call_id: &str, fingerprint: Vec<u8>, now: Instant) -> Begin {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.expire(now);
        if let Some(remembered) = inner.calls.get(call_id) {
            if remembered.fingerprint != fingerprint {
                return Begin::Conflict;
            }
            return Begin::Repeat(remembered.result.clone());
        }
        let (tx, rx) = watch::channel(None);
        inner.calls.insert(call_id.to_owned(), Remembered { at: now, fingerprint, result: rx });
        inner.order.push_back((now, call_id.to_owned()));
        Begin::First(tx)
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).calls.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some((at, id)) = self.order.front() {
            let too_old = now.saturating_duration_since(*at) >= CALL_TTL;
            if !too_old && self.order.len() < MAX_CALLS {
                break;
            }
            // An entry replaced under the same id has a newer `at`: remove only the one queued here.
            if self.calls.get(id).is_some_and(|remembered| remembered.at == *at) {
                self.calls.remove(id);
            }
            self.order.pop_front();
        }
    }
}

/// Waits for the result of a call that runs elsewhere; `None` if it ended without one (its task
/// panicked).
pub async fn wait(mut slot: Slot) -> Option<v1::ActionResult> {
    let result = slot.wait_for(Option::is_some).await.ok()?;
    result.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> v1::ActionResult {
        v1::ActionResult { status: v1::ActionStatus::Ok as i32, ..Default::default() }
    }

    #[tokio::test]
    async fn a_repeat_waits_for_the_first_call_and_an_old_id_is_forgotten() {
        let cache = CallCache::default();
        let now = Instant::now();
        let Begin::First(tx) = cache.begin("c1", b"a".to_vec(), now) else { panic!("first") };
        let Begin::Repeat(slot) = cache.begin("c1", b"a".to_vec(), now) else { panic!("repeat") };
        assert!(matches!(cache.begin("c1", b"other".to_vec(), now), Begin::Conflict));
        let waiter = tokio::spawn(wait(slot));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the repeat waits while the first call runs");
        tx.send_replace(Some(ok()));
        assert_eq!(waiter.await.expect("join"), Some(ok()));

        let later = now + CALL_TTL;
        assert!(matches!(cache.begin("c1", b"a".to_vec(), later), Begin::First(_)), "forgotten after the TTL");
    }

    #[tokio::test]
    async fn the_map_is_bounded() {
        let cache = CallCache::default();
        let now = Instant::now();
        for i in 0..(MAX_CALLS + 10) {
            let _ = cache.begin(&format!("c{i}"), Vec::new(), now);
        }
        assert!(cache.len() <= MAX_CALLS, "{}", cache.len());
        assert!(matches!(cache.begin("c0", Vec::new(), now), Begin::First(_)), "the oldest went first");
    }

    #[tokio::test]
    async fn a_first_call_that_died_leaves_repeats_without_a_result() {
        let cache = CallCache::default();
        let Begin::First(tx) = cache.begin("c", Vec::new(), Instant::now()) else { panic!("first") };
        let Begin::Repeat(slot) = cache.begin("c", Vec::new(), Instant::now()) else { panic!("repeat") };
        drop(tx);
        assert_eq!(wait(slot).await, None);
    }
}
