//! Snapshot and restore of a [`DocumentIndex`]: every live document of one committed generation
//! streamed to a [`crate::snapshot`] file (temp file, fsync, rename), and a verified file
//! swapped in for the index's content in one tantivy commit.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tantivy::query::AllQuery;
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, DocSet as _, SegmentReader, TERMINATED, TantivyDocument, TantivyError};

use super::{DocumentIndex, rollback};
use crate::snapshot::{
    SNAPSHOT_EXTENSION, SnapshotDecoder, SnapshotDocument, SnapshotEncoder, SnapshotHeader, SnapshotLimits,
    snapshot_name_problem,
};
use crate::{Acl, AppliedLog, Document, IndexError};

/// Stored-document blocks each segment's store reader keeps decompressed while streaming.
const STORE_CACHE_BLOCKS: usize = 16;
/// Buffer of the snapshot file reader and writer.
const FILE_BUFFER_BYTES: usize = 256 * 1024;

/// What [`DocumentIndex::write_snapshot`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotWritten {
    /// The snapshot file.
    pub path: PathBuf,
    /// Documents in it.
    pub documents: u64,
    /// Its size.
    pub bytes: u64,
    /// The generation it holds.
    pub generation: u64,
    /// The write-log position applied as of that generation.
    pub applied: AppliedLog,
}

/// What [`DocumentIndex::restore_snapshot`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The snapshot file.
    pub path: PathBuf,
    /// Documents the index now holds.
    pub documents: u64,
    /// Size of the snapshot file.
    pub bytes: u64,
    /// The header of the snapshot (its generation, position and creation time).
    pub snapshot: SnapshotHeader,
    /// Generation before the restore.
    pub previous_generation: u64,
    /// Generation after: always the previous one + 1, never the snapshot's (caches key on it).
    pub generation: u64,
    /// Log position applied before the restore.
    pub previous_applied: AppliedLog,
    /// Log position applied now: the snapshot's (the writes after it must be applied again).
    pub applied: AppliedLog,
}

/// `<dir>/<name>.snap`, refusing any `name` that is not a plain snapshot name (see
/// [`snapshot_name_problem`]): a caller never chooses a path.
pub fn snapshot_path(dir: &Path, name: &str) -> Result<PathBuf, IndexError> {
    if let Some(problem) = snapshot_name_problem(name) {
        return Err(IndexError::SnapshotName(problem));
    }
    Ok(dir.join(format!("{name}.{SNAPSHOT_EXTENSION}")))
}

impl DocumentIndex {
    /// Writes every live document of the current committed generation to `path`, with that
    /// generation and its applied log position, through a temporary file in the same directory
    /// that is fsynced and then renamed into place (so `path` is whole or absent). Refuses an
    /// existing `path` unless `overwrite`. Writes go on meanwhile; they are not in the snapshot.
    ///
    /// Memory is bounded by one document plus, per segment, 8 bytes per ACL grant (ACLs are
    /// indexed, not stored, so they are read back from the index's terms).
    pub fn write_snapshot(
        &self,
        path: &Path,
        overwrite: bool,
        limits: SnapshotLimits,
    ) -> Result<SnapshotWritten, IndexError> {
        let _span = tracing::info_span!("index.snapshot", snapshot.path = %path.display()).entered();
        let io_error = |source| IndexError::SnapshotIo { path: path.to_path_buf(), source };
        if !overwrite && path.exists() {
            return Err(IndexError::SnapshotExists { path: path.to_path_buf() });
        }
        let (dir, file_name) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => (dir, name.to_string_lossy()),
            _ => return Err(IndexError::SnapshotName(format!("{} is not a file path", path.display()))),
        };
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let snapshot = self.snapshot();
        let header = SnapshotHeader {
            generation: snapshot.generation,
            applied: snapshot.applied.clone(),
            documents: snapshot.searcher.num_docs(),
            created_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        };
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let tmp = dir.join(format!(".{file_name}.{}.{nanos}.tmp", std::process::id()));
        let written = self.encode_to(&tmp, &header, &snapshot.searcher, limits).and_then(|bytes| {
            publish(&tmp, path, overwrite)?;
            Ok(bytes)
        });
        let bytes = match written {
            Ok(bytes) => bytes,
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(err);
            }
        };
        tracing::info!(
            snapshot.documents = header.documents,
            snapshot.bytes = bytes,
            index.generation = header.generation,
            log.applied_seq = header.applied.seq,
            "snapshot written"
        );
        Ok(SnapshotWritten {
            path: path.to_path_buf(),
            documents: header.documents,
            bytes,
            generation: header.generation,
            applied: header.applied,
        })
    }

    /// Streams the searcher's live documents into a new file at `tmp`, fsynced; returns its size.
    fn encode_to(
        &self,
        tmp: &Path,
        header: &SnapshotHeader,
        searcher: &tantivy::Searcher,
        limits: SnapshotLimits,
    ) -> Result<u64, IndexError> {
        let io_error = |source| IndexError::SnapshotIo { path: tmp.to_path_buf(), source };
        let file = File::options().write(true).create_new(true).open(tmp).map_err(io_error)?;
        let out = BufWriter::with_capacity(FILE_BUFFER_BYTES, file);
        let mut encoder = SnapshotEncoder::start(out, header, limits).map_err(|e| IndexError::snapshot(tmp, e))?;
        for segment in searcher.segment_readers() {
            let acls = self.segment_acls(segment)?;
            let store = segment.get_store_reader(STORE_CACHE_BLOCKS).map_err(|source| IndexError::Tantivy {
                context: "open stored documents",
                source: TantivyError::from(source),
            })?;
            for doc_id in segment.doc_ids_alive() {
                let stored: TantivyDocument = store.get(doc_id).map_err(IndexError::tantivy("load stored document"))?;
                let mut acl = Acl::default();
                for term in acls.of(doc_id) {
                    acl.add_term(term).map_err(|reason| IndexError::Tantivy {
                        context: "read document acl",
                        source: TantivyError::InternalError(reason),
                    })?;
                }
                let (title, body) = self.title_and_body(&stored);
                let document = Document {
                    id: self.text_of(&stored, self.fields.id),
                    collection: self.text_of(&stored, self.fields.collection),
                    title,
                    body,
                    metadata: self.metadata_of(&stored),
                    acl,
                };
                let doc = SnapshotDocument { document, owner: self.text_of(&stored, self.fields.owner) };
                encoder.document(&doc).map_err(|e| IndexError::snapshot(tmp, e))?;
            }
        }
        let (out, bytes) = encoder.finish().map_err(|e| IndexError::snapshot(tmp, e))?;
        let file = out.into_inner().map_err(|err| io_error(err.into_error()))?;
        file.sync_all().map_err(io_error)?;
        Ok(bytes)
    }

    /// The ACL grants of one segment's documents, read from the `acl` field's terms and postings.
    fn segment_acls(&self, segment: &SegmentReader) -> Result<SegmentAcls, IndexError> {
        let inverted = segment.inverted_index(self.fields.acl).map_err(IndexError::tantivy("read acl terms"))?;
        let mut terms = Vec::new();
        let mut grants: Vec<(DocId, u32)> = Vec::new();
        let mut stream = inverted
            .terms()
            .stream()
            .map_err(|err| IndexError::Tantivy { context: "read acl terms", source: TantivyError::from(err) })?;
        while stream.advance() {
            let term = String::from_utf8_lossy(stream.key()).into_owned();
            let term_index = u32::try_from(terms.len()).map_err(|_| IndexError::Tantivy {
                context: "read acl terms",
                source: TantivyError::InternalError("more than 4 billion acl terms in one segment".to_owned()),
            })?;
            terms.push(term);
            let mut postings = inverted
                .read_postings_from_terminfo(stream.value(), IndexRecordOption::Basic)
                .map_err(|source| IndexError::Tantivy { context: "read acl postings", source: source.into() })?;
            let mut doc = postings.doc();
            while doc != TERMINATED {
                grants.push((doc, term_index));
                doc = postings.advance();
            }
        }
        grants.sort_unstable();
        Ok(SegmentAcls { terms, grants })
    }

    /// Replaces the index's content with the snapshot at `path`, in one commit.
    ///
    /// The whole file is read and checked first (magic, version, every record, checksum,
    /// `limits`); a bad file fails with nothing touched. Then, under the writer lock, every
    /// document is deleted and the snapshot's added (each with its owner and ACL), the file's
    /// checksum is verified again as it is read (it could have changed in between), and all of
    /// it is committed at once: a crash leaves the old content or the new, never a mix. The
    /// generation becomes the current one + 1; the applied log position becomes the snapshot's
    /// (keeping the index's shard group when the snapshot follows none). A snapshot of another
    /// shard group than the one the index follows is refused.
    pub fn restore_snapshot(&self, path: &Path, limits: SnapshotLimits) -> Result<Restored, IndexError> {
        let _span = tracing::info_span!("index.restore", snapshot.path = %path.display()).entered();
        let (header, bytes) = verify_snapshot(path, limits)?;
        let mut state = self.lock_writer();
        let previous_generation = state.generation;
        let previous_applied = state.applied.clone();
        let shard = match (&header.applied.shard, &previous_applied.shard) {
            (Some(got), Some(held)) if got != held => {
                return Err(IndexError::SnapshotWrongShard {
                    path: path.to_path_buf(),
                    held: held.clone(),
                    got: got.clone(),
                });
            }
            (Some(got), _) => Some(got.clone()),
            (None, held) => held.clone(),
        };
        let applied = AppliedLog { shard, seq: header.applied.seq };
        if let Err(err) = self.queue_restore(&mut state, path, limits, &header) {
            rollback(&mut state);
            return Err(err);
        }
        let generation = self.commit_at(&mut state, applied.clone(), previous_generation + 1)?;
        tracing::info!(
            snapshot.documents = header.documents,
            snapshot.generation = header.generation,
            index.generation = generation,
            log.applied_seq = applied.seq,
            log.previous_applied_seq = previous_applied.seq,
            "snapshot restored"
        );
        Ok(Restored {
            path: path.to_path_buf(),
            documents: header.documents,
            bytes,
            snapshot: header,
            previous_generation,
            generation,
            previous_applied,
            applied,
        })
    }

    /// Queues "delete everything" and the snapshot's documents on the writer, reading the file
    /// again and checking it is still the one verified. Called with the writer lock held; the
    /// caller rolls back on error.
    fn queue_restore(
        &self,
        state: &mut super::WriterState,
        path: &Path,
        limits: SnapshotLimits,
        verified: &SnapshotHeader,
    ) -> Result<(), IndexError> {
        let writer = state.writer()?;
        writer.delete_query(Box::new(AllQuery)).map_err(IndexError::tantivy("delete all documents"))?;
        let file = File::open(path).map_err(|source| IndexError::SnapshotIo { path: path.to_path_buf(), source })?;
        let input = BufReader::with_capacity(FILE_BUFFER_BYTES, file);
        let mut decoder = SnapshotDecoder::start(input, limits).map_err(|e| IndexError::snapshot(path, e))?;
        if decoder.header() != verified {
            return Err(IndexError::SnapshotCorrupt {
                path: path.to_path_buf(),
                reason: "the file changed while it was being restored".to_owned(),
            });
        }
        while let Some(doc) = decoder.next_document().map_err(|e| IndexError::snapshot(path, e))? {
            let SnapshotDocument { document, owner } = doc;
            // A snapshot never repeats a key, but if one did the last copy wins, as in an upsert.
            writer.delete_term(self.fields.key_term(&document.collection, &document.id));
            writer
                .add_document(self.to_tantivy(&document, &owner))
                .map_err(|source| IndexError::Tantivy { context: "add document", source })?;
        }
        decoder.finish().map_err(|e| IndexError::snapshot(path, e))?;
        Ok(())
    }
}

/// Reads the whole snapshot at `path` and checks it (see [`SnapshotDecoder`]) without touching
/// any index; returns its header and size.
pub fn verify_snapshot(path: &Path, limits: SnapshotLimits) -> Result<(SnapshotHeader, u64), IndexError> {
    let io_error = |source| IndexError::SnapshotIo { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    if size > limits.max_bytes {
        return Err(IndexError::SnapshotTooLarge {
            path: path.to_path_buf(),
            reason: format!("{size} bytes, more than the {}-byte limit of a snapshot file", limits.max_bytes),
        });
    }
    let input = BufReader::with_capacity(FILE_BUFFER_BYTES, file);
    let mut decoder = SnapshotDecoder::start(input, limits).map_err(|e| IndexError::snapshot(path, e))?;
    let header = decoder.header().clone();
    while decoder.next_document().map_err(|e| IndexError::snapshot(path, e))?.is_some() {}
    let bytes = decoder.finish().map_err(|e| IndexError::snapshot(path, e))?;
    Ok((header, bytes))
}

/// Moves the finished temporary file to `path`: a rename when overwriting, otherwise a hard
/// link (which fails if `path` appeared meanwhile) and removal of the temporary name. Then
/// syncs the directory so the new name survives a crash.
fn publish(tmp: &Path, path: &Path, overwrite: bool) -> Result<(), IndexError> {
    let io_error = |source| IndexError::SnapshotIo { path: path.to_path_buf(), source };
    if overwrite {
        std::fs::rename(tmp, path).map_err(io_error)?;
    } else {
        match std::fs::hard_link(tmp, path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(IndexError::SnapshotExists { path: path.to_path_buf() });
            }
            Err(err) => return Err(io_error(err)),
        }
        std::fs::remove_file(tmp).map_err(io_error)?;
    }
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|dir| dir.sync_all()).map_err(io_error)?;
    }
    Ok(())
}

/// The ACL grants of one segment: `(document, term)` pairs sorted by document.
struct SegmentAcls {
    terms: Vec<String>,
    grants: Vec<(DocId, u32)>,
}

impl SegmentAcls {
    /// The ACL terms of `doc`.
    fn of(&self, doc: DocId) -> impl Iterator<Item = &str> + '_ {
        let start = self.grants.partition_point(|(grant_doc, _)| *grant_doc < doc);
        self.grants[start..]
            .iter()
            .take_while(move |(grant_doc, _)| *grant_doc == doc)
            .map(|(_, term)| self.terms[*term as usize].as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::{DocRef, LogPosition, SearchQuery, SubjectRef, Viewer, Writer};

    fn doc(collection: &str, id: &str, body: &str, acl: Acl) -> Document {
        Document {
            id: id.to_owned(),
            collection: collection.to_owned(),
            title: format!("title of {id}"),
            body: body.to_owned(),
            metadata: BTreeMap::from([("source".to_owned(), format!("{collection}/{id}"))]),
            acl,
        }
    }

    fn at(seq: u64) -> LogPosition {
        LogPosition::new("g1", seq)
    }

    /// Every document of a snapshot file, sorted by key.
    fn read_all(path: &Path) -> Vec<SnapshotDocument> {
        let file = File::open(path).expect("open snapshot");
        let mut decoder = SnapshotDecoder::start(BufReader::new(file), SnapshotLimits::default()).expect("header");
        let mut docs = Vec::new();
        while let Some(doc) = decoder.next_document().expect("document") {
            docs.push(doc);
        }
        decoder.finish().expect("intact");
        docs.sort_by(|a, b| (&a.document.collection, &a.document.id).cmp(&(&b.document.collection, &b.document.id)));
        docs
    }

    fn visible(index: &DocumentIndex, viewer: Viewer) -> Vec<String> {
        let q = SearchQuery { query: "shared".to_owned(), limit: 100, viewer, ..SearchQuery::default() };
        let mut ids: Vec<String> =
            index.search(&q).expect("search").hits.into_iter().map(|h| format!("{}/{}", h.collection, h.id)).collect();
        ids.sort();
        ids
    }

    fn alice() -> SubjectRef {
        SubjectRef { tenant: "acme".to_owned(), subject: "alice".to_owned() }
    }

    /// Three positioned writes: public and tenant documents by an operator, one owned by acme
    /// granting alice, in two collections; several segments.
    fn populated(dir: &Path) -> DocumentIndex {
        let index = DocumentIndex::open(dir).expect("open");
        let docs = vec![
            doc("notes", "pub", "shared public words", Acl::public()),
            doc("notes", "globex", "shared globex words", Acl::tenant("globex")),
            doc("papers", "op-only", "shared operator words", Acl::default()),
        ];
        index.apply_upsert(&at(1), docs, &Writer::Operator).expect("seq 1");
        let for_alice = Acl { subjects: BTreeSet::from([alice()]), ..Acl::default() };
        let acme = Writer::Tenant("acme".to_owned());
        index.apply_upsert(&at(2), vec![doc("papers", "alice", "shared alice words", for_alice)], &acme).expect("2");
        index.apply_upsert(&at(3), vec![doc("notes", "acme", "shared acme words", Acl::default())], &acme).expect("3");
        index
    }

    #[test]
    fn a_snapshot_restores_documents_acls_owners_and_the_log_position_at_a_new_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = populated(&dir.path().join("index"));
        let path = snapshot_path(&dir.path().join("snapshots"), "before").expect("name");
        let written = index.write_snapshot(&path, false, SnapshotLimits::default()).expect("snapshot");
        assert_eq!((written.documents, written.generation, written.applied.seq), (5, 3, 3));
        assert_eq!(written.bytes, std::fs::metadata(&path).expect("file").len());
        let viewers = [
            Viewer::Anonymous,
            Viewer::Principal(alice()),
            Viewer::Principal(SubjectRef { tenant: "acme".into(), subject: "bob".into() }),
            Viewer::Principal(SubjectRef { tenant: "globex".into(), subject: "x".into() }),
            Viewer::Unrestricted,
        ];
        let seen_before: Vec<Vec<String>> = viewers.iter().map(|v| visible(&index, v.clone())).collect();
        let collections_before = index.collections().expect("collections");

        // Later writes the restore must undo: a new document, a delete, a replacement.
        index
            .apply_upsert(&at(4), vec![doc("notes", "later", "shared later", Acl::public())], &Writer::Operator)
            .expect("4");
        index
            .apply_delete(&at(5), vec![DocRef { collection: "notes".into(), id: "pub".into() }], &Writer::Operator)
            .expect("5");
        index
            .apply_upsert(&at(6), vec![doc("notes", "globex", "shared replaced", Acl::public())], &Writer::Operator)
            .expect("6");
        assert_eq!(index.generation(), 6);

        let restored = index.restore_snapshot(&path, SnapshotLimits::default()).expect("restore");
        assert_eq!((restored.previous_generation, restored.generation), (6, 7), "the generation only grows");
        assert_eq!(restored.applied, AppliedLog { shard: Some("g1".into()), seq: 3 }, "the snapshot's position");
        assert_eq!(restored.previous_applied.seq, 6);
        assert_eq!((index.generation(), index.applied(), index.doc_count()), (7, restored.applied.clone(), 5));
        let seen_after: Vec<Vec<String>> = viewers.iter().map(|v| visible(&index, v.clone())).collect();
        assert_eq!(seen_after, seen_before, "every viewer sees what it saw at the snapshot");
        assert_eq!(index.collections().expect("collections"), collections_before);

        // Same documents, ACLs, metadata and owners: a snapshot of the restored index is identical.
        let again = snapshot_path(&dir.path().join("snapshots"), "after").expect("name");
        index.write_snapshot(&again, false, SnapshotLimits::default()).expect("snapshot again");
        assert_eq!(read_all(&again), read_all(&path));
        let owners: Vec<(String, String)> =
            read_all(&path).into_iter().map(|d| (d.document.id, d.owner)).filter(|(_, o)| !o.is_empty()).collect();
        assert_eq!(owners, [("acme".to_owned(), "acme".to_owned()), ("alice".to_owned(), "acme".to_owned())]);
        // Ownership still holds: globex may not replace acme's restored document.
        let globex = Writer::Tenant("globex".into());
        let taken = index.check_write(&[doc("notes", "acme", "x", Acl::default())], &[], &globex);
        assert!(matches!(taken, Err(IndexError::Forbidden { .. })), "{taken:?}");

        // The log resumes after the snapshot's position: entry 4 is the next one again.
        assert!(
            !index
                .apply_upsert(&at(4), vec![doc("n", "x", "y", Acl::public())], &Writer::Operator)
                .expect("4 again")
                .already_applied
        );
        let index_dir = index.path().to_path_buf();
        drop(index);
        let reopened = DocumentIndex::open(&index_dir).expect("reopen");
        assert_eq!((reopened.generation(), reopened.applied().seq, reopened.doc_count()), (8, 4, 6));
    }

    #[test]
    fn a_damaged_or_truncated_snapshot_is_refused_and_the_index_is_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = populated(&dir.path().join("index"));
        let path = snapshot_path(dir.path(), "good").expect("name");
        index.write_snapshot(&path, false, SnapshotLimits::default()).expect("snapshot");
        index
            .apply_upsert(&at(4), vec![doc("notes", "later", "shared later", Acl::public())], &Writer::Operator)
            .expect("4");
        let bytes = std::fs::read(&path).expect("read");
        let before = (index.generation(), index.applied(), index.doc_count(), visible(&index, Viewer::Unrestricted));

        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x20;
        let damaged = snapshot_path(dir.path(), "damaged").expect("name");
        std::fs::write(&damaged, &flipped).expect("write");
        let truncated = snapshot_path(dir.path(), "truncated").expect("name");
        std::fs::write(&truncated, &bytes[..bytes.len() - 10]).expect("write");
        let foreign = snapshot_path(dir.path(), "foreign").expect("name");
        std::fs::write(&foreign, b"not a snapshot at all").expect("write");
        for bad in [&damaged, &truncated, &foreign] {
            let err = index.restore_snapshot(bad, SnapshotLimits::default()).expect_err("refused");
            assert!(matches!(err, IndexError::SnapshotCorrupt { .. }), "{}: {err:?}", bad.display());
            let after = (index.generation(), index.applied(), index.doc_count(), visible(&index, Viewer::Unrestricted));
            assert_eq!(after, before, "{} left the index untouched", bad.display());
        }
        let missing = snapshot_path(dir.path(), "missing").expect("name");
        let err = index.restore_snapshot(&missing, SnapshotLimits::default()).expect_err("missing");
        assert!(matches!(err, IndexError::SnapshotIo { .. }), "{err:?}");
        let small = SnapshotLimits { max_documents: 2, ..SnapshotLimits::default() };
        let err = index.restore_snapshot(&path, small).expect_err("too many documents");
        assert!(matches!(err, IndexError::SnapshotTooLarge { .. }) && err.to_string().contains("5 documents"), "{err}");
        let tiny = SnapshotLimits { max_bytes: 100, ..SnapshotLimits::default() };
        assert!(matches!(index.restore_snapshot(&path, tiny), Err(IndexError::SnapshotTooLarge { .. })));
        assert_eq!(index.generation(), before.0, "refusals commit nothing");
        // The good file still restores.
        assert_eq!(index.restore_snapshot(&path, SnapshotLimits::default()).expect("restore").generation, 5);
    }

    #[test]
    fn an_existing_snapshot_is_kept_unless_overwrite_is_asked_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = populated(&dir.path().join("index"));
        let snapshots = dir.path().join("snapshots");
        let path = snapshot_path(&snapshots, "nightly").expect("name");
        index.write_snapshot(&path, false, SnapshotLimits::default()).expect("first");
        let first = std::fs::read(&path).expect("read");
        index
            .apply_upsert(&at(4), vec![doc("notes", "later", "shared later", Acl::public())], &Writer::Operator)
            .expect("4");
        let err = index.write_snapshot(&path, false, SnapshotLimits::default()).expect_err("exists");
        assert!(
            matches!(err, IndexError::SnapshotExists { .. }) && err.to_string().contains("overwrite=true"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).expect("read"), first, "the existing snapshot is unchanged");
        let replaced = index.write_snapshot(&path, true, SnapshotLimits::default()).expect("overwrite");
        assert_eq!((replaced.documents, replaced.generation), (6, 4));
        let names: Vec<String> = std::fs::read_dir(&snapshots)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["nightly.snap"], "no temporary file left behind");
        // A snapshot too large for the limits is never written.
        let small = SnapshotLimits { max_documents: 1, ..SnapshotLimits::default() };
        let err = index.write_snapshot(&snapshot_path(&snapshots, "small").expect("name"), false, small);
        assert!(matches!(err, Err(IndexError::SnapshotTooLarge { .. })), "{err:?}");
        assert_eq!(std::fs::read_dir(&snapshots).expect("list").count(), 1);
    }

    #[test]
    fn another_shard_groups_snapshot_and_path_like_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = populated(&dir.path().join("index"));
        let other = DocumentIndex::open(&dir.path().join("other")).expect("open");
        other
            .apply_upsert(&LogPosition::new("g2", 1), vec![doc("n", "x", "y", Acl::public())], &Writer::Operator)
            .expect("g2");
        let path = snapshot_path(dir.path(), "g2").expect("name");
        other.write_snapshot(&path, false, SnapshotLimits::default()).expect("snapshot");
        let err = index.restore_snapshot(&path, SnapshotLimits::default()).expect_err("other group");
        assert!(matches!(err, IndexError::SnapshotWrongShard { .. }), "{err:?}");
        assert_eq!(index.generation(), 3);
        // A fresh index takes the snapshot's group.
        let fresh = DocumentIndex::open(&dir.path().join("fresh")).expect("open");
        let restored = fresh.restore_snapshot(&path, SnapshotLimits::default()).expect("restore");
        assert_eq!((restored.generation, fresh.applied()), (1, AppliedLog { shard: Some("g2".into()), seq: 1 }));
        for bad in ["../escape", "/etc/passwd", ".hidden", "a/b", ""] {
            assert!(matches!(snapshot_path(dir.path(), bad), Err(IndexError::SnapshotName(_))), "{bad:?}");
        }
    }
}
