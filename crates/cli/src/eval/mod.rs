//! `ragmeshctl eval`: federated search measured against one index on a TREC test collection.
//!
//! Reads documents, topics and qrels; splits the documents into N shards
//! ([`ragmesh_eval::split`]); loads every document into a baseline node's group (the one index)
//! and each shard's into its node's group, through the master in batches ([`load`]); searches
//! every topic on the baseline node alone and on the shard nodes with each merge strategy,
//! bypassing the result cache; and prints the [`report`]. The mesh is a fresh local one
//! ([`local`]) unless `--baseline` and `--shard-nodes` name nodes of a running mesh.

pub mod load;
pub mod local;
pub mod report;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use ragmesh_eval::split::{self, SplitDoc, Strategy};
use ragmesh_eval::{Qrels, Topic};
use ragmesh_index::Document;
use ragmesh_index::ingest::Format;
use ragmesh_proto::v1;

use crate::args::{DEFAULT_MASTER, EvalArgs, GlobalArgs, SplitArg};
use crate::client::{Master, Target};
use crate::error::usage;
use report::{Report, Searched, Setup};

/// The search deadline sent with every search (debug builds on a loaded machine are slow).
const SEARCH_TIMEOUT_MS: u32 = 30_000;
/// The most documents an evaluation loads (they are held in memory, twice).
pub const MAX_DOCUMENTS: usize = 2_000_000;
/// The most topics an evaluation searches.
pub const MAX_TOPICS: usize = 10_000;
/// The merge strategies compared with one index, in row order.
pub const STRATEGIES: [&str; 3] = ["global_bm25", "rrf", "raw"];

impl From<SplitArg> for Strategy {
    fn from(split: SplitArg) -> Self {
        match split {
            SplitArg::RoundRobin => Strategy::RoundRobin,
            SplitArg::IdRange => Strategy::IdRange,
            SplitArg::Clustered => Strategy::Clustered,
        }
    }
}

/// Which nodes hold what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The node whose group gets every document.
    pub baseline: String,
    /// One node per shard, in shard order.
    pub shards: Vec<String>,
}

/// Where the evaluation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Local,
    Running(Layout),
}

/// Local unless `--baseline`/`--shard-nodes` name nodes; a configured master without them is a
/// usage error (it would be ignored otherwise).
fn mode(args: &EvalArgs, global: &GlobalArgs) -> anyhow::Result<Mode> {
    if args.local {
        return Ok(Mode::Local);
    }
    if let Some(baseline) = &args.baseline {
        let shards: Vec<String> =
            args.shard_nodes.iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        if shards.len() != args.shards as usize {
            return Err(usage(format!(
                "--shard-nodes names {} nodes but --shards is {}: name one node per shard",
                shards.len(),
                args.shards
            )));
        }
        let mut all = shards.clone();
        all.push(baseline.trim().to_owned());
        all.sort();
        if all.windows(2).any(|w| w[0] == w[1]) {
            return Err(usage("--baseline and --shard-nodes must be distinct nodes (each its own shard group)"));
        }
        return Ok(Mode::Running(Layout { baseline: baseline.trim().to_owned(), shards }));
    }
    if global.master != DEFAULT_MASTER || std::env::var_os("RAGMESH_MASTER").is_some() {
        return Err(usage(
            "a master is configured (--master or RAGMESH_MASTER): name the nodes to load with --baseline NODE \
             --shard-nodes A,B,.. (eval writes into them), or pass --local for a fresh local mesh",
        ));
    }
    Ok(Mode::Local)
}

/// The loaded inputs.
#[derive(Debug)]
struct Inputs {
    docs: Vec<Document>,
    topics: Vec<Topic>,
    qrels: Qrels,
}

async fn read_inputs(args: &EvalArgs) -> anyhow::Result<Inputs> {
    let (docs_path, topics_path, qrels_path) =
        args.files().ok_or_else(|| usage("pass --vaswani DIR, or --docs, --topics and --qrels"))?;
    if let Some(problem) = crate::ingest::collection_problem(&args.collection) {
        return Err(usage(problem));
    }
    let topics = read_eval_file(&topics_path, ragmesh_eval::topics::read_topics_file).await?;
    let qrels = read_eval_file(&qrels_path, Qrels::read_file).await?;
    if topics.is_empty() || topics.len() > MAX_TOPICS {
        return Err(usage(format!("{}: {} topics; 1-{MAX_TOPICS} are searched", topics_path.display(), topics.len())));
    }
    let docs = crate::ingest::load(&docs_path, &args.collection, Format::Trec).await?;
    if docs.len() > MAX_DOCUMENTS {
        return Err(usage(format!("{}: {} documents; at most {MAX_DOCUMENTS}", docs_path.display(), docs.len())));
    }
    let mut ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    ids.sort_unstable();
    if let Some(twice) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(usage(format!("{}: document {:?} appears twice", docs_path.display(), twice[0])));
    }
    Ok(Inputs { docs, topics, qrels })
}

async fn read_eval_file<T: Send + 'static>(
    path: &Path,
    read: fn(&Path) -> Result<T, ragmesh_eval::Error>,
) -> anyhow::Result<T> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || read(&owned))
        .await
        .map_err(|err| anyhow::anyhow!("reading {} failed: {err}", path.display()))?
        .map_err(|err| usage(err.to_string()))
}

/// Runs `eval`.
pub async fn run(args: &EvalArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let mode = mode(args, global)?;
    let inputs = read_inputs(args).await?;
    let shards = args.shards as usize;
    let strategy = Strategy::from(args.split);
    let started = Instant::now();
    let assignment = tokio::task::spawn_blocking({
        let texts: Vec<(String, String)> =
            inputs.docs.iter().map(|d| (d.id.clone(), format!("{}\n{}", d.title, d.body))).collect();
        move || {
            let docs: Vec<SplitDoc<'_>> = texts.iter().map(|(id, text)| SplitDoc { id, text }).collect();
            split::split(&docs, shards, strategy)
        }
    })
    .await
    .map_err(|err| anyhow::anyhow!("splitting the documents failed: {err}"))?;
    eprintln!(
        "read {} documents and {} topics; split {strategy} into {shards} shards in {:.1} s: {:?} documents",
        inputs.docs.len(),
        inputs.topics.len(),
        started.elapsed().as_secs_f64(),
        split::sizes(&assignment, shards)
    );

    let report = match mode {
        Mode::Running(layout) => {
            let master = Master::connect(Target::from_args(global)?).await?;
            let settle = Duration::from_millis(args.settle_ms.unwrap_or(RUNNING_SETTLE_MS));
            evaluate(&master, &layout, args, &inputs, &assignment, settle).await?
        }
        Mode::Local => {
            let layout = Layout { baseline: local::BASELINE.to_owned(), shards: local::shard_names(shards) };
            let settle = Duration::from_millis(args.settle_ms.unwrap_or(local::SETTLE_MS));
            let mut signals = crate::demo::StopSignals::new()?;
            let mut mesh = local::LocalMesh::start(args.dir.as_deref(), shards).await?;
            let outcome = match mesh.master() {
                Ok(master) => tokio::select! {
                    outcome = evaluate(master, &layout, args, &inputs, &assignment, settle) => outcome,
                    signal = signals.next() => Err(anyhow::anyhow!("{signal}: evaluation stopped")),
                },
                Err(err) => Err(err),
            };
            let outcome = outcome.and_then(|report| mesh.check().map(|()| report));
            mesh.stop(outcome.is_err()).await?;
            outcome?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// How long a running mesh is given, after loading, for the agents' term summaries to reach the
/// master (three heartbeats of the default 1 s interval).
const RUNNING_SETTLE_MS: u64 = 3000;

/// Loads, waits `settle` (routing summaries), searches and builds the report.
async fn evaluate(
    master: &Master,
    layout: &Layout,
    args: &EvalArgs,
    inputs: &Inputs,
    assignment: &[usize],
    settle: Duration,
) -> anyhow::Result<Report> {
    let sizes = split::sizes(assignment, layout.shards.len());
    let concurrency = args.concurrency as usize;
    load::load_all(master, layout, &inputs.docs, assignment, args.batch as usize).await?;

    let expected: Vec<(String, usize)> = std::iter::once((layout.baseline.clone(), inputs.docs.len()))
        .chain(layout.shards.iter().cloned().zip(sizes.iter().copied()))
        .collect();
    let warnings = foreign_documents(&master.list_nodes().await?, &expected, &args.collection);
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    if !settle.is_zero() {
        eprintln!("waiting {} ms for the agents' term summaries to reach the master", settle.as_millis());
        tokio::time::sleep(settle).await;
    }

    let started = Instant::now();
    let mut base = Searched::new("one index", "raw")?;
    let mut others: Vec<Searched> =
        STRATEGIES.iter().map(|merge| Searched::new(merge, merge)).collect::<Result<_, _>>()?;
    let (timeout_ms, deadline) = crate::search::deadlines(Some(SEARCH_TIMEOUT_MS));
    let request = |query: &str, nodes: &[String], merge: &str| v1::SearchRequest {
        query: query.to_owned(),
        collections: vec![args.collection.clone()],
        limit: args.limit,
        nodes: nodes.to_vec(),
        timeout_ms,
        merge: merge.to_owned(),
        bypass_cache: true,
        ..Default::default()
    };
    let baseline = std::slice::from_ref(&layout.baseline);
    let merges: Vec<String> = others.iter().map(|o| o.merge.clone()).collect();
    // Every system answers one topic before the next; --concurrency topics at once, answers
    // recorded in topic order.
    let answers = futures::stream::iter(&inputs.topics)
        .map(|topic| {
            let (request, merges) = (&request, &merges);
            async move {
                // Lowercased so that words such as AND, OR and NOT in upper-case topics are
                // searched as words, not read as operators; the analyzer lowercases terms anyway.
                let query = query_of(topic.query_text(), args.require_all);
                let what = |name: &str| format!("topic {} ({name})", topic.id);
                // One node alone: its statistics are the collection's; raw skips their round trip.
                let one = master
                    .search(request(&query, baseline, "raw"), deadline)
                    .await
                    .map_err(|e| e.context(what("one index")))?;
                let mut shards = Vec::with_capacity(merges.len());
                for merge in merges {
                    let response = master
                        .search(request(&query, &layout.shards, merge), deadline)
                        .await
                        .map_err(|e| e.context(what(merge)))?;
                    shards.push(response);
                }
                Ok::<_, anyhow::Error>((topic, one, shards))
            }
        })
        .buffered(concurrency.max(1));
    futures::pin_mut!(answers);
    while let Some(answer) = answers.next().await {
        let (topic, one, shards) = answer?;
        base.record(&topic.id, &one)?;
        for (searched, response) in others.iter_mut().zip(&shards) {
            searched.record(&topic.id, response)?;
        }
    }
    eprintln!(
        "searched {} topics x {} systems in {:.1} s",
        inputs.topics.len(),
        others.len() + 1,
        started.elapsed().as_secs_f64()
    );
    let setup = Setup {
        documents: inputs.docs.len(),
        topics: inputs.topics.len(),
        judged: 0,
        split: Strategy::from(args.split).to_string(),
        collection: args.collection.clone(),
        limit: args.limit,
        baseline: (layout.baseline.clone(), inputs.docs.len()),
        shards: layout.shards.iter().cloned().zip(sizes).collect(),
        warnings,
    };
    let topic_ids: Vec<String> = inputs.topics.iter().map(|t| t.id.clone()).collect();
    report::build(setup, &base, &others, &inputs.qrels, &topic_ids)
}

/// The query a topic is searched with: its text lowercased, so that words such as AND, OR and
/// NOT in upper-case topics are searched as words, not read as operators (the analyzer
/// lowercases terms anyway); with `require_all`, every word required (`+word`, anything but
/// letters and digits a separator).
fn query_of(text: &str, require_all: bool) -> String {
    let lower = text.to_lowercase();
    if !require_all {
        return lower;
    }
    lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| format!("+{word}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What would make the nodes differ from "one index" and "its shards": documents of other
/// collections (BM25 statistics count every collection of a node, so they shift the scores), or
/// more or fewer documents of the evaluated one than were loaded (left from an earlier load).
pub fn foreign_documents(nodes: &[v1::NodeInfo], expected: &[(String, usize)], collection: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    for (name, count) in expected {
        let Some(node) = nodes.iter().find(|n| &n.name == name) else {
            warnings.push(format!("{name} is not listed by the master"));
            continue;
        };
        let own: u64 = node.collections.iter().filter(|c| c.name == collection).map(|c| c.doc_count).sum();
        let others: u64 = node.collections.iter().filter(|c| c.name != collection).map(|c| c.doc_count).sum();
        if own != *count as u64 {
            warnings.push(format!(
                "{name} holds {own} documents of {collection}, {count} loaded: documents left from an earlier \
                 load skew its figures (remove them, or use another --collection)"
            ));
        }
        if others > 0 {
            warnings.push(format!(
                "{name} also holds {others} documents of other collections: BM25 statistics count every \
                 collection of a node, so its scores are not exactly those of the documents loaded"
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Command};

    #[test]
    fn topics_are_searched_lowercased_and_with_require_all_every_word_required() {
        assert_eq!(query_of("Radio AND Waves", false), "radio and waves");
        assert_eq!(query_of("Radio-waves, OR (ionosphere)", true), "+radio +waves +or +ionosphere");
        assert_eq!(query_of(" ,; ", true), "");
    }

    #[test]
    fn the_local_mesh_settles_for_three_heartbeats() {
        let heartbeat: u64 = crate::demo::HEARTBEAT_INTERVAL_MS.parse().expect("a number");
        assert_eq!(local::SETTLE_MS, 3 * heartbeat);
    }

    fn parse(args: &[&str]) -> (EvalArgs, GlobalArgs) {
        let cli = Cli::try_parse_from(std::iter::once("ragmeshctl").chain(args.iter().copied())).expect("parses");
        match cli.command {
            Command::Eval(eval) => (eval, cli.global),
            other => panic!("not eval: {other:?}"),
        }
    }

    #[test]
    fn nodes_holding_other_documents_are_reported() {
        let node = |name: &str, collections: &[(&str, u64)]| v1::NodeInfo {
            name: name.to_owned(),
            collections: collections
                .iter()
                .map(|&(c, n)| v1::CollectionStats { name: c.to_owned(), doc_count: n })
                .collect(),
            ..Default::default()
        };
        let nodes =
            [node("base", &[("eval", 10)]), node("s1", &[("eval", 6), ("docs", 3)]), node("s2", &[("eval", 5)])];
        let expected = [("base".to_owned(), 10), ("s1".to_owned(), 6), ("s2".to_owned(), 4), ("gone".to_owned(), 1)];
        let warnings = foreign_documents(&nodes, &expected, "eval");
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].starts_with("s1 also holds 3 documents of other collections"), "{warnings:?}");
        assert!(warnings[1].starts_with("s2 holds 5 documents of eval, 4 loaded"), "{warnings:?}");
        assert!(warnings[2].starts_with("gone is not listed"), "{warnings:?}");
        assert!(foreign_documents(&nodes[..1], &expected[..1], "eval").is_empty());
    }

    #[test]
    fn running_mesh_needs_one_distinct_node_per_shard() {
        let (args, global) =
            parse(&["eval", "--vaswani", "d", "--shards", "2", "--baseline", "b", "--shard-nodes", "x,y"]);
        assert_eq!(
            mode(&args, &global).expect("mode"),
            Mode::Running(Layout { baseline: "b".into(), shards: vec!["x".into(), "y".into()] })
        );
        let (args, global) =
            parse(&["eval", "--vaswani", "d", "--shards", "3", "--baseline", "b", "--shard-nodes", "x,y"]);
        assert!(mode(&args, &global).expect_err("2 nodes, 3 shards").to_string().contains("one node per shard"));
        let (args, global) =
            parse(&["eval", "--vaswani", "d", "--shards", "2", "--baseline", "x", "--shard-nodes", "x,y"]);
        assert!(mode(&args, &global).expect_err("baseline is a shard").to_string().contains("distinct"));
    }

    #[test]
    fn a_configured_master_without_nodes_is_a_usage_error_unless_local() {
        let (args, global) = parse(&["--master", "m:7000", "eval", "--vaswani", "d"]);
        let err = mode(&args, &global).expect_err("which nodes?");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        let (args, global) = parse(&["--master", "m:7000", "eval", "--vaswani", "d", "--local"]);
        assert_eq!(mode(&args, &global).expect("local"), Mode::Local);
    }

    #[test]
    fn inputs_are_the_three_files_or_the_vaswani_layout() {
        let (args, _) = parse(&["eval", "--vaswani", "/c"]);
        let (docs, topics, qrels) = args.files().expect("files");
        assert_eq!(
            (docs.as_path(), topics.as_path(), qrels.as_path()),
            (Path::new("/c/doc-text.trec"), Path::new("/c/query-text.trec"), Path::new("/c/qrels"))
        );
        let (args, _) = parse(&["eval", "--docs", "d", "--topics", "t", "--qrels", "q", "--split", "clustered"]);
        assert_eq!(args.files().map(|f| f.2), Some("q".into()));
        assert_eq!(Strategy::from(args.split), Strategy::Clustered);
        let missing = Cli::try_parse_from(["ragmeshctl", "eval", "--docs", "d", "--topics", "t"]);
        assert!(missing.is_err(), "--qrels is required with --docs");
        let neither = Cli::try_parse_from(["ragmeshctl", "eval"]);
        assert!(neither.is_err(), "some input is required");
    }
}
