//! Durable records of two-phase commit over [`StateStore`]: the coordinator's log (tree
//! [`COORDINATOR_TREE`], the master's store) and a participant's log (tree [`PARTICIPANT_TREE`],
//! an agent's own store), recovery after a crash, and compaction.
//!
//! One key per transaction (its [`TxId::key`]), one JSON record with a version field `v`; every
//! change rewrites that one key, so each write is atomic without a multi-key batch. Writes are
//! durable when they return (the [`StateStore`] contract).
//!
//! Retention bound: a finished record (coordinator: every ack in; participant: outcome persisted)
//! is removed by `compact` once older than the retention window. The coordinator keeps finished
//! records only for status and late queries: presumed abort never needs them for safety, because
//! every participant acknowledged after persisting its outcome and will not ask again. A
//! participant must keep its records for at least the longest prepare timeout plus the clock skew
//! between master and agent: a duplicate prepare arriving before its deadline must find the record
//! (a prepare after its deadline is refused), otherwise it could prepare a finished transaction again.

use std::sync::Arc;

use ragmesh_store::StateStore;
use serde::{Deserialize, Serialize};

use crate::coordinator::{self, Coordinator, CoordinatorConfig};
use crate::participant::{self, Participant, ParticipantConfig};
use crate::{CoordinatorError, Decision, Millis, TxId};

/// Tree of the coordinator's log.
pub const COORDINATOR_TREE: &str = "tx_log";
/// Tree of a participant's log.
pub const PARTICIPANT_TREE: &str = "tx_participant";
/// Newest record version written and read by this binary.
pub const RECORD_VERSION: u32 = 1;
/// Records read per store call when scanning a log.
const SCAN_BATCH: usize = 256;
/// Compare-and-swap rounds before a decision write gives up on a contended record.
const CAS_ATTEMPTS: usize = 16;

/// The coordinator's durable record of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorRecord {
    /// Record version ([`RECORD_VERSION`]).
    pub v: u32,
    /// The transaction.
    pub tx: TxId,
    /// Participants (node names).
    pub participants: Vec<String>,
    /// Prepare deadline.
    pub deadline_ms: Millis,
    /// When it started.
    pub started_ms: Millis,
    /// The decision, once logged.
    pub decision: Option<Decision>,
    /// When the decision was logged.
    pub decided_ms: Option<Millis>,
    /// When every participant had acknowledged.
    pub finished_ms: Option<Millis>,
}

/// A participant's durable record of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantRecord {
    /// Record version ([`RECORD_VERSION`]).
    pub v: u32,
    /// The transaction.
    pub tx: TxId,
    /// What was prepared (base64 in the record).
    #[serde(with = "payload_base64")]
    pub payload: Vec<u8>,
    /// The prepare deadline.
    pub deadline_ms: Millis,
    /// When the prepared state was persisted (the participant then voted yes); `None` for an
    /// abort of a transaction never prepared here.
    pub prepared_ms: Option<Millis>,
    /// The outcome, once applied.
    pub outcome: Option<Decision>,
    /// When the outcome was persisted.
    pub outcome_ms: Option<Millis>,
}

mod payload_base64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// The version field alone, read first so a newer record is reported as such, not as corrupt.
#[derive(Deserialize)]
struct Versioned {
    v: u32,
    tx: TxId,
}

fn decode<T: serde::de::DeserializeOwned>(tree: &str, key: &[u8], bytes: &[u8]) -> Result<T, CoordinatorError> {
    let corrupt = |e: serde_json::Error| CoordinatorError::Corrupt {
        tree: tree.to_owned(),
        key: key.iter().map(|b| format!("{b:02x}")).collect(),
        message: e.to_string(),
    };
    let versioned: Versioned = serde_json::from_slice(bytes).map_err(corrupt)?;
    if versioned.v > RECORD_VERSION {
        return Err(CoordinatorError::NewerVersion {
            tx: versioned.tx,
            version: versioned.v,
            supported: RECORD_VERSION,
        });
    }
    serde_json::from_slice(bytes).map_err(corrupt)
}

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records are plain structs of strings and numbers")
}

/// Every record of a tree, read in batches.
fn scan_all<T: serde::de::DeserializeOwned>(store: &dyn StateStore, tree: &str) -> Result<Vec<T>, CoordinatorError> {
    let mut records = Vec::new();
    let mut start: Vec<u8> = Vec::new();
    loop {
        let batch = store.scan_from(tree, &start, SCAN_BATCH)?;
        let full = batch.len() == SCAN_BATCH;
        for (key, value) in &batch {
            records.push(decode(tree, key, value)?);
        }
        match batch.last() {
            Some((last, _)) if full => {
                // The smallest key after `last`.
                start = last.clone();
                start.push(0);
            }
            _ => return Ok(records),
        }
    }
}

/// The coordinator's log.
#[derive(Debug, Clone)]
pub struct CoordinatorLog {
    store: Arc<dyn StateStore>,
}

impl CoordinatorLog {
    /// The log in `store`'s tree [`COORDINATOR_TREE`].
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        CoordinatorLog { store }
    }

    /// The record of `tx`, if kept.
    pub fn get(&self, tx: TxId) -> Result<Option<CoordinatorRecord>, CoordinatorError> {
        let bytes = self.store.get(COORDINATOR_TREE, &tx.key())?;
        bytes.map(|bytes| decode(COORDINATOR_TREE, &tx.key(), &bytes)).transpose()
    }

    /// Performs [`coordinator::Effect::LogBegin`]: writes the record unless one exists.
    pub fn write_begin(&self, record: &CoordinatorRecord) -> Result<(), CoordinatorError> {
        let outcome = self.store.compare_and_swap(COORDINATOR_TREE, &record.tx.key(), None, Some(&encode(record)))?;
        if outcome.is_err() {
            tracing::debug!(tx = %record.tx, "coordinator_log.begin already logged");
        }
        Ok(())
    }

    /// Performs [`coordinator::Effect::LogDecision`]: durably writes the record's decision with
    /// `decided_ms = now`. Idempotent; refuses to change a decision already logged.
    pub fn write_decision(&self, record: &CoordinatorRecord, now: Millis) -> Result<(), CoordinatorError> {
        let Some(decision) = record.decision else {
            return Err(CoordinatorError::NoDecision { tx: record.tx });
        };
        let key = record.tx.key();
        // Compare-and-swap against the bytes read, so two writers can never both "win" with
        // different decisions; a lost race is re-read and judged again.
        for _ in 0..CAS_ATTEMPTS {
            let current = self.store.get(COORDINATOR_TREE, &key)?;
            if let Some(bytes) = &current {
                let existing: CoordinatorRecord = decode(COORDINATOR_TREE, &key, bytes)?;
                match existing.decision {
                    Some(logged) if logged == decision => return Ok(()),
                    Some(logged) => {
                        return Err(CoordinatorError::DecisionConflict {
                            tx: record.tx,
                            logged: logged.as_str(),
                            requested: decision.as_str(),
                        });
                    }
                    None => {}
                }
            }
            let mut logged = record.clone();
            logged.v = RECORD_VERSION;
            logged.decided_ms = Some(now);
            logged.finished_ms = None;
            let swapped =
                self.store.compare_and_swap(COORDINATOR_TREE, &key, current.as_deref(), Some(&encode(&logged)))?;
            if swapped.is_ok() {
                tracing::info!(tx = %record.tx, decision = decision.as_str(), "coordinator_log.decision");
                return Ok(());
            }
        }
        Err(CoordinatorError::Contended { tx: record.tx })
    }

    /// Performs [`coordinator::Effect::Done`]: marks the record finished at `now` (kept until
    /// [`CoordinatorLog::compact`]). A missing record is fine (already compacted).
    pub fn finish(&self, tx: TxId, now: Millis) -> Result<(), CoordinatorError> {
        let Some(mut record) = self.get(tx)? else {
            return Ok(());
        };
        if record.finished_ms.is_some() {
            return Ok(());
        }
        record.finished_ms = Some(now);
        self.store.put(COORDINATOR_TREE, &tx.key(), &encode(&record))?;
        Ok(())
    }

    /// The answer for a participant asking about `tx` when no coordinator for it is in memory:
    /// the logged decision, else abort (presumed abort).
    pub fn decision_for(&self, tx: TxId) -> Result<Decision, CoordinatorError> {
        Ok(self.get(tx)?.and_then(|record| record.decision).unwrap_or(Decision::Abort))
    }

    /// Every kept record, in key order (for status listings).
    pub fn records(&self) -> Result<Vec<CoordinatorRecord>, CoordinatorError> {
        scan_all(self.store.as_ref(), COORDINATOR_TREE)
    }

    /// Transactions not every participant has acknowledged (in doubt somewhere), from the log.
    pub fn unfinished(&self) -> Result<Vec<CoordinatorRecord>, CoordinatorError> {
        let records = self.records()?;
        Ok(records.into_iter().filter(|record| record.finished_ms.is_none()).collect())
    }

    /// Rebuilds the coordinators of every unfinished transaction after a restart, each with the
    /// effects to perform now: a logged decision is re-sent; no decision means abort.
    pub fn recover(
        &self,
        config: CoordinatorConfig,
        now: Millis,
    ) -> Result<Vec<(TxId, Coordinator, Vec<coordinator::Effect>)>, CoordinatorError> {
        let mut recovered = Vec::new();
        for record in self.records()? {
            if record.finished_ms.is_some() {
                continue;
            }
            let (machine, effects) = Coordinator::recover(&record, config, now);
            recovered.push((record.tx, machine, effects));
        }
        Ok(recovered)
    }

    /// Removes records finished before `now - retention_ms`; returns how many.
    pub fn compact(&self, now: Millis, retention_ms: u64) -> Result<usize, CoordinatorError> {
        let horizon = now.saturating_sub(retention_ms);
        let mut removed = 0;
        for record in self.records()? {
            if record.finished_ms.is_some_and(|finished| finished < horizon) {
                self.store.remove(COORDINATOR_TREE, &record.tx.key())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A participant's log.
#[derive(Debug, Clone)]
pub struct ParticipantLog {
    store: Arc<dyn StateStore>,
}

impl ParticipantLog {
    /// The log in `store`'s tree [`PARTICIPANT_TREE`].
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        ParticipantLog { store }
    }

    /// The record of `tx`, if kept.
    pub fn get(&self, tx: TxId) -> Result<Option<ParticipantRecord>, CoordinatorError> {
        let bytes = self.store.get(PARTICIPANT_TREE, &tx.key())?;
        bytes.map(|bytes| decode(PARTICIPANT_TREE, &tx.key(), &bytes)).transpose()
    }

    /// Performs [`participant::Effect::PersistPrepared`]. An outcome already persisted is never
    /// overwritten (the transaction ended; a prepared record would resurrect it).
    pub fn persist_prepared(
        &self,
        tx: TxId,
        payload: &[u8],
        deadline_ms: Millis,
        now: Millis,
    ) -> Result<(), CoordinatorError> {
        if let Some(existing) = self.get(tx)?
            && existing.outcome.is_some()
        {
            tracing::warn!(tx = %tx, "participant_log.prepared after the outcome, ignored");
            return Ok(());
        }
        let record = ParticipantRecord {
            v: RECORD_VERSION,
            tx,
            payload: payload.to_vec(),
            deadline_ms,
            prepared_ms: Some(now),
            outcome: None,
            outcome_ms: None,
        };
        self.store.put(PARTICIPANT_TREE, &tx.key(), &encode(&record))?;
        Ok(())
    }

    /// Performs [`participant::Effect::PersistOutcome`]; creates a record for a transaction never
    /// prepared here (an abort received for an unknown transaction).
    pub fn persist_outcome(&self, tx: TxId, outcome: Decision, now: Millis) -> Result<(), CoordinatorError> {
        let mut record = self.get(tx)?.unwrap_or(ParticipantRecord {
            v: RECORD_VERSION,
            tx,
            payload: Vec::new(),
            deadline_ms: 0,
            prepared_ms: None,
            outcome: None,
            outcome_ms: None,
        });
        if record.outcome.is_some() {
            return Ok(());
        }
        record.v = RECORD_VERSION;
        record.outcome = Some(outcome);
        record.outcome_ms = Some(now);
        self.store.put(PARTICIPANT_TREE, &tx.key(), &encode(&record))?;
        Ok(())
    }

    /// Every kept record, in key order.
    pub fn records(&self) -> Result<Vec<ParticipantRecord>, CoordinatorError> {
        scan_all(self.store.as_ref(), PARTICIPANT_TREE)
    }

    /// Prepared transactions without an outcome (in doubt), from the log.
    pub fn in_doubt(&self) -> Result<Vec<ParticipantRecord>, CoordinatorError> {
        let records = self.records()?;
        Ok(records.into_iter().filter(|record| record.outcome.is_none()).collect())
    }

    /// Rebuilds the participant of every kept transaction after a restart, each with the effects
    /// to perform now: in doubt asks the coordinator; with an outcome re-acknowledges it.
    pub fn recover(
        &self,
        config: ParticipantConfig,
        now: Millis,
    ) -> Result<Vec<(TxId, Participant, Vec<participant::Effect>)>, CoordinatorError> {
        let mut recovered = Vec::new();
        for record in self.records()? {
            let (machine, effects) = Participant::recover(&record, config, now);
            recovered.push((record.tx, machine, effects));
        }
        Ok(recovered)
    }

    /// Removes records whose outcome was persisted before `now - retention_ms`; returns how many.
    /// See the module documentation for the lower bound on `retention_ms`.
    pub fn compact(&self, now: Millis, retention_ms: u64) -> Result<usize, CoordinatorError> {
        let horizon = now.saturating_sub(retention_ms);
        let mut removed = 0;
        for record in self.records()? {
            if record.outcome_ms.is_some_and(|at| at < horizon) {
                self.store.remove(PARTICIPANT_TREE, &record.tx.key())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
