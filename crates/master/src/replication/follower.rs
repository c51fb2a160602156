//! One replica's follower: sends its group's log entries in order from the replica's applied
//! sequence + 1, so it is both normal forwarding and catch-up (a replica that was down,
//! partitioned or restarted resumes from what it reported at registration). A gap refusal
//! (the agent's `x-ragmesh-applied-seq` below the entry) resets the cursor there; an entry the
//! agent refused as a whole (its applied sequence at or past the entry) is consumed, and the
//! refusal becomes the write's answer; any other failure backs off (bounded, jittered) until
//! the node answers, goes down or is evicted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ragmesh_auth::Principal;
use ragmesh_proto::ErrorKind;
use ragmesh_proto::v1;
use ragmesh_stack::node_call::{CallError, NodeCall, NodeReply, NodeRequest, Target};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::log::{LogEntry, Write, Writer};
use super::{READ_BATCH, Replication, lock};
use crate::node::NodeState;
use crate::registry::SyncState;

const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The follower of one replica.
pub(super) struct Follower {
    pub(super) replication: Replication,
    pub(super) node: String,
    pub(super) group: String,
    pub(super) cancel: CancellationToken,
    pub(super) done: Arc<AtomicBool>,
}

/// What the agent answered to one forwarded entry.
struct Applied {
    applied_seq: u64,
    generation: u64,
    collections: Vec<v1::CollectionStats>,
}

/// The wait after `failures` consecutive failures: doubling from 50 ms up to 5 s, with jitter
/// (between half and all of it) so that followers of one dead node do not retry in lockstep.
pub(super) fn backoff(failures: u32) -> Duration {
    let full = BACKOFF_BASE.saturating_mul(1u32 << failures.min(16)).min(BACKOFF_MAX);
    let half = full / 2;
    half + half.mul_f64(rand::random::<f64>())
}

impl Follower {
    pub(super) async fn run(self) {
        let shared = self.replication.shared.clone();
        let registry = shared.registry.clone();
        let mut membership = registry.subscribe();
        let mut wake = self.replication.waker(&self.group).subscribe();
        let mut seen_applied = 0;
        let mut cursor = 0;
        let mut failures = 0u32;
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            let Some(view) = registry.get(&self.node) else { break };
            if view.state == NodeState::Down || view.record.group() != self.group {
                break;
            }
            // The registry's applied sequence (registration, heartbeats, answers) moves the
            // cursor forward; a gap refusal may move it back, so only news counts.
            if view.applied_seq != seen_applied {
                seen_applied = view.applied_seq;
                cursor = cursor.max(seen_applied);
            }
            let state = shared.log.state(&self.group);
            let behind_log = cursor.saturating_add(1) < state.first;
            if cursor >= state.last || behind_log || matches!(view.sync, SyncState::Stale { .. }) {
                if cursor >= state.last {
                    self.replication.trim(&self.group).await;
                }
                tokio::select! {
                    () = self.cancel.cancelled() => break,
                    _ = wake.changed() => {}
                    _ = membership.changed() => {}
                }
                continue;
            }
            let (log, group, from) = (shared.log.clone(), self.group.clone(), cursor + 1);
            let batch = match tokio::task::spawn_blocking(move || log.read(&group, from, READ_BATCH)).await {
                Ok(Ok(batch)) => batch,
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "cannot read the write log");
                    self.pause(&mut failures).await;
                    continue;
                }
                Err(err) => {
                    tracing::error!(error = %err, "write log read task failed");
                    self.pause(&mut failures).await;
                    continue;
                }
            };
            for entry in batch {
                if entry.seq != cursor + 1 || self.cancel.is_cancelled() {
                    break; // trimmed under us: the registry marks the replica stale
                }
                match self.send_traced(&entry).await {
                    Ok(applied) => {
                        failures = 0;
                        lock(&shared.last_errors).remove(&self.node);
                        // A success means this entry is applied, whatever an older agent reports.
                        cursor = applied.applied_seq.max(entry.seq);
                        let collections = crate::convert::collections_from_wire(applied.collections);
                        registry.observe_write(&self.node, applied.generation, collections, cursor);
                    }
                    Err(CallError::Rejected { applied_seq, .. }) if applied_seq < entry.seq => {
                        tracing::info!(
                            seq = entry.seq,
                            applied = applied_seq,
                            "replica refused a gap: resending from its position"
                        );
                        cursor = applied_seq;
                        break;
                    }
                    Err(CallError::Rejected { kind, message, applied_seq }) => {
                        // Refused as a whole, alike on every replica: the entry is consumed and
                        // its refusal is the write's answer.
                        failures = 0;
                        lock(&shared.last_errors).remove(&self.node);
                        self.replication.refused(&self.group, entry.seq, kind, message);
                        cursor = applied_seq;
                        registry.observe_applied(&self.node, cursor);
                    }
                    Err(err) => {
                        tracing::debug!(seq = entry.seq, error = %err, "forward failed");
                        lock(&shared.last_errors).insert(self.node.clone(), err.to_string());
                        self.pause(&mut failures).await;
                        break;
                    }
                }
            }
        }
        self.done.store(true, Ordering::SeqCst);
    }

    async fn pause(&self, failures: &mut u32) {
        let wait = backoff(*failures);
        *failures = failures.saturating_add(1);
        tokio::select! {
            () = self.cancel.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }

    /// [`Follower::send`] in a span of the writer's trace (a root span for an entry whose write
    /// is no longer remembered: a catch-up after a restart), not in the follower's long-lived one.
    async fn send_traced(&self, entry: &LogEntry) -> Result<Applied, CallError> {
        let span = tracing::info_span!(
            parent: None,
            "replication.send",
            node.id = %self.node,
            shard = %self.group,
            ragmesh.seq = entry.seq,
        );
        if let Some(cx) = self.replication.trace_of(&self.group, entry.seq) {
            ragmesh_telemetry::propagation::continue_from(&span, cx);
        }
        tracing::Instrument::instrument(self.send(entry), span).await
    }

    async fn send(&self, entry: &LogEntry) -> Result<Applied, CallError> {
        let shared = &self.replication.shared;
        let position = Some(v1::LogPosition { shard: self.group.clone(), seq: entry.seq });
        let request = match &entry.write {
            Write::Upsert(r) => NodeRequest::Upsert(v1::UpsertDocumentsRequest { position, ..r.clone() }),
            Write::Delete(r) => NodeRequest::Delete(v1::DeleteDocumentsRequest { position, ..r.clone() }),
        };
        let deadline = Instant::now() + shared.send_timeout;
        let mut call = NodeCall::new(Target::Node(self.node.clone()), request, deadline);
        match sign(&shared.access, &entry.writer, entry.seq, shared.send_timeout) {
            Ok(context) => call = call.with_context(context),
            Err(message) => return Err(CallError::Error { kind: ErrorKind::Internal, message }),
        }
        let attempts = call.attempts.clone();
        let answer = shared.client.clone().oneshot(call).await;
        shared.metrics.record_attempts(&attempts.snapshot());
        match answer?.reply {
            NodeReply::Upsert(r) => {
                Ok(Applied { applied_seq: r.applied_seq, generation: r.generation, collections: r.collections })
            }
            NodeReply::Delete(r) => {
                Ok(Applied { applied_seq: r.applied_seq, generation: r.generation, collections: r.collections })
            }
            _ => Err(ragmesh_stack::endpoint::unexpected_reply(&self.node, "a write reply")),
        }
    }
}

/// A fresh context signed for the entry's original writer, so the agent records the owner the
/// write had, however late the entry reaches it (the writer's own token may have expired).
fn sign(
    access: &crate::access::AccessControl,
    writer: &Writer,
    seq: u64,
    ttl: Duration,
) -> Result<tonic::metadata::AsciiMetadataValue, String> {
    let now = ragmesh_auth::unix_now();
    let principal = Principal {
        subject: writer.subject.clone(),
        tenant: writer.tenant.clone(),
        capabilities: writer.capabilities.iter().copied().collect(),
        token_id: format!("replication-{seq}"),
        expires_at: now.saturating_add(ttl.as_secs().max(1) + 1),
        issued_at: now,
    };
    access.context(&principal, ttl).map_err(|e| format!("cannot sign the writer's context: {e}"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn backoff_is_bounded_and_grows(failures in 0u32..100) {
            let wait = backoff(failures);
            prop_assert!(wait <= BACKOFF_MAX);
            prop_assert!(wait >= BACKOFF_BASE / 2);
        }
    }
}
