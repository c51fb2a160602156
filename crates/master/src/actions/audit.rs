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

#[cfg(test)]
mod tests {
    use ragmesh_store::SledStore;

    use super::*;

    fn store(dir: &tempfile::TempDir) -> Arc<dyn StateStore> {
        Arc::new(SledStore::open_waiting(dir.path()).expect("open sled"))
    }

    fn entry(time_ms: u64, node: &str, action: &str, subject: &str) -> AuditEntry {
        AuditEntry {
            time_ms,
            subject: subject.to_owned(),
            tenant: "t".to_owned(),
            kind: CallKind::Single,
            operation_id: None,
            node: node.to_owned(),
            action: action.to_owned(),
            args_digest: "ab12".to_owned(),
            redacted_args: r#"{"path":"/x","token":"<redacted>"}"#.to_owned(),
            outcome: Outcome { status: "ok".to_owned(), message: String::new() },
            duration_ms: 3,
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".to_owned()),
        }
    }

    fn sequences(page: &AuditPage) -> Vec<u64> {
        page.records.iter().map(|r| r.sequence).collect()
    }

    /// Every record matching `filter`, page by page (bounded).
    fn all_pages(log: &AuditLog, mut filter: AuditFilter, limit: usize) -> Vec<u64> {
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let page = log.query(&filter, limit).expect("query");
            assert!(page.records.len() <= limit);
            seen.extend(sequences(&page));
            match page.next_before {
                Some(before) => filter.before_sequence = Some(before),
                None => return seen,
            }
        }
        panic!("paging did not end");
    }

    #[test]
    fn records_come_back_newest_first_filtered_and_paged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(store(&dir), AuditConfig::default()).expect("open");
        // More than one store window, three nodes, two actions, two callers.
        for i in 0..700u64 {
            let node = format!("n{}", i % 3);
            let action = if i % 2 == 0 { "reindex" } else { "clear-cache" };
            let subject = if i < 350 { "alice" } else { "bob" };
            assert_eq!(log.append(entry(1_000 + i, &node, action, subject)).expect("append"), i + 1);
        }
        let newest = log.query(&AuditFilter::default(), 3).expect("query");
        assert_eq!(sequences(&newest), [700, 699, 698]);
        assert_eq!(newest.next_before, Some(698));
        assert_eq!(newest.records[0].entry, entry(1_699, "n0", "clear-cache", "bob"), "stored as given");

        let everything = all_pages(&log, AuditFilter::default(), 64);
        assert_eq!(everything, (1..=700).rev().collect::<Vec<_>>(), "pages cover every record once, in order");

        let filter = AuditFilter { node: Some("n1".into()), action: Some("reindex".into()), ..AuditFilter::default() };
        let expected: Vec<u64> = (1..=700u64).rev().filter(|s| (s - 1) % 3 == 1 && (s - 1) % 2 == 0).collect();
        assert_eq!(all_pages(&log, filter, 7), expected);

        let filter = AuditFilter {
            subject: Some("alice".into()),
            since_ms: Some(1_100),
            until_ms: Some(1_110),
            ..AuditFilter::default()
        };
        assert_eq!(all_pages(&log, filter, 100), (101..=110).rev().collect::<Vec<_>>(), "time window [since, until)");
        let none = log.query(&AuditFilter { node: Some("nope".into()), ..AuditFilter::default() }, 10).expect("query");
        assert_eq!(none, AuditPage { records: Vec::new(), next_before: None });
    }

    #[test]
    fn sequences_stay_monotonic_across_restarts_even_when_everything_was_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuditConfig { max_records: 100, max_age: Duration::from_secs(10) };
        {
            let log = AuditLog::open(store(&dir), config).expect("open");
            for i in 0..3 {
                log.append(entry(i, "n", "a", "s")).expect("append");
            }
        }
        {
            let log = AuditLog::open(store(&dir), config).expect("reopen");
            assert_eq!(log.last_sequence(), 3);
            assert_eq!(log.append(entry(5, "n", "a", "s")).expect("append"), 4);
            assert_eq!(log.prune(60_000).expect("prune"), 4, "all older than max_age");
            assert!(log.query(&AuditFilter::default(), 10).expect("query").records.is_empty());
        }
        let store = store(&dir);
        // A record written just before a crash, before its sequence was: never overwritten.
        let orphan = AuditRecord { sequence: 5, entry: entry(70_000, "n", "orphan", "s") };
        store.put(TREE, &5u64.to_be_bytes(), &encode(&orphan)).expect("put");
        let log = AuditLog::open(store, config).expect("reopen");
        assert_eq!(log.append(entry(70_001, "n", "a", "s")).expect("append"), 6, "no sequence is reused");
        let page = log.query(&AuditFilter::default(), 10).expect("query");
        assert_eq!(sequences(&page), [6, 5]);
        assert_eq!(page.records[1].entry.action, "orphan");
    }

    #[test]
    fn retention_keeps_the_newest_records_and_prunes_by_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuditConfig { max_records: 5, max_age: Duration::from_secs(100) };
        let log = AuditLog::open(store(&dir), config).expect("open");
        for i in 0..12u64 {
            log.append(entry(i * 20_000, "n", "a", "s")).expect("append");
        }
        assert_eq!(all_pages(&log, AuditFilter::default(), 2), [12, 11, 10, 9, 8], "the newest five");
        // Records 8..=12 are at 140 s..220 s; at 300 s, the max age (100 s) keeps those from 200 s.
        assert_eq!(log.prune(300_000).expect("prune"), 3);
        assert_eq!(all_pages(&log, AuditFilter::default(), 10), [12, 11]);
        assert_eq!(log.prune(300_000).expect("prune again"), 0);
        drop(log);
        let smaller = AuditConfig { max_records: 1, ..config };
        let log = AuditLog::open(store(&dir), smaller).expect("reopen with a smaller bound");
        assert_eq!(all_pages(&log, AuditFilter::default(), 10), [12], "the bound applies at open");
    }
}
