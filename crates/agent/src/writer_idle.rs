//! Releases the index writer (its indexing threads and the memory they keep) once no write has
//! taken it for a while, after the index merged its segments of similar size (see
//! `DocumentIndex::release_writer`): an idle agent then holds only its reader, and searches go
//! through fewer segments. The next write creates the writer again; every write still commits
//! before it is acknowledged.

use std::sync::Arc;
use std::time::Duration;

use ragmesh_index::DocumentIndex;
use tokio_util::sync::CancellationToken;

/// Runs until `stop`: every `idle`, releases the writer when no write took it since the last
/// look, so a writer is released between `idle` and twice `idle` after its last write.
pub async fn release_idle_writer(index: Arc<DocumentIndex>, idle: Duration, stop: CancellationToken) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let mut seen = index.writer_uses();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(idle) => {}
        }
        let uses = index.writer_uses();
        if uses == seen {
            let index = Arc::clone(&index);
            // Blocking: it takes the writer lock, waits for the writer's merges to end and
            // merges the segments of similar size.
            let release = move || {
                let released = index.release_writer(Some(uses));
                if released.is_some() {
                    // The heaps' free tops go back to the system too (see ragmesh-malloc).
                    ragmesh_malloc::trim();
                }
                released
            };
            match tokio::task::spawn_blocking(release).await {
                Ok(Some(generation)) => tracing::info!(
                    index.generation = generation,
                    index.writer_idle_ms = idle_ms,
                    "index writer released after idle"
                ),
                Ok(None) => {}
                Err(err) => tracing::error!(error = %err, "releasing the idle index writer failed"),
            }
        }
        seen = uses;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragmesh_index::{Document, IndexAnalysis, WriterOptions};

    fn doc(id: &str, body: &str) -> Document {
        Document {
            id: id.to_owned(),
            collection: "notes".to_owned(),
            title: String::new(),
            body: body.to_owned(),
            metadata: std::collections::BTreeMap::new(),
            acl: ragmesh_index::Acl::default(),
        }
    }

    /// Waits (bounded, in paused time) until `done`.
    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..2000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what} never happened");
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_is_released_after_idle_and_a_later_write_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index");
        let options = WriterOptions { heap_bytes: 16_000_000 };
        let index = Arc::new(
            DocumentIndex::open_with_writer(&path, IndexAnalysis::default(), options).expect("open the index"),
        );
        index.upsert(vec![doc("a", "written before the release")]).expect("first write");
        assert!(index.writer_held(), "a write holds the writer");

        let stop = CancellationToken::new();
        let idle = Duration::from_secs(30);
        let task = tokio::spawn(release_idle_writer(Arc::clone(&index), idle, stop.clone()));
        // Writes keep it: one every half idle period for a while.
        for i in 0..6 {
            tokio::time::sleep(idle / 2).await;
            let id = format!("busy{i}");
            let writing = Arc::clone(&index);
            tokio::task::spawn_blocking(move || writing.upsert(vec![doc(&id, "keeps the writer busy")]))
                .await
                .expect("join")
                .expect("write while busy");
            assert!(index.writer_held(), "released although written within the idle period (write {i})");
        }
        let held = Arc::clone(&index);
        wait_until("the idle release", move || !held.writer_held()).await;

        let writing = Arc::clone(&index);
        let generation =
            tokio::task::spawn_blocking(move || writing.upsert(vec![doc("b", "written after the release")]))
                .await
                .expect("join")
                .expect("a write after the release creates the writer again");
        assert_eq!(generation, 8);
        assert!(index.writer_held());
        stop.cancel();
        task.await.expect("the release task ends on stop");

        // Durable: a fresh open (after this one let go of the directory) finds every write.
        drop(index);
        let reopened = DocumentIndex::open(&path).expect("reopen");
        assert_eq!((reopened.doc_count(), reopened.generation()), (8, 8));
    }
}
