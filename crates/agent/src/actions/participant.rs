//! The agent's side of two-phase commit: drives one pure [`Participant`] state machine per
//! transaction (ragmesh-coordinator) and performs its effects, in order, against a
//! [`ParticipantLog`] in a sled store of its own (`<data-dir>/transactions`, beside the index).
//!
//! - **Prepare** (`PrepareTransaction`): the operation (an [`v1::ActionCall`] of a transactional
//!   action, or a [`v1::DocumentWrite`]) is admitted like `RunAction` or a write would be, then fed
//!   to the machine. Its payload is the operation itself (protobuf bytes). Before the local prepare
//!   step runs, the payload is persisted (so a crash in the middle of a prepare step is recovered
//!   as in doubt, ends in abort, and the abort step undoes what the prepare did); the machine
//!   persists again before it votes yes, as the crate's rules require.
//! - **Decide** (`DecideTransaction`, or an outcome on the health stream): commit runs the
//!   action's commit step, abort its abort step; the outcome is persisted, then acknowledged.
//!   Idempotent: a repeat, or a decision for a transaction never seen, is acknowledged. A
//!   decision is answered only once acknowledged; one that arrives before this node's prepare
//!   ended is refused as unavailable, so the coordinator sends it again.
//! - **Cancellation**: each prepare or decision drives its machine in a task of its own, so a
//!   caller that goes away (the master killed mid-call) never leaves a step run but unrecorded.
//! - **Document writes**: prepare checks the documents with the index's own rules (ids, sizes,
//!   ACLs, ownership) and votes; commit applies nothing here: the master delivers committed
//!   writes through the shard group's write log (ordered, each once, caught up after a crash),
//!   so a write is never applied twice or out of order. The agent only records the outcome.
//! - **Recovery**: at start, every kept record is rebuilt ([`ParticipantLog::recover`]); those in
//!   doubt are listed in every heartbeat until a decision arrives (that listing is the "ask").
//! - Crash point `participant.before_apply` ([`failpoint`]): a decision arrived for a prepared
//!   transaction and is not applied yet (the participant voted yes and then died).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use ragmesh_actions::{ActionSpec, RunLimits, StepRole, StepStatus, Steps, ValidArgs};
use ragmesh_auth::{Capability, Principal};
use ragmesh_coordinator::log::ParticipantLog;
use ragmesh_coordinator::participant::{Effect, Input, Participant, ParticipantConfig, Phase};
use ragmesh_coordinator::{Decision, Millis, TxId, Vote};
use ragmesh_index::{DocumentIndex, Writer};
use ragmesh_proto::v1;
use ragmesh_server::failpoint;
use ragmesh_store::{SledStore, StoreError};

use super::{Actions, Offered};
use crate::error::AgentError;

/// Directory of the participant log, inside the data directory.
pub const TX_DIR: &str = "transactions";
/// How long records of ended transactions are kept (repeated decisions are acknowledged from them).
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most transactions kept in memory; ended ones are dropped first (their records stay in the log).
const MAX_MACHINES: usize = 10_000;

/// Unix milliseconds now (deadlines come from the master's wall clock).
pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What one prepare needs besides the payload: the operation, admitted.
enum Prepared {
    Action { spec: Arc<ActionSpec>, args: ValidArgs },
    Write { write: v1::DocumentWrite, writer: Writer },
}

/// What driving the machine produced for the caller's answer.
#[derive(Debug, Default)]
struct Driven {
    vote: Option<Vote>,
    /// Result of the prepare step (an action's).
    prepared: Option<v1::ActionResult>,
    /// Result of the commit or abort step (an action's).
    applied: Option<v1::ActionResult>,
    /// Why a prepare voted no.
    message: String,
    /// The outcome acknowledged, when the input ended with an acknowledgement.
    acked: Option<Decision>,
}

/// Every transaction this agent takes part in.
#[derive(Debug)]
pub struct Participants {
    log: ParticipantLog,
    machines: Mutex<HashMap<TxId, Arc<tokio::sync::Mutex<Participant>>>>,
    in_doubt: Mutex<BTreeSet<TxId>>,
    actions: Arc<Actions>,
    index: Arc<OnceLock<Arc<DocumentIndex>>>,
    config: ParticipantConfig,
}

impl Participants {
    /// Opens the log in `dir` (refused when another process holds it) and recovers every kept
    /// transaction: those prepared without an outcome are in doubt until a decision arrives.
    pub fn open(
        dir: &Path,
        actions: Arc<Actions>,
        index: Arc<OnceLock<Arc<DocumentIndex>>>,
    ) -> Result<Self, AgentError> {
        // Waiting out the flusher of a handle dropped a moment ago (an in-process restart).
        let store = SledStore::open_waiting(dir).map_err(|err| match err {
            StoreError::Locked { path } => AgentError::TxLogLocked { path },
            other => AgentError::TxLog(other.into()),
        })?;
        let log = ParticipantLog::new(Arc::new(store));
        let config = ParticipantConfig::default();
        let now = now_ms();
        let removed = log.compact(now, u64::try_from(RETENTION.as_millis()).unwrap_or(u64::MAX))?;
        let mut machines = HashMap::new();
        let mut in_doubt = BTreeSet::new();
        for (tx, machine, _effects) in log.recover(config, now)? {
            // The effects are an ask (the heartbeats list the transaction) or a re-acknowledgement
            // (the coordinator re-sends decisions it has not seen acknowledged): nothing to do now.
            if machine.in_doubt() {
                tracing::warn!(tx = %tx, "transaction in doubt after a restart; waiting for the coordinator's decision");
                in_doubt.insert(tx);
            }
            machines.insert(tx, Arc::new(tokio::sync::Mutex::new(machine)));
        }
        tracing::info!(kept = machines.len(), in_doubt = in_doubt.len(), compacted = removed, "participant log open");
        Ok(Participants { log, machines: Mutex::new(machines), in_doubt: Mutex::new(in_doubt), actions, index, config })
    }

    /// Transactions prepared here (voted yes) without a decision yet, for the heartbeats.
    pub fn in_doubt(&self) -> Vec<String> {
        self.in_doubt.lock().unwrap_or_else(PoisonError::into_inner).iter().map(ToString::to_string).collect()
    }

    /// The machine of `tx`: in memory, else rebuilt from its record, else a fresh one.
    fn machine(&self, tx: TxId) -> Result<Arc<tokio::sync::Mutex<Participant>>, AgentError> {
        let mut machines = self.machines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(machine) = machines.get(&tx) {
            return Ok(Arc::clone(machine));
        }
        let machine = match self.log.get(tx)? {
            Some(record) => Participant::recover(&record, self.config, now_ms()).0,
            None => Participant::new(tx, self.config),
        };
        if machines.len() >= MAX_MACHINES {
            // Ended transactions answer from their log records when asked again.
            machines.retain(|_, m| m.try_lock().map_or(true, |m| !matches!(m.phase(), Phase::Ended(_))));
        }
        let machine = Arc::new(tokio::sync::Mutex::new(machine));
        machines.insert(tx, Arc::clone(&machine));
        Ok(machine)
    }

    /// `PrepareTransaction`.
    pub async fn prepare(
        self: &Arc<Self>,
        principal: &Principal,
        request: v1::PrepareTransactionRequest,
    ) -> Result<v1::PrepareTransactionResponse, AgentError> {
        let tx = TxId::parse(&request.tx_id).map_err(|e| AgentError::BadTransaction(e.to_string()))?;
        let operation = request.operation.ok_or_else(|| AgentError::BadTransaction("no operation".to_owned()))?;
        let prepared = match self.admit(principal, &operation) {
            Ok(prepared) => prepared,
            // Refusals a caller could fix are errors; an action that cannot take part votes no.
            Err(AgentError::NotTransactional { action }) => {
                return Ok(no(format!(
                    "action {action:?} is not transactional (it declares no prepare/commit/abort steps): run it with RunAction"
                )));
            }
            Err(err) => return Err(err),
        };
        let payload = operation.encode_to_vec();
        let input = Input::Prepare { payload, deadline_ms: request.deadline_unix_ms };
        let (driven, _) = self.feed(tx, input, Some(prepared)).await?;
        let vote_yes = driven.vote == Some(Vote::Yes);
        let message = match (vote_yes, driven.vote) {
            (true, _) => String::new(),
            (false, None) => "a prepare of this transaction is already running".to_owned(),
            (false, Some(_)) if !driven.message.is_empty() => driven.message,
            (false, Some(_)) => {
                "voted no: the prepare deadline passed or the transaction already aborted here".to_owned()
            }
        };
        tracing::info!(tx = %tx, vote_yes, message = %message, "transaction.prepare");
        Ok(v1::PrepareTransactionResponse { vote_yes, message, result: driven.prepared })
    }

    /// `DecideTransaction`, and an outcome received on the health stream.
    pub async fn decide(
        self: &Arc<Self>,
        tx_id: &str,
        decision: v1::TransactionDecision,
    ) -> Result<v1::DecideTransactionResponse, AgentError> {
        let tx = TxId::parse(tx_id).map_err(|e| AgentError::BadTransaction(e.to_string()))?;
        let decision = match decision {
            v1::TransactionDecision::Commit => Decision::Commit,
            v1::TransactionDecision::Abort => Decision::Abort,
            v1::TransactionDecision::Unspecified => {
                return Err(AgentError::BadTransaction("the decision must be COMMIT or ABORT".to_owned()));
            }
        };
        let (driven, phase) = self.feed(tx, Input::Decision(decision), None).await?;
        tracing::info!(tx = %tx, decision = decision.as_str(), phase = phase.as_str(), "transaction.decide");
        // Only an acknowledgement may tell the coordinator it is done here: anything else (the
        // decision arrived while this transaction's prepare had not finished) is re-sent.
        if driven.acked.is_none() {
            return Err(AgentError::DecisionPending { phase: phase.as_str() });
        }
        Ok(v1::DecideTransactionResponse { result: driven.applied })
    }

    /// Feeds `input` to the machine of `tx` in a task of its own and waits for the result and
    /// the phase it leaves. Once accepted, an input's effects all run even when the caller goes
    /// away (a cancelled call, a master killed mid-call): a commit step whose outcome was never
    /// persisted would otherwise run again after a restart. When an effect fails (the log cannot
    /// be written) the machine is dropped from memory, so the next call rebuilds it from the log,
    /// which stays the one truth.
    async fn feed(
        self: &Arc<Self>,
        tx: TxId,
        input: Input,
        prepared: Option<Prepared>,
    ) -> Result<(Driven, Phase), AgentError> {
        let machine = self.machine(tx)?;
        let this = Arc::clone(self);
        let task = async move {
            let mut locked = machine.lock().await;
            match this.drive(&mut locked, input, prepared.as_ref()).await {
                Ok(driven) => Ok((driven, locked.phase())),
                Err(err) => {
                    drop(locked);
                    this.forget(tx, &machine);
                    Err(err)
                }
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(task)).await.map_err(|e| AgentError::Task(e.to_string()))?
    }

    /// Drops `machine` from memory if it is still the one kept for `tx`.
    fn forget(&self, tx: TxId, machine: &Arc<tokio::sync::Mutex<Participant>>) {
        let mut machines = self.machines.lock().unwrap_or_else(PoisonError::into_inner);
        if machines.get(&tx).is_some_and(|kept| Arc::ptr_eq(kept, machine)) {
            machines.remove(&tx);
        }
    }

    /// Admits an operation: a declared transactional action the caller may run with valid
    /// arguments, or documents the caller may write.
    fn admit(&self, principal: &Principal, operation: &v1::TransactionOperation) -> Result<Prepared, AgentError> {
        match &operation.kind {
            Some(v1::transaction_operation::Kind::Action(call)) => {
                let (offered, args) = self.actions.admit(principal, call)?;
                match offered {
                    Offered::Declared(spec) if spec.is_transactional() => Ok(Prepared::Action { spec, args }),
                    _ => Err(AgentError::NotTransactional { action: call.action.chars().take(80).collect() }),
                }
            }
            Some(v1::transaction_operation::Kind::Write(write)) => {
                principal.require(Capability::Ingest)?;
                let writer = if principal.has(Capability::Admin) {
                    Writer::Operator
                } else {
                    Writer::Tenant(principal.tenant.clone())
                };
                Ok(Prepared::Write { write: write.clone(), writer })
            }
            None => Err(AgentError::BadTransaction("the operation is empty: an action or a write".to_owned())),
        }
    }

    /// Feeds `input` to `machine` and performs every effect that follows, in order; a persist is
    /// durable before the next effect.
    async fn drive(
        &self,
        machine: &mut Participant,
        input: Input,
        prepared: Option<&Prepared>,
    ) -> Result<Driven, AgentError> {
        let deadline_ms = match &input {
            Input::Prepare { deadline_ms, .. } => *deadline_ms,
            _ => 0,
        };
        let tx = machine.tx();
        let mut driven = Driven::default();
        let mut inputs = std::collections::VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            for effect in machine.handle(input, now_ms()) {
                match effect {
                    Effect::RunPrepare { payload } => {
                        // Persisted before the step runs: a crash mid-step is recovered in doubt
                        // and ends with the abort step.
                        let log = self.log.clone();
                        let early = payload.clone();
                        blocking(move || log.persist_prepared(tx, &early, deadline_ms, now_ms())).await?;
                        let (ok, result, message) = self.run_prepare(prepared).await;
                        driven.prepared = result;
                        driven.message = message;
                        inputs.push_back(Input::PrepareFinished { ok });
                    }
                    Effect::PersistPrepared { payload, deadline_ms } => {
                        let log = self.log.clone();
                        blocking(move || log.persist_prepared(tx, &payload, deadline_ms, now_ms())).await?;
                        inputs.push_back(Input::PreparedPersisted);
                    }
                    Effect::Vote(vote) => {
                        driven.vote = Some(vote);
                        self.mark_in_doubt(tx, vote == Vote::Yes);
                    }
                    Effect::ApplyCommit { payload } => {
                        failpoint::crash_at("participant.before_apply");
                        driven.applied = self.apply(tx, StepRole::Commit, &payload).await;
                        inputs.push_back(Input::Applied);
                    }
                    Effect::ApplyAbort { payload } => {
                        failpoint::crash_at("participant.before_apply");
                        driven.applied = self.apply(tx, StepRole::Abort, &payload).await;
                        inputs.push_back(Input::Applied);
                    }
                    Effect::PersistOutcome(decision) => {
                        let log = self.log.clone();
                        blocking(move || log.persist_outcome(tx, decision, now_ms())).await?;
                        self.mark_in_doubt(tx, false);
                    }
                    // The answer to the RPC (or the next heartbeat) carries the acknowledgement.
                    Effect::Ack(decision) => driven.acked = Some(decision),
                    // Heartbeats list in-doubt transactions: that is how this agent asks.
                    Effect::AskCoordinator => {}
                }
            }
        }
        Ok(driven)
    }

    fn mark_in_doubt(&self, tx: TxId, in_doubt: bool) {
        let mut set = self.in_doubt.lock().unwrap_or_else(PoisonError::into_inner);
        if in_doubt {
            set.insert(tx);
        } else {
            set.remove(&tx);
        }
    }

    /// Runs the local prepare step: `(ok, the step's result, why not ok)`.
    async fn run_prepare(&self, prepared: Option<&Prepared>) -> (bool, Option<v1::ActionResult>, String) {
        match prepared {
            Some(Prepared::Action { spec, args }) => {
                let Steps::Transactional { prepare, .. } = &spec.steps else {
                    return (false, None, "not transactional".to_owned());
                };
                let outcome = ragmesh_actions::run_step(prepare, args, RunLimits::for_action(spec)).await;
                let ok = outcome.status == StepStatus::Ok;
                let message = if ok {
                    String::new()
                } else {
                    format!("prepare step {}: {}", outcome.status.as_str(), outcome.message)
                };
                let result = ragmesh_actions::wire::action_result(&ragmesh_actions::ActionOutcome {
                    steps: vec![(StepRole::Prepare, outcome)],
                });
                (ok, Some(result), message)
            }
            Some(Prepared::Write { write, writer }) => {
                let Some(index) = self.index.get().cloned() else {
                    return (false, None, "the index is still opening".to_owned());
                };
                let upserts: Vec<_> = write.upserts.iter().cloned().map(crate::service::document_from_wire).collect();
                let deletes: Vec<_> = write
                    .deletes
                    .iter()
                    .map(|r| ragmesh_index::DocRef { collection: r.collection.clone(), id: r.id.clone() })
                    .collect();
                let writer = writer.clone();
                let checked = tokio::task::spawn_blocking(move || index.check_write(&upserts, &deletes, &writer)).await;
                match checked {
                    Ok(Ok(())) => (true, None, String::new()),
                    Ok(Err(err)) => (false, None, format!("the write is refused: {err}")),
                    Err(err) => (false, None, format!("the write check failed: {err}")),
                }
            }
            // A prepare re-driven without its admission (cannot happen: RunPrepare follows Prepare).
            None => (false, None, "nothing to prepare".to_owned()),
        }
    }

    /// Applies a decision from the persisted payload: the commit or abort step of an action; a
    /// document write applies nothing here (see the module documentation).
    async fn apply(&self, tx: TxId, role: StepRole, payload: &[u8]) -> Option<v1::ActionResult> {
        let operation = match v1::TransactionOperation::decode(payload) {
            Ok(operation) => operation,
            Err(err) => {
                tracing::error!(tx = %tx, error = %err, "transaction payload unreadable; nothing to apply");
                return None;
            }
        };
        let Some(v1::transaction_operation::Kind::Action(call)) = operation.kind else { return None };
        let spec = match self.actions.find(&call.action) {
            Some(Offered::Declared(spec)) => spec,
            _ => {
                tracing::error!(tx = %tx, action = %call.action, "the prepared action is no longer declared; its step cannot run");
                return Some(ragmesh_actions::wire::refused(format!(
                    "action {:?} is no longer declared on this agent: its {} step did not run",
                    call.action,
                    role.as_str()
                )));
            }
        };
        let Steps::Transactional { commit, abort, .. } = &spec.steps else { return None };
        let arguments = call.arguments.into_iter().collect();
        let args = match ragmesh_actions::validate(&spec, &arguments) {
            Ok(args) => args,
            Err(problems) => {
                let problems = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                return Some(ragmesh_actions::wire::refused(format!(
                    "the prepared arguments no longer validate: {problems}"
                )));
            }
        };
        let step = if role == StepRole::Commit { commit } else { abort };
        let outcome = ragmesh_actions::run_step(step, &args, RunLimits::for_action(&spec)).await;
        tracing::info!(tx = %tx, step = role.as_str(), status = outcome.status.as_str(), "transaction.step");
        Some(ragmesh_actions::wire::action_result(&ragmesh_actions::ActionOutcome { steps: vec![(role, outcome)] }))
    }
}

/// A "no" vote that never reached the machine (the operation cannot take part at all).
fn no(message: String) -> v1::PrepareTransactionResponse {
    v1::PrepareTransactionResponse { vote_yes: false, message, result: None }
}

/// Runs a log write on the blocking pool (sled flushes before returning).
async fn blocking(
    write: impl FnOnce() -> Result<(), ragmesh_coordinator::CoordinatorError> + Send + 'static,
) -> Result<(), AgentError> {
    tokio::task::spawn_blocking(write).await.map_err(|e| AgentError::Task(e.to_string()))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use ragmesh_actions::{ArgvItem, ExecStep, Step};
    use ragmesh_coordinator::log::ParticipantRecord;

    use super::*;
    use crate::actions::node::NodeState;

    fn exec(program: &str, argv: &[&str]) -> Step {
        Step::Exec(ExecStep {
            program: program.into(),
            argv: argv.iter().map(|a| ArgvItem::parse((*a).to_owned())).collect(),
            env: BTreeMap::new(),
            cwd: None,
        })
    }

    /// A transactional action whose prepare and commit steps each take a second.
    fn slow() -> ActionSpec {
        ActionSpec {
            name: "slow".into(),
            description: "prepare and commit each sleep a second".into(),
            args: Vec::new(),
            timeout: Duration::from_secs(30),
            capability: "actions".into(),
            tenants: vec!["*".into()],
            steps: Steps::Transactional {
                prepare: exec("/bin/sleep", &["1"]),
                commit: exec("/bin/sleep", &["1"]),
                abort: exec("/bin/true", &[]),
            },
        }
    }

    fn operator() -> Principal {
        Principal {
            subject: "operator".into(),
            tenant: String::new(),
            capabilities: [Capability::Actions, Capability::Admin].into_iter().collect(),
            token_id: "t".into(),
            expires_at: 0,
            issued_at: 0,
        }
    }

    /// Polls the participant log until `tx`'s record satisfies `done` (generous: a loaded machine).
    async fn logged(participants: &Participants, tx: TxId, done: impl Fn(&ParticipantRecord) -> bool) {
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let record = participants.log.get(tx).expect("read the log");
            if record.as_ref().is_some_and(&done) {
                return;
            }
            assert!(Instant::now() < give_up, "the log never got there: {record:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_that_go_away_mid_step_still_finish_their_transaction_step_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let actions = Arc::new(Actions::new(vec![slow()], NodeState::in_memory(BTreeMap::new()), Arc::default()));
        let participants =
            Arc::new(Participants::open(&dir.path().join(TX_DIR), actions, Arc::default()).expect("open the log"));
        let operator = operator();
        let tx_id = "0123456789abcdef0123456789abcdef";
        let tx = TxId::parse(tx_id).expect("a transaction id");
        let request = v1::PrepareTransactionRequest {
            tx_id: tx_id.into(),
            operation: Some(v1::TransactionOperation {
                kind: Some(v1::transaction_operation::Kind::Action(v1::ActionCall {
                    action: "slow".into(),
                    arguments: Default::default(),
                })),
            }),
            deadline_unix_ms: now_ms() + 60_000,
        };

        // The caller of the prepare gives up while the prepare step runs; the step still ends,
        // its vote is kept, and the prepare sent again gets that vote (it does not run twice).
        let gone = tokio::time::timeout(Duration::from_millis(200), participants.prepare(&operator, request.clone()));
        assert!(gone.await.is_err(), "the prepare step takes a second");
        let again = participants.prepare(&operator, request).await.expect("prepare again");
        assert!(again.vote_yes, "{again:?}");
        assert!(again.result.is_none(), "the step did not run again: {again:?}");
        assert_eq!(participants.in_doubt(), [tx_id]);

        // The caller of the commit gives up while the commit step runs: the outcome is still
        // persisted, and the decision sent again is acknowledged without running the step again.
        let gone = tokio::time::timeout(
            Duration::from_millis(200),
            participants.decide(tx_id, v1::TransactionDecision::Commit),
        );
        assert!(gone.await.is_err(), "the commit step takes a second");
        logged(&participants, tx, |r| r.outcome == Some(Decision::Commit)).await;
        // Waits for the machine, so the first decision's drive has ended.
        let again = participants.decide(tx_id, v1::TransactionDecision::Commit).await.expect("decide again");
        assert!(again.result.is_none(), "acknowledged from the outcome, not applied again: {again:?}");
        assert!(participants.in_doubt().is_empty(), "{:?}", participants.in_doubt());
    }
}
