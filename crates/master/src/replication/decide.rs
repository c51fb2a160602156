//! The pure decisions of replication: how many replicas a write needs, whether a replica is in
//! sync, catching up or stale, and how far a group's log may be trimmed. No I/O, no clock.

use ragmesh_config::WriteQuorum;

use crate::registry::{GroupLog, SyncState};

/// Whether `applied` of `replicas` reach the quorum.
pub fn quorum_reached(quorum: WriteQuorum, replicas: usize, applied: usize) -> bool {
    replicas > 0 && applied >= quorum.needed(replicas)
}

/// The sync state of replica `node` of `group` that applied up to `applied`, given where the
/// group's log stands; `in_sync_peer` is a replica of the group that is in sync (named in the
/// operator action of a stale replica).
pub fn sync_state(node: &str, group: &str, applied: u64, log: &GroupLog, in_sync_peer: Option<&str>) -> SyncState {
    if applied >= log.committed_seq {
        return SyncState::InSync;
    }
    let first = log.first_seq.max(1);
    if applied.saturating_add(1) >= first {
        return SyncState::CatchingUp;
    }
    let action = match in_sync_peer {
        Some(peer) => format!(
            "stop {node}, replace its --data-dir with a copy of in-sync replica {peer}'s (the copy carries its log position) and start it again"
        ),
        None => format!(
            "no replica of group {group} is in sync to copy from: restore a replica's --data-dir from a backup, copy it to {node} and start it again"
        ),
    };
    SyncState::Stale {
        message: format!(
            "replica {node} applied up to {applied} but the log of group {group} now starts at {first}: {action}"
        ),
    }
}

/// What trimming a group's log may drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimInput {
    /// Oldest retained sequence (`last + 1` when the log is empty).
    pub first: u64,
    /// Last appended sequence.
    pub last: u64,
    /// Last acknowledged sequence: entries after it are never dropped (their writers were told
    /// they would reach every replica).
    pub committed: u64,
    /// Lowest sequence applied by every replica of the group.
    pub min_applied: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Most entries to keep.
    pub max_entries: u64,
    /// Most bytes to keep.
    pub max_bytes: u64,
}

/// The new first retained sequence: every entry all replicas applied goes; then, while the log
/// exceeds its bounds, the oldest go even if a replica still needs them (it becomes stale).
/// `oldest` lists `(seq, bytes)` of the oldest entries from `first` on, in order; trimming stops
/// where the list does (the caller reads more next time).
pub fn trim_to(input: &TrimInput, oldest: &[(u64, u64)]) -> u64 {
    let end = input.last.saturating_add(1);
    let protected = input.committed.min(input.last);
    let mut first = input.first.min(end);
    let mut bytes = input.bytes;
    for &(seq, size) in oldest {
        if seq != first || seq > protected {
            break;
        }
        let entries = end - first;
        let all_applied = seq <= input.min_applied;
        let over = entries > input.max_entries || bytes > input.max_bytes;
        if !all_applied && !over {
            break;
        }
        first += 1;
        bytes = bytes.saturating_sub(size);
    }
    first
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn log(last: u64, committed: u64, first: u64) -> GroupLog {
        GroupLog { last_seq: last, committed_seq: committed, first_seq: first, entries: last + 1 - first, bytes: 0 }
    }

    #[test]
    fn majority_of_three_is_two_and_all_is_three() {
        assert!(quorum_reached(WriteQuorum::Majority, 3, 2));
        assert!(!quorum_reached(WriteQuorum::Majority, 3, 1));
        assert!(!quorum_reached(WriteQuorum::All, 3, 2));
        assert!(quorum_reached(WriteQuorum::All, 3, 3));
        assert!(!quorum_reached(WriteQuorum::All, 0, 0), "a group without replicas never reaches a quorum");
    }

    #[test]
    fn a_replica_behind_the_retained_log_is_stale_and_told_what_to_do() {
        let log = log(20, 20, 15);
        assert_eq!(sync_state("b", "g", 20, &log, Some("a")), SyncState::InSync);
        assert_eq!(sync_state("b", "g", 14, &log, Some("a")), SyncState::CatchingUp, "15 is still in the log");
        let SyncState::Stale { message } = sync_state("b", "g", 13, &log, Some("a")) else { panic!("stale") };
        assert_eq!(
            message,
            "replica b applied up to 13 but the log of group g now starts at 15: stop b, replace its --data-dir with a copy of in-sync replica a's (the copy carries its log position) and start it again"
        );
        let SyncState::Stale { message } = sync_state("b", "g", 0, &log, None) else { panic!("stale") };
        assert!(message.contains("no replica of group g is in sync"), "{message}");
        assert_eq!(sync_state("b", "never-written", 0, &GroupLog::default(), None), SyncState::InSync);
    }

    #[test]
    fn trim_drops_what_everyone_applied_then_what_exceeds_the_bounds_but_never_unacknowledged_entries() {
        let sizes: Vec<(u64, u64)> = (1..=10).map(|seq| (seq, 10)).collect();
        let base = TrimInput {
            first: 1,
            last: 10,
            committed: 10,
            min_applied: 4,
            bytes: 100,
            max_entries: 100,
            max_bytes: 1000,
        };
        assert_eq!(trim_to(&base, &sizes), 5, "1..=4 were applied everywhere");
        assert_eq!(trim_to(&TrimInput { max_entries: 3, ..base }, &sizes), 8, "only 3 entries kept");
        assert_eq!(trim_to(&TrimInput { max_bytes: 25, ..base }, &sizes), 9, "only 20 bytes kept");
        assert_eq!(trim_to(&TrimInput { max_entries: 1, committed: 6, ..base }, &sizes), 7, "7..=10 await a quorum");
        assert_eq!(trim_to(&TrimInput { max_entries: 1, ..base }, &sizes[..3]), 4, "stops where the sizes end");
    }

    proptest! {
        #[test]
        fn quorum_is_reached_exactly_from_the_needed_count(replicas in 0usize..12, applied in 0usize..12, all in any::<bool>()) {
            let applied = applied.min(replicas);
            let quorum = if all { WriteQuorum::All } else { WriteQuorum::Majority };
            let reached = quorum_reached(quorum, replicas, applied);
            let expected = replicas > 0 && if all { applied == replicas } else { applied * 2 > replicas };
            prop_assert_eq!(reached, expected);
            // Two majorities always overlap: an acknowledged write is on any majority read.
            if !all && reached { prop_assert!(applied + applied > replicas); }
        }

        #[test]
        fn sync_state_is_in_sync_iff_caught_up_and_stale_iff_the_log_misses_the_next_entry(
            applied in 0u64..50, committed in 0u64..50, first in 1u64..60,
        ) {
            let log = GroupLog { last_seq: committed.max(first.saturating_sub(1)), committed_seq: committed, first_seq: first, entries: 0, bytes: 0 };
            let state = sync_state("n", "g", applied, &log, Some("p"));
            prop_assert_eq!(state.is_in_sync(), applied >= committed);
            prop_assert_eq!(matches!(state, SyncState::Stale { .. }), applied < committed && applied + 1 < first);
        }

        #[test]
        fn trim_keeps_what_a_replica_may_still_get_within_bounds(
            first in 1u64..20, len in 0u64..30, committed_back in 0u64..30, applied in 0u64..60,
            max_entries in 1u64..40, max_bytes in 1u64..400, size in 1u64..20,
        ) {
            let last = first + len - 1;
            let last = if len == 0 { first - 1 } else { last };
            let committed = last.saturating_sub(committed_back);
            let sizes: Vec<(u64, u64)> = (first..=last).map(|seq| (seq, size)).collect();
            let input = TrimInput { first, last, committed, min_applied: applied, bytes: len * size, max_entries, max_bytes };
            let new_first = trim_to(&input, &sizes);
            prop_assert!(new_first >= first && new_first <= last + 1);
            prop_assert!(new_first <= committed.max(first - 1) + 1, "unacknowledged entries stay");
            let kept = last + 1 - new_first;
            if new_first <= committed && new_first > applied {
                // Stopped before the protected tail without everyone having applied: within bounds.
                prop_assert!(kept <= max_entries && kept * size <= max_bytes);
            }
            if new_first > first {
                // Everything dropped was applied everywhere or had to go for the bounds.
                let dropped_last = new_first - 1;
                let kept_before = last + 1 - dropped_last;
                prop_assert!(dropped_last <= applied || kept_before > max_entries || kept_before * size > max_bytes);
            }
        }
    }
}
