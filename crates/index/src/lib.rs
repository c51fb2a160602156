//! ragmesh-index: the node-local tantivy BM25 index and the parsers that turn files into documents.
//!
//! [`DocumentIndex`] owns one index directory: it validates and writes batches of
//! [`Document`]s, deletes by [`DocRef`], counts a monotonically increasing generation stored
//! atomically with the data together with the last write-log position applied
//! ([`DocumentIndex::apply_upsert`], [`LogPosition`]), and answers [`SearchQuery`]s with
//! scored, snippeted [`SearchHit`]s.
//! [`DocumentIndex::write_snapshot`] and [`DocumentIndex::restore_snapshot`] copy the live
//! documents to and from a self-checking [`snapshot`] file.
//! [`DocumentIndex::term_summary`] and [`routing_query`] are the index side of routing by term
//! summaries (the summary itself lives in the pure `ragmesh-search` crate).
//! The [`ingest`] module parses TREC, JSON lines and plain-text files into documents.

mod access;
pub mod analysis;
mod document;
mod error;
mod index;
pub mod ingest;
mod position;
pub mod snapshot;
#[cfg(test)]
mod test_data;

pub use access::{Acl, MAX_PRINCIPAL_BYTES, SubjectRef, Viewer, Writer};
pub use analysis::{AnalysisSettings, Bm25Params, IndexAnalysis, Profile};
pub use document::{
    CollectionCount, DISPLAY_TITLE_WORDS, DocRef, Document, MAX_BATCH, MAX_COLLECTION_CHARS, MAX_ID_BYTES,
    MAX_TEXT_BYTES, SearchHit, SearchQuery, SearchResults, display_title,
};
pub use error::IndexError;
pub use index::backup::{Restored, SnapshotWritten, snapshot_path, verify_snapshot};
pub use index::stats::{FieldTerm, MAX_STATISTICS_TERMS, QueryAnalyzer, TermStatistics};
pub use index::summary::{QueryReading, RoutingParser, RoutingSummary, routing_query, routing_query_for};
pub use index::{
    DEFAULT_LIMIT, DEFAULT_WRITER_HEAP_BYTES, DocumentIndex, IndexState, MAX_LIMIT, MAX_QUERY_BYTES,
    MAX_WRITER_HEAP_BYTES, MIN_WRITER_HEAP_BYTES, WriterOptions,
};
pub use position::{Applied, AppliedLog, LogPosition, Step, check_position};
pub use snapshot::{MAX_SNAPSHOT_NAME, SnapshotHeader, SnapshotLimits, snapshot_name_problem};
