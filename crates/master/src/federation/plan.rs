//! Which shard groups a search asks, and why every other node is not asked. Pure: a function of
//! the replicas as the master sees them, the requested collections and the caller's node
//! selection.
//!
//! A group is routed when one of its replicas holds a requested collection (or none was
//! requested). A routed group is asked once, through the node client, which picks one of its
//! readable replicas (up and in sync); a group with no readable replica cannot answer, and is
//! the only way to a partial answer. Nodes the caller names are asked themselves: no other
//! replica stands in for a node chosen by name.
//!
//! Routing by term summaries ([`skip_no_match`]): each agent sends a Bloom-filter summary of its
//! terms per collection on its health stream. A planned call is proven useless, and its group
//! reported `skipped: no_match`, when one of the call's readable replicas has a summary that
//! (1) is trusted: built from a snapshot that applied every write of the group's log assigned so
//! far (`applied_seq >= last`; a sequence is assigned before a write is answered, so after any
//! acknowledged write an older summary is no longer trusted) and no older than the index
//! generation the master last heard of; and (2) answers `may_match == false` for the requested
//! collections, each collection judged by the routing query of its own analyzer (an analyzer the
//! master cannot run means "ask"). A false skip is impossible: a Bloom filter has no false
//! negatives and everything the summary cannot reason about is "may match". A false ask (a Bloom
//! false positive, a stale summary) only costs a call.
//!
//! Which phases skip: with `global_bm25` the statistics phase still asks no-match groups (their
//! document and token counts are part of the collection-wide statistics: leaving them out would
//! change every score); only the search phase skips them. With `rrf` and `raw`, the one phase
//! skips them. Nodes named with `nodes:[...]` are skippable too: a node that cannot match
//! answers nothing, asked or not, and reporting it `no_match` says so without the call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use ragmesh_index::{Profile, QueryReading, RoutingParser};
use ragmesh_search::{NodeSummary, RoutingQuery};
use ragmesh_stack::node_call::Target;

use crate::profiles::PerProfile;

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
    /// Its group's term summary proves no document can match.
    NoMatch,
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
    /// Calls of `targets` a trusted term summary proves useless for the search phase (see the
    /// module docs); set by [`skip_no_match`].
    pub no_match: Vec<Target>,
}

impl Plan {
    /// Whether a term summary proves that `target` cannot contribute a hit.
    pub fn proven_no_match(&self, target: &GroupTarget) -> bool {
        self.no_match.contains(&target.target)
    }
}

/// What the master knows of one node's term summary when a search starts.
#[derive(Debug, Clone)]
pub struct NodeTermSummary {
    /// The summary last received on its current session's health stream.
    pub summary: Arc<NodeSummary>,
    /// The last write-log sequence of its group applied in the snapshot summarised.
    pub applied_seq: u64,
    /// The node's index generation as the master last heard it (heartbeats, write answers).
    pub node_generation: u64,
    /// The last sequence assigned in its group's write log.
    pub group_last_seq: u64,
}

impl NodeTermSummary {
    /// Whether the summary describes the node as of every write of its group assigned so far
    /// (and so every acknowledged one).
    pub fn trusted(&self) -> bool {
        self.applied_seq >= self.group_last_seq && self.summary.generation() >= self.node_generation
    }
}

/// One [`RoutingParser`] per analysis profile met, built on first use (an unknown analyzer name
/// is never stored). Clones share the parsers.
#[derive(Debug, Default, Clone)]
pub struct RoutingParsers {
    parsers: PerProfile<RoutingParser>,
}

impl RoutingParsers {
    /// `text` parsed for the collections analyzed by `analyzer`; `None` for an analyzer this
    /// build does not know (the router asks, the statistics cache looks the query up by its text).
    pub fn read(&self, analyzer: &str, text: &str) -> Option<QueryReading> {
        let profile = Profile::from_name(analyzer)?;
        Some(self.parsers.get(&profile, RoutingParser::new).read(text))
    }
}

/// One search's query as each analysis profile reads it, parsed on first use and then shared by
/// routing ([`skip_no_match`]) and the statistics cache's term lookup: tantivy's query parser is
/// the costliest step of either.
#[derive(Debug)]
pub struct QueryReadings {
    parsers: RoutingParsers,
    query: String,
    /// By analyzer name (as summaries name them); `None`: unknown here. At most one entry per
    /// name the search's summaries carry.
    read: Mutex<BTreeMap<String, Option<Arc<QueryReading>>>>,
}

impl QueryReadings {
    /// The readings of `query`, none made yet.
    pub fn new(parsers: &RoutingParsers, query: &str) -> Self {
        QueryReadings { parsers: parsers.clone(), query: query.to_owned(), read: Mutex::default() }
    }

    /// The query read for the collections analyzed by `analyzer` (`None`: unknown here).
    pub fn get(&self, analyzer: &str) -> Option<Arc<QueryReading>> {
        let mut read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reading) = read.get(analyzer) {
            return reading.clone();
        }
        let reading = self.parsers.read(analyzer, &self.query).map(Arc::new);
        read.insert(analyzer.to_owned(), reading.clone());
        reading
    }
}

/// Marks the calls of `plan` that trusted term summaries prove useless for a search of the
/// query of `readings` in `collections` (empty = all): see the module docs. The query is read
/// once per analyzer named by the summaries involved.
pub fn skip_no_match(
    plan: &mut Plan,
    summaries: &BTreeMap<String, NodeTermSummary>,
    collections: &[String],
    readings: &QueryReadings,
) {
    skip_no_match_with(plan, summaries, collections, |analyzer| readings.get(analyzer).map(|r| r.routing().clone()));
}

/// [`skip_no_match`] with the query reduced by `query_for(analyzer)` (`None`: that analyzer is
/// unknown here, ask).
pub fn skip_no_match_with(
    plan: &mut Plan,
    summaries: &BTreeMap<String, NodeTermSummary>,
    collections: &[String],
    query_for: impl Fn(&str) -> Option<RoutingQuery>,
) {
    let trusted = |name: &String| summaries.get(name).filter(|s| s.trusted());
    let mut queries: BTreeMap<String, Option<RoutingQuery>> = BTreeMap::new();
    for target in &plan.targets {
        for summary in target.readable.iter().filter_map(trusted) {
            for analyzer in summary.summary.analyzers() {
                if !queries.contains_key(analyzer) {
                    queries.insert(analyzer.to_owned(), query_for(analyzer));
                }
            }
        }
    }
    let mut no_match = Vec::new();
    for target in &plan.targets {
        let proven = target.readable.iter().filter_map(trusted).any(|summary| {
            !summary.summary.may_match_routed(collections, |analyzer| queries.get(analyzer).and_then(Option::as_ref))
        });
        if proven {
            no_match.push(target.target.clone());
        }
    }
    plan.no_match = no_match;
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

    fn summary_of(terms: &[&str], applied_seq: u64, group_last_seq: u64) -> NodeTermSummary {
        let filter = ragmesh_search::TermFilter::for_terms(terms, 0.01, ragmesh_search::MAX_FILTER_BYTES);
        NodeTermSummary {
            summary: Arc::new(NodeSummary::new(5, [("docs".to_owned(), filter)])),
            applied_seq,
            node_generation: 5,
            group_last_seq,
        }
    }

    fn en(query: &str) -> impl Fn(&str) -> Option<RoutingQuery> + '_ {
        move |analyzer| (analyzer == "en_stem").then(|| RoutingQuery::Term(query.to_owned()))
    }

    fn no_match_after(summaries: &[(&str, NodeTermSummary)], query: &str, selected: &[String]) -> Plan {
        let replicas = [
            replica("a1", "a", true, true, &["docs"]),
            replica("a2", "a", true, true, &["docs"]),
            replica("b1", "b", true, true, &["docs"]),
        ];
        let mut plan = plan(&replicas, &[], selected).expect("plan");
        let summaries = summaries.iter().map(|(n, s)| ((*n).to_owned(), s.clone())).collect();
        skip_no_match_with(&mut plan, &summaries, &[], en(query));
        plan
    }

    #[test]
    fn a_fresh_summary_without_the_term_skips_its_group() {
        let plan =
            no_match_after(&[("a1", summary_of(&["cat"], 7, 7)), ("b1", summary_of(&["dog"], 3, 3))], "dog", &[]);
        assert_eq!(plan.no_match, [Target::Group("a".into())]);
        assert!(plan.proven_no_match(&plan.targets[0]));
        assert!(!plan.proven_no_match(&plan.targets[1]), "b holds the term");
    }

    #[test]
    fn a_stale_summary_is_never_trusted() {
        // A write was assigned after the summary's snapshot: the group may hold "dog" now.
        let plan = no_match_after(&[("a1", summary_of(&["cat"], 6, 7))], "dog", &[]);
        assert!(plan.no_match.is_empty(), "{:?}", plan.no_match);
        // The master heard of a newer generation than the summary's.
        let mut behind = summary_of(&["cat"], 7, 7);
        behind.node_generation = 4; // the summary is newer than the last heartbeat
        assert!(behind.trusted());
        behind.node_generation = 9;
        assert!(!behind.trusted());
        assert!(no_match_after(&[("a1", behind)], "dog", &[]).no_match.is_empty());
        // No summary at all: asked.
        assert!(no_match_after(&[], "dog", &[]).no_match.is_empty());
    }

    #[test]
    fn an_analyzer_the_master_cannot_run_is_asked() {
        let filter = ragmesh_search::TermFilter::for_terms(&["chat"], 0.01, ragmesh_search::MAX_FILTER_BYTES);
        let summary = NodeTermSummary {
            summary: Arc::new(NodeSummary::with_analyzers(5, [("docs".into(), "fr_stem".into(), filter)])),
            applied_seq: 1,
            node_generation: 5,
            group_last_seq: 1,
        };
        let plan = no_match_after(&[("a1", summary)], "dog", &[]);
        assert!(plan.no_match.is_empty(), "fr_stem is unknown: ask");
    }

    #[test]
    fn named_nodes_are_skipped_by_their_own_summary_only() {
        let summaries = [("a1", summary_of(&["cat"], 7, 7))];
        let plan = no_match_after(&summaries, "dog", &["a1".to_owned(), "a2".to_owned()]);
        assert_eq!(plan.no_match, [Target::Node("a1".into())], "a2 has no summary: asked");
    }

    #[test]
    fn the_real_routing_query_skips_only_what_cannot_match() {
        let replicas = [replica("a1", "a", true, true, &["docs"])];
        let summaries: BTreeMap<String, NodeTermSummary> =
            [("a1".to_owned(), summary_of(&["cat"], 0, 0))].into_iter().collect();
        for (query, skipped) in [("dogs", true), ("cats", false), ("dogs OR cats", false), ("*", false)] {
            let mut plan = plan(&replicas, &[], &[]).expect("plan");
            skip_no_match(&mut plan, &summaries, &[], &QueryReadings::new(&RoutingParsers::default(), query));
            assert_eq!(!plan.no_match.is_empty(), skipped, "{query}");
        }
    }

    #[test]
    fn a_query_is_read_once_per_profile_and_unknown_analyzers_are_remembered_as_unknown() {
        let readings = QueryReadings::new(&RoutingParsers::default(), "Cats AND dogs");
        let name = Profile::default().name();
        let first = readings.get(&name).expect("the default profile is known");
        assert!(Arc::ptr_eq(&first, &readings.get(&name).expect("known")), "the second use shares the first reading");
        assert_eq!(first.routing(), &RoutingParser::new(&Profile::default()).query("Cats AND dogs"));
        let terms: Vec<(&str, &str)> =
            first.terms().into_iter().flatten().map(|t| (t.field.as_str(), t.term.as_str())).collect();
        assert_eq!(terms, [("body", "cat"), ("body", "dog"), ("title", "cat"), ("title", "dog")], "stemmed, sorted");
        assert!(readings.get("no-such-analyzer").is_none());
        assert!(readings.get("no-such-analyzer").is_none(), "asked again, still unknown");
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
