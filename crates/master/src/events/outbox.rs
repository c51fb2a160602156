//! The durable webhook outbox in the master's store: every event a webhook wants is written here
//! (tree `event_outbox`, keyed by big-endian sequence) BEFORE anything is delivered, and each
//! webhook's position (the last sequence it took) is kept in tree `event_meta`, so a restarted
//! master resumes every webhook where it stopped, in order.
//!
//! An entry is removed once every webhook has passed it. The outbox is bounded
//! (`webhook_outbox_max_events`): when a new event would exceed the bound, the oldest entry is
//! dropped with an error log, so a receiver that is down for long loses the oldest events, never
//! the newest, and the master's disk stays bounded. Delivery is at least once (a delivery that
//! succeeded just before a crash, whose position was not yet written, is sent again): receivers
//! deduplicate on the event id.
//!
//! Blocking (store I/O): call from `spawn_blocking`. The lock is never held across an `.await`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use ragmesh_config::WebhookConfig;
use ragmesh_store::{StateStore, StoreError};

use super::{Draft, Event};

/// Tree of the outbox entries.
pub const OUTBOX_TREE: &str = "event_outbox";
/// Tree of the last sequence and each webhook's position.
pub const META_TREE: &str = "event_meta";
const LAST_SEQ: &[u8] = b"last_seq";

fn cursor_key(webhook: &str) -> Vec<u8> {
    format!("cursor:{webhook}").into_bytes()
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// One entry a webhook's delivery task gets: the event, or `None` when the webhook does not want
/// it (or it is unreadable): the task only moves past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Sequence of the entry.
    pub seq: u64,
    /// The event to deliver.
    pub event: Option<Event>,
}

#[derive(Debug)]
struct State {
    last_seq: u64,
    /// Sequences held in the store, oldest first.
    held: VecDeque<u64>,
    /// Each webhook's last sequence taken.
    cursors: BTreeMap<String, u64>,
    dropped: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct Outbox {
    store: Arc<dyn StateStore>,
    /// The webhooks: their names key the positions, their filters say which events to keep.
    subscribers: Vec<WebhookConfig>,
    max_events: usize,
    state: Mutex<State>,
}

impl Outbox {
    /// Opens the outbox for `webhooks`; a webhook seen for the first time starts after the last
    /// event (it gets no history). Entries no webhook still needs are removed.
    pub fn open(store: Arc<dyn StateStore>, webhooks: &[WebhookConfig], max_events: u64) -> Result<Outbox, StoreError> {
        let mut held = VecDeque::new();
        for (key, _) in store.scan(OUTBOX_TREE)? {
            if let Some(seq) = decode_u64(&key) {
                held.push_back(seq);
            }
        }
        let stored_last = store.get(META_TREE, LAST_SEQ)?.as_deref().and_then(decode_u64).unwrap_or(0);
        let last_seq = stored_last.max(held.back().copied().unwrap_or(0));
        let mut cursors = BTreeMap::new();
        for webhook in webhooks {
            let key = cursor_key(&webhook.name);
            let cursor = match store.get(META_TREE, &key)?.as_deref().and_then(decode_u64) {
                Some(cursor) => cursor,
                None => {
                    store.put(META_TREE, &key, &last_seq.to_be_bytes())?;
                    last_seq
                }
            };
            cursors.insert(webhook.name.clone(), cursor);
        }
        let subscribers = webhooks.to_vec();
        let outbox = Outbox {
            store,
            subscribers,
            max_events: usize::try_from(max_events).unwrap_or(usize::MAX).max(1),
            state: Mutex::new(State { last_seq, held, cursors, dropped: 0 }),
        };
        outbox.prune(&mut outbox.lock())?;
        Ok(outbox)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Numbers `drafts` after the last sequence, at `time_ms`, and writes those some webhook
    /// wants, then the last sequence. A store failure is logged: the events are still returned
    /// (live subscribers get them), only their webhook delivery is lost.
    pub fn append(&self, drafts: Vec<Draft>, time_ms: u64) -> Vec<Event> {
        let mut state = self.lock();
        let mut events = Vec::with_capacity(drafts.len());
        for draft in drafts {
            state.last_seq += 1;
            let event = Event::new(state.last_seq, time_ms, draft);
            let wanted = self.subscribers.iter().any(|s| s.wants(event.kind.as_str()));
            if wanted && let Err(error) = self.write(&mut state, &event) {
                tracing::error!(event.seq = event.seq, %error, "event not written to the webhook outbox");
            }
            events.push(event);
        }
        if let Err(error) = self.store.put(META_TREE, LAST_SEQ, &state.last_seq.to_be_bytes()) {
            tracing::error!(%error, "last event sequence not persisted");
        }
        events
    }

    fn write(&self, state: &mut State, event: &Event) -> Result<(), StoreError> {
        let body = serde_json::to_vec(event).expect("an event of plain fields always serializes");
        self.store.put(OUTBOX_TREE, &event.seq.to_be_bytes(), &body)?;
        state.held.push_back(event.seq);
        while state.held.len() > self.max_events {
            let Some(oldest) = state.held.pop_front() else { break };
            self.store.remove(OUTBOX_TREE, &oldest.to_be_bytes())?;
            state.dropped += 1;
            tracing::error!(
                event.seq = oldest,
                outbox.max_events = self.max_events,
                dropped = state.dropped,
                "webhook outbox full: oldest undelivered event dropped (a receiver is down or too slow)"
            );
        }
        Ok(())
    }

    /// Up to `limit` entries after `webhook`'s position, in order.
    pub fn pending(&self, webhook: &str, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let Some(subscriber) = self.subscribers.iter().find(|s| s.name == webhook) else {
            return Ok(Vec::new());
        };
        let cursor = self.lock().cursors.get(webhook).copied().unwrap_or(0);
        let start = cursor.saturating_add(1).to_be_bytes();
        let mut pending = Vec::new();
        for (key, value) in self.store.scan_from(OUTBOX_TREE, &start, limit)? {
            let Some(seq) = decode_u64(&key) else { continue };
            let event = match serde_json::from_slice::<Event>(&value) {
                Ok(event) => Some(event).filter(|e| subscriber.wants(e.kind.as_str())),
                Err(error) => {
                    tracing::error!(event.seq = seq, %error, "unreadable outbox entry skipped");
                    None
                }
            };
            pending.push(Pending { seq, event });
        }
        Ok(pending)
    }

    /// `webhook` has taken every entry up to `seq`: persists its position and removes entries
    /// every webhook has passed.
    pub fn advance(&self, webhook: &str, seq: u64) -> Result<(), StoreError> {
        let mut state = self.lock();
        self.store.put(META_TREE, &cursor_key(webhook), &seq.to_be_bytes())?;
        state.cursors.insert(webhook.to_owned(), seq);
        self.prune(&mut state)
    }

    fn prune(&self, state: &mut State) -> Result<(), StoreError> {
        let passed = state.cursors.values().copied().min().unwrap_or(u64::MAX);
        while let Some(&oldest) = state.held.front() {
            if oldest > passed {
                break;
            }
            self.store.remove(OUTBOX_TREE, &oldest.to_be_bytes())?;
            state.held.pop_front();
        }
        Ok(())
    }

    /// Entries held (for tests and logs).
    pub fn len(&self) -> usize {
        self.lock().held.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last sequence given out.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use ragmesh_config::Secret;
    use ragmesh_store::SledStore;

    use super::*;
    use crate::events::EventKind;

    fn hook(name: &str, events: &[&str]) -> WebhookConfig {
        WebhookConfig {
            name: name.to_owned(),
            url: format!("http://127.0.0.1:1/{name}"),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            secret: Secret("0123456789abcdef".into()),
            timeout: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        }
    }

    fn store() -> (tempfile::TempDir, Arc<dyn StateStore>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open_waiting(dir.path()).expect("open sled");
        (dir, Arc::new(store))
    }

    fn down(node: &str) -> Draft {
        Draft::node(EventKind::NodeDown, node, "test")
    }

    /// Takes everything pending for `webhook`, advancing past each entry; returns what it delivered.
    fn drain(outbox: &Outbox, webhook: &str) -> Vec<u64> {
        let mut delivered = Vec::new();
        for _ in 0..1000 {
            let pending = outbox.pending(webhook, 3).expect("pending");
            if pending.is_empty() {
                return delivered;
            }
            for entry in pending {
                if let Some(event) = entry.event {
                    delivered.push(event.seq);
                }
                outbox.advance(webhook, entry.seq).expect("advance");
            }
        }
        panic!("drain did not finish");
    }

    #[test]
    fn events_survive_a_restart_and_each_webhook_resumes_where_it_stopped() {
        let (_dir, store) = store();
        let hooks = [hook("a", &[]), hook("b", &["node_up"])];
        let outbox = Outbox::open(store.clone(), &hooks, 100).expect("open");
        let events = outbox.append(vec![down("n1"), Draft::node(EventKind::NodeUp, "n1", ""), down("n2")], 1);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let first = outbox.pending("a", 1).expect("pending");
        outbox.advance("a", first[0].seq).expect("advance");
        drop(outbox);

        let outbox = Outbox::open(store.clone(), &hooks, 100).expect("reopen");
        assert_eq!(outbox.last_seq(), 3);
        assert_eq!(drain(&outbox, "a"), [2, 3], "a resumes after the event it took");
        assert_eq!(drain(&outbox, "b"), [2], "b only wants node_up");
        assert!(outbox.is_empty(), "every webhook passed every entry");
        let next = outbox.append(vec![down("n3")], 2);
        assert_eq!(next[0].seq, 4, "sequences keep growing after entries are pruned");

        // A webhook added later gets no history.
        drop(outbox);
        let hooks = [hook("a", &[]), hook("b", &["node_up"]), hook("c", &[])];
        let outbox = Outbox::open(store, &hooks, 100).expect("reopen");
        assert_eq!(drain(&outbox, "c"), Vec::<u64>::new());
        assert_eq!(drain(&outbox, "a"), [4]);
    }

    #[test]
    fn at_the_bound_the_oldest_event_is_dropped() {
        let (_dir, store) = store();
        let outbox = Outbox::open(store, &[hook("a", &[])], 3).expect("open");
        outbox.append((0..5).map(|i| down(&format!("n{i}"))).collect(), 1);
        assert_eq!(outbox.len(), 3);
        assert_eq!(drain(&outbox, "a"), [3, 4, 5], "the newest three are kept, in order");
    }

    #[test]
    fn without_webhooks_nothing_is_written_but_sequences_persist() {
        let (_dir, store) = store();
        let outbox = Outbox::open(store.clone(), &[], 10).expect("open");
        outbox.append(vec![down("n1"), down("n2")], 1);
        assert!(outbox.is_empty());
        drop(outbox);
        let outbox = Outbox::open(store, &[], 10).expect("reopen");
        assert_eq!(outbox.append(vec![down("n3")], 1)[0].seq, 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Whatever the interleaving of appends, partial takes and restarts, a webhook gets each
        /// event it wants exactly once and in sequence order (below the bound).
        #[test]
        fn each_wanted_event_is_delivered_once_in_order(
            steps in proptest::collection::vec((0usize..4, 0usize..3, any::<bool>()), 1..20),
        ) {
            let (_dir, store) = store();
            let hooks = [hook("all", &[]), hook("downs", &["node_down"])];
            let mut outbox = Outbox::open(store.clone(), &hooks, 10_000).expect("open");
            let mut appended = Vec::new();
            let mut delivered: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
            for (appends, takes, restart) in steps {
                let drafts = (0..appends)
                    .map(|i| if i % 2 == 0 { down("n") } else { Draft::node(EventKind::NodeUp, "n", "") })
                    .collect();
                appended.extend(outbox.append(drafts, 1));
                for name in ["all", "downs"] {
                    for entry in outbox.pending(name, takes).expect("pending") {
                        if let Some(event) = entry.event {
                            delivered.entry(name).or_default().push(event.seq);
                        }
                        outbox.advance(name, entry.seq).expect("advance");
                    }
                }
                if restart {
                    drop(outbox);
                    outbox = Outbox::open(store.clone(), &hooks, 10_000).expect("reopen");
                }
            }
            for name in ["all", "downs"] {
                delivered.entry(name).or_default().extend(drain(&outbox, name));
            }
            let all: Vec<u64> = appended.iter().map(|e| e.seq).collect();
            let downs: Vec<u64> = appended.iter().filter(|e| e.kind == EventKind::NodeDown).map(|e| e.seq).collect();
            prop_assert_eq!(&delivered["all"], &all);
            prop_assert_eq!(&delivered["downs"], &downs);
            prop_assert!(outbox.is_empty());
        }
    }
}
