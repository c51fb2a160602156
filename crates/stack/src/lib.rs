//! ragmesh's own tower layers, one per file, for the tonic servers of master and agent.
//!
//! - [`rate_limit`]: per-principal GCRA rate limiting answering RESOURCE_EXHAUSTED with the wait.

pub mod rate_limit;
