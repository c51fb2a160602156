//! [`StateStore`] on sled: one sled tree per store tree, flushed before a write returns.

use std::path::Path;

use crate::{CasConflict, Entry, StateStore, StoreError};

/// A sled database in a directory.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_error = |message: String| StoreError::Open { path: dir.display().to_string(), message };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let db = sled::Config::new().path(dir).open().map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                StoreError::Locked { path: dir.display().to_string() }
            }
            other => open_error(other.to_string()),
        })?;
        Ok(Self { db })
    }

    /// [`SledStore::open`], waiting up to 5 s while the directory is locked: the flusher thread
    /// of a handle dropped a moment ago holds sled's lock briefly, so a reopen right after a
    /// drop (a restart in the same process, a test) may find it taken. Another live process
    /// holds it for good and is reported as [`StoreError::Locked`] after the wait.
    pub fn open_waiting(dir: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Self::open(dir) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => return opened,
            }
        }
    }

    fn tree(&self, op: &'static str, tree: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(tree).map_err(|e| backend(op, tree, e))
    }

    fn flush(&self, op: &'static str, tree: &str) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(|e| backend(op, tree, e))
    }
}

fn backend(op: &'static str, tree: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend { op, tree: tree.to_owned(), message: err.to_string() }
}

impl StateStore for SledStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.tree("get", tree)?.get(key).map_err(|e| backend("get", tree, e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree("put", tree)?.insert(key, value).map_err(|e| backend("put", tree, e))?;
        self.flush("put", tree)
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.tree("remove", tree)?.remove(key).map_err(|e| backend("remove", tree, e))?;
        self.flush("remove", tree)
    }

    fn scan(&self, tree: &str) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        for entry in self.tree("scan", tree)?.iter() {
            let (key, value) = entry.map_err(|e| backend("scan", tree, e))?;
            entries.push((key.to_vec(), value.to_vec()));
        }
        Ok(entries)
    }

    fn scan_from(&self, tree: &str, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        for entry in self.tree("scan_from", tree)?.range(start..).take(limit) {
            let (key, value) = entry.map_err(|e| backend("scan_from", tree, e))?;
            entries.push((key.to_vec(), value.to_vec()));
        }
        Ok(entries)
    }

    fn compare_and_swap(
        &self,
        tree: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), CasConflict>, StoreError> {
        let outcome = self
            .tree("compare_and_swap", tree)?
            .compare_and_swap(key, expected, new)
            .map_err(|e| backend("compare_and_swap", tree, e))?;
        match outcome {
            Ok(()) => {
                self.flush("compare_and_swap", tree)?;
                Ok(Ok(()))
            }
            Err(conflict) => Ok(Err(CasConflict { current: conflict.current.map(|v| v.to_vec()) })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreError;

    #[test]
    fn sled_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        crate::conformance::run(&store);
    }

    #[test]
    fn writes_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            store.put("nodes", b"a", b"1").expect("put");
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(store.get("nodes", b"a").expect("get"), Some(b"1".to_vec()));
    }

    #[test]
    fn second_open_of_a_locked_directory_says_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = SledStore::open(dir.path()).expect("open");
        let err = SledStore::open(dir.path()).expect_err("locked");
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        assert!(err.to_string().contains("another master"), "{err}");
    }
}
