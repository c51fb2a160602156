//! The master's durable records of remote actions, over its [`StateStore`]: idempotency keys
//! ([`idempotency`]), the append-only audit log ([`audit`]) and broadcast jobs ([`jobs`]).
//!
//! Domain types only: an action's result is kept as opaque bytes (the encoded wire result, chosen
//! by the API layer) beside a few summary fields. Times are unix milliseconds passed in by the
//! caller (`now_ms`), so the records are testable without a clock. Store I/O blocks: the
//! synchronous methods are meant for `spawn_blocking`; the async ones move it there themselves.
//!
//! [`StateStore`]: ragmesh_store::StateStore

pub mod audit;
pub mod idempotency;
pub mod jobs;
pub mod selector;
pub(crate) mod service;
pub mod transactions;
pub(crate) mod tx_service;

use std::sync::Arc;
use std::time::Duration;

use ragmesh_store::StoreError;
use tokio_util::sync::CancellationToken;

/// Errors of the action records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The store failed.
    #[error("action records: {0}")]
    Store(#[from] StoreError),
    /// The same idempotency key came with other parameters.
    #[error(
        "this idempotency key was used with other parameters; use a new key (it was first used at {first_used_ms} ms since the epoch)"
    )]
    KeyReused {
        /// When the key was first used (unix ms).
        first_used_ms: u64,
    },
    /// A call with this key started but its outcome was never recorded (the master restarted,
    /// or the call was abandoned while the action may have been running).
    #[error(
        "the outcome of the earlier call with this idempotency key is unknown (it started at {started_ms} ms since the epoch but the master never recorded its result, e.g. it restarted); check the node (`ragmeshctl action history`) and retry with a new key if the action must run again"
    )]
    OutcomeUnknown {
        /// When the earlier call started (unix ms).
        started_ms: u64,
    },
    /// The idempotency table holds its maximum number of keys.
    #[error(
        "too many idempotency keys held ({max}); retry later, when old keys have expired, or raise the idempotency key bound"
    )]
    TooManyKeys {
        /// The bound.
        max: usize,
    },
    /// Calls with this key kept giving up before running: nothing ran, nothing is recorded.
    #[error("idempotency key busy: {rounds} calls with it in a row gave up before running; retry")]
    KeyBusy {
        /// How many gave up.
        rounds: usize,
    },
    /// A stored record could not be decoded.
    #[error("action records: unreadable {what} record: {message}")]
    Corrupt {
        /// Which kind of record.
        what: &'static str,
        /// Decoder's message.
        message: String,
    },
    /// No job has this id (never created, or pruned by retention).
    #[error("no action job {id}: it never existed or was pruned (see `ragmeshctl action history`)")]
    NoSuchJob {
        /// The id asked for.
        id: String,
    },
    /// A blocking store task failed to run.
    #[error("action records: background task failed: {0}")]
    Task(String),
}

/// The current time in unix milliseconds (0 before 1970), for the `now_ms` arguments.
pub fn unix_now_ms() -> u64 {
    let elapsed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    elapsed.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs `sweep` (e.g. [`idempotency::IdempotencyKeys::sweep`], [`audit::AuditLog::prune`]) every
/// `period`, the first time one period after the start, at the time `clock` gives (unix ms),
/// on the blocking pool, until `shutdown`. A failed sweep is logged and tried again next period.
pub async fn run_sweeper<C, S>(name: &'static str, period: Duration, clock: C, sweep: S, shutdown: CancellationToken)
where
    C: Fn() -> u64 + Send,
    S: Fn(u64) -> Result<usize, RecordError> + Send + Sync + 'static,
{
    let sweep = Arc::new(sweep);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now_ms = clock();
        let sweep = sweep.clone();
        match tokio::task::spawn_blocking(move || sweep(now_ms)).await {
            Ok(Ok(removed)) => tracing::debug!(sweeper = name, removed, "action records swept"),
            Ok(Err(error)) => {
                tracing::error!(sweeper = name, %error, "action records sweep failed; retried next period")
            }
            Err(error) => tracing::error!(sweeper = name, %error, "action records sweep task failed"),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Opaque bytes as base64 in the JSON records.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("a record of plain fields always serializes")
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, RecordError> {
    serde_json::from_slice(bytes).map_err(|e| RecordError::Corrupt { what, message: e.to_string() })
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}
