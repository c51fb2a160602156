//! The logs over a real [`SledStore`] in a tempdir: what is written survives dropping and
//! reopening the store, recovery rebuilds the machines from it, compaction honours the retention
//! window, and bad records are reported rather than misread.

use std::path::Path;
use std::sync::Arc;

use ragmesh_coordinator::coordinator::{self, Coordinator, CoordinatorConfig};
use ragmesh_coordinator::log::{COORDINATOR_TREE, CoordinatorLog, PARTICIPANT_TREE, ParticipantLog};
use ragmesh_coordinator::participant::{self, ParticipantConfig};
use ragmesh_coordinator::{CoordinatorError, Decision, TxId, Vote};
use ragmesh_store::{SledStore, StateStore};

fn open(dir: &Path) -> Arc<SledStore> {
    Arc::new(SledStore::open_waiting(dir).expect("open sled store"))
}

fn nodes() -> Vec<String> {
    vec!["a".to_owned(), "b".to_owned()]
}

#[test]
fn coordinator_log_survives_reopen_and_recovery_resends_or_aborts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committed = TxId(1);
    let undecided = TxId(2);
    {
        let log = CoordinatorLog::new(open(dir.path()));
        let mut c = Coordinator::new(committed, &nodes(), 1_000, CoordinatorConfig::default());
        c.handle(coordinator::Input::Start, 10);
        log.write_begin(&c.record()).expect("begin");
        c.handle(coordinator::Input::Vote { node: "a".into(), vote: Vote::Yes }, 11);
        let effects = c.handle(coordinator::Input::Vote { node: "b".into(), vote: Vote::Yes }, 12);
        let [coordinator::Effect::LogDecision(record)] = effects.as_slice() else { panic!("{effects:?}") };
        log.write_decision(record, 13).expect("decision");
        log.write_decision(record, 14).expect("the decision write is idempotent");

        let mut other = Coordinator::new(undecided, &nodes(), 1_000, CoordinatorConfig::default());
        other.handle(coordinator::Input::Start, 20);
        log.write_begin(&other.record()).expect("begin");
    }
    let log = CoordinatorLog::new(open(dir.path()));
    let record = log.get(committed).expect("read").expect("kept");
    assert_eq!((record.decision, record.decided_ms, record.started_ms), (Some(Decision::Commit), Some(13), 10));
    assert_eq!(record.participants, nodes());

    let mut recovered = log.recover(CoordinatorConfig::default(), 100).expect("recover");
    assert_eq!(recovered.len(), 2);
    let (tx, machine, effects) = recovered.remove(0);
    assert_eq!(tx, committed);
    assert_eq!(machine.logged_decision(), Some(Decision::Commit));
    assert_eq!(
        effects,
        [
            coordinator::Effect::SendDecision { node: "a".into(), decision: Decision::Commit },
            coordinator::Effect::SendDecision { node: "b".into(), decision: Decision::Commit },
        ]
    );
    let (tx, _, effects) = recovered.remove(0);
    assert_eq!(tx, undecided);
    let [coordinator::Effect::LogDecision(abort)] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!(abort.decision, Some(Decision::Abort), "presumed abort");

    // Decisions are final.
    let mut flipped = record.clone();
    flipped.decision = Some(Decision::Abort);
    let err = log.write_decision(&flipped, 101).expect_err("a logged commit cannot become an abort");
    assert!(matches!(err, CoordinatorError::DecisionConflict { .. }), "{err}");

    // Presumed abort for what the log does not know.
    assert_eq!(log.decision_for(committed).expect("read"), Decision::Commit);
    assert_eq!(log.decision_for(TxId(99)).expect("read"), Decision::Abort);

    // Finished records leave recovery at once and the log after the retention window.
    log.finish(committed, 200).expect("finish");
    let recovered = log.recover(CoordinatorConfig::default(), 201).expect("recover");
    assert_eq!(recovered.iter().map(|(tx, _, _)| *tx).collect::<Vec<_>>(), [undecided]);
    let unfinished: Vec<TxId> = log.unfinished().expect("read").iter().map(|record| record.tx).collect();
    assert_eq!(unfinished, [undecided]);
    assert_eq!(log.compact(1_200, 1_000).expect("compact"), 0, "kept within the window");
    assert_eq!(log.compact(1_201, 1_000).expect("compact"), 1, "removed after it");
    assert_eq!(log.get(committed).expect("read"), None);
    assert!(log.get(undecided).expect("read").is_some(), "unfinished records are never compacted");
    log.finish(TxId(98), 1).expect("finishing a compacted record is fine");
}

#[test]
fn participant_log_survives_reopen_and_recovery_asks_or_reacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let in_doubt = TxId(5);
    let ended = TxId(6);
    {
        let log = ParticipantLog::new(open(dir.path()));
        log.persist_prepared(in_doubt, b"\x00binary payload\xff", 1_000, 10).expect("prepared");
        log.persist_prepared(ended, b"docs", 1_000, 11).expect("prepared");
        log.persist_outcome(ended, Decision::Commit, 12).expect("outcome");
        log.persist_prepared(ended, b"docs", 1_000, 13).expect("a late prepared write is ignored");
        log.persist_outcome(TxId(7), Decision::Abort, 14).expect("abort of an unknown tx");
    }
    let log = ParticipantLog::new(open(dir.path()));
    let doubtful = log.in_doubt().expect("in doubt");
    assert_eq!(doubtful.len(), 1);
    assert_eq!(doubtful[0].payload, b"\x00binary payload\xff");
    assert_eq!(log.get(ended).expect("read").expect("kept").outcome, Some(Decision::Commit));

    let recovered = log.recover(ParticipantConfig::default(), 50).expect("recover");
    let effects: Vec<(TxId, Vec<participant::Effect>)> = recovered.into_iter().map(|(tx, _, e)| (tx, e)).collect();
    assert_eq!(
        effects,
        [
            (in_doubt, vec![participant::Effect::AskCoordinator]),
            (ended, vec![participant::Effect::Ack(Decision::Commit)]),
            (TxId(7), vec![participant::Effect::Ack(Decision::Abort)]),
        ]
    );
    assert_eq!(log.compact(1_000, 1_000).expect("compact"), 0);
    assert_eq!(log.compact(1_015, 1_000).expect("compact"), 2, "both outcomes, not the in-doubt record");
    assert_eq!(log.records().expect("records").len(), 1);
}

#[test]
fn unreadable_and_newer_records_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.put(COORDINATOR_TREE, &TxId(1).key(), b"not json").expect("put");
    let err = CoordinatorLog::new(store.clone()).get(TxId(1)).expect_err("corrupt");
    assert!(matches!(err, CoordinatorError::Corrupt { .. }), "{err}");
    let newer = format!(r#"{{"v":2,"tx":"{}","whatever":true}}"#, TxId(3));
    store.put(PARTICIPANT_TREE, &TxId(3).key(), newer.as_bytes()).expect("put");
    let err = ParticipantLog::new(store).records().expect_err("newer");
    assert!(matches!(err, CoordinatorError::NewerVersion { version: 2, .. }), "{err}");
    assert!(err.to_string().contains("upgrade"), "{err}");
}

#[test]
fn records_are_read_in_batches_past_the_batch_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ParticipantLog::new(open(dir.path()));
    for id in 0..300u128 {
        log.persist_outcome(TxId(id << 64 | id), Decision::Abort, 1).expect("outcome");
    }
    let records = log.records().expect("records");
    let ids: Vec<u128> = records.iter().map(|record| record.tx.0).collect();
    let expected: Vec<u128> = (0..300u128).map(|id| id << 64 | id).collect();
    assert_eq!(ids, expected, "every record once, in key order");
}

#[test]
fn tx_ids_print_and_parse_as_32_hex_digits() {
    let tx = TxId(0xdead_beef);
    assert_eq!(tx.to_string(), "000000000000000000000000deadbeef");
    assert_eq!(TxId::parse(&tx.to_string()).expect("parse"), tx);
    assert!(TxId::parse("xyz").is_err());
}

#[test]
fn racing_decision_writes_log_exactly_one_decision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = CoordinatorLog::new(open(dir.path()));
    for round in 0..20u128 {
        let tx = TxId(1_000 + round);
        let c = Coordinator::new(tx, &nodes(), 1_000, CoordinatorConfig::default());
        log.write_begin(&c.record()).expect("begin");
        let outcomes: Vec<(Decision, bool)> = std::thread::scope(|scope| {
            let writers: Vec<_> = [Decision::Commit, Decision::Abort, Decision::Commit, Decision::Abort]
                .into_iter()
                .map(|decision| {
                    let mut record = c.record();
                    record.decision = Some(decision);
                    let log = &log;
                    scope.spawn(move || (decision, log.write_decision(&record, 5).is_ok()))
                })
                .collect();
            writers.into_iter().map(|w| w.join().expect("writer thread")).collect()
        });
        let logged = log.get(tx).expect("read").and_then(|r| r.decision).expect("a decision is logged");
        for (decision, ok) in outcomes {
            assert_eq!(ok, decision == logged, "only writers of the logged decision succeed");
        }
    }
}
