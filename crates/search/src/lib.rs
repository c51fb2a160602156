//! ragmesh-search: pure search logic (no I/O, no tantivy) shared by the master and the agents.
//!
//! - [`summary`]: a compact, generation-stamped summary of the terms of one collection on one
//!   node (a Bloom filter), its versioned byte encoding, and the routing decision
//!   ([`summary::NodeSummary::may_match`]) over a [`summary::RoutingQuery`]: a node is skipped
//!   only when its summary proves that no document it holds can match. A false "skip" is
//!   impossible by construction; a false "ask" (Bloom false positive, syntax the summary cannot
//!   reason about) is fine.

#![forbid(unsafe_code)]

pub mod summary;

pub use summary::{
    Bloom, DEFAULT_ANALYZER, DEFAULT_FALSE_POSITIVE_RATE, ENCODING_VERSION, MAX_ANALYZER_BYTES, MAX_COLLECTIONS,
    MAX_FILTER_BYTES, MAX_NODE_FILTER_BYTES, NodeSummary, RoutingQuery, SummaryError, TermFilter,
};
