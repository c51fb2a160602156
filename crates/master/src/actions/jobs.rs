//! Broadcast jobs: one action on many nodes, started at most `max_parallel` at a time, with no
//! new node started once more than `max_fail_percent` of the selected nodes failed, and an
//! outcome or a not-started reason for every selected node.
//!
//! The plan is a pure core: [`Job::start_next`] and [`Job::finish`] decide, over plain data,
//! which nodes start and when starting stops. [`JobTable`] keeps jobs durable: tree
//! `action_jobs` holds each job's header (key: sequence big-endian, then `0`) and one entry per
//! node (key: sequence, `1`, node name), each rewritten alone as the node moves, so a job of many
//! nodes costs one small write per step. Tree `action_jobs_meta` keeps the last sequence and the
//! unfinished jobs. A job unfinished when the master stopped is closed when it opens again: its
//! running nodes end `unknown` ("master restarted"), since the action may or may not have run;
//! its pending nodes end not started, since a node is written running before it is started.
//!
//! Retention: the newest `max_jobs` jobs are kept (an unfinished job is never pruned).
//! Progress is also published on a `tokio::sync::watch` per running job ([`JobTable::watch`]).
//!
//! Blocking (store I/O): call from `spawn_blocking`. The lock is never held across an `.await`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use ragmesh_store::StateStore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{RecordError, decode, decode_u64, encode};

/// Tree of job headers and node entries.
pub const TREE: &str = "action_jobs";
/// Tree of the last job sequence and the unfinished jobs.
pub const META_TREE: &str = "action_jobs_meta";
const LAST_SEQ: &[u8] = b"last_seq";
const ACTIVE_PREFIX: &[u8] = b"active:";
const HEADER: u8 = 0;
const ENTRY: u8 = 1;
/// Jobs kept at most by default.
pub const DEFAULT_MAX_JOBS: u64 = 1_000;
/// Status word of a node whose outcome was lost with a master restart.
pub const UNKNOWN: &str = "unknown";

/// How one node's call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOutcome {
    /// Status word (`ok`, `timeout`, `unavailable`, `error`, `unknown`, ...); all but `ok` fail.
    pub status: String,
    /// Why (empty when ok).
    pub message: String,
    /// How long the call took.
    pub duration_ms: u64,
    /// The encoded result, opaque here.
    #[serde(with = "super::base64_bytes")]
    pub result: Vec<u8>,
}

impl NodeOutcome {
    /// Whether this outcome counts as a failure (everything but `ok`).
    pub fn failed(&self) -> bool {
        self.status != "ok"
    }
}

/// Where one selected node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Not started yet.
    Pending,
    /// Started, no outcome yet.
    Running,
    /// Ended with an outcome.
    Done(NodeOutcome),
    /// Never started, and why.
    NotStarted {
        /// Why it was not started.
        reason: String,
    },
}

impl NodeState {
    /// Whether the node has its final state.
    pub fn is_final(&self) -> bool {
        matches!(self, NodeState::Done(_) | NodeState::NotStarted { .. })
    }
}

/// One selected node of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Node name.
    pub node: String,
    /// Where it is.
    pub state: NodeState,
}

/// How many nodes are where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Nodes selected.
    pub selected: usize,
    /// Not started yet.
    pub pending: usize,
    /// Running.
    pub running: usize,
    /// Ended ok.
    pub succeeded: usize,
    /// Ended with any other status.
    pub failed: usize,
    /// Never started.
    pub not_started: usize,
}

/// The header of a job: everything but its node entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    id: String,
    action: String,
    selector: String,
    created_ms: u64,
    max_parallel: usize,
    max_fail_percent: u8,
    nodes: usize,
    stop_reason: Option<String>,
    finished_ms: Option<u64>,
    /// Written since trace ids were kept; absent in older records.
    #[serde(default)]
    trace_id: Option<String>,
}

/// A broadcast job and its pure plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Job id (`job-<sequence>`).
    pub id: String,
    /// The action run.
    pub action: String,
    /// How the nodes were selected, for people (`--all`, `labels: zone=a`, ...).
    pub selector: String,
    /// When the job was created (unix ms).
    pub created_ms: u64,
    /// Nodes running at most at once (0: all at once).
    pub max_parallel: usize,
    /// Percent of the selected nodes that may fail before no new node is started (0..=100).
    pub max_fail_percent: u8,
    /// Every selected node, in selection order.
    pub nodes: Vec<NodeEntry>,
    /// Why starting stopped early, if it did.
    pub stop_reason: Option<String>,
    /// When every node had its final state (unix ms).
    pub finished_ms: Option<u64>,
    /// The trace of the call that started it, when that call was traced.
    pub trace_id: Option<String>,
}

impl Job {
    /// A job over `nodes` (duplicates dropped, order kept), all pending.
    pub fn new(
        id: String,
        action: String,
        selector: String,
        nodes: Vec<String>,
        max_parallel: usize,
        max_fail_percent: u8,
        now_ms: u64,
    ) -> Job {
        let mut seen = BTreeSet::new();
        let nodes = nodes
            .into_iter()
            .filter(|node| seen.insert(node.clone()))
            .map(|node| NodeEntry { node, state: NodeState::Pending })
            .collect();
        let mut job = Job {
            id,
            action,
            selector,
            created_ms: now_ms,
            max_parallel,
            max_fail_percent: max_fail_percent.min(100),
            nodes,
            stop_reason: None,
            finished_ms: None,
            trace_id: None,
        };
        job.close_if_done(now_ms);
        job
    }

    /// How many nodes are where.
    pub fn counters(&self) -> Counters {
        let mut counters = Counters { selected: self.nodes.len(), ..Counters::default() };
        for entry in &self.nodes {
            match &entry.state {
                NodeState::Pending => counters.pending += 1,
                NodeState::Running => counters.running += 1,
                NodeState::Done(outcome) if outcome.failed() => counters.failed += 1,
                NodeState::Done(_) => counters.succeeded += 1,
                NodeState::NotStarted { .. } => counters.not_started += 1,
            }
        }
        counters
    }

    /// Whether every node has its final state.
    pub fn is_finished(&self) -> bool {
        self.finished_ms.is_some()
    }

    /// Whether the job succeeded: finished with every node ok.
    pub fn all_ok(&self) -> bool {
        let counters = self.counters();
        self.is_finished() && counters.succeeded == counters.selected
    }

    /// Marks the next pending nodes running, as many as `max_parallel` allows, and returns them
    /// (the caller starts them). None once starting stopped.
    pub fn start_next(&mut self) -> Vec<String> {
        if self.stop_reason.is_some() {
            return Vec::new();
        }
        let limit = if self.max_parallel == 0 { usize::MAX } else { self.max_parallel };
        let mut running = self.counters().running;
        let mut started = Vec::new();
        for entry in &mut self.nodes {
            if running >= limit {
                break;
            }
            if entry.state == NodeState::Pending {
                entry.state = NodeState::Running;
                running += 1;
                started.push(entry.node.clone());
            }
        }
        started
    }

    /// Records `node`'s outcome; stops starting nodes once failures exceed the bound (the pending
    /// ones become not started). Returns the nodes whose state changed (empty when `node` was
    /// not running: a late or duplicate outcome is ignored).
    pub fn finish(&mut self, node: &str, outcome: NodeOutcome, now_ms: u64) -> Vec<String> {
        let Some(entry) = self.nodes.iter_mut().find(|e| e.node == node && e.state == NodeState::Running) else {
            return Vec::new();
        };
        entry.state = NodeState::Done(outcome);
        let mut changed = vec![node.to_owned()];
        let counters = self.counters();
        // Exact integer form of failed / selected > max_fail_percent / 100.
        let exceeded = counters.failed * 100 > usize::from(self.max_fail_percent) * counters.selected;
        if exceeded && self.stop_reason.is_none() {
            let reason = format!("max-fail-percent exceeded: {} of {} failed", counters.failed, counters.selected);
            changed.extend(self.stop_pending(&reason));
            self.stop_reason = Some(reason);
        }
        self.close_if_done(now_ms);
        changed
    }

    /// Ends the pending `node` as not started with `reason` (e.g. it is down when the job
    /// starts). Returns the nodes whose state changed (empty when `node` was not pending).
    pub fn skip(&mut self, node: &str, reason: &str, now_ms: u64) -> Vec<String> {
        let Some(entry) = self.nodes.iter_mut().find(|e| e.node == node && e.state == NodeState::Pending) else {
            return Vec::new();
        };
        entry.state = NodeState::NotStarted { reason: reason.to_owned() };
        self.close_if_done(now_ms);
        vec![node.to_owned()]
    }

    /// Ends every pending node as not started with `reason`; returns them.
    fn stop_pending(&mut self, reason: &str) -> Vec<String> {
        let mut stopped = Vec::new();
        for entry in &mut self.nodes {
            if entry.state == NodeState::Pending {
                entry.state = NodeState::NotStarted { reason: reason.to_owned() };
                stopped.push(entry.node.clone());
            }
        }
        stopped
    }

    /// Closes a job the master stopped during: running nodes end unknown, pending ones not
    /// started. Returns the nodes changed.
    fn close_after_restart(&mut self, now_ms: u64) -> Vec<String> {
        let mut changed = self.stop_pending("master restarted before this node was started");
        for entry in &mut self.nodes {
            if entry.state == NodeState::Running {
                entry.state = NodeState::Done(NodeOutcome {
                    status: UNKNOWN.to_owned(),
                    message: "master restarted while the action ran: check the node (`ragmeshctl action history`)"
                        .to_owned(),
                    duration_ms: 0,
                    result: Vec::new(),
                });
                changed.push(entry.node.clone());
            }
        }
        if self.stop_reason.is_none() {
            self.stop_reason = Some("master restarted".to_owned());
        }
        self.close_if_done(now_ms);
        changed
    }

    fn close_if_done(&mut self, now_ms: u64) {
        if self.finished_ms.is_none() && self.nodes.iter().all(|e| e.state.is_final()) {
            self.finished_ms = Some(now_ms);
        }
    }

    fn header(&self) -> Header {
        Header {
            id: self.id.clone(),
            action: self.action.clone(),
            selector: self.selector.clone(),
            created_ms: self.created_ms,
            max_parallel: self.max_parallel,
            max_fail_percent: self.max_fail_percent,
            nodes: self.nodes.len(),
            stop_reason: self.stop_reason.clone(),
            finished_ms: self.finished_ms,
            trace_id: self.trace_id.clone(),
        }
    }
}

/// Retention of the job table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobsConfig {
    /// Jobs kept at most (the newest; unfinished jobs are never pruned); at least 1.
    pub max_jobs: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self { max_jobs: DEFAULT_MAX_JOBS }
    }
}

fn job_id(sequence: u64) -> String {
    format!("job-{sequence}")
}

fn parse_id(id: &str) -> Option<u64> {
    id.strip_prefix("job-")?.parse().ok()
}

fn header_key(sequence: u64) -> Vec<u8> {
    let mut key = sequence.to_be_bytes().to_vec();
    key.push(HEADER);
    key
}

fn entry_key(sequence: u64, node: &str) -> Vec<u8> {
    let mut key = sequence.to_be_bytes().to_vec();
    key.push(ENTRY);
    key.extend_from_slice(node.as_bytes());
    key
}

fn active_key(sequence: u64) -> Vec<u8> {
    let mut key = ACTIVE_PREFIX.to_vec();
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

#[derive(Debug)]
struct State {
    last: u64,
    /// Lowest sequence possibly held.
    first: u64,
    /// Unfinished jobs.
    active: BTreeSet<u64>,
    /// Progress of the running jobs, by id.
    live: HashMap<String, watch::Sender<Job>>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn StateStore>,
    config: JobsConfig,
    state: Mutex<State>,
}

/// The durable job table; a clone shares it. See the module docs.
#[derive(Debug, Clone)]
pub struct JobTable {
    inner: Arc<Inner>,
}

impl JobTable {
    /// Opens the table and closes the jobs unfinished at the last stop (at `now_ms`). Blocking.
    pub fn open(store: Arc<dyn StateStore>, config: JobsConfig, now_ms: u64) -> Result<Self, RecordError> {
        let last = store.get(META_TREE, LAST_SEQ)?.as_deref().and_then(decode_u64).unwrap_or(0);
        let first = store.scan_from(TREE, &[], 1)?.first().and_then(|(key, _)| key.get(..8)).and_then(decode_u64);
        let mut active = BTreeSet::new();
        for (key, _) in store.scan(META_TREE)? {
            if let Some(sequence) = key.strip_prefix(ACTIVE_PREFIX).and_then(decode_u64) {
                active.insert(sequence);
            }
        }
        let config = JobsConfig { max_jobs: config.max_jobs.max(1) };
        let state = State { last, first: first.unwrap_or(last + 1), active: BTreeSet::new(), live: HashMap::new() };
        let table = JobTable { inner: Arc::new(Inner { store, config, state: Mutex::new(state) }) };
        for sequence in active {
            let store = table.inner.store.as_ref();
            match table.load(sequence) {
                Ok(mut job) => {
                    let changed = job.close_after_restart(now_ms);
                    tracing::warn!(job.id = %job.id, nodes = changed.len(), "job unfinished at the last stop closed");
                    table.persist(&job, &changed)?;
                }
                Err(RecordError::NoSuchJob { .. }) => {}
                Err(error) => return Err(error),
            }
            store.remove(META_TREE, &active_key(sequence))?;
        }
        table.prune(&mut table.lock())?;
        Ok(table)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates a job over `nodes` for the call traced as `trace_id`, durable before it returns;
    /// the caller drives it with the returned [`RunningJob`].
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        action: &str,
        selector: &str,
        nodes: Vec<String>,
        max_parallel: usize,
        max_fail_percent: u8,
        now_ms: u64,
        trace_id: Option<String>,
    ) -> Result<RunningJob, RecordError> {
        let store = self.inner.store.as_ref();
        let mut state = self.lock();
        let sequence = state.last + 1;
        store.put(META_TREE, LAST_SEQ, &sequence.to_be_bytes())?;
        state.last = sequence;
        state.first = state.first.min(sequence);
        let job = Job::new(
            job_id(sequence),
            action.to_owned(),
            selector.to_owned(),
            nodes,
            max_parallel,
            max_fail_percent,
            now_ms,
        );
        let job = Job { trace_id, ..job };
        if !job.is_finished() {
            store.put(META_TREE, &active_key(sequence), &[])?;
            state.active.insert(sequence);
        }
        let every: Vec<String> = job.nodes.iter().map(|e| e.node.clone()).collect();
        self.persist(&job, &every)?;
        let (progress, _) = watch::channel(job.clone());
        state.live.insert(job.id.clone(), progress.clone());
        self.prune(&mut state)?;
        tracing::info!(job.id = %job.id, action = action, nodes = every.len(), "broadcast job created");
        Ok(RunningJob { table: self.clone(), sequence, job, progress })
    }

    /// Writes the header and the entries of `changed` nodes.
    fn persist(&self, job: &Job, changed: &[String]) -> Result<(), RecordError> {
        let Some(sequence) = parse_id(&job.id) else { return Err(RecordError::NoSuchJob { id: job.id.clone() }) };
        let store = self.inner.store.as_ref();
        for entry in job.nodes.iter().filter(|e| changed.contains(&e.node)) {
            store.put(TREE, &entry_key(sequence, &entry.node), &encode(&entry.state))?;
        }
        store.put(TREE, &header_key(sequence), &encode(&job.header()))?;
        Ok(())
    }

    fn load(&self, sequence: u64) -> Result<Job, RecordError> {
        let store = self.inner.store.as_ref();
        let id = job_id(sequence);
        let Some(bytes) = store.get(TREE, &header_key(sequence))? else { return Err(RecordError::NoSuchJob { id }) };
        let header: Header = decode("job", &bytes)?;
        let prefix = entry_key(sequence, "");
        let mut nodes = Vec::with_capacity(header.nodes);
        for (key, value) in store.scan_from(TREE, &prefix, header.nodes)? {
            let Some(node) = key.strip_prefix(prefix.as_slice()) else { break };
            let state = decode("job entry", &value)?;
            nodes.push(NodeEntry { node: String::from_utf8_lossy(node).into_owned(), state });
        }
        Ok(Job {
            id: header.id,
            action: header.action,
            selector: header.selector,
            created_ms: header.created_ms,
            max_parallel: header.max_parallel,
            max_fail_percent: header.max_fail_percent,
            nodes,
            stop_reason: header.stop_reason,
            finished_ms: header.finished_ms,
            trace_id: header.trace_id,
        })
    }

    /// Removes the oldest finished jobs beyond `max_jobs`.
    fn prune(&self, state: &mut State) -> Result<(), RecordError> {
        let store = self.inner.store.as_ref();
        while (state.last + 1).saturating_sub(state.first) > self.inner.config.max_jobs
            && !state.active.contains(&state.first)
        {
            let sequence = state.first;
            let mut keys = vec![header_key(sequence)];
            if let Some(bytes) = store.get(TREE, &header_key(sequence))? {
                let nodes = decode::<Header>("job", &bytes).map_or(0, |h| h.nodes);
                let prefix = entry_key(sequence, "");
                let entries = store.scan_from(TREE, &prefix, nodes)?;
                keys.extend(entries.into_iter().map(|(key, _)| key).filter(|key| key.starts_with(&prefix)));
            }
            for key in keys {
                store.remove(TREE, &key)?;
            }
            state.first += 1;
        }
        Ok(())
    }

    /// A job's current state: live if it runs, else as stored.
    pub fn get(&self, id: &str) -> Result<Job, RecordError> {
        if let Some(progress) = self.lock().live.get(id) {
            return Ok(progress.borrow().clone());
        }
        let sequence = parse_id(id).ok_or_else(|| RecordError::NoSuchJob { id: id.to_owned() })?;
        self.load(sequence)
    }

    /// Follows a job: the receiver sees every published state of a running job and closes when
    /// it ends; for a job already ended, a receiver holding its final state, already closed.
    pub fn watch(&self, id: &str) -> Result<watch::Receiver<Job>, RecordError> {
        if let Some(progress) = self.lock().live.get(id) {
            return Ok(progress.subscribe());
        }
        let (_, receiver) = watch::channel(self.get(id)?);
        Ok(receiver)
    }
}

/// A job being driven: the caller asks which nodes to start, starts them, and reports each
/// outcome. Every step is durable before it returns and published to watchers.
#[derive(Debug)]
pub struct RunningJob {
    table: JobTable,
    sequence: u64,
    job: Job,
    progress: watch::Sender<Job>,
}

impl RunningJob {
    /// The job now.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// Marks the next nodes running (durably) and returns them: start each now.
    pub fn start_next(&mut self) -> Result<Vec<String>, RecordError> {
        let started = self.job.start_next();
        if !started.is_empty() {
            self.table.persist(&self.job, &started)?;
            self.progress.send_replace(self.job.clone());
        }
        Ok(started)
    }

    /// Records `node`'s outcome (durably); when it was the last, the job is finished.
    pub fn finish(&mut self, node: &str, outcome: NodeOutcome, now_ms: u64) -> Result<(), RecordError> {
        let changed = self.job.finish(node, outcome, now_ms);
        self.commit(changed)
    }

    /// Ends the pending `node` as not started with `reason` (durably), see [`Job::skip`].
    pub fn skip(&mut self, node: &str, reason: &str, now_ms: u64) -> Result<(), RecordError> {
        let changed = self.job.skip(node, reason, now_ms);
        self.commit(changed)
    }

    /// Persists and publishes the `changed` nodes; closes the job when it is finished.
    fn commit(&mut self, changed: Vec<String>) -> Result<(), RecordError> {
        if changed.is_empty() {
            return Ok(());
        }
        self.table.persist(&self.job, &changed)?;
        if self.job.is_finished() {
            self.table.inner.store.remove(META_TREE, &active_key(self.sequence))?;
            self.table.lock().active.remove(&self.sequence);
            tracing::info!(job.id = %self.job.id, all_ok = self.job.all_ok(), "broadcast job finished");
        }
        self.progress.send_replace(self.job.clone());
        Ok(())
    }
}

impl Drop for RunningJob {
    /// Watchers of a job no longer driven see their stream end; an unfinished job stays active
    /// in the store and is closed at the next start.
    fn drop(&mut self) {
        self.table.lock().live.remove(&self.job.id);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ragmesh_store::SledStore;

    use super::*;

    fn store(dir: &tempfile::TempDir) -> Arc<dyn StateStore> {
        Arc::new(SledStore::open_waiting(dir.path()).expect("open sled"))
    }

    fn outcome(ok: bool) -> NodeOutcome {
        let (status, message) = if ok { ("ok", "") } else { ("error", "exit code 1") };
        NodeOutcome { status: status.into(), message: message.into(), duration_ms: 5, result: b"out".to_vec() }
    }

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("n{i}")).collect()
    }

    fn running(job: &Job) -> Vec<String> {
        job.nodes.iter().filter(|e| e.state == NodeState::Running).map(|e| e.node.clone()).collect()
    }

    #[test]
    fn starting_stops_once_more_than_the_allowed_percent_failed() {
        let mut job = Job::new("job-1".into(), "a".into(), "--all".into(), names(4), 1, 25, 0);
        assert_eq!(job.start_next(), ["n0"]);
        assert!(job.start_next().is_empty(), "max_parallel 1: nothing more while n0 runs");
        job.finish("n0", outcome(false), 1);
        assert_eq!(job.stop_reason, None, "1 of 4 is 25%: not more than allowed");
        assert_eq!(job.start_next(), ["n1"]);
        job.finish("n1", outcome(false), 2);
        let reason = "max-fail-percent exceeded: 2 of 4 failed";
        assert_eq!(job.stop_reason.as_deref(), Some(reason));
        assert!(job.start_next().is_empty());
        for node in ["n2", "n3"] {
            let entry = job.nodes.iter().find(|e| e.node == node).expect("entry");
            assert_eq!(entry.state, NodeState::NotStarted { reason: reason.into() });
        }
        assert_eq!(job.finished_ms, Some(2));
        assert!(!job.all_ok());
        let counters = job.counters();
        assert_eq!((counters.failed, counters.not_started, counters.selected), (2, 2, 4));
        assert!(job.finish("n1", outcome(true), 3).is_empty(), "a duplicate outcome is ignored");
    }

    #[test]
    fn a_node_down_at_the_start_is_not_started_and_never_runs() {
        let mut job = Job::new("job-1".into(), "a".into(), "--all".into(), names(2), 0, 100, 0);
        assert_eq!(job.skip("n1", "node is down", 1), ["n1"]);
        assert!(job.skip("n1", "again", 1).is_empty(), "only a pending node is skipped");
        assert_eq!(job.start_next(), ["n0"]);
        assert!(job.skip("n0", "late", 2).is_empty(), "a running node is not skipped");
        job.finish("n0", outcome(true), 3);
        assert_eq!(job.finished_ms, Some(3));
        assert_eq!(job.nodes[1].state, NodeState::NotStarted { reason: "node is down".into() });
        let counters = job.counters();
        assert_eq!((counters.succeeded, counters.not_started), (1, 1));
        let mut all_down = Job::new("job-2".into(), "a".into(), "x".into(), names(1), 0, 100, 0);
        all_down.skip("n0", "node is down", 5);
        assert_eq!(all_down.finished_ms, Some(5), "a job whose every node is down is finished");
    }

    #[test]
    fn an_empty_selection_is_finished_at_once_and_duplicates_count_once() {
        let job = Job::new("job-1".into(), "a".into(), "none".into(), Vec::new(), 2, 0, 7);
        assert_eq!(job.finished_ms, Some(7));
        let job = Job::new("job-2".into(), "a".into(), "x".into(), vec!["a".into(), "b".into(), "a".into()], 0, 0, 7);
        assert_eq!(job.counters().selected, 2);
    }

    proptest! {
        /// Whatever the outcomes and the order nodes finish in: never more than max_parallel run,
        /// no node starts after the stop, the stop comes exactly when failures exceed the bound,
        /// and every selected node ends with an outcome or a not-started reason.
        #[test]
        fn the_plan_keeps_its_promises(
            count in 0usize..16,
            max_parallel in 0usize..5,
            max_fail_percent in 0u8..=100,
            steps in proptest::collection::vec((any::<u8>(), any::<bool>()), 0..48),
        ) {
            let mut job = Job::new("job-1".into(), "a".into(), "--all".into(), names(count), max_parallel, max_fail_percent, 0);
            let mut steps = steps.into_iter();
            let mut stopped = false;
            for now in 1..=(4 * count as u64 + 4) {
                let started = job.start_next();
                prop_assert!(!stopped || started.is_empty(), "a node started after the stop");
                let live = running(&job);
                if max_parallel > 0 {
                    prop_assert!(live.len() <= max_parallel, "{} running > {}", live.len(), max_parallel);
                }
                if live.is_empty() {
                    break;
                }
                let (pick, ok) = steps.next().unwrap_or((0, true));
                let node = &live[usize::from(pick) % live.len()];
                job.finish(node, outcome(ok), now);
                let counters = job.counters();
                let exceeded = counters.failed * 100 > usize::from(max_fail_percent) * counters.selected;
                prop_assert_eq!(job.stop_reason.is_some(), exceeded || stopped);
                if exceeded {
                    prop_assert_eq!(counters.pending, 0, "the pending nodes were not started");
                }
                stopped = job.stop_reason.is_some();
            }
            prop_assert!(job.is_finished());
            let counters = job.counters();
            prop_assert_eq!(counters.pending + counters.running, 0);
            prop_assert_eq!(counters.succeeded + counters.failed + counters.not_started, count);
            for entry in &job.nodes {
                if let NodeState::NotStarted { reason } = &entry.state {
                    prop_assert_eq!(Some(reason), job.stop_reason.as_ref());
                }
            }
            if job.stop_reason.is_none() {
                prop_assert_eq!(counters.not_started, 0);
            }
        }
    }

    #[test]
    fn a_job_is_durable_and_one_cut_short_by_a_restart_is_closed_honestly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = {
            let table = JobTable::open(store(&dir), JobsConfig::default(), 0).expect("open");
            let mut running = table.create("reindex", "labels: zone=a", names(4), 2, 100, 10, None).expect("create");
            assert_eq!(running.start_next().expect("start"), ["n0", "n1"]);
            running.finish("n0", outcome(true), 11).expect("finish");
            assert_eq!(running.start_next().expect("start"), ["n2"]);
            running.job().id.clone()
            // The master stops here: n1 and n2 run, n3 was never started.
        };
        let table = JobTable::open(store(&dir), JobsConfig::default(), 50).expect("reopen");
        let job = table.get(&id).expect("the job outlives the master");
        assert_eq!((job.action.as_str(), job.selector.as_str()), ("reindex", "labels: zone=a"));
        assert_eq!(job.finished_ms, Some(50));
        assert_eq!(job.nodes[0].state, NodeState::Done(outcome(true)));
        for entry in &job.nodes[1..3] {
            let NodeState::Done(outcome) = &entry.state else { panic!("{entry:?}") };
            assert_eq!(outcome.status, UNKNOWN);
            assert!(outcome.message.contains("master restarted"), "{}", outcome.message);
        }
        assert!(matches!(&job.nodes[3].state, NodeState::NotStarted { reason } if reason.contains("master restarted")));
        // Closed once: another restart changes nothing, and new jobs get new ids.
        drop(table);
        let table = JobTable::open(store(&dir), JobsConfig::default(), 90).expect("reopen");
        assert_eq!(table.get(&id).expect("get"), job);
        let next = table.create("reindex", "--all", names(1), 1, 0, 100, None).expect("create");
        assert_eq!(next.job().id, "job-2");
    }

    #[tokio::test]
    async fn watchers_see_progress_and_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = JobTable::open(store(&dir), JobsConfig::default(), 0).expect("open");
        let mut running = table.create("compact", "--all", names(2), 0, 100, 1, None).expect("create");
        let id = running.job().id.clone();
        let mut watcher = table.watch(&id).expect("watch");
        assert_eq!(watcher.borrow_and_update().counters().pending, 2);
        running.start_next().expect("start");
        watcher.changed().await.expect("a change");
        assert_eq!(watcher.borrow_and_update().counters().running, 2);
        running.finish("n0", outcome(true), 2).expect("finish");
        running.finish("n1", outcome(false), 3).expect("finish");
        watcher.changed().await.expect("a change");
        let last = watcher.borrow_and_update().clone();
        assert_eq!((last.counters().succeeded, last.counters().failed, last.finished_ms), (1, 1, Some(3)));
        drop(running);
        assert!(watcher.changed().await.is_err(), "the stream ends with the job");
        let late = table.watch(&id).expect("watch a finished job");
        assert_eq!(*late.borrow(), last, "a late watcher gets the stored final state");
        assert!(matches!(table.watch("job-9"), Err(RecordError::NoSuchJob { .. })));
        assert!(matches!(table.get("nonsense"), Err(RecordError::NoSuchJob { .. })));
    }

    #[test]
    fn retention_keeps_the_newest_jobs_and_never_an_unfinished_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir);
        let table = JobTable::open(store.clone(), JobsConfig { max_jobs: 2 }, 0).expect("open");
        let mut unfinished = table.create("a", "--all", names(3), 1, 100, 0, None).expect("create");
        unfinished.start_next().expect("start");
        for _ in 0..3 {
            let mut job = table.create("a", "--all", names(3), 0, 100, 0, None).expect("create");
            for node in job.start_next().expect("start") {
                job.finish(&node, outcome(true), 1).expect("finish");
            }
        }
        assert!(table.get("job-1").is_ok(), "job-1 runs: kept beyond the bound");
        assert!(table.get("job-2").is_ok(), "pruning stops at the unfinished job-1");
        unfinished.finish("n0", outcome(true), 2).expect("finish");
        unfinished.start_next().expect("start");
        unfinished.finish("n1", outcome(true), 3).expect("finish");
        unfinished.start_next().expect("start");
        unfinished.finish("n2", outcome(true), 4).expect("finish");
        drop(unfinished);
        // The next job prunes down to the bound: job-4 and job-5 remain.
        table.create("a", "--all", Vec::new(), 1, 0, 5, None).expect("create");
        for gone in ["job-1", "job-2", "job-3"] {
            assert!(matches!(table.get(gone), Err(RecordError::NoSuchJob { .. })), "{gone} pruned");
        }
        assert!(table.get("job-4").is_ok() && table.get("job-5").is_ok());
        let held: BTreeSet<u64> =
            store.scan(TREE).expect("scan").iter().filter_map(|(k, _)| k.get(..8).and_then(decode_u64)).collect();
        assert_eq!(held, BTreeSet::from([4, 5]), "pruned jobs leave no entries behind");
    }
}
