//! Replicated writes of shard groups: a durable per-group write log, a sequencer, and one
//! follower per replica that forwards the log in order (normal forwarding and catch-up are the
//! same loop).
//!
//! A write for group `g`: the log append (under `g`'s lock, in the store, durable) assigns
//! `seq = last + 1`; the followers of `g` are woken; the writer then waits until a write quorum
//! of `g`'s replicas (every registered replica, whatever its liveness; `--write-quorum`) reports
//! `applied_seq >= seq`, or the deadline passes. Either way the entry stays in the log and
//! reaches every replica; a write that missed its quorum is answered UNAVAILABLE saying so, and
//! retrying it is safe (upserts and deletes are idempotent). The committed sequence of a group
//! is the highest one a write quorum reached, acknowledged or refused as a whole (after a
//! master restart: the last one in the log, which is safe). Sync states follow in the registry (`replication::decide::sync_state`).
//!
//! Failpoints for crash tests: with `RAGMESH_FAILPOINT=after_log_append` the master aborts
//! (`std::process::abort`) right after a write's entry is durable in the log, before any
//! replica is sent it; with `RAGMESH_FAILPOINT=after_forward` it aborts once the entry reached
//! its write quorum, before the writer is answered.

pub mod decide;
mod follower;
pub mod log;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ragmesh_config::{ReplicationConfig, WriteQuorum};
use ragmesh_stack::node_call::NodeClient;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::follower::Follower;
use self::log::{LogError, LogState, Write, WriteLog, Writer};
use crate::access::AccessControl;
use crate::node::NodeState;
use crate::registry::{GroupLog, Membership, NodeView, Registry};

/// Entries a follower reads from the log at once.
const READ_BATCH: usize = 64;

/// Where a write goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteTarget {
    /// This shard group.
    Shard(String),
    /// The shard group of this node.
    Node(String),
}

/// What one replica did with a write, when the writer is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    /// Replica.
    pub node: String,
    /// Whether it applied the write.
    pub applied: bool,
    /// Last sequence it applied, as far as the master knows.
    pub applied_seq: u64,
    /// Why it has not, when it has not (it will when it catches up).
    pub message: String,
}

/// An acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Group written.
    pub shard: String,
    /// The write's sequence in the group's log.
    pub seq: u64,
    /// Every replica of the group, sorted by name.
    pub replicas: Vec<ReplicaReport>,
}

/// Why a write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Neither a node nor a shard group was named.
    #[error("name the shard group (shard) or a node of it (node) to write to; groups: {}", list(groups))]
    NoTarget {
        /// Groups that exist.
        groups: Vec<String>,
    },
    /// The named group does not exist.
    #[error("unknown shard group {group:?}: groups are {} (see `ragmeshctl nodes`)", list(groups))]
    UnknownGroup {
        /// Group asked for.
        group: String,
        /// Groups that exist.
        groups: Vec<String>,
    },
    /// The named node does not exist.
    #[error("unknown node {node:?}: known nodes are {} (see `ragmeshctl nodes`)", list(known))]
    UnknownNode {
        /// Node asked for.
        node: String,
        /// Nodes that exist.
        known: Vec<String>,
    },
    /// The group has a log but no registered replica left.
    #[error("shard group {group} has no replica: start an agent with --shard {group}")]
    NoReplicas {
        /// Group.
        group: String,
    },
    /// The quorum was not reached before the deadline.
    #[error(
        "write {seq} to shard group {group} reached {applied} of {replicas} replicas before the deadline but quorum {quorum} needs {needed} (applied by: {}; not yet: {}); the write IS in the group's log and will still reach every replica, so retrying it is safe",
        list(applied_by),
        list(missing)
    )]
    QuorumNotReached {
        /// Group.
        group: String,
        /// The write's sequence.
        seq: u64,
        /// Replicas that applied it.
        applied: usize,
        /// Their names.
        applied_by: Vec<String>,
        /// Replicas that did not, with why.
        missing: Vec<String>,
        /// Replicas of the group.
        replicas: usize,
        /// The quorum.
        quorum: WriteQuorum,
        /// Replicas it needs.
        needed: usize,
    },
    /// The replicas refused the write as a whole (each refuses it alike): nothing of it was
    /// written anywhere, and its sequence was consumed.
    #[error("shard group {group} refused write {seq} as a whole (nothing of it was written): {message}")]
    Refused {
        /// Group.
        group: String,
        /// The write's sequence (consumed).
        seq: u64,
        /// The kind of refusal (invalid argument, permission denied).
        kind: ragmesh_proto::ErrorKind,
        /// The replica's message.
        message: String,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A blocking task failed.
    #[error("write log task failed: {0}")]
    Task(String),
}

fn list(names: &[String]) -> String {
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

/// Refusals kept for writers not yet answered (a refusal found while catching up, with no
/// writer waiting, is dropped once this many newer ones arrived).
const MAX_REFUSALS: usize = 1024;

/// Trace contexts of the newest writes kept for their followers (older sends start a trace of
/// their own).
const MAX_WRITE_TRACES: usize = 4096;

/// The trace contexts of the newest writes by (group, seq), the oldest dropped first whatever
/// their group.
#[derive(Default)]
struct WriteTraces {
    by_entry: std::collections::HashMap<(String, u64), ragmesh_telemetry::propagation::Context>,
    order: std::collections::VecDeque<(String, u64)>,
}

impl WriteTraces {
    fn insert(&mut self, entry: (String, u64), cx: ragmesh_telemetry::propagation::Context) {
        if self.by_entry.insert(entry.clone(), cx).is_none() {
            self.order.push_back(entry);
        }
        while self.order.len() > MAX_WRITE_TRACES {
            if let Some(oldest) = self.order.pop_front() {
                self.by_entry.remove(&oldest);
            }
        }
    }
}

/// Aborts the process at `step` when `RAGMESH_FAILPOINT` names it (crash tests only).
fn failpoint(step: &str) {
    if std::env::var("RAGMESH_FAILPOINT").is_ok_and(|v| v == step) {
        tracing::error!(failpoint = step, "failpoint reached: aborting");
        std::process::abort();
    }
}

/// Handle to replication; cheap to clone.
#[derive(Debug, Clone)]
pub struct Replication {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    log: WriteLog,
    registry: Registry,
    client: NodeClient,
    access: Arc<AccessControl>,
    config: ReplicationConfig,
    /// Deadline of one forward of an entry to a replica.
    send_timeout: Duration,
    metrics: crate::metrics::MasterMetrics,
    /// Highest acknowledged sequence per group.
    committed: Mutex<BTreeMap<String, u64>>,
    /// Last sequence per group, watched by the group's followers.
    wakers: Mutex<BTreeMap<String, watch::Sender<u64>>>,
    /// Running followers by node.
    followers: Mutex<BTreeMap<String, FollowerSlot>>,
    /// Why the last forward to a node failed (cleared on success), for write reports.
    last_errors: Mutex<BTreeMap<String, String>>,
    /// Entries the replicas refused as a whole, by (group, seq), until their writer is answered
    /// (bounded: the oldest are dropped first).
    refusals: Mutex<BTreeMap<(String, u64), (ragmesh_proto::ErrorKind, String)>>,
    /// The trace of each recent write, so that every replica's send of the entry belongs to the
    /// writer's trace.
    traces: Mutex<WriteTraces>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("config", &self.config).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct FollowerSlot {
    session: Option<crate::node::SessionId>,
    group: String,
    cancel: CancellationToken,
    done: Arc<std::sync::atomic::AtomicBool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The replicas of `group` in a membership snapshot.
fn members<'a>(membership: &'a Membership, group: &'a str) -> impl Iterator<Item = &'a NodeView> + 'a {
    membership.values().filter(move |v| v.record.group() == group)
}

/// What replication is built from.
#[derive(Clone)]
pub struct Parts {
    /// The registry (membership, applied sequences, sync states).
    pub registry: Registry,
    /// The groups' logs.
    pub log: WriteLog,
    /// The node client; replication sends to one node at a time (`Target::Node`).
    pub client: NodeClient,
    /// Signs the writers' contexts.
    pub access: Arc<AccessControl>,
    /// Quorum and log bounds.
    pub config: ReplicationConfig,
    /// Deadline of one forward of an entry to a replica.
    pub send_timeout: Duration,
    /// Counts each forward's attempts in the per-node client series.
    pub metrics: crate::metrics::MasterMetrics,
    /// Stops the followers.
    pub shutdown: CancellationToken,
    /// Where the followers run (drained on shutdown).
    pub tasks: TaskTracker,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Replication {
    /// Starts replication: publishes every group's log state to the registry and runs one
    /// follower per replica that is not down, until `shutdown`.
    pub fn start(parts: Parts) -> Self {
        let Parts { registry, log, client, access, config, send_timeout, metrics, shutdown, tasks } = parts;
        // After a restart nobody knows what was acknowledged: every logged entry counts.
        let committed = log.groups().into_iter().map(|(g, s)| (g, s.last)).collect();
        let shared = Arc::new(Shared {
            log,
            registry,
            client,
            access,
            config,
            send_timeout,
            metrics,
            committed: Mutex::new(committed),
            wakers: Mutex::default(),
            followers: Mutex::default(),
            last_errors: Mutex::default(),
            refusals: Mutex::default(),
            traces: Mutex::default(),
            shutdown,
            tasks,
        });
        let replication = Replication { shared };
        for (group, _) in replication.shared.log.groups() {
            replication.publish(&group);
        }
        let manager = replication.clone();
        replication.shared.tasks.spawn(manager.manage());
        replication
    }

    /// Writes `write` by `writer` into the target group and waits for the quorum until `deadline`.
    pub async fn write(
        &self,
        target: WriteTarget,
        writer: Writer,
        write: Write,
        deadline: Instant,
    ) -> Result<WriteOutcome, ReplicationError> {
        let group = self.resolve(target)?;
        let shared = self.shared.clone();
        let append_group = group.clone();
        let (seq, _) = tokio::task::spawn_blocking(move || shared.log.append(&append_group, &writer, &write))
            .await
            .map_err(|e| ReplicationError::Task(e.to_string()))??;
        failpoint("after_log_append");
        tracing::debug!(shard = %group, seq, "write appended");
        if let Some(cx) = ragmesh_telemetry::propagation::context_of(&tracing::Span::current()) {
            lock(&self.shared.traces).insert((group.clone(), seq), cx);
        }
        self.publish(&group);
        self.waker(&group).send_replace(seq);
        // Bound first: a `borrow()` temporary in the call's argument would hold the membership
        // watch's read lock through `reconcile`, which takes the registry's lock, while a
        // follower holding the registry's lock waits to publish on that watch (a deadlock seen
        // under load in replication::a_replica_killed_during_a_stream_of_acknowledged_writes_...).
        let membership = self.shared.registry.subscribe().borrow().clone();
        self.reconcile(&membership);

        let quorum = self.shared.config.write_quorum;
        let mut membership = self.shared.registry.subscribe();
        let reached = loop {
            let snapshot = membership.borrow_and_update().clone();
            let replicas = members(&snapshot, &group).count();
            let applied = members(&snapshot, &group).filter(|v| v.applied_seq >= seq).count();
            if decide::quorum_reached(quorum, replicas, applied) {
                break true;
            }
            tokio::select! {
                changed = membership.changed() => if changed.is_err() { break false },
                () = tokio::time::sleep_until(deadline) => break false,
                () = self.shared.shutdown.cancelled() => break false,
            }
        };
        let snapshot = self.shared.registry.subscribe().borrow().clone();
        let replicas = self.reports(&snapshot, &group, seq);
        if !reached {
            let applied_by: Vec<String> = replicas.iter().filter(|r| r.applied).map(|r| r.node.clone()).collect();
            let missing = replicas
                .iter()
                .filter(|r| !r.applied)
                .map(|r| if r.message.is_empty() { r.node.clone() } else { format!("{} ({})", r.node, r.message) })
                .collect();
            return Err(ReplicationError::QuorumNotReached {
                group,
                seq,
                applied: applied_by.len(),
                applied_by,
                missing,
                replicas: replicas.len(),
                quorum,
                needed: quorum.needed(replicas.len()),
            });
        }
        failpoint("after_forward");
        // The quorum reached the entry: it is decided, whether applied or refused as a whole
        // (which consumes it), so it is committed either way, as it would be after a restart.
        {
            let mut committed = lock(&self.shared.committed);
            let entry = committed.entry(group.clone()).or_default();
            *entry = (*entry).max(seq);
        }
        self.publish(&group);
        self.trim(&group).await;
        if let Some((kind, message)) = lock(&self.shared.refusals).remove(&(group.clone(), seq)) {
            return Err(ReplicationError::Refused { group, seq, kind, message });
        }
        Ok(WriteOutcome { shard: group, seq, replicas })
    }

    /// The trace entry `seq` of `group` was written in, while it is remembered.
    pub(super) fn trace_of(&self, group: &str, seq: u64) -> Option<ragmesh_telemetry::propagation::Context> {
        lock(&self.shared.traces).by_entry.get(&(group.to_owned(), seq)).cloned()
    }

    /// Records that the replicas of `group` refused entry `seq` as a whole, for its writer.
    pub(super) fn refused(&self, group: &str, seq: u64, kind: ragmesh_proto::ErrorKind, message: String) {
        let mut refusals = lock(&self.shared.refusals);
        refusals.insert((group.to_owned(), seq), (kind, message));
        while refusals.len() > MAX_REFUSALS {
            refusals.pop_first();
        }
    }

    fn resolve(&self, target: WriteTarget) -> Result<String, ReplicationError> {
        let registry = &self.shared.registry;
        let groups = registry.groups();
        let group = match target {
            WriteTarget::Node(node) if node.is_empty() => return Err(ReplicationError::NoTarget { groups }),
            WriteTarget::Shard(group) if group.is_empty() => return Err(ReplicationError::NoTarget { groups }),
            WriteTarget::Node(node) => match registry.get(&node) {
                Some(view) => view.record.group().to_owned(),
                None => {
                    let known = registry.snapshot().into_iter().map(|v| v.record.name.clone()).collect();
                    return Err(ReplicationError::UnknownNode { node, known });
                }
            },
            WriteTarget::Shard(group) if !groups.contains(&group) => {
                return Err(ReplicationError::UnknownGroup { group, groups });
            }
            WriteTarget::Shard(group) => group,
        };
        let snapshot = registry.subscribe().borrow().clone();
        if members(&snapshot, &group).next().is_none() {
            return Err(ReplicationError::NoReplicas { group });
        }
        Ok(group)
    }

    fn reports(&self, snapshot: &Membership, group: &str, seq: u64) -> Vec<ReplicaReport> {
        let errors = lock(&self.shared.last_errors);
        members(snapshot, group)
            .map(|view| {
                let applied = view.applied_seq >= seq;
                let message = if applied {
                    String::new()
                } else if view.state == NodeState::Down {
                    format!("node is down ({})", view.down_reason.clone().unwrap_or_default())
                } else {
                    errors.get(&view.record.name).cloned().unwrap_or_else(|| "not applied yet".to_owned())
                };
                ReplicaReport { node: view.record.name.clone(), applied, applied_seq: view.applied_seq, message }
            })
            .collect()
    }

    /// Tells the registry where `group`'s log stands.
    fn publish(&self, group: &str) {
        let state: LogState = self.shared.log.state(group);
        let committed = lock(&self.shared.committed).get(group).copied().unwrap_or(0);
        let log = GroupLog {
            last_seq: state.last,
            committed_seq: committed,
            first_seq: state.first,
            entries: state.entries(),
            bytes: state.bytes,
        };
        self.shared.registry.set_group_log(group, log);
    }

    /// Drops entries every replica applied, and the oldest beyond the bounds.
    async fn trim(&self, group: &str) {
        let snapshot = self.shared.registry.subscribe().borrow().clone();
        let Some(min_applied) = members(&snapshot, group).map(|v| v.applied_seq).min() else { return };
        let committed = lock(&self.shared.committed).get(group).copied().unwrap_or(0);
        let (shared, name) = (self.shared.clone(), group.to_owned());
        let config = self.shared.config;
        let trimmed = tokio::task::spawn_blocking(move || {
            shared.log.trim(&name, committed, min_applied, config.write_log_max_entries, config.write_log_max_bytes)
        })
        .await;
        match trimmed {
            Ok(Ok(_)) => self.publish(group),
            Ok(Err(err)) => tracing::warn!(shard = group, error = %err, "write log trim failed"),
            Err(err) => tracing::warn!(shard = group, error = %err, "write log trim task failed"),
        }
    }

    fn waker(&self, group: &str) -> watch::Sender<u64> {
        let mut wakers = lock(&self.shared.wakers);
        wakers.entry(group.to_owned()).or_insert_with(|| watch::Sender::new(0)).clone()
    }

    /// Keeps one follower per replica that is not down, as membership changes.
    async fn manage(self) {
        let mut membership = self.shared.registry.subscribe();
        loop {
            let snapshot = membership.borrow_and_update().clone();
            self.reconcile(&snapshot);
            tokio::select! {
                () = self.shared.shutdown.cancelled() => break,
                changed = membership.changed() => if changed.is_err() { break },
            }
        }
        for slot in lock(&self.shared.followers).values() {
            slot.cancel.cancel();
        }
    }

    fn reconcile(&self, snapshot: &Membership) {
        let registry = &self.shared.registry;
        let mut followers = lock(&self.shared.followers);
        followers.retain(|name, slot| {
            let keep = snapshot.get(name).is_some_and(|view| {
                view.state != NodeState::Down
                    && view.record.group() == slot.group
                    && registry.session(name) == slot.session
                    && !slot.done.load(std::sync::atomic::Ordering::SeqCst)
            });
            if !keep {
                slot.cancel.cancel();
            }
            keep
        });
        if self.shared.shutdown.is_cancelled() {
            return;
        }
        for view in snapshot.values() {
            let name = &view.record.name;
            if view.state == NodeState::Down || followers.contains_key(name) {
                continue;
            }
            let slot = FollowerSlot {
                session: registry.session(name),
                group: view.record.group().to_owned(),
                cancel: self.shared.shutdown.child_token(),
                done: Arc::default(),
            };
            let follower = Follower {
                replication: self.clone(),
                node: name.clone(),
                group: slot.group.clone(),
                cancel: slot.cancel.clone(),
                done: slot.done.clone(),
            };
            let span = tracing::info_span!("replication.follow", node.id = %name, shard = %slot.group);
            self.shared.tasks.spawn(tracing::Instrument::instrument(follower.run(), span));
            followers.insert(name.clone(), slot);
        }
    }

    /// Where each group stands, for `ListNodes`.
    pub fn log_state(&self, group: &str) -> LogState {
        self.shared.log.state(group)
    }
}

#[cfg(test)]
mod tests;
