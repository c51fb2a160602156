//! Error type of the index: what went wrong, on which document or directory, and what to do.

use std::path::PathBuf;

/// Everything that can go wrong while opening, writing or searching a [`crate::DocumentIndex`].
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// One document of a write batch failed validation; nothing of the batch was written.
    ///
    /// `position` is the zero-based index of the document in the batch.
    #[error("document {position} (id {id:?}): {reason}")]
    InvalidDocument {
        /// Zero-based position of the offending document in the batch.
        position: usize,
        /// The document id (shortened when very long).
        id: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The writer may not write or delete this document (another tenant's, or an ACL it may not
    /// grant); nothing of the batch was written.
    #[error("document {position} (id {id:?}): {reason}")]
    Forbidden {
        /// Zero-based position in the batch.
        position: usize,
        /// The document id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The write batch itself is unacceptable (empty or too large); nothing was written.
    #[error("{0}")]
    InvalidBatch(String),
    /// The search request cannot be run as given.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The writer options are out of bounds (see `WriterOptions::check`).
    #[error("invalid index writer options: {0}")]
    InvalidWriterOptions(String),
    /// The query is well formed text but its structure (nesting, clauses, terms) exceeds the
    /// limits, so it is refused before tantivy's recursive parser sees it.
    #[error("invalid query: {0}")]
    QueryTooComplex(#[from] ragmesh_types::query::QueryShapeError),
    /// The index directory could not be created or inspected.
    #[error("cannot create index directory {path}: {source}")]
    CreateDir {
        /// The data directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The index was built with another analysis profile than the one configured.
    #[error(
        "cannot open index at {path}: it was built with analysis profile {stored:?} but the configuration asks for \
         {configured:?}; its terms were analysed differently, so it cannot be searched with the new profile. Either \
         set stemming and stop_words back to what the index was built with, or rebuild it: write a snapshot of the \
         index, move its directory away, start with the new settings and restore the snapshot (documents are \
         re-analysed on restore)"
    )]
    ProfileMismatch {
        /// The data directory.
        path: PathBuf,
        /// The profile the index was built with.
        stored: String,
        /// The configured profile.
        configured: String,
    },
    /// A collection's analysis profile has no title and body fields in the index: a tantivy
    /// schema cannot grow, so the index must be rebuilt.
    #[error(
        "cannot open index at {path}: it has no fields for analysis profile {profile:?}, configured for \
         collection(s) {collections}; an index's fields are fixed when it is created (it has fields for: {stored}). \
         Either give those collections a profile the index has (or remove their [analysis.collections] \
         overrides), or rebuild the index: with the settings it was built with, write a snapshot of it, stop, move \
         its directory away, start with the new settings (an empty index with fields for every configured profile \
         is created) and restore the snapshot (documents are re-analysed on restore)"
    )]
    ProfileFieldsMissing {
        /// The data directory.
        path: PathBuf,
        /// The profile lacking fields.
        profile: String,
        /// The collections configured with it, comma-separated.
        collections: String,
        /// The profiles the index has fields for, comma-separated.
        stored: String,
    },
    /// The stored schema has a text field this build cannot read.
    #[error("cannot open index at {path}: {reason}")]
    UnknownSchema {
        /// The data directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another writer holds the index lock.
    #[error("cannot open index at {path}: the index is locked (is another agent using this data directory?)")]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The underlying tantivy error.
        source: tantivy::TantivyError,
    },
    /// The index exists but cannot be opened (corrupt, incompatible schema, permissions...).
    #[error("cannot open index at {path}: {source}")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// The underlying tantivy error.
        source: tantivy::TantivyError,
    },
    /// The commit payload holding the index generation is unreadable.
    #[error(
        "cannot open index at {path}: commit payload {payload:?} is not a ragmesh generation record ({reason}); was this directory written by another program?"
    )]
    BadPayload {
        /// The data directory.
        path: PathBuf,
        /// The payload found in the index metadata.
        payload: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// A log entry every replica refuses the same way (an invalid document, a write the caller
    /// may not make): nothing of it was written, but it took its place in the log, so the
    /// replica's position moved past it (`seq`) and the group's log never waits behind it.
    #[error("{refusal}")]
    EntryRefused {
        /// The entry's sequence, now the replica's applied sequence.
        seq: u64,
        /// Why it was refused.
        refusal: Box<IndexError>,
    },
    /// A log entry lies past the next one this replica expects: applying it would skip entries.
    /// Nothing was written.
    #[error(
        "this replica applied the shard group's log up to seq {applied}; entry {got} would leave a gap: the master sends the missing entries first"
    )]
    LogGap {
        /// Last sequence the index applied.
        applied: u64,
        /// Sequence of the refused entry.
        got: u64,
    },
    /// A log entry of another shard group than the one this index holds. Nothing was written.
    #[error(
        "this replica holds shard group {held:?}'s data; an entry of shard group {got:?} belongs on a replica of {got:?}"
    )]
    WrongShard {
        /// The shard group the index (or agent) holds.
        held: String,
        /// The shard group the entry names.
        got: String,
    },
    /// A snapshot name that is not a plain file name.
    #[error("{0}")]
    SnapshotName(String),
    /// The snapshot exists and overwriting it was not asked for.
    #[error("snapshot {path} already exists: choose another name or pass overwrite=true")]
    SnapshotExists {
        /// The snapshot file.
        path: PathBuf,
    },
    /// Reading or writing a snapshot file failed.
    #[error("snapshot {path}: {source}")]
    SnapshotIo {
        /// The snapshot file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The snapshot file is not intact (truncated, altered, not a snapshot, another format
    /// version); a restore refused it before touching the index.
    #[error("snapshot {path} is unusable: {reason}")]
    SnapshotCorrupt {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The snapshot exceeds the limits of a snapshot (its size, document count or one
    /// document's size).
    #[error("snapshot {path} is too large: {reason}")]
    SnapshotTooLarge {
        /// The snapshot file.
        path: PathBuf,
        /// Which limit it passes.
        reason: String,
    },
    /// The snapshot holds another shard group's data than the group this index follows.
    #[error(
        "snapshot {path} holds shard group {got:?}'s data but this index follows shard group {held:?}'s log: restore a snapshot of a replica of {held:?}"
    )]
    SnapshotWrongShard {
        /// The snapshot file.
        path: PathBuf,
        /// The group this index follows.
        held: String,
        /// The group of the snapshot.
        got: String,
    },
    /// A tantivy operation failed.
    #[error("{context}: {source}")]
    Tantivy {
        /// What the index was doing.
        context: &'static str,
        /// The underlying tantivy error.
        source: tantivy::TantivyError,
    },
}

impl IndexError {
    /// Whether the error depends only on the write and on index state that every in-sync
    /// replica shares, so every replica refuses it alike (and not on this replica's disk or
    /// memory, which may fail on one replica only).
    pub fn is_deterministic_refusal(&self) -> bool {
        matches!(self, IndexError::InvalidDocument { .. } | IndexError::InvalidBatch(_) | IndexError::Forbidden { .. })
    }

    /// Wraps a snapshot format error with the file it concerns.
    pub(crate) fn snapshot(path: &std::path::Path, err: crate::snapshot::FormatError) -> Self {
        let path = path.to_path_buf();
        match err {
            crate::snapshot::FormatError::Io(source) => Self::SnapshotIo { path, source },
            crate::snapshot::FormatError::Corrupt(reason) => Self::SnapshotCorrupt { path, reason },
            crate::snapshot::FormatError::TooLarge(reason) => Self::SnapshotTooLarge { path, reason },
        }
    }

    /// Builds a closure that wraps a tantivy error with a description of the failed operation.
    pub(crate) fn tantivy(context: &'static str) -> impl FnOnce(tantivy::TantivyError) -> Self {
        move |source| Self::Tantivy { context, source }
    }
}
