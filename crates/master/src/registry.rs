//! The node registry: the one owner of what the master knows about nodes. A `Clone` handle over
//! shared state whose lock is never held across an `.await`; node records are persisted in the
//! state store (tree `nodes`) so a restarted master knows its nodes, marked down until they
//! reconnect. State changes are broadcast on a `watch` channel.
//!
//! Each node serves one shard group (`shard`, its own name unless the agent says otherwise) and
//! reports the last entry of the group's write log it applied (`applied_seq`: at registration,
//! in heartbeats, in write answers). Replication tells the registry where each group's log
//! stands ([`GroupLog`]); the registry derives every replica's [`SyncState`] from both (a pure
//! decision, `replication::decide::sync_state`) whenever either changes, so the membership
//! snapshot always carries a sync state consistent with the applied sequences it shows. Readers
//! take `searchable liveness AND InSync` as the read set.
//!
//! It also keeps each node's latest term summary (routing by term summaries), for its current
//! session only: a new registration or an eviction forgets it. Summaries are not part of the
//! membership snapshot (they are large and change with every write); searches read them with
//! [`Registry::term_summaries`], together with the node's generation and its group's log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ragmesh_search::NodeSummary;
use std::time::SystemTime;

use ragmesh_store::{StateStore, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::federation::NodeTermSummary;
use crate::node::{Liveness, LivenessEvent, NodeState, SessionId};
use crate::replication::decide;

const NODES_TREE: &str = "nodes";
/// Evicted node names and when (unix seconds), so their old join tokens cannot readmit them.
const EVICTED_TREE: &str = "evicted_nodes";

/// What a node told the master about itself; persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name (from its certificate).
    pub name: String,
    /// Advertised `host:port` of its AgentService.
    pub address: String,
    /// Agent software version.
    pub version: String,
    /// Wire protocol major version.
    pub protocol_major: u32,
    /// Wire protocol minor version.
    pub protocol_minor: u32,
    /// Collections and live document counts.
    pub collections: BTreeMap<String, u64>,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Index generation.
    pub generation: u64,
    /// Registration time, milliseconds since the Unix epoch.
    pub registered_at_ms: u64,
    /// Heartbeat interval agreed at registration, milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Shard group the node serves. Records persisted before groups existed have none: the
    /// node's own name stands for it (a group of one), see [`NodeRecord::group`].
    #[serde(default)]
    pub shard: String,
}

impl NodeRecord {
    /// The shard group of the node: `shard`, or its own name when none was recorded.
    pub fn group(&self) -> &str {
        if self.shard.is_empty() { &self.name } else { &self.shard }
    }
}

/// Whether a replica holds every acknowledged write of its shard group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SyncState {
    /// It applied every acknowledged write: it may serve reads.
    #[default]
    InSync,
    /// It is behind, and the log still holds what it misses: replication is catching it up.
    CatchingUp,
    /// It is behind by more than the log retains: an operator must act (the message says how).
    Stale {
        /// What to do.
        message: String,
    },
}

impl SyncState {
    /// Whether the replica may serve reads.
    pub fn is_in_sync(&self) -> bool {
        matches!(self, SyncState::InSync)
    }
}

impl std::fmt::Display for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncState::InSync => "in_sync",
            SyncState::CatchingUp => "catching_up",
            SyncState::Stale { .. } => "stale",
        })
    }
}

/// Where a shard group's write log stands, as replication reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupLog {
    /// Sequence of the last entry appended (0: none yet).
    pub last_seq: u64,
    /// Sequence of the last acknowledged entry.
    pub committed_seq: u64,
    /// Oldest sequence still in the log; `last_seq + 1` when the log is empty.
    pub first_seq: u64,
    /// Entries held.
    pub entries: u64,
    /// Bytes held.
    pub bytes: u64,
}

#[cfg(test)]
impl NodeRecord {
    /// A record of node `name` at 127.0.0.1:1 holding one document in each of `collections`.
    pub(crate) fn for_tests(name: &str, collections: &[&str]) -> Self {
        NodeRecord {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            version: "0".into(),
            protocol_major: 1,
            protocol_minor: 0,
            collections: collections.iter().map(|c| ((*c).to_owned(), 1)).collect(),
            labels: BTreeMap::new(),
            generation: 0,
            registered_at_ms: 0,
            heartbeat_interval_ms: 1000,
            shard: String::new(),
        }
    }
}

#[cfg(test)]
impl NodeView {
    /// A view of [`NodeRecord::for_tests`] in `state`.
    pub(crate) fn for_tests(name: &str, state: NodeState, collections: &[&str]) -> Self {
        NodeView {
            record: Arc::new(NodeRecord::for_tests(name, collections)),
            state,
            down_reason: None,
            last_heartbeat: None,
            in_flight: 0,
            applied_seq: 0,
            sync: SyncState::InSync,
            index_bytes: 0,
        }
    }
}

/// Load and liveness fields a heartbeat carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatInfo {
    /// Requests the agent is serving.
    pub in_flight: u32,
    /// Collections and live document counts.
    pub collections: BTreeMap<String, u64>,
    /// Index generation.
    pub generation: u64,
    /// Last write-log sequence applied.
    pub applied_seq: u64,
    /// Bytes the node's index takes on disk.
    pub index_bytes: u64,
}

/// A consistent copy of one node's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// What the node said about itself (shared with the registry: a snapshot copies no record).
    pub record: Arc<NodeRecord>,
    /// Liveness state.
    pub state: NodeState,
    /// Why it is down, when it is.
    pub down_reason: Option<String>,
    /// When the last heartbeat arrived.
    pub last_heartbeat: Option<SystemTime>,
    /// In-flight requests from the last heartbeat.
    pub in_flight: u32,
    /// Last write-log sequence of its group it applied, as far as the master knows (0 after a
    /// master restart until it registers again).
    pub applied_seq: u64,
    /// Whether it holds every acknowledged write of its group.
    pub sync: SyncState,
    /// Bytes its index takes on disk, from the last heartbeat (0 before one).
    pub index_bytes: u64,
}

#[derive(Debug)]
struct Entry {
    /// Replaced (or copied on write while a snapshot holds it), never mutated in place.
    record: Arc<NodeRecord>,
    liveness: Liveness,
    last_heartbeat: Option<SystemTime>,
    in_flight: u32,
    applied_seq: u64,
    sync: SyncState,
    index_bytes: u64,
}

impl Entry {
    fn new(record: NodeRecord) -> Self {
        Entry {
            record: Arc::new(record),
            liveness: Liveness::restored(),
            last_heartbeat: None,
            in_flight: 0,
            applied_seq: 0,
            sync: SyncState::InSync,
            index_bytes: 0,
        }
    }

    /// Takes a newer applied sequence (within a session it only grows); returns whether it changed.
    fn observe_applied(&mut self, applied_seq: u64) -> bool {
        if applied_seq <= self.applied_seq {
            return false;
        }
        self.applied_seq = applied_seq;
        true
    }
}

/// The registry's state behind its one lock.
#[derive(Debug, Default)]
struct Inner {
    nodes: BTreeMap<String, Entry>,
    groups: BTreeMap<String, GroupLog>,
    /// Per node, its current session's latest term summary and the log sequence it was built at.
    summaries: BTreeMap<String, (Arc<NodeSummary>, u64)>,
    /// Bumped by every (re-)registration and removal: what a node serves may change then
    /// without a write in its group's log (a new session after a restore, a new group).
    epoch: u64,
}

impl Inner {
    /// Recomputes every node's sync state from its applied sequence and its group's log
    /// (without allocating per node: it runs on every registration and state change).
    fn resync(&mut self) {
        let log_of = |group: &str| self.groups.get(group).copied().unwrap_or_default();
        // Per group, its first node (by name) holding every committed write.
        let mut first_in_sync: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, entry) in &self.nodes {
            if entry.applied_seq >= log_of(entry.record.group()).committed_seq {
                first_in_sync.entry(entry.record.group()).or_insert(name);
            }
        }
        let states: Vec<SyncState> = self
            .nodes
            .iter()
            .map(|(name, entry)| {
                let group = entry.record.group();
                let peer = first_in_sync.get(group).copied();
                decide::sync_state(name, group, entry.applied_seq, &log_of(group), peer)
            })
            .collect();
        for (entry, state) in self.nodes.values_mut().zip(states) {
            entry.sync = state;
        }
    }
}

impl Entry {
    /// Takes the node's collections as of `generation`, unless the master already knows a newer
    /// generation: a heartbeat counted before a write may arrive after the write's answer.
    /// (A node whose index was reset starts from a lower generation, but it re-registers, and
    /// registration replaces the record whole.)
    fn observe_index(&mut self, generation: u64, collections: BTreeMap<String, u64>) -> bool {
        if generation < self.record.generation {
            return false;
        }
        let changed = self.record.generation != generation || self.record.collections != collections;
        if changed {
            let record = Arc::make_mut(&mut self.record);
            record.generation = generation;
            record.collections = collections;
        }
        changed
    }

    fn view(&self) -> NodeView {
        NodeView {
            record: Arc::clone(&self.record),
            state: self.liveness.state,
            down_reason: self.liveness.down_reason.clone(),
            last_heartbeat: self.last_heartbeat,
            in_flight: self.in_flight,
            applied_seq: self.applied_seq,
            sync: self.sync.clone(),
            index_bytes: self.index_bytes,
        }
    }
}

/// Snapshot of every node, broadcast on each state or record change.
pub type Membership = Arc<BTreeMap<String, NodeView>>;

/// Handle to the registry.
#[derive(Debug, Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<dyn StateStore>,
    inner: Mutex<Inner>,
    membership: watch::Sender<Membership>,
    /// Nodes that are not down (those whose heartbeats the master expects), as of the latest
    /// publish: read by every heartbeat to pace the fleet, so kept outside the lock.
    beating: AtomicUsize,
}

/// Errors of registry operations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A persisted record does not decode.
    #[error("registry entry {key:?} is corrupt: {message}")]
    Corrupt {
        /// Key of the entry.
        key: String,
        /// Decoder message.
        message: String,
    },
}

impl Registry {
    /// Loads the persisted registry; every restored node starts down until it reconnects.
    pub fn load(store: Arc<dyn StateStore>) -> Result<Self, RegistryError> {
        let mut inner = Inner::default();
        for (key, value) in store.scan(NODES_TREE)? {
            let record: NodeRecord = serde_json::from_slice(&value).map_err(|e| RegistryError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                message: e.to_string(),
            })?;
            let entry = Entry::new(record);
            inner.nodes.insert(entry.record.name.clone(), entry);
        }
        let membership = watch::Sender::new(Arc::new(BTreeMap::new()));
        let shared = Shared { store, inner: Mutex::new(inner), membership, beating: AtomicUsize::new(0) };
        let registry = Registry { shared: Arc::new(shared) };
        registry.publish(&mut registry.lock());
        Ok(registry)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this module's short critical sections;
        // the map itself is always consistent between statements, so keep serving.
        self.shared.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Recomputes sync states and broadcasts the snapshot.
    fn publish(&self, inner: &mut Inner) {
        inner.resync();
        let snapshot: BTreeMap<String, NodeView> = inner.nodes.iter().map(|(k, e)| (k.clone(), e.view())).collect();
        let beating = snapshot.values().filter(|v| v.state != NodeState::Down).count();
        self.shared.beating.store(beating, Ordering::Relaxed);
        self.shared.membership.send_replace(Arc::new(snapshot));
    }

    /// How many nodes are not down: the fleet whose heartbeats the master paces.
    pub fn beating(&self) -> usize {
        self.shared.beating.load(Ordering::Relaxed)
    }

    /// Records a (re-)registration durably and opens a new session, superseding any older one.
    /// Blocking (writes the store); call from `spawn_blocking` in async code.
    pub fn register(&self, record: NodeRecord) -> Result<SessionId, RegistryError> {
        self.register_at(record, 0)
    }

    /// [`Registry::register`] of a node that applied its group's log up to `applied_seq`: the
    /// new session starts from what the node says (its index may have been replaced).
    pub fn register_at(&self, mut record: NodeRecord, applied_seq: u64) -> Result<SessionId, RegistryError> {
        if record.shard.is_empty() {
            record.shard = record.name.clone();
        }
        let encoded = serde_json::to_vec(&record).expect("a NodeRecord always serialises");
        self.shared.store.put(NODES_TREE, record.name.as_bytes(), &encoded)?;
        let session = SessionId::random();
        let mut inner = self.lock();
        // A summary belongs to the session whose stream sent it (the index may have been replaced).
        inner.summaries.remove(&record.name);
        let record = Arc::new(record);
        let entry = inner.nodes.entry(record.name.clone()).or_insert_with(|| Entry::new(NodeRecord::clone(&record)));
        entry.record = record;
        entry.applied_seq = applied_seq;
        entry.liveness.apply(&LivenessEvent::Registered(session.clone()), "");
        inner.epoch += 1;
        self.publish(&mut inner);
        Ok(session)
    }

    /// Applies a heartbeat of `session`; returns false when the session is not the node's current one.
    pub fn heartbeat(&self, name: &str, session: &SessionId, info: HeartbeatInfo) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.nodes.get_mut(name) else { return false };
        if entry.liveness.session.as_ref() != Some(session) {
            return false;
        }
        let changed_state = entry.liveness.apply(&LivenessEvent::Heartbeat(session.clone()), "");
        let changed_record = entry.observe_index(info.generation, info.collections);
        let changed_applied = entry.observe_applied(info.applied_seq);
        entry.last_heartbeat = Some(SystemTime::now());
        entry.in_flight = info.in_flight;
        entry.index_bytes = info.index_bytes;
        if changed_state || changed_record || changed_applied {
            self.publish(&mut inner);
        }
        true
    }

    /// Replaces the term summary of `session` of node `name` (`None`: forget it, for a summary
    /// that could not be read); `applied_seq` is the log sequence of the snapshot it describes.
    /// Returns false when the session is not the node's current one.
    pub fn set_term_summary(&self, name: &str, session: &SessionId, summary: Option<(NodeSummary, u64)>) -> bool {
        let mut inner = self.lock();
        let current = inner.nodes.get(name).is_some_and(|e| e.liveness.session.as_ref() == Some(session));
        if !current {
            return false;
        }
        match summary {
            Some((summary, applied_seq)) => inner.summaries.insert(name.to_owned(), (Arc::new(summary), applied_seq)),
            None => inner.summaries.remove(name),
        };
        true
    }

    /// Every node's term summary with what decides whether to trust it (its generation as last
    /// heard, its group's last assigned log sequence), all read under one lock.
    pub fn term_summaries(&self) -> BTreeMap<String, NodeTermSummary> {
        let inner = self.lock();
        let mut out = BTreeMap::new();
        for (name, (summary, applied_seq)) in &inner.summaries {
            let Some(entry) = inner.nodes.get(name) else { continue };
            let log = inner.groups.get(entry.record.group()).copied().unwrap_or_default();
            out.insert(
                name.clone(),
                NodeTermSummary {
                    summary: Arc::clone(summary),
                    applied_seq: *applied_seq,
                    node_generation: entry.record.generation,
                    group_last_seq: log.last_seq,
                },
            );
        }
        out
    }

    /// Records what a node answered to an acknowledged write (its generation and collections
    /// after it), so the next search routes to a collection the write created and `ListNodes`
    /// counts it, without waiting for the next heartbeat; `applied_seq` is the last log entry it
    /// says it applied. Returns whether the view changed.
    pub fn observe_write(
        &self,
        name: &str,
        generation: u64,
        collections: BTreeMap<String, u64>,
        applied_seq: u64,
    ) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.nodes.get_mut(name) else { return false };
        let changed_index = entry.observe_index(generation, collections);
        let changed_applied = entry.observe_applied(applied_seq);
        let changed = changed_index || changed_applied;
        if changed {
            self.publish(&mut inner);
        }
        changed
    }

    /// Records that node `name` applied its group's log up to `applied_seq` (an entry it
    /// refused as a whole, which changed no documents). Returns whether the view changed.
    pub fn observe_applied(&self, name: &str, applied_seq: u64) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.nodes.get_mut(name) else { return false };
        let changed = entry.observe_applied(applied_seq);
        if changed {
            self.publish(&mut inner);
        }
        changed
    }

    /// Replication's report of where group `group`'s write log stands; sync states follow.
    pub fn set_group_log(&self, group: &str, log: GroupLog) {
        let mut inner = self.lock();
        if inner.groups.get(group) == Some(&log) {
            return;
        }
        inner.groups.insert(group.to_owned(), log);
        self.publish(&mut inner);
    }

    /// Where group `group`'s log stands (all zero for a group never written).
    pub fn group_log(&self, group: &str) -> GroupLog {
        self.lock().groups.get(group).copied().unwrap_or_default()
    }

    /// Every shard group: those of registered nodes and those with a write log, sorted.
    pub fn groups(&self) -> Vec<String> {
        let inner = self.lock();
        let mut groups: std::collections::BTreeSet<String> = inner.groups.keys().cloned().collect();
        groups.extend(inner.nodes.values().map(|e| e.record.group().to_owned()));
        groups.into_iter().collect()
    }

    /// Applies a liveness event; `reason` explains a move to down. Returns whether the state changed.
    pub fn apply(&self, name: &str, event: LivenessEvent, reason: &str) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.nodes.get_mut(name) else { return false };
        let changed = entry.liveness.apply(&event, reason);
        if changed {
            tracing::info!(node.id = name, state = %entry.liveness.state, reason, "node state changed");
            self.publish(&mut inner);
        }
        changed
    }

    /// Forgets a node (eviction): its record is deleted durably, its health stream's next
    /// heartbeat is refused, and it must be admitted again to rejoin. Returns whether it existed.
    /// Blocking (writes the store).
    pub fn remove(&self, name: &str) -> Result<bool, RegistryError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.shared.store.put(EVICTED_TREE, name.as_bytes(), &now.to_be_bytes())?;
        self.shared.store.remove(NODES_TREE, name.as_bytes())?;
        let mut inner = self.lock();
        inner.summaries.remove(name);
        let existed = inner.nodes.remove(name).is_some();
        if existed {
            inner.epoch += 1;
            self.publish(&mut inner);
        }
        Ok(existed)
    }

    /// When `name` was last evicted (unix seconds), if ever.
    pub fn evicted_at(&self, name: &str) -> Option<u64> {
        let bytes = self.shared.store.get(EVICTED_TREE, name.as_bytes()).ok()??;
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }

    /// The node's current session, if it registered with this master process.
    pub fn session(&self, name: &str) -> Option<SessionId> {
        self.lock().nodes.get(name).and_then(|e| e.liveness.session.clone())
    }

    /// One node.
    pub fn get(&self, name: &str) -> Option<NodeView> {
        self.lock().nodes.get(name).map(Entry::view)
    }

    /// Every node, sorted by name.
    pub fn snapshot(&self) -> Vec<NodeView> {
        self.lock().nodes.values().map(Entry::view).collect()
    }

    /// [`Registry::snapshot`] with the registry's epoch at that moment: a counter every
    /// (re-)registration and removal bumps (the search caches key on it).
    pub fn snapshot_at_epoch(&self) -> (u64, Vec<NodeView>) {
        let inner = self.lock();
        (inner.epoch, inner.nodes.values().map(Entry::view).collect())
    }

    /// Membership changes (state transitions, collections, generations).
    pub fn subscribe(&self) -> watch::Receiver<Membership> {
        self.shared.membership.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use ragmesh_store::SledStore;

    use super::*;

    fn record(name: &str) -> NodeRecord {
        NodeRecord {
            generation: 1,
            collections: BTreeMap::from([("docs".to_owned(), 3)]),
            ..NodeRecord::for_tests(name, &[])
        }
    }

    #[test]
    fn registry_is_persisted_and_restored_as_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Arc::new(SledStore::open_waiting(dir.path()).expect("open"));
            let registry = Registry::load(store).expect("load");
            let session = registry.register(record("a")).expect("register");
            let info = HeartbeatInfo {
                in_flight: 0,
                collections: BTreeMap::new(),
                generation: 2,
                applied_seq: 0,
                index_bytes: 0,
            };
            assert!(registry.heartbeat("a", &session, info));
            assert_eq!(registry.get("a").expect("a").state, NodeState::Up);
        }
        let store = Arc::new(SledStore::open_waiting(dir.path()).expect("reopen"));
        let registry = Registry::load(store).expect("load");
        let a = registry.get("a").expect("a restored");
        assert_eq!(a.state, NodeState::Down);
        assert_eq!(a.record.address, "127.0.0.1:1");
        assert!(a.down_reason.expect("reason").contains("master restarted"));
    }

    #[test]
    fn a_heartbeat_counted_before_a_write_does_not_undo_the_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::load(Arc::new(SledStore::open_waiting(dir.path()).expect("open"))).expect("load");
        let session = registry.register(record("a")).expect("register");
        let after_write = BTreeMap::from([("docs".to_owned(), 3), ("new".to_owned(), 5)]);
        assert!(registry.observe_write("a", 2, after_write.clone(), 0));
        let stale = HeartbeatInfo {
            in_flight: 0,
            collections: BTreeMap::from([("docs".to_owned(), 3)]),
            generation: 1,
            applied_seq: 0,
            index_bytes: 0,
        };
        assert!(registry.heartbeat("a", &session, stale));
        let a = registry.get("a").expect("a");
        assert_eq!((a.record.generation, a.record.collections.clone()), (2, after_write));
        let newer =
            HeartbeatInfo { in_flight: 0, collections: BTreeMap::new(), generation: 3, applied_seq: 0, index_bytes: 0 };
        assert!(registry.heartbeat("a", &session, newer));
        assert!(registry.get("a").expect("a").record.collections.is_empty(), "a newer count wins");
        assert!(!registry.observe_write("nobody", 9, BTreeMap::new(), 0), "unknown nodes are ignored");
    }

    #[test]
    fn heartbeats_of_a_superseded_session_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::load(Arc::new(SledStore::open_waiting(dir.path()).expect("open"))).expect("load");
        let old = registry.register(record("a")).expect("register");
        let _new = registry.register(record("a")).expect("register");
        let info =
            HeartbeatInfo { in_flight: 0, collections: BTreeMap::new(), generation: 0, applied_seq: 0, index_bytes: 0 };
        assert!(!registry.heartbeat("a", &old, info));
        assert_eq!(registry.get("a").expect("a").state, NodeState::Joining);
    }

    #[test]
    fn a_record_persisted_before_shard_groups_is_a_group_of_one() {
        let legacy = r#"{"name":"old","address":"127.0.0.1:1","version":"0","protocol_major":1,"protocol_minor":0,
            "collections":{},"labels":{},"generation":0,"registered_at_ms":0,"heartbeat_interval_ms":1000}"#;
        let record: NodeRecord = serde_json::from_str(legacy).expect("old records still decode");
        assert_eq!((record.shard.as_str(), record.group()), ("", "old"));
    }

    #[test]
    fn a_term_summary_lives_as_long_as_its_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::load(Arc::new(SledStore::open_waiting(dir.path()).expect("open"))).expect("load");
        let session = registry.register(record("n1")).expect("register");
        let summary = NodeSummary::new(1, []);
        assert!(!registry.set_term_summary("n1", &SessionId::random(), Some((summary.clone(), 0))), "old session");
        assert!(registry.term_summaries().is_empty());
        assert!(registry.set_term_summary("n1", &session, Some((summary.clone(), 4))));
        registry.set_group_log("n1", GroupLog { last_seq: 5, ..GroupLog::default() });
        let known = registry.term_summaries();
        let n1 = known.get("n1").expect("kept");
        assert_eq!((n1.applied_seq, n1.group_last_seq, n1.node_generation), (4, 5, 1));
        assert!(!n1.trusted(), "a write was assigned after the summary");
        assert!(registry.set_term_summary("n1", &session, None), "unreadable: forgotten");
        assert!(registry.term_summaries().is_empty());
        registry.set_term_summary("n1", &session, Some((summary.clone(), 4)));
        registry.register(record("n1")).expect("register again");
        assert!(registry.term_summaries().is_empty(), "a new session starts without a summary");
        let session = registry.session("n1").expect("session");
        registry.set_term_summary("n1", &session, Some((summary, 4)));
        registry.remove("n1").expect("evict");
        assert!(registry.term_summaries().is_empty(), "an evicted node's summary is forgotten");
    }

    #[test]
    fn applied_seq_only_grows_within_a_session_and_sync_follows_the_group_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::load(Arc::new(SledStore::open_waiting(dir.path()).expect("open"))).expect("load");
        let shard = |name: &str| NodeRecord { shard: "g".into(), ..record(name) };
        let session = registry.register_at(shard("a"), 3).expect("register");
        registry.register_at(shard("b"), 1).expect("register");
        assert_eq!(registry.get("a").expect("a").applied_seq, 3, "from registration");
        let log = GroupLog { last_seq: 5, committed_seq: 5, first_seq: 3, entries: 3, bytes: 30 };
        registry.set_group_log("g", log);
        assert_eq!(registry.get("a").expect("a").sync, SyncState::CatchingUp);
        let SyncState::Stale { message } = registry.get("b").expect("b").sync else { panic!("b is stale") };
        assert!(message.contains("no replica of group g is in sync"), "{message}");

        assert!(registry.observe_write("a", 2, BTreeMap::new(), 5));
        assert_eq!(registry.get("a").expect("a").sync, SyncState::InSync, "a write answer catches it up");
        let SyncState::Stale { message } = registry.get("b").expect("b").sync else { panic!("b is stale") };
        assert!(message.contains("copy of in-sync replica a's"), "{message}");
        let late =
            HeartbeatInfo { in_flight: 0, collections: BTreeMap::new(), generation: 2, applied_seq: 4, index_bytes: 0 };
        assert!(registry.heartbeat("a", &session, late));
        assert_eq!(registry.get("a").expect("a").applied_seq, 5, "a late heartbeat does not move it back");
        registry.register_at(shard("a"), 0).expect("register");
        assert_eq!(registry.get("a").expect("a").applied_seq, 0, "a new registration says where the index is");
        assert_eq!(registry.groups(), vec!["g".to_owned()]);
    }
}
