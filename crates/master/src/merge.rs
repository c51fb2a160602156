//! Merging the hit lists of several nodes into one ranking: pure functions, property-tested.
//!
//! Three strategies ([`Strategy`]):
//! - **global BM25** ([`merge_by_score`]): every node scored with the same collection-wide
//!   statistics (the sum of every asked node's, [`sum_statistics`]), so node scores are the
//!   scores one index holding every document would give, and the merge orders by them.
//! - **reciprocal rank fusion** ([`merge_rrf`]): when nodes scored with their own statistics,
//!   their scores are not comparable, but ranks are. A hit at rank `r` on its node scores
//!   `1 / (k + r)`.
//! - **raw** ([`merge_by_score`] over node-local scores): what a naive federation does, for
//!   comparison only: a term rare on one node and common on another scores differently on each,
//!   so the order favours whichever node's statistics flatter it.
//!
//! Either way the same document (same collection and id) returned by several nodes (replicas) is
//! kept once, with its best score, and the other nodes listed as provenance: a replica is not
//! extra evidence of relevance, so duplicates never add up.

use std::collections::{BTreeMap, HashMap};

use ragmesh_proto::v1;

/// How node hits are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Statistics phase, then ordering by the comparable scores.
    GlobalBm25,
    /// Reciprocal rank fusion of each node's own ranking.
    Rrf,
    /// Node-local scores sorted as they are (not comparable across nodes: for comparison).
    Raw,
}

impl Strategy {
    /// The strategy a request names (`""` is the default, global BM25).
    pub fn parse(text: &str) -> Result<Strategy, String> {
        match text.trim() {
            "" | "global_bm25" => Ok(Strategy::GlobalBm25),
            "rrf" => Ok(Strategy::Rrf),
            "raw" => Ok(Strategy::Raw),
            other => Err(format!("merge {other:?} is not a merge strategy: use global_bm25 (the default), rrf or raw")),
        }
    }

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::GlobalBm25 => "global_bm25",
            Strategy::Rrf => "rrf",
            Strategy::Raw => "raw",
        }
    }
}

/// The statistics of one index holding every document of `all`: document and token counts and
/// document frequencies summed (saturating), fields and terms in name order.
pub fn sum_statistics<'a>(all: impl IntoIterator<Item = &'a v1::TermStatistics>) -> v1::TermStatistics {
    let mut total_docs = 0u64;
    let mut fields: BTreeMap<&str, u64> = BTreeMap::new();
    let mut terms: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for stats in all {
        total_docs = total_docs.saturating_add(stats.total_docs);
        for field in &stats.fields {
            let sum = fields.entry(field.field.as_str()).or_default();
            *sum = sum.saturating_add(field.total_tokens);
        }
        for term in &stats.terms {
            let sum = terms.entry((term.field.as_str(), term.term.as_str())).or_default();
            *sum = sum.saturating_add(term.doc_freq);
        }
    }
    v1::TermStatistics {
        total_docs,
        fields: fields
            .into_iter()
            .map(|(field, total_tokens)| v1::FieldTokens { field: field.to_owned(), total_tokens })
            .collect(),
        terms: terms
            .into_iter()
            .map(|((field, term), doc_freq)| v1::TermFrequency {
                field: field.to_owned(),
                term: term.to_owned(),
                doc_freq,
            })
            .collect(),
    }
}

/// Merges per-node lists scored with the same statistics: ordered by node score, deduplicated
/// by (collection, doc id), the best `limit`.
pub fn merge_by_score(lists: Vec<Vec<NodeHit>>, limit: usize) -> Vec<MergedHit> {
    merge_with(lists, limit, |hit| hit.node_score)
}

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
    merge_with(lists, limit, |hit| 1.0 / (RRF_K + f64::from(hit.node_rank.max(1))))
}

/// Scores every hit with `score`, deduplicates, orders totally and keeps the best `limit`.
fn merge_with(lists: Vec<Vec<NodeHit>>, limit: usize, score: impl Fn(&NodeHit) -> f64) -> Vec<MergedHit> {
    let mut by_doc: HashMap<(String, String), MergedHit> = HashMap::new();
    for hit in lists.into_iter().flatten() {
        let score = score(&hit);
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

    fn stats(docs: u64, fields: &[(&str, u64)], terms: &[(&str, &str, u64)]) -> v1::TermStatistics {
        v1::TermStatistics {
            total_docs: docs,
            fields: fields.iter().map(|(f, t)| v1::FieldTokens { field: (*f).into(), total_tokens: *t }).collect(),
            terms: terms
                .iter()
                .map(|(f, t, d)| v1::TermFrequency { field: (*f).into(), term: (*t).into(), doc_freq: *d })
                .collect(),
        }
    }

    #[test]
    fn statistics_sum_per_field_and_term_and_saturate() {
        let a = stats(10, &[("body", 100), ("title", 20)], &[("body", "mesh", 3), ("title", "mesh", 1)]);
        let b = stats(5, &[("body", 40)], &[("body", "mesh", 2), ("body", "shard", 1)]);
        let sum = sum_statistics([&a, &b]);
        assert_eq!(
            sum,
            stats(
                15,
                &[("body", 140), ("title", 20)],
                &[("body", "mesh", 5), ("body", "shard", 1), ("title", "mesh", 1)]
            )
        );
        assert_eq!(sum_statistics([&b, &a]), sum, "order does not matter");
        assert_eq!(sum_statistics([&a]), sum_statistics([&a, &stats(0, &[], &[])]), "an empty node adds nothing");
        let huge = stats(u64::MAX, &[], &[]);
        assert_eq!(sum_statistics([&huge, &a]).total_docs, u64::MAX);
    }

    #[test]
    fn strategies_parse_with_global_bm25_as_the_default() {
        use super::Strategy as Merge;
        assert_eq!(Merge::parse(""), Ok(Merge::GlobalBm25));
        assert_eq!(Merge::parse("global_bm25"), Ok(Merge::GlobalBm25));
        assert_eq!(Merge::parse(" rrf "), Ok(Merge::Rrf));
        assert_eq!(Merge::parse("raw"), Ok(Merge::Raw));
        assert!(Merge::parse("bm25").expect_err("unknown").contains("global_bm25"));
        assert_eq!(Merge::GlobalBm25.as_str(), "global_bm25");
    }

    proptest! {
        #[test]
        fn a_score_merge_orders_by_score_and_keeps_each_document_once(
            lists in proptest::collection::vec(
                proptest::collection::vec((0u8..12, 0u32..1000), 0..8),
                0..4,
            ),
            limit in 0usize..20,
        ) {
            let lists: Vec<Vec<NodeHit>> = lists
                .iter()
                .enumerate()
                .map(|(n, list)| {
                    list.iter()
                        .enumerate()
                        .map(|(r, (doc, score))| hit(&format!("n{n}"), &format!("d{doc}"), r as u32 + 1, f64::from(*score) / 10.0))
                        .collect()
                })
                .collect();
            let best: std::collections::HashMap<String, f64> = lists.iter().flatten().fold(Default::default(), |mut best, h| {
                let entry = best.entry(h.doc_id.clone()).or_insert(f64::MIN);
                *entry = entry.max(h.node_score);
                best
            });
            let merged = merge_by_score(lists, limit);
            prop_assert_eq!(merged.len(), best.len().min(limit));
            prop_assert!(merged.windows(2).all(|w| w[0].score >= w[1].score));
            let ids: HashSet<&str> = merged.iter().map(|m| m.hit.doc_id.as_str()).collect();
            prop_assert_eq!(ids.len(), merged.len(), "each document once");
            for m in &merged {
                prop_assert_eq!(m.score, best[&m.hit.doc_id], "a document keeps its best score");
            }
        }
    }
}
