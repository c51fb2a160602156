//! Durable circuit breakers: the one writer that persists every breaker transition of the node
//! client in the master's state store (tree `breakers`, one record per node), and [`load`],
//! which restores them into the [`HealthBook`] when the master starts, so a restarted master
//! does not send calls to a node it knew to be failing.
//!
//! Only the state machine's state is persisted (closed, open until when, half-open since when,
//! and the attempt that sets the next wait); counters stay in memory. Transitions arrive on one
//! channel in the order they happened (the book sends them under the node's lock), and a single
//! task writes them: there is no lost update between concurrent writers and, each record being
//! one `put`, no torn state. When transitions arrive faster than the store writes, only each
//! node's latest state is written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ragmesh_stack::breaker::BreakerState;
use ragmesh_stack::node_health::{BreakerSink, BreakerUpdate, HealthBook};
use ragmesh_store::{StateStore, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Tree of the breaker records.
pub const TREE: &str = "breakers";

/// Errors of the breaker records.
#[derive(Debug, thiserror::Error)]
pub enum BreakersError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record does not decode.
    #[error("breaker record of node {node} is unreadable: {message}")]
    Corrupt {
        /// The node.
        node: String,
        /// Why.
        message: String,
    },
}

/// A breaker as stored: times in nanoseconds since the UNIX epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    Closed,
    Open { until_nanos: u64, attempt: u32 },
    HalfOpen { since_nanos: u64, attempt: u32 },
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The stored form of `state`.
pub fn encode(state: BreakerState) -> Vec<u8> {
    let record = match state {
        BreakerState::Closed => Record::Closed,
        BreakerState::Open { until, attempt } => Record::Open { until_nanos: nanos(until), attempt },
        BreakerState::HalfOpen { since, attempt } => Record::HalfOpen { since_nanos: nanos(since), attempt },
    };
    serde_json::to_vec(&record).expect("a record of plain fields always serializes")
}

/// The state stored as `bytes`.
pub fn decode(node: &str, bytes: &[u8]) -> Result<BreakerState, BreakersError> {
    let record: Record = serde_json::from_slice(bytes)
        .map_err(|e| BreakersError::Corrupt { node: node.to_owned(), message: e.to_string() })?;
    Ok(match record {
        Record::Closed => BreakerState::Closed,
        Record::Open { until_nanos, attempt } => {
            BreakerState::Open { until: Duration::from_nanos(until_nanos), attempt }
        }
        Record::HalfOpen { since_nanos, attempt } => {
            BreakerState::HalfOpen { since: Duration::from_nanos(since_nanos), attempt }
        }
    })
}

/// Restores every stored breaker into `book`; returns how many. An unreadable record is
/// skipped with a warning (that node's breaker starts closed) rather than stopping the master.
pub fn load(store: &dyn StateStore, book: &HealthBook) -> Result<usize, BreakersError> {
    let mut restored = 0;
    for (key, value) in store.scan(TREE)? {
        let node = String::from_utf8_lossy(&key).into_owned();
        match decode(&node, &value) {
            Ok(state) => {
                book.restore(&node, state);
                restored += 1;
            }
            Err(error) => tracing::warn!(node.id = %node, %error, "breaker record skipped"),
        }
    }
    Ok(restored)
}

/// The sink for [`HealthBook::new`] and the writer task that drains it into `store`; the task
/// ends when every sender (the book and its clones) is gone, after writing what it received.
pub fn writer(store: Arc<dyn StateStore>) -> (BreakerSink, tokio::task::JoinHandle<()>) {
    let (sink, updates) = mpsc::unbounded_channel();
    (sink, tokio::spawn(run_writer(store, updates)))
}

/// The one writer: persists each node's latest state, in the order transitions arrived.
pub async fn run_writer(store: Arc<dyn StateStore>, mut updates: mpsc::UnboundedReceiver<BreakerUpdate>) {
    while let Some(first) = updates.recv().await {
        // Whatever queued up meanwhile: only each node's latest state matters.
        let mut latest: HashMap<String, BreakerState> = HashMap::from([(first.node, first.state)]);
        while let Ok(next) = updates.try_recv() {
            latest.insert(next.node, next.state);
        }
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            for (node, state) in latest {
                if let Err(error) = store.put(TREE, node.as_bytes(), &encode(state)) {
                    tracing::error!(node.id = %node, %error, "breaker state not persisted");
                }
            }
        })
        .await;
        if let Err(error) = written {
            tracing::error!(%error, "breaker writer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use ragmesh_stack::breaker::{Admission, BreakerConfig};
    use ragmesh_stack::node_health::{HealthConfig, Verdict};
    use ragmesh_store::SledStore;

    use super::*;

    fn open(dir: &std::path::Path) -> Arc<dyn StateStore> {
        Arc::new(SledStore::open_waiting(dir).expect("open store"))
    }

    #[test]
    fn every_state_round_trips() {
        let states = [
            BreakerState::Closed,
            BreakerState::Open { until: Duration::new(1_700_000_000, 123_456_789), attempt: 3 },
            BreakerState::HalfOpen { since: Duration::from_secs(5), attempt: 0 },
        ];
        for state in states {
            assert_eq!(decode("a", &encode(state)).expect("decodes"), state);
        }
        assert!(matches!(decode("a", b"{\"state\":\"ajar\"}"), Err(BreakersError::Corrupt { .. })));
    }

    #[tokio::test]
    async fn breaker_state_survives_a_reopened_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let until = Duration::from_secs(4_000_000_000);
        {
            let (sink, task) = writer(open(dir.path()));
            sink.send(BreakerUpdate { node: "a".into(), state: BreakerState::Open { until, attempt: 2 } })
                .expect("send");
            sink.send(BreakerUpdate { node: "b".into(), state: BreakerState::Closed }).expect("send");
            drop(sink);
            task.await.expect("writer ends when the senders are gone");
        }
        let store = open(dir.path());
        std::fs::write(dir.path().join("unrelated"), b"").expect("the store ignores other files");
        store.put(TREE, b"c", b"garbage").expect("put");
        let book = HealthBook::new(HealthConfig::default(), None);
        assert_eq!(load(store.as_ref(), &book).expect("load"), 2, "the corrupt record is skipped");
        assert_eq!(book.snapshot("a").map(|s| s.state), Some(BreakerState::Open { until, attempt: 2 }));
        assert!(matches!(book.node("a").admit(), Admission::Refuse { .. }), "the restored breaker refuses");
        assert_eq!(book.snapshot("b").map(|s| s.state), Some(BreakerState::Closed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_thousand_concurrent_transitions_end_with_the_last_state_persisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let (sink, task) = writer(store.clone());
        // Tiny waits and threshold 1, so that the breakers really flip back and forth.
        let config = HealthConfig {
            breaker: BreakerConfig {
                failure_threshold: 1,
                min_wait: Duration::from_micros(1),
                max_wait: Duration::from_micros(50),
                // Long: a re-armed probe changes `since` without a transition (harmless: a restored
                // half-open breaker is due at once), which would blur the comparison below.
                probe_timeout: Duration::from_secs(10),
            },
            ..HealthConfig::default()
        };
        let book = HealthBook::new(config, Some(sink));
        let nodes = ["a", "b", "c", "d"];
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..1000usize {
            let health = book.node(nodes[i % nodes.len()]);
            tasks.spawn(async move {
                if !matches!(health.admit(), Admission::Refuse { .. }) {
                    health.record(if i % 3 == 0 { Verdict::Healthy } else { Verdict::Failed });
                }
            });
        }
        tasks.join_all().await;
        let expected: Vec<_> = nodes.iter().map(|n| book.snapshot(n).expect("known").state).collect();
        drop(book);
        task.await.expect("writer drained");
        for (node, state) in nodes.iter().zip(expected) {
            let stored = store.get(TREE, node.as_bytes()).expect("get").expect("every node flipped at least once");
            assert_eq!(decode(node, &stored).expect("no torn record"), state, "node {node}: the last state is stored");
        }
        drop(store);
        let book = HealthBook::new(HealthConfig::default(), None);
        assert_eq!(load(open(dir.path()).as_ref(), &book).expect("load"), 4);
    }
}
