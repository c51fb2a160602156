//! The coordinator's side of presumed-abort two-phase commit for one transaction: a pure state
//! machine (`handle(input, now) -> effects`) that the master's driver feeds with votes, acks,
//! queries, log confirmations and clock ticks.
//!
//! The driver performs the effects in order. [`Effect::LogBegin`] and [`Effect::LogDecision`] are
//! durable writes ([`crate::log::CoordinatorLog`]); after a decision write returns, the driver
//! feeds [`Input::DecisionLogged`], and only then does the machine send the decision to anyone.

use std::collections::BTreeMap;

use crate::log::{CoordinatorRecord, RECORD_VERSION};
use crate::{Backoff, Decision, Millis, TxId, Vote};

/// Timers of a coordinator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// Resending prepares to silent participants, decisions to participants that have not
    /// acknowledged, and decision writes the driver has not confirmed.
    pub resend: Backoff,
}

/// What happens to a coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Begin: log the transaction and send prepares.
    Start,
    /// A participant's vote arrived.
    Vote {
        /// The participant.
        node: String,
        /// Its vote.
        vote: Vote,
    },
    /// The durable write of [`Effect::LogDecision`] returned.
    DecisionLogged {
        /// The decision that was written.
        decision: Decision,
    },
    /// A participant applied the decision and persisted its outcome.
    Ack {
        /// The participant.
        node: String,
        /// The decision it applied.
        decision: Decision,
    },
    /// Time passed: deadlines and resend timers.
    Tick,
    /// An in-doubt participant asks what happened.
    Query {
        /// The participant.
        node: String,
    },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write the begin record (create if absent). Not needed for safety (an unknown transaction
    /// is presumed aborted) but it lets a restarted coordinator abort promptly and show status.
    LogBegin(CoordinatorRecord),
    /// Durably write the decision ([`crate::log::CoordinatorLog::write_decision`]), then feed
    /// [`Input::DecisionLogged`]. Re-emitted on ticks until confirmed; the write is idempotent.
    LogDecision(CoordinatorRecord),
    /// Send a prepare request.
    SendPrepare {
        /// The participant.
        node: String,
        /// After this the participant refuses the prepare (it would be too late anyway).
        deadline_ms: Millis,
    },
    /// Send the (logged) decision.
    SendDecision {
        /// The participant.
        node: String,
        /// The decision.
        decision: Decision,
    },
    /// Reply to [`Input::Query`]: the logged decision, or `None` while undecided (ask again).
    Answer {
        /// The participant that asked.
        node: String,
        /// The decision, once logged.
        decision: Option<Decision>,
    },
    /// Every participant acknowledged: mark the record finished
    /// ([`crate::log::CoordinatorLog::finish`]); it is compacted after the retention window.
    Done {
        /// The decision everyone applied.
        decision: Decision,
    },
}

/// Where a coordinator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Built, not started.
    Created,
    /// Prepares sent, collecting votes.
    Preparing,
    /// Decided, waiting for the decision's durable write.
    Deciding(Decision),
    /// Decision logged, sending it until every participant acknowledges.
    Decided(Decision),
    /// Every participant acknowledged.
    Done(Decision),
}

impl Phase {
    /// Lowercase name for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Preparing => "preparing",
            Phase::Deciding(_) => "deciding",
            Phase::Decided(_) => "decided",
            Phase::Done(_) => "done",
        }
    }

    /// The decision, once taken (possibly not yet logged).
    pub fn decision(self) -> Option<Decision> {
        match self {
            Phase::Created | Phase::Preparing => None,
            Phase::Deciding(d) | Phase::Decided(d) | Phase::Done(d) => Some(d),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct NodeState {
    vote: Option<Vote>,
    acked: bool,
}

/// One participant as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantView {
    /// The participant.
    pub node: String,
    /// Its vote, if one arrived.
    pub vote: Option<Vote>,
    /// Whether it acknowledged the decision.
    pub acked: bool,
}

/// A transaction as `ragmeshctl action status` shows it (coordinator side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxStatus {
    /// The transaction.
    pub tx: TxId,
    /// Phase name ([`Phase::as_str`]).
    pub phase: &'static str,
    /// The decision, once logged.
    pub decision: Option<Decision>,
    /// Votes and acks per participant.
    pub participants: Vec<ParticipantView>,
    /// Prepare deadline.
    pub deadline_ms: Millis,
    /// When the transaction started.
    pub started_ms: Millis,
    /// When the decision was logged.
    pub decided_ms: Option<Millis>,
    /// While some participant may still be prepared without knowing the outcome (not every
    /// acknowledgement is in): since when. `None` once done.
    pub in_doubt_since: Option<Millis>,
}

impl TxStatus {
    /// The status of a transaction known only from its log record (no coordinator in memory:
    /// finished, or listed by a tool). Votes are not logged; acks are known only once finished.
    pub fn from_record(record: &CoordinatorRecord) -> TxStatus {
        let finished = record.finished_ms.is_some();
        let phase = match (record.decision, finished) {
            (Some(_), true) => "done",
            (Some(_), false) => "decided",
            (None, _) => "preparing",
        };
        let participants = record
            .participants
            .iter()
            .map(|node| ParticipantView { node: node.clone(), vote: None, acked: finished })
            .collect();
        TxStatus {
            tx: record.tx,
            phase,
            decision: record.decision,
            participants,
            deadline_ms: record.deadline_ms,
            started_ms: record.started_ms,
            decided_ms: record.decided_ms,
            in_doubt_since: if finished { None } else { Some(record.started_ms) },
        }
    }
}

/// The coordinator of one transaction.
#[derive(Debug, Clone)]
pub struct Coordinator {
    tx: TxId,
    nodes: BTreeMap<String, NodeState>,
    deadline_ms: Millis,
    started_ms: Millis,
    decided_ms: Option<Millis>,
    phase: Phase,
    config: CoordinatorConfig,
    next_resend_ms: Millis,
    resend_attempt: u32,
}

impl Coordinator {
    /// A new transaction over `participants` (duplicates collapse) whose votes must all be in by
    /// `deadline_ms`. Feed [`Input::Start`] to begin.
    pub fn new(tx: TxId, participants: &[String], deadline_ms: Millis, config: CoordinatorConfig) -> Self {
        let nodes = participants.iter().map(|node| (node.clone(), NodeState::default())).collect();
        Coordinator {
            tx,
            nodes,
            deadline_ms,
            started_ms: 0,
            decided_ms: None,
            phase: Phase::Created,
            config,
            next_resend_ms: 0,
            resend_attempt: 0,
        }
    }

    /// Rebuilds the coordinator of a logged transaction after a restart (volatile votes and acks
    /// are lost). With a logged decision it re-sends it to everyone; without one it aborts
    /// (presumed abort: a commit is never sent before it is logged). Returns the effects to perform.
    pub fn recover(record: &CoordinatorRecord, config: CoordinatorConfig, now: Millis) -> (Self, Vec<Effect>) {
        let mut coordinator = Coordinator::new(record.tx, &record.participants, record.deadline_ms, config);
        coordinator.started_ms = record.started_ms;
        let mut effects = Vec::new();
        match (record.decision, record.finished_ms) {
            (Some(decision), Some(_)) => {
                coordinator.decided_ms = record.decided_ms;
                for node in coordinator.nodes.values_mut() {
                    node.acked = true;
                }
                coordinator.phase = Phase::Done(decision);
            }
            (Some(decision), None) => {
                coordinator.decided_ms = record.decided_ms.or(Some(now));
                coordinator.phase = Phase::Decided(decision);
                coordinator.send_decision_to_unacked(decision, &mut effects);
                coordinator.schedule_first_resend(now);
                coordinator.finish_if_all_acked(decision, &mut effects);
            }
            (None, _) => {
                coordinator.phase = Phase::Preparing;
                coordinator.decide(Decision::Abort, now, &mut effects);
            }
        }
        tracing::info!(tx = %record.tx, phase = coordinator.phase.as_str(), "coordinator.recover");
        (coordinator, effects)
    }

    /// The transaction.
    pub fn tx(&self) -> TxId {
        self.tx
    }

    /// Where the machine is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The decision, once logged (what the machine may tell others).
    pub fn logged_decision(&self) -> Option<Decision> {
        match self.phase {
            Phase::Decided(d) | Phase::Done(d) => Some(d),
            _ => None,
        }
    }

    /// The durable record of the machine's current state.
    pub fn record(&self) -> CoordinatorRecord {
        CoordinatorRecord {
            v: RECORD_VERSION,
            tx: self.tx,
            participants: self.nodes.keys().cloned().collect(),
            deadline_ms: self.deadline_ms,
            started_ms: self.started_ms,
            decision: self.phase.decision(),
            decided_ms: self.decided_ms,
            finished_ms: None,
        }
    }

    /// The status view.
    pub fn status(&self) -> TxStatus {
        let participants = self
            .nodes
            .iter()
            .map(|(node, state)| ParticipantView { node: node.clone(), vote: state.vote, acked: state.acked })
            .collect();
        let in_doubt_since = match self.phase {
            Phase::Done(_) => None,
            _ => Some(self.started_ms),
        };
        TxStatus {
            tx: self.tx,
            phase: self.phase.as_str(),
            decision: self.logged_decision(),
            participants,
            deadline_ms: self.deadline_ms,
            started_ms: self.started_ms,
            decided_ms: self.decided_ms,
            in_doubt_since,
        }
    }

    /// Advances the machine; returns what the driver must do, in order.
    pub fn handle(&mut self, input: Input, now: Millis) -> Vec<Effect> {
        let mut effects = Vec::new();
        match input {
            Input::Start => self.on_start(now, &mut effects),
            Input::Vote { node, vote } => self.on_vote(node, vote, now, &mut effects),
            Input::DecisionLogged { decision } => self.on_logged(decision, now, &mut effects),
            Input::Ack { node, decision } => self.on_ack(node, decision, &mut effects),
            Input::Tick => self.on_tick(now, &mut effects),
            Input::Query { node } => {
                effects.push(Effect::Answer { node, decision: self.logged_decision() });
            }
        }
        effects
    }

    fn on_start(&mut self, now: Millis, effects: &mut Vec<Effect>) {
        if self.phase != Phase::Created {
            return;
        }
        self.phase = Phase::Preparing;
        self.started_ms = now;
        effects.push(Effect::LogBegin(self.record()));
        for node in self.nodes.keys() {
            effects.push(Effect::SendPrepare { node: node.clone(), deadline_ms: self.deadline_ms });
        }
        self.schedule_first_resend(now);
        // No participants: every vote is (vacuously) in.
        self.decide_if_votes_allow(now, effects);
    }

    fn on_vote(&mut self, node: String, vote: Vote, now: Millis, effects: &mut Vec<Effect>) {
        let Some(state) = self.nodes.get_mut(&node) else {
            tracing::warn!(tx = %self.tx, node.id = %node, "coordinator.vote from a node outside the transaction, ignored");
            return;
        };
        match self.phase {
            Phase::Preparing => {
                // A "no" is final; a later "yes" from a restarted participant does not undo it.
                if state.vote != Some(Vote::No) {
                    state.vote = Some(vote);
                }
                self.decide_if_votes_allow(now, effects);
            }
            Phase::Decided(decision) if vote == Vote::Yes && !state.acked => {
                // A late or repeated yes: that participant waits; tell it now rather than at the next resend.
                effects.push(Effect::SendDecision { node, decision });
            }
            _ => {}
        }
    }

    fn decide_if_votes_allow(&mut self, now: Millis, effects: &mut Vec<Effect>) {
        if self.nodes.values().any(|state| state.vote == Some(Vote::No)) {
            self.decide(Decision::Abort, now, effects);
        } else if self.nodes.values().all(|state| state.vote == Some(Vote::Yes)) {
            self.decide(Decision::Commit, now, effects);
        }
    }

    fn decide(&mut self, decision: Decision, now: Millis, effects: &mut Vec<Effect>) {
        self.phase = Phase::Deciding(decision);
        tracing::info!(tx = %self.tx, decision = decision.as_str(), "coordinator.decide");
        effects.push(Effect::LogDecision(self.record()));
        self.schedule_first_resend(now);
    }

    fn on_logged(&mut self, decision: Decision, now: Millis, effects: &mut Vec<Effect>) {
        if self.phase != Phase::Deciding(decision) {
            return;
        }
        self.phase = Phase::Decided(decision);
        self.decided_ms = Some(now);
        self.send_decision_to_unacked(decision, effects);
        self.schedule_first_resend(now);
        self.finish_if_all_acked(decision, effects);
    }

    fn on_ack(&mut self, node: String, decision: Decision, effects: &mut Vec<Effect>) {
        let Phase::Decided(logged) = self.phase else {
            return;
        };
        if decision != logged {
            tracing::warn!(tx = %self.tx, node.id = %node, acked = decision.as_str(), logged = logged.as_str(),
                "coordinator.ack of another decision, ignored");
            return;
        }
        if let Some(state) = self.nodes.get_mut(&node) {
            state.acked = true;
        }
        self.finish_if_all_acked(logged, effects);
    }

    fn finish_if_all_acked(&mut self, decision: Decision, effects: &mut Vec<Effect>) {
        if self.nodes.values().all(|state| state.acked) {
            self.phase = Phase::Done(decision);
            tracing::info!(tx = %self.tx, decision = decision.as_str(), "coordinator.done");
            effects.push(Effect::Done { decision });
        }
    }

    fn on_tick(&mut self, now: Millis, effects: &mut Vec<Effect>) {
        match self.phase {
            Phase::Preparing if now >= self.deadline_ms => {
                tracing::info!(tx = %self.tx, "coordinator.prepare deadline passed");
                self.decide(Decision::Abort, now, effects);
            }
            Phase::Preparing if now >= self.next_resend_ms => {
                for (node, state) in &self.nodes {
                    if state.vote.is_none() {
                        effects.push(Effect::SendPrepare { node: node.clone(), deadline_ms: self.deadline_ms });
                    }
                }
                self.schedule_next_resend(now);
            }
            Phase::Deciding(_) if now >= self.next_resend_ms => {
                effects.push(Effect::LogDecision(self.record()));
                self.schedule_next_resend(now);
            }
            Phase::Decided(decision) if now >= self.next_resend_ms => {
                self.send_decision_to_unacked(decision, effects);
                self.schedule_next_resend(now);
            }
            _ => {}
        }
    }

    fn send_decision_to_unacked(&self, decision: Decision, effects: &mut Vec<Effect>) {
        for (node, state) in &self.nodes {
            if !state.acked {
                effects.push(Effect::SendDecision { node: node.clone(), decision });
            }
        }
    }

    fn schedule_first_resend(&mut self, now: Millis) {
        self.resend_attempt = 0;
        self.next_resend_ms = now.saturating_add(self.config.resend.delay(0));
    }

    fn schedule_next_resend(&mut self, now: Millis) {
        self.resend_attempt = self.resend_attempt.saturating_add(1);
        self.next_resend_ms = now.saturating_add(self.config.resend.delay(self.resend_attempt));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff { base_ms: 100, max_ms: 400 };

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn started(names: &[&str]) -> Coordinator {
        let mut c = Coordinator::new(TxId(7), &nodes(names), 1_000, CoordinatorConfig { resend: BACKOFF });
        c.handle(Input::Start, 0);
        c
    }

    fn vote(node: &str, vote: Vote) -> Input {
        Input::Vote { node: node.to_owned(), vote }
    }

    fn sends(effects: &[Effect]) -> Vec<(String, Decision)> {
        let mut out = Vec::new();
        for effect in effects {
            if let Effect::SendDecision { node, decision } = effect {
                out.push((node.clone(), *decision));
            }
        }
        out
    }

    fn logged_decisions(effects: &[Effect]) -> Vec<Option<Decision>> {
        let mut out = Vec::new();
        for effect in effects {
            if let Effect::LogDecision(record) = effect {
                out.push(record.decision);
            }
        }
        out
    }

    #[test]
    fn start_logs_the_begin_record_then_sends_every_prepare() {
        let mut c = Coordinator::new(TxId(7), &nodes(&["b", "a"]), 1_000, CoordinatorConfig::default());
        let effects = c.handle(Input::Start, 5);
        let Effect::LogBegin(record) = &effects[0] else { panic!("first effect is the begin record: {effects:?}") };
        assert_eq!(record.participants, nodes(&["a", "b"]));
        assert_eq!(record.decision, None);
        assert_eq!(record.started_ms, 5);
        assert_eq!(
            effects[1..],
            [
                Effect::SendPrepare { node: "a".into(), deadline_ms: 1_000 },
                Effect::SendPrepare { node: "b".into(), deadline_ms: 1_000 }
            ]
        );
        assert!(c.handle(Input::Start, 6).is_empty(), "a second start does nothing");
    }

    #[test]
    fn commit_is_logged_before_it_is_sent_and_only_when_every_vote_is_yes() {
        let mut c = started(&["a", "b"]);
        assert!(c.handle(vote("a", Vote::Yes), 1).is_empty(), "one yes of two decides nothing");
        let effects = c.handle(vote("b", Vote::Yes), 2);
        assert_eq!(logged_decisions(&effects), [Some(Decision::Commit)]);
        assert!(sends(&effects).is_empty(), "nothing is sent before the write is confirmed");
        assert_eq!(
            c.handle(Input::Query { node: "a".into() }, 3),
            [Effect::Answer { node: "a".into(), decision: None }]
        );
        assert!(sends(&c.handle(Input::Tick, 50)).is_empty(), "ticks do not send an unlogged decision");
        let effects = c.handle(Input::DecisionLogged { decision: Decision::Commit }, 60);
        assert_eq!(sends(&effects), [("a".into(), Decision::Commit), ("b".into(), Decision::Commit)]);
        assert_eq!(
            c.handle(Input::Query { node: "b".into() }, 61),
            [Effect::Answer { node: "b".into(), decision: Some(Decision::Commit) }]
        );
    }

    #[test]
    fn one_no_vote_aborts_and_a_later_yes_does_not_undo_it() {
        let mut c = started(&["a", "b", "c"]);
        c.handle(vote("a", Vote::Yes), 1);
        let effects = c.handle(vote("b", Vote::No), 2);
        assert_eq!(logged_decisions(&effects), [Some(Decision::Abort)]);
        assert!(c.handle(vote("b", Vote::Yes), 3).is_empty());
        assert!(c.handle(vote("c", Vote::Yes), 3).is_empty());
        assert_eq!(c.phase(), Phase::Deciding(Decision::Abort));
    }

    #[test]
    fn no_vote_before_a_restart_and_yes_after_still_aborts() {
        let mut c = started(&["a", "b"]);
        c.handle(vote("a", Vote::No), 1);
        c.handle(vote("a", Vote::Yes), 2);
        c.handle(vote("b", Vote::Yes), 2);
        assert_eq!(c.phase(), Phase::Deciding(Decision::Abort));
    }

    #[test]
    fn the_prepare_deadline_aborts() {
        let mut c = started(&["a", "b"]);
        c.handle(vote("a", Vote::Yes), 1);
        assert!(logged_decisions(&c.handle(Input::Tick, 999)).is_empty());
        assert_eq!(logged_decisions(&c.handle(Input::Tick, 1_000)), [Some(Decision::Abort)]);
    }

    #[test]
    fn prepares_are_resent_with_backoff_to_silent_participants_only() {
        let mut c = started(&["a", "b"]);
        c.handle(vote("a", Vote::Yes), 1);
        let mut resent_at = Vec::new();
        for now in 0..900 {
            let effects = c.handle(Input::Tick, now);
            if !effects.is_empty() {
                assert_eq!(effects, [Effect::SendPrepare { node: "b".into(), deadline_ms: 1_000 }]);
                resent_at.push(now);
            }
        }
        // base 100 after start, then 200, 400, 400 (capped).
        assert_eq!(resent_at, [100, 300, 700]);
    }

    #[test]
    fn decisions_are_resent_until_acked_and_done_comes_once_every_ack_is_in() {
        let mut c = started(&["a", "b"]);
        c.handle(vote("a", Vote::Yes), 1);
        c.handle(vote("b", Vote::Yes), 1);
        c.handle(Input::DecisionLogged { decision: Decision::Commit }, 10);
        assert!(c.handle(Input::Ack { node: "a".into(), decision: Decision::Abort }, 11).is_empty(), "wrong ack");
        assert!(c.handle(Input::Ack { node: "a".into(), decision: Decision::Commit }, 11).is_empty());
        assert_eq!(sends(&c.handle(Input::Tick, 110)), [("b".into(), Decision::Commit)]);
        assert!(c.handle(Input::Tick, 111).is_empty(), "the next resend waits for the backoff");
        assert_eq!(
            sends(&c.handle(vote("b", Vote::Yes), 112)),
            [("b".into(), Decision::Commit)],
            "a late yes is answered"
        );
        let effects = c.handle(Input::Ack { node: "b".into(), decision: Decision::Commit }, 120);
        assert_eq!(effects, [Effect::Done { decision: Decision::Commit }]);
        assert!(c.handle(Input::Ack { node: "b".into(), decision: Decision::Commit }, 121).is_empty(), "done once");
        assert!(c.handle(Input::Tick, 10_000).is_empty());
        assert_eq!(c.status().in_doubt_since, None);
    }

    #[test]
    fn an_unconfirmed_decision_write_is_retried() {
        let mut c = started(&["a"]);
        c.handle(vote("a", Vote::No), 1);
        assert_eq!(logged_decisions(&c.handle(Input::Tick, 101)), [Some(Decision::Abort)]);
    }

    #[test]
    fn votes_from_outside_the_transaction_are_ignored() {
        let mut c = started(&["a"]);
        assert!(c.handle(vote("x", Vote::No), 1).is_empty());
        assert_eq!(c.phase(), Phase::Preparing);
    }

    #[test]
    fn no_participants_commit_at_once() {
        let mut c = Coordinator::new(TxId(1), &[], 10, CoordinatorConfig::default());
        let effects = c.handle(Input::Start, 0);
        assert_eq!(logged_decisions(&effects), [Some(Decision::Commit)]);
        let effects = c.handle(Input::DecisionLogged { decision: Decision::Commit }, 1);
        assert_eq!(effects, [Effect::Done { decision: Decision::Commit }]);
    }

    #[test]
    fn recovery_resends_a_logged_decision_and_aborts_an_unlogged_one() {
        let c = started(&["a", "b"]);
        let mut record = c.record();
        let (mut undecided, effects) = Coordinator::recover(&record, CoordinatorConfig::default(), 50);
        assert_eq!(logged_decisions(&effects), [Some(Decision::Abort)], "presumed abort");
        assert!(sends(&effects).is_empty());
        assert_eq!(undecided.handle(vote("a", Vote::Yes), 51).len(), 0);

        record.decision = Some(Decision::Commit);
        let (recovered, effects) = Coordinator::recover(&record, CoordinatorConfig::default(), 50);
        assert_eq!(sends(&effects), [("a".into(), Decision::Commit), ("b".into(), Decision::Commit)]);
        assert_eq!(recovered.logged_decision(), Some(Decision::Commit));

        record.finished_ms = Some(40);
        let (finished, effects) = Coordinator::recover(&record, CoordinatorConfig::default(), 50);
        assert!(effects.is_empty());
        assert_eq!(finished.phase(), Phase::Done(Decision::Commit));
    }

    #[test]
    fn status_shows_votes_acks_and_the_logged_decision() {
        let mut c = started(&["a", "b"]);
        c.handle(vote("a", Vote::Yes), 1);
        let status = c.status();
        assert_eq!(status.phase, "preparing");
        assert_eq!(status.in_doubt_since, Some(0));
        assert_eq!(status.participants[0], ParticipantView { node: "a".into(), vote: Some(Vote::Yes), acked: false });
        assert_eq!(status.participants[1].vote, None);
        c.handle(vote("b", Vote::No), 2);
        assert_eq!(c.status().decision, None, "not logged yet");
        c.handle(Input::DecisionLogged { decision: Decision::Abort }, 3);
        assert_eq!(c.status().decision, Some(Decision::Abort));
        assert_eq!(c.status().decided_ms, Some(3));

        let mut record = c.record();
        assert_eq!(TxStatus::from_record(&record).phase, "decided");
        record.finished_ms = Some(9);
        let status = TxStatus::from_record(&record);
        assert_eq!((status.phase, status.in_doubt_since), ("done", None));
        assert!(status.participants.iter().all(|p| p.acked));
    }
}
