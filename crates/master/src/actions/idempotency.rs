//! Idempotency keys of action calls: a retry with the same key and the same parameters gets the
//! first call's result without running the action again.
//!
//! A key is scoped to its caller ([`Scope`]: subject and key), so two callers never see each
//! other's results. [`IdempotencyKeys::begin`] answers one of:
//! - [`Begin::Run`]: first use; the record is durably written as *in flight* before the caller
//!   runs the action, and [`Guard::complete`] replaces it with the result;
//! - [`Begin::Replay`]: the key was used with the same parameter digest and completed: its result;
//! - [`Begin::Conflict`]: the key was used with another digest ([`RecordError::KeyReused`]);
//! - [`Begin::InDoubt`]: the key was used, but its outcome was never recorded
//!   ([`RecordError::OutcomeUnknown`]): the master restarted while the action ran, or the call was
//!   dropped without completing. The action may or may not have run, so it is not run again;
//!   the record stays until the key expires.
//!
//! Single flight: while a call with a key runs, another call with the same key and digest waits
//! (in process) for its outcome instead of running. If the first call gives up before anything
//! ran ([`Guard::abandon`]), one of the waiters runs instead.
//!
//! Keys expire `ttl` after their first use (24 h by default): [`IdempotencyKeys::sweep`] removes
//! them (see [`super::run_sweeper`]), and an expired key that is used again counts as new.
//! The number of keys held is bounded (`max_keys`): when full (after sweeping the expired ones), a
//! new key is **refused** with [`RecordError::TooManyKeys`] rather than evicting an older one,
//! because an evicted key would silently let its retry run the action twice. Calls without a key
//! are not affected.
//!
//! Records live in tree `action_idempotency`, keyed by the scope (length-prefixed subject, then
//! the key), as JSON with the result bytes in base64.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ragmesh_store::StateStore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{RecordError, decode, encode, millis};

/// Tree of the idempotency records.
pub const TREE: &str = "action_idempotency";
/// How long a key is kept by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How many keys are held at most by default.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// How many times a waiter retries after the calls it waited for gave up (bounds the loop).
const MAX_ROUNDS: usize = 16;

/// Settings of the idempotency table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// How long a key is kept after its first use.
    pub ttl: Duration,
    /// How many keys are held at most; new keys are refused beyond it.
    pub max_keys: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self { ttl: DEFAULT_TTL, max_keys: DEFAULT_MAX_KEYS }
    }
}

/// Who used a key, and the key: one caller's key never matches another caller's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The caller's subject (from its token or certificate).
    pub subject: String,
    /// The idempotency key the caller sent.
    pub key: String,
}

impl Scope {
    /// A scope.
    pub fn new(subject: impl Into<String>, key: impl Into<String>) -> Self {
        Self { subject: subject.into(), key: key.into() }
    }

    /// The store key: subject length (u32, big-endian), subject, key; unambiguous for any strings.
    fn store_key(&self) -> Vec<u8> {
        let subject = self.subject.as_bytes();
        let length = u32::try_from(subject.len()).unwrap_or(u32::MAX);
        let mut bytes = Vec::with_capacity(4 + subject.len() + self.key.len());
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(subject);
        bytes.extend_from_slice(self.key.as_bytes());
        bytes
    }
}

/// The recorded result of a completed call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResult {
    /// Status word of the outcome (`ok`, `timeout`, `error`, ...).
    pub status: String,
    /// Its message (empty when ok).
    pub message: String,
    /// The encoded result, opaque here (the API layer stores its wire result).
    #[serde(with = "super::base64_bytes")]
    pub result: Vec<u8>,
    /// When the call completed (unix ms).
    pub completed_ms: u64,
}

impl StoredResult {
    /// The stored result decoded as the wire message `M` it was encoded from.
    pub fn decode_as<M: prost::Message + Default>(&self) -> Result<M, RecordError> {
        M::decode(self.result.as_slice())
            .map_err(|e| RecordError::Corrupt { what: "idempotency result", message: e.to_string() })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    digest: String,
    created_ms: u64,
    state: RecordState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RecordState {
    InFlight,
    Done(StoredResult),
}

/// What [`IdempotencyKeys::begin`] decided.
#[derive(Debug)]
pub enum Begin {
    /// Run the action, then [`Guard::complete`] with its result.
    Run(Guard),
    /// Do not run: this is the first call's result.
    Replay(StoredResult),
    /// Refuse: the key was used with other parameters ([`Begin::refusal`] gives the error).
    Conflict {
        /// When the key was first used (unix ms).
        first_used_ms: u64,
    },
    /// Refuse: an earlier call with this key has no recorded outcome ([`Begin::refusal`]).
    InDoubt {
        /// When that call started (unix ms).
        started_ms: u64,
    },
}

impl Begin {
    /// The error to answer with, for [`Begin::Conflict`] and [`Begin::InDoubt`].
    pub fn refusal(&self) -> Option<RecordError> {
        match *self {
            Begin::Conflict { first_used_ms } => Some(RecordError::KeyReused { first_used_ms }),
            Begin::InDoubt { started_ms } => Some(RecordError::OutcomeUnknown { started_ms }),
            Begin::Run(_) | Begin::Replay(_) => None,
        }
    }
}

/// How a flight ended, as its waiters see it.
#[derive(Debug, Clone)]
enum FlightEnd {
    Done(StoredResult),
    Conflict {
        first_used_ms: u64,
    },
    InDoubt {
        started_ms: u64,
    },
    /// Nothing ran and nothing is recorded: a waiter starts over.
    Abandoned,
}

#[derive(Debug)]
struct Flight {
    digest: String,
    started_ms: u64,
    end: watch::Sender<Option<FlightEnd>>,
}

#[derive(Debug, Default)]
struct State {
    flights: HashMap<Scope, Flight>,
    /// Creation time of every record held, by store key.
    created: HashMap<Vec<u8>, u64>,
    /// The same, oldest first, for the sweep.
    by_age: BTreeSet<(u64, Vec<u8>)>,
}

impl State {
    fn index(&mut self, key: Vec<u8>, created_ms: u64) {
        if let Some(old) = self.created.insert(key.clone(), created_ms) {
            self.by_age.remove(&(old, key.clone()));
        }
        self.by_age.insert((created_ms, key));
    }

    fn unindex(&mut self, key: &[u8], created_ms: u64) {
        if self.created.get(key) == Some(&created_ms) {
            self.created.remove(key);
            self.by_age.remove(&(created_ms, key.to_vec()));
        }
    }
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn StateStore>,
    config: IdempotencyConfig,
    state: Mutex<State>,
}

/// The idempotency table: a clone shares it. See the module docs.
#[derive(Debug, Clone)]
pub struct IdempotencyKeys {
    inner: Arc<Inner>,
}

impl IdempotencyKeys {
    /// Opens the table over `store` and sweeps keys expired at `now_ms`. Every record found in
    /// flight is from before a restart: its key answers [`Begin::InDoubt`] until it expires.
    /// Blocking.
    pub fn open(store: Arc<dyn StateStore>, config: IdempotencyConfig, now_ms: u64) -> Result<Self, RecordError> {
        let mut state = State::default();
        let mut in_doubt = 0usize;
        for (key, value) in store.scan(TREE)? {
            match decode::<Record>("idempotency", &value) {
                Ok(record) => {
                    in_doubt += usize::from(matches!(record.state, RecordState::InFlight));
                    state.index(key, record.created_ms);
                }
                Err(error) => {
                    // A record we cannot read can answer nothing: drop it rather than fail the master.
                    tracing::error!(%error, "unreadable idempotency record removed");
                    store.remove(TREE, &key)?;
                }
            }
        }
        if in_doubt > 0 {
            tracing::warn!(keys = in_doubt, "idempotency keys in flight at the last stop: their outcome is unknown");
        }
        let keys = IdempotencyKeys { inner: Arc::new(Inner { store, config, state: Mutex::new(state) }) };
        keys.sweep(now_ms)?;
        Ok(keys)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ttl_ms(&self) -> u64 {
        millis(self.inner.config.ttl)
    }

    fn expired(&self, created_ms: u64, now_ms: u64) -> bool {
        created_ms.saturating_add(self.ttl_ms()) <= now_ms
    }

    /// Number of keys held (completed, in flight or in doubt).
    pub fn len(&self) -> usize {
        self.lock().created.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides whether a call with `scope` and parameter `digest` runs, at `now_ms`. See the
    /// module docs; waits while another call with the same key runs.
    pub async fn begin(&self, scope: Scope, digest: &str, now_ms: u64) -> Result<Begin, RecordError> {
        for _ in 0..MAX_ROUNDS {
            let claim = {
                let mut state = self.lock();
                match state.flights.get(&scope) {
                    Some(flight) if flight.digest != digest => {
                        // The record's creation, when held (the flight may only be reading it).
                        let recorded = state.created.get(&scope.store_key()).copied();
                        return Ok(Begin::Conflict { first_used_ms: recorded.unwrap_or(flight.started_ms) });
                    }
                    Some(flight) => Err(flight.end.subscribe()),
                    None => {
                        let (end, _) = watch::channel(None);
                        let flight = Flight { digest: digest.to_owned(), started_ms: now_ms, end };
                        state.flights.insert(scope.clone(), flight);
                        Ok(Claim { keys: self.clone(), scope: scope.clone(), on_drop: FlightEnd::Abandoned })
                    }
                }
            };
            match claim {
                Ok(claim) => return self.lead(claim, digest, now_ms).await,
                Err(mut waiting) => {
                    let end = waiting.wait_for(Option::is_some).await.map(|end| end.clone());
                    // A flight always publishes its end before it goes; a closed channel means it
                    // went without one, like an abandoned flight.
                    match end.ok().flatten().unwrap_or(FlightEnd::Abandoned) {
                        FlightEnd::Done(result) => return Ok(Begin::Replay(result)),
                        FlightEnd::Conflict { first_used_ms } => return Ok(Begin::Conflict { first_used_ms }),
                        FlightEnd::InDoubt { started_ms } => return Ok(Begin::InDoubt { started_ms }),
                        FlightEnd::Abandoned => continue,
                    }
                }
            }
        }
        // Every round's leader gave up before running anything: nothing ran, nothing is recorded.
        Err(RecordError::KeyBusy { rounds: MAX_ROUNDS })
    }

    /// The leader of a flight: reads the record and decides.
    async fn lead(&self, mut claim: Claim, digest: &str, now_ms: u64) -> Result<Begin, RecordError> {
        let key = claim.scope.store_key();
        let store = self.inner.store.clone();
        let read_key = key.clone();
        let stored = blocking(move || store.get(TREE, &read_key)).await??;
        let record = match stored {
            Some(bytes) => match decode::<Record>("idempotency", &bytes) {
                Ok(record) => Some(record).filter(|r| !self.expired(r.created_ms, now_ms)),
                Err(error) => {
                    tracing::error!(%error, "unreadable idempotency record replaced");
                    None
                }
            },
            None => None,
        };
        if let Some(record) = record {
            let (begin, end) = if record.digest != digest {
                let first_used_ms = record.created_ms;
                (Begin::Conflict { first_used_ms }, FlightEnd::Conflict { first_used_ms })
            } else {
                match record.state {
                    RecordState::Done(result) => (Begin::Replay(result.clone()), FlightEnd::Done(result)),
                    RecordState::InFlight => {
                        let started_ms = record.created_ms;
                        (Begin::InDoubt { started_ms }, FlightEnd::InDoubt { started_ms })
                    }
                }
            };
            claim.finish(end);
            return Ok(begin);
        }
        self.reserve(&key, now_ms).await?;
        let record = Record { digest: digest.to_owned(), created_ms: now_ms, state: RecordState::InFlight };
        let store = self.inner.store.clone();
        let write_key = key.clone();
        let written = blocking(move || store.put(TREE, &write_key, &encode(&record))).await?;
        if let Err(error) = written {
            self.lock().unindex(&key, now_ms);
            return Err(error.into());
        }
        // From here on the action may run: a flight that ends without a result is in doubt.
        claim.on_drop = FlightEnd::InDoubt { started_ms: now_ms };
        Ok(Begin::Run(Guard { claim: Some(claim), key, digest: digest.to_owned(), created_ms: now_ms }))
    }

    /// Counts a new record against the bound, sweeping expired keys first when full.
    async fn reserve(&self, key: &[u8], now_ms: u64) -> Result<(), RecordError> {
        let max = self.inner.config.max_keys;
        let full = |state: &State| state.created.len() >= max && !state.created.contains_key(key);
        if full(&self.lock()) {
            let keys = self.clone();
            blocking(move || keys.sweep(now_ms)).await??;
        }
        let mut state = self.lock();
        if full(&state) {
            tracing::warn!(idempotency.max_keys = max, "idempotency key refused: the table is full");
            return Err(RecordError::TooManyKeys { max });
        }
        state.index(key.to_vec(), now_ms);
        Ok(())
    }

    /// Removes keys expired at `now_ms`; returns how many. A record rewritten meanwhile (its key
    /// used again after expiring) is kept. Blocking.
    pub fn sweep(&self, now_ms: u64) -> Result<usize, RecordError> {
        let expired: Vec<(u64, Vec<u8>)> = {
            let state = self.lock();
            state.by_age.iter().take_while(|(created, _)| self.expired(*created, now_ms)).cloned().collect()
        };
        let mut removed = 0;
        for (created_ms, key) in expired {
            let Some(current) = self.inner.store.get(TREE, &key)? else {
                self.lock().unindex(&key, created_ms);
                continue;
            };
            let still_expired = decode::<Record>("idempotency", &current)
                .map_or(true, |record| self.expired(record.created_ms, now_ms));
            if !still_expired {
                continue;
            }
            // Only if unchanged since read: a concurrent first use of the key is never removed.
            if self.inner.store.compare_and_swap(TREE, &key, Some(&current), None)?.is_ok() {
                self.lock().unindex(&key, created_ms);
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::debug!(keys = removed, "expired idempotency keys removed");
        }
        Ok(removed)
    }
}

/// Runs a blocking store operation off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, RecordError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| RecordError::Task(e.to_string()))
}

/// The in-process flight of one scope: ends it for the waiters when finished or dropped.
#[derive(Debug)]
struct Claim {
    keys: IdempotencyKeys,
    scope: Scope,
    on_drop: FlightEnd,
}

impl Claim {
    fn finish(&mut self, end: FlightEnd) {
        self.on_drop = end;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let end = self.on_drop.clone();
        let mut state = self.keys.lock();
        if let Some(flight) = state.flights.remove(&self.scope) {
            flight.end.send_replace(Some(end));
        }
    }
}

/// Permission to run the action once; see [`Guard::complete`] and [`Guard::abandon`]. Dropped
/// without either, the key's outcome is unknown ([`Begin::InDoubt`] for every later call).
#[derive(Debug)]
pub struct Guard {
    claim: Option<Claim>,
    key: Vec<u8>,
    digest: String,
    created_ms: u64,
}

impl Guard {
    /// Records the action's result durably and hands it to the calls that waited; later calls
    /// with the key replay it. On a store error the key stays in doubt.
    pub async fn complete(mut self, result: StoredResult) -> Result<(), RecordError> {
        let Some(mut claim) = self.claim.take() else { return Ok(()) };
        let record = Record {
            digest: self.digest.clone(),
            created_ms: self.created_ms,
            state: RecordState::Done(result.clone()),
        };
        let store = claim.keys.inner.store.clone();
        let key = self.key.clone();
        blocking(move || store.put(TREE, &key, &encode(&record))).await??;
        claim.finish(FlightEnd::Done(result));
        Ok(())
    }

    /// The action did not run (e.g. refused before anything was sent): forgets the key, so that a
    /// waiting or later call runs it. On a store error the key stays in doubt.
    pub async fn abandon(mut self) -> Result<(), RecordError> {
        let Some(mut claim) = self.claim.take() else { return Ok(()) };
        let store = claim.keys.inner.store.clone();
        let key = self.key.clone();
        blocking(move || store.remove(TREE, &key)).await??;
        claim.keys.lock().unindex(&self.key, self.created_ms);
        claim.finish(FlightEnd::Abandoned);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ragmesh_store::SledStore;
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn store(dir: &tempfile::TempDir) -> Arc<dyn StateStore> {
        Arc::new(SledStore::open_waiting(dir.path()).expect("open sled"))
    }

    fn result(text: &str, at: u64) -> StoredResult {
        StoredResult { status: "ok".into(), message: String::new(), result: text.as_bytes().to_vec(), completed_ms: at }
    }

    async fn run(keys: &IdempotencyKeys, scope: Scope, digest: &str, now: u64, text: &str) -> Begin {
        match keys.begin(scope, digest, now).await.expect("begin") {
            Begin::Run(guard) => {
                guard.complete(result(text, now)).await.expect("complete");
                Begin::Replay(result(text, now))
            }
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn same_key_replays_other_parameters_conflict_other_callers_are_separate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = IdempotencyKeys::open(store(&dir), IdempotencyConfig::default(), 1_000).expect("open");
        run(&keys, Scope::new("alice", "k1"), "d1", 1_000, "first").await;

        match keys.begin(Scope::new("alice", "k1"), "d1", 2_000).await.expect("begin") {
            Begin::Replay(replayed) => assert_eq!(replayed, result("first", 1_000)),
            other => panic!("expected a replay, got {other:?}"),
        }
        let conflict = keys.begin(Scope::new("alice", "k1"), "d2", 2_000).await.expect("begin");
        assert!(matches!(conflict, Begin::Conflict { first_used_ms: 1_000 }), "{conflict:?}");
        let message = conflict.refusal().expect("a refusal").to_string();
        assert!(message.contains("this idempotency key was used with other parameters; use a new key"), "{message}");
        // Another caller's identical key is another key; a subject/key split elsewhere too.
        run(&keys, Scope::new("bob", "k1"), "d2", 2_000, "bob's").await;
        run(&keys, Scope::new("alic", "ek1"), "d1", 2_000, "split").await;
        assert_eq!(keys.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_with_one_key_run_the_action_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = IdempotencyKeys::open(store(&dir), IdempotencyConfig::default(), 1).expect("open");
        let runs = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(32));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (keys, runs, barrier) = (keys.clone(), runs.clone(), barrier.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                match keys.begin(Scope::new("alice", "once"), "d", 1).await.expect("begin") {
                    Begin::Run(guard) => {
                        runs.fetch_add(1, Ordering::SeqCst);
                        // Long enough that the others arrive while it runs.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        guard.complete(result("ran", 1)).await.expect("complete");
                        result("ran", 1)
                    }
                    Begin::Replay(replayed) => replayed,
                    other => panic!("expected a run or a replay, got {other:?}"),
                }
            });
        }
        let answers = tasks.join_all().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "exactly one call ran the action");
        assert_eq!(answers.len(), 32);
        assert!(answers.iter().all(|a| *a == result("ran", 1)), "every call got the one result");
    }

    #[tokio::test]
    async fn results_and_unknown_outcomes_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let keys = IdempotencyKeys::open(store(&dir), IdempotencyConfig::default(), 10).expect("open");
            run(&keys, Scope::new("alice", "done"), "d", 10, "kept").await;
            let Begin::Run(guard) = keys.begin(Scope::new("alice", "lost"), "d", 20).await.expect("begin") else {
                panic!("expected a run");
            };
            // A waiter on a call that ends without a result learns the outcome is unknown.
            let waiter = tokio::spawn({
                let keys = keys.clone();
                async move { keys.begin(Scope::new("alice", "lost"), "d", 21).await.expect("begin") }
            });
            tokio::task::yield_now().await;
            drop(guard); // like a master that stops while the action runs: no result recorded
            let waited = waiter.await.expect("waiter");
            assert!(matches!(waited, Begin::InDoubt { started_ms: 20 }), "{waited:?}");
        }
        let keys = IdempotencyKeys::open(store(&dir), IdempotencyConfig::default(), 30).expect("reopen");
        assert_eq!(keys.len(), 2);
        match keys.begin(Scope::new("alice", "done"), "d", 30).await.expect("begin") {
            Begin::Replay(replayed) => assert_eq!(replayed, result("kept", 10)),
            other => panic!("expected a replay, got {other:?}"),
        }
        let lost = keys.begin(Scope::new("alice", "lost"), "d", 30).await.expect("begin");
        assert!(matches!(lost, Begin::InDoubt { started_ms: 20 }), "{lost:?}");
        assert!(lost.refusal().expect("refusal").to_string().contains("outcome of the earlier call"));
    }

    #[tokio::test]
    async fn other_parameters_conflict_at_once_while_the_first_call_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = IdempotencyKeys::open(store(&dir), IdempotencyConfig::default(), 1).expect("open");
        let Begin::Run(guard) = keys.begin(Scope::new("a", "k"), "d1", 5).await.expect("begin") else {
            panic!("expected a run");
        };
        let conflict = keys.begin(Scope::new("a", "k"), "d2", 9).await.expect("begin");
        assert!(matches!(conflict, Begin::Conflict { first_used_ms: 5 }), "{conflict:?}");
        guard.complete(result("first", 6)).await.expect("complete");
    }

    #[tokio::test]
    async fn an_abandoned_call_lets_the_next_one_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = IdempotencyKeys::open(store(&dir), IdempotencyConfig::default(), 1).expect("open");
        let Begin::Run(guard) = keys.begin(Scope::new("a", "k"), "d", 1).await.expect("begin") else {
            panic!("expected a run");
        };
        let waiter = tokio::spawn({
            let keys = keys.clone();
            async move { keys.begin(Scope::new("a", "k"), "d", 2).await.expect("begin") }
        });
        tokio::task::yield_now().await;
        guard.abandon().await.expect("abandon");
        let Begin::Run(guard) = waiter.await.expect("waiter") else { panic!("the waiter runs instead") };
        guard.complete(result("second", 2)).await.expect("complete");
        assert!(matches!(keys.begin(Scope::new("a", "k"), "d", 3).await.expect("begin"), Begin::Replay(_)));
    }

    #[tokio::test]
    async fn a_full_table_refuses_new_keys_until_old_ones_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = IdempotencyConfig { ttl: Duration::from_secs(60), max_keys: 2 };
        let keys = IdempotencyKeys::open(store(&dir), config, 0).expect("open");
        run(&keys, Scope::new("a", "1"), "d", 0, "one").await;
        run(&keys, Scope::new("a", "2"), "d", 1_000, "two").await;
        let refused = keys.begin(Scope::new("a", "3"), "d", 2_000).await.expect_err("full");
        assert!(matches!(refused, RecordError::TooManyKeys { max: 2 }), "{refused}");
        assert!(refused.to_string().contains("retry later"), "{refused}");
        // Known keys still replay when the table is full.
        assert!(matches!(keys.begin(Scope::new("a", "2"), "d", 2_000).await.expect("begin"), Begin::Replay(_)));
        // Once the first key expired, it makes room (and the expired key itself counts as new).
        run(&keys, Scope::new("a", "3"), "d", 60_000, "three").await;
        assert_eq!(keys.len(), 2);
        run(&keys, Scope::new("a", "1"), "d", 61_500, "one again").await;
    }

    #[tokio::test(start_paused = true)]
    async fn keys_expire_after_the_ttl_by_the_sweeper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir);
        let start = tokio::time::Instant::now();
        let base_ms = 1_700_000_000_000;
        let clock = move || base_ms + millis(start.elapsed());
        let keys = IdempotencyKeys::open(store.clone(), IdempotencyConfig::default(), clock()).expect("open");
        let shutdown = CancellationToken::new();
        let period = Duration::from_secs(60);
        let sweeper = tokio::spawn(super::super::run_sweeper(
            "idempotency",
            period,
            clock,
            {
                let keys = keys.clone();
                move |now| keys.sweep(now)
            },
            shutdown.clone(),
        ));

        run(&keys, Scope::new("a", "k"), "d", clock(), "first").await;
        tokio::time::sleep(DEFAULT_TTL - Duration::from_secs(600)).await;
        assert_eq!(keys.len(), 1, "kept before the ttl");
        assert!(matches!(keys.begin(Scope::new("a", "k"), "d", clock()).await.expect("begin"), Begin::Replay(_)));

        tokio::time::sleep(Duration::from_secs(600)).await;
        let mut swept = false;
        for _ in 0..100 {
            if keys.is_empty() {
                swept = true;
                break;
            }
            tokio::time::sleep(period).await;
        }
        assert!(swept, "the sweeper removed the expired key");
        assert!(store.scan(TREE).expect("scan").is_empty(), "and its record");
        run(&keys, Scope::new("a", "k"), "d", clock(), "runs again").await;
        shutdown.cancel();
        sweeper.await.expect("sweeper stops");
    }
}
