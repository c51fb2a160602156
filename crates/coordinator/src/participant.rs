//! A participant's side of presumed-abort two-phase commit for one transaction: a pure state
//! machine that an agent's driver feeds with prepare requests, decisions, the results of its own
//! local steps and clock ticks.
//!
//! The driver performs the effects in order; a persist effect must be durable before the next
//! effect is performed ([`crate::log::ParticipantLog`]). Apply effects must be idempotent: after a
//! crash between applying and persisting the outcome, the decision is applied again from the
//! persisted payload.

use crate::log::ParticipantRecord;
use crate::{Backoff, Decision, Millis, TxId, Vote};

/// Timers of a participant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParticipantConfig {
    /// Asking the coordinator about a prepared transaction whose decision has not arrived: the
    /// first ask `base_ms` after voting yes (or at once after a restart), then with backoff.
    pub ask: Backoff,
}

/// What happens to a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The coordinator asks to prepare (first time or again).
    Prepare {
        /// What to prepare (opaque to this crate: action arguments, documents).
        payload: Vec<u8>,
        /// The coordinator's prepare deadline; a prepare arriving later is refused.
        deadline_ms: Millis,
    },
    /// The local prepare step of [`Effect::RunPrepare`] finished: `true` if it can commit.
    PrepareFinished {
        /// Whether the step succeeded.
        ok: bool,
    },
    /// The write of [`Effect::PersistPrepared`] is durable.
    PreparedPersisted,
    /// The coordinator's decision (sent, re-sent, or its answer to [`Effect::AskCoordinator`]).
    Decision(Decision),
    /// The apply effect finished.
    Applied,
    /// Time passed: ask timers and the prepare deadline.
    Tick,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Run the local prepare step (validate, stage, tantivy `prepare_commit`), then feed
    /// [`Input::PrepareFinished`].
    RunPrepare {
        /// What to prepare.
        payload: Vec<u8>,
    },
    /// Durably persist the prepared state, then feed [`Input::PreparedPersisted`].
    PersistPrepared {
        /// What was prepared (needed to commit after a restart).
        payload: Vec<u8>,
        /// The prepare deadline.
        deadline_ms: Millis,
    },
    /// Send this vote to the coordinator.
    Vote(Vote),
    /// Make the prepared change visible (idempotently), then feed [`Input::Applied`].
    ApplyCommit {
        /// What was prepared.
        payload: Vec<u8>,
    },
    /// Discard the prepared change (idempotently), then feed [`Input::Applied`].
    ApplyAbort {
        /// What was prepared (may be empty if nothing was).
        payload: Vec<u8>,
    },
    /// Durably persist the outcome (before the next effect, the ack).
    PersistOutcome(Decision),
    /// Acknowledge the decision to the coordinator.
    Ack(Decision),
    /// Ask the coordinator what happened (in doubt: prepared, voted yes, no decision yet).
    AskCoordinator,
}

/// Where a participant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing known about the transaction.
    Idle,
    /// Running the local prepare step.
    Preparing,
    /// Persisting the prepared state.
    Persisting,
    /// Voted yes; in doubt until the decision arrives. Never decides alone.
    Prepared,
    /// Applying the decision.
    Applying(Decision),
    /// Outcome applied (and persisted, or nothing to persist).
    Ended(Decision),
}

impl Phase {
    /// Lowercase name for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Preparing => "preparing",
            Phase::Persisting => "persisting",
            Phase::Prepared => "prepared",
            Phase::Applying(_) => "applying",
            Phase::Ended(_) => "ended",
        }
    }
}

/// A transaction as an agent's status shows it (participant side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantStatus {
    /// The transaction.
    pub tx: TxId,
    /// Phase name ([`Phase::as_str`]).
    pub phase: &'static str,
    /// The vote sent, if any.
    pub vote: Option<Vote>,
    /// The decision, once known.
    pub decision: Option<Decision>,
    /// Voted yes and no decision yet: since when.
    pub in_doubt_since: Option<Millis>,
}

/// The participant side of one transaction.
#[derive(Debug, Clone)]
pub struct Participant {
    tx: TxId,
    phase: Phase,
    payload: Vec<u8>,
    deadline_ms: Millis,
    vote: Option<Vote>,
    abort_requested: bool,
    in_doubt_since: Option<Millis>,
    config: ParticipantConfig,
    next_ask_ms: Millis,
    ask_attempt: u32,
}

impl Participant {
    /// A participant that knows nothing yet about `tx` (a prepare or a decision is coming).
    pub fn new(tx: TxId, config: ParticipantConfig) -> Self {
        Participant {
            tx,
            phase: Phase::Idle,
            payload: Vec::new(),
            deadline_ms: 0,
            vote: None,
            abort_requested: false,
            in_doubt_since: None,
            config,
            next_ask_ms: 0,
            ask_attempt: 0,
        }
    }

    /// Rebuilds a participant from its record after a restart: prepared without an outcome, it
    /// asks the coordinator at once; with an outcome, it re-acknowledges it.
    pub fn recover(record: &ParticipantRecord, config: ParticipantConfig, now: Millis) -> (Self, Vec<Effect>) {
        let mut participant = Participant::new(record.tx, config);
        participant.payload = record.payload.clone();
        participant.deadline_ms = record.deadline_ms;
        if record.prepared_ms.is_some() {
            participant.vote = Some(Vote::Yes);
        }
        let effects = match (record.outcome, record.prepared_ms) {
            (Some(decision), _) => {
                participant.phase = Phase::Ended(decision);
                vec![Effect::Ack(decision)]
            }
            (None, prepared_ms) => {
                participant.phase = Phase::Prepared;
                participant.vote = Some(Vote::Yes);
                participant.in_doubt_since = Some(prepared_ms.unwrap_or(now));
                participant.ask_attempt = 0;
                participant.next_ask_ms = now.saturating_add(config.ask.delay(0));
                vec![Effect::AskCoordinator]
            }
        };
        tracing::info!(tx = %record.tx, phase = participant.phase.as_str(), "participant.recover");
        (participant, effects)
    }

    /// The transaction.
    pub fn tx(&self) -> TxId {
        self.tx
    }

    /// Where the machine is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether it voted yes and waits for a decision.
    pub fn in_doubt(&self) -> bool {
        self.phase == Phase::Prepared
    }

    /// The status view.
    pub fn status(&self) -> ParticipantStatus {
        let decision = match self.phase {
            Phase::Applying(d) | Phase::Ended(d) => Some(d),
            _ => None,
        };
        ParticipantStatus {
            tx: self.tx,
            phase: self.phase.as_str(),
            vote: self.vote,
            decision,
            in_doubt_since: self.in_doubt_since,
        }
    }

    /// Advances the machine; returns what the driver must do, in order.
    pub fn handle(&mut self, input: Input, now: Millis) -> Vec<Effect> {
        match input {
            Input::Prepare { payload, deadline_ms } => self.on_prepare(payload, deadline_ms, now),
            Input::PrepareFinished { ok } => self.on_prepare_finished(ok),
            Input::PreparedPersisted => self.on_persisted(now),
            Input::Decision(decision) => self.on_decision(decision),
            Input::Applied => self.on_applied(),
            Input::Tick => self.on_tick(now),
        }
    }

    fn on_prepare(&mut self, payload: Vec<u8>, deadline_ms: Millis, now: Millis) -> Vec<Effect> {
        match self.phase {
            Phase::Idle if now >= deadline_ms => {
                // Too late: the coordinator has aborted (or will). Refusing also keeps a duplicate
                // prepare from re-preparing a transaction whose record was compacted.
                self.vote = Some(Vote::No);
                self.phase = Phase::Ended(Decision::Abort);
                vec![Effect::Vote(Vote::No)]
            }
            Phase::Idle => {
                self.payload = payload.clone();
                self.deadline_ms = deadline_ms;
                self.phase = Phase::Preparing;
                vec![Effect::RunPrepare { payload }]
            }
            Phase::Preparing | Phase::Persisting => Vec::new(),
            // Our vote may have been lost: repeat it.
            Phase::Prepared | Phase::Applying(_) | Phase::Ended(_) => self.vote.map(Effect::Vote).into_iter().collect(),
        }
    }

    fn on_prepare_finished(&mut self, ok: bool) -> Vec<Effect> {
        if self.phase != Phase::Preparing {
            return Vec::new();
        }
        if ok && !self.abort_requested {
            self.phase = Phase::Persisting;
            return vec![Effect::PersistPrepared { payload: self.payload.clone(), deadline_ms: self.deadline_ms }];
        }
        self.vote = Some(Vote::No);
        self.phase = Phase::Applying(Decision::Abort);
        vec![Effect::Vote(Vote::No), Effect::ApplyAbort { payload: self.payload.clone() }]
    }

    fn on_persisted(&mut self, now: Millis) -> Vec<Effect> {
        if self.phase != Phase::Persisting {
            return Vec::new();
        }
        if self.abort_requested {
            // Not voted yet, so aborting alone is allowed; PersistOutcome overwrites the prepared record.
            self.vote = Some(Vote::No);
            self.phase = Phase::Applying(Decision::Abort);
            return vec![Effect::Vote(Vote::No), Effect::ApplyAbort { payload: self.payload.clone() }];
        }
        self.vote = Some(Vote::Yes);
        self.phase = Phase::Prepared;
        self.in_doubt_since = Some(now);
        self.ask_attempt = 0;
        self.next_ask_ms = now.saturating_add(self.config.ask.delay(0));
        vec![Effect::Vote(Vote::Yes)]
    }

    fn on_decision(&mut self, decision: Decision) -> Vec<Effect> {
        match (self.phase, decision) {
            // Unknown abort: remember it (a late prepare is then refused) and acknowledge.
            (Phase::Idle, Decision::Abort) => {
                self.phase = Phase::Ended(Decision::Abort);
                vec![Effect::PersistOutcome(Decision::Abort), Effect::Ack(Decision::Abort)]
            }
            // Unknown commit: only a participant that voted yes can be told to commit, so this
            // one committed and its record was compacted. Acknowledge again.
            (Phase::Idle, Decision::Commit) => {
                self.phase = Phase::Ended(Decision::Commit);
                vec![Effect::Ack(Decision::Commit)]
            }
            (Phase::Preparing | Phase::Persisting, Decision::Abort) => {
                self.abort_requested = true;
                Vec::new()
            }
            (Phase::Preparing | Phase::Persisting, Decision::Commit) => {
                tracing::warn!(tx = %self.tx, "participant.decision commit before this participant voted, ignored");
                Vec::new()
            }
            (Phase::Prepared, decision) => {
                self.phase = Phase::Applying(decision);
                let payload = self.payload.clone();
                match decision {
                    Decision::Commit => vec![Effect::ApplyCommit { payload }],
                    Decision::Abort => vec![Effect::ApplyAbort { payload }],
                }
            }
            (Phase::Applying(_), _) => Vec::new(),
            (Phase::Ended(ended), decision) => {
                if ended != decision {
                    tracing::warn!(tx = %self.tx, ended = ended.as_str(), told = decision.as_str(),
                        "participant.decision differs from the outcome applied");
                }
                vec![Effect::Ack(ended)]
            }
        }
    }

    fn on_applied(&mut self) -> Vec<Effect> {
        let Phase::Applying(decision) = self.phase else {
            return Vec::new();
        };
        self.phase = Phase::Ended(decision);
        self.in_doubt_since = None;
        tracing::info!(tx = %self.tx, decision = decision.as_str(), "participant.applied");
        vec![Effect::PersistOutcome(decision), Effect::Ack(decision)]
    }

    fn on_tick(&mut self, now: Millis) -> Vec<Effect> {
        match self.phase {
            Phase::Prepared if now >= self.next_ask_ms => {
                self.ask_attempt = self.ask_attempt.saturating_add(1);
                self.next_ask_ms = now.saturating_add(self.config.ask.delay(self.ask_attempt));
                vec![Effect::AskCoordinator]
            }
            Phase::Preparing | Phase::Persisting if now >= self.deadline_ms => {
                // Not voted yet: allowed to give up alone; acted on when the local step returns.
                self.abort_requested = true;
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff { base_ms: 100, max_ms: 400 };

    fn fresh() -> Participant {
        Participant::new(TxId(9), ParticipantConfig { ask: BACKOFF })
    }

    fn prepare(deadline_ms: Millis) -> Input {
        Input::Prepare { payload: b"p".to_vec(), deadline_ms }
    }

    /// Prepared and voted yes at time 10.
    fn prepared() -> Participant {
        let mut p = fresh();
        p.handle(prepare(1_000), 0);
        p.handle(Input::PrepareFinished { ok: true }, 5);
        p.handle(Input::PreparedPersisted, 10);
        p
    }

    #[test]
    fn votes_yes_only_after_the_prepared_state_is_persisted() {
        let mut p = fresh();
        assert_eq!(p.handle(prepare(1_000), 0), [Effect::RunPrepare { payload: b"p".to_vec() }]);
        assert!(p.handle(prepare(1_000), 1).is_empty(), "a duplicate prepare while preparing does nothing");
        let effects = p.handle(Input::PrepareFinished { ok: true }, 5);
        assert_eq!(effects, [Effect::PersistPrepared { payload: b"p".to_vec(), deadline_ms: 1_000 }]);
        assert_eq!(p.handle(Input::PreparedPersisted, 10), [Effect::Vote(Vote::Yes)]);
        assert!(p.in_doubt());
        assert_eq!(p.status().in_doubt_since, Some(10));
        assert_eq!(p.handle(prepare(1_000), 11), [Effect::Vote(Vote::Yes)], "a lost vote is repeated");
    }

    #[test]
    fn a_failed_prepare_votes_no_and_discards() {
        let mut p = fresh();
        p.handle(prepare(1_000), 0);
        let effects = p.handle(Input::PrepareFinished { ok: false }, 5);
        assert_eq!(effects, [Effect::Vote(Vote::No), Effect::ApplyAbort { payload: b"p".to_vec() }]);
        assert_eq!(
            p.handle(Input::Applied, 6),
            [Effect::PersistOutcome(Decision::Abort), Effect::Ack(Decision::Abort)]
        );
        assert_eq!(p.handle(prepare(1_000), 7), [Effect::Vote(Vote::No)]);
    }

    #[test]
    fn a_prepare_after_its_deadline_is_refused() {
        let mut p = fresh();
        assert_eq!(p.handle(prepare(100), 100), [Effect::Vote(Vote::No)]);
        assert_eq!(p.phase(), Phase::Ended(Decision::Abort));
    }

    #[test]
    fn a_participant_that_voted_yes_never_decides_alone_and_asks_with_backoff() {
        let mut p = prepared();
        let mut asked_at = Vec::new();
        for now in 10..2_000 {
            for effect in p.handle(Input::Tick, now) {
                assert_eq!(effect, Effect::AskCoordinator, "only asks, long past the deadline");
                asked_at.push(now);
            }
        }
        assert_eq!(asked_at, [110, 310, 710, 1_110, 1_510, 1_910]);
        assert!(p.in_doubt());
        assert_eq!(
            p.handle(Input::Decision(Decision::Commit), 2_000),
            [Effect::ApplyCommit { payload: b"p".to_vec() }]
        );
        assert!(p.handle(Input::Decision(Decision::Commit), 2_001).is_empty(), "applying already");
        assert_eq!(
            p.handle(Input::Applied, 2_002),
            [Effect::PersistOutcome(Decision::Commit), Effect::Ack(Decision::Commit)],
            "the outcome is persisted before the ack"
        );
        assert_eq!(p.handle(Input::Decision(Decision::Commit), 2_003), [Effect::Ack(Decision::Commit)], "re-acks");
        assert_eq!(p.status().in_doubt_since, None);
    }

    #[test]
    fn before_voting_it_may_abort_alone() {
        let mut p = fresh();
        p.handle(prepare(100), 0);
        assert!(p.handle(Input::Tick, 100).is_empty());
        let effects = p.handle(Input::PrepareFinished { ok: true }, 101);
        assert_eq!(effects, [Effect::Vote(Vote::No), Effect::ApplyAbort { payload: b"p".to_vec() }]);
    }

    #[test]
    fn an_abort_during_persisting_wins_over_the_yes_vote() {
        let mut p = fresh();
        p.handle(prepare(1_000), 0);
        p.handle(Input::PrepareFinished { ok: true }, 1);
        assert!(p.handle(Input::Decision(Decision::Abort), 2).is_empty());
        assert!(p.handle(Input::Decision(Decision::Commit), 2).is_empty(), "commit before a yes is ignored");
        let effects = p.handle(Input::PreparedPersisted, 3);
        assert_eq!(effects, [Effect::Vote(Vote::No), Effect::ApplyAbort { payload: b"p".to_vec() }]);
    }

    #[test]
    fn decisions_for_unknown_transactions_are_acknowledged() {
        let mut p = fresh();
        assert_eq!(
            p.handle(Input::Decision(Decision::Abort), 0),
            [Effect::PersistOutcome(Decision::Abort), Effect::Ack(Decision::Abort)]
        );
        assert_eq!(p.handle(prepare(1_000), 1), Vec::<Effect>::new(), "a late prepare after the abort is not run");
        let mut p = fresh();
        assert_eq!(p.handle(Input::Decision(Decision::Commit), 0), [Effect::Ack(Decision::Commit)]);
    }

    #[test]
    fn recovery_asks_when_in_doubt_and_reacks_an_outcome() {
        let mut record = ParticipantRecord {
            v: 1,
            tx: TxId(9),
            payload: b"p".to_vec(),
            deadline_ms: 1_000,
            prepared_ms: Some(10),
            outcome: None,
            outcome_ms: None,
        };
        let (p, effects) = Participant::recover(&record, ParticipantConfig::default(), 50);
        assert_eq!(effects, [Effect::AskCoordinator]);
        assert!(p.in_doubt());
        assert_eq!(p.status().in_doubt_since, Some(10));
        record.outcome = Some(Decision::Commit);
        let (p, effects) = Participant::recover(&record, ParticipantConfig::default(), 50);
        assert_eq!(effects, [Effect::Ack(Decision::Commit)]);
        assert_eq!(p.phase(), Phase::Ended(Decision::Commit));
    }
}
