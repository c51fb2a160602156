//! What a search reports, as pure functions of its plan and its groups' results: an outcome for
//! every node considered (one vocabulary: ok, timeout, unavailable, error, cancelled,
//! skipped{down|not_routed|breaker_open|not_in_sync|other_replica|no_match}), one report per
//! group (who answered, every attempt), and the verdict: an answer no group gave is an error,
//! never "OK, zero hits". A group whose term summary proves it holds no match counts as an
//! answer (an empty one, known without the call).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ragmesh_proto::ErrorKind;
use ragmesh_stack::node_call::{Attempt, AttemptEnd, CallError};

use super::plan::{GroupTarget, Plan, Replica, SkipReason, considered};
use super::{GroupResult, NodeResult, Outcome, timeout_message, to_node_hits};

/// How a group's part of the search ended.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupEnd {
    /// This replica's answer was used.
    Answered {
        /// The replica.
        node: String,
    },
    /// No replica answered.
    Failed(CallError),
    /// The group was not asked.
    Skipped(SkipReason),
}

/// One group's report.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupReport {
    /// The group.
    pub group: String,
    /// How it ended.
    pub end: GroupEnd,
    /// Every call made to its replicas, in start order.
    pub attempts: Vec<Attempt>,
    /// Time the group took.
    pub took: Duration,
}

/// The outcome of every node considered, sorted by name: nodes the plan skipped, and for each
/// group asked, its replicas (the one that answered, those tried, those not needed).
pub fn node_results(plan: &Plan, groups: Vec<GroupResult>) -> Vec<NodeResult> {
    let mut results: BTreeMap<String, NodeResult> = BTreeMap::new();
    for (node, reason) in &plan.skipped {
        let result = NodeResult { node: node.clone(), outcome: Outcome::Skipped(*reason), took: Duration::ZERO };
        results.insert(node.clone(), result);
    }
    for target in skipped_no_match(plan, &groups) {
        for node in &target.readable {
            let result =
                NodeResult { node: node.clone(), outcome: Outcome::Skipped(SkipReason::NoMatch), took: Duration::ZERO };
            results.insert(node.clone(), result);
        }
    }
    for group in groups {
        let mut last: BTreeMap<&str, &Attempt> = BTreeMap::new();
        for attempt in &group.attempts {
            last.insert(attempt.node.as_str(), attempt);
        }
        let answered_by = group.answer.as_ref().ok().map(|(node, _)| node.clone());
        let mut nodes: BTreeSet<String> = group.target.readable.iter().cloned().collect();
        nodes.extend(last.keys().map(|n| (*n).to_owned()));
        nodes.extend(answered_by.iter().cloned());
        for node in nodes {
            let attempt = last.get(node.as_str()).copied();
            let took = attempt.map_or(Duration::ZERO, |a| a.took);
            let outcome = match (&group.answer, attempt) {
                (Ok((by, reply)), _) if *by == node => {
                    let took = attempt.map_or(group.took, |a| a.took);
                    let outcome =
                        Outcome::Ok { hits: to_node_hits(&node, reply.hits.clone()), generation: reply.generation };
                    results.insert(node.clone(), NodeResult { node, outcome, took });
                    continue;
                }
                (_, Some(attempt)) => match (&attempt.end, &group.answer) {
                    (AttemptEnd::Failed(error), _) => Outcome::failed(error),
                    // Abandoned because the group's call ended: by another replica's answer,
                    // or at the deadline (then it simply did not answer in time).
                    (AttemptEnd::Ok | AttemptEnd::Cancelled, Err(CallError::Timeout { budget })) => {
                        Outcome::Timeout { budget: *budget }
                    }
                    (AttemptEnd::Ok | AttemptEnd::Cancelled, _) => Outcome::Cancelled,
                },
                _ if group.target.breaker_open.contains(&node) => Outcome::Skipped(SkipReason::BreakerOpen),
                (Ok(_), None) => Outcome::Skipped(SkipReason::OtherReplica),
                (Err(error), None) => Outcome::NotAsked(error.clone()),
            };
            results.insert(node.clone(), NodeResult { node, outcome, took });
        }
    }
    results.into_values().collect()
}

/// The calls of `plan` not made because a term summary proves they cannot match (those asked
/// anyway, in a global-BM25 statistics phase that failed, are reported with that failure).
fn skipped_no_match<'a>(plan: &'a Plan, groups: &[GroupResult]) -> Vec<&'a GroupTarget> {
    plan.targets
        .iter()
        .filter(|target| plan.proven_no_match(target) && !groups.iter().any(|g| g.target.target == target.target))
        .collect()
}

/// One report per group considered: asked (answered or failed), proven not to match,
/// unanswerable, or not routed.
pub fn group_reports(plan: &Plan, groups: &[GroupResult]) -> Vec<GroupReport> {
    let mut reports: Vec<GroupReport> = groups
        .iter()
        .map(|g| GroupReport {
            group: g.target.group.clone(),
            end: match &g.answer {
                Ok((node, _)) => GroupEnd::Answered { node: node.clone() },
                Err(error) => GroupEnd::Failed(error.clone()),
            },
            attempts: g.attempts.clone(),
            took: g.took,
        })
        .collect();
    let skipped = |group: &str, reason| GroupReport {
        group: group.to_owned(),
        end: GroupEnd::Skipped(reason),
        attempts: Vec::new(),
        took: Duration::ZERO,
    };
    reports.extend(skipped_no_match(plan, groups).into_iter().map(|t| skipped(&t.group, SkipReason::NoMatch)));
    reports.extend(plan.unanswerable.iter().map(|u| skipped(&u.group, u.reason)));
    reports.extend(plan.not_routed.iter().map(|g| skipped(g, SkipReason::NotRouted)));
    reports.sort_by(|a, b| a.group.cmp(&b.group));
    reports
}

/// Why a search has no answer to give, when no group answered.
#[derive(Debug, Clone, PartialEq)]
pub enum NoAnswer {
    /// No agent has ever registered.
    NoNodes,
    /// No node considered, up or down, holds any requested collection.
    NoSuchCollections {
        /// Collections the caller asked for.
        requested: Vec<String>,
        /// Collections that exist on the considered nodes.
        existing: BTreeSet<String>,
    },
    /// Groups were considered but none answered; `kind` says how the search failed.
    NoneAnswered {
        /// The kind of failure to report.
        kind: ErrorKind,
        /// One line per node: name and outcome.
        summary: String,
    },
}

/// Decides whether a search has an answer: `Ok` when at least one node answered (even with no
/// hits) or was proven by its term summary to hold no match; otherwise why not. `replicas` are every node the master knows, `selected` the
/// caller's node selection (all when empty), `collections` the requested ones (empty = all).
pub fn verdict(
    results: &[NodeResult],
    replicas: &[Replica],
    selected: &[String],
    collections: &[String],
) -> Result<(), NoAnswer> {
    if results.iter().any(|r| matches!(r.outcome, Outcome::Ok { .. } | Outcome::Skipped(SkipReason::NoMatch))) {
        return Ok(());
    }
    if considered(replicas, selected).next().is_none() {
        return Err(NoAnswer::NoNodes);
    }
    let holds_any = |r: &Replica| collections.iter().any(|c| r.collections.contains(c));
    if !collections.is_empty() && !considered(replicas, selected).any(holds_any) {
        let existing = considered(replicas, selected).flat_map(|r| r.collections.iter().cloned()).collect();
        return Err(NoAnswer::NoSuchCollections { requested: collections.to_vec(), existing });
    }
    let asked: Vec<&Outcome> = results
        .iter()
        .map(|r| &r.outcome)
        .filter(|o| !matches!(o, Outcome::Skipped(_) | Outcome::Cancelled | Outcome::NotAsked(_)))
        .collect();
    let all = |f: fn(&Outcome) -> bool| !asked.is_empty() && asked.iter().all(|o| f(o));
    let kind = if all(|o| matches!(o, Outcome::Timeout { .. })) {
        ErrorKind::DeadlineExceeded
    } else if let Some(Outcome::Error { kind, .. }) = asked.first()
        && kind.is_callers_fault()
        && asked.iter().all(|o| matches!(o, Outcome::Error { kind: k, .. } if k == kind))
    {
        // Every node refused the request for the same reason the caller can fix: say so.
        *kind
    } else {
        ErrorKind::Unavailable
    };
    let summary = results.iter().map(describe).collect::<Vec<_>>().join("; ");
    Err(NoAnswer::NoneAnswered { kind, summary })
}

/// `node: outcome (detail)`, for error messages.
fn describe(result: &NodeResult) -> String {
    let node = &result.node;
    match &result.outcome {
        Outcome::Ok { hits, .. } => format!("{node}: ok ({} hits)", hits.len()),
        Outcome::Timeout { budget } => format!("{node}: timeout ({})", timeout_message(*budget)),
        Outcome::Unavailable(message) => format!("{node}: unavailable ({message})"),
        Outcome::Error { kind, message } => format!("{node}: error ({kind}: {message})"),
        Outcome::Cancelled => format!("{node}: cancelled (another replica answered first)"),
        Outcome::NotAsked(error) => format!("{node}: not asked (its group's call ended first: {error})"),
        Outcome::Skipped(reason) => format!("{node}: skipped ({})", skip_text(*reason)),
    }
}

/// The words for a skip reason in messages.
pub fn skip_text(reason: SkipReason) -> &'static str {
    match reason {
        SkipReason::Down => "down",
        SkipReason::NotRouted => "holds none of the collections",
        SkipReason::BreakerOpen => "breaker open",
        SkipReason::NotInSync => "not in sync with its shard group",
        SkipReason::OtherReplica => "another replica of its group answered",
        SkipReason::NoMatch => "its term summary proves no document can match",
    }
}

#[cfg(test)]
mod tests {
    use ragmesh_proto::v1;
    use ragmesh_stack::node_call::{AttemptKind, Target};
    use tokio::time::Instant;

    use super::*;
    use crate::federation::plan::tests::replica;
    use crate::federation::plan::{GroupTarget, plan};

    fn attempt(node: &str, kind: AttemptKind, end: AttemptEnd) -> Attempt {
        Attempt { node: node.into(), kind, started: Instant::now(), took: Duration::from_millis(3), end }
    }

    fn target(group: &str, readable: &[&str]) -> GroupTarget {
        GroupTarget {
            group: group.into(),
            target: Target::Group(group.into()),
            readable: readable.iter().map(|n| (*n).to_owned()).collect(),
            breaker_open: Vec::new(),
        }
    }

    fn answered(group: &str, readable: &[&str], by: &str, attempts: Vec<Attempt>) -> GroupResult {
        let reply = v1::NodeSearchResponse { hits: vec![v1::Hit::default()], generation: 4, total_matches: 1 };
        GroupResult {
            target: target(group, readable),
            answer: Ok((by.into(), reply)),
            attempts,
            took: Duration::from_millis(5),
        }
    }

    fn outcome_of<'a>(results: &'a [NodeResult], node: &str) -> &'a Outcome {
        &results.iter().find(|r| r.node == node).unwrap_or_else(|| panic!("{node} reported")).outcome
    }

    #[test]
    fn a_retried_group_reports_the_failed_replica_and_the_one_that_answered() {
        let unreachable = CallError::Unavailable("connection refused".into());
        let attempts = vec![
            attempt("a1", AttemptKind::First, AttemptEnd::Failed(unreachable)),
            attempt("a2", AttemptKind::Retry, AttemptEnd::Ok),
        ];
        let results = node_results(&Plan::default(), vec![answered("a", &["a1", "a2", "a3"], "a2", attempts)]);
        assert_eq!(outcome_of(&results, "a1"), &Outcome::Unavailable("connection refused".into()));
        assert!(matches!(outcome_of(&results, "a2"), Outcome::Ok { generation: 4, hits } if hits.len() == 1));
        assert_eq!(outcome_of(&results, "a3"), &Outcome::Skipped(SkipReason::OtherReplica));
    }

    #[test]
    fn a_hedged_group_reports_the_slow_replica_as_cancelled() {
        let attempts = vec![
            attempt("a1", AttemptKind::First, AttemptEnd::Cancelled),
            attempt("a2", AttemptKind::Hedge, AttemptEnd::Ok),
        ];
        let results = node_results(&Plan::default(), vec![answered("a", &["a1", "a2"], "a2", attempts)]);
        assert_eq!(outcome_of(&results, "a1"), &Outcome::Cancelled);
        let verdict = verdict(&results, &[replica("a1", "a", true, true, &[])], &[], &[]);
        assert_eq!(verdict, Ok(()));
    }

    #[test]
    fn an_untried_replica_of_a_failed_group_is_not_claimed_to_have_been_asked() {
        let budget = Duration::from_millis(100);
        let failed = GroupResult {
            target: target("a", &["a1", "a2"]),
            answer: Err(CallError::Timeout { budget }),
            attempts: vec![attempt("a1", AttemptKind::First, AttemptEnd::Failed(CallError::Timeout { budget }))],
            took: budget,
        };
        let results = node_results(&Plan::default(), vec![failed.clone()]);
        assert_eq!(outcome_of(&results, "a2"), &Outcome::NotAsked(CallError::Timeout { budget }));
        let Err(NoAnswer::NoneAnswered { summary, .. }) =
            verdict(&results, &[replica("a1", "a", true, true, &[]), replica("a2", "a", true, true, &[])], &[], &[])
        else {
            panic!("no answer")
        };
        assert!(summary.contains("a2: not asked (its group's call ended first: timeout"), "{summary}");
        let Err(NoAnswer::NoneAnswered { kind, .. }) =
            verdict(&results, &[replica("a1", "a", true, true, &[]), replica("a2", "a", true, true, &[])], &[], &[])
        else {
            panic!("no answer")
        };
        assert_eq!(kind, ErrorKind::DeadlineExceeded, "the one replica asked timed out");
        let refused = GroupResult { answer: Err(CallError::Unavailable("refused".into())), ..failed.clone() };
        let results = node_results(&Plan::default(), vec![refused]);
        assert!(matches!(outcome_of(&results, "a2"), Outcome::NotAsked(CallError::Unavailable(_))));
        // An attempt abandoned at the deadline did not answer in time; nobody answered first.
        let abandoned =
            GroupResult { attempts: vec![attempt("a1", AttemptKind::First, AttemptEnd::Cancelled)], ..failed };
        let results = node_results(&Plan::default(), vec![abandoned]);
        assert_eq!(outcome_of(&results, "a1"), &Outcome::Timeout { budget });
    }

    #[test]
    fn group_reports_cover_asked_unanswerable_and_unrouted_groups() {
        let replicas = [
            replica("a1", "a", true, true, &["docs"]),
            replica("b1", "b", false, true, &["docs"]),
            replica("c1", "c", true, true, &["faq"]),
        ];
        let plan = plan(&replicas, &["docs".to_owned()], &[]).expect("plan");
        let groups = vec![answered("a", &["a1"], "a1", vec![attempt("a1", AttemptKind::First, AttemptEnd::Ok)])];
        let reports = group_reports(&plan, &groups);
        let ends: Vec<(&str, &GroupEnd)> = reports.iter().map(|r| (r.group.as_str(), &r.end)).collect();
        assert_eq!(
            ends,
            [
                ("a", &GroupEnd::Answered { node: "a1".into() }),
                ("b", &GroupEnd::Skipped(SkipReason::Down)),
                ("c", &GroupEnd::Skipped(SkipReason::NotRouted))
            ]
        );
        let results = node_results(&plan, groups);
        assert_eq!(results.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), ["a1", "b1", "c1"]);
    }

    fn result(node: &str, outcome: Outcome) -> NodeResult {
        NodeResult { node: node.to_owned(), outcome, took: Duration::ZERO }
    }

    #[test]
    fn regression_a_search_no_node_answered_is_an_error_not_zero_hits() {
        let replicas = [replica("a", "a", true, true, &["docs"]), replica("b", "b", false, true, &["docs"])];
        let timeout = Outcome::Timeout { budget: Duration::from_millis(100) };
        let results = [result("a", timeout.clone()), result("b", Outcome::Skipped(SkipReason::Down))];
        let Err(NoAnswer::NoneAnswered { kind, summary }) = verdict(&results, &replicas, &[], &[]) else {
            panic!("no answer");
        };
        assert_eq!(kind, ErrorKind::DeadlineExceeded);
        assert_eq!(summary, "a: timeout (no answer within 100 ms); b: skipped (down)");

        let results = [result("a", timeout), result("b", Outcome::Unavailable("connection refused".into()))];
        let Err(NoAnswer::NoneAnswered { kind, summary }) = verdict(&results, &replicas, &[], &[]) else {
            panic!("no answer");
        };
        assert_eq!(kind, ErrorKind::Unavailable);
        assert!(summary.contains("b: unavailable (connection refused)"), "{summary}");

        let bad = |n: &str| result(n, Outcome::Error { kind: ErrorKind::InvalidArgument, message: "bad".into() });
        let Err(NoAnswer::NoneAnswered { kind, .. }) = verdict(&[bad("a"), bad("b")], &replicas, &[], &[]) else {
            panic!("no answer");
        };
        assert_eq!(kind, ErrorKind::InvalidArgument, "every node refused the query for the same reason");

        let only_down = [result("b", Outcome::Skipped(SkipReason::Down))];
        let Err(NoAnswer::NoneAnswered { kind, .. }) = verdict(&only_down, &replicas[1..], &[], &[]) else {
            panic!("no answer");
        };
        assert_eq!(kind, ErrorKind::Unavailable);
        let open = [result("a", Outcome::Skipped(SkipReason::BreakerOpen))];
        let Err(NoAnswer::NoneAnswered { kind, summary }) = verdict(&open, &replicas[..1], &[], &[]) else {
            panic!("no answer");
        };
        assert_eq!((kind, summary.as_str()), (ErrorKind::Unavailable, "a: skipped (breaker open)"));
    }

    #[test]
    fn regression_collections_no_node_holds_are_not_found() {
        let replicas = [replica("a", "a", true, true, &["docs"]), replica("b", "b", false, true, &["faq"])];
        let results =
            [result("a", Outcome::Skipped(SkipReason::NotRouted)), result("b", Outcome::Skipped(SkipReason::Down))];
        let Err(NoAnswer::NoSuchCollections { requested, existing }) =
            verdict(&results, &replicas, &[], &["nope".to_owned()])
        else {
            panic!("not found");
        };
        assert_eq!(requested, ["nope"]);
        assert_eq!(existing.into_iter().collect::<Vec<_>>(), ["docs", "faq"]);
        // A collection only a down node holds exists: the search is unavailable, not not-found.
        let Err(NoAnswer::NoneAnswered { kind, .. }) = verdict(&results, &replicas, &[], &["faq".to_owned()]) else {
            panic!("unavailable");
        };
        assert_eq!(kind, ErrorKind::Unavailable);
        // Only the selected nodes count: "faq" is on b, but the caller asked a alone.
        let only_a = [result("a", Outcome::Skipped(SkipReason::NotRouted))];
        let Err(NoAnswer::NoSuchCollections { existing, .. }) =
            verdict(&only_a, &replicas, &["a".to_owned()], &["faq".to_owned()])
        else {
            panic!("not found among the selected nodes");
        };
        assert_eq!(existing.into_iter().collect::<Vec<_>>(), ["docs"]);
        assert_eq!(verdict(&[], &[], &[], &[]), Err(NoAnswer::NoNodes));
    }

    #[test]
    fn a_group_proven_not_to_match_is_reported_skipped_no_match_and_counts_as_an_answer() {
        let replicas = [replica("a1", "a", true, true, &["docs"]), replica("b1", "b", true, true, &["docs"])];
        let mut plan = plan(&replicas, &[], &[]).expect("plan");
        plan.no_match = vec![Target::Group("a".into()), Target::Group("b".into())];
        let results = node_results(&plan, Vec::new());
        assert_eq!(outcome_of(&results, "a1"), &Outcome::Skipped(SkipReason::NoMatch));
        assert_eq!(outcome_of(&results, "b1"), &Outcome::Skipped(SkipReason::NoMatch));
        assert_eq!(verdict(&results, &replicas, &[], &[]), Ok(()), "no group can match: zero hits is the answer");
        let reports = group_reports(&plan, &[]);
        let ends: Vec<&GroupEnd> = reports.iter().map(|r| &r.end).collect();
        assert_eq!(ends, [&GroupEnd::Skipped(SkipReason::NoMatch), &GroupEnd::Skipped(SkipReason::NoMatch)]);
        // A no-match group that was asked anyway (a failed statistics phase) reports that call.
        let failed = GroupResult {
            target: plan.targets[1].clone(),
            answer: Err(CallError::Unavailable("connection refused".into())),
            attempts: Vec::new(),
            took: Duration::ZERO,
        };
        let results = node_results(&plan, vec![failed.clone()]);
        assert_eq!(outcome_of(&results, "b1"), &Outcome::NotAsked(CallError::Unavailable("connection refused".into())));
        assert!(matches!(group_reports(&plan, &[failed])[1].end, GroupEnd::Failed(_)));
    }
}
