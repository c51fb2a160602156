//! The node's operator-set state: drained from search or not, and its labels. Both survive a
//! restart: each is a small file in the data directory, written to a temporary file and renamed
//! into place, so a crash leaves the old or the new state, never half of one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// File whose presence means "drained" (its content says since when, for humans).
const DRAINED_FILE: &str = "drained";
/// File holding the labels set with `node.labels` (JSON object), which replace the configured ones.
const LABELS_FILE: &str = "labels.json";
/// Most labels a node may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label key or value, in bytes.
pub const MAX_LABEL_LEN: usize = 128;

/// Drain flag and labels of this node, shared by the service and the master link.
#[derive(Debug, Clone)]
pub struct NodeState {
    dir: Option<PathBuf>,
    drained: Arc<AtomicBool>,
    /// Serialises writers of the state files (never held across an await).
    write: Arc<Mutex<()>>,
    labels: watch::Sender<BTreeMap<String, String>>,
}

impl NodeState {
    /// State kept in memory only (tests of the service alone).
    pub fn in_memory(labels: BTreeMap<String, String>) -> Self {
        NodeState { dir: None, drained: Arc::default(), write: Arc::default(), labels: watch::Sender::new(labels) }
    }

    /// Loads the state persisted in `dir`; labels set by an operator (`node.labels`) win over
    /// `configured` (the flags and the config file), which apply until an operator sets some.
    pub fn load(dir: &Path, configured: BTreeMap<String, String>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let drained = dir.join(DRAINED_FILE).exists();
        let labels = match std::fs::read(dir.join(LABELS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}: fix or remove the file", dir.join(LABELS_FILE).display()),
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => configured,
            Err(err) => return Err(err),
        };
        Ok(NodeState {
            dir: Some(dir.to_path_buf()),
            drained: Arc::new(AtomicBool::new(drained)),
            write: Arc::default(),
            labels: watch::Sender::new(labels),
        })
    }

    /// Whether an operator drained this node from search.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    /// Drains (`true`) or undrains; durable before it returns. Returns whether it changed.
    pub fn set_drained(&self, drained: bool) -> std::io::Result<bool> {
        let _writing = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(dir) = &self.dir {
            let path = dir.join(DRAINED_FILE);
            if drained {
                write_atomically(&path, format!("drained at unix {}\n", ragmesh_auth::unix_now()).as_bytes())?;
            } else if let Err(err) = std::fs::remove_file(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                return Err(err);
            }
        }
        Ok(self.drained.swap(drained, Ordering::AcqRel) != drained)
    }

    /// The labels now.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.labels.borrow().clone()
    }

    /// Changes of the labels (the master link re-registers on each).
    pub fn watch_labels(&self) -> watch::Receiver<BTreeMap<String, String>> {
        self.labels.subscribe()
    }

    /// Replaces the labels; durable before it returns.
    pub fn set_labels(&self, labels: BTreeMap<String, String>) -> std::io::Result<()> {
        let _writing = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(dir) = &self.dir {
            let json = serde_json::to_vec_pretty(&labels).map_err(std::io::Error::other)?;
            write_atomically(&dir.join(LABELS_FILE), &json)?;
        }
        self.labels.send_replace(labels);
        Ok(())
    }
}

/// Parses `k=v,k2=v2` into changes: `k=` removes `k`. Every problem at once.
pub fn parse_label_changes(text: &str) -> Result<Vec<(String, Option<String>)>, Vec<String>> {
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            problems.push(format!("{item:?} is not key=value (key= removes a label)"));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_LEN
            && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            problems.push(format!(
                "label key {key:?}: 1 to {MAX_LABEL_LEN} characters of letters, digits, '-', '_', '.', '/'"
            ));
        }
        if value.len() > MAX_LABEL_LEN || value.chars().any(char::is_control) {
            problems.push(format!(
                "label {key:?}: the value must be at most {MAX_LABEL_LEN} bytes without control characters"
            ));
        }
        changes.push((key.to_owned(), (!value.is_empty()).then(|| value.to_owned())));
    }
    if changes.is_empty() && problems.is_empty() {
        problems.push("no label given: pass set=key=value[,key2=value2] (key= removes a label)".to_owned());
    }
    if problems.is_empty() { Ok(changes) } else { Err(problems) }
}

/// Writes `bytes` to `path` through a temporary file, synced, then renamed into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        // The rename itself is durable only once the directory is synced.
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_and_labels_survive_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configured: BTreeMap<String, String> = [("zone".to_owned(), "a".to_owned())].into();
        let state = NodeState::load(dir.path(), configured.clone()).expect("load");
        assert!(!state.is_drained());
        assert_eq!(state.labels(), configured, "configured labels apply until an operator sets some");
        assert!(state.set_drained(true).expect("drain"));
        assert!(!state.set_drained(true).expect("drain again"), "draining twice changes nothing");
        state.set_labels([("rack".to_owned(), "r1".to_owned())].into()).expect("labels");

        let reloaded = NodeState::load(dir.path(), configured.clone()).expect("reload");
        assert!(reloaded.is_drained());
        assert_eq!(reloaded.labels().get("rack").map(String::as_str), Some("r1"));
        assert!(reloaded.set_drained(false).expect("undrain"));
        assert!(!NodeState::load(dir.path(), configured).expect("reload").is_drained());
    }

    #[test]
    fn label_changes_parse_with_every_problem_listed() {
        let changes = parse_label_changes("zone=b, gpu=").expect("valid");
        assert_eq!(changes, [("zone".to_owned(), Some("b".to_owned())), ("gpu".to_owned(), None)]);
        let problems = parse_label_changes("novalue,bad key=x").expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(parse_label_changes(" , ").is_err(), "nothing to set is refused");
    }
}
