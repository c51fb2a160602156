//! The real vaswani (NPL) files parse: 93 topics, 2,083 judgments over 93 queries, every judged
//! query a topic; the qrels turned into a perfect run score nDCG@10 = 1, and survive a run file
//! round trip. Skipped, and says so, when ../shared/data/vaswani is absent (a user's clone);
//! fails when CI is set and the data is absent.

use ragmesh_eval::topics::read_topics_file;
use ragmesh_eval::{Averaging, Metric, Qrels, Run, evaluate};

#[test]
fn the_vaswani_topics_and_qrels_parse() {
    let Some(dir) = ragmesh_test_util::vaswani_dir() else { return };
    let topics = read_topics_file(&dir.join("query-text.trec")).expect("topics");
    assert_eq!(topics.len(), 93);
    assert_eq!(topics[0].id, "1");
    assert_eq!(topics[0].title, "MEASUREMENT OF DIELECTRIC CONSTANT OF LIQUIDS BY THE USE OF MICROWAVE TECHNIQUES");
    assert!(topics.iter().all(|t| !t.title.is_empty()));

    let qrels = Qrels::read_file(&dir.join("qrels")).expect("qrels");
    assert_eq!(qrels.num_queries(), 93);
    assert_eq!(qrels.num_judgments(), 2083);
    let topic_ids: std::collections::HashSet<&str> = topics.iter().map(|t| t.id.as_str()).collect();
    assert!(qrels.queries().all(|q| topic_ids.contains(q)), "every judged query is a topic");

    // The judgments as a run, relevant documents only: a perfect run.
    let mut perfect = Run::new("qrels").expect("tag");
    for query in qrels.queries() {
        let judged = qrels.judgments(query).expect("judged");
        let mut relevant: Vec<&str> = judged.iter().filter(|(_, rel)| **rel >= 1).map(|(d, _)| d.as_str()).collect();
        relevant.sort_unstable();
        perfect.push_ranking(query, relevant).expect("push");
    }
    let metrics = [Metric::Ndcg(10), Metric::Map(100), Metric::P(10)];
    let eval = evaluate(&perfect, &qrels, &metrics, Averaging::TrecEval).expect("evaluate");
    assert_eq!(eval.num_queries(), 93);
    assert!((eval.mean(Metric::Ndcg(10)).expect("ndcg") - 1.0).abs() < 1e-12);
    // P@10 of a perfect run is min(10, R) / 10 per query.
    let want_p10 = qrels.queries().map(|q| qrels.num_relevant(q).min(10) as f64 / 10.0).sum::<f64>() / 93.0;
    assert!((eval.mean(Metric::P(10)).expect("p10") - want_p10).abs() < 1e-12);

    let mut file = Vec::new();
    perfect.write(&mut file).expect("write");
    assert_eq!(Run::read(file.as_slice()).expect("read back"), perfect);
}
