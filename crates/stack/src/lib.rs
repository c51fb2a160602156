//! ragmesh's own tower layers, one per file, for the tonic servers of master and agent.
//!
//! - [`breaker`]: the per-node circuit breaker's pure state machine.
//! - [`breaker_layer`]: the breaker as a layer: refuses at once when open, one probe when due.
//! - [`discover`]: the replica directory and a `Discover` stream of one group's readable replicas.
//! - [`endpoint`]: the innermost node-client service: one agent, its RPC, deadline and context,
//!   the outcome in the shared vocabulary, every attempt recorded.
//! - [`hedge`]: which reads are hedged (tower's hedge), under a budget.
//! - [`load`]: the p2c load metric of a node (failed or refusing last, then peak-EWMA cost).
//! - [`metrics`]: gRPC server metrics with the conventional names (a layer), scrape-time gauges,
//!   certificate expiry.
//! - [`node_call`]: the typed call the master's node client takes (a shard group or one node, a
//!   Clone request, a deadline, a shared attempt log) and the one vocabulary of how it ends.
//! - [`node_client`]: [`node_client::build`], the node client: router, hedge, retry, balance and
//!   the per-node stack, each layer's position explained.
//! - [`node_health`]: per-node breaker, failures and RTT estimate, kept outside the stacks.
//! - [`overload`]: a bound on the requests one service serves at once, shedding the rest with
//!   RESOURCE_EXHAUSTED (tower's `LoadShed` over `ConcurrencyLimit`).
//! - [`shared`]: a service shared by many callers without a worker task (in place of `Buffer`).
//! - [`retry`]: which failed reads are retried on another replica, under a budget.
//! - [`rate_limit`]: per-principal GCRA rate limiting answering RESOURCE_EXHAUSTED with the wait.
//! - [`trace`]: the server span of every call (OpenTelemetry RPC conventions), continuing the
//!   caller's W3C trace; its id back in `x-ragmesh-trace-id`.
//! - [`wire_errors`]: tonic's answers to undecodable or oversized requests in gRPC terms
//!   (INVALID_ARGUMENT, RESOURCE_EXHAUSTED naming the limit).

pub mod breaker;
pub mod breaker_layer;
pub mod discover;
pub mod endpoint;
pub mod hedge;
pub mod load;
pub mod metrics;
pub mod node_call;
pub mod node_client;
pub mod node_health;
pub mod overload;
pub mod rate_limit;
pub mod retry;
pub mod shared;
pub mod trace;
pub mod wire_errors;
