//! Property tests of the whole protocol: one coordinator and 1..5 participants over a simulated
//! network that loses, duplicates and reorders messages, with crashes and restarts (volatile state
//! lost, machines rebuilt from their logs with `recover`) at any step. After the faults stop and
//! messages flow, every participant must end with the coordinator's decision within a bounded
//! number of rounds, commit only if everyone voted yes, and no decision may be sent unlogged.
//!
//! The logs run over `MemStore`, an in-memory [`StateStore`] that passes the store's conformance
//! suite (sled flushes on every write: too slow for thousands of simulated runs; the sled log test
//! covers the real backend).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use ragmesh_coordinator::coordinator::{self, Coordinator, CoordinatorConfig};
use ragmesh_coordinator::log::{CoordinatorLog, ParticipantLog};
use ragmesh_coordinator::participant::{self, Participant, ParticipantConfig, Phase as PPhase};
use ragmesh_coordinator::{Backoff, Decision, Millis, TxId, Vote};
use ragmesh_store::{CasConflict, Entry, StateStore, StoreError};

/// Ordered trees by name.
type Trees = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// An in-memory [`StateStore`]: ordered trees in a mutex.
#[derive(Debug, Default)]
struct MemStore {
    trees: Mutex<Trees>,
}

impl MemStore {
    fn with<T>(&self, f: impl FnOnce(&mut Trees) -> T) -> T {
        f(&mut self.trees.lock().expect("no test panics while holding the lock"))
    }
}

impl StateStore for MemStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(|trees| trees.get(tree).and_then(|t| t.get(key).cloned())))
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.with(|trees| trees.entry(tree.to_owned()).or_default().insert(key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.with(|trees| trees.get_mut(tree).map(|t| t.remove(key)));
        Ok(())
    }

    fn scan(&self, tree: &str) -> Result<Vec<Entry>, StoreError> {
        Ok(self.with(|trees| {
            trees.get(tree).map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
        }))
    }

    fn compare_and_swap(
        &self,
        tree: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), CasConflict>, StoreError> {
        Ok(self.with(|trees| {
            let t = trees.entry(tree.to_owned()).or_default();
            let current = t.get(key).cloned();
            if current.as_deref() != expected {
                return Err(CasConflict { current });
            }
            match new {
                Some(value) => t.insert(key.to_vec(), value.to_vec()),
                None => t.remove(key),
            };
            Ok(())
        }))
    }
}

#[test]
fn mem_store_passes_the_conformance_suite() {
    ragmesh_store::conformance::run(&MemStore::default());
}

const TX: TxId = TxId(0x2bc);
const DEADLINE_MS: Millis = 1_000;
const BACKOFF: Backoff = Backoff { base_ms: 50, max_ms: 400 };
const DATA_TREE: &str = "data";

#[derive(Debug, Clone)]
enum Msg {
    Prepare { to: usize, deadline_ms: Millis },
    Decision { to: usize, decision: Decision },
    Vote { from: usize, vote: Vote },
    Ack { from: usize, decision: Decision },
    Query { from: usize },
}

#[derive(Debug)]
struct CoordNode {
    log: CoordinatorLog,
    machine: Option<Coordinator>,
    pending: VecDeque<coordinator::Effect>,
}

#[derive(Debug)]
struct PartNode {
    store: Arc<MemStore>,
    log: ParticipantLog,
    machine: Option<Participant>,
    pending: VecDeque<participant::Effect>,
    votes_yes: bool,
}

#[derive(Debug)]
struct World {
    now: Millis,
    coord: CoordNode,
    parts: Vec<PartNode>,
    net: VecDeque<Msg>,
    violations: Vec<String>,
    /// Whether the coordinator's begin records are written.
    log_begin: bool,
    /// A participant cut off from the network: every message to or from it is lost.
    partitioned: Option<usize>,
    /// The decision a compaction removed from the coordinator's log: it was durable, so a
    /// coordinator still holding the transaction in memory may keep answering with it.
    compacted: Option<Decision>,
}

fn node_name(k: usize) -> String {
    format!("p{k}")
}

fn node_index(name: &str) -> usize {
    name.trim_start_matches('p').parse().expect("simulated node names are p<k>")
}

fn coord_config() -> CoordinatorConfig {
    CoordinatorConfig { resend: BACKOFF }
}

fn part_config() -> ParticipantConfig {
    ParticipantConfig { ask: BACKOFF }
}

impl World {
    fn new(votes: &[bool], log_begin: bool) -> Self {
        let names: Vec<String> = (0..votes.len()).map(node_name).collect();
        let mut machine = Coordinator::new(TX, &names, DEADLINE_MS, coord_config());
        let pending = machine.handle(coordinator::Input::Start, 0).into();
        let coord =
            CoordNode { log: CoordinatorLog::new(Arc::new(MemStore::default())), machine: Some(machine), pending };
        let parts = votes
            .iter()
            .map(|&votes_yes| {
                let store = Arc::new(MemStore::default());
                let log = ParticipantLog::new(store.clone());
                PartNode { store, log, machine: None, pending: VecDeque::new(), votes_yes }
            })
            .collect();
        World {
            now: 0,
            coord,
            parts,
            net: VecDeque::new(),
            violations: Vec::new(),
            log_begin,
            partitioned: None,
            compacted: None,
        }
    }

    fn logged_decision(&self) -> Option<Decision> {
        self.coord.log.get(TX).expect("coordinator log read").and_then(|record| record.decision)
    }

    /// The decision that is or was durable: the log's, or the one a compaction removed after the
    /// transaction finished.
    fn durable_decision(&self) -> Option<Decision> {
        self.logged_decision().or(self.compacted)
    }

    fn feed_coord(&mut self, input: coordinator::Input) {
        let now = self.now;
        if let Some(machine) = self.coord.machine.as_mut() {
            let effects = machine.handle(input, now);
            self.emit_coord(effects, "handle");
            return;
        }
        // No coordinator in memory: the log answers (presumed abort).
        match input {
            coordinator::Input::Query { node } | coordinator::Input::Vote { node, vote: Vote::Yes } => {
                let decision = self.coord.log.decision_for(TX).expect("coordinator log read");
                self.send_decision(node_index(&node), decision, "log answer");
            }
            _ => {}
        }
    }

    /// Queues coordinator effects, checking the rule at the moment they are emitted: a decision
    /// leaves only once the log holds it (a machine emitting the write and the sends together
    /// would pass a check made when the sends are performed in order).
    fn emit_coord(&mut self, effects: Vec<coordinator::Effect>, why: &str) {
        for effect in &effects {
            let sent = match effect {
                coordinator::Effect::SendDecision { decision, .. } => Some(*decision),
                coordinator::Effect::Answer { decision, .. } => *decision,
                _ => None,
            };
            if let Some(decision) = sent
                && self.durable_decision() != Some(decision)
            {
                self.violations
                    .push(format!("{why}: emitted {decision:?} while the log holds {:?}", self.logged_decision()));
            }
        }
        self.coord.pending.extend(effects);
    }

    fn send_decision(&mut self, to: usize, decision: Decision, why: &str) {
        // Presumed abort: with no coordinator in memory, an absent decision reads as abort.
        let presumed = why == "log answer" && decision == Decision::Abort && self.logged_decision().is_none();
        if self.durable_decision() != Some(decision) && !presumed {
            self.violations
                .push(format!("{why}: sent {decision:?} to p{to} while the log holds {:?}", self.logged_decision()));
        }
        self.net.push_back(Msg::Decision { to, decision });
    }

    fn feed_part(&mut self, k: usize, input: participant::Input) {
        let now = self.now;
        let node = &mut self.parts[k];
        let machine = node.machine.get_or_insert_with(|| Participant::new(TX, part_config()));
        let effects = machine.handle(input, now);
        node.pending.extend(effects);
    }

    fn deliver(&mut self, msg: Msg) {
        let (Msg::Prepare { to: k, .. }
        | Msg::Decision { to: k, .. }
        | Msg::Vote { from: k, .. }
        | Msg::Ack { from: k, .. }
        | Msg::Query { from: k }) = msg;
        if self.partitioned == Some(k) {
            return;
        }
        match msg {
            Msg::Prepare { to, deadline_ms } => self
                .feed_part(to, participant::Input::Prepare { payload: format!("doc-{to}").into_bytes(), deadline_ms }),
            Msg::Decision { to, decision } => self.feed_part(to, participant::Input::Decision(decision)),
            Msg::Vote { from, vote } => self.feed_coord(coordinator::Input::Vote { node: node_name(from), vote }),
            Msg::Ack { from, decision } => self.feed_coord(coordinator::Input::Ack { node: node_name(from), decision }),
            Msg::Query { from } => self.feed_coord(coordinator::Input::Query { node: node_name(from) }),
        }
    }

    /// Performs the coordinator's next pending effect; false if none.
    fn step_coord(&mut self) -> bool {
        let Some(effect) = self.coord.pending.pop_front() else { return false };
        match effect {
            // The begin record is advisory (presumed abort): a driver may write it late or lose
            // it, and then only the participants' questions end their wait.
            coordinator::Effect::LogBegin(record) => {
                if self.log_begin {
                    self.coord.log.write_begin(&record).expect("begin write");
                }
            }
            coordinator::Effect::LogDecision(record) => match self.coord.log.write_decision(&record, self.now) {
                Ok(()) => {
                    let decision = record.decision.expect("a decision write carries a decision");
                    self.feed_coord(coordinator::Input::DecisionLogged { decision });
                }
                Err(e) => self.violations.push(format!("decision write refused: {e}")),
            },
            coordinator::Effect::SendPrepare { node, deadline_ms } => {
                self.net.push_back(Msg::Prepare { to: node_index(&node), deadline_ms })
            }
            coordinator::Effect::SendDecision { node, decision } => {
                self.send_decision(node_index(&node), decision, "SendDecision")
            }
            coordinator::Effect::Answer { node, decision: Some(decision) } => {
                self.send_decision(node_index(&node), decision, "Answer")
            }
            coordinator::Effect::Answer { decision: None, .. } => {}
            coordinator::Effect::Done { .. } => self.coord.log.finish(TX, self.now).expect("finish write"),
        }
        true
    }

    /// Performs participant `k`'s next pending effect; false if none.
    fn step_part(&mut self, k: usize) -> bool {
        let Some(effect) = self.parts[k].pending.pop_front() else { return false };
        let now = self.now;
        match effect {
            participant::Effect::RunPrepare { .. } => {
                let ok = self.parts[k].votes_yes;
                self.feed_part(k, participant::Input::PrepareFinished { ok });
            }
            participant::Effect::PersistPrepared { payload, deadline_ms } => {
                self.parts[k].log.persist_prepared(TX, &payload, deadline_ms, now).expect("prepared write");
                self.feed_part(k, participant::Input::PreparedPersisted);
            }
            participant::Effect::Vote(vote) => self.net.push_back(Msg::Vote { from: k, vote }),
            participant::Effect::ApplyCommit { payload } => {
                if self.durable_decision() != Some(Decision::Commit) {
                    self.violations.push(format!("p{k} applied a commit the coordinator has not logged"));
                }
                self.parts[k].store.put(DATA_TREE, b"doc", &payload).expect("data write");
                self.feed_part(k, participant::Input::Applied);
            }
            participant::Effect::ApplyAbort { .. } => self.feed_part(k, participant::Input::Applied),
            participant::Effect::PersistOutcome(decision) => {
                self.parts[k].log.persist_outcome(TX, decision, now).expect("outcome write")
            }
            participant::Effect::Ack(decision) => self.net.push_back(Msg::Ack { from: k, decision }),
            participant::Effect::AskCoordinator => self.net.push_back(Msg::Query { from: k }),
        }
        true
    }

    fn crash_coord(&mut self) {
        self.coord.machine = None;
        self.coord.pending.clear();
        for (tx, machine, effects) in self.coord.log.recover(coord_config(), self.now).expect("recover") {
            assert_eq!(tx, TX);
            self.coord.machine = Some(machine);
            self.emit_coord(effects, "recover");
        }
    }

    fn crash_part(&mut self, k: usize) {
        let node = &mut self.parts[k];
        node.machine = None;
        node.pending.clear();
        for (tx, machine, effects) in node.log.recover(part_config(), self.now).expect("recover") {
            assert_eq!(tx, TX);
            node.machine = Some(machine);
            node.pending.extend(effects);
        }
    }

    fn tick(&mut self, ms: Millis) {
        self.now += ms;
        if self.coord.machine.is_some() {
            self.feed_coord(coordinator::Input::Tick);
        }
        for k in 0..self.parts.len() {
            if self.parts[k].machine.is_some() {
                self.feed_part(k, participant::Input::Tick);
            }
        }
    }

    fn compact(&mut self) {
        // The coordinator may forget finished transactions at once; participants keep theirs for
        // the prepare timeout (the documented bound).
        let before = self.logged_decision();
        self.coord.log.compact(self.now, 0).expect("compact");
        if self.logged_decision().is_none() && before.is_some() {
            self.compacted = before;
        }
        for node in &self.parts {
            node.log.compact(self.now, DEADLINE_MS).expect("compact");
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Deliver(i) if !self.net.is_empty() => {
                let msg = self.net.remove(i % self.net.len()).expect("index is in range");
                self.deliver(msg);
            }
            Op::Drop(i) if !self.net.is_empty() => {
                self.net.remove(i % self.net.len());
            }
            Op::Duplicate(i) if !self.net.is_empty() => {
                let msg = self.net[i % self.net.len()].clone();
                self.net.push_back(msg);
            }
            Op::Local(i) => {
                let n = i % (self.parts.len() + 1);
                if n == 0 {
                    self.step_coord();
                } else {
                    self.step_part(n - 1);
                }
            }
            Op::Tick(ms) => self.tick(ms),
            Op::CrashCoord => self.crash_coord(),
            Op::CrashPart(i) => {
                let k = i % self.parts.len();
                self.crash_part(k);
            }
            Op::Compact => self.compact(),
            _ => {}
        }
    }

    fn quiescent(&self) -> bool {
        let coord_done = match &self.coord.machine {
            None => true,
            Some(machine) => matches!(machine.phase(), coordinator::Phase::Done(_)),
        };
        let parts_ended =
            self.parts.iter().all(|node| node.machine.as_ref().is_none_or(|m| matches!(m.phase(), PPhase::Ended(_))));
        let idle = self.coord.pending.is_empty() && self.parts.iter().all(|node| node.pending.is_empty());
        coord_done && parts_ended && idle && self.net.is_empty()
    }

    /// Faults stop: run every local effect, deliver every message in order, tick; returns the
    /// number of rounds it took to settle, or None if it did not within `max_rounds`.
    fn settle(&mut self, max_rounds: usize) -> Option<usize> {
        for round in 0..max_rounds {
            for _ in 0..10_000 {
                let mut progressed = self.step_coord();
                for k in 0..self.parts.len() {
                    progressed |= self.step_part(k);
                }
                if !progressed {
                    break;
                }
            }
            let in_flight: Vec<Msg> = self.net.drain(..).collect();
            let delivered = !in_flight.is_empty();
            for msg in in_flight {
                self.deliver(msg);
            }
            if !delivered && self.quiescent() {
                return Some(round);
            }
            if !delivered {
                self.tick(100);
            }
        }
        None
    }

    /// The invariants after settling; returns the decision, if any party still knows it.
    fn check(&self, votes: &[bool]) -> Result<Option<Decision>, TestCaseError> {
        prop_assert!(self.violations.is_empty(), "violations: {:?}", self.violations);
        // Every party that still knows the outcome (records may be compacted and machines lost).
        let mut known = Vec::new();
        known.extend(self.logged_decision());
        known.extend(self.coord.machine.as_ref().and_then(|m| m.logged_decision()));
        for (k, node) in self.parts.iter().enumerate() {
            if let Some(machine) = &node.machine {
                let PPhase::Ended(decision) = machine.phase() else {
                    return Err(TestCaseError::fail(format!("p{k} did not end: {:?}", machine.phase())));
                };
                known.push(decision);
            }
            let in_doubt = node.log.in_doubt().expect("participant log read");
            prop_assert!(in_doubt.is_empty(), "p{} still prepared in its log: {:?}", k, in_doubt);
        }
        let decision = known.first().copied();
        prop_assert!(known.iter().all(|d| Some(*d) == decision), "parties disagree: {:?}", known);

        let mut applied = Vec::new();
        for node in &self.parts {
            applied.push(node.store.get(DATA_TREE, b"doc").expect("data read").is_some());
        }
        let committed = applied.iter().all(|a| *a);
        prop_assert!(committed || applied.iter().all(|a| !*a), "commit applied on some only: {:?}", applied);
        match decision {
            Some(Decision::Commit) => prop_assert!(committed, "a commit reaches everyone: {:?}", applied),
            Some(Decision::Abort) => prop_assert!(!committed, "an abort applies nothing"),
            None => {}
        }
        if committed {
            prop_assert!(votes.iter().all(|yes| *yes), "commit although someone voted no: {:?}", votes);
            return Ok(Some(Decision::Commit));
        }
        Ok(decision)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    Local(usize),
    Tick(Millis),
    CrashCoord,
    CrashPart(usize),
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => any::<usize>().prop_map(Op::Deliver),
        12 => any::<usize>().prop_map(Op::Local),
        2 => any::<usize>().prop_map(Op::Drop),
        2 => any::<usize>().prop_map(Op::Duplicate),
        2 => (1u64..120).prop_map(Op::Tick),
        1 => Just(Op::CrashCoord),
        1 => any::<usize>().prop_map(Op::CrashPart),
        1 => Just(Op::Compact),
    ]
}

/// Rounds of 100 ms: enough for the longest backoff (400 ms) to fire many times past the deadline.
const MAX_SETTLE_ROUNDS: usize = 200;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn every_participant_ends_with_the_logged_decision(
        votes in proptest::collection::vec(prop::bool::weighted(0.9), 1..=5),
        schedule in proptest::collection::vec(op(), 0..150),
        log_begin in prop::bool::weighted(0.7),
    ) {
        let mut world = World::new(&votes, log_begin);
        for op in &schedule {
            world.apply(op);
        }
        let rounds = world.settle(MAX_SETTLE_ROUNDS);
        prop_assert!(rounds.is_some(), "not settled in {} rounds: {:?}", MAX_SETTLE_ROUNDS, world);
        world.check(&votes)?;
    }
}

/// Runs `ops` then settles and checks; returns the decision.
fn run(votes: &[bool], ops: &[Op]) -> Option<Decision> {
    let mut world = World::new(votes, true);
    for op in ops {
        world.apply(op);
    }
    assert!(world.settle(MAX_SETTLE_ROUNDS).is_some(), "settles: {world:?}");
    world.check(votes).expect("invariants hold")
}

#[test]
fn without_faults_all_yes_commits_and_one_no_aborts() {
    assert_eq!(run(&[true, true, true], &[]), Some(Decision::Commit));
    assert_eq!(run(&[true, false, true], &[]), Some(Decision::Abort));
}

/// Coordinator ops until every vote is in (3 participants, nothing lost): prepares out, prepared,
/// votes delivered.
fn until_votes_delivered() -> Vec<Op> {
    let mut ops = Vec::new();
    // LogBegin + 3 SendPrepare.
    ops.extend(std::iter::repeat_n(Op::Local(0), 4));
    ops.extend(std::iter::repeat_n(Op::Deliver(0), 3));
    // Each participant: RunPrepare, PersistPrepared, Vote.
    for k in 1..=3 {
        ops.extend(std::iter::repeat_n(Op::Local(k), 3));
    }
    ops.extend(std::iter::repeat_n(Op::Deliver(0), 3));
    ops
}

#[test]
fn master_killed_after_the_votes_aborts_everywhere() {
    let mut ops = until_votes_delivered();
    ops.push(Op::CrashCoord);
    assert_eq!(run(&[true, true, true], &ops), Some(Decision::Abort));
}

#[test]
fn master_killed_after_logging_commit_before_sending_commits_everywhere() {
    let mut ops = until_votes_delivered();
    ops.push(Op::Local(0)); // LogDecision(commit) written; the sends are still pending.
    ops.push(Op::CrashCoord);
    assert_eq!(run(&[true, true, true], &ops), Some(Decision::Commit));
}

#[test]
fn master_killed_after_partial_acks_commits_everywhere() {
    let mut ops = until_votes_delivered();
    ops.extend(std::iter::repeat_n(Op::Local(0), 4)); // log commit, send to p0..p2
    ops.push(Op::Deliver(0)); // commit reaches p0
    ops.extend(std::iter::repeat_n(Op::Local(1), 3)); // p0 applies, persists, acks
    ops.push(Op::Deliver(2)); // the ack (after the two commits still in flight)
    ops.push(Op::CrashCoord);
    ops.push(Op::Drop(0));
    ops.push(Op::Drop(0));
    assert_eq!(run(&[true, true, true], &ops), Some(Decision::Commit));
}

#[test]
fn participant_killed_after_voting_yes_still_commits() {
    let mut ops = until_votes_delivered();
    ops.push(Op::CrashPart(1));
    assert_eq!(run(&[true, true, true], &ops), Some(Decision::Commit));
}

#[test]
fn a_participant_that_never_answers_aborts_the_others_by_the_deadline() {
    let mut world = World::new(&[true, true, true], true);
    world.partitioned = Some(2);
    assert_eq!(world.settle(MAX_SETTLE_ROUNDS), None, "the coordinator keeps resending to the silent node");
    assert!(world.now > DEADLINE_MS);
    assert_eq!(world.logged_decision(), Some(Decision::Abort));
    for k in 0..2 {
        let phase = world.parts[k].machine.as_ref().map(|m| m.phase());
        assert_eq!(phase, Some(PPhase::Ended(Decision::Abort)), "p{k}");
        assert!(world.parts[k].log.in_doubt().expect("read").is_empty());
    }
    let status = world.coord.machine.as_ref().expect("coordinator").status();
    assert_eq!(status.phase, "decided");
    assert!(status.in_doubt_since.is_some(), "visible as unresolved until p2 acknowledges");
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}
