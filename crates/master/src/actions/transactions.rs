//! The coordinator driver of two-phase commit: it runs one pure
//! [`ragmesh_coordinator::coordinator::Coordinator`] per transaction, performing its effects in
//! order (log writes on the blocking pool, prepares and decisions to the participants over a
//! [`Transport`]) and feeding back votes, acks and clock ticks.
//!
//! Rules kept here: the decision is logged (durably, [`CoordinatorLog::write_decision`]) before
//! anyone hears it, because the machine only emits `SendDecision` after `DecisionLogged`; a
//! participant that cannot be reached at prepare votes no (abort everywhere); decisions are
//! re-sent on the machine's backoff until every participant acknowledges. For a write part,
//! once commit is logged the write is appended to its group's write log (replication: upserts
//! and deletes are idempotent, so appending again after a crash is harmless) before any
//! decision goes out. What a transaction writes is kept in tree `action_tx_plans` from its
//! start, so a restarted master can finish it ([`Transactions::recover`]).
//!
//! Crash points for recovery tests ([`failpoint`]): `coordinator.before_decision_logged` (every
//! vote in, nothing logged: presumed abort), `coordinator.after_decision_logged` (logged, nobody
//! told), `coordinator.after_ack` (the first acknowledgement received, others outstanding).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use prost::Message as _;
use ragmesh_actions::wire::mask_result;
use ragmesh_coordinator::coordinator::{Coordinator, CoordinatorConfig, Effect, Input, Phase, TxStatus};
use ragmesh_coordinator::log::CoordinatorLog;
use ragmesh_coordinator::{CoordinatorError, Decision, TxId, Vote};
use ragmesh_proto::v1;
use ragmesh_server::failpoint;
use ragmesh_store::StateStore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::unix_now_ms;

/// Tree of what each transaction writes (and for whom), kept from its start.
pub const PLANS_TREE: &str = "action_tx_plans";
/// Tree of what each participant answered (votes, step results, reasons), kept when the
/// decision is logged and when the transaction ends, so `GetTransaction` still says why after
/// the driver is gone or the master restarted. Not needed for safety: the log decides.
pub const DETAILS_TREE: &str = "action_tx_details";
/// Vote deadline when the caller gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest vote deadline accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// The start of a participant's message while its decision is not acknowledged.
const NOT_ACKED: &str = "decision not acknowledged yet";
/// How long a finished transaction stays readable (`GetTransaction`) before it is compacted.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How often the driver feeds the machine a clock tick.
const TICK: Duration = Duration::from_millis(100);

/// How the driver reaches participants and the write log.
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Asks `node` to prepare its part of `tx`; `Err` is a transport or node failure (message).
    fn prepare(
        &self,
        node: &str,
        tx: TxId,
        operation: v1::TransactionOperation,
        deadline_ms: u64,
    ) -> BoxFuture<'static, Result<v1::PrepareTransactionResponse, String>>;
    /// Tells `node` the logged decision of `tx`.
    fn decide(
        &self,
        node: &str,
        tx: TxId,
        decision: Decision,
    ) -> BoxFuture<'static, Result<v1::DecideTransactionResponse, String>>;
    /// Appends a committed write part to the write log of group `shard` (idempotent effect).
    fn apply_write(&self, plan: &Plan, shard: &str, write: v1::DocumentWrite)
    -> BoxFuture<'static, Result<(), String>>;
}

/// What a transaction writes and for whom: durable from its start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The caller's subject.
    pub subject: String,
    /// The caller's tenant.
    pub tenant: String,
    /// Write parts: group and the encoded `DocumentWrite` (base64).
    pub writes: Vec<(String, String)>,
    /// Each participant's shard group, for a write part.
    pub shards: BTreeMap<String, String>,
    /// The caller's capabilities (signed into the context the participants receive).
    #[serde(default)]
    pub capabilities: Vec<ragmesh_auth::Capability>,
    /// The trace of the call that started it, when that call was traced.
    #[serde(default)]
    pub trace_id: Option<String>,
}

impl Plan {
    fn decoded_writes(&self) -> Vec<(String, v1::DocumentWrite)> {
        let mut out = Vec::new();
        for (shard, encoded) in &self.writes {
            let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap_or_default();
            if let Ok(write) = v1::DocumentWrite::decode(bytes.as_slice()) {
                out.push((shard.clone(), write));
            }
        }
        out
    }

    /// A plan for the caller with these write parts.
    pub fn new(
        subject: &str,
        tenant: &str,
        writes: &[(String, v1::DocumentWrite)],
        shards: BTreeMap<String, String>,
    ) -> Self {
        let writes = writes
            .iter()
            .map(|(shard, write)| {
                (shard.clone(), base64::engine::general_purpose::STANDARD.encode(write.encode_to_vec()))
            })
            .collect();
        Plan {
            subject: subject.to_owned(),
            tenant: tenant.to_owned(),
            writes,
            shards,
            capabilities: Vec::new(),
            trace_id: None,
        }
    }
}

/// What the driver knows of one participant beyond the machine's vote and ack.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detail {
    /// Its vote as it answered (the machine ignores votes after a decision; this keeps them).
    pub vote: Option<Vote>,
    /// Result of its prepare step.
    pub prepare: Option<v1::ActionResult>,
    /// Result of its commit or abort step.
    pub decide: Option<v1::ActionResult>,
    /// Why no, or why it has not answered.
    pub message: String,
}

/// The stored form of the details of a transaction ([`DETAILS_TREE`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StoredDetails {
    message: String,
    nodes: BTreeMap<String, StoredDetail>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StoredDetail {
    /// `Some(true)` yes, `Some(false)` no.
    vote: Option<bool>,
    message: String,
    /// Encoded `ActionResult`s, base64.
    prepare: Option<String>,
    decide: Option<String>,
}

/// The plan stored for `tx` (empty when none was, or unreadable).
fn stored_plan(store: &dyn StateStore, tx: TxId) -> Result<Plan, TxError> {
    Ok(store.get(PLANS_TREE, &tx.key())?.and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default())
}

fn encode_details(details: &BTreeMap<String, Detail>, message: &str) -> Vec<u8> {
    let b64 = |result: &Option<v1::ActionResult>| {
        result.as_ref().map(|r| base64::engine::general_purpose::STANDARD.encode(r.encode_to_vec()))
    };
    let nodes = details
        .iter()
        .map(|(node, d)| {
            let stored = StoredDetail {
                vote: d.vote.map(|v| v == Vote::Yes),
                message: d.message.clone(),
                prepare: b64(&d.prepare),
                decide: b64(&d.decide),
            };
            (node.clone(), stored)
        })
        .collect();
    serde_json::to_vec(&StoredDetails { message: message.to_owned(), nodes }).expect("plain fields serialize")
}

/// The details stored for a transaction (empty when none were, or unreadable).
fn decode_details(bytes: Option<&[u8]>) -> (BTreeMap<String, Detail>, String) {
    let stored: StoredDetails = bytes.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
    let result = |text: &Option<String>| {
        let bytes = base64::engine::general_purpose::STANDARD.decode(text.as_deref()?).ok()?;
        v1::ActionResult::decode(bytes.as_slice()).ok()
    };
    let details = stored
        .nodes
        .into_iter()
        .map(|(node, d)| {
            let detail = Detail {
                vote: d.vote.map(|yes| if yes { Vote::Yes } else { Vote::No }),
                prepare: result(&d.prepare),
                decide: result(&d.decide),
                message: d.message,
            };
            (node, detail)
        })
        .collect();
    (details, stored.message)
}

/// A transaction as its driver publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TxView {
    /// The machine's status.
    pub status: TxStatus,
    /// Per participant.
    pub details: BTreeMap<String, Detail>,
    /// Group of each write participant.
    pub shards: BTreeMap<String, String>,
    /// Why it aborted, or what it waits for.
    pub message: String,
    /// The trace of the call that started it.
    pub trace_id: Option<String>,
}

/// Where drivers run and how they reach participants.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Participants and the write log.
    pub transport: Arc<dyn Transport>,
    /// Drivers are tracked here (drained on shutdown).
    pub tasks: tokio_util::task::TaskTracker,
    /// Stops every driver (a transaction left unfinished is resumed at the next start).
    pub shutdown: CancellationToken,
}

/// The driven transactions and their log; a clone shares them.
#[derive(Debug, Clone)]
pub struct Transactions {
    log: CoordinatorLog,
    store: Arc<dyn StateStore>,
    live: Arc<Mutex<HashMap<TxId, watch::Receiver<TxView>>>>,
    config: CoordinatorConfig,
}

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The log failed.
    #[error(transparent)]
    Log(#[from] CoordinatorError),
    /// The store failed.
    #[error("transaction plans: {0}")]
    Store(#[from] ragmesh_store::StoreError),
    /// A blocking task failed.
    #[error("transaction log task failed: {0}")]
    Task(String),
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, TxError> + Send + 'static) -> Result<T, TxError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| TxError::Task(e.to_string()))?
}

impl Transactions {
    /// The driver over the coordinator log in `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Transactions {
            log: CoordinatorLog::new(store.clone()),
            store,
            live: Arc::default(),
            config: CoordinatorConfig::default(),
        }
    }

    /// With other resend timers (tests).
    pub fn with_config(mut self, config: CoordinatorConfig) -> Self {
        self.config = config;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TxId, watch::Receiver<TxView>>> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts transaction `tx` over `operations` (participant -> its part) with votes due by
    /// `deadline_ms`: the plan is stored, then the driver runs on `tasks` until every
    /// participant acknowledged or `shutdown`. `secrets` (per participant, never stored) are
    /// masked in what the participants answer. Returns its published view.
    pub async fn start(
        &self,
        tx: TxId,
        operations: BTreeMap<String, v1::TransactionOperation>,
        plan: Plan,
        deadline_ms: u64,
        secrets: BTreeMap<String, Vec<String>>,
        runtime: &Runtime,
    ) -> Result<watch::Receiver<TxView>, TxError> {
        let store = self.store.clone();
        let stored = serde_json::to_vec(&plan).expect("a plan of plain fields serializes");
        blocking(move || Ok(store.put(PLANS_TREE, &tx.key(), &stored)?)).await?;
        let participants: Vec<String> = operations.keys().cloned().collect();
        let mut machine = Coordinator::new(tx, &participants, deadline_ms, self.config);
        let effects = machine.handle(Input::Start, unix_now_ms());
        let resumed = Resumed { secrets, ..Resumed::default() };
        Ok(self.spawn(machine, effects, operations, plan, resumed, runtime))
    }

    /// Resumes every unfinished transaction of the log (at start-up): a logged decision is
    /// re-sent (after re-appending committed writes), no decision aborts. Returns how many.
    pub async fn recover(&self, runtime: &Runtime) -> Result<usize, TxError> {
        let (log, store, config) = (self.log.clone(), self.store.clone(), self.config);
        let recovered = blocking(move || {
            let mut out = Vec::new();
            for (tx, machine, effects) in log.recover(config, unix_now_ms())? {
                let plan = stored_plan(store.as_ref(), tx)?;
                let (details, message) = decode_details(store.get(DETAILS_TREE, &tx.key())?.as_deref());
                out.push((machine, effects, plan, Resumed { details, message, secrets: BTreeMap::new() }));
            }
            Ok(out)
        })
        .await?;
        let count = recovered.len();
        for (machine, effects, plan, resumed) in recovered {
            tracing::info!(tx = %machine.tx(), phase = machine.phase().as_str(), "transaction resumed after restart");
            self.spawn(machine, effects, BTreeMap::new(), plan, resumed, runtime);
        }
        Ok(count)
    }

    fn spawn(
        &self,
        machine: Coordinator,
        effects: Vec<Effect>,
        operations: BTreeMap<String, v1::TransactionOperation>,
        plan: Plan,
        resumed: Resumed,
        runtime: &Runtime,
    ) -> watch::Receiver<TxView> {
        let tx = machine.tx();
        let view = TxView {
            status: machine.status(),
            details: resumed.details.clone(),
            shards: plan.shards.clone(),
            message: resumed.message.clone(),
            trace_id: plan.trace_id.clone(),
        };
        let (publish, receiver) = watch::channel(view);
        self.lock().insert(tx, receiver.clone());
        let driver = Driver {
            log: self.log.clone(),
            store: self.store.clone(),
            machine,
            operations,
            plan,
            transport: runtime.transport.clone(),
            publish,
            details: resumed.details,
            secrets: resumed.secrets,
            writes_applied: false,
            appended: BTreeSet::new(),
            message: resumed.message,
        };
        let live = self.live.clone();
        let shutdown = runtime.shutdown.clone();
        // The driver's calls belong to the trace of the call that started it (none at recovery).
        let span = tracing::Span::current();
        runtime.tasks.spawn(
            async move {
                driver.run(effects, shutdown).await;
                live.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&tx);
            }
            .instrument(span),
        );
        receiver
    }

    /// The live view of `tx` while it is driven.
    pub fn live(&self, tx: TxId) -> Option<TxView> {
        self.lock().get(&tx).map(|r| r.borrow().clone())
    }

    /// `tx` as it stands: live, else from the log.
    pub async fn get(&self, tx: TxId) -> Result<Option<TxView>, TxError> {
        if let Some(view) = self.live(tx) {
            return Ok(Some(view));
        }
        let (log, store) = (self.log.clone(), self.store.clone());
        blocking(move || {
            let Some(record) = log.get(tx)? else { return Ok(None) };
            let plan = stored_plan(store.as_ref(), tx)?;
            let (details, message) = decode_details(store.get(DETAILS_TREE, &tx.key())?.as_deref());
            Ok(Some(TxView {
                status: TxStatus::from_record(&record),
                details,
                shards: plan.shards,
                message,
                trace_id: plan.trace_id,
            }))
        })
        .await
    }

    /// Every transaction kept: live ones as driven, the others from the log.
    pub async fn list(&self) -> Result<Vec<TxView>, TxError> {
        let (log, store) = (self.log.clone(), self.store.clone());
        let records = blocking(move || {
            let mut out = Vec::new();
            for record in log.records()? {
                let details = store.get(DETAILS_TREE, &record.tx.key())?;
                let plan = stored_plan(store.as_ref(), record.tx)?;
                out.push((record, details, plan));
            }
            Ok(out)
        })
        .await?;
        let mut views = Vec::with_capacity(records.len());
        for (record, stored, plan) in records {
            let view = self.live(record.tx).unwrap_or_else(|| {
                let (details, message) = decode_details(stored.as_deref());
                TxView {
                    status: TxStatus::from_record(&record),
                    details,
                    shards: plan.shards,
                    message,
                    trace_id: plan.trace_id,
                }
            });
            views.push(view);
        }
        Ok(views)
    }

    /// Removes transactions finished before `now_ms - retention_ms`, with their plans; returns
    /// how many. Unfinished ones are never removed. Blocking.
    pub fn compact(&self, now_ms: u64, retention_ms: u64) -> Result<usize, TxError> {
        let horizon = now_ms.saturating_sub(retention_ms);
        for record in self.log.records()? {
            if record.finished_ms.is_some_and(|finished| finished < horizon) {
                self.store.remove(PLANS_TREE, &record.tx.key())?;
                self.store.remove(DETAILS_TREE, &record.tx.key())?;
            }
        }
        Ok(self.log.compact(now_ms, retention_ms)?)
    }

    /// The decision to give a participant in doubt about `tx`: `None` while it is still being
    /// prepared here (it will hear), else the logged decision or abort (presumed abort).
    pub async fn decision_for(&self, tx: TxId) -> Result<Option<Decision>, TxError> {
        if let Some(view) = self.live(tx) {
            return Ok(view.status.decision);
        }
        let log = self.log.clone();
        blocking(move || Ok(Some(log.decision_for(tx)?))).await
    }
}

/// What a participant call came back with.
enum Event {
    Voted { node: String, answer: Result<v1::PrepareTransactionResponse, String> },
    Decided { node: String, decision: Decision, answer: Result<v1::DecideTransactionResponse, String> },
}

/// What a driver starts from besides its machine: the details kept before a restart, and the
/// secrets to mask (known only to the driver that started the transaction).
#[derive(Debug, Default)]
struct Resumed {
    details: BTreeMap<String, Detail>,
    message: String,
    secrets: BTreeMap<String, Vec<String>>,
}

struct Driver {
    log: CoordinatorLog,
    store: Arc<dyn StateStore>,
    machine: Coordinator,
    operations: BTreeMap<String, v1::TransactionOperation>,
    plan: Plan,
    transport: Arc<dyn Transport>,
    publish: watch::Sender<TxView>,
    details: BTreeMap<String, Detail>,
    /// Per participant, values masked in its answers.
    secrets: BTreeMap<String, Vec<String>>,
    writes_applied: bool,
    /// Write parts (by their index in the plan) already in their group's log: a retry after
    /// another part failed appends only the missing ones.
    appended: BTreeSet<usize>,
    message: String,
}

impl Driver {
    async fn run(mut self, effects: Vec<Effect>, shutdown: CancellationToken) {
        let tx = self.machine.tx();
        let mut pending: VecDeque<Effect> = effects.into();
        let mut calls: JoinSet<Event> = JoinSet::new();
        let mut in_flight: BTreeSet<(bool, String)> = BTreeSet::new();
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Some(effect) = pending.pop_front() {
                match effect {
                    Effect::LogBegin(record) => {
                        let log = self.log.clone();
                        if let Err(error) = blocking(move || Ok(log.write_begin(&record)?)).await {
                            // Not needed for safety (unknown means abort); the status is poorer.
                            tracing::warn!(tx = %tx, %error, "transaction begin not logged");
                        }
                    }
                    Effect::LogDecision(record) => {
                        let Some(decision) = record.decision else { continue };
                        self.store_details().await;
                        failpoint::crash_at("coordinator.before_decision_logged");
                        let log = self.log.clone();
                        match blocking(move || Ok(log.write_decision(&record, unix_now_ms())?)).await {
                            Ok(()) => {
                                failpoint::crash_at("coordinator.after_decision_logged");
                                pending.extend(self.machine.handle(Input::DecisionLogged { decision }, unix_now_ms()))
                            }
                            // Re-emitted on a later tick; nothing is sent before it is logged.
                            Err(error) => tracing::error!(tx = %tx, %error, "transaction decision not logged yet"),
                        }
                    }
                    Effect::SendPrepare { node, deadline_ms } => {
                        if !in_flight.insert((true, node.clone())) {
                            continue;
                        }
                        let operation = self.operations.get(&node).cloned().unwrap_or_default();
                        let call = self.transport.prepare(&node, tx, operation, deadline_ms);
                        calls.spawn(async move { Event::Voted { node, answer: call.await } }.in_current_span());
                    }
                    Effect::SendDecision { node, decision } => {
                        if decision == Decision::Commit && !self.writes_applied && !self.apply_writes().await {
                            // Tried again when the machine re-sends the decision.
                            continue;
                        }
                        if !in_flight.insert((false, node.clone())) {
                            continue;
                        }
                        let call = self.transport.decide(&node, tx, decision);
                        calls.spawn(
                            async move { Event::Decided { node, decision, answer: call.await } }.in_current_span(),
                        );
                    }
                    Effect::Answer { .. } => {}
                    Effect::Done { decision } => {
                        let log = self.log.clone();
                        if let Err(error) = blocking(move || Ok(log.finish(tx, unix_now_ms())?)).await {
                            tracing::error!(tx = %tx, %error, "transaction end not logged; resumed at the next start");
                        }
                        tracing::info!(tx = %tx, decision = decision.as_str(), "transaction done");
                        self.store_details().await;
                        self.publish_view();
                        return;
                    }
                }
            }
            self.publish_view();
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                Some(done) = calls.join_next() => done.ok(),
                _ = ticks.tick() => None,
            };
            let now = unix_now_ms();
            match event {
                None => pending.extend(self.machine.handle(Input::Tick, now)),
                Some(Event::Voted { node, answer }) => {
                    in_flight.remove(&(true, node.clone()));
                    let secrets = self.secrets.get(&node).map_or(&[][..], Vec::as_slice);
                    let detail = self.details.entry(node.clone()).or_default();
                    let vote = match answer {
                        Ok(reply) => {
                            detail.prepare = reply.result.map(|r| mask_result(r, secrets));
                            detail.vote = Some(if reply.vote_yes { Vote::Yes } else { Vote::No });
                            if reply.vote_yes {
                                Vote::Yes
                            } else {
                                detail.message = reply.message;
                                self.message = format!("{node} voted no: {}", detail.message);
                                Vote::No
                            }
                        }
                        Err(message) => {
                            // Unreachable at prepare: nothing is prepared there that we know of.
                            detail.message = message;
                            self.message = format!("{node} did not vote: {}", detail.message);
                            Vote::No
                        }
                    };
                    pending.extend(self.machine.handle(Input::Vote { node, vote }, now));
                }
                Some(Event::Decided { node, decision, answer }) => {
                    in_flight.remove(&(false, node.clone()));
                    let secrets = self.secrets.get(&node).map_or(&[][..], Vec::as_slice);
                    let detail = self.details.entry(node.clone()).or_default();
                    match answer {
                        Ok(reply) => {
                            detail.decide = reply.result.map(|r| mask_result(r, secrets));
                            // The ack ends a "not acknowledged" note; a no vote's reason stays.
                            if detail.message.starts_with(NOT_ACKED) {
                                detail.message.clear();
                            }
                            failpoint::crash_at("coordinator.after_ack");
                            pending.extend(self.machine.handle(Input::Ack { node, decision }, now));
                        }
                        // A no vote's reason stays: it says why the transaction aborted.
                        Err(message) if detail.message.is_empty() || detail.message.starts_with(NOT_ACKED) => {
                            detail.message = format!("{NOT_ACKED}: {message}");
                        }
                        Err(_) => {}
                    }
                }
            }
        }
    }

    /// Appends every write part not yet appended to its group's log; false if one failed (the
    /// missing ones are retried when the decision is re-sent).
    async fn apply_writes(&mut self) -> bool {
        for (part, (shard, write)) in self.plan.decoded_writes().into_iter().enumerate() {
            if self.appended.contains(&part) {
                continue;
            }
            if let Err(message) = self.transport.apply_write(&self.plan, &shard, write).await {
                self.message = format!("committed write to shard group {shard} not yet in its log: {message}");
                tracing::warn!(tx = %self.machine.tx(), shard = %shard, %message, "committed write not appended yet");
                return false;
            }
            self.appended.insert(part);
        }
        self.writes_applied = true;
        self.message.clear();
        true
    }

    /// Keeps what the participants answered (best effort: the log, not this, decides).
    async fn store_details(&self) {
        let (store, tx) = (self.store.clone(), self.machine.tx());
        let bytes = encode_details(&self.details, &self.message);
        if let Err(error) = blocking(move || Ok(store.put(DETAILS_TREE, &tx.key(), &bytes)?)).await {
            tracing::warn!(tx = %tx, %error, "transaction details not kept: its status will say less after a restart");
        }
    }

    fn publish_view(&self) {
        let status = self.machine.status();
        let message = match (self.machine.phase(), self.message.is_empty()) {
            (_, false) => self.message.clone(),
            (Phase::Decided(_), true) => "waiting for every participant to acknowledge the decision".to_owned(),
            _ => String::new(),
        };
        let view = TxView {
            status,
            details: self.details.clone(),
            shards: self.plan.shards.clone(),
            message,
            trace_id: self.plan.trace_id.clone(),
        };
        self.publish.send_replace(view);
    }
}

/// The wire status of a view.
pub fn to_wire(view: &TxView) -> v1::TransactionStatus {
    let status = &view.status;
    let phase = match (status.phase, status.decision) {
        ("done", Some(Decision::Commit)) => v1::TransactionPhase::Committed,
        ("done", _) => v1::TransactionPhase::Aborted,
        (_, Some(Decision::Commit)) => v1::TransactionPhase::Committing,
        (_, Some(Decision::Abort)) => v1::TransactionPhase::Aborting,
        (_, None) => v1::TransactionPhase::Preparing,
    };
    let decision = match status.decision {
        Some(Decision::Commit) => v1::TransactionDecision::Commit,
        Some(Decision::Abort) => v1::TransactionDecision::Abort,
        None => v1::TransactionDecision::Unspecified,
    };
    let participants = status
        .participants
        .iter()
        .map(|p| {
            let mut detail = view.details.get(&p.node).cloned().unwrap_or_default();
            let vote = p.vote.or(detail.vote);
            if vote.is_none() && detail.message.is_empty() && status.decision == Some(Decision::Abort) {
                detail.message = "no vote arrived before the abort was decided".to_owned();
            }
            v1::TransactionParticipant {
                node: p.node.clone(),
                shard: view.shards.get(&p.node).cloned().unwrap_or_default(),
                vote: match vote {
                    Some(Vote::Yes) => v1::ParticipantVote::Yes,
                    Some(Vote::No) => v1::ParticipantVote::No,
                    None => v1::ParticipantVote::Unspecified,
                }
                .into(),
                acknowledged: p.acked,
                prepare_result: detail.prepare,
                decide_result: detail.decide,
                message: detail.message,
            }
        })
        .collect();
    v1::TransactionStatus {
        tx_id: status.tx.to_string(),
        phase: phase.into(),
        decision: decision.into(),
        participants,
        started_unix_ms: status.started_ms,
        deadline_unix_ms: status.deadline_ms,
        decided_unix_ms: status.decided_ms.unwrap_or(0),
        message: view.message.clone(),
        trace_id: view.trace_id.clone().unwrap_or_default(),
    }
}

/// Whether a view has reached the end the caller waits for.
pub fn is_settled(view: &TxView) -> bool {
    view.status.phase == "done"
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use ragmesh_coordinator::Backoff;
    use ragmesh_store::SledStore;

    use super::*;

    /// In-process participants: each votes as configured and records the decisions it heard;
    /// one may be unreachable for decisions until it is let back in.
    #[derive(Debug, Default)]
    struct Participants {
        refuse: BTreeSet<String>,
        unreachable: AtomicBool,
        heard: Mutex<Vec<(String, Decision)>>,
        prepared: Mutex<Vec<String>>,
        written: Mutex<Vec<String>>,
        /// Appends to these groups fail this many more times.
        failing_writes: Mutex<BTreeMap<String, usize>>,
    }

    impl Transport for Participants {
        fn prepare(
            &self,
            node: &str,
            _tx: TxId,
            _operation: v1::TransactionOperation,
            _deadline_ms: u64,
        ) -> BoxFuture<'static, Result<v1::PrepareTransactionResponse, String>> {
            self.prepared.lock().expect("lock").push(node.to_owned());
            let yes = !self.refuse.contains(node);
            // A prepare step that echoes a secret-looking value (masked by the driver).
            let result = v1::ActionResult {
                steps: vec![v1::StepResult { stdout: format!("token=secret-{node}"), ..Default::default() }],
                ..Default::default()
            };
            Box::pin(async move {
                Ok(v1::PrepareTransactionResponse {
                    vote_yes: yes,
                    message: if yes { String::new() } else { "refused".into() },
                    result: Some(result),
                })
            })
        }

        fn decide(
            &self,
            node: &str,
            _tx: TxId,
            decision: Decision,
        ) -> BoxFuture<'static, Result<v1::DecideTransactionResponse, String>> {
            if self.unreachable.load(Ordering::SeqCst) {
                return Box::pin(async { Err("unreachable".to_owned()) });
            }
            self.heard.lock().expect("lock").push((node.to_owned(), decision));
            Box::pin(async { Ok(v1::DecideTransactionResponse { result: None }) })
        }

        fn apply_write(
            &self,
            _plan: &Plan,
            shard: &str,
            _write: v1::DocumentWrite,
        ) -> BoxFuture<'static, Result<(), String>> {
            if let Some(left) = self.failing_writes.lock().expect("lock").get_mut(shard)
                && *left > 0
            {
                *left -= 1;
                return Box::pin(async { Err("the group's log cannot be written".to_owned()) });
            }
            self.written.lock().expect("lock").push(shard.to_owned());
            Box::pin(async { Ok(()) })
        }
    }

    fn store(dir: &tempfile::TempDir) -> Arc<dyn StateStore> {
        Arc::new(SledStore::open_waiting(dir.path()).expect("open sled"))
    }

    /// Opens the store again once the previous holder let go (sled releases its lock when its
    /// last handle, possibly on a blocking-pool thread, is dropped).
    async fn reopen(dir: &tempfile::TempDir) -> Arc<dyn StateStore> {
        for _ in 0..200 {
            if let Ok(store) = SledStore::open_waiting(dir.path()) {
                return Arc::new(store);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the store stays locked");
    }

    fn fast() -> CoordinatorConfig {
        CoordinatorConfig { resend: Backoff { base_ms: 20, max_ms: 50 } }
    }

    fn runtime(participants: &Arc<Participants>) -> Runtime {
        Runtime {
            transport: participants.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    fn parts(nodes: &[&str]) -> BTreeMap<String, v1::TransactionOperation> {
        nodes.iter().map(|n| ((*n).to_owned(), v1::TransactionOperation::default())).collect()
    }

    async fn settle(mut view: watch::Receiver<TxView>) -> TxView {
        let settled = tokio::time::timeout(Duration::from_secs(20), view.wait_for(is_settled)).await;
        settled.expect("settles in time").expect("driver publishes").clone()
    }

    #[tokio::test]
    async fn what_participants_answered_is_kept_masked_and_readable_once_the_driver_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir);
        let txs = Transactions::new(store.clone()).with_config(fast());
        let participants = Arc::new(Participants { refuse: ["b".to_owned()].into(), ..Participants::default() });
        let rt = runtime(&participants);
        let secrets = BTreeMap::from([("a".to_owned(), vec!["secret-a".to_owned()])]);
        let tx = TxId(21);
        let view = txs.start(tx, parts(&["a", "b"]), Plan::default(), unix_now_ms() + 10_000, secrets, &rt).await;
        let live = to_wire(&settle(view.expect("starts")).await);
        rt.tasks.close();
        rt.tasks.wait().await;

        // Another instance over the same store knows nothing live: what it says comes from the store.
        let reader = Transactions::new(store);
        let stored = to_wire(&reader.get(tx).await.expect("read").expect("kept"));
        for status in [&live, &stored] {
            assert_eq!(status.phase, v1::TransactionPhase::Aborted as i32);
            assert!(status.message.contains("b voted no: refused"), "{status:?}");
            let by_node: BTreeMap<&str, &v1::TransactionParticipant> =
                status.participants.iter().map(|p| (p.node.as_str(), p)).collect();
            assert_eq!(by_node["b"].vote, v1::ParticipantVote::No as i32);
            assert_eq!(by_node["b"].message, "refused");
            let echoed = &by_node["a"].prepare_result.as_ref().expect("a's prepare result").steps[0].stdout;
            assert_eq!(echoed, "token=***", "a's secret is masked, live and stored");
            assert_eq!(by_node["b"].prepare_result.as_ref().expect("b's").steps[0].stdout, "token=secret-b");
        }
        let listed = reader.list().await.expect("list");
        let listed = listed.iter().find(|view| view.status.tx == tx).expect("listed");
        assert!(listed.message.contains("b voted no: refused"), "{:?}", listed.message);
    }

    #[tokio::test]
    async fn every_yes_commits_everywhere_and_committed_writes_reach_the_log_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let txs = Transactions::new(store(&dir)).with_config(fast());
        let participants = Arc::new(Participants::default());
        let rt = runtime(&participants);
        let write = v1::DocumentWrite::default();
        let plan = Plan::new("s", "t", &[("g1".into(), write)], BTreeMap::new());
        let tx = TxId(7);
        let deadline = unix_now_ms() + 10_000;
        let view = txs.start(tx, parts(&["a", "b"]), plan, deadline, BTreeMap::new(), &rt).await.expect("starts");
        let view = settle(view).await;
        assert_eq!(to_wire(&view).phase, v1::TransactionPhase::Committed as i32);
        let heard = participants.heard.lock().expect("lock").clone();
        assert_eq!(heard.len(), 2);
        assert!(heard.iter().all(|(_, d)| *d == Decision::Commit), "{heard:?}");
        assert_eq!(*participants.written.lock().expect("lock"), ["g1"]);
        let logged = txs.get(tx).await.expect("get").expect("kept");
        assert_eq!((logged.status.phase, logged.status.decision), ("done", Some(Decision::Commit)));
        assert_eq!(txs.compact(unix_now_ms(), 60_000).expect("compact"), 0, "kept within the retention");
        assert_eq!(txs.compact(unix_now_ms() + 120_000, 60_000).expect("compact"), 1);
        assert!(txs.get(tx).await.expect("get").is_none(), "compacted");
        assert!(txs.store.get(PLANS_TREE, &tx.key()).expect("read").is_none(), "its plan too");
    }

    #[tokio::test]
    async fn a_write_part_that_cannot_be_appended_is_retried_alone_and_holds_back_every_decision_until_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let txs = Transactions::new(store(&dir)).with_config(fast());
        let participants =
            Arc::new(Participants { failing_writes: Mutex::new([("g2".to_owned(), 3)].into()), ..Default::default() });
        let rt = runtime(&participants);
        let writes: Vec<(String, v1::DocumentWrite)> =
            ["g1", "g2", "g3"].iter().map(|g| ((*g).to_owned(), v1::DocumentWrite::default())).collect();
        let plan = Plan::new("s", "t", &writes, BTreeMap::new());
        let view = txs
            .start(TxId(11), parts(&["a", "b", "c"]), plan, unix_now_ms() + 10_000, BTreeMap::new(), &rt)
            .await
            .expect("starts");
        let view = settle(view).await;
        assert_eq!(to_wire(&view).phase, v1::TransactionPhase::Committed as i32, "{view:?}");
        assert!(!view.message.contains("not yet in its log"), "the retry cleared the note: {}", view.message);
        // g1 went in once; g2 after its failures; g3 once, after g2: nothing appended twice.
        assert_eq!(*participants.written.lock().expect("lock"), ["g1", "g2", "g3"]);
        let heard = participants.heard.lock().expect("lock").clone();
        assert_eq!(heard.len(), 3, "{heard:?}");
        assert!(heard.iter().all(|(_, d)| *d == Decision::Commit), "{heard:?}");
    }

    #[tokio::test]
    async fn one_no_aborts_everywhere_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let txs = Transactions::new(store(&dir)).with_config(fast());
        let participants = Arc::new(Participants { refuse: ["b".to_owned()].into(), ..Default::default() });
        let rt = runtime(&participants);
        let plan = Plan::new("s", "t", &[("g1".into(), v1::DocumentWrite::default())], BTreeMap::new());
        let view = txs
            .start(TxId(8), parts(&["a", "b", "c"]), plan, unix_now_ms() + 10_000, BTreeMap::new(), &rt)
            .await
            .expect("starts");
        let view = settle(view).await;
        let wire = to_wire(&view);
        assert_eq!(wire.phase, v1::TransactionPhase::Aborted as i32);
        assert!(wire.message.contains("b voted no"), "{}", wire.message);
        let heard = participants.heard.lock().expect("lock").clone();
        assert!(heard.iter().all(|(_, d)| *d == Decision::Abort), "{heard:?}");
        assert!(participants.written.lock().expect("lock").is_empty(), "an aborted write never reaches the log");
    }

    #[tokio::test]
    async fn a_logged_commit_is_resent_after_a_restart_until_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tx = TxId(9);
        {
            // The first master logs commit, then every decision it sends is lost, and it stops.
            let txs = Transactions::new(store(&dir)).with_config(fast());
            let participants = Arc::new(Participants::default());
            participants.unreachable.store(true, Ordering::SeqCst);
            let rt = runtime(&participants);
            let mut view = txs
                .start(tx, parts(&["a", "b"]), Plan::default(), unix_now_ms() + 10_000, BTreeMap::new(), &rt)
                .await
                .expect("starts");
            let decided = tokio::time::timeout(Duration::from_secs(20), view.wait_for(|v| v.status.decision.is_some()));
            assert_eq!(decided.await.expect("in time").expect("published").status.decision, Some(Decision::Commit));
            rt.shutdown.cancel();
            rt.tasks.close();
            rt.tasks.wait().await;
            assert!(participants.heard.lock().expect("lock").is_empty());
        }
        // The store is dropped and reopened: the new master re-sends the logged commit.
        let txs = Transactions::new(reopen(&dir).await).with_config(fast());
        let participants = Arc::new(Participants::default());
        let rt = runtime(&participants);
        assert_eq!(txs.recover(&rt).await.expect("recovers"), 1);
        let view = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match txs.get(tx).await.expect("get") {
                    Some(view) if is_settled(&view) => return view,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await
        .expect("settles");
        assert_eq!(view.status.decision, Some(Decision::Commit));
        let heard = participants.heard.lock().expect("lock").clone();
        assert!(heard.contains(&("a".into(), Decision::Commit)) && heard.contains(&("b".into(), Decision::Commit)));
        assert_eq!(txs.decision_for(tx).await.expect("decision"), Some(Decision::Commit));
    }

    #[tokio::test]
    async fn a_transaction_without_a_logged_decision_aborts_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tx = TxId(10);
        {
            // Only the begin record reached the log before the master died.
            let log = CoordinatorLog::new(store(&dir));
            let machine = Coordinator::new(tx, &["a".to_owned(), "b".to_owned()], unix_now_ms() + 60_000, fast());
            log.write_begin(&machine.record()).expect("begin");
        }
        let txs = Transactions::new(reopen(&dir).await).with_config(fast());
        let participants = Arc::new(Participants::default());
        let rt = runtime(&participants);
        assert_eq!(txs.recover(&rt).await.expect("recovers"), 1);
        rt.tasks.close();
        tokio::time::timeout(Duration::from_secs(20), rt.tasks.wait()).await.expect("the driver ends");
        let view = txs.get(tx).await.expect("get").expect("kept");
        assert_eq!((view.status.phase, view.status.decision), ("done", Some(Decision::Abort)));
        assert!(participants.prepared.lock().expect("lock").is_empty(), "nothing is prepared again");
        let heard = participants.heard.lock().expect("lock").clone();
        assert_eq!(heard.len(), 2);
        assert!(heard.iter().all(|(_, d)| *d == Decision::Abort));
        assert_eq!(txs.decision_for(TxId(999)).await.expect("decision"), Some(Decision::Abort), "presumed abort");
    }
}
