//! Which shard groups a search asks, and why every other node is not asked. Pure: a function of
//! the replicas as the master sees them, the requested collections and the caller's node
//! selection.
//!
//! A group is routed when one of its replicas holds a requested collection (or none was
//! requested). A routed group is asked once, through the node client, which picks one of its
//! readable replicas (up and in sync); a group with no readable replica cannot answer, and is
//! the only way to a partial answer. Nodes the caller names are asked themselves: no other
//! replica stands in for a node chosen by name.

use std::collections::{BTreeMap, BTreeSet};

use ragmesh_stack::node_call::Target;

/// Why a node was not asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The node is down.
    Down,
    /// The node holds none of the requested collections.
    NotRouted,
    /// The node's circuit breaker is open.
    BreakerOpen,
    /// The node misses acknowledged writes of its group (catching up or stale).
    NotInSync,
    /// Another replica of its group answered.
    OtherReplica,
}

/// A node as the plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    /// Node name.
    pub name: String,
    /// Its shard group.
    pub group: String,
    /// Whether its liveness lets it be searched (up, suspect or joining).
    pub searchable: bool,
    /// Whether it applied every acknowledged write of its group.
    pub in_sync: bool,
    /// Whether its circuit breaker is open now.
    pub breaker_open: bool,
    /// Collections it holds.
    pub collections: BTreeSet<String>,
}

impl Replica {
    /// Whether a read may be sent to it.
    pub fn readable(&self) -> bool {
        self.searchable && self.in_sync
    }

    /// Why it cannot be read, when it cannot.
    fn unreadable_reason(&self) -> Option<SkipReason> {
        if !self.searchable {
            Some(SkipReason::Down)
        } else if !self.in_sync {
            Some(SkipReason::NotInSync)
        } else {
            None
        }
    }
}

/// One call the search makes.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupTarget {
    /// The shard group answered for.
    pub group: String,
    /// Where the call goes: the group, or a node named by the caller.
    pub target: Target,
    /// The group's considered replicas that may answer (readable), by name.
    pub readable: Vec<String>,
    /// Of those, the ones whose breaker was open when the search started.
    pub breaker_open: Vec<String>,
}

/// A routed group that cannot answer: none of its considered replicas is readable.
#[derive(Debug, Clone, PartialEq)]
pub struct Unanswerable {
    /// The group.
    pub group: String,
    /// Why, as a skip reason: down when every replica is down, else not in sync.
    pub reason: SkipReason,
}

/// What a search will do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Calls to make, one per routed group (or per named node).
    pub targets: Vec<GroupTarget>,
    /// Nodes not asked, decided before any call: down, not routed, not in sync.
    pub skipped: Vec<(String, SkipReason)>,
    /// Routed groups without a readable replica.
    pub unanswerable: Vec<Unanswerable>,
    /// Groups holding none of the requested collections.
    pub not_routed: Vec<String>,
}

/// The replicas a search considers: the `selected` ones, or all when none is selected.
pub fn considered<'a>(replicas: &'a [Replica], selected: &'a [String]) -> impl Iterator<Item = &'a Replica> + 'a {
    replicas.iter().filter(move |r| selected.is_empty() || selected.contains(&r.name))
}

/// Plans a search of `collections` (empty = all) over `replicas`, restricted to `selected`
/// nodes when non-empty. Unknown selected names are an error listing them.
pub fn plan(replicas: &[Replica], collections: &[String], selected: &[String]) -> Result<Plan, Vec<String>> {
    let known: BTreeSet<&str> = replicas.iter().map(|r| r.name.as_str()).collect();
    let unknown: Vec<String> = selected.iter().filter(|s| !known.contains(s.as_str())).cloned().collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    let mut groups: BTreeMap<&str, Vec<&Replica>> = BTreeMap::new();
    for replica in considered(replicas, selected) {
        groups.entry(replica.group.as_str()).or_default().push(replica);
    }
    let mut plan = Plan::default();
    for (group, members) in groups {
        let routed =
            collections.is_empty() || members.iter().any(|m| collections.iter().any(|c| m.collections.contains(c)));
        if !routed {
            plan.skipped.extend(members.iter().map(|m| (m.name.clone(), SkipReason::NotRouted)));
            plan.not_routed.push(group.to_owned());
            continue;
        }
        let (readable, unreadable): (Vec<&Replica>, Vec<&Replica>) = members.iter().partition(|m| m.readable());
        for member in &unreadable {
            if let Some(reason) = member.unreadable_reason() {
                plan.skipped.push((member.name.clone(), reason));
            }
        }
        if readable.is_empty() {
            let reason = if members.iter().all(|m| !m.searchable) { SkipReason::Down } else { SkipReason::NotInSync };
            plan.unanswerable.push(Unanswerable { group: group.to_owned(), reason });
            continue;
        }
        let names = |list: &[&Replica]| list.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        let breaker_open: Vec<&Replica> = readable.iter().copied().filter(|m| m.breaker_open).collect();
        if selected.is_empty() {
            plan.targets.push(GroupTarget {
                group: group.to_owned(),
                target: Target::Group(group.to_owned()),
                readable: names(&readable),
                breaker_open: names(&breaker_open),
            });
        } else {
            // Named nodes answer for themselves, each its own call.
            for member in readable {
                plan.targets.push(GroupTarget {
                    group: group.to_owned(),
                    target: Target::Node(member.name.clone()),
                    readable: vec![member.name.clone()],
                    breaker_open: if member.breaker_open { vec![member.name.clone()] } else { Vec::new() },
                });
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn replica(name: &str, group: &str, searchable: bool, in_sync: bool, collections: &[&str]) -> Replica {
        Replica {
            name: name.into(),
            group: group.into(),
            searchable,
            in_sync,
            breaker_open: false,
            collections: collections.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    fn names(targets: &[GroupTarget]) -> Vec<(&str, &Target)> {
        targets.iter().map(|t| (t.group.as_str(), &t.target)).collect()
    }

    #[test]
    fn each_routed_group_is_asked_once_through_its_readable_replicas() {
        let replicas = [
            replica("a1", "a", true, true, &["docs"]),
            replica("a2", "a", true, false, &["docs"]),
            replica("b1", "b", false, true, &["docs"]),
            replica("b2", "b", true, true, &["docs"]),
            replica("c1", "c", true, true, &["faq"]),
        ];
        let plan = plan(&replicas, &["docs".to_owned()], &[]).expect("plan");
        assert_eq!(names(&plan.targets), [("a", &Target::Group("a".into())), ("b", &Target::Group("b".into()))]);
        assert_eq!(plan.targets[0].readable, ["a1"]);
        assert_eq!(plan.targets[1].readable, ["b2"]);
        assert_eq!(
            plan.skipped,
            [
                ("a2".to_owned(), SkipReason::NotInSync),
                ("b1".to_owned(), SkipReason::Down),
                ("c1".to_owned(), SkipReason::NotRouted)
            ]
        );
        assert!(plan.unanswerable.is_empty());
        assert_eq!(plan.not_routed, ["c"]);
    }

    #[test]
    fn a_group_without_a_readable_replica_is_unanswerable() {
        let replicas = [
            replica("a1", "a", false, true, &["docs"]),
            replica("a2", "a", false, true, &["docs"]),
            replica("b1", "b", false, true, &["docs"]),
            replica("b2", "b", true, false, &["docs"]),
        ];
        let plan = plan(&replicas, &[], &[]).expect("plan");
        assert!(plan.targets.is_empty());
        assert_eq!(
            plan.unanswerable,
            [
                Unanswerable { group: "a".into(), reason: SkipReason::Down },
                Unanswerable { group: "b".into(), reason: SkipReason::NotInSync }
            ]
        );
        assert_eq!(plan.skipped.len(), 4, "every member is reported");
    }

    #[test]
    fn named_nodes_answer_for_themselves_and_unknown_names_are_listed() {
        let replicas = [replica("a1", "a", true, true, &["docs"]), replica("a2", "a", true, true, &["docs"])];
        let plan = plan(&replicas, &[], &["a2".to_owned()]).expect("plan");
        assert_eq!(names(&plan.targets), [("a", &Target::Node("a2".into()))]);
        assert!(plan.skipped.is_empty(), "unselected nodes are not considered");
        let unknown = super::plan(&replicas, &[], &["a1".to_owned(), "zz".to_owned()]).expect_err("unknown");
        assert_eq!(unknown, ["zz"]);
    }

    #[test]
    fn breaker_open_replicas_stay_candidates_and_are_remembered() {
        let mut open = replica("a1", "a", true, true, &["docs"]);
        open.breaker_open = true;
        let replicas = [open, replica("a2", "a", true, true, &["docs"])];
        let plan = plan(&replicas, &[], &[]).expect("plan");
        assert_eq!(plan.targets[0].readable, ["a1", "a2"]);
        assert_eq!(plan.targets[0].breaker_open, ["a1"]);
    }

    fn arb_replica() -> impl Strategy<Value = Replica> {
        ("[a-e]", 0..3usize, any::<bool>(), any::<bool>(), proptest::sample::subsequence(vec!["x", "y"], 0..=2))
            .prop_map(|(name, group, searchable, in_sync, collections)| {
                replica(&name, &format!("g{group}"), searchable, in_sync, &collections)
            })
    }

    proptest! {
        /// Every considered node is accounted for exactly once (asked as a readable replica of a
        /// target, or skipped), and a group is asked at most once when no node is named.
        #[test]
        fn every_node_is_accounted_for_once(mut replicas in proptest::collection::vec(arb_replica(), 0..10),
                                            wanted in proptest::sample::subsequence(vec!["x".to_owned(), "y".to_owned()], 0..=2)) {
            replicas.sort_by(|a, b| a.name.cmp(&b.name));
            replicas.dedup_by(|a, b| a.name == b.name);
            let plan = plan(&replicas, &wanted, &[]).expect("no selection, no unknown names");
            let mut seen: Vec<String> = plan.skipped.iter().map(|(n, _)| n.clone()).collect();
            for target in &plan.targets {
                seen.extend(target.readable.iter().cloned());
                prop_assert!(target.readable.iter().all(|n| replicas.iter().any(|r| &r.name == n && r.readable())));
            }
            seen.sort();
            let all: Vec<String> = replicas.iter().map(|r| r.name.clone()).collect();
            prop_assert_eq!(seen, all);
            let groups: BTreeSet<&str> = plan.targets.iter().map(|t| t.group.as_str()).collect();
            prop_assert_eq!(groups.len(), plan.targets.len());
            for gone in &plan.unanswerable {
                prop_assert!(!groups.contains(gone.group.as_str()));
            }
        }
    }
}
