//! ragmesh-eval: retrieval evaluation for `ragmeshctl eval` (issue 10), pure and synchronous.
//!
//! - [`topics`], [`qrels`] and [`run`] read the TREC formats of the public test collections
//!   (`../shared/data/vaswani`): topics (`<top><num>..</num><title>..</title></top>` and the usual
//!   TREC variants), relevance judgments (`qid iter docno rel`, graded) and run files
//!   (`qid Q0 docno rank score tag`, read and written). Every reader streams its input line by line
//!   with a bounded line length ([`MAX_LINE_BYTES`]) and says which line is wrong.
//! - [`metrics`] computes nDCG@k, MAP@k (AP cut at k) and P@k exactly as trec_eval 9 does
//!   (`ndcg_cut`, `map_cut`, `P`), per query and as means, including trec_eval's ranking (score
//!   descending, ties by docno descending; the rank column is ignored) and its choice of queries.
//! - [`mod@compare`] compares two evaluations (per-query differences, ratio of means, a two-sided paired
//!   randomization test with a fixed seed) and counts queries whose top-k lists are identical.
//! - [`split`] cuts a collection into N shards for a federated evaluation: round-robin, id
//!   ranges, or clustered by vocabulary (skewed), deterministically and from the documents alone.

#![forbid(unsafe_code)]

pub mod compare;
pub(crate) mod lines;
pub mod metrics;
pub mod qrels;
pub mod run;
pub mod split;
pub mod topics;

use std::path::PathBuf;

pub use compare::{Comparison, QueryDifference, RandomizationTest, TopKAgreement, compare, top_k_agreement};
pub use lines::MAX_LINE_BYTES;
pub use metrics::{Averaging, Evaluation, Metric, evaluate};
pub use qrels::Qrels;
pub use run::{Run, ScoredDoc};
pub use topics::Topic;

/// Everything that can go wrong reading, writing or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line of a topics, qrels or run file is malformed (1-based line number).
    #[error("line {line}: {message}")]
    Parse {
        /// 1-based line number of the offending line (for a topic: where its `<top>` or the problem is).
        line: u64,
        /// What is wrong, and what would be accepted.
        message: String,
    },
    /// The underlying reader or writer failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// An error in a named file.
    #[error("{path}: {source}")]
    File {
        /// The file that was being read or written.
        path: PathBuf,
        /// What went wrong in it.
        source: Box<Error>,
    },
    /// A run lists the same document twice for one query (trec_eval rejects such a run too).
    #[error("query {query}: document {docno} is listed twice; a run ranks each document at most once per query")]
    DuplicateDocument {
        /// The query id.
        query: String,
        /// The repeated document id.
        docno: String,
    },
    /// A qrels file judges the same document twice for one query.
    #[error("query {query}: document {docno} is judged twice")]
    DuplicateJudgment {
        /// The query id.
        query: String,
        /// The repeated document id.
        docno: String,
    },
    /// An id (query, document, run tag) is empty or contains whitespace, so it cannot be written
    /// to or read back from a whitespace-separated TREC file.
    #[error("{what} {value:?} is empty or contains whitespace")]
    InvalidId {
        /// Which id: "query id", "docno" or "run tag".
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// A score is NaN or infinite: it cannot be ranked.
    #[error("query {query}: document {docno} has a non-finite score")]
    NonFiniteScore {
        /// The query id.
        query: String,
        /// The document id.
        docno: String,
    },
    /// A metric cutoff of 0 (trec_eval requires positive cutoffs).
    #[error("metric cutoffs must be at least 1")]
    InvalidCutoff,
    /// A metric name that is not one of ndcg@k, map@k, p@k (or their trec_eval names).
    #[error("unknown metric {0:?}: use ndcg@K, map@K or p@K (or ndcg_cut_K, map_cut_K, P_K)")]
    UnknownMetric(String),
    /// No query has both results and judgments (trec_eval exits with the same complaint).
    #[error("no queries with both results and relevance judgments: do the run's query ids match the qrels'?")]
    NoQueries,
    /// The two evaluations of a comparison have no query in common, or lack the metric.
    #[error("cannot compare: {0}")]
    Incomparable(String),
}

impl Error {
    /// Attach the file name to an error that happened while reading or writing `path`.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        Error::File { path: path.into(), source: Box::new(self) }
    }
}

/// Whether `id` can stand as one field of a whitespace-separated TREC line.
pub(crate) fn check_id(what: &'static str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.chars().any(char::is_whitespace) {
        return Err(Error::InvalidId { what, value: value.to_owned() });
    }
    Ok(())
}
