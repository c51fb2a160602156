//! Comparing two systems: per-query differences of a metric, the ratio of means, a two-sided
//! paired randomization test, and how many queries get identical top-k lists.
//!
//! Why a randomization (sign-flip permutation) test rather than a paired t-test: per-query
//! differences of nDCG or AP are bounded, skewed and often exactly 0 (identical lists), far from
//! the normal distribution the t-test assumes on small topic sets; the randomization test assumes
//! only that, under the null hypothesis, the two systems' labels are exchangeable per query. It
//! is the test Smucker, Allan and Carterette (CIKM 2007) recommend for IR evaluation, and needs no
//! t-distribution code. It is reproducible: a fixed seed drives an in-crate SplitMix64, so the
//! same inputs give the same p-value on every machine and with every `rand` version.

use std::collections::HashSet;

use crate::{Error, Evaluation, Metric, Run};

/// Parameters of the paired randomization test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomizationTest {
    /// Random sign assignments to draw. With n queries and 2^n <= rounds every assignment is
    /// enumerated instead (an exact p-value).
    pub rounds: u32,
    /// Seed of the generator.
    pub seed: u64,
}

impl Default for RandomizationTest {
    /// 100,000 rounds (p-values resolve down to 1e-5, enough to report p < 0.001) and a fixed seed.
    fn default() -> Self {
        Self { rounds: 100_000, seed: 0x5EED_0010 }
    }
}

impl RandomizationTest {
    /// The two-sided p-value for "the mean of `differences` is 0": the fraction of sign
    /// assignments whose mean is at least as far from 0 as the observed one. Monte Carlo uses
    /// (hits + 1) / (rounds + 1) so the estimate is never 0. 1.0 for no or all-zero differences.
    pub fn p_value(&self, differences: &[f64]) -> f64 {
        let n = differences.len();
        let observed: f64 = differences.iter().sum::<f64>().abs();
        let scale: f64 = differences.iter().map(|d| d.abs()).sum();
        if n == 0 || scale == 0.0 {
            return 1.0;
        }
        // Sums of the same numbers in another order can differ in the last bits; a flip that
        // reproduces the observed sum must count as "as extreme".
        let threshold = observed - scale * 1e-12;
        let signed_sum = |signs: u64, chunk: &[f64]| -> f64 {
            let mut sum = 0.0;
            for (i, d) in chunk.iter().enumerate() {
                sum += if signs >> i & 1 == 1 { -d } else { *d };
            }
            sum
        };
        if n < 64 && (1u64 << n) <= u64::from(self.rounds) {
            let total = 1u64 << n;
            let hits = (0..total).filter(|&signs| signed_sum(signs, differences).abs() >= threshold).count();
            return hits as f64 / total as f64;
        }
        let mut rng = SplitMix64(self.seed);
        let mut hits = 0u64;
        for _ in 0..self.rounds {
            let mut sum = 0.0;
            for chunk in differences.chunks(64) {
                sum += signed_sum(rng.next_u64(), chunk);
            }
            if sum.abs() >= threshold {
                hits += 1;
            }
        }
        (hits + 1) as f64 / (f64::from(self.rounds) + 1.0)
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, statistically fine for sign flips.
#[derive(Debug)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One query's value of the compared metric in both evaluations.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryDifference {
    /// The query id.
    pub query: String,
    /// Its value in the baseline (a).
    pub a: f64,
    /// Its value in the candidate (b).
    pub b: f64,
}

impl QueryDifference {
    /// b - a: positive when the candidate is better on this query.
    pub fn difference(&self) -> f64 {
        self.b - self.a
    }
}

/// A metric compared between a baseline (a) and a candidate (b) over the queries both evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The compared metric.
    pub metric: Metric,
    /// Per-query values, queries ascending.
    pub queries: Vec<QueryDifference>,
    /// The baseline's mean over the paired queries.
    pub mean_a: f64,
    /// The candidate's mean over the paired queries.
    pub mean_b: f64,
    /// mean_b / mean_a, `None` when mean_a is 0.
    pub ratio: Option<f64>,
    /// Two-sided paired randomization test p-value for "no difference".
    pub p_value: f64,
    /// Queries only the baseline evaluated (not paired, not in the means above).
    pub only_in_a: usize,
    /// Queries only the candidate evaluated.
    pub only_in_b: usize,
}

/// Compare `metric` between `a` (baseline) and `b` (candidate) on the queries both evaluated.
/// Evaluate both with [`crate::Averaging::Complete`] to pair every judged query.
pub fn compare(a: &Evaluation, b: &Evaluation, metric: Metric, test: &RandomizationTest) -> Result<Comparison, Error> {
    if !a.metrics().contains(&metric) || !b.metrics().contains(&metric) {
        return Err(Error::Incomparable(format!("{metric} was not evaluated for both runs")));
    }
    let b_queries: HashSet<&str> = b.queries().collect();
    let mut queries = Vec::new();
    for (query, value_a) in a.values(metric) {
        if let Some(value_b) = b.value(query, metric) {
            queries.push(QueryDifference { query: query.to_owned(), a: value_a, b: value_b });
        }
    }
    if queries.is_empty() {
        return Err(Error::Incomparable("the two evaluations have no query in common".to_owned()));
    }
    let n = queries.len() as f64;
    let mean_a = queries.iter().map(|q| q.a).sum::<f64>() / n;
    let mean_b = queries.iter().map(|q| q.b).sum::<f64>() / n;
    let differences: Vec<f64> = queries.iter().map(QueryDifference::difference).collect();
    Ok(Comparison {
        metric,
        mean_a,
        mean_b,
        ratio: (mean_a != 0.0).then(|| mean_b / mean_a),
        p_value: test.p_value(&differences),
        only_in_a: a.num_queries() - queries.len(),
        only_in_b: b_queries.len() - queries.len(),
        queries,
    })
}

/// How often two runs agree on the top k.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopKAgreement {
    /// The k compared.
    pub k: usize,
    /// Queries compared.
    pub compared: usize,
    /// Queries whose top-k lists are identical, in order (trec_eval's order, so equal scores are
    /// ordered the same way in both runs).
    pub identical: usize,
    /// Queries whose top-k lists hold the same documents, in any order (ties ordered differently,
    /// or scores that moved without changing the set).
    pub same_set: usize,
    /// Queries whose top-k lists are not identical, ascending.
    pub differing: Vec<String>,
}

impl TopKAgreement {
    /// identical / compared (1.0 when nothing was compared).
    pub fn identical_fraction(&self) -> f64 {
        if self.compared == 0 { 1.0 } else { self.identical as f64 / self.compared as f64 }
    }
}

/// Compare the top-k lists of `a` and `b` for each of `queries` (a query missing from a run has
/// an empty list there; two empty lists are identical). Pass the topic ids to compare the whole
/// topic set, or `a.queries()` for the baseline's queries.
pub fn top_k_agreement<'q>(a: &Run, b: &Run, k: usize, queries: impl IntoIterator<Item = &'q str>) -> TopKAgreement {
    let mut agreement = TopKAgreement { k, compared: 0, identical: 0, same_set: 0, differing: Vec::new() };
    let mut seen = HashSet::new();
    for query in queries {
        if !seen.insert(query) {
            continue;
        }
        agreement.compared += 1;
        let top_a: Vec<&str> = a.ranked(query).iter().take(k).map(|d| d.docno).collect();
        let top_b: Vec<&str> = b.ranked(query).iter().take(k).map(|d| d.docno).collect();
        if top_a == top_b {
            agreement.identical += 1;
            agreement.same_set += 1;
            continue;
        }
        let set_a: HashSet<&str> = top_a.iter().copied().collect();
        if top_a.len() == top_b.len() && top_b.iter().all(|d| set_a.contains(d)) {
            agreement.same_set += 1;
        }
        agreement.differing.push(query.to_owned());
    }
    agreement.differing.sort();
    agreement
}
