//! The node registry: the one owner of what the master knows about nodes. A `Clone` handle over
//! shared state whose lock is never held across an `.await`; node records are persisted in the
//! state store (tree `nodes`) so a restarted master knows its nodes, marked down until they
//! reconnect. State changes are broadcast on a `watch` channel.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use ragmesh_store::{StateStore, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::node::{Liveness, LivenessEvent, NodeState, SessionId};

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
        }
    }
}

#[cfg(test)]
impl NodeView {
    /// A view of [`NodeRecord::for_tests`] in `state`.
    pub(crate) fn for_tests(name: &str, state: NodeState, collections: &[&str]) -> Self {
        NodeView {
            record: NodeRecord::for_tests(name, collections),
            state,
            down_reason: None,
            last_heartbeat: None,
            in_flight: 0,
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
}

/// A consistent copy of one node's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// What the node said about itself.
    pub record: NodeRecord,
    /// Liveness state.
    pub state: NodeState,
    /// Why it is down, when it is.
    pub down_reason: Option<String>,
    /// When the last heartbeat arrived.
    pub last_heartbeat: Option<SystemTime>,
    /// In-flight requests from the last heartbeat.
    pub in_flight: u32,
}

#[derive(Debug)]
struct Entry {
    record: NodeRecord,
    liveness: Liveness,
    last_heartbeat: Option<SystemTime>,
    in_flight: u32,
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
        self.record.generation = generation;
        self.record.collections = collections;
        changed
    }

    fn view(&self) -> NodeView {
        NodeView {
            record: self.record.clone(),
            state: self.liveness.state,
            down_reason: self.liveness.down_reason.clone(),
            last_heartbeat: self.last_heartbeat,
            in_flight: self.in_flight,
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
    nodes: Mutex<BTreeMap<String, Entry>>,
    membership: watch::Sender<Membership>,
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
        let mut nodes = BTreeMap::new();
        for (key, value) in store.scan(NODES_TREE)? {
            let record: NodeRecord = serde_json::from_slice(&value).map_err(|e| RegistryError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                message: e.to_string(),
            })?;
            let entry = Entry { record, liveness: Liveness::restored(), last_heartbeat: None, in_flight: 0 };
            nodes.insert(entry.record.name.clone(), entry);
        }
        let membership = watch::Sender::new(Arc::new(BTreeMap::new()));
        let registry = Registry { shared: Arc::new(Shared { store, nodes: Mutex::new(nodes), membership }) };
        registry.publish(&registry.lock());
        Ok(registry)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding this lock would be a bug in this module's short critical sections;
        // the map itself is always consistent between statements, so keep serving.
        self.shared.nodes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, nodes: &BTreeMap<String, Entry>) {
        let snapshot: BTreeMap<String, NodeView> = nodes.iter().map(|(k, e)| (k.clone(), e.view())).collect();
        self.shared.membership.send_replace(Arc::new(snapshot));
    }

    /// Records a (re-)registration durably and opens a new session, superseding any older one.
    /// Blocking (writes the store); call from `spawn_blocking` in async code.
    pub fn register(&self, record: NodeRecord) -> Result<SessionId, RegistryError> {
        let encoded = serde_json::to_vec(&record).expect("a NodeRecord always serialises");
        self.shared.store.put(NODES_TREE, record.name.as_bytes(), &encoded)?;
        let session = SessionId::random();
        let mut nodes = self.lock();
        let entry = nodes.entry(record.name.clone()).or_insert_with(|| Entry {
            record: record.clone(),
            liveness: Liveness::restored(),
            last_heartbeat: None,
            in_flight: 0,
        });
        entry.record = record;
        entry.liveness.apply(&LivenessEvent::Registered(session.clone()), "");
        self.publish(&nodes);
        Ok(session)
    }

    /// Applies a heartbeat of `session`; returns false when the session is not the node's current one.
    pub fn heartbeat(&self, name: &str, session: &SessionId, info: HeartbeatInfo) -> bool {
        let mut nodes = self.lock();
        let Some(entry) = nodes.get_mut(name) else { return false };
        if entry.liveness.session.as_ref() != Some(session) {
            return false;
        }
        let changed_state = entry.liveness.apply(&LivenessEvent::Heartbeat(session.clone()), "");
        let changed_record = entry.observe_index(info.generation, info.collections);
        entry.last_heartbeat = Some(SystemTime::now());
        entry.in_flight = info.in_flight;
        if changed_state || changed_record {
            self.publish(&nodes);
        }
        true
    }

    /// Records what a node answered to an acknowledged write (its generation and collections
    /// after it), so the next search routes to a collection the write created and `ListNodes`
    /// counts it, without waiting for the next heartbeat. Returns whether the view changed.
    pub fn observe_write(&self, name: &str, generation: u64, collections: BTreeMap<String, u64>) -> bool {
        let mut nodes = self.lock();
        let Some(entry) = nodes.get_mut(name) else { return false };
        let changed = entry.observe_index(generation, collections);
        if changed {
            self.publish(&nodes);
        }
        changed
    }

    /// Applies a liveness event; `reason` explains a move to down. Returns whether the state changed.
    pub fn apply(&self, name: &str, event: LivenessEvent, reason: &str) -> bool {
        let mut nodes = self.lock();
        let Some(entry) = nodes.get_mut(name) else { return false };
        let changed = entry.liveness.apply(&event, reason);
        if changed {
            tracing::info!(node.id = name, state = %entry.liveness.state, reason, "node state changed");
            self.publish(&nodes);
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
        let mut nodes = self.lock();
        let existed = nodes.remove(name).is_some();
        if existed {
            self.publish(&nodes);
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
        self.lock().get(name).and_then(|e| e.liveness.session.clone())
    }

    /// One node.
    pub fn get(&self, name: &str) -> Option<NodeView> {
        self.lock().get(name).map(Entry::view)
    }

    /// Every node, sorted by name.
    pub fn snapshot(&self) -> Vec<NodeView> {
        self.lock().values().map(Entry::view).collect()
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
            let store = Arc::new(SledStore::open(dir.path()).expect("open"));
            let registry = Registry::load(store).expect("load");
            let session = registry.register(record("a")).expect("register");
            let info = HeartbeatInfo { in_flight: 0, collections: BTreeMap::new(), generation: 2 };
            assert!(registry.heartbeat("a", &session, info));
            assert_eq!(registry.get("a").expect("a").state, NodeState::Up);
        }
        let store = Arc::new(SledStore::open(dir.path()).expect("reopen"));
        let registry = Registry::load(store).expect("load");
        let a = registry.get("a").expect("a restored");
        assert_eq!(a.state, NodeState::Down);
        assert_eq!(a.record.address, "127.0.0.1:1");
        assert!(a.down_reason.expect("reason").contains("master restarted"));
    }

    #[test]
    fn a_heartbeat_counted_before_a_write_does_not_undo_the_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::load(Arc::new(SledStore::open(dir.path()).expect("open"))).expect("load");
        let session = registry.register(record("a")).expect("register");
        let after_write = BTreeMap::from([("docs".to_owned(), 3), ("new".to_owned(), 5)]);
        assert!(registry.observe_write("a", 2, after_write.clone()));
        let stale =
            HeartbeatInfo { in_flight: 0, collections: BTreeMap::from([("docs".to_owned(), 3)]), generation: 1 };
        assert!(registry.heartbeat("a", &session, stale));
        let a = registry.get("a").expect("a");
        assert_eq!((a.record.generation, a.record.collections), (2, after_write));
        let newer = HeartbeatInfo { in_flight: 0, collections: BTreeMap::new(), generation: 3 };
        assert!(registry.heartbeat("a", &session, newer));
        assert!(registry.get("a").expect("a").record.collections.is_empty(), "a newer count wins");
        assert!(!registry.observe_write("nobody", 9, BTreeMap::new()), "unknown nodes are ignored");
    }

    #[test]
    fn heartbeats_of_a_superseded_session_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::load(Arc::new(SledStore::open(dir.path()).expect("open"))).expect("load");
        let old = registry.register(record("a")).expect("register");
        let _new = registry.register(record("a")).expect("register");
        let info = HeartbeatInfo { in_flight: 0, collections: BTreeMap::new(), generation: 0 };
        assert!(!registry.heartbeat("a", &old, info));
        assert_eq!(registry.get("a").expect("a").state, NodeState::Joining);
    }
}
