//! `ragmeshctl action ...`: remote actions over the master's `MasterService` (list what nodes
//! offer, run on some or all nodes, jobs, transactions, the audit log).
//!
//! The async functions only call the master and print; building requests, reading ids and
//! times, rendering (text and `--json`) and the exit status of an outcome are pure functions,
//! unit-tested below. Exit statuses: 0 every node ok (or committed), 2 accepted but not ok
//! everywhere (or aborted), 3 not finished yet, 1 runtime failure, 64 a refused request
//! (see [`crate::error`]).
//!
//! Secrets: argument values given with `--arg` are never printed (a `CallArg`'s `Debug` hides
//! them, and no output echoes the call's arguments); the defaults and allowed values of
//! arguments the schema marks secret are shown as `***`; the audit log comes from the master
//! with secrets already masked.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ragmesh_proto::{ErrorKind, v1};
use serde_json::{Value, json};
use tonic::Status;

use crate::args::{
    ActionCommand, ActionHistoryArgs, ActionListArgs, ActionRunArgs, ActionStatusArgs, ActionTransactionsArgs,
    ActionTxArgs, ActionWatchArgs, CallArg,
};
use crate::client::Master;
use crate::error::{ActionIncomplete, EXIT_ACTION_FAILED, EXIT_ACTION_PENDING, usage};
use crate::render::{Column, Table, clean, millis};

/// Deadline of `action run` when `--timeout-ms` is not given: the call waits for every node.
pub const DEFAULT_RUN_DEADLINE: Duration = Duration::from_secs(600);
/// Vote deadline of a transaction when `--timeout-ms` is not given (the master's default).
pub const DEFAULT_VOTE_TIMEOUT_MS: u32 = 10_000;
/// Time a transaction's RPC waits beyond its vote deadline, for the decision and its delivery.
pub const TX_DECISION_SLACK: Duration = Duration::from_secs(30);
/// Most documents one `action tx --ingest` sends (one request; bulk loads use `ingest`).
pub const MAX_TX_DOCUMENTS: usize = 10_000;
/// Longest idempotency key accepted.
pub const MAX_KEY_CHARS: usize = 128;
/// How a secret value is shown.
pub const REDACTED: &str = "***";
/// Width of the OUTPUT and MESSAGE columns.
const TEXT_COLUMN_WIDTH: usize = 60;
/// Nodes named in an exit message before "…".
const NAMED_IN_MESSAGE: usize = 5;

/// Runs one `action` subcommand. `timeout_ms` is the global `--timeout-ms`.
pub async fn run(master: &Master, command: &ActionCommand, timeout_ms: Option<u32>) -> anyhow::Result<()> {
    match command {
        ActionCommand::List(args) => list(master, args).await,
        ActionCommand::Run(args) => run_action(master, args, timeout_ms).await,
        ActionCommand::Status(args) => status(master, args).await,
        ActionCommand::Watch(args) => watch(master, args).await,
        ActionCommand::Tx(args) => transaction(master, args, timeout_ms).await,
        ActionCommand::Transactions(args) => transactions(master, args).await,
        ActionCommand::History(args) => history(master, args).await,
    }
}

/// Checks what can be checked without the master (ids, `--arg`, `--since`, the shape of a
/// transaction, idempotency keys), so a wrong command line exits 64 before connecting.
pub fn precheck(command: &ActionCommand) -> anyhow::Result<()> {
    match command {
        ActionCommand::Run(args) => {
            let key = args.idempotency_key.clone().unwrap_or_else(fresh_key);
            run_request(args, &key).map(|_| ())
        }
        ActionCommand::Status(args) => operation_id(&args.id).map(|_| ()).map_err(usage),
        ActionCommand::Watch(args) => match operation_id(&args.job).map_err(usage)? {
            OperationId::Job(_) => Ok(()),
            OperationId::Tx(_) => Err(usage(format!(
                "{} is a transaction: `ragmeshctl action status {}` shows it (watch follows jobs, job-N)",
                args.job, args.job
            ))),
        },
        ActionCommand::Tx(args) => {
            if let Some(problem) = args.idempotency_key.as_deref().and_then(key_problem) {
                return Err(usage(problem));
            }
            tx_plan(args).map(|_| ())
        }
        ActionCommand::History(args) => history_request(args, SystemTime::now()).map(|_| ()).map_err(usage),
        ActionCommand::List(_) | ActionCommand::Transactions(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The async shells.

async fn list(master: &Master, args: &ActionListArgs) -> anyhow::Result<()> {
    let response =
        master.list_node_actions(args.nodes.clone()).await.map_err(|s| refusal(master, "list actions", &s))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list_json(&response.nodes))?);
    } else {
        print!("{}", list_text(&response.nodes));
    }
    Ok(())
}

async fn run_action(master: &Master, args: &ActionRunArgs, timeout_ms: Option<u32>) -> anyhow::Result<()> {
    let key = match &args.idempotency_key {
        Some(key) => key.clone(),
        None => fresh_key(),
    };
    let request = run_request(args, &key)?;
    if args.idempotency_key.is_none() && !args.json {
        // Before the call: if it fails on the way, the user still has the key to retry with.
        eprintln!("{}", key_line(&key));
    }
    let deadline = timeout_ms.map_or(DEFAULT_RUN_DEADLINE, |ms| Duration::from_millis(u64::from(ms)));
    let response = master
        .execute_action(request, deadline)
        .await
        .map_err(|s| with_retry_hint(refusal(master, "run action", &s), &s, &key))?;
    let job = response
        .job
        .ok_or_else(|| anyhow::anyhow!("run action: the master answered without a job: upgrade the master"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&call_json(&key, response.replayed, "job", job_json(&job)))?);
    } else {
        print!("{}", job_text(&job));
        if args.output {
            print!("{}", outputs_text(&job));
        }
        print!("{}", run_footer(&job, &key, response.replayed, args.detach));
    }
    if args.detach {
        return Ok(());
    }
    verdict(job_verdict(&job))
}

async fn status(master: &Master, args: &ActionStatusArgs) -> anyhow::Result<()> {
    match operation_id(&args.id).map_err(usage)? {
        OperationId::Job(id) => {
            let response = master.get_action_job(&id).await.map_err(|s| refusal(master, "get action job", &s))?;
            let job = response.job.ok_or_else(|| anyhow::anyhow!("the master answered without a job"))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&job_json(&job))?);
            } else {
                print!("{}", job_text(&job));
                if args.output {
                    print!("{}", outputs_text(&job));
                }
                println!("{}", job_summary(&job));
            }
            verdict(job_verdict(&job))
        }
        OperationId::Tx(id) => {
            let response = master.get_transaction(&id).await.map_err(|s| refusal(master, "get transaction", &s))?;
            let tx =
                response.transaction.ok_or_else(|| anyhow::anyhow!("the master answered without a transaction"))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&tx_json(&tx))?);
            } else {
                print!("{}", tx_text(&tx));
            }
            verdict(tx_verdict(&tx))
        }
    }
}

async fn watch(master: &Master, args: &ActionWatchArgs) -> anyhow::Result<()> {
    let OperationId::Job(id) = operation_id(&args.job).map_err(usage)? else {
        return Err(usage(format!(
            "{} is a transaction: `ragmeshctl action status {}` shows it (watch follows jobs, job-N)",
            args.job, args.job
        )));
    };
    let mut stream = master.watch_action_job(&id).await.map_err(|s| refusal(master, "watch action job", &s))?;
    let live = !args.json && crate::render::stdout_supports_ansi();
    let mut previous: Option<v1::ActionJob> = None;
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let job = match next {
            Ok(Some(v1::WatchActionJobResponse { job: Some(job) })) => job,
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!(
                "the master ended the watch of {id} before the job finished: see `ragmeshctl action status {id}`"
            ),
            Err(status) => return Err(refusal(master, "watch action job", &status)),
        };
        if args.json {
            println!("{}", serde_json::to_string(&job_json(&job))?);
        } else if live {
            // Home and clear the screen, then draw: the view replaces itself in place, like `top`.
            println!("\x1b[H\x1b[2J{}{}", job_text(&job), job_summary(&job));
        } else {
            for line in changes(previous.as_ref(), &job) {
                println!("{line}");
            }
            if job.finished {
                println!("{}", job_summary(&job));
            }
        }
        let _ = std::io::stdout().flush();
        if job.finished {
            return verdict(job_verdict(&job));
        }
        previous = Some(job);
    }
}

async fn transaction(master: &Master, args: &ActionTxArgs, timeout_ms: Option<u32>) -> anyhow::Result<()> {
    let plan = tx_plan(args)?;
    let plan_selection = match &plan {
        TxPlan::Selected { name, selector, arguments } => {
            let call = v1::ActionCall { action: name.clone(), arguments: arguments.clone() };
            let operation = v1::TransactionOperation { kind: Some(v1::transaction_operation::Kind::Action(call)) };
            Some((selector.clone(), operation))
        }
        _ => None,
    };
    let key = match &args.idempotency_key {
        Some(key) => key.clone(),
        None => fresh_key(),
    };
    if let Some(problem) = key_problem(&key) {
        return Err(usage(problem));
    }
    let parts = match plan {
        TxPlan::Action { name, nodes, arguments } => action_parts(&name, &nodes, &arguments),
        TxPlan::Selected { .. } => Vec::new(),
        TxPlan::Writes(writes) => {
            let mut loaded = Vec::new();
            for (path, shard) in writes {
                let documents = crate::ingest::load(&path, &args.collection, args.format.into()).await?;
                loaded.push((shard, documents.into_iter().map(crate::ingest::to_wire).collect()));
            }
            write_parts(loaded)?
        }
    };
    if args.idempotency_key.is_none() && !args.json {
        eprintln!("{}", key_line(&key));
    }
    let vote_ms = timeout_ms.unwrap_or(DEFAULT_VOTE_TIMEOUT_MS);
    let deadline = Duration::from_millis(u64::from(vote_ms)) + TX_DECISION_SLACK;
    let (selector, operation) = match plan_selection {
        Some((selector, operation)) => (Some(selector), Some(operation)),
        None => (None, None),
    };
    let request =
        v1::ExecuteTransactionRequest { parts, timeout_ms: vote_ms, idempotency_key: key.clone(), selector, operation };
    let response = master
        .execute_transaction(request, deadline)
        .await
        .map_err(|s| with_retry_hint(refusal(master, "run transaction", &s), &s, &key))?;
    let tx = response.transaction.ok_or_else(|| {
        anyhow::anyhow!("run transaction: the master answered without a transaction: upgrade the master")
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&call_json(&key, response.replayed, "transaction", tx_json(&tx)))?);
    } else {
        print!("{}", tx_text(&tx));
        if response.replayed {
            println!("replayed: idempotency key {key} was used before with these parameters; nothing ran again");
        }
    }
    verdict(tx_verdict(&tx))
}

async fn transactions(master: &Master, args: &ActionTransactionsArgs) -> anyhow::Result<()> {
    let request = v1::ListTransactionsRequest { include_finished: args.all, limit: args.limit };
    let response = master.list_transactions(request).await.map_err(|s| refusal(master, "list transactions", &s))?;
    if args.json {
        let list: Vec<Value> = response.transactions.iter().map(tx_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", transactions_table(&response.transactions, SystemTime::now(), args.all));
    }
    Ok(())
}

async fn history(master: &Master, args: &ActionHistoryArgs) -> anyhow::Result<()> {
    let request = history_request(args, SystemTime::now()).map_err(usage)?;
    let response = master.action_history(request).await.map_err(|s| refusal(master, "action history", &s))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&history_json(&response))?);
    } else {
        print!("{}", history_table(&response));
    }
    Ok(())
}

/// `Ok` when there is nothing incomplete, else the error carrying the exit status.
fn verdict(incomplete: Option<ActionIncomplete>) -> anyhow::Result<()> {
    match incomplete {
        None => Ok(()),
        Some(incomplete) => Err(anyhow::Error::new(incomplete)),
    }
}

/// A failed call as a message. A request the master refused as wrong (bad arguments, unknown
/// node or job, an idempotency key reused with other parameters) is a usage error (64); a
/// permission refusal and every other failure stay runtime failures (1).
fn refusal(master: &Master, what: &str, status: &Status) -> anyhow::Error {
    let err = master.describe(what, status);
    if is_refused_request(status) { usage(format!("{err:#}")) } else { err }
}

/// Whether `status` says the request itself was wrong (the caller must change it): bad
/// arguments, an unknown node or job, an idempotency key reused with other parameters (the
/// master answers FAILED_PRECONDITION).
pub fn is_refused_request(status: &Status) -> bool {
    use std::error::Error as _;
    status.source().is_none()
        && matches!(
            ErrorKind::of(status),
            ErrorKind::InvalidArgument | ErrorKind::NotFound | ErrorKind::AlreadyExists | ErrorKind::FailedPrecondition
        )
}

/// After a failure that leaves open whether the master started the call (deadline, lost
/// connection, an unknown fault), says how to get its result without running it again.
fn with_retry_hint(err: anyhow::Error, status: &Status, key: &str) -> anyhow::Error {
    if !may_have_run(status) {
        return err;
    }
    anyhow::anyhow!(
        "{err:#}; the call may have run: retry with --idempotency-key {key} to get its result without running it again"
    )
}

/// Whether a failed call may still have run on the nodes: the answer was lost or late, not a
/// refusal.
pub fn may_have_run(status: &Status) -> bool {
    use std::error::Error as _;
    status.source().is_some()
        || matches!(
            ErrorKind::of(status),
            ErrorKind::DeadlineExceeded
                | ErrorKind::Unavailable
                | ErrorKind::Cancelled
                | ErrorKind::Internal
                | ErrorKind::Unknown
        )
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// A fresh random idempotency key (`rk-` and 32 hex digits: 128 random bits).
pub fn fresh_key() -> String {
    format!("rk-{:032x}", rand::random::<u128>())
}

/// Why an idempotency key given with `--idempotency-key` cannot be used, if it cannot.
pub fn key_problem(key: &str) -> Option<String> {
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Some(format!(
            "--idempotency-key must be 1-{MAX_KEY_CHARS} printable ASCII characters without spaces \
             (or leave it out for a fresh key)"
        ));
    }
    None
}

/// The line that tells the user the key sent, and what it is good for.
pub fn key_line(key: &str) -> String {
    format!("idempotency key {key} (to retry safely, repeat the command with --idempotency-key {key})")
}

/// `--arg`s as the call's argument map; a name given twice is a usage error (never showing a value).
pub fn call_arguments(args: &[CallArg]) -> anyhow::Result<HashMap<String, String>> {
    let mut arguments = HashMap::new();
    for arg in args {
        if arguments.insert(arg.name.clone(), arg.value.expose().to_owned()).is_some() {
            return Err(usage(format!("--arg {} is given twice: pass each argument once", arg.name)));
        }
    }
    Ok(arguments)
}

/// The wire selector of `action run`.
pub fn selector(args: &ActionRunArgs) -> anyhow::Result<v1::NodeSelector> {
    let mut labels = HashMap::new();
    for (key, value) in &args.labels {
        if let Some(previous) = labels.insert(key.clone(), value.clone())
            && previous != *value
        {
            return Err(usage(format!("--label {key} is given with two values: a node carries one value per label")));
        }
    }
    let named = args.nodes.iter().chain(&args.shards);
    if named.clone().any(|name| name.trim().is_empty()) {
        return Err(usage("--node and --shard need a name (see `ragmeshctl nodes`)"));
    }
    Ok(v1::NodeSelector { nodes: args.nodes.clone(), all: args.all, labels, shards: args.shards.clone() })
}

/// The `ExecuteAction` request of `action run` with idempotency key `key`.
pub fn run_request(args: &ActionRunArgs, key: &str) -> anyhow::Result<v1::ExecuteActionRequest> {
    if let Some(problem) = key_problem(key) {
        return Err(usage(problem));
    }
    if args.name.trim().is_empty() {
        return Err(usage("the action name is empty: see `ragmeshctl action list`"));
    }
    Ok(v1::ExecuteActionRequest {
        call: Some(v1::ActionCall { action: args.name.trim().to_owned(), arguments: call_arguments(&args.args)? }),
        selector: Some(selector(args)?),
        max_parallel: args.max_parallel.unwrap_or(0),
        max_fail_percent: args.max_fail_percent,
        idempotency_key: key.to_owned(),
        detach: args.detach,
    })
}

/// What a transaction does, checked before any file is read.
#[derive(Debug, Clone, PartialEq)]
pub enum TxPlan {
    /// One transactional action on every node, with the same arguments.
    Action {
        /// The action.
        name: String,
        /// The participants.
        nodes: Vec<String>,
        /// Its arguments.
        arguments: HashMap<String, String>,
    },
    /// One transactional action, with the same arguments, on every node the master selects.
    Selected {
        /// The action.
        name: String,
        /// Which nodes (`--all` or `--label`).
        selector: v1::NodeSelector,
        /// Its arguments.
        arguments: HashMap<String, String>,
    },
    /// Documents from each file into the shard group paired with it.
    Writes(Vec<(PathBuf, String)>),
}

/// Reads `action tx`'s flags: an action on distinct nodes, or `--ingest`/`--shard` pairs.
pub fn tx_plan(args: &ActionTxArgs) -> anyhow::Result<TxPlan> {
    if let Some(name) = &args.name
        && (args.all || !args.labels.is_empty())
    {
        let mut labels = HashMap::new();
        for (key, value) in &args.labels {
            if let Some(previous) = labels.insert(key.clone(), value.clone())
                && previous != *value
            {
                return Err(usage(format!(
                    "--label {key} is given with two values: a node carries one value per label"
                )));
            }
        }
        let selector = v1::NodeSelector { all: args.all, labels, ..Default::default() };
        return Ok(TxPlan::Selected { name: name.trim().to_owned(), selector, arguments: call_arguments(&args.args)? });
    }
    if let Some(name) = &args.name {
        let mut nodes: Vec<String> = Vec::new();
        for node in &args.nodes {
            let node = node.trim();
            if node.is_empty() {
                return Err(usage("--node needs a name (see `ragmeshctl nodes`)"));
            }
            if nodes.iter().any(|seen| seen == node) {
                return Err(usage(format!("--node {node} is given twice: a node takes part once")));
            }
            nodes.push(node.to_owned());
        }
        if nodes.is_empty() {
            return Err(usage("name the participants with --node (at least one)"));
        }
        return Ok(TxPlan::Action { name: name.trim().to_owned(), nodes, arguments: call_arguments(&args.args)? });
    }
    if args.ingest.len() != args.shards.len() || args.ingest.is_empty() {
        return Err(usage(format!(
            "--ingest and --shard go in pairs (got {} --ingest and {} --shard): pass `--ingest FILE \
             --shard S` for each write",
            args.ingest.len(),
            args.shards.len()
        )));
    }
    if let Some(problem) = crate::ingest::collection_problem(&args.collection) {
        return Err(usage(problem));
    }
    let mut writes = Vec::new();
    for (path, shard) in args.ingest.iter().zip(&args.shards) {
        if shard.trim().is_empty() {
            return Err(usage("--shard needs a shard group name (see `ragmeshctl nodes`)"));
        }
        writes.push((path.clone(), shard.trim().to_owned()));
    }
    Ok(TxPlan::Writes(writes))
}

/// One part per node, each running `name` with the same arguments.
pub fn action_parts(name: &str, nodes: &[String], arguments: &HashMap<String, String>) -> Vec<v1::TransactionPart> {
    let mut parts = Vec::new();
    for node in nodes {
        let call = v1::ActionCall { action: name.to_owned(), arguments: arguments.clone() };
        parts.push(v1::TransactionPart {
            node: node.clone(),
            shard: String::new(),
            operation: Some(v1::TransactionOperation { kind: Some(v1::transaction_operation::Kind::Action(call)) }),
        });
    }
    parts
}

/// One write part per shard group (files for the same group are merged, in order); at most
/// [`MAX_TX_DOCUMENTS`] documents in all.
pub fn write_parts(writes: Vec<(String, Vec<v1::Document>)>) -> anyhow::Result<Vec<v1::TransactionPart>> {
    let total: usize = writes.iter().map(|(_, docs)| docs.len()).sum();
    if total > MAX_TX_DOCUMENTS {
        return Err(usage(format!(
            "{total} documents are more than one transaction takes ({MAX_TX_DOCUMENTS}): split them, \
             or load them with `ragmeshctl ingest`"
        )));
    }
    let mut by_shard: Vec<(String, Vec<v1::Document>)> = Vec::new();
    for (shard, documents) in writes {
        match by_shard.iter_mut().find(|(seen, _)| *seen == shard) {
            Some((_, merged)) => merged.extend(documents),
            None => by_shard.push((shard, documents)),
        }
    }
    let mut parts = Vec::new();
    for (shard, upserts) in by_shard {
        let write = v1::DocumentWrite { upserts, deletes: Vec::new() };
        parts.push(v1::TransactionPart {
            node: String::new(),
            shard,
            operation: Some(v1::TransactionOperation { kind: Some(v1::transaction_operation::Kind::Write(write)) }),
        });
    }
    Ok(parts)
}

/// A job or a transaction, as `action status` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationId {
    /// `job-N`.
    Job(String),
    /// 32 hex digits (lower-cased).
    Tx(String),
}

/// Reads `job-N` or a transaction id.
pub fn operation_id(text: &str) -> Result<OperationId, String> {
    let text = text.trim();
    if let Some(number) = text.strip_prefix("job-")
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
    {
        return Ok(OperationId::Job(text.to_owned()));
    }
    if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(OperationId::Tx(text.to_ascii_lowercase()));
    }
    Err(format!(
        "{:?} is neither a job id (job-N, printed by `action run`) nor a transaction id (32 hex \
         digits, see `ragmeshctl action transactions`)",
        clean(text)
    ))
}

/// The `ActionHistory` request of `action history` (`now` anchors ages like `2h`).
pub fn history_request(args: &ActionHistoryArgs, now: SystemTime) -> Result<v1::ActionHistoryRequest, String> {
    let since_unix_ms = match &args.since {
        Some(since) => parse_since(since, now)?,
        None => 0,
    };
    Ok(v1::ActionHistoryRequest {
        node: args.node.clone().unwrap_or_default(),
        action: args.action.clone().unwrap_or_default(),
        subject: args.subject.clone().unwrap_or_default(),
        since_unix_ms,
        until_unix_ms: 0,
        before_sequence: args.before.unwrap_or(0),
        limit: args.limit,
    })
}

/// `--since`: RFC 3339 (`2026-01-01T00:00:00Z`) or an age before `now` (`90s`, `15m`, `2h`,
/// `7d`), as Unix milliseconds.
pub fn parse_since(text: &str, now: SystemTime) -> Result<u64, String> {
    let text = text.trim();
    let invalid = || {
        format!("--since {:?} is neither RFC 3339 (2026-01-01T00:00:00Z) nor an age (90s, 15m, 2h, 7d)", clean(text))
    };
    let unit = text.chars().last().ok_or_else(invalid)?;
    let seconds_per_unit = match unit {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        _ => None,
    };
    if let Some(per_unit) = seconds_per_unit
        && let Ok(count) = text[..text.len() - 1].parse::<u64>()
    {
        let age = Duration::from_secs(count.checked_mul(per_unit).ok_or_else(invalid)?);
        let at = now.checked_sub(age).unwrap_or(UNIX_EPOCH);
        return Ok(unix_ms(at));
    }
    let timestamp = prost_types::Timestamp::from_str(text).map_err(|_| invalid())?;
    let at = SystemTime::try_from(timestamp).map_err(|_| invalid())?;
    if at < UNIX_EPOCH {
        return Err(invalid());
    }
    Ok(unix_ms(at))
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------------------
// Outcomes and exit statuses.

/// A wire enum's value name without its prefix, lower-cased (`ACTION_STATUS_OK` -> `ok`).
fn enum_word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_ascii_lowercase()
}

/// How an action run ended: `ok`, `failed`, `timeout`, `error` (`unknown` when not set).
pub fn action_status_word(status: i32) -> String {
    match v1::ActionStatus::try_from(status) {
        Ok(v1::ActionStatus::Unspecified) | Err(_) => "unknown".to_owned(),
        Ok(status) => enum_word(status.as_str_name(), "ACTION_STATUS_"),
    }
}

/// A node outcome status in the search vocabulary: `ok`, `timeout`, `unavailable`, `error`, ...
pub fn outcome_word(status: i32) -> String {
    match v1::OutcomeStatus::try_from(status) {
        Ok(v1::OutcomeStatus::Unspecified) | Err(_) => "unknown".to_owned(),
        Ok(status) => enum_word(status.as_str_name(), "OUTCOME_STATUS_"),
    }
}

/// Where a node stands in a job: `pending`, `running`, `done`, `not_started`, `unknown`.
pub fn state_word(state: i32) -> String {
    match v1::NodeActionState::try_from(state) {
        Ok(v1::NodeActionState::Unspecified) | Err(_) => "unknown".to_owned(),
        Ok(state) => enum_word(state.as_str_name(), "NODE_ACTION_STATE_"),
    }
}

/// One word for a node's outcome: for a node that answered, how the action ended (`ok`,
/// `failed`, `timeout`, `error`); for one that did not, why (`timeout`, `unavailable`, `error`);
/// else its state (`pending`, `running`, `not_started`, `unknown`).
pub fn node_status(outcome: &v1::NodeActionOutcome) -> String {
    match v1::NodeActionState::try_from(outcome.state) {
        Ok(v1::NodeActionState::Done) => match v1::OutcomeStatus::try_from(outcome.status) {
            Ok(v1::OutcomeStatus::Ok) => match &outcome.result {
                Some(result) => action_status_word(result.status),
                None => "unknown".to_owned(),
            },
            _ => outcome_word(outcome.status),
        },
        _ => state_word(outcome.state),
    }
}

/// Why a job is not a success on every node, with the exit status to report; `None` when every
/// selected node ran the action ok.
pub fn job_verdict(job: &v1::ActionJob) -> Option<ActionIncomplete> {
    let mut bad = Vec::new();
    let mut waiting = 0;
    for outcome in &job.nodes {
        match node_status(outcome).as_str() {
            "ok" => {}
            "pending" | "running" => waiting += 1,
            other => bad.push(format!("{}: {other}", outcome.node)),
        }
    }
    let total = job.nodes.len();
    if !bad.is_empty() {
        let mut named = bad.iter().take(NAMED_IN_MESSAGE).cloned().collect::<Vec<_>>().join(", ");
        if bad.len() > NAMED_IN_MESSAGE {
            named.push_str(", …");
        }
        let message = format!("{}: {} of {total} nodes did not run ok ({named})", job.job_id, bad.len());
        return Some(ActionIncomplete { code: EXIT_ACTION_FAILED, message });
    }
    if !job.finished || waiting > 0 {
        let message = format!(
            "{id} has not finished ({waiting} of {total} nodes pending or running): follow it with \
             `ragmeshctl action watch {id}`",
            id = job.job_id
        );
        return Some(ActionIncomplete { code: EXIT_ACTION_PENDING, message });
    }
    if total == 0 {
        let message = format!("{}: no node was selected", job.job_id);
        return Some(ActionIncomplete { code: EXIT_ACTION_FAILED, message });
    }
    None
}

/// Why a transaction is not committed, with the exit status; `None` once commit is decided
/// (participants that have not acknowledged yet are shown, and will be sent the decision).
pub fn tx_verdict(tx: &v1::TransactionStatus) -> Option<ActionIncomplete> {
    let why = if tx.message.is_empty() { String::new() } else { format!(": {}", clean(&tx.message)) };
    match v1::TransactionDecision::try_from(tx.decision) {
        Ok(v1::TransactionDecision::Commit) => None,
        Ok(v1::TransactionDecision::Abort) => Some(ActionIncomplete {
            code: EXIT_ACTION_FAILED,
            message: format!("transaction {} aborted{why}", tx.tx_id),
        }),
        Ok(v1::TransactionDecision::Unspecified) | Err(_) => Some(ActionIncomplete {
            code: EXIT_ACTION_PENDING,
            message: format!(
                "transaction {id} is not decided yet ({}){why}: see `ragmeshctl action status {id}`",
                phase_word(tx.phase),
                id = tx.tx_id
            ),
        }),
    }
}

/// `preparing`, `committing`, `aborting`, `committed`, `aborted`.
pub fn phase_word(phase: i32) -> String {
    match v1::TransactionPhase::try_from(phase) {
        Ok(v1::TransactionPhase::Unspecified) | Err(_) => "unknown".to_owned(),
        Ok(phase) => enum_word(phase.as_str_name(), "TRANSACTION_PHASE_"),
    }
}

/// `commit`, `abort`, or `none`.
pub fn decision_word(decision: i32) -> String {
    match v1::TransactionDecision::try_from(decision) {
        Ok(v1::TransactionDecision::Unspecified) | Err(_) => "none".to_owned(),
        Ok(decision) => enum_word(decision.as_str_name(), "TRANSACTION_DECISION_"),
    }
}

/// `yes`, `no`, or `-` (no vote yet).
pub fn vote_word(vote: i32) -> String {
    match v1::ParticipantVote::try_from(vote) {
        Ok(v1::ParticipantVote::Unspecified) | Err(_) => "-".to_owned(),
        Ok(vote) => enum_word(vote.as_str_name(), "PARTICIPANT_VOTE_"),
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering: text.

/// `exit 3` or `http 503` from the last step that has one, else `-`.
pub fn code_cell(result: Option<&v1::ActionResult>) -> String {
    let Some(result) = result else { return "-".to_owned() };
    for step in result.steps.iter().rev() {
        if let Some(code) = step.exit_code {
            return format!("exit {code}");
        }
        if let Some(status) = step.http_status {
            return format!("http {status}");
        }
    }
    "-".to_owned()
}

fn first_line(text: &str) -> Option<String> {
    text.lines().map(clean).find(|line| !line.is_empty())
}

/// The first line of a node's output, or its message: the message first when it did not end ok.
pub fn summary_line(outcome: &v1::NodeActionOutcome) -> String {
    let result = outcome.result.as_ref();
    let last_step = result.and_then(|r| r.steps.last());
    let message =
        [result.map(|r| r.message.as_str()), last_step.map(|s| s.message.as_str()), Some(outcome.message.as_str())]
            .into_iter()
            .flatten()
            .find_map(first_line);
    let output = last_step.and_then(|step| first_line(&step.stdout).or_else(|| first_line(&step.stderr)));
    let (first, second) = if node_status(outcome) == "ok" { (output, message) } else { (message, output) };
    first.or(second).unwrap_or_default()
}

/// One row per node: NODE, STATE, STATUS, CODE, DURATION, OUTPUT.
pub fn job_text(job: &v1::ActionJob) -> String {
    let mut table = Table::new(vec![
        Column::left("NODE"),
        Column::left("STATE"),
        Column::left("STATUS"),
        Column::left("CODE"),
        Column::right("DURATION"),
        Column::left("OUTPUT").max_width(TEXT_COLUMN_WIDTH),
    ]);
    for outcome in &job.nodes {
        table.push(node_row(outcome));
    }
    if table.is_empty() {
        return "no node selected\n".to_owned();
    }
    table.render()
}

fn node_row(outcome: &v1::NodeActionOutcome) -> Vec<String> {
    let duration = outcome.result.as_ref().map_or_else(|| "-".to_owned(), |r| millis(u64::from(r.duration_ms)));
    vec![
        clean(&outcome.node),
        state_word(outcome.state),
        node_status(outcome),
        code_cell(outcome.result.as_ref()),
        duration,
        summary_line(outcome),
    ]
}

/// `job job-7 (clear-cache on --all): 3 nodes: 2 ok, 1 failed` and, when traced, its trace.
pub fn job_summary(job: &v1::ActionJob) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in &job.nodes {
        *counts.entry(node_status(outcome)).or_default() += 1;
    }
    let mut parts = Vec::new();
    if let Some(ok) = counts.remove("ok") {
        parts.push(format!("{ok} ok"));
    }
    parts.extend(counts.iter().map(|(word, count)| format!("{count} {word}")));
    let nodes = if job.nodes.len() == 1 { "1 node".to_owned() } else { format!("{} nodes", job.nodes.len()) };
    let mut line = format!("job {} ({} on {}): {nodes}", job.job_id, clean(&job.action), clean(&job.selector));
    if !parts.is_empty() {
        let _ = write!(line, ": {}", parts.join(", "));
    }
    if !job.finished {
        line.push_str(" (still running)");
    }
    if !job.trace_id.is_empty() {
        let _ = write!(line, "; trace {}", job.trace_id);
    }
    line
}

/// The lines after `action run`'s table: summary, replay, idempotency key, how to follow.
pub fn run_footer(job: &v1::ActionJob, key: &str, replayed: bool, detached: bool) -> String {
    let mut out = format!("{}\n", job_summary(job));
    if replayed {
        let _ =
            writeln!(out, "replayed: idempotency key {key} was used before with these parameters; nothing ran again");
    } else {
        let _ = writeln!(out, "idempotency key {key}");
    }
    if detached && !job.finished {
        let _ = writeln!(
            out,
            "detached: follow it with `ragmeshctl action watch {id}` or `ragmeshctl action status {id}`",
            id = job.job_id
        );
    }
    out
}

/// Wire text shown whole: lines kept, other control characters (ESC included, so output cannot
/// restyle or move the terminal's cursor) shown as `?`, carriage returns dropped.
pub fn sanitize_block(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => {}
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// Every node's steps with their full stdout and stderr (`--output`).
pub fn outputs_text(job: &v1::ActionJob) -> String {
    let mut out = String::new();
    for outcome in &job.nodes {
        let Some(result) = &outcome.result else { continue };
        for step in &result.steps {
            let mut header =
                format!("\n== {} · {} · {}", clean(&outcome.node), clean(&step.step), action_status_word(step.status));
            if let Some(code) = step.exit_code {
                let _ = write!(header, " · exit {code}");
            }
            if let Some(status) = step.http_status {
                let _ = write!(header, " · http {status}");
            }
            let _ = writeln!(out, "{header} · {}", millis(u64::from(step.duration_ms)));
            if !step.message.is_empty() {
                let _ = writeln!(out, "message: {}", clean(&step.message));
            }
            for (name, text, truncated) in [
                ("stdout", &step.stdout, step.stdout_truncated_bytes),
                ("stderr", &step.stderr, step.stderr_truncated_bytes),
            ] {
                if text.is_empty() && truncated == 0 {
                    continue;
                }
                let _ = writeln!(out, "-- {name}");
                out.push_str(&sanitize_block(text));
                if !text.ends_with('\n') && !text.is_empty() {
                    out.push('\n');
                }
                if truncated > 0 {
                    let _ = writeln!(out, "-- ({truncated} more bytes not kept)");
                }
            }
        }
    }
    out
}

/// Lines for the nodes whose state or status changed since `previous` (every node the first
/// time), for `action watch` when stdout is not a terminal.
pub fn changes(previous: Option<&v1::ActionJob>, next: &v1::ActionJob) -> Vec<String> {
    let mut lines = Vec::new();
    for outcome in &next.nodes {
        let before = previous.and_then(|job| job.nodes.iter().find(|old| old.node == outcome.node));
        let changed = before.is_none_or(|old| old.state != outcome.state || node_status(old) != node_status(outcome));
        if changed {
            lines.push(node_row(outcome).join("  ").trim_end().to_owned());
        }
    }
    lines
}

/// A step's result in one cell: `ok exit 0 3 ms`, `failed http 500 12 ms`, or `-`.
pub fn result_cell(result: Option<&v1::ActionResult>) -> String {
    let Some(result) = result else { return "-".to_owned() };
    let code = code_cell(Some(result));
    let code = if code == "-" { String::new() } else { format!(" {code}") };
    format!("{}{code} {}", action_status_word(result.status), millis(u64::from(result.duration_ms)))
}

/// A transaction: its outcome line, one row per participant, why, and its trace.
pub fn tx_text(tx: &v1::TransactionStatus) -> String {
    let mut out = String::new();
    let outcome = match v1::TransactionDecision::try_from(tx.decision) {
        Ok(v1::TransactionDecision::Commit) => "committed",
        Ok(v1::TransactionDecision::Abort) => "aborted",
        _ => "undecided",
    };
    let took = match tx.decided_unix_ms.checked_sub(tx.started_unix_ms) {
        Some(ms) if tx.decided_unix_ms > 0 => format!(", decided in {}", millis(ms)),
        _ => String::new(),
    };
    let _ = writeln!(out, "transaction {} {outcome} (phase {}{took})", tx.tx_id, phase_word(tx.phase));
    let mut table = Table::new(vec![
        Column::left("PARTICIPANT"),
        Column::left("SHARD"),
        Column::left("VOTE"),
        Column::left("ACK"),
        Column::left("PREPARE"),
        Column::left("DECIDE"),
        Column::left("MESSAGE").max_width(TEXT_COLUMN_WIDTH),
    ]);
    for participant in &tx.participants {
        let message = [
            Some(participant.message.as_str()),
            participant.prepare_result.as_ref().map(|r| r.message.as_str()),
            participant.decide_result.as_ref().map(|r| r.message.as_str()),
        ]
        .into_iter()
        .flatten()
        .find_map(first_line)
        .unwrap_or_default();
        table.push(vec![
            clean(&participant.node),
            if participant.shard.is_empty() { "-".to_owned() } else { clean(&participant.shard) },
            vote_word(participant.vote),
            if participant.acknowledged { "yes".to_owned() } else { "no".to_owned() },
            result_cell(participant.prepare_result.as_ref()),
            result_cell(participant.decide_result.as_ref()),
            message,
        ]);
    }
    if !table.is_empty() {
        out.push_str(&table.render());
    }
    let waiting: Vec<&str> = tx.participants.iter().filter(|p| !p.acknowledged).map(|p| p.node.as_str()).collect();
    if !tx.message.is_empty() {
        let _ = writeln!(out, "why: {}", clean(&tx.message));
    }
    if tx.decision != v1::TransactionDecision::Unspecified as i32 && !waiting.is_empty() {
        let _ = writeln!(
            out,
            "not acknowledged yet by {}: the master keeps sending the decision",
            clean(&waiting.join(", "))
        );
    }
    if !tx.trace_id.is_empty() {
        let _ = writeln!(out, "trace {}", tx.trace_id);
    }
    out
}

/// `action transactions`: one row per transaction.
pub fn transactions_table(transactions: &[v1::TransactionStatus], now: SystemTime, all: bool) -> String {
    if transactions.is_empty() {
        return if all {
            "no transactions\n".to_owned()
        } else {
            "no unfinished transactions (--all lists finished ones too)\n".to_owned()
        };
    }
    let mut table = Table::new(vec![
        Column::left("TX"),
        Column::left("PHASE"),
        Column::left("DECISION"),
        Column::right("ACKED"),
        Column::left("STARTED"),
        Column::left("MESSAGE").max_width(TEXT_COLUMN_WIDTH),
    ]);
    for tx in transactions {
        let acked = tx.participants.iter().filter(|p| p.acknowledged).count();
        let started = if tx.started_unix_ms == 0 {
            "-".to_owned()
        } else {
            crate::render::relative(UNIX_EPOCH + Duration::from_millis(tx.started_unix_ms), now)
        };
        table.push(vec![
            tx.tx_id.clone(),
            phase_word(tx.phase),
            decision_word(tx.decision),
            format!("{acked}/{}", tx.participants.len()),
            started,
            clean(&tx.message),
        ]);
    }
    table.render()
}

/// Unix milliseconds as RFC 3339 (`-` for 0).
pub fn unix_ms_text(ms: u64) -> String {
    if ms == 0 {
        return "-".to_owned();
    }
    let seconds = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let nanos = i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0);
    prost_types::Timestamp { seconds, nanos }.to_string()
}

fn audit_kind_word(kind: i32) -> String {
    match v1::AuditKind::try_from(kind) {
        Ok(v1::AuditKind::Unspecified) | Err(_) => "-".to_owned(),
        Ok(kind) => enum_word(kind.as_str_name(), "AUDIT_KIND_"),
    }
}

/// Arguments as `name=value` sorted by name (the master already shows secrets as `***`).
fn arguments_text(arguments: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = arguments.iter().collect();
    sorted.iter().map(|(name, value)| format!("{}={}", clean(name), clean(value))).collect::<Vec<_>>().join(" ")
}

/// `action history`: one row per audit record, and how to read the next page.
pub fn history_table(response: &v1::ActionHistoryResponse) -> String {
    if response.records.is_empty() {
        return "no audit records\n".to_owned();
    }
    let mut table = Table::new(vec![
        Column::right("SEQ"),
        Column::left("TIME"),
        Column::left("SUBJECT"),
        Column::left("KIND"),
        Column::left("OPERATION"),
        Column::left("NODE"),
        Column::left("ACTION"),
        Column::left("STATUS"),
        Column::right("DURATION"),
        Column::left("ARGUMENTS").max_width(40),
        Column::left("MESSAGE").max_width(TEXT_COLUMN_WIDTH),
    ]);
    for record in &response.records {
        let subject = if record.tenant.is_empty() {
            clean(&record.subject)
        } else {
            format!("{}@{}", clean(&record.subject), clean(&record.tenant))
        };
        table.push(vec![
            record.sequence.to_string(),
            unix_ms_text(record.time_unix_ms),
            subject,
            audit_kind_word(record.kind),
            clean(&record.operation_id),
            clean(&record.node),
            clean(&record.action),
            clean(&record.status),
            millis(u64::from(record.duration_ms)),
            arguments_text(&record.arguments),
            clean(&record.message),
        ]);
    }
    let mut out = table.render();
    if response.next_before_sequence != 0 {
        let _ = writeln!(out, "older records: add --before {}", response.next_before_sequence);
    }
    out
}

fn tenants_text(tenants: &[String]) -> String {
    if tenants.is_empty() {
        return "operators only".to_owned();
    }
    tenants.iter().map(|t| if t == "*" { "every tenant".to_owned() } else { clean(t) }).collect::<Vec<_>>().join(", ")
}

/// `string`, `integer`, `number`, `boolean`.
pub fn argument_type_word(kind: i32) -> String {
    match v1::ArgumentType::try_from(kind) {
        Ok(v1::ArgumentType::Unspecified) | Err(_) => "string".to_owned(),
        Ok(kind) => enum_word(kind.as_str_name(), "ARGUMENT_TYPE_"),
    }
}

/// The schema of one argument in a line: `string, required, default "x", one of a|b, pattern
/// /re/, length 1..64, range 0..10, secret`; a secret's default and allowed values are hidden.
pub fn argument_text(argument: &v1::ArgumentDescriptor) -> String {
    let mut parts = vec![argument_type_word(argument.r#type)];
    if argument.required {
        parts.push("required".to_owned());
    }
    if let Some(default) = &argument.default_value {
        let shown = if argument.secret { REDACTED.to_owned() } else { format!("{:?}", clean(default)) };
        parts.push(format!("default {shown}"));
    }
    if !argument.allowed.is_empty() {
        if argument.secret {
            parts.push(format!("one of {} allowed values ({REDACTED})", argument.allowed.len()));
        } else {
            parts.push(format!("one of {}", argument.allowed.iter().map(|v| clean(v)).collect::<Vec<_>>().join("|")));
        }
    }
    if !argument.pattern.is_empty() {
        parts.push(format!("pattern /{}/", clean(&argument.pattern)));
    }
    let bound = |low: Option<String>, high: Option<String>| match (low, high) {
        (None, None) => None,
        (low, high) => Some(format!("{}..{}", low.unwrap_or_default(), high.unwrap_or_default())),
    };
    if let Some(range) = bound(argument.min_len.map(|v| v.to_string()), argument.max_len.map(|v| v.to_string())) {
        parts.push(format!("length {range}"));
    }
    if let Some(range) = bound(argument.min.map(|v| v.to_string()), argument.max.map(|v| v.to_string())) {
        parts.push(format!("range {range}"));
    }
    if argument.secret {
        parts.push("secret".to_owned());
    }
    let mut line = parts.join(", ");
    if !argument.description.is_empty() {
        let _ = write!(line, " — {}", clean(&argument.description));
    }
    line
}

/// `action list`: per node, its actions and their schemas, or why it did not answer.
pub fn list_text(nodes: &[v1::NodeActions]) -> String {
    if nodes.is_empty() {
        return "no nodes answered: none is up (see `ragmeshctl nodes`)\n".to_owned();
    }
    let mut out = String::new();
    for node in nodes {
        if node.status != v1::OutcomeStatus::Ok as i32 {
            let why = if node.message.is_empty() { String::new() } else { format!(": {}", clean(&node.message)) };
            let _ = writeln!(out, "{}: {}{why}", clean(&node.node), outcome_word(node.status));
            continue;
        }
        let count =
            if node.actions.len() == 1 { "1 action".to_owned() } else { format!("{} actions", node.actions.len()) };
        let _ = writeln!(out, "{}: {count}", clean(&node.node));
        for action in &node.actions {
            let _ = writeln!(out, "  {}  {}", clean(&action.name), clean(&action.description));
            let mut traits = vec![
                if action.builtin { "built-in".to_owned() } else { "declared".to_owned() },
                format!("timeout {}", millis(u64::from(action.timeout_ms))),
                format!("capability {}", if action.capability.is_empty() { "actions" } else { &action.capability }),
                format!("tenants {}", tenants_text(&action.tenants)),
            ];
            if action.transactional {
                traits.push("transactional".to_owned());
            }
            let _ = writeln!(out, "    {}", traits.join(" · "));
            for argument in &action.arguments {
                let _ = writeln!(out, "    --arg {}: {}", clean(&argument.name), argument_text(argument));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Rendering: JSON.

fn ms_json(ms: u64) -> Value {
    if ms == 0 { Value::Null } else { Value::String(unix_ms_text(ms)) }
}

fn text_or_null(text: &str) -> Value {
    if text.is_empty() { Value::Null } else { Value::String(text.to_owned()) }
}

/// One step's result.
pub fn step_json(step: &v1::StepResult) -> Value {
    json!({
        "step": step.step,
        "status": action_status_word(step.status),
        "exit_code": step.exit_code,
        "http_status": step.http_status,
        "duration_ms": step.duration_ms,
        "stdout": step.stdout,
        "stdout_truncated_bytes": step.stdout_truncated_bytes,
        "stderr": step.stderr,
        "stderr_truncated_bytes": step.stderr_truncated_bytes,
        "message": text_or_null(&step.message),
    })
}

/// An action's result on one node (`null` without one).
pub fn result_json(result: Option<&v1::ActionResult>) -> Value {
    let Some(result) = result else { return Value::Null };
    json!({
        "status": action_status_word(result.status),
        "duration_ms": result.duration_ms,
        "message": text_or_null(&result.message),
        "steps": result.steps.iter().map(step_json).collect::<Vec<_>>(),
    })
}

/// A job with every node's outcome.
pub fn job_json(job: &v1::ActionJob) -> Value {
    let nodes: Vec<Value> = job
        .nodes
        .iter()
        .map(|outcome| {
            json!({
                "node": outcome.node,
                "state": state_word(outcome.state),
                "status": node_status(outcome),
                "outcome_status": outcome_word(outcome.status),
                "message": text_or_null(&outcome.message),
                "result": result_json(outcome.result.as_ref()),
            })
        })
        .collect();
    json!({
        "job_id": job.job_id,
        "action": job.action,
        "selector": job.selector,
        "finished": job.finished,
        "created": ms_json(job.created_unix_ms),
        "finished_at": ms_json(job.finished_unix_ms),
        "trace_id": text_or_null(&job.trace_id),
        "nodes": nodes,
    })
}

/// A transaction with every participant.
pub fn tx_json(tx: &v1::TransactionStatus) -> Value {
    let participants: Vec<Value> = tx
        .participants
        .iter()
        .map(|p| {
            json!({
                "node": p.node,
                "shard": text_or_null(&p.shard),
                "vote": match v1::ParticipantVote::try_from(p.vote) {
                    Ok(v1::ParticipantVote::Yes) => json!("yes"),
                    Ok(v1::ParticipantVote::No) => json!("no"),
                    _ => Value::Null,
                },
                "acknowledged": p.acknowledged,
                "prepare": result_json(p.prepare_result.as_ref()),
                "decide": result_json(p.decide_result.as_ref()),
                "message": text_or_null(&p.message),
            })
        })
        .collect();
    json!({
        "tx_id": tx.tx_id,
        "phase": phase_word(tx.phase),
        "decision": match v1::TransactionDecision::try_from(tx.decision) {
            Ok(v1::TransactionDecision::Commit) => json!("commit"),
            Ok(v1::TransactionDecision::Abort) => json!("abort"),
            _ => Value::Null,
        },
        "started": ms_json(tx.started_unix_ms),
        "deadline": ms_json(tx.deadline_unix_ms),
        "decided": ms_json(tx.decided_unix_ms),
        "message": text_or_null(&tx.message),
        "trace_id": text_or_null(&tx.trace_id),
        "participants": participants,
    })
}

/// The answer of a call made with an idempotency key: `{"idempotency_key", "replayed", name: value}`.
pub fn call_json(key: &str, replayed: bool, name: &str, value: Value) -> Value {
    let mut object = json!({ "idempotency_key": key, "replayed": replayed });
    object[name] = value;
    object
}

/// One argument's schema (a secret's default and allowed values as `***`).
pub fn argument_json(argument: &v1::ArgumentDescriptor) -> Value {
    let hide = |value: &str| if argument.secret { REDACTED.to_owned() } else { value.to_owned() };
    json!({
        "name": argument.name,
        "description": argument.description,
        "type": argument_type_word(argument.r#type),
        "required": argument.required,
        "default": argument.default_value.as_deref().map(hide),
        "allowed": argument.allowed.iter().map(|v| hide(v)).collect::<Vec<_>>(),
        "pattern": text_or_null(&argument.pattern),
        "min_len": argument.min_len,
        "max_len": argument.max_len,
        "min": argument.min,
        "max": argument.max,
        "secret": argument.secret,
    })
}

/// `action list --json`: one object per node.
pub fn list_json(nodes: &[v1::NodeActions]) -> Value {
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|node| {
            let actions: Vec<Value> = node
                .actions
                .iter()
                .map(|action| {
                    json!({
                        "name": action.name,
                        "description": action.description,
                        "arguments": action.arguments.iter().map(argument_json).collect::<Vec<_>>(),
                        "timeout_ms": action.timeout_ms,
                        "capability": if action.capability.is_empty() { "actions" } else { &action.capability },
                        "tenants": action.tenants,
                        "transactional": action.transactional,
                        "builtin": action.builtin,
                    })
                })
                .collect();
            json!({
                "node": node.node,
                "status": outcome_word(node.status),
                "message": text_or_null(&node.message),
                "actions": actions,
            })
        })
        .collect();
    Value::Array(nodes)
}

/// `action history --json`: the records and the next page's `--before` (`null` at the end).
pub fn history_json(response: &v1::ActionHistoryResponse) -> Value {
    let records: Vec<Value> = response
        .records
        .iter()
        .map(|record| {
            let arguments: BTreeMap<&String, &String> = record.arguments.iter().collect();
            json!({
                "sequence": record.sequence,
                "time": ms_json(record.time_unix_ms),
                "subject": record.subject,
                "tenant": record.tenant,
                "kind": audit_kind_word(record.kind),
                "operation_id": record.operation_id,
                "node": record.node,
                "action": record.action,
                "arguments_digest": record.arguments_digest,
                "arguments": arguments,
                "status": record.status,
                "message": text_or_null(&record.message),
                "duration_ms": record.duration_ms,
                "trace_id": text_or_null(&record.trace_id),
            })
        })
        .collect();
    let next = if response.next_before_sequence == 0 { Value::Null } else { json!(response.next_before_sequence) };
    json!({ "records": records, "next_before_sequence": next })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Command};
    use crate::error::{EXIT_USAGE, exit_code};

    fn run_args(list: &[&str]) -> ActionRunArgs {
        let cli = Cli::try_parse_from(["ragmeshctl", "action", "run"].iter().chain(list).copied()).expect("parses");
        let Command::Action(ActionCommand::Run(args)) = cli.command else { panic!("expected action run") };
        args
    }

    fn tx_args(list: &[&str]) -> ActionTxArgs {
        let cli = Cli::try_parse_from(["ragmeshctl", "action", "tx"].iter().chain(list).copied()).expect("parses");
        let Command::Action(ActionCommand::Tx(args)) = cli.command else { panic!("expected action tx") };
        args
    }

    fn step(
        name: &str,
        status: v1::ActionStatus,
        exit_code: Option<i32>,
        stdout: &str,
        stderr: &str,
    ) -> v1::StepResult {
        v1::StepResult {
            step: name.into(),
            status: status as i32,
            exit_code,
            stdout: stdout.into(),
            stderr: stderr.into(),
            duration_ms: 12,
            ..Default::default()
        }
    }

    fn done(
        node: &str,
        status: v1::ActionStatus,
        exit_code: i32,
        stdout: &str,
        message: &str,
    ) -> v1::NodeActionOutcome {
        v1::NodeActionOutcome {
            node: node.into(),
            state: v1::NodeActionState::Done as i32,
            status: v1::OutcomeStatus::Ok as i32,
            result: Some(v1::ActionResult {
                status: status as i32,
                steps: vec![step("run", status, Some(exit_code), stdout, "")],
                duration_ms: 15,
                message: message.into(),
            }),
            message: String::new(),
        }
    }

    fn other(
        node: &str,
        state: v1::NodeActionState,
        status: v1::OutcomeStatus,
        message: &str,
    ) -> v1::NodeActionOutcome {
        v1::NodeActionOutcome {
            node: node.into(),
            state: state as i32,
            status: status as i32,
            result: None,
            message: message.into(),
        }
    }

    fn job(nodes: Vec<v1::NodeActionOutcome>, finished: bool) -> v1::ActionJob {
        v1::ActionJob {
            job_id: "job-7".into(),
            action: "clear-cache".into(),
            selector: "--all".into(),
            nodes,
            finished,
            created_unix_ms: 1_767_225_600_000,
            finished_unix_ms: if finished { 1_767_225_600_250 } else { 0 },
            trace_id: String::new(),
        }
    }

    #[test]
    fn run_request_carries_selector_arguments_and_key() {
        let args = run_args(&[
            "clear-cache",
            "--node",
            "agent-1",
            "--label",
            "rack=r4",
            "--shard",
            "shard-2",
            "--arg",
            "query=a=b",
            "--arg",
            "empty=",
            "--max-parallel",
            "2",
            "--max-fail-percent",
            "0",
        ]);
        let request = run_request(&args, "k1").expect("valid");
        let call = request.call.expect("call");
        assert_eq!(call.action, "clear-cache");
        assert_eq!(call.arguments["query"], "a=b", "split at the first =");
        assert_eq!(call.arguments["empty"], "");
        let selector = request.selector.expect("selector");
        assert_eq!(
            (selector.nodes, selector.shards, selector.all),
            (vec!["agent-1".to_owned()], vec!["shard-2".to_owned()], false)
        );
        assert_eq!(selector.labels["rack"], "r4");
        assert_eq!((request.max_parallel, request.max_fail_percent), (2, Some(0)));
        assert_eq!(request.idempotency_key, "k1");
        assert!(!request.detach);

        let defaults = run_request(&run_args(&["x", "--all", "--detach"]), "k2").expect("valid");
        assert_eq!((defaults.max_parallel, defaults.max_fail_percent), (0, None), "the master's defaults");
        assert!(defaults.selector.expect("selector").all && defaults.detach);
    }

    #[test]
    fn refused_command_lines_are_usage_errors_that_never_show_values() {
        let twice = run_request(&run_args(&["x", "--all", "--arg", "password=hunter2", "--arg", "password=x"]), "k");
        let err = twice.expect_err("given twice");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        assert!(err.to_string().contains("--arg password") && !err.to_string().contains("hunter2"), "{err}");

        let labels = run_request(&run_args(&["x", "--label", "rack=a", "--label", "rack=b"]), "k");
        assert_eq!(exit_code(&labels.expect_err("two values")), EXIT_USAGE);
        assert!(run_request(&run_args(&["x", "--label", "rack=a", "--label", "rack=a"]), "k").is_ok());

        for bad_key in ["", "has space", &"k".repeat(MAX_KEY_CHARS + 1)] {
            let err = run_request(&run_args(&["x", "--all"]), bad_key).expect_err("bad key");
            assert_eq!(exit_code(&err), EXIT_USAGE, "{bad_key:?}");
        }
    }

    #[test]
    fn fresh_keys_are_random_and_usable() {
        let (a, b) = (fresh_key(), fresh_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 35);
        assert!(a.starts_with("rk-") && key_problem(&a).is_none(), "{a}");
        assert!(key_line(&a).contains(&format!("--idempotency-key {a}")));
    }

    #[test]
    fn tx_plans_an_action_on_distinct_nodes_or_paired_writes() {
        let plan = tx_plan(&tx_args(&["rotate", "--node", "a", "--node", "b", "--arg", "v=7"])).expect("valid");
        let TxPlan::Action { name, nodes, arguments } = plan else { panic!("expected an action") };
        assert_eq!((name.as_str(), nodes.clone()), ("rotate", vec!["a".to_owned(), "b".to_owned()]));
        let parts = action_parts(&name, &nodes, &arguments);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].node, "b");
        let Some(v1::transaction_operation::Kind::Action(call)) = &parts[1].operation.as_ref().expect("op").kind else {
            panic!("expected an action part")
        };
        assert_eq!((call.action.as_str(), call.arguments["v"].as_str()), ("rotate", "7"));

        let twice = tx_plan(&tx_args(&["rotate", "--node", "a", "--node", "a"])).expect_err("twice");
        assert_eq!(exit_code(&twice), EXIT_USAGE);

        let plan = tx_plan(&tx_args(&["rotate", "--all", "--arg", "v=7"])).expect("valid");
        let TxPlan::Selected { name, selector, arguments } = plan else { panic!("expected a selection") };
        assert_eq!((name.as_str(), selector.all, arguments["v"].as_str()), ("rotate", true, "7"));
        let plan = tx_plan(&tx_args(&["rotate", "--label", "role=app", "--label", "dc=eu"])).expect("valid");
        let TxPlan::Selected { selector, .. } = plan else { panic!("expected a selection") };
        assert_eq!((selector.all, selector.labels.len(), selector.labels["role"].as_str()), (false, 2, "app"));
        let clash = tx_plan(&tx_args(&["rotate", "--label", "role=app", "--label", "role=db"])).expect_err("clash");
        assert_eq!(exit_code(&clash), EXIT_USAGE);
        for wrong in [&["rotate"][..], &["rotate", "--all", "--node", "a"], &["--all"]] {
            let parsed = Cli::try_parse_from(["ragmeshctl", "action", "tx"].iter().chain(wrong).copied());
            assert!(parsed.is_err(), "{wrong:?} must not parse");
        }

        let plan = tx_plan(&tx_args(&["--ingest", "a.jsonl", "--shard", "s1", "--ingest", "b.jsonl", "--shard", "s2"]))
            .expect("valid");
        assert_eq!(plan, TxPlan::Writes(vec![("a.jsonl".into(), "s1".into()), ("b.jsonl".into(), "s2".into())]));
        let unpaired = tx_plan(&tx_args(&["--ingest", "a", "--ingest", "b", "--shard", "s1"])).expect_err("unpaired");
        assert_eq!(exit_code(&unpaired), EXIT_USAGE);
        assert!(unpaired.to_string().contains("2 --ingest and 1 --shard"), "{unpaired}");
    }

    #[test]
    fn write_parts_merge_a_shard_given_twice_and_are_bounded() {
        let doc = |id: &str| v1::Document { id: id.into(), ..Default::default() };
        let parts = write_parts(vec![
            ("s1".into(), vec![doc("a")]),
            ("s2".into(), vec![doc("b")]),
            ("s1".into(), vec![doc("c")]),
        ])
        .expect("valid");
        assert_eq!(parts.len(), 2);
        let Some(v1::transaction_operation::Kind::Write(write)) = &parts[0].operation.as_ref().expect("op").kind else {
            panic!("expected a write")
        };
        assert_eq!((parts[0].shard.as_str(), write.upserts.len()), ("s1", 2));
        let too_many = write_parts(vec![("s1".into(), vec![doc("a"); MAX_TX_DOCUMENTS + 1])]).expect_err("too many");
        assert_eq!(exit_code(&too_many), EXIT_USAGE);
    }

    #[test]
    fn status_ids_are_jobs_or_transactions() {
        assert_eq!(operation_id("job-12"), Ok(OperationId::Job("job-12".into())));
        let tx = "0123456789ABCDEF0123456789abcdef";
        assert_eq!(operation_id(tx), Ok(OperationId::Tx(tx.to_ascii_lowercase())));
        for bad in ["job-", "job-x", "12", "0123456789abcdef", "g123456789abcdef0123456789abcdef"] {
            assert!(operation_id(bad).expect_err(bad).contains("job-N"), "{bad}");
        }
    }

    #[test]
    fn since_takes_rfc3339_or_an_age() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_since("90s", now), Ok((1_000_000 - 90) * 1000));
        assert_eq!(parse_since("2h", now), Ok((1_000_000 - 7200) * 1000));
        assert_eq!(parse_since("7d", now), Ok((1_000_000 - 7 * 86_400) * 1000));
        assert_eq!(parse_since("2026-01-01T00:00:00Z", now), Ok(1_767_225_600_000));
        assert_eq!(parse_since("2026-01-01T01:00:00+01:00", now), Ok(1_767_225_600_000));
        for bad in ["", "yesterday", "5w", "-3h", "2026-13-01T00:00:00Z", "1969-12-31T00:00:00Z"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn history_request_carries_filters_and_paging() {
        let cli = Cli::try_parse_from([
            "ragmeshctl",
            "action",
            "history",
            "--node",
            "agent-1",
            "--action",
            "index.compact",
            "--subject",
            "alice",
            "--since",
            "1h",
            "--before",
            "120",
            "--limit",
            "20",
        ])
        .expect("parses");
        let Command::Action(ActionCommand::History(args)) = cli.command else { panic!("expected history") };
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        let request = history_request(&args, now).expect("valid");
        assert_eq!(
            (request.node.as_str(), request.action.as_str(), request.subject.as_str()),
            ("agent-1", "index.compact", "alice")
        );
        assert_eq!((request.since_unix_ms, request.before_sequence, request.limit), (6_400_000, 120, 20));
    }

    #[test]
    fn exit_status_is_0_only_when_every_node_ran_ok() {
        let ok =
            job(vec![done("a", v1::ActionStatus::Ok, 0, "fine", ""), done("b", v1::ActionStatus::Ok, 0, "", "")], true);
        assert!(job_verdict(&ok).is_none());

        let cases = [
            (done("b", v1::ActionStatus::Failed, 3, "", "exit status 3"), "b: failed"),
            (done("b", v1::ActionStatus::Timeout, -9, "", "killed at 5 s"), "b: timeout"),
            (done("b", v1::ActionStatus::Error, 0, "", "no such program"), "b: error"),
            (other("b", v1::NodeActionState::Done, v1::OutcomeStatus::Unavailable, "node down"), "b: unavailable"),
            (
                other("b", v1::NodeActionState::NotStarted, v1::OutcomeStatus::Unspecified, "max-fail-percent"),
                "b: not_started",
            ),
            (
                other("b", v1::NodeActionState::Unknown, v1::OutcomeStatus::Unspecified, "master restarted"),
                "b: unknown",
            ),
        ];
        for (bad, named) in cases {
            let verdict =
                job_verdict(&job(vec![done("a", v1::ActionStatus::Ok, 0, "", ""), bad], true)).expect("not ok");
            assert_eq!(verdict.code, EXIT_ACTION_FAILED, "{named}");
            assert_eq!(verdict.message, format!("job-7: 1 of 2 nodes did not run ok ({named})"));
        }

        let running = job(vec![other("a", v1::NodeActionState::Running, v1::OutcomeStatus::Unspecified, "")], false);
        let verdict = job_verdict(&running).expect("pending");
        assert_eq!(verdict.code, EXIT_ACTION_PENDING);
        assert!(verdict.message.contains("action watch job-7"), "{}", verdict.message);
        // A failure already known beats "still running".
        let mixed = job(
            vec![
                other("a", v1::NodeActionState::Running, v1::OutcomeStatus::Unspecified, ""),
                done("b", v1::ActionStatus::Failed, 1, "", ""),
            ],
            false,
        );
        assert_eq!(job_verdict(&mixed).expect("failed").code, EXIT_ACTION_FAILED);
        assert_eq!(job_verdict(&job(Vec::new(), true)).expect("empty").code, EXIT_ACTION_FAILED);
    }

    #[test]
    fn transactions_exit_0_only_once_committed() {
        let mut tx = v1::TransactionStatus {
            tx_id: "ab".repeat(16),
            phase: v1::TransactionPhase::Committing as i32,
            decision: v1::TransactionDecision::Commit as i32,
            ..Default::default()
        };
        assert!(tx_verdict(&tx).is_none(), "commit is logged: every participant will commit");
        tx.decision = v1::TransactionDecision::Abort as i32;
        tx.message = "agent-2 voted no".into();
        let aborted = tx_verdict(&tx).expect("aborted");
        assert_eq!(aborted.code, EXIT_ACTION_FAILED);
        assert!(aborted.message.ends_with("aborted: agent-2 voted no"), "{}", aborted.message);
        tx.decision = v1::TransactionDecision::Unspecified as i32;
        tx.phase = v1::TransactionPhase::Preparing as i32;
        assert_eq!(tx_verdict(&tx).expect("undecided").code, EXIT_ACTION_PENDING);
    }

    #[test]
    fn refused_requests_are_told_apart_from_failures() {
        assert!(is_refused_request(&Status::invalid_argument("argument n: not an integer")));
        assert!(is_refused_request(&Status::not_found("no node agent-9")));
        assert!(is_refused_request(&Status::already_exists("exists")));
        assert!(is_refused_request(&Status::failed_precondition(
            "this idempotency key was used with other parameters; use a new key"
        )));
        assert!(!is_refused_request(&Status::permission_denied("token lacks capability actions")));
        assert!(!is_refused_request(&Status::unavailable("master starting")));
        assert!(!is_refused_request(&Status::deadline_exceeded("late")));
        assert!(may_have_run(&Status::deadline_exceeded("late")) && may_have_run(&Status::unavailable("reset")));
        assert!(!may_have_run(&Status::permission_denied("no")) && !may_have_run(&Status::invalid_argument("bad")));
    }

    #[test]
    fn job_table_shows_one_row_per_node_with_the_first_line_or_the_message() {
        let mut failing = done("agent-2", v1::ActionStatus::Failed, 3, "partial\n", "cache locked\nby pid 7");
        failing.result.as_mut().expect("result").steps[0].stderr = "\x1b[31mred\x1b[0m".into();
        let mut http = done("agent-3", v1::ActionStatus::Ok, 0, "", "");
        let step = &mut http.result.as_mut().expect("result").steps[0];
        step.exit_code = None;
        step.http_status = Some(204);
        let not_started = other(
            "agent-4",
            v1::NodeActionState::NotStarted,
            v1::OutcomeStatus::Unspecified,
            "max-fail-percent 0 exceeded",
        );
        let job = job(
            vec![
                done("agent-1", v1::ActionStatus::Ok, 0, "\n  cleared 3 entries\nmore", ""),
                failing,
                http,
                not_started,
            ],
            true,
        );
        let text = job_text(&job);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].starts_with("NODE") && lines[0].contains("DURATION") && lines[0].ends_with("OUTPUT"),
            "{text}"
        );
        assert!(
            lines[1].contains("done")
                && lines[1].contains(" ok ")
                && lines[1].contains("exit 0")
                && lines[1].contains("15 ms")
        );
        assert!(lines[1].ends_with("cleared 3 entries"), "{text}");
        assert!(
            lines[2].contains("failed") && lines[2].contains("exit 3") && lines[2].ends_with("cache locked"),
            "{text}"
        );
        assert!(lines[3].contains("http 204"), "{text}");
        assert!(lines[4].contains("not_started") && lines[4].ends_with("max-fail-percent 0 exceeded"), "{text}");
        assert!(!text.contains('\x1b'));
        assert_eq!(job_summary(&job), "job job-7 (clear-cache on --all): 4 nodes: 2 ok, 1 failed, 1 not_started");
        let footer = run_footer(&job, "rk-1", true, false);
        assert!(footer.contains("replayed") && footer.contains("nothing ran again"), "{footer}");
    }

    #[test]
    fn full_output_is_shown_per_step_without_terminal_escapes() {
        let mut outcome = done("agent-1", v1::ActionStatus::Failed, 1, "line 1\r\nline 2\n", "");
        let step = &mut outcome.result.as_mut().expect("result").steps[0];
        step.stderr = "oops \x1b]0;title\x07".into();
        step.stderr_truncated_bytes = 4096;
        let text = outputs_text(&job(vec![outcome], true));
        assert!(text.contains("== agent-1 · run · failed · exit 1 · 12 ms"), "{text}");
        assert!(
            text.contains("-- stdout\nline 1\nline 2\n-- stderr\noops ?]0;title?\n-- (4096 more bytes not kept)"),
            "{text}"
        );
    }

    #[test]
    fn watch_prints_only_changed_nodes() {
        let first = job(
            vec![
                other("a", v1::NodeActionState::Running, v1::OutcomeStatus::Unspecified, ""),
                other("b", v1::NodeActionState::Pending, v1::OutcomeStatus::Unspecified, ""),
            ],
            false,
        );
        assert_eq!(changes(None, &first).len(), 2);
        let second = job(
            vec![
                done("a", v1::ActionStatus::Ok, 0, "fine", ""),
                other("b", v1::NodeActionState::Pending, v1::OutcomeStatus::Unspecified, ""),
            ],
            false,
        );
        let lines = changes(Some(&first), &second);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("a  done  ok  exit 0") && lines[0].ends_with("fine"), "{lines:?}");
        assert!(changes(Some(&second), &second).is_empty());
    }

    #[test]
    fn json_of_a_run_has_the_key_the_job_and_every_step() {
        let value =
            call_json("rk-1", false, "job", job_json(&job(vec![done("a", v1::ActionStatus::Ok, 0, "out", "")], true)));
        assert_eq!(value["idempotency_key"], "rk-1");
        assert_eq!(value["replayed"], false);
        let job = &value["job"];
        assert_eq!(job["job_id"], "job-7");
        assert_eq!(job["finished"], true);
        assert_eq!(job["created"], "2026-01-01T00:00:00Z");
        assert_eq!(job["trace_id"], Value::Null);
        let node = &job["nodes"][0];
        assert_eq!(
            (node["node"].as_str(), node["state"].as_str(), node["status"].as_str()),
            (Some("a"), Some("done"), Some("ok"))
        );
        let step = &node["result"]["steps"][0];
        assert_eq!(
            (step["step"].as_str(), step["exit_code"].as_i64(), step["stdout"].as_str()),
            (Some("run"), Some(0), Some("out"))
        );
        assert_eq!(step["http_status"], Value::Null);
    }

    fn node_actions() -> Vec<v1::NodeActions> {
        let secret = v1::ArgumentDescriptor {
            name: "password".into(),
            r#type: v1::ArgumentType::String as i32,
            default_value: Some("hunter2".into()),
            allowed: vec!["hunter2".into(), "swordfish".into()],
            secret: true,
            ..Default::default()
        };
        let count = v1::ArgumentDescriptor {
            name: "count".into(),
            description: "how many".into(),
            r#type: v1::ArgumentType::Integer as i32,
            required: true,
            min: Some(1.0),
            max: Some(10.0),
            ..Default::default()
        };
        let scope = v1::ArgumentDescriptor {
            name: "scope".into(),
            default_value: Some("all".into()),
            allowed: vec!["all".into(), "pages".into()],
            pattern: "[a-z]+".into(),
            max_len: Some(16),
            ..Default::default()
        };
        vec![
            v1::NodeActions {
                node: "agent-1".into(),
                status: v1::OutcomeStatus::Ok as i32,
                message: String::new(),
                actions: vec![v1::ActionDescriptor {
                    name: "clear-cache".into(),
                    description: "Clear the app's cache".into(),
                    arguments: vec![count, scope, secret],
                    timeout_ms: 5000,
                    capability: String::new(),
                    tenants: vec!["acme".into(), "*".into()],
                    transactional: true,
                    builtin: false,
                }],
            },
            v1::NodeActions {
                node: "agent-2".into(),
                status: v1::OutcomeStatus::Unavailable as i32,
                message: "node is down".into(),
                actions: Vec::new(),
            },
        ]
    }

    #[test]
    fn list_shows_schemas_and_silent_nodes_but_never_secret_values() {
        let text = list_text(&node_actions());
        assert!(text.contains("agent-1: 1 action\n  clear-cache  Clear the app's cache\n"), "{text}");
        assert!(
            text.contains("declared · timeout 5.0 s · capability actions · tenants acme, every tenant · transactional"),
            "{text}"
        );
        assert!(text.contains("--arg count: integer, required, range 1..10 — how many"), "{text}");
        assert!(
            text.contains("--arg scope: string, default \"all\", one of all|pages, pattern /[a-z]+/, length ..16"),
            "{text}"
        );
        assert!(text.contains("--arg password: string, default ***, one of 2 allowed values (***), secret"), "{text}");
        assert!(text.contains("agent-2: unavailable: node is down"), "{text}");
        let json = list_json(&node_actions()).to_string();
        assert!(!text.contains("hunter2") && !json.contains("hunter2") && !json.contains("swordfish"), "{json}");
        let value = list_json(&node_actions());
        assert_eq!(value[0]["actions"][0]["arguments"][0]["min"], 1.0);
        assert_eq!(value[0]["actions"][0]["capability"], "actions");
        assert_eq!(value[1]["status"], "unavailable");
    }

    #[test]
    fn transaction_text_shows_votes_acks_and_what_is_pending() {
        let prepared = v1::ActionResult {
            status: v1::ActionStatus::Ok as i32,
            steps: vec![step("prepare", v1::ActionStatus::Ok, Some(0), "", "")],
            duration_ms: 3,
            message: String::new(),
        };
        let tx = v1::TransactionStatus {
            tx_id: "ab".repeat(16),
            phase: v1::TransactionPhase::Committing as i32,
            decision: v1::TransactionDecision::Commit as i32,
            participants: vec![
                v1::TransactionParticipant {
                    node: "agent-1".into(),
                    vote: v1::ParticipantVote::Yes as i32,
                    acknowledged: true,
                    prepare_result: Some(prepared.clone()),
                    decide_result: Some(prepared),
                    ..Default::default()
                },
                v1::TransactionParticipant {
                    node: "agent-2".into(),
                    shard: "shard-2".into(),
                    vote: v1::ParticipantVote::Yes as i32,
                    message: "unreachable".into(),
                    ..Default::default()
                },
            ],
            started_unix_ms: 1000,
            decided_unix_ms: 1045,
            ..Default::default()
        };
        let text = tx_text(&tx);
        assert!(
            text.starts_with(&format!("transaction {} committed (phase committing, decided in 45 ms)\n", tx.tx_id)),
            "{text}"
        );
        assert!(text.contains("ok exit 0 3 ms"), "{text}");
        assert!(text.contains("agent-2      shard-2  yes   no"), "{text}");
        assert!(text.contains("not acknowledged yet by agent-2"), "{text}");
        let value = tx_json(&tx);
        assert_eq!(
            (value["decision"].as_str(), value["participants"][1]["acknowledged"].as_bool()),
            (Some("commit"), Some(false))
        );
        let table = transactions_table(&[tx], UNIX_EPOCH + Duration::from_secs(61), false);
        assert!(table.contains("committing") && table.contains("1/2") && table.contains("1m ago"), "{table}");
        assert!(transactions_table(&[], UNIX_EPOCH, false).contains("--all"));
    }

    #[test]
    fn history_shows_records_and_the_next_page() {
        let record = v1::AuditRecord {
            sequence: 121,
            time_unix_ms: 1_767_225_600_000,
            subject: "alice".into(),
            tenant: "acme".into(),
            kind: v1::AuditKind::Broadcast as i32,
            operation_id: "job-7".into(),
            node: "agent-1".into(),
            action: "login".into(),
            arguments: [("user".to_owned(), "bob".to_owned()), ("password".to_owned(), REDACTED.to_owned())].into(),
            status: "ok".into(),
            duration_ms: 8,
            ..Default::default()
        };
        let response = v1::ActionHistoryResponse { records: vec![record], next_before_sequence: 121 };
        let text = history_table(&response);
        assert!(
            text.contains("2026-01-01T00:00:00Z") && text.contains("alice@acme") && text.contains("broadcast"),
            "{text}"
        );
        assert!(text.contains("password=*** user=bob"), "{text}");
        assert!(text.ends_with("older records: add --before 121\n"), "{text}");
        assert_eq!(history_json(&response)["next_before_sequence"], 121);
        let last = v1::ActionHistoryResponse { records: Vec::new(), next_before_sequence: 0 };
        assert_eq!(history_json(&last)["next_before_sequence"], Value::Null);
        assert_eq!(history_table(&last), "no audit records\n");
    }
}
