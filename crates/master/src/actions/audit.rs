//! The append-only audit log of actions: one record per action call on a node (who, which node,
//! which action, argument digest and redacted arguments, outcome, duration, trace id), read by
//! `ragmeshctl action history`.
//!
//! Records live in tree `action_audit` keyed by their sequence number (big-endian `u64`, so the
//! tree is in sequence order), as JSON; they are written once and never rewritten. The last
//! sequence given out is kept in tree `action_audit_meta` as well, so sequences stay monotonic
//! across restarts even when retention pruned every record (no number is ever reused).
//!
//! Retention: the newest `max_records` sequence numbers are kept (the oldest are removed as new
//! ones are appended), and [`AuditLog::prune`] removes records older than `max_age`.
//! Arguments are stored exactly as given: the caller redacts secrets before appending.
//!
//! Blocking (store I/O): call from `spawn_blocking`. The lock is never held across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ragmesh_store::StateStore;
use serde::{Deserialize, Serialize};

use super::{RecordError, decode, decode_u64, encode, millis};

/// Tree of the audit records.
pub const TREE: &str = "action_audit";
/// Tree of the last sequence given out.
pub const META_TREE: &str = "action_audit_meta";
const LAST_SEQ: &[u8] = b"last_seq";
/// Records kept at most by default.
pub const DEFAULT_MAX_RECORDS: u64 = 1_000_000;
/// Age after which records are pruned by default (90 days).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Records one query examines at most; a query that examined this many returns what it found and
/// a cursor to go on from.
pub const MAX_SCAN: usize = 10_000;
/// Records read per store range read.
const WINDOW: u64 = 256;

/// Retention of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// Records kept at most (the newest); at least 1.
    pub max_records: u64,
    /// Age after which [`AuditLog::prune`] removes a record.
    pub max_age: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { max_records: DEFAULT_MAX_RECORDS, max_age: DEFAULT_MAX_AGE }
    }
}

/// How an action was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// On one node.
    Single,
    /// One node of a broadcast job.
    Broadcast,
    /// One participant of a transaction.
    Transaction,
}

/// How a call ended: a status word of the common vocabulary and its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// `ok`, `timeout`, `unavailable`, `error`, `unauthorized`, `unknown`, ...
    pub status: String,
    /// Why (empty when ok).
    pub message: String,
}

/// One audited call, as the caller describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the call started (unix ms).
    pub time_ms: u64,
    /// The caller's subject.
    pub subject: String,
    /// The caller's tenant.
    pub tenant: String,
    /// Single, broadcast or transaction.
    pub kind: CallKind,
    /// The broadcast job or transaction id, if any.
    pub operation_id: Option<String>,
    /// Node the action ran on.
    pub node: String,
    /// Action name.
    pub action: String,
    /// Digest of the arguments, hex.
    pub args_digest: String,
    /// The arguments with secrets already redacted by the caller, rendered by the caller.
    pub redacted_args: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub duration_ms: u64,
    /// Trace id, when tracing is on.
    pub trace_id: Option<String>,
}

/// A stored record: the entry and its sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log; grows by one per record, never reused.
    pub sequence: u64,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Which records a query wants; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this node.
    pub node: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this caller.
    pub subject: Option<String>,
    /// Only records at or after this time (unix ms).
    pub since_ms: Option<u64>,
    /// Only records before this time (unix ms).
    pub until_ms: Option<u64>,
    /// Only records with a smaller sequence: the cursor of the previous page.
    pub before_sequence: Option<u64>,
}

impl AuditFilter {
    fn matches(&self, entry: &AuditEntry) -> bool {
        let same = |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|w| w == value);
        same(&self.node, &entry.node)
            && same(&self.action, &entry.action)
            && same(&self.subject, &entry.subject)
            && self.since_ms.is_none_or(|since| entry.time_ms >= since)
            && self.until_ms.is_none_or(|until| entry.time_ms < until)
    }
}

/// One page of a query, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    /// Matching records, newest first.
    pub records: Vec<AuditRecord>,
    /// Pass as `before_sequence` to read on; `None` when no older record is left.
    pub next_before: Option<u64>,
}

#[derive(Debug)]
struct State {
    /// Last sequence given out.
    last: u64,
    /// Lowest sequence possibly held (`last + 1` when empty).
    first: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct AuditLog {
    store: Arc<dyn StateStore>,
    config: AuditConfig,
    state: Mutex<State>,
}

impl AuditLog {
    /// Opens the log and applies the record bound. Blocking.
    pub fn open(store: Arc<dyn StateStore>, config: AuditConfig) -> Result<Self, RecordError> {
        let stored_last = store.get(META_TREE, LAST_SEQ)?.as_deref().and_then(decode_u64).unwrap_or(0);
        let first_held = store.scan_from(TREE, &[], 1)?.first().and_then(|(key, _)| decode_u64(key));
        // The highest record key too: a record written just before a crash, before its
        // sequence was, must not be overwritten by the next append.
        let mut last = stored_last;
        if let Some(first) = first_held {
            let mut start = first.max(stored_last);
            for _ in 0..1_000_000 {
                let batch = store.scan_from(TREE, &start.to_be_bytes(), 64)?;
                let Some(highest) = batch.last().and_then(|(key, _)| decode_u64(key)) else { break };
                last = last.max(highest);
                if batch.len() < 64 {
                    break;
                }
                start = highest + 1;
            }
        }
        let first = first_held.unwrap_or(last + 1);
        let config = AuditConfig { max_records: config.max_records.max(1), ..config };
        let log = AuditLog { store, config, state: Mutex::new(State { last, first }) };
        log.bound(&mut log.lock())?;
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `entry` durably; returns its sequence number.
    pub fn append(&self, entry: AuditEntry) -> Result<u64, RecordError> {
        let mut state = self.lock();
        let sequence = state.last + 1;
        let record = AuditRecord { sequence, entry };
        self.store.put(TREE, &sequence.to_be_bytes(), &encode(&record))?;
        self.store.put(META_TREE, LAST_SEQ, &sequence.to_be_bytes())?;
        state.last = sequence;
        if state.first > sequence {
            state.first = sequence;
        }
        self.bound(&mut state)?;
        Ok(sequence)
    }

    /// Removes the records beyond the newest `max_records` sequence numbers.
    fn bound(&self, state: &mut State) -> Result<(), RecordError> {
        let keep_from = state.last.saturating_sub(self.config.max_records) + 1;
        while state.first < keep_from {
            self.store.remove(TREE, &state.first.to_be_bytes())?;
            state.first += 1;
        }
        Ok(())
    }

    /// Removes records older than `max_age` at `now_ms`; returns how many.
    pub fn prune(&self, now_ms: u64) -> Result<usize, RecordError> {
        let cutoff = now_ms.saturating_sub(millis(self.config.max_age));
        let mut state = self.lock();
        let mut removed = 0;
        loop {
            let batch = self.store.scan_from(TREE, &state.first.to_be_bytes(), WINDOW as usize)?;
            if batch.is_empty() {
                state.first = state.last + 1;
                break;
            }
            for (key, value) in &batch {
                let Some(sequence) = decode_u64(key) else { continue };
                let time_ms = decode::<AuditRecord>("audit", value).map_or(0, |r| r.entry.time_ms);
                if time_ms >= cutoff {
                    state.first = sequence;
                    if removed > 0 {
                        tracing::debug!(records = removed, "old audit records pruned");
                    }
                    return Ok(removed);
                }
                self.store.remove(TREE, key)?;
                state.first = sequence + 1;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The last sequence given out (0 when none ever was).
    pub fn last_sequence(&self) -> u64 {
        self.lock().last
    }

    /// Up to `limit` records matching `filter`, newest first, with the cursor of the next page.
    /// Examines at most [`MAX_SCAN`] records; a page can be short (even empty) with a cursor
    /// when the filter matches few records.
    pub fn query(&self, filter: &AuditFilter, limit: usize) -> Result<AuditPage, RecordError> {
        let (first, last) = {
            let state = self.lock();
            (state.first, state.last)
        };
        let mut upper = filter.before_sequence.unwrap_or(u64::MAX).min(last.saturating_add(1));
        let mut records = Vec::new();
        let mut examined = 0usize;
        while upper > first && records.len() < limit {
            if examined >= MAX_SCAN {
                return Ok(AuditPage { records, next_before: Some(upper) });
            }
            let start = upper.saturating_sub(WINDOW).max(first);
            let count = usize::try_from(upper - start).unwrap_or(usize::MAX);
            let window = self.store.scan_from(TREE, &start.to_be_bytes(), count)?;
            for (key, value) in window.iter().rev() {
                let Some(sequence) = decode_u64(key).filter(|s| *s < upper) else { continue };
                examined += 1;
                let record: AuditRecord = decode("audit", value)?;
                if filter.matches(&record.entry) {
                    records.push(record);
                    if records.len() == limit {
                        let next_before = Some(sequence).filter(|s| *s > first);
                        return Ok(AuditPage { records, next_before });
                    }
                }
            }
            upper = start;
        }
        Ok(AuditPage { records, next_before: None })
    }
}
