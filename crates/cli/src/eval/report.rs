//! The pure part of `ragmeshctl eval`: from the runs searched (one index, then each merge
//! strategy over the shards) and what every search reported, the table and JSON it prints:
//! nDCG@10, MAP@100 and P@10 as trec_eval computes them (ragmesh-eval), each one's ratio to one
//! index, identical top-10 lists (ties aside: trec_eval's order), the paired randomization test
//! against one index, p50 latency and node calls made and saved.

use ragmesh_eval::{Averaging, Metric, Qrels, RandomizationTest, Run, compare, evaluate, top_k_agreement};
use ragmesh_proto::v1;
use serde_json::{Value, json};

use crate::render::{Column, Table};

/// The metrics of the report, in column order.
pub const METRICS: [Metric; 3] = [Metric::Ndcg(10), Metric::Map(100), Metric::P(10)];
/// The depth at which top lists are compared.
pub const TOP_K: usize = 10;

/// Everything one system's searches gave: the run and what each response reported.
#[derive(Debug)]
pub struct Searched {
    /// Row label: `one index`, `global_bm25`, `rrf`, `raw`.
    pub name: String,
    /// The merge strategy sent.
    pub merge: String,
    /// The ranked hits per topic (every topic present, possibly empty).
    pub run: Run,
    /// The master's `took_ms` of every search.
    pub took_ms: Vec<u32>,
    /// Calls made to nodes (attempts, every group of every search).
    pub calls: u64,
    /// Groups skipped because their term summary proved no match: calls saved.
    pub saved: u64,
    /// Searches where some group neither answered nor was skipped as no-match.
    pub incomplete: u64,
}

impl Searched {
    /// An empty record for `name`, searched with `merge`.
    pub fn new(name: &str, merge: &str) -> anyhow::Result<Self> {
        let tag = name.replace(' ', "-");
        Ok(Searched {
            name: name.to_owned(),
            merge: merge.to_owned(),
            run: Run::new(&tag)?,
            took_ms: Vec::new(),
            calls: 0,
            saved: 0,
            incomplete: 0,
        })
    }

    /// Records the answer to topic `query`.
    pub fn record(&mut self, query: &str, response: &v1::SearchResponse) -> anyhow::Result<()> {
        self.run.push_empty(query)?;
        for hit in &response.hits {
            self.run.push(query, &hit.doc_id, hit.score)?;
        }
        self.took_ms.push(response.took_ms);
        let (calls, saved, complete) = calls_of(response);
        self.calls += calls;
        self.saved += saved;
        if !complete {
            self.incomplete += 1;
        }
        Ok(())
    }
}

/// Calls made, calls saved (groups SKIPPED for NO_MATCH), and whether every group either
/// answered or was skipped as no-match.
pub fn calls_of(response: &v1::SearchResponse) -> (u64, u64, bool) {
    let mut calls = 0;
    let mut saved = 0;
    let mut complete = true;
    for group in &response.groups {
        calls += group.attempts.len() as u64;
        let ok = group.status == v1::OutcomeStatus::Ok as i32;
        let no_match =
            group.status == v1::OutcomeStatus::Skipped as i32 && group.skip_reason == v1::SkipReason::NoMatch as i32;
        if no_match {
            saved += 1;
        }
        complete &= ok || no_match;
    }
    (calls, saved, complete)
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Row label.
    pub name: String,
    /// Merge strategy sent.
    pub merge: String,
    /// Mean of each of [`METRICS`].
    pub means: [f64; 3],
    /// Each mean over one index's (`None` when one index's is 0).
    pub ratios: [Option<f64>; 3],
    /// Paired randomization test p-value against one index, per metric (`None` for one index).
    pub p_values: [Option<f64>; 3],
    /// Topics whose top-10 is identical to one index's.
    pub identical: usize,
    /// Topics compared.
    pub compared: usize,
    /// Median `took_ms`.
    pub p50_ms: u32,
    /// Node calls made.
    pub calls: u64,
    /// Node calls saved (no-match skips).
    pub saved: u64,
    /// Searches that lacked a group's answer.
    pub incomplete: u64,
}

/// What the collection and split were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// Documents loaded.
    pub documents: usize,
    /// Topics searched.
    pub topics: usize,
    /// Topics with judgments that the metrics average over.
    pub judged: usize,
    /// Split strategy.
    pub split: String,
    /// Collection searched.
    pub collection: String,
    /// Hits per search.
    pub limit: u32,
    /// The baseline node (one index) and its documents.
    pub baseline: (String, usize),
    /// Every shard node and its documents.
    pub shards: Vec<(String, usize)>,
    /// What makes the nodes differ from the documents loaded (see `eval::foreign_documents`).
    pub warnings: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// What was evaluated.
    pub setup: Setup,
    /// One index first, then each strategy.
    pub rows: Vec<Row>,
}

/// The median (lower middle for an even count); 0 for none.
pub fn p50(values: &[u32]) -> u32 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

/// Evaluates `base` (one index) and every one of `others` against `qrels` on `topics`.
pub fn build(
    setup: Setup,
    base: &Searched,
    others: &[Searched],
    qrels: &Qrels,
    topics: &[String],
) -> anyhow::Result<Report> {
    let base_eval = evaluate(&base.run, qrels, &METRICS, Averaging::TrecEval)?;
    let test = RandomizationTest::default();
    let mut rows = Vec::with_capacity(others.len() + 1);
    for (i, searched) in std::iter::once(base).chain(others).enumerate() {
        let eval = evaluate(&searched.run, qrels, &METRICS, Averaging::TrecEval)?;
        let mut means = [0.0; 3];
        let mut ratios = [None; 3];
        let mut p_values = [None; 3];
        for (m, metric) in METRICS.iter().enumerate() {
            let comparison = compare(&base_eval, &eval, *metric, &test)?;
            means[m] = comparison.mean_b;
            ratios[m] = comparison.ratio;
            p_values[m] = (i > 0).then_some(comparison.p_value);
        }
        let agreement = top_k_agreement(&base.run, &searched.run, TOP_K, topics.iter().map(String::as_str));
        rows.push(Row {
            name: searched.name.clone(),
            merge: searched.merge.clone(),
            means,
            ratios,
            p_values,
            identical: agreement.identical,
            compared: agreement.compared,
            p50_ms: p50(&searched.took_ms),
            calls: searched.calls,
            saved: searched.saved,
            incomplete: searched.incomplete,
        });
    }
    let setup = Setup { judged: base_eval.num_queries(), ..setup };
    Ok(Report { setup, rows })
}

fn ratio_text(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}x"))
}

fn p_text(p: Option<f64>) -> String {
    match p {
        None => "-".to_owned(),
        Some(p) if p < 0.001 => "<0.001".to_owned(),
        Some(p) => format!("{p:.3}"),
    }
}

impl Report {
    /// The text report: setup, documents per shard, the table, notes.
    pub fn text(&self) -> String {
        let s = &self.setup;
        let mut out = format!(
            "{} documents, {} topics ({} judged), collection {}, {} shards split {}, {} hits per search\n",
            s.documents,
            s.topics,
            s.judged,
            s.collection,
            s.shards.len(),
            s.split,
            s.limit
        );
        let shards: Vec<String> = s.shards.iter().map(|(node, n)| format!("{node} {n}")).collect();
        out.push_str(&format!(
            "documents per shard: {}; one index ({}): {}\n\n",
            shards.join(", "),
            s.baseline.0,
            s.baseline.1
        ));
        let mut table = Table::new(vec![
            Column::left("RUN"),
            Column::right("nDCG@10"),
            Column::right("RATIO"),
            Column::right("MAP@100"),
            Column::right("RATIO"),
            Column::right("P@10"),
            Column::right("RATIO"),
            Column::right("SAME TOP-10"),
            Column::right("p nDCG"),
            Column::right("p MAP"),
            Column::right("p50 ms"),
            Column::right("CALLS"),
            Column::right("SAVED"),
        ]);
        for row in &self.rows {
            table.push(vec![
                row.name.clone(),
                format!("{:.4}", row.means[0]),
                ratio_text(row.ratios[0]),
                format!("{:.4}", row.means[1]),
                ratio_text(row.ratios[1]),
                format!("{:.4}", row.means[2]),
                ratio_text(row.ratios[2]),
                format!("{}/{}", row.identical, row.compared),
                p_text(row.p_values[0]),
                p_text(row.p_values[1]),
                row.p50_ms.to_string(),
                row.calls.to_string(),
                row.saved.to_string(),
            ]);
        }
        out.push_str(&table.render());
        out.push('\n');
        out.push_str(
            "RATIO: mean over one index's; SAME TOP-10: topics whose top 10 equals one index's (trec_eval's order);\n\
             p: paired randomization test against one index; p50 ms: the master's took_ms; CALLS: node calls made;\n\
             SAVED: shard groups skipped because their term summary proves no match\n",
        );
        for warning in &s.warnings {
            out.push_str(&format!("warning: {warning}\n"));
        }
        for row in self.rows.iter().filter(|r| r.incomplete > 0) {
            out.push_str(&format!(
                "warning: {}: {} searches lacked a shard group's answer; its figures are not comparable\n",
                row.name, row.incomplete
            ));
        }
        out
    }

    /// The same as JSON.
    pub fn to_json(&self) -> Value {
        let s = &self.setup;
        let metric_map = |values: &[Option<f64>; 3]| -> Value {
            let mut map = serde_json::Map::new();
            for (metric, value) in METRICS.iter().zip(values) {
                map.insert(metric.to_string().to_lowercase(), value.map_or(Value::Null, Value::from));
            }
            Value::Object(map)
        };
        let runs: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                json!({
                    "name": row.name,
                    "merge": row.merge,
                    "metrics": metric_map(&row.means.map(Some)),
                    "ratios": metric_map(&row.ratios),
                    "p_values": metric_map(&row.p_values),
                    "top10_identical": row.identical,
                    "top10_compared": row.compared,
                    "p50_ms": row.p50_ms,
                    "calls": row.calls,
                    "saved_calls": row.saved,
                    "incomplete_searches": row.incomplete,
                })
            })
            .collect();
        json!({
            "documents": s.documents,
            "topics": s.topics,
            "judged_topics": s.judged,
            "collection": s.collection,
            "split": s.split,
            "limit": s.limit,
            "baseline": {"node": s.baseline.0, "documents": s.baseline.1},
            "shards": s.shards.iter().map(|(node, n)| json!({"node": node, "documents": n})).collect::<Vec<_>>(),
            "runs": runs,
            "warnings": s.warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(hits: &[(&str, f64)], groups: Vec<v1::GroupOutcome>) -> v1::SearchResponse {
        v1::SearchResponse {
            hits: hits
                .iter()
                .map(|&(id, score)| v1::Hit { doc_id: id.to_owned(), score, ..Default::default() })
                .collect(),
            took_ms: 7,
            groups,
            ..Default::default()
        }
    }

    fn group(status: v1::OutcomeStatus, skip: v1::SkipReason, attempts: usize) -> v1::GroupOutcome {
        v1::GroupOutcome {
            status: status as i32,
            skip_reason: skip as i32,
            attempts: vec![v1::Attempt::default(); attempts],
            ..Default::default()
        }
    }

    #[test]
    fn calls_count_attempts_and_no_match_skips_as_saved() {
        let ok = group(v1::OutcomeStatus::Ok, v1::SkipReason::Unspecified, 1);
        let no_match = group(v1::OutcomeStatus::Skipped, v1::SkipReason::NoMatch, 0);
        let down = group(v1::OutcomeStatus::Skipped, v1::SkipReason::Down, 0);
        assert_eq!(calls_of(&response(&[], vec![ok.clone(), ok.clone(), no_match.clone()])), (2, 1, true));
        assert_eq!(
            calls_of(&response(&[], vec![ok, down])),
            (1, 0, false),
            "a down group leaves the answer incomplete"
        );
    }

    #[test]
    fn median_is_the_lower_middle() {
        assert_eq!(p50(&[]), 0);
        assert_eq!(p50(&[5]), 5);
        assert_eq!(p50(&[9, 1, 5]), 5);
        assert_eq!(p50(&[4, 1, 3, 2]), 2);
    }

    #[test]
    fn rows_hold_metrics_ratios_agreement_and_calls() {
        let mut qrels = Qrels::new();
        qrels.insert("1", "a", 1).expect("judgment");
        qrels.insert("2", "c", 1).expect("judgment");
        let ok = || vec![group(v1::OutcomeStatus::Ok, v1::SkipReason::Unspecified, 1)];
        let mut base = Searched::new("one index", "raw").expect("run");
        base.record("1", &response(&[("a", 2.0), ("b", 1.0)], ok())).expect("record");
        base.record("2", &response(&[("c", 2.0), ("d", 1.0)], ok())).expect("record");
        let mut other = Searched::new("rrf", "rrf").expect("run");
        let two = || {
            vec![
                group(v1::OutcomeStatus::Ok, v1::SkipReason::Unspecified, 1),
                group(v1::OutcomeStatus::Skipped, v1::SkipReason::NoMatch, 0),
            ]
        };
        other.record("1", &response(&[("a", 2.0), ("b", 1.0)], two())).expect("record");
        // Topic 2: the relevant document drops to rank 2, so AP and nDCG fall, P@10 does not.
        other.record("2", &response(&[("d", 2.0), ("c", 1.0)], two())).expect("record");
        let setup = Setup {
            documents: 4,
            topics: 2,
            judged: 0,
            split: "round-robin".into(),
            collection: "eval".into(),
            limit: 100,
            baseline: ("baseline".into(), 4),
            shards: vec![("shard-1".into(), 2), ("shard-2".into(), 2)],
            warnings: Vec::new(),
        };
        let topics = ["1".to_owned(), "2".to_owned()];
        let report = build(setup, &base, &[other], &qrels, &topics).expect("report");
        assert_eq!(report.setup.judged, 2);
        let (one, rrf) = (&report.rows[0], &report.rows[1]);
        assert_eq!(one.means, [1.0, 1.0, 0.1]);
        assert_eq!(one.ratios, [Some(1.0); 3]);
        assert_eq!(one.p_values, [None; 3]);
        assert_eq!((one.identical, one.compared), (2, 2));
        let ndcg_2 = 1.0 / 3f64.log2();
        assert!((rrf.means[0] - (1.0 + ndcg_2) / 2.0).abs() < 1e-12, "{:?}", rrf.means);
        assert!((rrf.means[1] - 0.75).abs() < 1e-12, "{:?}", rrf.means);
        assert!((rrf.means[2] - 0.1).abs() < 1e-12, "{:?}", rrf.means);
        assert_eq!((rrf.identical, rrf.compared), (1, 2));
        assert_eq!((rrf.calls, rrf.saved, rrf.incomplete, rrf.p50_ms), (2, 2, 0, 7));
        assert!(rrf.p_values[0].is_some_and(|p| p > 0.0 && p <= 1.0));

        let text = report.text();
        assert!(text.contains("documents per shard: shard-1 2, shard-2 2; one index (baseline): 4"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("one index") && l.contains("1.0000") && l.contains("2/2")),
            "{text}"
        );
        assert!(text.lines().any(|l| l.starts_with("rrf") && l.contains("0.8155") && l.contains("1/2")), "{text}");
        let json = report.to_json();
        assert_eq!(json["runs"][1]["metrics"]["map@100"], 0.75);
        assert_eq!(json["runs"][1]["top10_identical"], 1);
        assert_eq!(json["runs"][0]["p_values"]["ndcg@10"], Value::Null);
        assert_eq!(json["shards"][1]["documents"], 2);
    }
}
