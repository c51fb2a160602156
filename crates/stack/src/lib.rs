//! ragmesh's own tower layers, one per file, for the tonic servers of master and agent.
//!
//! - [`overload`]: a bound on the requests one service serves at once, shedding the rest with
//!   RESOURCE_EXHAUSTED (tower's `LoadShed` over `ConcurrencyLimit`).
//! - [`rate_limit`]: per-principal GCRA rate limiting answering RESOURCE_EXHAUSTED with the wait.

pub mod overload;
pub mod rate_limit;
