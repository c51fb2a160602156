//! Splitting a document collection into N shards for a federated evaluation, deterministically
//! and from the documents alone (never from topics or qrels, which would leak the answers):
//!
//! - [`Strategy::RoundRobin`]: document i (input order) to shard i mod N; shards differ by at most one.
//! - [`Strategy::IdRange`]: ids sorted (byte order), N contiguous ranges as equal as possible.
//! - [`Strategy::Clustered`]: skewed by topic: a few rounds of spherical k-means (k = N) over
//!   tf-idf vectors of the documents' words, seeded, so documents about the same things land on
//!   the same shard and shard sizes are unequal. This is where per-shard statistics differ most
//!   from the collection's, the case global statistics exist for.

use std::collections::HashMap;

use crate::compare::SplitMix64;

/// The largest number of shards a split makes.
pub const MAX_SHARDS: usize = 256;
/// Rounds of k-means of [`Strategy::Clustered`].
pub const KMEANS_ROUNDS: usize = 8;
/// Seed of the clustered split's initial centroids.
pub const CLUSTER_SEED: u64 = 0x5EED_C105;
/// Words per document the clustered split looks at (the first ones), bounding its memory.
pub const MAX_WORDS_PER_DOC: usize = 4096;

/// How documents are assigned to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Document i to shard i mod N.
    RoundRobin,
    /// Sorted ids cut into N contiguous, equal ranges.
    IdRange,
    /// Spherical k-means over tf-idf vectors: shards by topic, of unequal sizes.
    Clustered,
}

impl Strategy {
    /// The name used on command lines and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::IdRange => "id-range",
            Strategy::Clustered => "clustered",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One document as a split sees it.
#[derive(Debug, Clone, Copy)]
pub struct SplitDoc<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its text (title and body); only [`Strategy::Clustered`] reads it.
    pub text: &'a str,
}

/// The shard (0..shards) of every document, in input order. `shards` is clamped to
/// 1..=[`MAX_SHARDS`]. Every shard gets at least one document when there are enough documents.
pub fn split(docs: &[SplitDoc<'_>], shards: usize, strategy: Strategy) -> Vec<usize> {
    let shards = shards.clamp(1, MAX_SHARDS);
    match strategy {
        Strategy::RoundRobin => (0..docs.len()).map(|i| i % shards).collect(),
        Strategy::IdRange => id_ranges(docs, shards),
        Strategy::Clustered => clustered(docs, shards),
    }
}

/// Documents per shard of an assignment made by [`split`].
pub fn sizes(assignment: &[usize], shards: usize) -> Vec<usize> {
    let mut sizes = vec![0; shards];
    for &shard in assignment {
        if let Some(size) = sizes.get_mut(shard) {
            *size += 1;
        }
    }
    sizes
}

fn id_ranges(docs: &[SplitDoc<'_>], shards: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..docs.len()).collect();
    // Equal ids keep input order, so the result does not depend on the sort's stability.
    order.sort_by(|&a, &b| docs[a].id.cmp(docs[b].id).then(a.cmp(&b)));
    let mut assignment = vec![0; docs.len()];
    let n = docs.len();
    for (rank, &doc) in order.iter().enumerate() {
        // Range r holds ranks [r*n/shards, (r+1)*n/shards).
        assignment[doc] = (rank * shards / n.max(1)).min(shards - 1);
    }
    assignment
}

/// A document as a unit-length sparse tf-idf vector: (term, weight), terms ascending.
type Sparse = Vec<(u32, f32)>;

/// Lowercased alphanumeric words of `text`, at most [`MAX_WORDS_PER_DOC`], single letters and
/// digits-only words left out.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 1 && !w.chars().all(|c| c.is_ascii_digit()))
        .take(MAX_WORDS_PER_DOC)
        .map(str::to_lowercase)
}

fn tfidf_vectors(docs: &[SplitDoc<'_>]) -> (Vec<Sparse>, usize) {
    let mut vocabulary: HashMap<String, u32> = HashMap::new();
    let mut counts: Vec<Vec<(u32, u32)>> = Vec::with_capacity(docs.len());
    let mut df: Vec<u32> = Vec::new();
    for doc in docs {
        let mut tf: HashMap<u32, u32> = HashMap::new();
        for word in words(doc.text) {
            let next = u32::try_from(vocabulary.len()).unwrap_or(u32::MAX);
            let term = *vocabulary.entry(word).or_insert(next);
            *tf.entry(term).or_insert(0) += 1;
        }
        let mut tf: Vec<(u32, u32)> = tf.into_iter().collect();
        tf.sort_unstable();
        for &(term, _) in &tf {
            let term = term as usize;
            if df.len() <= term {
                df.resize(term + 1, 0);
            }
            df[term] += 1;
        }
        counts.push(tf);
    }
    let n = docs.len() as f64;
    let vectors = counts
        .into_iter()
        .map(|tf| {
            // Words in one document or in every one say nothing about topics.
            let mut vector: Sparse = tf
                .into_iter()
                .filter(|&(term, _)| df[term as usize] > 1 && f64::from(df[term as usize]) < n)
                .map(|(term, count)| {
                    let idf = (n / f64::from(df[term as usize])).ln();
                    (term, ((1.0 + f64::from(count).ln()) * idf) as f32)
                })
                .collect();
            normalize(&mut vector);
            vector
        })
        .collect();
    (vectors, df.len())
}

fn normalize(vector: &mut Sparse) {
    let norm = vector.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
    if norm > 0.0 {
        for (_, w) in vector.iter_mut() {
            *w /= norm;
        }
    }
}

fn dot(vector: &Sparse, centroid: &[f32]) -> f32 {
    vector.iter().map(|&(term, w)| w * centroid[term as usize]).sum()
}

/// The most similar centroid (lowest index on ties) and the similarity.
fn nearest(vector: &Sparse, centroids: &[Vec<f32>]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (c, centroid) in centroids.iter().enumerate() {
        let similarity = dot(vector, centroid);
        if similarity > best.1 {
            best = (c, similarity);
        }
    }
    best
}

fn clustered(docs: &[SplitDoc<'_>], shards: usize) -> Vec<usize> {
    if docs.len() <= shards {
        return (0..docs.len()).collect();
    }
    let (vectors, terms) = tfidf_vectors(docs);
    let seeds = kmeans_plus_plus_seeds(&vectors, terms, shards);
    let mut centroids: Vec<Vec<f32>> = seeds
        .iter()
        .map(|&d| {
            let mut centroid = vec![0.0; terms];
            for &(term, w) in &vectors[d] {
                centroid[term as usize] = w;
            }
            centroid
        })
        .collect();
    centroids.resize(shards, vec![0.0; terms]);

    let mut assignment = vec![0; docs.len()];
    for round in 0..KMEANS_ROUNDS {
        let mut changed = false;
        for (d, vector) in vectors.iter().enumerate() {
            let (c, _) = nearest(vector, &centroids);
            changed |= assignment[d] != c;
            assignment[d] = c;
        }
        if round > 0 && !changed {
            break;
        }
        let mut sums = vec![vec![0.0f32; terms]; shards];
        for (d, vector) in vectors.iter().enumerate() {
            for &(term, w) in vector {
                sums[assignment[d]][term as usize] += w;
            }
        }
        for (c, mut sum) in sums.into_iter().enumerate() {
            let norm = sum.iter().map(|w| w * w).sum::<f32>().sqrt();
            // An empty cluster keeps its centroid.
            if norm > 0.0 {
                sum.iter_mut().for_each(|w| *w /= norm);
                centroids[c] = sum;
            }
        }
    }
    fill_empty_shards(&vectors, &centroids, &mut assignment, shards);
    assignment
}

/// k-means++ seeding (Arthur and Vassilvitskii 2007) with a fixed seed: the first seed is drawn
/// uniformly from the documents with words, each next one with probability proportional to the
/// squared distance (1 - cosine similarity) to its nearest seed so far. Spreads the seeds over
/// the topics without picking outliers on purpose the way farthest-first does.
fn kmeans_plus_plus_seeds(vectors: &[Sparse], terms: usize, shards: usize) -> Vec<usize> {
    let mut rng = SplitMix64(CLUSTER_SEED);
    let mut uniform = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let candidates: Vec<usize> = (0..vectors.len()).filter(|&d| !vectors[d].is_empty()).collect();
    let mut seeds: Vec<usize> = Vec::with_capacity(shards);
    let Some(&first) = candidates.get((uniform() * candidates.len() as f64) as usize) else { return seeds };
    seeds.push(first);
    // Squared distance of every candidate to its nearest seed.
    let mut distance = vec![f64::INFINITY; candidates.len()];
    let mut dense = vec![0.0f32; terms];
    while seeds.len() < shards {
        let last = seeds[seeds.len() - 1];
        dense.iter_mut().for_each(|w| *w = 0.0);
        for &(term, w) in &vectors[last] {
            dense[term as usize] = w;
        }
        for (i, &d) in candidates.iter().enumerate() {
            let gap = (1.0 - f64::from(dot(&vectors[d], &dense))).max(0.0);
            distance[i] = distance[i].min(gap * gap);
        }
        let total: f64 = distance.iter().sum();
        if total <= 0.0 {
            break;
        }
        let mut target = uniform() * total;
        let mut chosen = candidates.len() - 1;
        for (i, &gap) in distance.iter().enumerate() {
            if target < gap {
                chosen = i;
                break;
            }
            target -= gap;
        }
        if seeds.contains(&candidates[chosen]) {
            break;
        }
        seeds.push(candidates[chosen]);
    }
    seeds
}

/// Gives every empty shard the document that fits its own cluster worst, taken from the
/// largest shard, so no shard is left without documents.
fn fill_empty_shards(vectors: &[Sparse], centroids: &[Vec<f32>], assignment: &mut [usize], shards: usize) {
    for empty in 0..shards {
        let current = sizes(assignment, shards);
        if current[empty] > 0 {
            continue;
        }
        let Some(largest) = (0..shards).max_by_key(|&s| (current[s], std::cmp::Reverse(s))) else { return };
        if current[largest] < 2 {
            return;
        }
        let worst = (0..assignment.len()).filter(|&d| assignment[d] == largest).min_by(|&a, &b| {
            let sa = dot(&vectors[a], &centroids[largest]);
            let sb = dot(&vectors[b], &centroids[largest]);
            sa.total_cmp(&sb).then(a.cmp(&b))
        });
        if let Some(d) = worst {
            assignment[d] = empty;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs<'a>(items: &'a [(&'a str, &'a str)]) -> Vec<SplitDoc<'a>> {
        items.iter().map(|&(id, text)| SplitDoc { id, text }).collect()
    }

    #[test]
    fn round_robin_deals_in_input_order() {
        let items: Vec<(String, String)> = (0..7).map(|i| (format!("d{i}"), String::new())).collect();
        let refs: Vec<(&str, &str)> = items.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let assignment = split(&docs(&refs), 3, Strategy::RoundRobin);
        assert_eq!(assignment, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(sizes(&assignment, 3), [3, 2, 2]);
    }

    #[test]
    fn id_ranges_are_contiguous_in_sorted_id_order() {
        let refs = [("e", ""), ("a", ""), ("d", ""), ("b", ""), ("c", ""), ("f", "")];
        let assignment = split(&docs(&refs), 3, Strategy::IdRange);
        // Sorted: a b | c d | e f.
        assert_eq!(assignment, [2, 0, 1, 0, 1, 2]);
        let uneven = split(&docs(&refs[..5]), 2, Strategy::IdRange);
        // Sorted a b c d e: ranks 0-2 to shard 0 (5/2 rounds down at the cut), 3-4 to shard 1.
        assert_eq!(sizes(&uneven, 2), [3, 2]);
    }

    #[test]
    fn clustered_groups_documents_by_vocabulary_and_is_deterministic() {
        let mut items = Vec::new();
        for i in 0..12 {
            items.push((format!("ocean-{i}"), format!("whale dolphin ocean reef coral tide number{}", i % 3)));
            items.push((format!("space-{i}"), format!("rocket orbit planet comet galaxy star number{}", i % 3)));
        }
        for i in 0..4 {
            items.push((format!("cook-{i}"), format!("recipe flour oven bake bread butter number{}", i % 3)));
        }
        let refs: Vec<(&str, &str)> = items.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let input = docs(&refs);
        let assignment = split(&input, 3, Strategy::Clustered);
        assert_eq!(assignment, split(&input, 3, Strategy::Clustered), "same input, same split");
        let shard_of = |prefix: &str| -> Vec<usize> {
            input.iter().zip(&assignment).filter(|(d, _)| d.id.starts_with(prefix)).map(|(_, &s)| s).collect()
        };
        for prefix in ["ocean", "space", "cook"] {
            let shards = shard_of(prefix);
            assert!(shards.iter().all(|&s| s == shards[0]), "{prefix} documents split over shards: {shards:?}");
        }
        let (ocean, space, cook) = (shard_of("ocean")[0], shard_of("space")[0], shard_of("cook")[0]);
        assert!(ocean != space && space != cook && ocean != cook, "three topics, three shards: {assignment:?}");
        let mut counts = sizes(&assignment, 3);
        counts.sort_unstable();
        assert_eq!(counts, [4, 12, 12], "skewed sizes");
    }

    #[test]
    fn no_shard_is_left_empty_when_there_are_enough_documents() {
        // Every document alike: k-means puts them all in one cluster; the others get one each.
        let items: Vec<(String, String)> = (0..10).map(|i| (format!("d{i}"), "same words here".to_owned())).collect();
        let refs: Vec<(&str, &str)> = items.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let assignment = split(&docs(&refs), 4, Strategy::Clustered);
        assert!(sizes(&assignment, 4).iter().all(|&n| n > 0), "{assignment:?}");
        let few = split(&docs(&refs[..2]), 4, Strategy::Clustered);
        assert_eq!(few, [0, 1], "fewer documents than shards: one each");
    }

    #[test]
    fn every_strategy_assigns_every_document_to_a_valid_shard() {
        let items: Vec<(String, String)> =
            (0..50).map(|i| (format!("id{i:03}"), format!("word{} word{} common", i % 7, i % 5))).collect();
        let refs: Vec<(&str, &str)> = items.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        for strategy in [Strategy::RoundRobin, Strategy::IdRange, Strategy::Clustered] {
            let assignment = split(&docs(&refs), 4, strategy);
            assert_eq!(assignment.len(), 50, "{strategy}");
            assert!(assignment.iter().all(|&s| s < 4), "{strategy}: {assignment:?}");
            assert!(sizes(&assignment, 4).iter().all(|&n| n > 0), "{strategy}: {assignment:?}");
        }
        assert!(split(&[], 4, Strategy::Clustered).is_empty());
        assert!(split(&[], 4, Strategy::IdRange).is_empty());
    }
}
