//! Run comparison: per-query differences, ratio of means, the randomization test's p-value
//! (exact values by hand, Monte Carlo against exact, determinism), top-k agreement.

use ragmesh_eval::{Averaging, Metric, Qrels, RandomizationTest, Run, compare, evaluate, top_k_agreement};

#[test]
fn exact_p_value_by_hand() {
    // Differences 1, 2, 3: the 8 sign assignments sum to 6, 4, 2, 0, 0, -2, -4, -6; |sum| >= 6
    // for 2 of them: p = 2/8.
    let test = RandomizationTest { rounds: 8, seed: 1 };
    assert_eq!(test.p_value(&[1.0, 2.0, 3.0]), 0.25);
    // Differences 1, 1, -1, 0.5, observed |sum| = 1.5. The three +-1s sum to 3 (1 way), 1 (3 ways),
    // -1 (3 ways), -3 (1 way); adding +-0.5 gives |sums| 3.5 (2), 2.5 (2), 1.5 (6), 0.5 (6) over
    // the 16 assignments; |sum| >= 1.5 for 2 + 2 + 6 = 10: p = 10/16.
    let test = RandomizationTest { rounds: 16, seed: 1 };
    assert_eq!(test.p_value(&[1.0, 1.0, -1.0, 0.5]), 10.0 / 16.0);
    // No difference at all: p = 1.
    assert_eq!(test.p_value(&[0.0, 0.0]), 1.0);
    assert_eq!(test.p_value(&[]), 1.0);
}

#[test]
fn monte_carlo_agrees_with_exact_and_is_deterministic() {
    let differences: Vec<f64> = (0..12).map(|i| ((i * 7 % 5) as f64 - 1.5) / 10.0 + 0.02).collect();
    let exact = RandomizationTest { rounds: 4096, seed: 1 }.p_value(&differences);
    // 4095 < 2^12: sampled instead of enumerated.
    let sampled = RandomizationTest { rounds: 4095, seed: 7 };
    let p = sampled.p_value(&differences);
    assert!((p - exact).abs() < 0.03, "sampled {p}, exact {exact}");
    assert_eq!(p, sampled.p_value(&differences), "same seed, same p");
    // A large consistent improvement: p at the floor 1 / (rounds + 1).
    let big = vec![0.1; 100];
    let test = RandomizationTest { rounds: 1000, seed: 3 };
    assert_eq!(test.p_value(&big), 1.0 / 1001.0);
}

#[test]
fn comparison_of_two_runs() {
    let qrels = Qrels::read("1 0 a 1\n1 0 b 1\n2 0 c 1\n3 0 d 1\n".as_bytes()).expect("qrels");
    let mut base = Run::new("base").expect("tag");
    base.push_ranking("1", ["a", "x"]).expect("push"); // P@2 = 1/2
    base.push_ranking("2", ["x", "c"]).expect("push"); // P@2 = 1/2
    base.push_ranking("3", ["x", "y"]).expect("push"); // P@2 = 0
    let mut cand = Run::new("cand").expect("tag");
    cand.push_ranking("1", ["a", "b"]).expect("push"); // P@2 = 1
    cand.push_ranking("2", ["x", "c"]).expect("push"); // P@2 = 1/2
    cand.push_ranking("3", ["d", "y"]).expect("push"); // P@2 = 1/2
    let metric = Metric::P(2);
    let a = evaluate(&base, &qrels, &[metric], Averaging::TrecEval).expect("evaluate");
    let b = evaluate(&cand, &qrels, &[metric], Averaging::TrecEval).expect("evaluate");
    let test = RandomizationTest { rounds: 1000, seed: 1 };
    let cmp = compare(&a, &b, metric, &test).expect("compare");
    let diffs: Vec<f64> = cmp.queries.iter().map(|q| q.difference()).collect();
    assert_eq!(diffs, [0.5, 0.0, 0.5]);
    // Means 1/3 and 2/3: ratio 2.
    assert!((cmp.mean_a - 1.0 / 3.0).abs() < 1e-12 && (cmp.mean_b - 2.0 / 3.0).abs() < 1e-12);
    assert!((cmp.ratio.expect("ratio") - 2.0).abs() < 1e-12);
    // Exact (2^3 <= 1000): differences 0.5, 0, 0.5: |sum| = 1 in 4 of 8 assignments (both 0.5s
    // with the same sign); p = 0.5.
    assert_eq!(cmp.p_value, 0.5);
    assert_eq!((cmp.only_in_a, cmp.only_in_b), (0, 0));
    // Against itself: no difference.
    let same = compare(&a, &a, metric, &test).expect("compare");
    assert_eq!(same.p_value, 1.0);
    assert_eq!(same.ratio, Some(1.0));
    // A metric that was not evaluated cannot be compared.
    assert!(compare(&a, &b, Metric::P(5), &test).is_err());
}

#[test]
fn top_k_agreement_counts_identical_lists() {
    let mut a = Run::new("a").expect("tag");
    let mut b = Run::new("b").expect("tag");
    a.push_ranking("same", ["1", "2", "3"]).expect("push");
    b.push_ranking("same", ["1", "2", "3", "9"]).expect("push"); // differs only after k = 3
    a.push_ranking("swapped", ["1", "2", "3"]).expect("push");
    b.push_ranking("swapped", ["2", "1", "3"]).expect("push");
    a.push_ranking("other", ["1", "2", "3"]).expect("push");
    b.push_ranking("other", ["1", "2", "4"]).expect("push");
    a.push_ranking("only-a", ["1"]).expect("push");
    let agreement = top_k_agreement(&a, &b, 3, ["same", "swapped", "other", "only-a", "neither", "same"]);
    assert_eq!(agreement.compared, 5, "duplicates in the query list count once");
    // "same" and "neither" (empty in both) are identical; "swapped" has the same set.
    assert_eq!(agreement.identical, 2);
    assert_eq!(agreement.same_set, 3);
    assert_eq!(agreement.differing, ["only-a", "other", "swapped"]);
    assert!((agreement.identical_fraction() - 0.4).abs() < 1e-12);
}
