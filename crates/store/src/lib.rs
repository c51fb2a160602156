//! Durable key-value state of the master (node registry today; breakers, token families, join
//! tokens and the 2PC log later) behind [`StateStore`], so that an etcd backend for master HA can
//! slot in beside [`SledStore`]. Every backend must pass [`conformance::run`].

pub mod conformance;
mod sled_store;

pub use sled_store::SledStore;

/// Errors of a state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed.
    #[error("state store {op} on tree {tree:?}: {message}")]
    Backend {
        /// Operation that failed.
        op: &'static str,
        /// Tree it failed on.
        tree: String,
        /// Backend's message.
        message: String,
    },
    /// Another process (or handle) holds the store's lock.
    #[error("cannot open state store at {path}: it is locked (is another master using this data directory?)")]
    Locked {
        /// Directory of the store.
        path: String,
    },
    /// The store could not be opened.
    #[error("cannot open state store at {path}: {message}")]
    Open {
        /// Directory of the store.
        path: String,
        /// Backend's message.
        message: String,
    },
}

/// Outcome of a compare-and-swap whose expectation did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasConflict {
    /// The value actually present.
    pub current: Option<Vec<u8>>,
}

/// One key-value entry.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Ordered byte-keyed trees with atomic single-key operations. Writes are durable when the call
/// returns (a crash afterwards does not lose them).
pub trait StateStore: Send + Sync + std::fmt::Debug + 'static {
    /// Reads one key.
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes one key.
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes one key; removing a missing key is not an error.
    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError>;
    /// Every entry of a tree in key order.
    fn scan(&self, tree: &str) -> Result<Vec<Entry>, StoreError>;
    /// At most `limit` entries of a tree whose keys are `>= start`, in key order: reads a long
    /// tree (a write log) in batches without loading all of it. The default reads the whole tree;
    /// backends override it with a range read.
    fn scan_from(&self, tree: &str, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let entries = self.scan(tree)?.into_iter().filter(|(key, _)| key.as_slice() >= start);
        Ok(entries.take(limit).collect())
    }
    /// Atomically replaces `expected` by `new` (`None` = absent); reports the current value on conflict.
    fn compare_and_swap(
        &self,
        tree: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), CasConflict>, StoreError>;
}
