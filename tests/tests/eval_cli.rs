//! `ragmeshctl eval`, the real binary, in its fresh-local-mesh mode (a master and N+1 agent
//! processes with mTLS, started and stopped by the command itself):
//!
//! - on a small TREC sample written here, whose one-index figures are worked out by hand below
//!   (so the printed table is checked against arithmetic, not against the code under test), split
//!   by id ranges over 2 shards: global BM25 must print the same figures and identical top-10s;
//! - on the vaswani collection (../shared/data/vaswani; skipped with a message when absent, a
//!   failure under CI) over 4 shards, round-robin and clustered: global BM25 at least 0.995x one
//!   index on nDCG@10 and MAP@100, identical top-10 on at least 95 % of the queries.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ragmesh_e2e::daemons::bin_dir;

/// `ragmeshctl` next to the daemons it starts.
fn ragmeshctl() -> PathBuf {
    let bin = bin_dir().join("ragmeshctl");
    assert!(bin.is_file(), "{} is missing: build it with `cargo build --workspace --bins`", bin.display());
    bin
}

/// Longest a whole `ragmeshctl eval` may take (vaswani in a debug build on a loaded 2-core
/// machine takes a few minutes); the binary also bounds each of its own waits.
const EVAL_TIMEOUT: Duration = Duration::from_secs(1800);

/// Runs `ragmeshctl eval ARGS` to completion and returns stdout; fails with stderr when it exits
/// non-zero.
async fn eval(args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(ragmeshctl());
    // The test's own RAGMESH_* would point eval at another mesh.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RAGMESH_") {
            command.env_remove(&key);
        }
    }
    let started = Instant::now();
    command.arg("eval").args(args).env("NO_COLOR", "1").kill_on_drop(true);
    let output = tokio::time::timeout(EVAL_TIMEOUT, command.output())
        .await
        .expect("ragmeshctl eval finishes in time")
        .expect("ragmeshctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    println!("ragmeshctl eval {} ({:.1} s):\n{stderr}{stdout}", args.join(" "), started.elapsed().as_secs_f64());
    assert!(output.status.success(), "ragmeshctl eval {args:?} failed ({}):\n{stderr}", output.status);
    assert!(stderr.contains("stopped the local mesh and removed"), "the local mesh is stopped and removed: {stderr}");
    stdout
}

/// The sample: topic 1 "zebra" (one matching document, relevant), topic 2 "quokka" (two
/// matching, the relevant one second), topic 3 "narwhal" (one matching, not relevant; the
/// relevant one does not match), topic 4 "walrus" (three matching, the first and third
/// relevant), and filler documents matching none of the topics.
fn write_sample(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let filler = "harbour river meadow canal bridge tower market garden";
    let mut docs: Vec<(String, String)> = vec![
        ("d01".into(), format!("zebra {filler}")),
        // Twice in three words: ranks above d03, whose one "quokka" sits among many words.
        ("d02".into(), "quokka quokka habitat".into()),
        ("d03".into(), format!("quokka {filler} {filler} {filler}")),
        ("d04".into(), format!("narwhal {filler}")),
        ("d05".into(), format!("plain {filler}")),
        ("d06".into(), format!("arctic {filler}")),
        // walrus: d07 (3 in 3 words) > d09 (2 in 10) > d08 (1 in 25).
        ("d07".into(), "walrus walrus walrus".into()),
        ("d08".into(), format!("walrus {filler} {filler} {filler}")),
        ("d09".into(), format!("walrus walrus {filler}")),
    ];
    let extra = ["orchard", "quarry", "lighthouse", "vineyard", "glacier", "prairie", "delta"];
    for i in 10..34 {
        docs.push((
            format!("d{i:02}"),
            format!("{} {filler} {}", extra[i % extra.len()], extra[(i + 3) % extra.len()]),
        ));
    }
    let docs_text: String =
        docs.iter().map(|(id, body)| format!("<DOC>\n<DOCNO>{id}</DOCNO>\n{body}\n</DOC>\n")).collect();
    let topics = ["zebra", "quokka", "narwhal", "walrus"]
        .iter()
        .enumerate()
        .map(|(i, title)| format!("<top>\n<num>{}</num><title>\n{}\n</title>\n</top>\n", i + 1, title.to_uppercase()))
        .collect::<String>();
    let qrels = "1 0 d01 1\n1 0 d05 0\n2 0 d03 1\n3 0 d06 1\n3 0 d04 0\n4 0 d07 1\n4 0 d08 1\n";
    let paths = (dir.join("docs.trec"), dir.join("topics.trec"), dir.join("qrels"));
    std::fs::write(&paths.0, docs_text).expect("write docs");
    std::fs::write(&paths.1, topics).expect("write topics");
    std::fs::write(&paths.2, qrels).expect("write qrels");
    paths
}

/// The columns of the row called `name` (its name's words joined back as the first column).
fn row<'a>(table: &'a str, name: &'a str) -> Vec<&'a str> {
    let line = table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} row in:\n{table}"));
    let mut columns = vec![name];
    columns.extend(line[name.len()..].split_whitespace());
    columns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_prints_hand_checked_figures_on_a_small_sample() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (docs, topics, qrels) = write_sample(dir.path());
    let path = |p: &Path| p.display().to_string();
    let (docs, topics, qrels) = (path(&docs), path(&topics), path(&qrels));
    let out = eval(&[
        "--docs", &docs, "--topics", &topics, "--qrels", &qrels, "--shards", "2", "--split", "id-range", "--local",
    ])
    .await;

    // By hand (trec_eval definitions; every topic is judged):
    //   nDCG@10: 1, 1/log2(3) = 0.63093, 0, (1 + 1/log2(4)) / (1 + 1/log2(3)) = 0.91972 -> 0.63766
    //   MAP@100: 1, 1/2, 0, (1/1 + 2/3)/2 = 0.83333                                        -> 0.58333
    //   P@10:    0.1, 0.1, 0, 0.2                                                           -> 0.1
    let ndcg = (1.0 + 1.0 / 3f64.log2() + (1.0 + 0.5) / (1.0 + 1.0 / 3f64.log2())) / 4.0;
    assert_eq!(format!("{ndcg:.4}"), "0.6377");
    assert!(out.contains("33 documents, 4 topics (4 judged), collection eval, 2 shards split id-range"), "{out}");
    // id-range over d01..d33: 17 and 16.
    assert!(out.contains("documents per shard: shard-1 17, shard-2 16; one index (baseline): 33"), "{out}");
    let one = row(&out, "one index");
    assert_eq!(&one[1..9], ["0.6377", "1.000x", "0.5833", "1.000x", "0.1000", "1.000x", "4/4", "-"], "{out}");
    let global = row(&out, "global_bm25");
    assert_eq!(&global[1..8], ["0.6377", "1.000x", "0.5833", "1.000x", "0.1000", "1.000x", "4/4"], "{out}");
    assert_eq!(global[8], "1.000", "no difference at all, p = 1: {out}");
    // Every system answered every topic from both shards (or skipped a shard that cannot match).
    for name in ["rrf", "raw"] {
        assert_eq!(row(&out, name).len(), 13, "{name} row complete: {out}");
    }
    assert!(!out.contains("warning:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_on_vaswani_global_bm25_matches_one_index_over_four_shards() {
    let Some(dir) = ragmesh_test_util::vaswani_dir() else { return };
    let dir = dir.display().to_string();
    for split in ["round-robin", "clustered"] {
        let started = Instant::now();
        let out =
            eval(&["--vaswani", &dir, "--shards", "4", "--split", split, "--collection", "npl", "--json", "--local"])
                .await;
        let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints one JSON object");
        assert_eq!(report["documents"], 11_429);
        assert_eq!(report["judged_topics"], 93);
        let sizes: Vec<u64> =
            report["shards"].as_array().expect("shards").iter().map(|s| s["documents"].as_u64().expect("n")).collect();
        assert_eq!(sizes.iter().sum::<u64>(), 11_429, "{split}: {sizes:?}");
        if split == "clustered" {
            let (min, max) = (sizes.iter().min().expect("min"), sizes.iter().max().expect("max"));
            assert!(*max > 2 * *min, "a clustered split is skewed: {sizes:?}");
        }
        let runs = report["runs"].as_array().expect("runs");
        let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().expect("name")).collect();
        assert_eq!(names, ["one index", "global_bm25", "rrf", "raw"]);
        assert!(runs[0]["metrics"]["p@10"].as_f64().expect("p@10") > 0.2, "the one index itself works: {out}");
        let global = &runs[1];
        for metric in ["ndcg@10", "map@100"] {
            let ratio = global["ratios"][metric].as_f64().expect("ratio");
            assert!(ratio >= 0.995, "{split}: global BM25 {metric} at {ratio:.4}x one index");
        }
        let identical = global["top10_identical"].as_u64().expect("identical");
        assert!(identical * 100 >= 95 * 93, "{split}: identical top-10 on {identical}/93 queries only");
        for run in runs {
            assert_eq!(run["incomplete_searches"], 0, "{split}: every search complete: {run}");
        }
        println!("{split}: {:.1} s", started.elapsed().as_secs_f64());
    }
}
