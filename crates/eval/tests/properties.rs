//! Property tests: every metric stays in [0, 1]; a perfect run scores 1 (nDCG always, AP when k
//! covers every relevant document, P when k does not exceed them); reversing a perfect run never
//! raises nDCG; a written run reads back identical; the readers never panic on arbitrary input.

use proptest::prelude::*;
use ragmesh_eval::topics::read_topics;
use ragmesh_eval::{Averaging, Metric, Qrels, Run, evaluate};

/// Grades for documents d0..d19 (-1 unjudged-in-pool, 0 non-relevant, 1..3 relevant), and a run
/// over a random subset with small integer scores so ties happen often.
fn qrels_and_run() -> impl Strategy<Value = (Vec<i32>, Vec<(usize, u8)>)> {
    (proptest::collection::vec(-1i32..=3, 20), proptest::collection::vec((0usize..25, 0u8..6), 0..30))
}

fn build(grades: &[i32], retrieved: &[(usize, u8)]) -> (Qrels, Run) {
    let mut qrels = Qrels::new();
    for (i, &grade) in grades.iter().enumerate() {
        qrels.insert("q", &format!("d{i}"), grade).expect("judge");
    }
    let mut run = Run::new("prop").expect("tag");
    run.push_empty("q").expect("query");
    let mut seen = std::collections::HashSet::new();
    for &(doc, score) in retrieved {
        // Docs d20..d24 are unjudged; repeats are skipped (a run holds a document once).
        if seen.insert(doc) {
            run.push("q", &format!("d{doc}"), f64::from(score)).expect("push");
        }
    }
    (qrels, run)
}

fn all_metrics() -> Vec<Metric> {
    let mut metrics = Vec::new();
    for k in [1, 2, 3, 5, 10, 20, 30] {
        metrics.extend([Metric::Ndcg(k), Metric::Map(k), Metric::P(k)]);
    }
    metrics
}

/// The ideal ranking: every positively graded document, highest grade first (scores descending).
fn perfect_run(grades: &[i32], reversed: bool) -> Run {
    let mut relevant: Vec<(usize, i32)> = grades.iter().copied().enumerate().filter(|&(_, g)| g > 0).collect();
    relevant.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if reversed {
        relevant.reverse();
    }
    let mut run = Run::new("perfect").expect("tag");
    run.push_empty("q").expect("query");
    run.push_ranking(
        "q",
        relevant.iter().map(|(doc, _)| format!("d{doc}")).collect::<Vec<_>>().iter().map(String::as_str),
    )
    .expect("push");
    run
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn metrics_stay_between_0_and_1((grades, retrieved) in qrels_and_run()) {
        let (qrels, run) = build(&grades, &retrieved);
        let eval = evaluate(&run, &qrels, &all_metrics(), Averaging::TrecEval).expect("evaluate");
        for metric in all_metrics() {
            let value = eval.value("q", metric).expect("value");
            prop_assert!((0.0..=1.0).contains(&value), "{metric} = {value}");
        }
    }

    #[test]
    fn a_perfect_run_scores_1_and_its_reverse_no_more(grades in proptest::collection::vec(-1i32..=3, 20)) {
        let num_relevant = grades.iter().filter(|&&g| g >= 1).count();
        prop_assume!(num_relevant > 0);
        let mut qrels = Qrels::new();
        for (i, &grade) in grades.iter().enumerate() {
            qrels.insert("q", &format!("d{i}"), grade).expect("judge");
        }
        let metrics = all_metrics();
        let perfect = evaluate(&perfect_run(&grades, false), &qrels, &metrics, Averaging::TrecEval).expect("evaluate");
        let reversed = evaluate(&perfect_run(&grades, true), &qrels, &metrics, Averaging::TrecEval).expect("evaluate");
        for metric in metrics {
            let value = perfect.value("q", metric).expect("value");
            let k = metric.cutoff();
            match metric {
                Metric::Ndcg(_) => {
                    prop_assert!((value - 1.0).abs() < 1e-12, "{metric} = {value}");
                    let rev = reversed.value("q", metric).expect("value");
                    prop_assert!(rev <= value + 1e-12, "reversed {metric} = {rev} > {value}");
                }
                // All relevant documents at the top: AP@k = min(k, R) / R, P@k = min(k, R) / k.
                Metric::Map(_) => {
                    let want = k.min(num_relevant) as f64 / num_relevant as f64;
                    prop_assert!((value - want).abs() < 1e-12, "{metric} = {value}, want {want}");
                    if k >= num_relevant { prop_assert!((value - 1.0).abs() < 1e-12); }
                }
                Metric::P(_) => {
                    let want = k.min(num_relevant) as f64 / k as f64;
                    prop_assert!((value - want).abs() < 1e-12, "{metric} = {value}, want {want}");
                }
            }
        }
    }

    #[test]
    fn a_written_run_reads_back_identical(
        entries in proptest::collection::vec(("[a-z0-9]{1,4}", "[A-Za-z0-9_.-]{1,8}", -1e6f64..1e6), 0..60)
    ) {
        let mut run = Run::new("sys").expect("tag");
        for (query, docno, score) in &entries {
            let _ = run.push(query, docno, *score); // duplicates refused, the rest kept
        }
        let mut out = Vec::new();
        run.write(&mut out).expect("write");
        let back = Run::read(out.as_slice()).expect("read");
        prop_assert_eq!(back.len(), run.len());
        for query in run.queries() {
            prop_assert_eq!(back.ranked(query), run.ranked(query));
        }
    }

    #[test]
    fn readers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), text in "[<>/a-zA-Z0-9 :\n]{0,300}") {
        let _ = read_topics(bytes.as_slice());
        let _ = Qrels::read(bytes.as_slice());
        let _ = Run::read(bytes.as_slice());
        let _ = read_topics(text.as_bytes());
        let _ = Qrels::read(text.as_bytes());
        let _ = Run::read(text.as_bytes());
    }
}
