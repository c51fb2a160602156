//! ragmesh-coordinator: presumed-abort two-phase commit for transactional actions.
//!
//! - [`coordinator::Coordinator`] and [`participant::Participant`] are pure state machines, one per
//!   transaction: `handle(input, now) -> Vec<Effect>`, no I/O. A driver (the master for the
//!   coordinator, an agent for its participant side) performs the effects in order and feeds the
//!   results back as inputs.
//! - [`log::CoordinatorLog`] and [`log::ParticipantLog`] keep their durable records in a
//!   [`ragmesh_store::StateStore`] (one key per transaction, so every change is one atomic write)
//!   and rebuild the state machines after a crash (`recover`).
//!
//! Rules the machines enforce: a decision is logged durably before it is sent; a participant
//! persists its prepared state before voting yes and never decides alone after voting yes; any
//! "no" vote or a passed prepare deadline aborts; an unknown transaction is presumed aborted.

#![forbid(unsafe_code)]

pub mod coordinator;
pub mod log;
pub mod participant;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (wall clock: deadlines and log timestamps survive restarts).
pub type Millis = u64;

/// A transaction id: random, never reused (presumed abort answers "abort" for an id it does not
/// know, so a reused id could be confused with a forgotten one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(pub u128);

impl TxId {
    /// The store key: 16 big-endian bytes.
    pub fn key(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Parses the 32-hex-digit form printed by [`fmt::Display`].
    pub fn parse(text: &str) -> Result<Self, CoordinatorError> {
        let bad = || CoordinatorError::BadTxId { text: text.to_owned() };
        if text.len() != 32 {
            return Err(bad());
        }
        u128::from_str_radix(text, 16).map(TxId).map_err(|_| bad())
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl Serialize for TxId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for TxId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TxId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The outcome of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Every participant voted yes and the decision was logged.
    Commit,
    /// Someone voted no, a deadline passed, or the coordinator forgot the transaction.
    Abort,
}

impl Decision {
    /// Lowercase name for logs and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Commit => "commit",
            Decision::Abort => "abort",
        }
    }
}

/// A participant's vote on prepare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vote {
    /// Prepared and persisted: will commit or abort as told.
    Yes,
    /// Refused (prepare step failed, deadline passed, already aborted).
    No,
}

/// Resend and ask timers: the first retry after `base_ms`, then doubling up to `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub base_ms: u64,
    /// Largest delay between retries.
    pub max_ms: u64,
}

impl Backoff {
    /// The delay after `attempt` retries already made (0 = the first retry).
    pub fn delay(self, attempt: u32) -> u64 {
        let factor = 1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms).max(1)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base_ms: 500, max_ms: 30_000 }
    }
}

/// Errors of the coordinator crate.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The state store failed.
    #[error("transaction log: {0}")]
    Store(#[from] ragmesh_store::StoreError),
    /// A stored record could not be decoded.
    #[error("transaction log record {key} in tree {tree:?} is unreadable: {message} (inspect or remove the record)")]
    Corrupt {
        /// Tree of the record.
        tree: String,
        /// Hex key of the record.
        key: String,
        /// Decoder's message.
        message: String,
    },
    /// A record was written by a newer binary.
    #[error(
        "transaction log record {tx} has version {version}, newer than {supported} supported here: upgrade this binary"
    )]
    NewerVersion {
        /// Transaction of the record.
        tx: TxId,
        /// Version found.
        version: u32,
        /// Newest version this binary reads.
        supported: u32,
    },
    /// A write would change a decision already logged (a bug in the caller: decisions are final).
    #[error("transaction {tx}: decision {logged} is already logged, refusing to log {requested}")]
    DecisionConflict {
        /// Transaction.
        tx: TxId,
        /// Decision already in the log.
        logged: &'static str,
        /// Decision asked for.
        requested: &'static str,
    },
    /// A decision write was given a record without a decision (a bug in the caller).
    #[error("transaction {tx}: a decision write needs a record with a decision")]
    NoDecision {
        /// Transaction.
        tx: TxId,
    },
    /// Other writers kept changing the record during a decision write.
    #[error(
        "transaction {tx}: its log record kept changing during the decision write (is a second coordinator running?)"
    )]
    Contended {
        /// Transaction.
        tx: TxId,
    },
    /// A transaction id that is not 32 hex digits.
    #[error("transaction id {text:?} is not 32 hexadecimal digits")]
    BadTxId {
        /// The text given.
        text: String,
    },
}
