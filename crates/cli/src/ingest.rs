//! `ragmeshctl ingest`: load documents from files (`ragmesh_index::ingest`) and write them into
//! one shard group (every replica) through the master, batch by batch, with a progress bar on a
//! terminal.

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use ragmesh_index::ingest::{Format, IngestError, load_path};
use ragmesh_index::{Document, MAX_COLLECTION_CHARS};
use ragmesh_proto::ErrorKind;
use ragmesh_proto::v1;

use crate::args::{FormatArg, IngestArgs};
use crate::client::Master;
use crate::error::usage;

/// Deadline of one batch when `--timeout-ms` is not given: the master allows a node 60 s per
/// write, plus slack for the hop.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(70);

/// What one ingest wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IngestSummary {
    /// Documents written.
    pub documents: usize,
    /// The index generation after the last batch.
    pub generation: u64,
    /// The shard group written.
    pub shard: String,
    /// Log sequence of the last batch.
    pub seq: u64,
    /// Replicas that applied the last batch.
    pub applied_by: Vec<String>,
}

/// Where an ingest writes: a shard group, or the group of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteTarget {
    /// `--shard GROUP`.
    Shard(String),
    /// `--node NODE`.
    Node(String),
}

impl WriteTarget {
    /// The target of `args` (clap makes sure exactly one is given).
    pub fn of(args: &IngestArgs) -> anyhow::Result<Self> {
        let target = match (&args.shard, &args.node) {
            (Some(shard), _) => WriteTarget::Shard(shard.trim().to_owned()),
            (None, Some(node)) => WriteTarget::Node(node.trim().to_owned()),
            (None, None) => WriteTarget::Shard(String::new()),
        };
        match &target {
            WriteTarget::Shard(s) | WriteTarget::Node(s) if s.is_empty() => Err(usage(
                "name the shard group to write to with --shard (or a node of it with --node; see `ragmeshctl nodes`)",
            )),
            _ => Ok(target),
        }
    }

    fn request(&self, documents: Vec<v1::Document>) -> v1::IngestDocumentsRequest {
        match self {
            WriteTarget::Shard(shard) => {
                v1::IngestDocumentsRequest { shard: shard.clone(), documents, node: String::new() }
            }
            WriteTarget::Node(node) => {
                v1::IngestDocumentsRequest { node: node.clone(), documents, shard: String::new() }
            }
        }
    }
}

impl std::fmt::Display for WriteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteTarget::Shard(shard) => write!(f, "shard group {shard}"),
            WriteTarget::Node(node) => write!(f, "node {node}'s shard group"),
        }
    }
}

impl From<FormatArg> for Format {
    fn from(format: FormatArg) -> Self {
        match format {
            FormatArg::Auto => Format::Auto,
            FormatArg::Trec => Format::Trec,
            FormatArg::Jsonl => Format::Jsonl,
            FormatArg::Text => Format::Text,
        }
    }
}

/// Why a collection name would be refused by the node, checked before reading any file.
pub fn collection_problem(name: &str) -> Option<String> {
    let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name.is_empty() && name.len() <= MAX_COLLECTION_CHARS && valid_chars {
        return None;
    }
    Some(format!("--collection {name:?} is invalid: use 1-{MAX_COLLECTION_CHARS} characters from A-Z a-z 0-9 _ . -"))
}

/// The wire form of a document.
pub fn to_wire(doc: Document) -> v1::Document {
    v1::Document {
        id: doc.id,
        collection: doc.collection,
        title: doc.title,
        body: doc.body,
        metadata: doc.metadata.into_iter().collect(),
        acl: Some(v1::DocumentAcl {
            public: doc.acl.public,
            tenants: doc.acl.tenants.into_iter().collect(),
            subjects: doc
                .acl
                .subjects
                .into_iter()
                .map(|s| v1::SubjectRef { tenant: s.tenant, subject: s.subject })
                .collect(),
        }),
    }
}

/// Runs `ingest`: load, send in batches, print one summary line.
pub async fn run(master: &Master, args: &IngestArgs, timeout_ms: Option<u32>) -> anyhow::Result<()> {
    let target = WriteTarget::of(args)?;
    if let Some(problem) = collection_problem(&args.collection) {
        return Err(usage(problem));
    }
    let docs = load(&args.path, &args.collection, args.format.into()).await?;
    let deadline = timeout_ms.map_or(DEFAULT_BATCH_TIMEOUT, |ms| Duration::from_millis(u64::from(ms)));
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);

    let started = Instant::now();
    let bar = progress_bar(docs.len() as u64, &target.to_string());
    let result = send(master, &target, docs, batch, deadline, &bar).await;
    bar.finish_and_clear();
    let summary = result?;

    let elapsed = started.elapsed();
    let rate = summary.documents as f64 / elapsed.as_secs_f64().max(0.001);
    println!(
        "ingested {} into shard group {} in {:.1} s ({rate:.0} docs/s); last write seq {} applied by {}; generation {}",
        documents(summary.documents),
        summary.shard,
        elapsed.as_secs_f64(),
        summary.seq,
        if summary.applied_by.is_empty() { "-".to_owned() } else { summary.applied_by.join(", ") },
        summary.generation
    );
    Ok(())
}

/// Loads the documents on the blocking pool (a large tree takes a while to read); also used by
/// `action tx --ingest`.
pub(crate) async fn load(path: &Path, collection: &str, format: Format) -> anyhow::Result<Vec<Document>> {
    let owned_path = path.to_path_buf();
    let owned_collection = collection.to_owned();
    let loaded = tokio::task::spawn_blocking(move || load_path(&owned_path, &owned_collection, format))
        .await
        .map_err(|err| anyhow::anyhow!("reading {} failed: {err}", path.display()))?;
    let docs = loaded.map_err(|err| match err {
        // A missing path or a file that does not parse: the user fixes the input.
        IngestError::Read { .. } => usage(format!("{err}: check the path and its permissions")),
        IngestError::UnknownFormat { .. } | IngestError::File { .. } => usage(err.to_string()),
        other => usage(format!("{}: {other}", path.display())),
    })?;
    if docs.is_empty() {
        return Err(usage(format!(
            "no documents found in {}: with --format auto only .trec, .jsonl, .ndjson, .txt, .md \
             and .markdown files are read; pick a --format to read other files",
            path.display()
        )));
    }
    Ok(docs)
}

/// A bar with docs/s and ETA on a terminal; hidden (drawing nothing) when stderr is not one.
fn progress_bar(total: u64, target: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = "ingest into {msg} [{bar:30}] {pos}/{len} docs  {rate}  ETA {eta}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        let style = style
            .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} docs/s", state.per_sec());
            })
            .progress_chars("=> ");
        bar.set_style(style);
    }
    bar.set_message(target.to_owned());
    bar
}

/// Sends `docs` in batches of `batch`, stopping at the first failure with a message that names
/// the batch and how much was written before it.
async fn send(
    master: &Master,
    target: &WriteTarget,
    docs: Vec<Document>,
    batch: usize,
    deadline: Duration,
    bar: &ProgressBar,
) -> anyhow::Result<IngestSummary> {
    let total = docs.len();
    let mut written = 0;
    let mut summary = IngestSummary::default();
    let mut remaining = docs.into_iter().peekable();
    while remaining.peek().is_some() {
        let chunk: Vec<v1::Document> = remaining.by_ref().take(batch).map(to_wire).collect();
        let batch_label = describe_batch(&chunk, written, total);
        let count = chunk.len();
        match master.ingest(target.request(chunk), deadline).await {
            Ok(response) => {
                written += count;
                summary.generation = response.generation;
                summary.seq = response.seq;
                summary.applied_by = response
                    .replicas
                    .iter()
                    .filter(|r| r.status == v1::OutcomeStatus::Ok as i32)
                    .map(|r| r.node.clone())
                    .collect();
                summary.shard = response.shard;
                bar.inc(count as u64);
            }
            Err(status) if ErrorKind::of(&status) == ErrorKind::InvalidArgument => {
                anyhow::bail!(
                    "{target} rejected {batch_label}: {}; fix the input and ingest again \
                     ({} written before this batch)",
                    status.message(),
                    documents(written)
                );
            }
            Err(status) => {
                let err = master.describe(&format!("ingest of {batch_label} into {target}"), &status);
                if written == 0 {
                    return Err(err);
                }
                anyhow::bail!("{err:#} ({} of {total} had been written)", documents(written));
            }
        }
    }
    summary.documents = written;
    Ok(summary)
}

/// `1 document`, `3 documents`.
fn documents(n: usize) -> String {
    if n == 1 { "1 document".to_owned() } else { format!("{n} documents") }
}

/// Which part of the input a batch is, for messages: `documents 501-1000 of 1234 (ids "a" to
/// "b")`, or `document 7 of 9 (id "x")`.
fn describe_batch(chunk: &[v1::Document], written: usize, total: usize) -> String {
    let first = written + 1;
    let last = written + chunk.len();
    let first_id = chunk.first().map_or("", |d| d.id.as_str());
    let last_id = chunk.last().map_or("", |d| d.id.as_str());
    if chunk.len() == 1 {
        format!("document {first} of {total} (id {first_id:?})")
    } else {
        format!("documents {first}-{last} of {total} (ids {first_id:?} to {last_id:?})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_are_checked_like_the_index_does() {
        assert!(collection_problem("docs").is_none());
        assert!(collection_problem("a.b_c-1").is_none());
        assert!(collection_problem("").is_some());
        assert!(collection_problem("has space").is_some());
        assert!(collection_problem(&"x".repeat(MAX_COLLECTION_CHARS + 1)).is_some());
    }

    #[test]
    fn batches_are_described_by_their_place_in_the_input() {
        let doc = |id: &str| v1::Document { id: id.to_owned(), ..Default::default() };
        assert_eq!(describe_batch(&[doc("a"), doc("b")], 500, 1234), "documents 501-502 of 1234 (ids \"a\" to \"b\")");
        assert_eq!(describe_batch(&[doc("x")], 6, 9), "document 7 of 9 (id \"x\")");
        assert_eq!(documents(1), "1 document");
        assert_eq!(documents(0), "0 documents");
    }

    #[test]
    fn documents_keep_every_field_on_the_wire() {
        let doc = Document {
            id: "1".into(),
            collection: "c".into(),
            title: "t".into(),
            body: "b".into(),
            metadata: [("topic".to_owned(), "tls".to_owned())].into(),
            acl: ragmesh_index::Acl::tenant("acme"),
        };
        let wire = to_wire(doc);
        assert_eq!((wire.id.as_str(), wire.collection.as_str()), ("1", "c"));
        assert_eq!(wire.metadata.get("topic").map(String::as_str), Some("tls"));
        assert_eq!(wire.acl.map(|acl| acl.tenants), Some(vec!["acme".to_owned()]));
    }

    #[tokio::test]
    async fn an_empty_directory_is_a_usage_error_that_names_the_formats() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("image.png"), "x").expect("write");
        let err = load(dir.path(), "docs", Format::Auto).await.expect_err("nothing to load");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains(".jsonl"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_path_is_a_usage_error() {
        let err = load(Path::new("/nonexistent/corpus"), "docs", Format::Auto).await.expect_err("missing");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains("/nonexistent/corpus"), "{err}");
    }
}
