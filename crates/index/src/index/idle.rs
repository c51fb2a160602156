//! What an index does once writes stop: it merges its segments of similar size, then drops its
//! writer.
//!
//! A search pays per segment for each query term (a term-dictionary lookup, opening the
//! postings, a scorer) before it scores a single document. While it ingests, the writer keeps
//! tantivy's default merge policy, which merges a size class only once it has 8 segments, so an
//! index written in a few batches and then left alone would keep up to 7 segments per class for
//! good: 6 for each NPL quarter of the `perf` bench, whose searches then spent about a fifth of
//! their agent's CPU on that per-segment work. The idle merge uses the same log-size classes
//! from 2 segments up: every segment under 10,000 documents is one class (so a small index ends
//! as one segment), and a segment is only ever merged with others of about its size, so a lone
//! small write after a large index was built rewrites at most about 17,000 documents, never the
//! whole index.
//!
//! Merging changes no document, so the generation stays as it is. Nor does it change a score,
//! since BM25 statistics are summed over segments, except that deleted documents leave the
//! statistics of the segments merged (as with [`DocumentIndex::compact`]). The merges run
//! without the writer lock: a write that arrives meanwhile goes ahead and keeps the writer, and
//! the next idle period tries again. An operator's compaction in that window may find a segment
//! already being merged and fail; running it again succeeds.

use std::sync::PoisonError;

use tantivy::merge_policy::{LogMergePolicy, MergePolicy};
use tantivy::{FutureResult, IndexWriter, SegmentMeta};

use super::{DocumentIndex, WriterState};
use crate::IndexError;

/// Fewest segments of one size class that the idle merge merges.
const IDLE_MERGE_MIN_SEGMENTS: usize = 2;

impl DocumentIndex {
    /// Merges the index's segments of similar size (see the module docs), then drops the
    /// writer, its indexing threads and the memory they hold, unless a write took the writer
    /// after [`DocumentIndex::writer_uses`] returned `seen` (pass `None` to go ahead
    /// regardless). Every write commits before it lets the writer go, so nothing is pending
    /// here and durability is untouched; the next write creates a writer again. Returns the
    /// generation the writer was released at; `None` when it was kept (there was none, or a
    /// write came first).
    pub fn release_writer(&self, seen: Option<u64>) -> Option<u64> {
        let (merges, before, generation) = {
            let mut state = self.lock_writer_uncounted();
            if self.written_since(seen) {
                return None;
            }
            let writer = state.writer.take()?;
            // The writer's own background merges end first, so the candidates below are
            // computed over settled segments and none of them is being merged already.
            finish_merges(writer);
            match start_idle_merges(&mut state) {
                // Read under the lock: no write's segment is among them.
                Ok(merges) if !merges.is_empty() => (merges, self.segment_count(), state.generation),
                Ok(_) => return released(&state),
                Err(err) => {
                    tracing::warn!(error = %err, "could not start merging the idle index's segments");
                    return released(&state);
                }
            }
        };
        let started = std::time::Instant::now();
        // Without the lock: a write may use the writer meanwhile (tantivy merges and commits
        // concurrently); it then keeps the writer below.
        for merge in merges {
            if let Err(err) = merge.wait() {
                // The segments it meant to replace are still in place and committed.
                tracing::warn!(error = %err, "merging the idle index's segments failed");
            }
        }
        let mut state = self.lock_writer_uncounted();
        // Under the writer lock no commit is half-published, so the reloaded searcher shows
        // exactly the snapshot's generation, now in fewer segments.
        if let Err(err) = self.publish_merged_segments() {
            tracing::warn!(error = %err, "could not show the merged segments to searches");
        }
        // A write during the merge keeps the writer; `segments.after` then counts its segments.
        let written = self.written_since(seen);
        tracing::info!(
            index.generation = generation,
            segments.before = before,
            segments.after = self.segment_count(),
            index.merge_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            index.written_during_merge = written,
            "idle index segments merged"
        );
        if written {
            return None;
        }
        let writer = state.writer.take()?;
        finish_merges(writer);
        released(&state)
    }

    /// Segments searches go through now.
    pub fn segment_count(&self) -> usize {
        self.snapshot().searcher.segment_readers().len()
    }

    /// Whether a write took the writer since [`DocumentIndex::writer_uses`] returned `seen`.
    fn written_since(&self, seen: Option<u64>) -> bool {
        seen.is_some_and(|seen| seen != self.writer_uses())
    }

    /// Reloads the reader after a merge and puts its searcher in the snapshot; the generation
    /// and log position stay, since a merge changes no document. Call under the writer lock.
    pub(super) fn publish_merged_segments(&self) -> Result<(), IndexError> {
        self.reader.reload().map_err(IndexError::tantivy("reload reader after merging segments"))?;
        let searcher = self.reader.searcher();
        self.snapshot.write().unwrap_or_else(PoisonError::into_inner).searcher = searcher;
        Ok(())
    }
}

/// Starts the idle merges on a new writer, left in `state` so that writes can use it while
/// they run. Empty (and no writer) when no size class has 2 segments.
fn start_idle_merges(state: &mut WriterState) -> Result<Vec<FutureResult<Option<SegmentMeta>>>, IndexError> {
    let segments = state.index.searchable_segment_metas().map_err(IndexError::tantivy("list segments"))?;
    let candidates = idle_merge_policy().compute_merge_candidates(&segments);
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let writer = state.writer()?;
    Ok(candidates.iter().map(|candidate| writer.merge(&candidate.0)).collect())
}

/// tantivy's log merge policy from [`IDLE_MERGE_MIN_SEGMENTS`] segments up (its size classes
/// and thresholds otherwise as tantivy sets them).
fn idle_merge_policy() -> LogMergePolicy {
    let mut policy = LogMergePolicy::default();
    policy.set_min_num_segments(IDLE_MERGE_MIN_SEGMENTS);
    policy
}

/// Waits for a writer's background merges and drops it.
fn finish_merges(writer: IndexWriter) {
    if let Err(err) = writer.wait_merging_threads() {
        // The segments a failed merge meant to replace are still in place and committed.
        tracing::warn!(error = %err, "index writer merge failed while releasing the writer");
    }
}

/// Logs a release; the generation released at.
fn released(state: &WriterState) -> Option<u64> {
    tracing::debug!(index.generation = state.generation, "index writer released");
    Some(state.generation)
}

#[cfg(test)]
mod tests {
    use crate::test_data::{doc, open_temp};
    use crate::{Document, SearchQuery};

    /// Every hit of `text` as (collection, id, score, snippet).
    fn hits(index: &super::DocumentIndex, text: &str) -> Vec<(String, String, f32, String)> {
        let query = SearchQuery { query: text.to_owned(), limit: 100, ..SearchQuery::default() };
        let results = index.search(&query).expect("search");
        results.hits.into_iter().map(|hit| (hit.collection, hit.id, hit.score, hit.snippet)).collect()
    }

    fn batch(from: usize, to: usize) -> Vec<Document> {
        let words = ["radar", "echo", "moon", "ionosphere", "wavelength", "antenna", "signal"];
        (from..to)
            .map(|i| {
                let body = format!("{} {} measured {i}", words[i % words.len()], words[(i / 7) % words.len()]);
                doc("notes", &format!("d{i}"), "", &body)
            })
            .collect()
    }

    #[test]
    fn an_idle_index_written_in_batches_becomes_one_segment_with_the_same_answers() {
        let (dir, index) = open_temp();
        for step in 0..5 {
            index.upsert(batch(step * 40, step * 40 + 40)).expect("upsert");
        }
        // One or two segments per commit (one per indexing thread that got documents), under
        // tantivy's own threshold of 8.
        assert!(index.segment_count() > 1, "{} segments", index.segment_count());
        let queries = ["radar", "moon echo", "\"antenna signal\"", "wavelength -radar"];
        let before: Vec<_> = queries.iter().map(|text| hits(&index, text)).collect();
        assert!(before.iter().all(|hits| !hits.is_empty()), "{before:?}");
        let generation = index.generation();

        assert_eq!(index.release_writer(Some(index.writer_uses())), Some(generation), "idle: released");
        assert!(!index.writer_held(), "the merge's writer is released too");
        assert_eq!(index.segment_count(), 1);
        assert_eq!(index.generation(), generation, "a merge changes no document");
        let after: Vec<_> = queries.iter().map(|text| hits(&index, text)).collect();
        assert_eq!(after, before, "the same hits, scores and snippets in one segment");

        // The merged segment is committed: a fresh open finds it and every document.
        let path = dir.path().to_path_buf();
        drop(index);
        let reopened = super::DocumentIndex::open(&path).expect("reopen");
        assert_eq!((reopened.segment_count(), reopened.doc_count(), reopened.generation()), (1, 200, generation));
    }

    /// The segments searches go through, as (id, documents), largest first.
    fn segments(index: &super::DocumentIndex) -> Vec<(String, u32)> {
        let mut segments: Vec<_> = index
            .snapshot()
            .searcher
            .segment_readers()
            .iter()
            .map(|reader| (reader.segment_id().uuid_string(), reader.num_docs()))
            .collect();
        segments.sort_by_key(|(_, docs)| std::cmp::Reverse(*docs));
        segments
    }

    #[test]
    fn a_small_write_after_a_large_segment_does_not_rewrite_it() {
        let (_dir, index) = open_temp();
        index.upsert(batch(0, 10_000)).expect("upsert");
        index.upsert(batch(10_000, 20_000)).expect("upsert");
        assert!(index.release_writer(None).is_some());
        let large = segments(&index);
        assert_eq!(large.len(), 1, "segments of one size class are merged: {large:?}");

        for step in 0..3 {
            index.upsert(batch(20_000 + step * 2, 20_002 + step * 2)).expect("a small write");
        }
        assert!(index.release_writer(None).is_some());
        let after = segments(&index);
        assert_eq!(after.len(), 2, "the small writes are merged together, not into the large one: {after:?}");
        assert_eq!(after[0], large[0], "the large segment is not rewritten");
        assert_eq!(after[1].1, 6);
        assert_eq!(hits(&index, "measured 20005").first().map(|hit| hit.1.as_str()), Some("d20005"));
    }

    #[test]
    fn a_write_since_the_idle_reading_keeps_the_writer_and_its_segments() {
        let (_dir, index) = open_temp();
        index.upsert(batch(0, 10)).expect("upsert");
        let seen = index.writer_uses();
        index.upsert(batch(10, 20)).expect("upsert");
        let before = segments(&index);
        assert!(before.len() > 1, "{before:?}");
        assert_eq!(index.release_writer(Some(seen)), None, "written since: not idle");
        assert!(index.writer_held());
        assert_eq!(segments(&index), before, "nothing merged while writes go on");
    }

    #[test]
    fn writes_during_the_idle_merge_go_ahead_and_nothing_is_lost() {
        let (dir, index) = open_temp();
        index.upsert(batch(0, 10_000)).expect("upsert");
        index.upsert(batch(10_000, 20_000)).expect("upsert");
        let seen = index.writer_uses();
        let index = std::sync::Arc::new(index);
        let releasing = std::sync::Arc::clone(&index);
        let release = std::thread::spawn(move || releasing.release_writer(Some(seen)));
        // Writes while the release runs: some may wait for its lock, others land during the
        // merge (with or without a writer, depending on the moment); each must commit.
        let mut written = 0;
        while !release.is_finished() || written == 0 {
            index.upsert(batch(20_000 + written, 20_001 + written)).expect("a write during the idle merge");
            written += 1;
        }
        release.join().expect("the release thread");
        assert_eq!(index.doc_count(), 20_000 + written as u64);
        let last = format!("d{}", 20_000 + written - 1);
        assert_eq!(
            hits(&index, &format!("measured {}", 20_000 + written - 1)).first().map(|hit| hit.1.clone()),
            Some(last)
        );
        let generation = index.generation();
        drop(index);
        let reopened = super::DocumentIndex::open(dir.path()).expect("reopen");
        assert_eq!((reopened.doc_count(), reopened.generation()), (20_000 + written as u64, generation));
    }
}
