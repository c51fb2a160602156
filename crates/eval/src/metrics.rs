//! nDCG@k, MAP@k and P@k exactly as trec_eval 9 computes `ndcg_cut`, `map_cut` and `P`
//! (m_ndcg_cut.c, m_map_cut.c, m_P.c, form_res_rels.c), per query and as means.
//!
//! - Ranking: [`Run::ranked`]: score descending (at `float` precision), ties by docno descending.
//!   Documents the qrels do not judge count as non-relevant.
//! - nDCG@k: gain = the qrels grade (only grades > 0 add), discount log2(rank + 1) for 1-based
//!   rank, divided by the DCG@k of the ideal ranking made from all of the query's positive grades
//!   in the qrels (not only the retrieved ones); 0 when that ideal DCG is 0.
//! - MAP@k (AP cut at k): the sum of precision at the rank of each relevant (grade >= 1)
//!   document retrieved within the top k, divided by the total number of relevant documents in
//!   the qrels; 0 for a query with none.
//! - P@k: relevant documents in the top k divided by k, even when fewer than k were retrieved.
//! - Which queries: by default ([`Averaging::TrecEval`]) those present in both the run and the
//!   qrels. A query the qrels do not mention is skipped; a query the qrels mention only with
//!   non-relevant judgments IS evaluated (every metric 0) and counted in the mean: trec_eval has
//!   done so since 8.0 (its changelog: only "queries with no relevance information are ignored").
//!   [`Averaging::Complete`] is trec_eval `-c`: every qrels query counts, 0 when the run lacks it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::qrels::RELEVANCE_LEVEL;
use crate::{Error, Qrels, Run};

/// A metric with its cutoff k (>= 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// nDCG@k (trec_eval `ndcg_cut_k`).
    Ndcg(usize),
    /// MAP@k, average precision cut at k (trec_eval `map_cut_k`).
    Map(usize),
    /// Precision at k (trec_eval `P_k`).
    P(usize),
}

impl Metric {
    /// The cutoff k.
    pub fn cutoff(self) -> usize {
        match self {
            Metric::Ndcg(k) | Metric::Map(k) | Metric::P(k) => k,
        }
    }

    /// The name trec_eval prints for it (`ndcg_cut_10`, `map_cut_100`, `P_10`).
    pub fn trec_eval_name(self) -> String {
        match self {
            Metric::Ndcg(k) => format!("ndcg_cut_{k}"),
            Metric::Map(k) => format!("map_cut_{k}"),
            Metric::P(k) => format!("P_{k}"),
        }
    }

    /// This metric's value for one ranked list of grades (see [`ndcg_at`], [`average_precision_at`],
    /// [`precision_at`]).
    pub fn compute(self, ranked_grades: &[i32], ideal_gains: &[i32], num_relevant: usize) -> f64 {
        match self {
            Metric::Ndcg(k) => ndcg_at(ranked_grades, ideal_gains, k),
            Metric::Map(k) => average_precision_at(ranked_grades, num_relevant, k),
            Metric::P(k) => precision_at(ranked_grades, k),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Ndcg(k) => write!(f, "nDCG@{k}"),
            Metric::Map(k) => write!(f, "MAP@{k}"),
            Metric::P(k) => write!(f, "P@{k}"),
        }
    }
}

impl FromStr for Metric {
    type Err = Error;

    /// `ndcg@10`, `map@100`, `p@10` (any case) or trec_eval's `ndcg_cut_10`, `map_cut_100`, `P_10`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let lower = s.to_ascii_lowercase();
        let (name, k) = lower
            .split_once('@')
            .or_else(|| lower.rsplit_once('_'))
            .ok_or_else(|| Error::UnknownMetric(s.to_owned()))?;
        let k: usize = k.parse().map_err(|_| Error::UnknownMetric(s.to_owned()))?;
        if k == 0 {
            return Err(Error::InvalidCutoff);
        }
        match name {
            "ndcg" | "ndcg_cut" => Ok(Metric::Ndcg(k)),
            "map" | "map_cut" => Ok(Metric::Map(k)),
            "p" => Ok(Metric::P(k)),
            _ => Err(Error::UnknownMetric(s.to_owned())),
        }
    }
}

/// Which queries a mean is taken over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Averaging {
    /// trec_eval's default: queries in both the run and the qrels.
    #[default]
    TrecEval,
    /// trec_eval `-c`: every query in the qrels; one missing from the run scores 0.
    Complete,
}

/// nDCG@k of one ranked list. `ranked_grades[i]` is the qrels grade of the document at rank i + 1
/// (<= 0 for non-relevant or unjudged); `ideal_gains` are the query's positive grades, highest
/// first ([`Qrels::ideal_gains`]).
pub fn ndcg_at(ranked_grades: &[i32], ideal_gains: &[i32], k: usize) -> f64 {
    let ideal = dcg(ideal_gains.iter().copied().take(k));
    if ideal <= 0.0 {
        return 0.0;
    }
    dcg(ranked_grades.iter().copied().take(k)) / ideal
}

/// Discounted cumulative gain: grade / log2(rank + 1), only positive grades count.
fn dcg(grades: impl Iterator<Item = i32>) -> f64 {
    let mut sum = 0.0;
    for (i, grade) in grades.enumerate() {
        if grade > 0 {
            sum += f64::from(grade) / ((i + 2) as f64).log2();
        }
    }
    sum
}

/// Average precision cut at k: sum over relevant documents within the top k of (relevant so far
/// / rank), divided by `num_relevant` (all relevant documents in the qrels); 0 if there are none.
pub fn average_precision_at(ranked_grades: &[i32], num_relevant: usize, k: usize) -> f64 {
    if num_relevant == 0 {
        return 0.0;
    }
    let mut relevant_so_far = 0usize;
    let mut sum = 0.0;
    for (i, &grade) in ranked_grades.iter().take(k).enumerate() {
        if grade >= RELEVANCE_LEVEL {
            relevant_so_far += 1;
            sum += relevant_so_far as f64 / (i + 1) as f64;
        }
    }
    sum / num_relevant as f64
}

/// Precision at k: relevant documents in the top k, divided by k even when fewer were retrieved.
pub fn precision_at(ranked_grades: &[i32], k: usize) -> f64 {
    if k == 0 {
        return 0.0;
    }
    let relevant = ranked_grades.iter().take(k).filter(|&&grade| grade >= RELEVANCE_LEVEL).count();
    relevant as f64 / k as f64
}

/// Per-query values and means of some metrics for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    metrics: Vec<Metric>,
    // query -> one value per metric, in `metrics` order.
    per_query: BTreeMap<String, Vec<f64>>,
    skipped: Vec<String>,
}

impl Evaluation {
    /// The metrics evaluated, in the order asked.
    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    /// How many queries the means are over.
    pub fn num_queries(&self) -> usize {
        self.per_query.len()
    }

    /// The evaluated query ids, ascending.
    pub fn queries(&self) -> impl Iterator<Item = &str> {
        self.per_query.keys().map(String::as_str)
    }

    /// Run queries the qrels know nothing about, so they were skipped (unknown query ids).
    pub fn skipped_queries(&self) -> &[String] {
        &self.skipped
    }

    /// `metric` for `query`, if both were evaluated.
    pub fn value(&self, query: &str, metric: Metric) -> Option<f64> {
        let index = self.metrics.iter().position(|&m| m == metric)?;
        self.per_query.get(query).map(|values| values[index])
    }

    /// `metric` per evaluated query, queries ascending (empty if `metric` was not evaluated).
    pub fn values(&self, metric: Metric) -> Vec<(&str, f64)> {
        let Some(index) = self.metrics.iter().position(|&m| m == metric) else {
            return Vec::new();
        };
        self.per_query.iter().map(|(query, values)| (query.as_str(), values[index])).collect()
    }

    /// The mean of `metric` over the evaluated queries, if it was evaluated.
    pub fn mean(&self, metric: Metric) -> Option<f64> {
        let index = self.metrics.iter().position(|&m| m == metric)?;
        let sum: f64 = self.per_query.values().map(|values| values[index]).sum();
        Some(sum / self.per_query.len() as f64)
    }
}

/// Evaluate `run` against `qrels` with `metrics`. Errors: a cutoff of 0, or no query to evaluate
/// (trec_eval: "No queries with both results and relevance info").
pub fn evaluate(run: &Run, qrels: &Qrels, metrics: &[Metric], averaging: Averaging) -> Result<Evaluation, Error> {
    if metrics.iter().any(|m| m.cutoff() == 0) {
        return Err(Error::InvalidCutoff);
    }
    let depth = metrics.iter().map(|m| m.cutoff()).max().unwrap_or(0);
    let mut per_query = BTreeMap::new();
    let mut skipped = Vec::new();
    for query in run.queries() {
        if qrels.judgments(query).is_none() {
            skipped.push(query.to_owned());
        }
    }
    let queries: Vec<&str> = match averaging {
        Averaging::TrecEval => run.queries().filter(|q| qrels.judgments(q).is_some()).collect(),
        Averaging::Complete => qrels.queries().collect(),
    };
    for query in queries {
        // A grade for each of the top `depth` documents; unjudged ones are non-relevant.
        let grades: Vec<i32> =
            run.ranked(query).iter().take(depth).map(|doc| qrels.grade(query, doc.docno).unwrap_or(0)).collect();
        let ideal = qrels.ideal_gains(query);
        let num_relevant = qrels.num_relevant(query);
        let values = metrics.iter().map(|m| m.compute(&grades, &ideal, num_relevant)).collect();
        per_query.insert(query.to_owned(), values);
    }
    if per_query.is_empty() {
        return Err(Error::NoQueries);
    }
    Ok(Evaluation { metrics: metrics.to_vec(), per_query, skipped })
}
