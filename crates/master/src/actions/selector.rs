//! Which nodes an action runs on: the pure resolution of a [`Selector`] (names, labels, shard
//! groups, all) over the registry's nodes, with the errors a caller can act on.
//!
//! The criteria add up (a node is selected when any criterion picks it); named nodes and shard
//! groups must exist (NOT_FOUND, listing the known ones); a selection that picks nothing is
//! refused (INVALID_ARGUMENT): running an action "nowhere" is never an answer.

use std::collections::{BTreeMap, BTreeSet};

use ragmesh_proto::v1;

/// A node as the selector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Node name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its shard group.
    pub group: String,
}

/// Which nodes to select; the domain form of `NodeSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Nodes by name.
    pub nodes: Vec<String>,
    /// Every node.
    pub all: bool,
    /// Nodes carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
    /// Every replica of these shard groups.
    pub shards: Vec<String>,
}

impl From<v1::NodeSelector> for Selector {
    fn from(wire: v1::NodeSelector) -> Self {
        Selector { nodes: wire.nodes, all: wire.all, labels: wire.labels.into_iter().collect(), shards: wire.shards }
    }
}

impl Selector {
    /// Whether no criterion is given.
    pub fn is_empty(&self) -> bool {
        !self.all && self.nodes.is_empty() && self.labels.is_empty() && self.shards.is_empty()
    }

    /// A stable, canonical rendering (sorted, deduplicated), for display, job records and the
    /// idempotency digest: two selectors that select alike by their criteria render alike.
    pub fn canonical(&self) -> String {
        let mut parts = Vec::new();
        if self.all {
            parts.push("all".to_owned());
        }
        let nodes: BTreeSet<&String> = self.nodes.iter().collect();
        for node in nodes {
            parts.push(format!("node={node}"));
        }
        for (key, value) in &self.labels {
            parts.push(format!("label:{key}={value}"));
        }
        let shards: BTreeSet<&String> = self.shards.iter().collect();
        for shard in shards {
            parts.push(format!("shard={shard}"));
        }
        parts.join(",")
    }
}

/// Why a selector selects nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// Named nodes are not known.
    #[error("unknown node(s) {unknown:?}: known nodes are {known:?} (see `ragmeshctl nodes`)")]
    UnknownNodes {
        /// Names not found.
        unknown: Vec<String>,
        /// Known names.
        known: Vec<String>,
    },
    /// Named shard groups are not known.
    #[error("unknown shard group(s) {unknown:?}: known groups are {known:?} (see `ragmeshctl nodes`)")]
    UnknownShards {
        /// Groups not found.
        unknown: Vec<String>,
        /// Known groups.
        known: Vec<String>,
    },
    /// No criterion was given.
    #[error("no nodes selected: name nodes (--node), labels (--label k=v), shard groups (--shard) or --all")]
    NoCriteria,
    /// The criteria match no node.
    #[error("the selector {selector} matches no node: see `ragmeshctl nodes` for names, labels and shard groups")]
    Empty {
        /// The selector, rendered.
        selector: String,
    },
}

/// The nodes `selector` picks among `candidates`, in the candidates' order, each once.
pub fn select(selector: &Selector, candidates: &[Candidate]) -> Result<Vec<String>, SelectError> {
    if selector.is_empty() {
        return Err(SelectError::NoCriteria);
    }
    let known: BTreeSet<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
    let unknown: Vec<String> = selector.nodes.iter().filter(|n| !known.contains(n.as_str())).cloned().collect();
    if !unknown.is_empty() {
        return Err(SelectError::UnknownNodes { unknown, known: known.into_iter().map(str::to_owned).collect() });
    }
    let groups: BTreeSet<&str> = candidates.iter().map(|c| c.group.as_str()).collect();
    let unknown: Vec<String> = selector.shards.iter().filter(|s| !groups.contains(s.as_str())).cloned().collect();
    if !unknown.is_empty() {
        return Err(SelectError::UnknownShards { unknown, known: groups.into_iter().map(str::to_owned).collect() });
    }
    let mut selected = Vec::new();
    for candidate in candidates {
        let named = selector.nodes.contains(&candidate.name);
        let labelled = !selector.labels.is_empty()
            && selector.labels.iter().all(|(key, value)| candidate.labels.get(key) == Some(value));
        let in_group = selector.shards.contains(&candidate.group);
        if (selector.all || named || labelled || in_group) && !selected.contains(&candidate.name) {
            selected.push(candidate.name.clone());
        }
    }
    if selected.is_empty() {
        return Err(SelectError::Empty { selector: selector.canonical() });
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn node(name: &str, group: &str, labels: &[(&str, &str)]) -> Candidate {
        Candidate {
            name: name.into(),
            group: group.into(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    fn mesh() -> Vec<Candidate> {
        vec![
            node("a", "g1", &[("zone", "eu"), ("tier", "hot")]),
            node("b", "g1", &[("zone", "us"), ("tier", "hot")]),
            node("c", "g2", &[("zone", "eu")]),
        ]
    }

    #[test]
    fn names_must_exist_and_the_error_lists_the_known_ones() {
        let selector = Selector { nodes: vec!["a".into(), "zz".into()], ..Default::default() };
        let err = select(&selector, &mesh()).expect_err("refused");
        assert_eq!(
            err,
            SelectError::UnknownNodes { unknown: vec!["zz".into()], known: vec!["a".into(), "b".into(), "c".into()] }
        );
        assert!(err.to_string().contains("known nodes are"));
    }

    #[test]
    fn labels_select_nodes_carrying_every_label() {
        let selector = Selector {
            labels: [("zone".to_owned(), "eu".to_owned()), ("tier".to_owned(), "hot".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(select(&selector, &mesh()).expect("selects"), ["a"]);
    }

    #[test]
    fn shards_select_every_replica_and_unknown_shards_are_not_found() {
        let selector = Selector { shards: vec!["g1".into()], ..Default::default() };
        assert_eq!(select(&selector, &mesh()).expect("selects"), ["a", "b"]);
        let selector = Selector { shards: vec!["g9".into()], ..Default::default() };
        assert!(matches!(select(&selector, &mesh()), Err(SelectError::UnknownShards { .. })));
    }

    #[test]
    fn all_selects_every_node_and_criteria_add_up_without_duplicates() {
        let all = Selector { all: true, nodes: vec!["b".into()], ..Default::default() };
        assert_eq!(select(&all, &mesh()).expect("selects"), ["a", "b", "c"]);
        let mixed = Selector { nodes: vec!["c".into(), "c".into()], shards: vec!["g1".into()], ..Default::default() };
        assert_eq!(select(&mixed, &mesh()).expect("selects"), ["a", "b", "c"]);
    }

    #[test]
    fn an_empty_selection_is_refused() {
        assert_eq!(select(&Selector::default(), &mesh()), Err(SelectError::NoCriteria));
        let nobody = Selector { labels: [("zone".to_owned(), "mars".to_owned())].into(), ..Default::default() };
        assert!(matches!(select(&nobody, &mesh()), Err(SelectError::Empty { .. })));
        assert_eq!(
            select(&Selector { all: true, ..Default::default() }, &[]),
            Err(SelectError::Empty { selector: "all".into() })
        );
    }

    #[test]
    fn the_canonical_form_ignores_order_and_repeats() {
        let one = Selector { nodes: vec!["b".into(), "a".into(), "a".into()], ..Default::default() };
        let two = Selector { nodes: vec!["a".into(), "b".into()], ..Default::default() };
        assert_eq!(one.canonical(), two.canonical());
        assert_eq!(one.canonical(), "node=a,node=b");
    }

    proptest! {
        /// Whatever the selector, a selection is a duplicate-free subset of the candidates in
        /// their order, and it contains every node named.
        #[test]
        fn a_selection_is_an_ordered_subset_holding_every_named_node(
            picks in proptest::collection::vec(0usize..3, 0..4),
            all in any::<bool>(),
            shard in proptest::option::of(0usize..2),
            zone in proptest::option::of(prop_oneof![Just("eu"), Just("us"), Just("mars")]),
        ) {
            let candidates = mesh();
            let selector = Selector {
                nodes: picks.iter().map(|i| candidates[*i].name.clone()).collect(),
                all,
                labels: zone.map(|z| [("zone".to_owned(), z.to_owned())].into()).unwrap_or_default(),
                shards: shard.map(|s| vec![format!("g{}", s + 1)]).unwrap_or_default(),
            };
            match select(&selector, &candidates) {
                Ok(selected) => {
                    let positions: Vec<usize> = selected
                        .iter()
                        .map(|n| candidates.iter().position(|c| &c.name == n).expect("a candidate"))
                        .collect();
                    prop_assert!(positions.windows(2).all(|w| w[0] < w[1]));
                    for named in &selector.nodes {
                        prop_assert!(selected.contains(named));
                    }
                    if all {
                        prop_assert_eq!(selected.len(), candidates.len());
                    }
                }
                Err(SelectError::NoCriteria) => prop_assert!(selector.is_empty()),
                Err(SelectError::Empty { .. }) => prop_assert!(selector.nodes.is_empty() && !all),
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
        }
    }
}
