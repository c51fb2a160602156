//! ragmesh's own tower layers, one per file, for the tonic servers of master and agent.
//!
//! - [`breaker`]: the per-node circuit breaker's pure state machine (the layer around it and its
//!   sled persistence come with issue 7).
//! - [`endpoint`]: the innermost node-client service: one agent, its RPC, deadline and context,
//!   the outcome in the shared vocabulary, every attempt recorded.
//! - [`node_call`]: the typed call the master's node client takes (a shard group or one node, a
//!   Clone request, a deadline, a shared attempt log) and the one vocabulary of how it ends.
//! - [`overload`]: a bound on the requests one service serves at once, shedding the rest with
//!   RESOURCE_EXHAUSTED (tower's `LoadShed` over `ConcurrencyLimit`).
//! - [`rate_limit`]: per-principal GCRA rate limiting answering RESOURCE_EXHAUSTED with the wait.
//! - [`wire_errors`]: tonic's answers to undecodable or oversized requests in gRPC terms
//!   (INVALID_ARGUMENT, RESOURCE_EXHAUSTED naming the limit).

pub mod breaker;
pub mod endpoint;
pub mod node_call;
pub mod overload;
pub mod rate_limit;
pub mod wire_errors;
