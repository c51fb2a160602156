//! Metric values checked against hand-computed ones (the arithmetic is in the comments), trec_eval's
//! tie order and choice of queries, and the edge cases: empty runs, unknown query ids, queries
//! without relevant documents, cutoffs past the end of a list.

use ragmesh_eval::metrics::{average_precision_at, ndcg_at, precision_at};
use ragmesh_eval::{Averaging, Error, Metric, Qrels, Run, evaluate};

const EPS: f64 = 1e-12;

fn close(got: f64, want: f64) {
    assert!((got - want).abs() < EPS, "got {got}, want {want}");
}

fn qrels(text: &str) -> Qrels {
    Qrels::read(text.as_bytes()).expect("qrels")
}

fn run(lines: &[(&str, &str, f64)]) -> Run {
    let mut run = Run::new("test").expect("tag");
    for (query, docno, score) in lines {
        run.push(query, docno, *score).expect("push");
    }
    run
}

/// q1: relevant d1, d2, d3 (R = 3), d4 judged non-relevant.
/// Ranked: d1 (rel), d5 (unjudged), d2 (rel), d4 (non-rel), d6 (unjudged): grades [1, 0, 1, 0, 0].
fn binary_example() -> (Qrels, Run) {
    let qrels = qrels("q1 0 d1 1\nq1 0 d2 1\nq1 0 d3 1\nq1 0 d4 0\n");
    let run = run(&[("q1", "d1", 0.9), ("q1", "d5", 0.8), ("q1", "d2", 0.7), ("q1", "d4", 0.6), ("q1", "d6", 0.5)]);
    (qrels, run)
}

#[test]
fn binary_relevance_by_hand() {
    let (qrels, run) = binary_example();
    let metrics = [Metric::P(1), Metric::P(5), Metric::P(10), Metric::Map(2), Metric::Map(5), Metric::Map(10)];
    let eval = evaluate(&run, &qrels, &metrics, Averaging::TrecEval).expect("evaluate");
    // P@1 = 1/1; P@5 = 2/5; P@10 = 2/10 (divided by 10 although only 5 were retrieved).
    close(eval.value("q1", Metric::P(1)).expect("P@1"), 1.0);
    close(eval.value("q1", Metric::P(5)).expect("P@5"), 0.4);
    close(eval.value("q1", Metric::P(10)).expect("P@10"), 0.2);
    // AP@2: relevant at rank 1 only: (1/1) / R = 1/3.
    close(eval.value("q1", Metric::Map(2)).expect("AP@2"), 1.0 / 3.0);
    // AP@5: ranks 1 and 3: (1/1 + 2/3) / 3 = (5/3) / 3 = 5/9; AP@10 the same (nothing after rank 5).
    close(eval.value("q1", Metric::Map(5)).expect("AP@5"), 5.0 / 9.0);
    close(eval.value("q1", Metric::Map(10)).expect("AP@10"), 5.0 / 9.0);

    let eval = evaluate(&run, &qrels, &[Metric::Ndcg(2), Metric::Ndcg(5)], Averaging::TrecEval).expect("evaluate");
    // nDCG@2: DCG = 1/log2(2) = 1; ideal 1/log2(2) + 1/log2(3) = 1 + 0.63093; 1 / 1.63093 = 0.61315.
    close(eval.value("q1", Metric::Ndcg(2)).expect("nDCG@2"), 1.0 / (1.0 + 1.0 / 3f64.log2()));
    // nDCG@5: DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal (all three relevant, not only the two
    // retrieved) = 1 + 1/log2(3) + 1/log2(4) = 2.13093; 1.5 / 2.13093 = 0.70392.
    let ndcg5 = 1.5 / (1.0 + 1.0 / 3f64.log2() + 0.5);
    close(eval.value("q1", Metric::Ndcg(5)).expect("nDCG@5"), ndcg5);
    assert!((ndcg5 - 0.70392).abs() < 1e-5);
}

#[test]
fn graded_relevance_by_hand() {
    // Grades a=3, b=2, c=1, d=0. Ranked c, a, x (unjudged), b: grades [1, 3, 0, 2].
    let qrels = qrels("q2 0 a 3\nq2 0 b 2\nq2 0 c 1\nq2 0 d 0\n");
    let run = run(&[("q2", "c", 4.0), ("q2", "a", 3.0), ("q2", "x", 2.0), ("q2", "b", 1.0)]);
    let metrics = [Metric::Ndcg(1), Metric::Ndcg(4), Metric::Map(4), Metric::P(4)];
    let eval = evaluate(&run, &qrels, &metrics, Averaging::TrecEval).expect("evaluate");
    // nDCG@1: DCG = 1/log2(2) = 1; ideal = 3/log2(2) = 3; 1/3.
    close(eval.value("q2", Metric::Ndcg(1)).expect("nDCG@1"), 1.0 / 3.0);
    // nDCG@4: DCG = 1/log2(2) + 3/log2(3) + 0 + 2/log2(5) = 1 + 1.89279 + 0.86135 = 3.75414;
    // ideal = 3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.26186 + 0.5 = 4.76186; 0.78838.
    let dcg = 1.0 + 3.0 / 3f64.log2() + 2.0 / 5f64.log2();
    let ideal = 3.0 + 2.0 / 3f64.log2() + 0.5;
    close(eval.value("q2", Metric::Ndcg(4)).expect("nDCG@4"), dcg / ideal);
    assert!((dcg / ideal - 0.78838).abs() < 1e-5);
    // AP@4 (grade >= 1 is relevant): ranks 1, 2, 4: (1/1 + 2/2 + 3/4) / 3 = 2.75 / 3.
    close(eval.value("q2", Metric::Map(4)).expect("AP@4"), 2.75 / 3.0);
    // P@4: 3 relevant of 4.
    close(eval.value("q2", Metric::P(4)).expect("P@4"), 0.75);
}

#[test]
fn pure_functions_agree_with_the_definitions() {
    // Empty list: everything 0; no relevant documents: AP 0, nDCG 0.
    close(ndcg_at(&[], &[1, 1], 10), 0.0);
    close(average_precision_at(&[], 2, 10), 0.0);
    close(precision_at(&[], 10), 0.0);
    close(ndcg_at(&[0, 0], &[], 10), 0.0);
    close(average_precision_at(&[1], 0, 10), 0.0);
    // The ideal list is cut at k too: one relevant at rank 1 of k = 1, three relevant in all: 1.
    close(ndcg_at(&[1, 0, 0], &[1, 1, 1], 1), 1.0);
}

#[test]
fn ties_are_broken_by_docno_descending_like_trec_eval() {
    // d2 and d10 tie at 1.0; trec_eval puts the greater docno first: "d2" > "d10" (byte order).
    // Only d10 is relevant, so P@1 = 0 (an ascending tie-break would give 1).
    let qrels = qrels("q 0 d10 1\n");
    let run = run(&[("q", "d10", 1.0), ("q", "d2", 1.0)]);
    let eval = evaluate(&run, &qrels, &[Metric::P(1), Metric::Ndcg(2)], Averaging::TrecEval).expect("evaluate");
    close(eval.value("q", Metric::P(1)).expect("P@1"), 0.0);
    // nDCG@2: DCG = 1/log2(3); ideal = 1; 0.63093.
    close(eval.value("q", Metric::Ndcg(2)).expect("nDCG@2"), 1.0 / 3f64.log2());
}

#[test]
fn which_queries_count_follows_trec_eval() {
    // q1 (binary example), q3 judged with no relevant document, q4 judged but not in the run,
    // q9 in the run but unknown to the qrels.
    let (_, mut run) = binary_example();
    let qrels = qrels("q1 0 d1 1\nq1 0 d2 1\nq1 0 d3 1\nq1 0 d4 0\nq3 0 z 0\nq4 0 y 1\n");
    run.push("q3", "z", 1.0).expect("push");
    run.push("q9", "d1", 1.0).expect("push");

    let eval = evaluate(&run, &qrels, &[Metric::P(5)], Averaging::TrecEval).expect("evaluate");
    // q1 and q3 are evaluated; q3 scores 0 and counts (trec_eval >= 8.0); q4 and q9 are skipped.
    assert_eq!(eval.queries().collect::<Vec<_>>(), ["q1", "q3"]);
    assert_eq!(eval.skipped_queries(), ["q9"]);
    close(eval.value("q3", Metric::P(5)).expect("q3"), 0.0);
    // Mean: (0.4 + 0) / 2.
    close(eval.mean(Metric::P(5)).expect("mean"), 0.2);

    // trec_eval -c: every qrels query, q4 (absent from the run) as 0: (0.4 + 0 + 0) / 3.
    let complete = evaluate(&run, &qrels, &[Metric::P(5)], Averaging::Complete).expect("evaluate");
    assert_eq!(complete.queries().collect::<Vec<_>>(), ["q1", "q3", "q4"]);
    close(complete.mean(Metric::P(5)).expect("mean"), 0.4 / 3.0);
}

#[test]
fn empty_runs() {
    let (qrels, _) = binary_example();
    let empty = Run::new("empty").expect("tag");
    assert!(matches!(evaluate(&empty, &qrels, &[Metric::P(10)], Averaging::TrecEval), Err(Error::NoQueries)));
    // Complete averaging still scores every judged query, as 0.
    let eval = evaluate(&empty, &qrels, &[Metric::P(10), Metric::Ndcg(10)], Averaging::Complete).expect("evaluate");
    close(eval.mean(Metric::Ndcg(10)).expect("mean"), 0.0);
    // A query answered with nothing is evaluated (0), not skipped.
    let mut asked = Run::new("asked").expect("tag");
    asked.push_empty("q1").expect("push");
    let eval = evaluate(&asked, &qrels, &[Metric::Map(10)], Averaging::TrecEval).expect("evaluate");
    assert_eq!(eval.num_queries(), 1);
    close(eval.mean(Metric::Map(10)).expect("mean"), 0.0);
    // Only unknown query ids: nothing to evaluate.
    let unknown = run(&[("nope", "d1", 1.0)]);
    assert!(matches!(evaluate(&unknown, &qrels, &[Metric::P(10)], Averaging::TrecEval), Err(Error::NoQueries)));
}

#[test]
fn a_zero_cutoff_is_refused() {
    let (qrels, run) = binary_example();
    assert!(matches!(evaluate(&run, &qrels, &[Metric::P(0)], Averaging::TrecEval), Err(Error::InvalidCutoff)));
}

#[test]
fn metric_names() {
    for (text, metric) in [
        ("ndcg@10", Metric::Ndcg(10)),
        ("nDCG@10", Metric::Ndcg(10)),
        ("ndcg_cut_10", Metric::Ndcg(10)),
        ("map@100", Metric::Map(100)),
        ("map_cut_100", Metric::Map(100)),
        ("P@10", Metric::P(10)),
        ("P_10", Metric::P(10)),
    ] {
        assert_eq!(text.parse::<Metric>().expect(text), metric);
    }
    assert_eq!(Metric::Ndcg(10).to_string(), "nDCG@10");
    assert_eq!(Metric::Map(100).trec_eval_name(), "map_cut_100");
    assert!(matches!("recall@10".parse::<Metric>(), Err(Error::UnknownMetric(_))));
    assert!(matches!("p@0".parse::<Metric>(), Err(Error::InvalidCutoff)));
    assert!(matches!("ndcg".parse::<Metric>(), Err(Error::UnknownMetric(_))));
}
