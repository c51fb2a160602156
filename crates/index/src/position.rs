//! Write-log positions: where a write sits in its shard group's log, what an index has applied,
//! and the pure rule deciding whether an entry is applied, acknowledged again, or refused.

use crate::IndexError;

/// Where a write sits in a shard group's write log (the master numbers each group's writes from 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogPosition {
    /// The shard group the write belongs to.
    pub shard: String,
    /// Sequence number of the write in the group's log, from 1.
    pub seq: u64,
}

impl LogPosition {
    /// Position `seq` of shard group `shard`.
    pub fn new(shard: impl Into<String>, seq: u64) -> Self {
        LogPosition { shard: shard.into(), seq }
    }
}

/// The last log position an index applied, as committed together with its documents.
///
/// A fresh index (or one written before positions existed) holds no shard and is at seq 0; the
/// first positioned write sets the shard, which never changes afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AppliedLog {
    /// The shard group whose log the index follows; `None` until the first positioned write.
    pub shard: Option<String>,
    /// Last sequence applied; 0 when none.
    pub seq: u64,
}

impl AppliedLog {
    /// The position after applying `position` (which [`check_position`] allowed).
    pub(crate) fn advanced_to(position: &LogPosition) -> Self {
        AppliedLog { shard: Some(position.shard.clone()), seq: position.seq }
    }
}

/// The outcome of a positioned write ([`crate::DocumentIndex::apply_upsert`] and
/// [`crate::DocumentIndex::apply_delete`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Index generation after the call (unchanged when the entry was already applied).
    pub generation: u64,
    /// Last sequence applied after the call: this entry's, or a later one.
    pub applied_seq: u64,
    /// True when the entry had been applied before and nothing was written now.
    pub already_applied: bool,
}

/// What to do with a log entry, given what the index applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The entry is the next one: write it and commit its position with it.
    Apply,
    /// The entry was applied before: acknowledge it, write nothing.
    AlreadyApplied,
}

/// The rule of a replica following its group's log: an entry of another group is refused, an
/// entry at or below the applied sequence is acknowledged without a second apply, the next entry
/// is applied, and an entry past the next is refused as a gap (the master sends the missing ones).
pub fn check_position(applied: &AppliedLog, position: &LogPosition) -> Result<Step, IndexError> {
    if position.shard.is_empty() {
        return Err(IndexError::InvalidBatch(
            "log position names no shard group: the master sets it to the group of the write".to_owned(),
        ));
    }
    if position.seq == 0 {
        return Err(IndexError::InvalidBatch("log position seq 0 is invalid: sequences start at 1".to_owned()));
    }
    if let Some(held) = &applied.shard
        && *held != position.shard
    {
        return Err(IndexError::WrongShard { held: held.clone(), got: position.shard.clone() });
    }
    if position.seq <= applied.seq {
        return Ok(Step::AlreadyApplied);
    }
    if position.seq == applied.seq + 1 {
        return Ok(Step::Apply);
    }
    Err(IndexError::LogGap { applied: applied.seq, got: position.seq })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(shard: Option<&str>, seq: u64) -> AppliedLog {
        AppliedLog { shard: shard.map(str::to_owned), seq }
    }

    #[test]
    fn the_next_entry_is_applied_and_earlier_ones_acknowledged() {
        let applied = at(Some("g1"), 4);
        assert_eq!(check_position(&applied, &LogPosition::new("g1", 5)).expect("next"), Step::Apply);
        for seq in 1..=4 {
            assert_eq!(check_position(&applied, &LogPosition::new("g1", seq)).expect("dup"), Step::AlreadyApplied);
        }
        // A fresh index takes the first entry of any group.
        assert_eq!(check_position(&at(None, 0), &LogPosition::new("g2", 1)).expect("first"), Step::Apply);
    }

    #[test]
    fn a_gap_names_the_applied_sequence() {
        let err = check_position(&at(Some("g1"), 4), &LogPosition::new("g1", 7)).expect_err("gap");
        assert!(matches!(err, IndexError::LogGap { applied: 4, got: 7 }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "this replica applied the shard group's log up to seq 4; entry 7 would leave a gap: the master sends the missing entries first"
        );
        let fresh = check_position(&at(None, 0), &LogPosition::new("g1", 2)).expect_err("gap from zero");
        assert!(matches!(fresh, IndexError::LogGap { applied: 0, got: 2 }), "{fresh:?}");
    }

    #[test]
    fn another_groups_entry_is_refused_even_when_already_applied_by_number() {
        let err = check_position(&at(Some("g1"), 4), &LogPosition::new("g2", 2)).expect_err("wrong shard");
        assert!(matches!(&err, IndexError::WrongShard { held, got } if held == "g1" && got == "g2"), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("\"g1\"") && text.contains("\"g2\""), "{text}");
    }

    #[test]
    fn seq_zero_and_an_empty_shard_are_invalid() {
        let zero = check_position(&at(Some("g1"), 4), &LogPosition::new("g1", 0)).expect_err("seq 0");
        assert!(matches!(zero, IndexError::InvalidBatch(_)), "{zero:?}");
        let empty = check_position(&at(None, 0), &LogPosition::new("", 1)).expect_err("no shard");
        assert!(matches!(empty, IndexError::InvalidBatch(_)), "{empty:?}");
    }

    proptest! {
        /// Whatever order entries arrive in (duplicates, gaps, reorders), the applied sequence is
        /// the longest gap-free prefix of what arrived, and no entry is applied twice.
        #[test]
        fn applied_is_the_longest_gap_free_prefix_and_each_seq_applies_once(
            arrivals in proptest::collection::vec(1u64..12, 0..40)
        ) {
            let mut applied = at(None, 0);
            let mut applied_count = std::collections::BTreeMap::<u64, u32>::new();
            for seq in &arrivals {
                let position = LogPosition::new("g", *seq);
                match check_position(&applied, &position) {
                    Ok(Step::Apply) => {
                        *applied_count.entry(*seq).or_default() += 1;
                        applied = AppliedLog::advanced_to(&position);
                    }
                    Ok(Step::AlreadyApplied) => prop_assert!(*seq <= applied.seq),
                    Err(IndexError::LogGap { applied: at, got }) => {
                        prop_assert_eq!(at, applied.seq);
                        prop_assert!(got > at + 1);
                    }
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }
            // Model: entry k is applied when k-1 was applied before it arrived.
            let mut expected = 0u64;
            for seq in &arrivals {
                if *seq == expected + 1 {
                    expected += 1;
                }
            }
            prop_assert_eq!(applied.seq, expected);
            prop_assert!(applied_count.values().all(|n| *n == 1), "applied twice: {:?}", applied_count);
            prop_assert_eq!(applied_count.keys().copied().collect::<Vec<_>>(), (1..=expected).collect::<Vec<_>>());
        }
    }
}
