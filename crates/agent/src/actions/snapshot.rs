//! Built-ins `index.snapshot` and `index.restore`: the caller names a snapshot, never a path;
//! files live in `<data-dir>/snapshots/<name>.snap` (see `ragmesh_index::snapshot` for the format).

use std::sync::Arc;

use ragmesh_actions::{ArgKind, ArgSpec, ArgValue, ValidArgs};
use ragmesh_index::{AppliedLog, DocumentIndex, MAX_SNAPSHOT_NAME, Restored, SnapshotWritten};

use super::Actions;

/// Directory under the data directory holding snapshots.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// The `name` argument: checked by the schema on the master and here, and again when the
/// path is built.
pub(super) fn name_arg() -> ArgSpec {
    let mut name = ArgSpec::new("name", ArgKind::String);
    name.description = format!(
        "snapshot name: <data-dir>/snapshots/<name>.snap; 1-{MAX_SNAPSHOT_NAME} characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
    );
    name.required = true;
    name.pattern = Some(format!("[A-Za-z0-9][A-Za-z0-9._-]{{0,{}}}", MAX_SNAPSHOT_NAME - 1));
    name.min_len = Some(1);
    name.max_len = Some(MAX_SNAPSHOT_NAME);
    name
}

/// The `overwrite` argument of `index.snapshot`.
pub(super) fn overwrite_arg() -> ArgSpec {
    let mut overwrite = ArgSpec::new("overwrite", ArgKind::Boolean);
    overwrite.description = "replace an existing snapshot of that name".to_owned();
    overwrite.default = Some("false".to_owned());
    overwrite
}

/// The `check_only` argument of `index.restore`.
pub(super) fn check_only_arg() -> ArgSpec {
    let mut check = ArgSpec::new("check_only", ArgKind::Boolean);
    check.description =
        "only read and check the whole snapshot and print its header (log position included); change nothing"
            .to_owned();
    check.default = Some("false".to_owned());
    check
}

fn position(applied: &AppliedLog) -> String {
    match &applied.shard {
        Some(shard) => format!("{shard}:{}", applied.seq),
        None => "none".to_owned(),
    }
}

/// The output of `index.snapshot`: one `key=value` per line.
pub fn describe_written(written: &SnapshotWritten) -> String {
    format!(
        "path={}\ndocuments={}\nbytes={}\ngeneration={}\napplied={}\n",
        written.path.display(),
        written.documents,
        written.bytes,
        written.generation,
        position(&written.applied),
    )
}

/// The output of `index.restore`: what the index holds now and how it catches up.
pub fn describe_restored(restored: &Restored) -> String {
    let catch_up = match &restored.applied.shard {
        Some(shard) if restored.applied.seq < restored.previous_applied.seq => format!(
            "the log position moved back from {} to {}: the master re-sends group {shard}'s writes from seq {} if its write log still holds them; if it no longer does, it reports this replica stale with what to do\n",
            restored.previous_applied.seq,
            restored.applied.seq,
            restored.applied.seq + 1,
        ),
        Some(shard) => format!("the master sends group {shard}'s writes from seq {}\n", restored.applied.seq + 1),
        None => "the snapshot follows no write log yet: the master sends every write of this node's group\n".to_owned(),
    };
    format!(
        "path={}\ndocuments={}\nbytes={}\ngeneration={} (was {}; the snapshot was taken at {})\napplied={} (was {})\n{catch_up}",
        restored.path.display(),
        restored.documents,
        restored.bytes,
        restored.generation,
        restored.previous_generation,
        restored.snapshot.generation,
        position(&restored.applied),
        position(&restored.previous_applied),
    )
}

impl Actions {
    fn snapshot_target(&self, args: &ValidArgs) -> std::io::Result<(Arc<DocumentIndex>, std::path::PathBuf)> {
        let Some((dir, _)) = &self.snapshots else {
            return Err(std::io::Error::other("this agent has no snapshot directory"));
        };
        let Some(index) = self.index.get().cloned() else {
            return Err(std::io::Error::other("the index is still opening: retry shortly"));
        };
        let name = args.get("name").map(ArgValue::text).unwrap_or_default();
        let path = ragmesh_index::snapshot_path(dir, &name)
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err.to_string()))?;
        Ok((index, path))
    }

    /// `index.snapshot name=<NAME> [overwrite=true]`.
    pub(super) async fn snapshot(&self, args: &ValidArgs) -> std::io::Result<String> {
        let (index, path) = self.snapshot_target(args)?;
        let overwrite = matches!(args.get("overwrite"), Some(ArgValue::Boolean(true)));
        let limits = self.snapshots.as_ref().map(|(_, limits)| *limits).unwrap_or_default();
        let written = tokio::task::spawn_blocking(move || index.write_snapshot(&path, overwrite, limits))
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?;
        Ok(describe_written(&written))
    }

    /// `index.restore name=<NAME>`; on success the master link re-registers with the new
    /// log position.
    pub(super) async fn restore(&self, args: &ValidArgs) -> std::io::Result<String> {
        let (index, path) = self.snapshot_target(args)?;
        let limits = self.snapshots.as_ref().map(|(_, limits)| *limits).unwrap_or_default();
        if matches!(args.get("check_only"), Some(ArgValue::Boolean(true))) {
            let current = index.applied();
            let checked = tokio::task::spawn_blocking(move || ragmesh_index::verify_snapshot(&path, limits))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
            let (header, bytes) = checked;
            return Ok(format!(
                "intact: documents={} bytes={bytes} generation={} applied={} (the index is at {}); nothing changed\n",
                header.documents,
                header.generation,
                position(&header.applied),
                position(&current),
            ));
        }
        let restored = tokio::task::spawn_blocking(move || index.restore_snapshot(&path, limits))
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?;
        self.restores.send_modify(|count| *count += 1);
        Ok(describe_restored(&restored))
    }
}
