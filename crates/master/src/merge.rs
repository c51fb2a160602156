//! Merging the hit lists of several nodes into one ranking: a pure function, property-tested.
//!
//! Today's strategy is reciprocal rank fusion: BM25 scores of different nodes are computed over
//! different term statistics, so they are not comparable, but ranks are. A hit at rank `r` on its
//! node scores `1 / (k + r)`. The same document (same collection and id) returned by several nodes
//! (replicas) is kept once, with its best score, and the other nodes listed as provenance: a replica
//! is not extra evidence of relevance, so duplicates never add up.

use std::collections::HashMap;

/// The RRF constant from Cormack et al.; dampens the advantage of the very first ranks.
pub const RRF_K: f64 = 60.0;

/// One hit as a node returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHit {
    /// Node that returned the hit.
    pub node: String,
    /// Collection of the document.
    pub collection: String,
    /// Document id.
    pub doc_id: String,
    /// The node's own score.
    pub node_score: f64,
    /// 1-based rank on the node.
    pub node_rank: u32,
    /// Opaque payload carried through the merge (title, snippet, metadata).
    pub payload: HitPayload,
}

/// Display fields of a hit, carried through the merge untouched.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HitPayload {
    /// Title.
    pub title: String,
    /// Snippet.
    pub snippet: String,
    /// Stored metadata.
    pub metadata: std::collections::HashMap<String, String>,
}

/// A merged hit.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedHit {
    /// The winning node hit.
    pub hit: NodeHit,
    /// Fused score.
    pub score: f64,
    /// Other nodes that returned the same document, sorted.
    pub also_on: Vec<String>,
}

/// Fuses per-node ranked lists with RRF, deduplicates by (collection, doc id), returns the best
/// `limit`. Input lists must each be in their node's rank order (`node_rank` is taken as given).
/// The output order is total and deterministic: score, then node score, then node, collection, id.
pub fn merge_rrf(lists: Vec<Vec<NodeHit>>, limit: usize) -> Vec<MergedHit> {
    let mut by_doc: HashMap<(String, String), MergedHit> = HashMap::new();
    for hit in lists.into_iter().flatten() {
        let score = 1.0 / (RRF_K + f64::from(hit.node_rank.max(1)));
        let key = (hit.collection.clone(), hit.doc_id.clone());
        match by_doc.get_mut(&key) {
            None => {
                by_doc.insert(key, MergedHit { hit, score, also_on: Vec::new() });
            }
            Some(existing) => {
                let candidate = MergedHit { hit, score, also_on: Vec::new() };
                if ranks_before(&candidate, existing) {
                    let loser = std::mem::replace(existing, candidate);
                    existing.also_on = loser.also_on;
                    existing.also_on.push(loser.hit.node);
                } else {
                    existing.also_on.push(candidate.hit.node);
                }
            }
        }
    }
    let mut merged: Vec<MergedHit> = by_doc.into_values().collect();
    for hit in &mut merged {
        hit.also_on.sort();
        hit.also_on.dedup();
    }
    merged.sort_by(|a, b| {
        if ranks_before(a, b) {
            std::cmp::Ordering::Less
        } else if ranks_before(b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    merged.truncate(limit);
    merged
}

/// The total order of merged hits: higher fused score, then higher node score, then by names.
fn ranks_before(a: &MergedHit, b: &MergedHit) -> bool {
    let key = |m: &MergedHit| (m.hit.node.clone(), m.hit.collection.clone(), m.hit.doc_id.clone());
    match b.score.total_cmp(&a.score) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => match b.hit.node_score.total_cmp(&a.hit.node_score) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => key(a) < key(b),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn hit(node: &str, doc: &str, rank: u32, score: f64) -> NodeHit {
        NodeHit {
            node: node.into(),
            collection: "c".into(),
            doc_id: doc.into(),
            node_score: score,
            node_rank: rank,
            payload: HitPayload::default(),
        }
    }

    /// Builds a node's list in rank order from (doc, score) pairs sorted by score.
    fn node_list(node: &str, docs: &[(String, f64)]) -> Vec<NodeHit> {
        let mut docs = docs.to_vec();
        docs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut seen = HashSet::new();
        docs.retain(|(d, _)| seen.insert(d.clone()));
        docs.iter().enumerate().map(|(i, (d, s))| hit(node, d, i as u32 + 1, *s)).collect()
    }

    #[test]
    fn interleaves_equal_ranks_of_different_nodes() {
        let merged = merge_rrf(
            vec![
                vec![hit("a", "a1", 1, 9.0), hit("a", "a2", 2, 8.0)],
                vec![hit("b", "b1", 1, 3.0), hit("b", "b2", 2, 2.0)],
            ],
            10,
        );
        let ids: Vec<&str> = merged.iter().map(|m| m.hit.doc_id.as_str()).collect();
        assert_eq!(ids, ["a1", "b1", "a2", "b2"]);
    }

    #[test]
    fn a_replicated_document_appears_once_with_provenance_and_no_boost() {
        let merged =
            merge_rrf(vec![vec![hit("a", "x", 2, 5.0), hit("a", "y", 1, 6.0)], vec![hit("b", "x", 1, 4.0)]], 10);
        assert_eq!(merged.len(), 2);
        let x = merged.iter().find(|m| m.hit.doc_id == "x").expect("x kept");
        assert_eq!(x.hit.node, "b", "the better-ranked copy wins");
        assert_eq!(x.also_on, vec!["a".to_owned()]);
        assert!((x.score - 1.0 / (RRF_K + 1.0)).abs() < 1e-12, "duplicates do not add up");
    }

    proptest! {
        #[test]
        fn merge_is_a_deduplicated_sorted_truncated_union(
            lists in proptest::collection::vec(proptest::collection::vec(("[a-f]", 0.0f64..10.0), 0..8), 0..5),
            limit in 0usize..20,
        ) {
            let input: Vec<Vec<NodeHit>> = lists.iter().enumerate()
                .map(|(i, docs)| node_list(&format!("n{i}"), docs)).collect();
            let distinct: HashSet<String> = input.iter().flatten().map(|h| h.doc_id.clone()).collect();
            let merged = merge_rrf(input.clone(), limit);

            prop_assert_eq!(merged.len(), distinct.len().min(limit));
            let ids: HashSet<&String> = merged.iter().map(|m| &m.hit.doc_id).collect();
            prop_assert_eq!(ids.len(), merged.len(), "no duplicates");
            for pair in merged.windows(2) {
                prop_assert!(pair[0].score >= pair[1].score, "sorted by fused score");
            }
            for m in &merged {
                prop_assert!(!m.also_on.contains(&m.hit.node), "provenance excludes the winner");
                let holders: HashSet<&String> = input.iter().flatten()
                    .filter(|h| h.doc_id == m.hit.doc_id).map(|h| &h.node).collect();
                prop_assert_eq!(holders.len(), m.also_on.len() + 1, "every holder is named once");
            }
        }

        #[test]
        fn merge_does_not_depend_on_the_order_of_node_lists(
            lists in proptest::collection::vec(proptest::collection::vec(("[a-f]", 0.0f64..10.0), 0..8), 0..5),
        ) {
            let input: Vec<Vec<NodeHit>> = lists.iter().enumerate()
                .map(|(i, docs)| node_list(&format!("n{i}"), docs)).collect();
            let mut reversed = input.clone();
            reversed.reverse();
            prop_assert_eq!(merge_rrf(input, 100), merge_rrf(reversed, 100));
        }
    }
}
