//! The durable write log of each shard group, in the master's state store.
//!
//! Layout: tree `write_log/<group>` holds the entries, keyed by the big-endian sequence number
//! (so key order is sequence order and `scan_from` reads them in batches); tree `write_log_meta`
//! holds each group's first retained and last assigned sequence. An entry's value is a tag byte
//! (upsert or delete), the length-prefixed JSON of the original writer (so a replica that catches
//! up later stores each document with the owner it had), and the prost encoding of the agent
//! request (without its position, which is the key).
//!
//! An append puts the entry (durable when the store returns) before the meta, and before any
//! replica sees it; on open, entries past the meta's last sequence (a crash between the two
//! puts) are found by scanning from there. All methods block (they write the store): call them
//! from `spawn_blocking`. One mutex per group serialises appends and trims of that group.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message as _;
use ragmesh_auth::Capability;
use ragmesh_proto::v1;
use ragmesh_store::{StateStore, StoreError};
use serde::{Deserialize, Serialize};

use super::decide::{self, TrimInput};

const META_TREE: &str = "write_log_meta";
const TAG_UPSERT: u8 = 1;
const TAG_DELETE: u8 = 2;
/// Entries read at once when scanning a log on open or trimming it.
const SCAN_BATCH: usize = 1024;

/// Who made a write: signed into the context of every forward of its entry, so agents record
/// the original owner whichever time the entry reaches them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    /// Subject of the caller's token (or the operator certificate).
    pub subject: String,
    /// Its tenant.
    pub tenant: String,
    /// Its capabilities.
    pub capabilities: Vec<Capability>,
}

/// The write an entry carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Upsert documents (`position` unset).
    Upsert(v1::UpsertDocumentsRequest),
    /// Delete documents (`position` unset).
    Delete(v1::DeleteDocumentsRequest),
}

/// One entry of a group's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Its sequence number.
    pub seq: u64,
    /// Who wrote it.
    pub writer: Writer,
    /// What it writes.
    pub write: Write,
}

/// Where one group's log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogState {
    /// Oldest retained sequence (`last + 1` when empty).
    pub first: u64,
    /// Last assigned sequence (0: none).
    pub last: u64,
    /// Bytes held (entry values).
    #[serde(default)]
    pub bytes: u64,
}

impl LogState {
    fn empty() -> Self {
        LogState { first: 1, last: 0, bytes: 0 }
    }

    /// Entries held.
    pub fn entries(&self) -> u64 {
        (self.last + 1).saturating_sub(self.first)
    }
}

/// Errors of the write log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The store failed.
    #[error("write log: {0}")]
    Store(#[from] StoreError),
    /// A stored entry or meta record does not decode.
    #[error("write log of group {group} is corrupt at {at}: {message}")]
    Corrupt {
        /// Group.
        group: String,
        /// Sequence or key.
        at: String,
        /// What is wrong.
        message: String,
    },
}

/// The write logs of every group.
#[derive(Debug, Clone)]
pub struct WriteLog {
    store: Arc<dyn StateStore>,
    groups: Arc<Mutex<BTreeMap<String, Arc<Mutex<LogState>>>>>,
}

fn tree(group: &str) -> String {
    format!("write_log/{group}")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state consistent (store first, then memory).
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl WriteLog {
    /// Opens every group's log, recovering entries appended after the last meta update.
    pub fn open(store: Arc<dyn StateStore>) -> Result<Self, LogError> {
        let mut groups = BTreeMap::new();
        for (key, value) in store.scan(META_TREE)? {
            let group = String::from_utf8_lossy(&key).into_owned();
            let meta: LogState = serde_json::from_slice(&value).map_err(|e| LogError::Corrupt {
                group: group.clone(),
                at: "meta".into(),
                message: e.to_string(),
            })?;
            let state = recover(store.as_ref(), &group, meta)?;
            groups.insert(group, Arc::new(Mutex::new(state)));
        }
        Ok(WriteLog { store, groups: Arc::new(Mutex::new(groups)) })
    }

    fn group(&self, group: &str) -> Option<Arc<Mutex<LogState>>> {
        lock(&self.groups).get(group).cloned()
    }

    /// Every group with a log, and where it stands.
    pub fn groups(&self) -> Vec<(String, LogState)> {
        let groups: Vec<_> = lock(&self.groups).iter().map(|(g, s)| (g.clone(), s.clone())).collect();
        groups.into_iter().map(|(g, s)| (g, *lock(&s))).collect()
    }

    /// Where `group`'s log stands (empty for a group never written).
    pub fn state(&self, group: &str) -> LogState {
        self.group(group).map_or_else(LogState::empty, |s| *lock(&s))
    }

    /// Appends a write to `group`'s log under the next sequence number; durable on return.
    pub fn append(&self, group: &str, writer: &Writer, write: &Write) -> Result<(u64, LogState), LogError> {
        let handle = {
            let mut groups = lock(&self.groups);
            if let Some(handle) = groups.get(group) {
                handle.clone()
            } else {
                // The meta goes first, so a group with entries always has a meta to be found by.
                let state = LogState::empty();
                self.put_meta(group, &state)?;
                groups.entry(group.to_owned()).or_insert_with(|| Arc::new(Mutex::new(state))).clone()
            }
        };
        let mut state = lock(&handle);
        let seq = state.last + 1;
        let value = encode(writer, write);
        self.store.put(&tree(group), &seq.to_be_bytes(), &value)?;
        let mut next = *state;
        next.last = seq;
        next.bytes += value.len() as u64;
        self.put_meta(group, &next)?;
        *state = next;
        Ok((seq, next))
    }

    /// At most `limit` entries of `group` from sequence `from` on, in order.
    pub fn read(&self, group: &str, from: u64, limit: usize) -> Result<Vec<LogEntry>, LogError> {
        let mut entries = Vec::new();
        for (key, value) in self.store.scan_from(&tree(group), &from.to_be_bytes(), limit)? {
            let seq = seq_of(group, &key)?;
            entries.push(decode(group, seq, &value)?);
        }
        Ok(entries)
    }

    /// Trims `group`'s log as [`decide::trim_to`] allows, given the last acknowledged sequence,
    /// the lowest sequence every replica applied and the bounds. Returns the new state.
    pub fn trim(
        &self,
        group: &str,
        committed: u64,
        min_applied: u64,
        max_entries: u64,
        max_bytes: u64,
    ) -> Result<LogState, LogError> {
        let Some(handle) = self.group(group) else { return Ok(LogState::empty()) };
        let mut state = lock(&handle);
        let tree = tree(group);
        loop {
            let oldest = self.store.scan_from(&tree, &state.first.to_be_bytes(), SCAN_BATCH)?;
            let mut sizes = Vec::with_capacity(oldest.len());
            for (key, value) in &oldest {
                sizes.push((seq_of(group, key)?, value.len() as u64));
            }
            let input = TrimInput {
                first: state.first,
                last: state.last,
                committed,
                min_applied,
                bytes: state.bytes,
                max_entries,
                max_bytes,
            };
            let new_first = decide::trim_to(&input, &sizes);
            if new_first == state.first {
                return Ok(*state);
            }
            let mut next = *state;
            // Entries go before the meta moves: after a crash midway, opening finds `first` as
            // the oldest entry still held, so the meta only ever needs to be a lower bound.
            for &(seq, size) in sizes.iter().take_while(|(seq, _)| *seq < new_first) {
                self.store.remove(&tree, &seq.to_be_bytes())?;
                next.bytes = next.bytes.saturating_sub(size);
            }
            next.first = new_first;
            self.put_meta(group, &next)?;
            *state = next;
        }
    }

    fn put_meta(&self, group: &str, state: &LogState) -> Result<(), LogError> {
        let encoded = serde_json::to_vec(state).expect("a LogState always serialises");
        self.store.put(META_TREE, group.as_bytes(), &encoded)?;
        Ok(())
    }
}

/// The state of a group's log from its meta and its entries: entries past the meta's `last`
/// (appended just before a crash) count, and `first` is the oldest entry actually held.
fn recover(store: &dyn StateStore, group: &str, meta: LogState) -> Result<LogState, LogError> {
    let tree = tree(group);
    let mut state = LogState { first: meta.first.max(1), last: meta.last, bytes: 0 };
    loop {
        let batch = store.scan_from(&tree, &(state.last + 1).to_be_bytes(), SCAN_BATCH)?;
        let Some((key, _)) = batch.last() else { break };
        state.last = seq_of(group, key)?;
    }
    // Count what is held (and skip entries a crashed trim left below `first`).
    let mut from = 0u64;
    let mut oldest = None;
    loop {
        let batch = store.scan_from(&tree, &from.to_be_bytes(), SCAN_BATCH)?;
        let Some((key, _)) = batch.last() else { break };
        let next = seq_of(group, key)? + 1;
        for (key, value) in &batch {
            let seq = seq_of(group, key)?;
            if seq < state.first {
                continue;
            }
            oldest.get_or_insert(seq);
            state.bytes += value.len() as u64;
        }
        from = next;
    }
    state.first = oldest.unwrap_or(state.last + 1);
    Ok(state)
}

fn seq_of(group: &str, key: &[u8]) -> Result<u64, LogError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| LogError::Corrupt {
        group: group.to_owned(),
        at: format!("key {key:?}"),
        message: "keys are 8-byte big-endian sequence numbers".into(),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn encode(writer: &Writer, write: &Write) -> Vec<u8> {
    let writer = serde_json::to_vec(writer).expect("a Writer always serialises");
    let (tag, body) = match write {
        Write::Upsert(request) => (TAG_UPSERT, request.encode_to_vec()),
        Write::Delete(request) => (TAG_DELETE, request.encode_to_vec()),
    };
    let mut value = Vec::with_capacity(5 + writer.len() + body.len());
    value.push(tag);
    value.extend_from_slice(&u32::try_from(writer.len()).unwrap_or(u32::MAX).to_be_bytes());
    value.extend_from_slice(&writer);
    value.extend_from_slice(&body);
    value
}

fn decode(group: &str, seq: u64, value: &[u8]) -> Result<LogEntry, LogError> {
    let corrupt = |message: String| LogError::Corrupt { group: group.to_owned(), at: format!("seq {seq}"), message };
    let (&tag, rest) = value.split_first().ok_or_else(|| corrupt("empty entry".into()))?;
    let (len, rest) = rest.split_at_checked(4).ok_or_else(|| corrupt("truncated writer length".into()))?;
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    let (writer, body) = rest.split_at_checked(len).ok_or_else(|| corrupt("truncated writer".into()))?;
    let writer: Writer = serde_json::from_slice(writer).map_err(|e| corrupt(format!("writer: {e}")))?;
    let write = match tag {
        TAG_UPSERT => Write::Upsert(v1::UpsertDocumentsRequest::decode(body).map_err(|e| corrupt(e.to_string()))?),
        TAG_DELETE => Write::Delete(v1::DeleteDocumentsRequest::decode(body).map_err(|e| corrupt(e.to_string()))?),
        other => return Err(corrupt(format!("unknown entry tag {other}"))),
    };
    Ok(LogEntry { seq, writer, write })
}

#[cfg(test)]
mod tests {
    use ragmesh_store::SledStore;

    use super::*;

    fn writer() -> Writer {
        Writer { subject: "alice".into(), tenant: "acme".into(), capabilities: vec![Capability::Ingest] }
    }

    fn upsert(id: &str) -> Write {
        Write::Upsert(v1::UpsertDocumentsRequest {
            documents: vec![v1::Document { id: id.into(), collection: "docs".into(), ..Default::default() }],
            position: None,
        })
    }

    /// Opens the log in `dir`, waiting out sled's flusher thread of a just-dropped handle,
    /// which holds the directory's lock for a moment.
    fn reopen(dir: &std::path::Path) -> WriteLog {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match SledStore::open_waiting(dir) {
                Ok(store) => return WriteLog::open(Arc::new(store)).expect("log"),
                Err(ragmesh_store::StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => panic!("reopen: {err}"),
            }
        }
    }

    fn ids(entries: &[LogEntry]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn appends_survive_reopen_and_read_back_in_order_with_their_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = WriteLog::open(Arc::new(SledStore::open_waiting(dir.path()).expect("open"))).expect("log");
            for i in 1..=5 {
                let (seq, state) = log.append("g", &writer(), &upsert(&format!("d{i}"))).expect("append");
                assert_eq!((seq, state.first, state.last), (i, 1, i));
            }
            let delete = Write::Delete(v1::DeleteDocumentsRequest::default());
            assert_eq!(log.append("h", &writer(), &delete).expect("append").0, 1, "groups count separately");
        }
        let log = reopen(dir.path());
        let state = log.state("g");
        assert_eq!((state.first, state.last, state.entries()), (1, 5, 5));
        assert!(state.bytes > 0);
        let entries = log.read("g", 2, 2).expect("read");
        assert_eq!(ids(&entries), vec![2, 3], "scan_from in batches");
        assert_eq!(entries[0].writer, writer());
        assert_eq!(entries[0].write, upsert("d2"));
        assert_eq!(log.append("g", &writer(), &upsert("d6")).expect("append").0, 6, "numbering continues");
        assert_eq!(log.groups().iter().map(|(g, _)| g.as_str()).collect::<Vec<_>>(), ["g", "h"]);
    }

    #[test]
    fn an_entry_appended_just_before_a_crash_is_recovered_without_its_meta() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Arc::new(SledStore::open_waiting(dir.path()).expect("open"));
            let log = WriteLog::open(store.clone()).expect("log");
            log.append("g", &writer(), &upsert("a")).expect("append");
            // The crash: entry 2 is durable, the meta still says last = 1.
            store.put(&tree("g"), &2u64.to_be_bytes(), &encode(&writer(), &upsert("b"))).expect("put");
        }
        let log = reopen(dir.path());
        assert_eq!(log.state("g").last, 2);
        assert_eq!(log.append("g", &writer(), &upsert("c")).expect("append").0, 3, "seq 2 is never reused");
    }

    #[test]
    fn trim_drops_applied_entries_and_bounds_the_log_durably() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = WriteLog::open(Arc::new(SledStore::open_waiting(dir.path()).expect("open"))).expect("log");
            for i in 1..=10 {
                log.append("g", &writer(), &upsert(&format!("d{i}"))).expect("append");
            }
            let before = log.state("g").bytes;
            let state = log.trim("g", 10, 3, 100, u64::MAX).expect("trim");
            assert_eq!((state.first, state.last, state.entries()), (4, 10, 7), "1..=3 applied everywhere");
            assert!(state.bytes < before);
            let state = log.trim("g", 10, 3, 4, u64::MAX).expect("trim");
            assert_eq!(state.first, 7, "bounded to 4 entries though a replica still needs 4..=6");
            assert_eq!(ids(&log.read("g", 0, 100).expect("read")), vec![7, 8, 9, 10]);
            let state = log.trim("g", 10, 10, 4, u64::MAX).expect("trim");
            assert_eq!((state.first, state.last, state.entries(), state.bytes), (11, 10, 0, 0), "all applied");
        }
        let log = reopen(dir.path());
        let state = log.state("g");
        assert_eq!((state.first, state.last), (11, 10), "an empty log remembers its last sequence");
        assert_eq!(log.append("g", &writer(), &upsert("x")).expect("append").0, 11);
    }

    #[test]
    fn a_corrupt_entry_is_reported_not_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open_waiting(dir.path()).expect("open"));
        let log = WriteLog::open(store.clone()).expect("log");
        log.append("g", &writer(), &upsert("a")).expect("append");
        store.put(&tree("g"), &1u64.to_be_bytes(), &[9, 0, 0, 0, 0]).expect("put");
        let err = log.read("g", 1, 10).expect_err("corrupt");
        assert!(err.to_string().contains("group g is corrupt at seq 1"), "{err}");
    }
}
