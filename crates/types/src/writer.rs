//! Bounds of an agent's index writer memory budget, one definition for ragmesh-index (which
//! enforces them) and ragmesh-config (which checks `--writer-heap-bytes` before anything opens).

/// Default memory budget of the index writer, shared by its indexing threads.
pub const DEFAULT_WRITER_HEAP_BYTES: usize = 50_000_000;
/// Smallest writer budget: tantivy needs 15 MB per indexing thread (and uses one thread when
/// the budget is below twice that).
pub const MIN_WRITER_HEAP_BYTES: usize = 15_000_000;
/// Largest writer budget accepted.
pub const MAX_WRITER_HEAP_BYTES: usize = 1 << 30;
