//! `Stats`: documents per collection per node and per shard group, mesh totals, index sizes
//! and generations, from what the nodes last reported (heartbeats and acknowledged writes). A
//! pure function of the registry's views.
//!
//! A shard group's documents are counted once, from the replica that applied the most of the
//! group's write log (the freshest copy; ties go to the first by name), so replicas never
//! double the totals; index bytes are summed over every node, since each replica holds a copy.

use std::collections::BTreeMap;

use ragmesh_proto::v1;

use crate::convert;
use crate::registry::NodeView;

/// The `Stats` answer for `views`, nodes and groups in name order.
pub fn build(mut views: Vec<NodeView>) -> v1::StatsResponse {
    views.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    let nodes: Vec<v1::NodeStats> = views
        .iter()
        .map(|view| v1::NodeStats {
            name: view.record.name.clone(),
            shard: view.record.group().to_owned(),
            state: convert::node_state(view.state).into(),
            generation: view.record.generation,
            applied_seq: view.applied_seq,
            index_bytes: view.index_bytes,
            collections: counts(&view.record.collections),
            docs: view.record.collections.values().sum(),
        })
        .collect();

    let mut by_group: BTreeMap<&str, Vec<&NodeView>> = BTreeMap::new();
    for view in &views {
        by_group.entry(view.record.group()).or_default().push(view);
    }
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut groups = Vec::with_capacity(by_group.len());
    for (group, replicas) in by_group {
        // The freshest copy; `max_by_key` keeps the last of equals, so iterate in reverse name order.
        let Some(counted) = replicas.iter().rev().max_by_key(|view| view.applied_seq) else { continue };
        for (collection, count) in &counted.record.collections {
            *totals.entry(collection.clone()).or_default() += count;
        }
        groups.push(v1::GroupStats {
            shard: group.to_owned(),
            replicas: replicas.iter().map(|view| view.record.name.clone()).collect(),
            counted_from: counted.record.name.clone(),
            collections: counts(&counted.record.collections),
            docs: counted.record.collections.values().sum(),
        });
    }
    v1::StatsResponse {
        total_docs: totals.values().sum(),
        collections: counts(&totals),
        total_index_bytes: nodes.iter().map(|node| node.index_bytes).sum(),
        nodes,
        groups,
    }
}

fn counts(collections: &BTreeMap<String, u64>) -> Vec<v1::CollectionStats> {
    collections
        .iter()
        .map(|(name, doc_count)| v1::CollectionStats { name: name.clone(), doc_count: *doc_count })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeState;

    fn view(name: &str, shard: &str, applied: u64, bytes: u64, collections: &[(&str, u64)]) -> NodeView {
        let mut view = NodeView::for_tests(name, NodeState::Up, &[]);
        std::sync::Arc::make_mut(&mut view.record).shard = shard.to_owned();
        std::sync::Arc::make_mut(&mut view.record).collections =
            collections.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect();
        view.applied_seq = applied;
        view.index_bytes = bytes;
        view
    }

    #[test]
    fn a_group_counts_once_from_its_freshest_replica_and_bytes_add_up_over_every_node() {
        let stats = build(vec![
            view("b-2", "b", 7, 300, &[("docs", 9), ("faq", 1)]),
            view("a-1", "a", 3, 100, &[("docs", 4)]),
            view("b-1", "b", 6, 310, &[("docs", 8), ("faq", 1)]),
            view("c-1", "", 0, 50, &[]),
        ]);
        let names: Vec<&str> = stats.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a-1", "b-1", "b-2", "c-1"]);
        assert_eq!(stats.nodes[1].docs, 9);
        let groups: Vec<(&str, &str, u64)> =
            stats.groups.iter().map(|g| (g.shard.as_str(), g.counted_from.as_str(), g.docs)).collect();
        assert_eq!(groups, [("a", "a-1", 4), ("b", "b-2", 10), ("c-1", "c-1", 0)]);
        assert_eq!(stats.groups[1].replicas, ["b-1", "b-2"]);
        let totals: Vec<(&str, u64)> = stats.collections.iter().map(|c| (c.name.as_str(), c.doc_count)).collect();
        assert_eq!(totals, [("docs", 13), ("faq", 1)], "replicas are not counted twice");
        assert_eq!(stats.total_docs, 14);
        assert_eq!(stats.total_index_bytes, 760);
    }

    #[test]
    fn equally_fresh_replicas_count_from_the_first_by_name() {
        let stats = build(vec![view("r-2", "g", 5, 0, &[("docs", 2)]), view("r-1", "g", 5, 0, &[("docs", 3)])]);
        assert_eq!(stats.groups[0].counted_from, "r-1");
        assert_eq!(stats.total_docs, 3);
        assert!(build(Vec::new()).groups.is_empty());
    }
}
