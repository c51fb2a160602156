//! The command line of `ragmeshctl`: global connection flags and one struct per subcommand.
//! Only definitions live here; each subcommand's module interprets its own arguments.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// Default master address, the same as `ragmesh-master --listen`.
pub const DEFAULT_MASTER: &str = "127.0.0.1:7400";

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "ragmeshctl",
    version,
    about = "Operate a ragmesh mesh: certificates, nodes, federated search, ingest, a local demo",
    long_about = "Operate a ragmesh mesh: certificates, nodes, federated search, ingest, a local demo.\n\n\
        Every command that talks to the master uses mutual TLS: pass the mesh CA and a client \
        certificate with --ca/--cert/--key (or RAGMESH_CA/RAGMESH_CERT/RAGMESH_KEY). Create them \
        with `ragmeshctl certs init --dir certs` and `ragmeshctl certs issue --dir certs client`. \
        With --token (or RAGMESH_TOKEN) every call also carries `authorization: Bearer <token>` \
        and the master acts for the token's subject and tenant instead of the certificate; get \
        tokens with `ragmeshctl token issue`. To see a whole mesh on this machine, run \
        `ragmeshctl demo`.",
    after_help = "Exit status: 0 success, 1 runtime failure, 2 an action did not succeed on every node (or a \
        transaction aborted), 3 a job or transaction not finished yet, 64 usage or configuration error."
)]
pub struct Cli {
    /// How to reach the master.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand accepts: where the master is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection to the master")]
pub struct GlobalArgs {
    /// Address of the master's gRPC API
    #[arg(
        long,
        global = true,
        env = "RAGMESH_MASTER",
        value_name = "HOST:PORT",
        default_value = DEFAULT_MASTER
    )]
    pub master: String,
    /// PEM file of the mesh CA the master's certificate was issued by
    #[arg(long, global = true, env = "RAGMESH_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate issued by the mesh CA (e.g. certs/client.pem)
    #[arg(long, global = true, env = "RAGMESH_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert (e.g. certs/client.key)
    #[arg(long, global = true, env = "RAGMESH_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Talk plaintext to a master started with --insecure (no TLS, no client certificate)
    #[arg(long, global = true, env = "RAGMESH_INSECURE")]
    pub insecure: bool,
    /// RPC deadline [default: 10000; ingest: 70000 per batch; action run: 600000]; for search
    /// and action tx, the search or vote deadline sent to the master [default: the master's
    /// own], with the gRPC deadline slightly above
    #[arg(
        long,
        global = true,
        env = "RAGMESH_TIMEOUT_MS",
        value_name = "MS",
        value_parser = clap::value_parser!(u32).range(1..=600_000)
    )]
    pub timeout_ms: Option<u32>,
    /// Access token: every call carries `authorization: Bearer TOKEN` and the master acts for
    /// the token's subject and tenant (see `ragmeshctl token issue`); without it, the client
    /// certificate is the identity (an operator when listed in the master's --operators)
    #[arg(long, global = true, env = "RAGMESH_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<Secret>,
}

/// A credential from the command line. `Debug` never shows it, so a logged or printed argument
/// struct cannot leak it; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret text, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a development CA and issue certificates for the master, agents and operators
    #[command(subcommand)]
    Certs(CertsCommand),
    /// List the nodes the master knows (--pending: refused join attempts); `nodes evict NAME`
    /// removes one
    ///
    /// `ragmeshctl nodes` lists the admitted nodes with their state and last heartbeat;
    /// `ragmeshctl nodes --pending` lists agents the master refused because they presented no
    /// valid join token; `ragmeshctl nodes evict NAME` removes an admitted node.
    Nodes(NodesArgs),
    /// Show everything the master knows about one node
    Node(NodeArgs),
    /// Documents per collection per node and shard group, mesh totals, index sizes, generations
    Stats(StatsArgs),
    /// Run a federated BM25 search and show the merged hits and what every node did
    Search(SearchArgs),
    /// Load documents from files and write them into one node's index through the master
    Ingest(IngestArgs),
    /// Access tokens for clients, join tokens for agents, and the master's signing keys
    ///
    /// Needs an operator: a client certificate listed in the master's --operators, or --token
    /// with the admin capability (`token refresh` needs neither).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Start a master and agents on this machine with mTLS, load a sample corpus and search it
    ///
    /// Starts ragmesh-master and N ragmesh-agent processes (found next to this executable: build
    /// them with `cargo build --bins`), loads the built-in sample corpus round-robin across the
    /// agents, runs one federated search and prints how to talk to the mesh with ragmeshctl and
    /// grpcurl. Runs until Ctrl-C or SIGTERM, then stops the daemons (agents first).
    ///
    /// Without --dir everything lives in a temporary directory, removed at exit (kept if the demo
    /// fails, for its logs). With --dir, DIR keeps certs/ (ca.pem, ca.key, and master, agent-N,
    /// client certificates), data/, logs/NAME.log, master.addr and NAME.pid. The connection
    /// flags below are ignored: the demo makes its own.
    Demo(DemoArgs),
    /// Measure federated search against one index on a TREC test collection: nDCG@10, MAP@100,
    /// P@10 per merge strategy, side by side
    ///
    /// Reads TREC documents, topics and qrels (e.g. the vaswani layout: --vaswani DIR), splits
    /// the documents into --shards N shards (--split round-robin, id-range or clustered: skewed
    /// by vocabulary, never by the topics or qrels), loads them, searches every topic (limit
    /// --limit, result cache bypassed) on one index and on the shards with each merge strategy
    /// (global_bm25, rrf, raw), and prints the metrics, their ratio to one index, how many
    /// top-10 lists are identical to one index's, a paired randomization test, latency and node
    /// calls.
    ///
    /// Fresh local mesh (the default; --local): starts ragmesh-master and N+1 ragmesh-agent
    /// processes (found next to this executable, like `demo`) in a temporary directory removed
    /// at the end (--dir keeps it): shard-1..shard-N, each its own shard group with its share,
    /// and `baseline`, its own group holding every document (the one index).
    ///
    /// Running mesh (--baseline NODE --shard-nodes A,B,..; connection flags as for any
    /// command): WRITES every document into collection --collection of NODE's shard group and
    /// each shard's documents into the group of the matching --shard-nodes entry (upserts by id:
    /// documents with the same ids in that collection are replaced), then searches only those
    /// nodes and that collection. Use nodes that hold nothing else: BM25 statistics count every
    /// collection of a node, so other documents shift the scores (eval warns when it sees any).
    /// Needs an operator (the documents are written readable by operators only).
    #[command(after_help = "Examples:\n  \
        ragmeshctl eval --vaswani ../shared/data/vaswani --shards 4 --split clustered\n  \
        ragmeshctl eval --docs docs.trec --topics topics.trec --qrels qrels --json\n  \
        ragmeshctl --master m:7000 eval --vaswani DIR --baseline big-node --shard-nodes a,b,c,d --collection npl-eval")]
    Eval(EvalArgs),
    /// Print the master's events live: nodes joining, going down and up, breakers, replicas,
    /// keys, certificates (needs an operator)
    ///
    /// One line per event; with --json one JSON object per line (for scripts, e.g. `| jq`).
    /// Runs until Ctrl-C or until the master ends the stream.
    Watch(WatchArgs),
    /// A live per-node view: state, requests/s, p50/p99, errors/s, breaker, heartbeat lag
    ///
    /// Membership, breakers and heartbeats come from the master's ListNodes (an operator
    /// connection, like `nodes`); requests, latency quantiles and errors from the master's
    /// /metrics (--metrics, its --metrics-listen address), read one --interval apart. Redraws in
    /// place on a terminal; prints plain tables otherwise; --once prints one view and exits.
    Top(TopArgs),
    /// Remote actions: list what nodes offer, run one on some or all nodes, transactions
    /// across nodes, jobs, and the audit log
    ///
    /// Calls need the `actions` capability (or the one the action declares) on --token, or an
    /// operator certificate.
    #[command(subcommand, after_help = ACTION_EXIT_HELP)]
    Action(ActionCommand),
}

/// The exit statuses of `ragmeshctl action ...`, shown by its help.
pub const ACTION_EXIT_HELP: &str = "Exit status:\n  \
    0   every selected node ran the action ok (tx: committed; list, history: answered)\n  \
    1   runtime failure: master unreachable, call refused for lack of permission\n  \
    2   the call was accepted but some node failed, timed out, errored, was not started or is\n      \
    unknown (tx: aborted)\n  \
    3   not finished yet: a running job, an undecided transaction (see `action status`)\n  \
    64  usage: bad flags, arguments the action's schema refuses, unknown node, job or key reuse";

/// `ragmeshctl action ...`
#[derive(Debug, Subcommand)]
pub enum ActionCommand {
    /// Show the actions each node offers, with their argument schemas
    List(ActionListArgs),
    /// Run an action on the selected nodes and show every node's outcome
    ///
    /// A fresh idempotency key is sent unless --idempotency-key is given; it is printed (on
    /// stderr, before the call), so the same command retried with `--idempotency-key KEY` after a
    /// network error returns the first result instead of running the action again.
    #[command(after_help = "Examples:\n  \
        ragmeshctl action run index.compact --node agent-1\n  \
        ragmeshctl action run clear-cache --all --arg scope=pages --max-fail-percent 20\n  \
        ragmeshctl action run node.set_labels --label rack=r4 --arg labels=zone=eu --detach\n\n\
        Exit status: 0 ok on every node, 2 not ok on some node, 3 not finished (--detach: 0 once \
        started), 1 runtime failure, 64 usage (see `ragmeshctl action --help`).")]
    Run(ActionRunArgs),
    /// Show a job (job-N) or a transaction (32 hex digits)
    Status(ActionStatusArgs),
    /// Follow a job until it finishes (redrawn on a terminal, one line per change otherwise)
    Watch(ActionWatchArgs),
    /// Run a transaction: one transactional action on several nodes, or a document write
    /// across shard groups; all parts commit or none does
    #[command(after_help = "Examples:\n  \
        ragmeshctl action tx rotate-config --node agent-1 --node agent-2 --arg version=7\n  \
        ragmeshctl action tx rotate-config --label role=app --arg version=7\n  \
        ragmeshctl action tx --ingest a.jsonl --shard shard-1 --ingest b.jsonl --shard shard-2\n\n\
        --timeout-ms is the vote deadline sent to the master (default 10000); the RPC waits a \
        little longer.\n\nExit status: 0 committed, 2 aborted, 3 not decided yet, 1 runtime failure, \
        64 usage (see `ragmeshctl action --help`).")]
    Tx(ActionTxArgs),
    /// List transactions, unfinished ones first (--all: finished ones too)
    Transactions(ActionTransactionsArgs),
    /// Read the audit log of actions, newest first
    History(ActionHistoryArgs),
}

/// `ragmeshctl action list`
#[derive(Debug, Args)]
pub struct ActionListArgs {
    /// Only this node (repeatable) [default: every node that is up]
    #[arg(long = "node", value_name = "N")]
    pub nodes: Vec<String>,
    /// Print a JSON array instead of text
    #[arg(long)]
    pub json: bool,
}

/// One `--arg NAME=VALUE`. The value may be a secret of the action's schema, so `Debug`
/// never shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallArg {
    /// Argument name.
    pub name: String,
    /// Its value (split at the first `=`, so it may hold `=` itself).
    pub value: Secret,
}

/// Parses `--arg NAME=VALUE` without ever echoing the value in an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallArgParser;

impl clap::builder::TypedValueParser for CallArgParser {
    type Value = CallArg;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<CallArg, clap::Error> {
        let invalid = |message: &str| clap::Error::raw(clap::error::ErrorKind::InvalidValue, message).with_cmd(cmd);
        let Some(text) = value.to_str() else {
            return Err(invalid("--arg is not valid UTF-8: pass NAME=VALUE in UTF-8\n"));
        };
        match text.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => {
                Ok(CallArg { name: name.trim().to_owned(), value: Secret(value.to_owned()) })
            }
            Some(_) => Err(invalid("--arg needs a NAME before the first `=`: pass NAME=VALUE\n")),
            None => {
                // Without `=` the text is most likely a name alone: safe to show.
                let name = text.chars().take(64).collect::<String>();
                Err(invalid(&format!("--arg {name:?} has no `=`: pass NAME=VALUE (VALUE may be empty)\n")))
            }
        }
    }
}

/// Parses `--label KEY=VALUE`.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE (e.g. --label rack=r4)".to_owned()),
    }
}

/// `ragmeshctl action run NAME (--node N... | --all | --label k=v... | --shard S...)`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("targets").required(true).multiple(true).args(["nodes", "all", "labels", "shards"])))]
pub struct ActionRunArgs {
    /// The action (see `ragmeshctl action list`)
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Run on this node (repeatable); with --label and --shard, the selections add up
    #[arg(long = "node", value_name = "N")]
    pub nodes: Vec<String>,
    /// Run on every node that is not evicted
    #[arg(long, conflicts_with_all = ["nodes", "labels", "shards"])]
    pub all: bool,
    /// Run on the nodes carrying every one of these labels (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Run on every replica of this shard group (repeatable)
    #[arg(long = "shard", value_name = "S")]
    pub shards: Vec<String>,
    /// An argument of the action (repeatable); VALUE may contain `=` (split at the first)
    #[arg(long = "arg", value_name = "NAME=VALUE", value_parser = CallArgParser)]
    pub args: Vec<CallArg>,
    /// Nodes running at once [default: the master's, 16]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_parallel: Option<u32>,
    /// Stop starting nodes once more than P percent of the selected nodes failed [default: 100,
    /// never stop]
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub max_fail_percent: Option<u32>,
    /// Idempotency key: the same key with the same parameters returns the first result without
    /// running again [default: a fresh random key, printed]
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,
    /// Return at once with the job id (follow it with `action watch JOB`)
    #[arg(long)]
    pub detach: bool,
    /// Also print every node's full stdout and stderr
    #[arg(long, conflicts_with = "detach")]
    pub output: bool,
    /// Print a JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl action status JOB_OR_TX`
#[derive(Debug, Args)]
pub struct ActionStatusArgs {
    /// A job id (`job-N`) or a transaction id (32 hex digits)
    #[arg(value_name = "JOB_OR_TX")]
    pub id: String,
    /// Also print every node's full stdout and stderr (jobs)
    #[arg(long)]
    pub output: bool,
    /// Print a JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl action watch JOB`
#[derive(Debug, Args)]
pub struct ActionWatchArgs {
    /// The job id (`job-N`)
    #[arg(value_name = "JOB")]
    pub job: String,
    /// Print one JSON object per update instead of text
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl action tx NAME (--node N... | --all | --label k=v...)` or `action tx --ingest
/// FILE --shard S ...`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("operation").required(true).args(["name", "ingest"])))]
#[command(group(ArgGroup::new("participants").multiple(true).args(["nodes", "all", "labels"])))]
pub struct ActionTxArgs {
    /// A transactional action to run on every participant (see `action list`: `transactional`)
    #[arg(value_name = "NAME", requires = "participants")]
    pub name: Option<String>,
    /// A participant of the action (repeatable)
    #[arg(long = "node", value_name = "N", requires = "name")]
    pub nodes: Vec<String>,
    /// Every node that is not evicted takes part (the master selects them; one that is down
    /// makes the transaction abort)
    #[arg(long, conflicts_with_all = ["nodes", "labels"], requires = "name")]
    pub all: bool,
    /// The nodes carrying every one of these labels take part (repeatable; selected by the master)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, requires = "name")]
    pub labels: Vec<(String, String)>,
    /// An argument of the action, the same for every node (repeatable)
    #[arg(long = "arg", value_name = "NAME=VALUE", value_parser = CallArgParser, requires = "name")]
    pub args: Vec<CallArg>,
    /// Documents to write (read like `ragmeshctl ingest` reads them), into the --shard given
    /// in the same position (repeatable, in pairs)
    #[arg(long = "ingest", value_name = "FILE", requires = "shards")]
    pub ingest: Vec<PathBuf>,
    /// The shard group taking the --ingest at the same position
    #[arg(long = "shard", value_name = "S", requires = "ingest")]
    pub shards: Vec<String>,
    /// Collection for documents that do not name one themselves (--ingest)
    #[arg(long, value_name = "C", default_value = "docs", requires = "ingest")]
    pub collection: String,
    /// How to read the --ingest files
    #[arg(long, value_enum, default_value_t = FormatArg::Auto, requires = "ingest")]
    pub format: FormatArg,
    /// Idempotency key [default: a fresh random key, printed]
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,
    /// Print a JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl action transactions`
#[derive(Debug, Args)]
pub struct ActionTransactionsArgs {
    /// Include transactions finished everywhere
    #[arg(long)]
    pub all: bool,
    /// At most this many
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Print a JSON array instead of a table
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl action history`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ragmeshctl action history --since 1h\n  \
    ragmeshctl action history --node agent-1 --action index.compact --since 2026-01-01T00:00:00Z\n  \
    ragmeshctl action history --before 120 --limit 20")]
pub struct ActionHistoryArgs {
    /// Only this node's records
    #[arg(long, value_name = "N")]
    pub node: Option<String>,
    /// Only this action's records
    #[arg(long, value_name = "NAME")]
    pub action: Option<String>,
    /// Only this caller's records
    #[arg(long, value_name = "S")]
    pub subject: Option<String>,
    /// Only records at or after this time: RFC 3339 (2026-01-01T00:00:00Z) or an age (90s,
    /// 15m, 2h, 7d)
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only records older than this sequence (the next page, as printed at the end)
    #[arg(long, value_name = "SEQ", value_parser = clap::value_parser!(u64).range(1..))]
    pub before: Option<u64>,
    /// At most this many records
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Print a JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl watch`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  ragmeshctl watch\n  ragmeshctl watch --kind node_down --kind node_up --json")]
pub struct WatchArgs {
    /// Only events of this kind (repeatable): node_joined, node_suspect, node_down, node_up,
    /// node_evicted, admission_refused, version_mismatch, breaker_opened, breaker_closed,
    /// replica_stale, replica_caught_up, signing_key_rotated, certificate_near_expiry
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Print one JSON object per line instead of text
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl top`
#[derive(Debug, Args)]
pub struct TopArgs {
    /// HOST:PORT of the master's Prometheus endpoint (its --metrics-listen); without it the
    /// traffic columns show `-`
    #[arg(long, env = "RAGMESH_METRICS", value_name = "HOST:PORT")]
    pub metrics: Option<String>,
    /// Refresh interval, and the window of the rates and quantiles
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(100..=60_000))]
    pub interval_ms: u32,
    /// Print one view (after one interval) and exit
    #[arg(long)]
    pub once: bool,
}

/// `ragmeshctl certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a development CA: DIR/ca.pem (give it to every party) and DIR/ca.key (keep it here)
    Init(CertsInitArgs),
    /// Issue NAME.pem and NAME.key signed by the CA in --dir, usable as TLS server and client
    ///
    /// The certificate names NAME and also holds localhost, 127.0.0.1 and ::1, plus every
    /// --host. Conventional names: `master` for the master, the node name for an agent (e.g.
    /// `agent-1`), `client` for operators.
    Issue(CertsIssueArgs),
}

/// `ragmeshctl certs init`
#[derive(Debug, Args)]
pub struct CertsInitArgs {
    /// Directory to write ca.pem and ca.key into (created if missing)
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Replace an existing CA (every certificate it issued stops being trusted)
    #[arg(long)]
    pub force: bool,
}

/// `ragmeshctl certs issue`
#[derive(Debug, Args)]
pub struct CertsIssueArgs {
    /// Directory holding the CA (ca.pem and ca.key, from `certs init`)
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Name of the party: 1-63 characters of a-z, 0-9 and - (master, agent-1, client, ...)
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Extra DNS name or IP address the certificate is valid for (repeatable)
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Directory to write NAME.pem and NAME.key into [default: --dir]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Validity in days
    #[arg(long, value_name = "N", default_value_t = ragmesh_tls::devca::DEFAULT_LEAF_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
}

/// `ragmeshctl nodes [--pending] [--json]` and `ragmeshctl nodes evict NAME`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodesArgs {
    /// List agents refused admission (no valid join token) instead of admitted nodes
    #[arg(long)]
    pub pending: bool,
    /// Print a JSON array instead of a table
    #[arg(long)]
    pub json: bool,
    /// Act on one node instead of listing
    #[command(subcommand)]
    pub command: Option<NodesCommand>,
}

/// `ragmeshctl nodes ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// Remove a node: its health stream ends and it cannot register again without a new join token
    ///
    /// The master forgets the node and refuses its reconnection until it is admitted again with
    /// a join token. The agent process keeps running and keeps retrying: stop it on its server.
    /// If the join token that admitted it still has uses left, revoke that token too
    /// (`ragmeshctl token join --list`, then `--revoke ID`), or the agent's next retry rejoins.
    Evict(EvictArgs),
}

/// `ragmeshctl nodes evict NAME`
#[derive(Debug, Args)]
pub struct EvictArgs {
    /// Node name (see `ragmeshctl nodes`)
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `ragmeshctl node NAME`
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Node name (see `ragmeshctl nodes`)
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Print a JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl stats`
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print a JSON object instead of tables
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl search QUERY`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  ragmeshctl search \"certificate rotation\"\n  \
    ragmeshctl search replication --collection guides --limit 5\n  \
    ragmeshctl search '\"health check\" -timeout' --node agent-1 --json")]
pub struct SearchArgs {
    /// Query: words, "phrases", +required, -excluded, field:term
    #[arg(value_name = "QUERY")]
    pub query: String,
    /// Only search this collection (repeatable) [default: all]
    #[arg(long = "collection", value_name = "C")]
    pub collections: Vec<String>,
    /// Only ask this node (repeatable) [default: every node]
    #[arg(long = "node", value_name = "N")]
    pub nodes: Vec<String>,
    /// Maximum merged hits
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Drop hits whose node-local BM25 score is below this
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub min_score: f64,
    /// How node hits are merged: global-bm25 (statistics phase, then scores as one index
    /// would give), rrf (reciprocal rank fusion of each node's own ranking, one round trip) or
    /// raw (node-local scores sorted as they are: for comparison only)
    #[arg(long, value_enum, default_value_t = MergeArg::GlobalBm25)]
    pub merge: MergeArg,
    /// Ask the nodes even when the master's result cache holds the answer
    #[arg(long)]
    pub no_cache: bool,
    /// Print {"hits":[...],"nodes":[...],"took_ms":..,"merge_strategy":..,"cached":..} instead of tables
    #[arg(long)]
    pub json: bool,
}

/// Merge strategies of `search`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum MergeArg {
    /// Every node scores with the collection-wide statistics; merged by score
    #[default]
    GlobalBm25,
    /// Reciprocal rank fusion of each node's own ranking
    Rrf,
    /// Node-local scores sorted as they are (not comparable across nodes; for comparison)
    Raw,
}

impl MergeArg {
    /// The name the master takes.
    pub fn wire(self) -> &'static str {
        match self {
            MergeArg::GlobalBm25 => "global_bm25",
            MergeArg::Rrf => "rrf",
            MergeArg::Raw => "raw",
        }
    }
}

/// Input formats of `ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum FormatArg {
    /// By extension: .trec; .jsonl/.ndjson; .txt/.md/.markdown (others are skipped)
    #[default]
    Auto,
    /// TREC `<DOC>` blocks with `<DOCNO>`
    Trec,
    /// One JSON object per line: {"id", "collection"?, "title"?, "body" or "text", "metadata"?}
    Jsonl,
    /// Every file is one document; its path is the id
    Text,
}

/// `ragmeshctl ingest PATH --shard GROUP` (or `--node NODE`: that node's group)
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["node", "shard"])))]
pub struct IngestArgs {
    /// File or directory to load (directories are walked recursively, hidden entries skipped)
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Shard group that receives the documents: every replica of it (see `ragmeshctl nodes`)
    #[arg(long, value_name = "GROUP")]
    pub shard: Option<String>,
    /// A node whose shard group receives the documents (every replica of that group)
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Collection for documents that do not name one themselves
    #[arg(long, value_name = "C", default_value = "docs")]
    pub collection: String,
    /// How to read the files
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    pub format: FormatArg,
    /// Documents per IngestDocuments call (1-10000)
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
}

/// `ragmeshctl token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue an access token and a refresh token for a subject of a tenant
    ///
    /// The access token (a JWT signed by the master) goes into `--token` or RAGMESH_TOKEN of
    /// the client; the refresh token trades for new tokens with `ragmeshctl token refresh`.
    /// Both are printed to stdout only, and only here: store them like passwords.
    ///
    /// A token without `admin` reads only documents its tenant or subject may read, and writes
    /// documents readable by its tenant. `admin` reads and writes every tenant's documents and
    /// can issue further tokens: give it to operators only.
    #[command(after_help = "Examples:\n  \
        ragmeshctl token issue --subject alice --tenant acme --cap search\n  \
        export RAGMESH_TOKEN=$(ragmeshctl token issue --subject loader --tenant acme --cap ingest --json | jq -r .access_token)")]
    Issue(TokenIssueArgs),
    /// Trade a refresh token for a new access token and a new refresh token
    ///
    /// The refresh token presented is used up: keep the new one for the next refresh.
    /// Presenting a used refresh token again is treated as theft: the master revokes the whole
    /// token family (every refresh token descending from the same `token issue`), so the
    /// newest refresh token stops working too, and the subject must be issued new tokens.
    /// Access tokens already issued stay valid until they expire.
    Refresh(TokenRefreshArgs),
    /// Revoke refresh-token families: one family, or every family of a subject
    ///
    /// Revoked refresh tokens no longer refresh. With --subject, every access token issued to the
    /// subject so far is refused at once as well; with --family, access tokens already issued
    /// stay valid until they expire (the master's --access-token-ttl-s, 15 minutes unless changed).
    Revoke(TokenRevokeArgs),
    /// Create a join token that admits agents (or --list, or --revoke ID)
    ///
    /// An agent registers for the first time only with a certificate from the mesh CA and a
    /// join token: pass it as `ragmesh-agent --join-token TOKEN` or RAGMESH_JOIN_TOKEN. The
    /// token is shown once (the master keeps only its hash) and admits --uses agents before
    /// --ttl runs out. Once admitted, a node re-registers without a token until it is evicted.
    Join(TokenJoinArgs),
    /// Start signing with a new key; tokens signed with the old one verify until they expire
    RotateKey,
    /// List the public keys that verify the master's tokens
    Keys(TokenKeysArgs),
}

/// A token capability, as `token issue --cap` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CapabilityArg {
    /// Search (read documents the token's tenant or subject may read)
    Search,
    /// Ingest and remove documents of the token's tenant
    Ingest,
    /// Run actions on nodes
    Actions,
    /// Everything, across every tenant: tokens, nodes, join tokens, keys
    Admin,
}

impl CapabilityArg {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            CapabilityArg::Search => "search",
            CapabilityArg::Ingest => "ingest",
            CapabilityArg::Actions => "actions",
            CapabilityArg::Admin => "admin",
        }
    }
}

/// `ragmeshctl token issue`
#[derive(Debug, Args)]
pub struct TokenIssueArgs {
    /// Who the token identifies (a user or service name)
    #[arg(long, value_name = "S")]
    pub subject: String,
    /// Tenant of the subject: the token reads that tenant's documents
    #[arg(long, value_name = "T")]
    pub tenant: String,
    /// Capability (repeatable, or comma-separated)
    #[arg(long = "cap", value_name = "CAP", value_enum, required = true, value_delimiter = ',')]
    pub caps: Vec<CapabilityArg>,
    /// Access-token lifetime in seconds [default: the master's --access-token-ttl-s, 900 unless
    /// changed; at most its --max-access-token-ttl-s, 86400 unless changed]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub ttl: Option<u32>,
    /// Print a JSON object (access_token, expires_at, token_id, refresh_token, family)
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl token refresh`
#[derive(Debug, Args)]
pub struct TokenRefreshArgs {
    /// The refresh token from the last `token issue` or `token refresh`
    #[arg(value_name = "REFRESH_TOKEN", env = "RAGMESH_REFRESH_TOKEN", hide_env_values = true)]
    pub refresh_token: Secret,
    /// Print a JSON object (access_token, expires_at, refresh_token)
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl token revoke`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["family", "subject"])))]
pub struct TokenRevokeArgs {
    /// Revoke this refresh-token family
    #[arg(long, value_name = "F")]
    pub family: Option<String>,
    /// Revoke every refresh-token family of this subject
    #[arg(long, value_name = "S")]
    pub subject: Option<String>,
}

/// Longest join-token lifetime the CLI asks for: 30 days.
pub const MAX_JOIN_TTL_SECONDS: u32 = 30 * 86_400;

/// `ragmeshctl token join`
#[derive(Debug, Args)]
pub struct TokenJoinArgs {
    /// How many agents the token admits
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub uses: u32,
    /// Lifetime in seconds (at most 30 days)
    #[arg(long, value_name = "SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_JOIN_TTL_SECONDS)))]
    pub ttl: u32,
    /// Free text for operators, shown by --list (e.g. which servers it is for)
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub note: String,
    /// List join tokens (id, expiry, uses left, nodes admitted, note) instead of creating one
    #[arg(long, conflicts_with_all = ["uses", "ttl", "note", "revoke"])]
    pub list: bool,
    /// Revoke the join token with this id (see --list) instead of creating one
    #[arg(long, value_name = "ID", conflicts_with_all = ["uses", "ttl", "note", "json"])]
    pub revoke: Option<String>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl token keys`
#[derive(Debug, Args)]
pub struct TokenKeysArgs {
    /// Print a JSON array instead of a table
    #[arg(long)]
    pub json: bool,
}

/// `ragmeshctl eval`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("inputs").args(["docs", "vaswani"]).required(true)))]
pub struct EvalArgs {
    /// The test collection in the vaswani layout: DIR/doc-text.trec, DIR/query-text.trec, DIR/qrels
    #[arg(long, value_name = "DIR", conflicts_with_all = ["docs", "topics", "qrels"])]
    pub vaswani: Option<PathBuf>,
    /// TREC documents (<DOC><DOCNO>..</DOCNO>..</DOC>)
    #[arg(long, value_name = "FILE", requires_all = ["topics", "qrels"])]
    pub docs: Option<PathBuf>,
    /// TREC topics (<top><num>..</num><title>..</title></top>)
    #[arg(long, value_name = "FILE", requires = "docs")]
    pub topics: Option<PathBuf>,
    /// TREC relevance judgments (qid iter docno rel)
    #[arg(long, value_name = "FILE", requires = "docs")]
    pub qrels: Option<PathBuf>,
    /// Number of shards the documents are split into (1-64)
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shards: u32,
    /// How documents are split: round-robin (input order), id-range (sorted ids in N equal
    /// ranges) or clustered (k-means over tf-idf vectors with a fixed seed: shards by topic, of
    /// unequal sizes)
    #[arg(long, value_enum, default_value_t = SplitArg::RoundRobin)]
    pub split: SplitArg,
    /// Collection the documents are loaded into and searched in
    #[arg(long, value_name = "C", default_value = "eval")]
    pub collection: String,
    /// Hits per search (the run depth; MAP@100 needs 100)
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(10..=1000))]
    pub limit: u32,
    /// Documents per IngestDocuments call (1-10000)
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Topics searched at once (each by every system in turn); above 1 the searches contend,
    /// so the p50 latencies printed are only those of an idle mesh at 1
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub concurrency: u32,
    /// Start a fresh local mesh even when a master is configured (the default without
    /// --baseline)
    #[arg(long, conflicts_with_all = ["baseline", "shard_nodes"])]
    pub local: bool,
    /// Running mesh: the node whose shard group receives every document (the one index)
    #[arg(long, value_name = "NODE", requires = "shard_nodes")]
    pub baseline: Option<String>,
    /// Running mesh: one node per shard, comma-separated; each one's group receives that
    /// shard's documents (--shards is their number)
    #[arg(long, value_name = "A,B,..", value_delimiter = ',', requires = "baseline")]
    pub shard_nodes: Vec<String>,
    /// Fresh local mesh: keep certificates, data and logs in DIR (new, empty, or an earlier
    /// demo/eval directory)
    #[arg(long, value_name = "DIR", conflicts_with = "baseline")]
    pub dir: Option<PathBuf>,
    /// Search every topic word as required (`+word`): conjunctive queries, which term-summary
    /// routing can answer without asking the shards that lack a word
    #[arg(long)]
    pub require_all: bool,
    /// Wait this long after loading before searching, so the agents' term summaries (sent on
    /// their heartbeats) reach the master and routing can skip shards [default: 3 heartbeats of
    /// the local mesh, 1500; a running mesh: 3000]
    #[arg(long, value_name = "MS")]
    pub settle_ms: Option<u64>,
    /// Print one JSON object instead of tables
    #[arg(long)]
    pub json: bool,
}

impl EvalArgs {
    /// The documents, topics and qrels files.
    pub fn files(&self) -> Option<(PathBuf, PathBuf, PathBuf)> {
        if let Some(dir) = &self.vaswani {
            return Some((dir.join("doc-text.trec"), dir.join("query-text.trec"), dir.join("qrels")));
        }
        Some((self.docs.clone()?, self.topics.clone()?, self.qrels.clone()?))
    }
}

/// Split strategies of `eval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SplitArg {
    /// Document i to shard i mod N
    #[default]
    RoundRobin,
    /// Sorted ids cut into N contiguous equal ranges
    IdRange,
    /// Clustered by vocabulary (k-means over tf-idf): skewed shards
    Clustered,
}

/// `ragmeshctl demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of agents to start (1-16)
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub agents: u32,
    /// Replicas per shard group: the agents form agents/replicas groups (shard-1, ...) holding
    /// the sample corpus split between them; with 2 or more, the demo also kills one replica
    /// and searches again, to show that nothing changes
    #[arg(long, value_name = "R", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replicas: u32,
    /// Keep everything in DIR (created if missing; must be empty or an earlier demo directory)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Stop right after the search instead of running until Ctrl-C (for tests and CI)
    #[arg(long)]
    pub no_wait: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ragmeshctl").chain(args.iter().copied()))
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_are_accepted_after_the_subcommand() {
        let cli = parse(&["search", "tls", "--master", "m:1", "--insecure", "--timeout-ms", "50"]).expect("parses");
        assert_eq!(cli.global.master, "m:1");
        assert!(cli.global.insecure);
        assert_eq!(cli.global.timeout_ms, Some(50));
    }

    #[test]
    fn search_defaults_and_repeated_flags() {
        let cli = parse(&[
            "search",
            "index replication",
            "--collection",
            "guides",
            "--collection",
            "faq",
            "--node",
            "agent-1",
        ])
        .expect("parses");
        let Command::Search(search) = cli.command else {
            panic!("expected search");
        };
        assert_eq!(search.query, "index replication");
        assert_eq!(search.collections, ["guides", "faq"]);
        assert_eq!(search.nodes, ["agent-1"]);
        assert_eq!(search.limit, 10);
        assert!(!search.json);
    }

    #[test]
    fn ingest_defaults() {
        let cli = parse(&["ingest", "corpus/", "--node", "agent-2"]).expect("parses");
        let Command::Ingest(ingest) = cli.command else {
            panic!("expected ingest");
        };
        assert_eq!(ingest.collection, "docs");
        assert_eq!(ingest.batch, 500);
        assert_eq!(ingest.format, FormatArg::Auto);
    }

    #[test]
    fn out_of_range_values_are_usage_errors() {
        for args in [
            &["search", "q", "--limit", "0"][..],
            &["search", "q", "--limit", "1001"],
            &["ingest", "p", "--node", "n", "--batch", "0"],
            &["ingest", "p", "--node", "n", "--format", "pdf"],
            &["demo", "--agents", "0"],
            &["certs", "issue", "--dir", "d", "x", "--days", "0"],
            &["nodes", "--timeout-ms", "0"],
        ] {
            let err = parse(args).expect_err("out of range");
            assert!(err.use_stderr(), "{args:?} should be an error: {err}");
        }
    }

    #[test]
    fn ingest_requires_a_shard_or_a_node_not_both() {
        let err = parse(&["ingest", "corpus/"]).expect_err("target missing");
        assert!(err.to_string().contains("--shard") && err.to_string().contains("--node"), "{err}");
        parse(&["ingest", "p", "--node", "n", "--shard", "g"]).expect_err("both");
        let cli = parse(&["ingest", "p", "--shard", "g"]).expect("a shard alone");
        let Command::Ingest(ingest) = cli.command else { panic!("expected ingest") };
        assert_eq!((ingest.shard.as_deref(), ingest.node), (Some("g"), None));
    }

    #[test]
    fn token_is_global_and_never_shown_by_debug() {
        let cli = parse(&["search", "q", "--token", "eyJ.secret.sig"]).expect("parses");
        let token = cli.global.token.as_ref().expect("token");
        assert_eq!(token.expose(), "eyJ.secret.sig");
        let debug = format!("{cli:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("Secret(<redacted>)"), "{debug}");
    }

    #[test]
    fn token_issue_takes_repeated_and_comma_separated_capabilities() {
        let cli = parse(&[
            "token",
            "issue",
            "--subject",
            "alice",
            "--tenant",
            "acme",
            "--cap",
            "search,ingest",
            "--cap",
            "admin",
            "--ttl",
            "60",
            "--json",
        ])
        .expect("parses");
        let Command::Token(TokenCommand::Issue(issue)) = cli.command else {
            panic!("expected token issue");
        };
        assert_eq!(issue.subject, "alice");
        assert_eq!(issue.tenant, "acme");
        assert_eq!(issue.caps, [CapabilityArg::Search, CapabilityArg::Ingest, CapabilityArg::Admin]);
        assert_eq!(issue.ttl, Some(60));
        assert!(issue.json);
    }

    #[test]
    fn token_issue_needs_subject_tenant_and_a_known_capability() {
        for args in [
            &["token", "issue", "--subject", "a", "--tenant", "t"][..],
            &["token", "issue", "--subject", "a", "--cap", "search"],
            &["token", "issue", "--tenant", "t", "--cap", "search"],
            &["token", "issue", "--subject", "a", "--tenant", "t", "--cap", "root"],
            &["token", "issue", "--subject", "a", "--tenant", "t", "--cap", "search", "--ttl", "0"],
        ] {
            let err = parse(args).expect_err("incomplete");
            assert!(err.use_stderr(), "{args:?}: {err}");
        }
    }

    #[test]
    fn token_refresh_takes_the_token_as_an_argument() {
        let cli = parse(&["token", "refresh", "rmr_abc", "--json"]).expect("parses");
        let Command::Token(TokenCommand::Refresh(refresh)) = cli.command else {
            panic!("expected token refresh");
        };
        assert_eq!(refresh.refresh_token.expose(), "rmr_abc");
        assert!(refresh.json);
        assert!(!format!("{refresh:?}").contains("rmr_abc"));
    }

    #[test]
    fn token_revoke_needs_exactly_one_target() {
        let cli = parse(&["token", "revoke", "--subject", "alice"]).expect("parses");
        let Command::Token(TokenCommand::Revoke(revoke)) = cli.command else {
            panic!("expected token revoke");
        };
        assert_eq!(revoke.subject.as_deref(), Some("alice"));
        assert!(revoke.family.is_none());
        assert!(parse(&["token", "revoke", "--family", "f"]).is_ok());
        assert!(parse(&["token", "revoke"]).is_err());
        assert!(parse(&["token", "revoke", "--family", "f", "--subject", "s"]).is_err());
    }

    #[test]
    fn token_join_defaults_and_modes() {
        let cli = parse(&["token", "join"]).expect("parses");
        let Command::Token(TokenCommand::Join(join)) = cli.command else {
            panic!("expected token join");
        };
        assert_eq!((join.uses, join.ttl, join.note.as_str()), (1, 3600, ""));
        assert!(!join.list && join.revoke.is_none());

        let cli = parse(&["token", "join", "--uses", "3", "--ttl", "600", "--note", "rack 4"]).expect("parses");
        let Command::Token(TokenCommand::Join(join)) = cli.command else {
            panic!("expected token join");
        };
        assert_eq!((join.uses, join.ttl, join.note.as_str()), (3, 600, "rack 4"));

        let cli = parse(&["token", "join", "--list", "--json"]).expect("--list with defaults parses");
        let Command::Token(TokenCommand::Join(join)) = cli.command else {
            panic!("expected token join");
        };
        assert!(join.list && join.json);

        let cli = parse(&["token", "join", "--revoke", "a1b2"]).expect("parses");
        let Command::Token(TokenCommand::Join(join)) = cli.command else {
            panic!("expected token join");
        };
        assert_eq!(join.revoke.as_deref(), Some("a1b2"));

        for args in [
            &["token", "join", "--list", "--uses", "2"][..],
            &["token", "join", "--list", "--revoke", "x"],
            &["token", "join", "--revoke", "x", "--ttl", "5"],
            &["token", "join", "--uses", "0"],
            &["token", "join", "--ttl", "2592001"],
        ] {
            let err = parse(args).expect_err("conflicting or out of range");
            assert!(err.use_stderr(), "{args:?}: {err}");
        }
    }

    #[test]
    fn token_key_commands_parse() {
        assert!(matches!(
            parse(&["token", "rotate-key"]).expect("parses").command,
            Command::Token(TokenCommand::RotateKey)
        ));
        let cli = parse(&["token", "keys", "--json"]).expect("parses");
        assert!(matches!(cli.command, Command::Token(TokenCommand::Keys(TokenKeysArgs { json: true }))));
    }

    #[test]
    fn nodes_lists_pending_and_evicts() {
        let cli = parse(&["nodes"]).expect("plain nodes still parses");
        let Command::Nodes(nodes) = cli.command else {
            panic!("expected nodes");
        };
        assert!(!nodes.pending && !nodes.json && nodes.command.is_none());

        let cli = parse(&["nodes", "--pending", "--json"]).expect("parses");
        let Command::Nodes(nodes) = cli.command else {
            panic!("expected nodes");
        };
        assert!(nodes.pending && nodes.json);

        let cli = parse(&["nodes", "evict", "agent-2", "--master", "m:1"]).expect("parses");
        assert_eq!(cli.global.master, "m:1");
        let Command::Nodes(NodesArgs { command: Some(NodesCommand::Evict(evict)), .. }) = cli.command else {
            panic!("expected nodes evict");
        };
        assert_eq!(evict.name, "agent-2");

        assert!(parse(&["nodes", "evict"]).is_err(), "evict needs a name");
        assert!(parse(&["nodes", "--pending", "evict", "x"]).is_err(), "listing flags do not mix with evict");
    }

    fn action(args: &[&str]) -> Result<ActionCommand, clap::Error> {
        let cli = parse(&std::iter::once("action").chain(args.iter().copied()).collect::<Vec<_>>())?;
        let Command::Action(command) = cli.command else { panic!("expected action") };
        Ok(command)
    }

    #[test]
    fn action_list_and_status_forms_parse() {
        let ActionCommand::List(list) = action(&["list", "--node", "a", "--node", "b", "--json"]).expect("parses")
        else {
            panic!("expected list")
        };
        assert_eq!((list.nodes, list.json), (vec!["a".to_owned(), "b".to_owned()], true));
        assert!(matches!(action(&["list"]), Ok(ActionCommand::List(ActionListArgs { json: false, .. }))));
        let ActionCommand::Status(status) = action(&["status", "job-3", "--output"]).expect("parses") else {
            panic!("expected status")
        };
        assert_eq!((status.id.as_str(), status.output, status.json), ("job-3", true, false));
        assert!(action(&["status"]).is_err(), "status needs an id");
        let ActionCommand::Watch(watch) = action(&["watch", "job-3", "--json"]).expect("parses") else {
            panic!("expected watch")
        };
        assert_eq!((watch.job.as_str(), watch.json), ("job-3", true));
        let ActionCommand::Transactions(txs) = action(&["transactions", "--all"]).expect("parses") else {
            panic!("expected transactions")
        };
        assert_eq!((txs.all, txs.limit), (true, 100));
        let ActionCommand::History(history) = action(&["history"]).expect("parses") else { panic!("expected history") };
        assert_eq!((history.limit, history.before, history.since), (50, None, None));
        assert!(action(&["history", "--limit", "0"]).is_err());
        assert!(action(&["history", "--before", "0"]).is_err());
    }

    #[test]
    fn action_run_takes_every_selector_and_repeated_args() {
        let ActionCommand::Run(run) = action(&[
            "run",
            "clear-cache",
            "--node",
            "a",
            "--node",
            "b",
            "--label",
            "rack=r4",
            "--shard",
            "s1",
            "--arg",
            "url=http://x/?a=1",
            "--arg",
            "flag=",
            "--idempotency-key",
            "k-1",
            "--json",
            "--output",
        ])
        .expect("parses") else {
            panic!("expected run")
        };
        assert_eq!(run.name, "clear-cache");
        assert_eq!(run.nodes, ["a", "b"]);
        assert_eq!(run.labels, [("rack".to_owned(), "r4".to_owned())]);
        assert_eq!(run.shards, ["s1"]);
        let args: Vec<(&str, &str)> = run.args.iter().map(|a| (a.name.as_str(), a.value.expose())).collect();
        assert_eq!(args, [("url", "http://x/?a=1"), ("flag", "")]);
        assert_eq!(run.idempotency_key.as_deref(), Some("k-1"));
        assert!(run.json && run.output && !run.all && !run.detach);
        assert!(action(&["run", "x", "--all", "--max-parallel", "4", "--max-fail-percent", "25", "--detach"]).is_ok());
        assert!(action(&["run", "x", "--label", "a=b"]).is_ok(), "a label alone selects");
        assert!(action(&["run", "x", "--shard", "s"]).is_ok(), "a shard alone selects");
    }

    #[test]
    fn action_run_refuses_no_target_both_node_and_all_and_bad_values() {
        for args in [
            &["run", "x"][..],
            &["run", "x", "--arg", "a=b"],
            &["run", "x", "--node", "a", "--all"],
            &["run", "x", "--all", "--label", "a=b"],
            &["run", "x", "--all", "--shard", "s"],
            &["run", "--all"],
            &["run", "x", "--all", "--max-fail-percent", "101"],
            &["run", "x", "--all", "--max-parallel", "0"],
            &["run", "x", "--all", "--detach", "--output"],
            &["run", "x", "--label", "novalue"],
            &["run", "x", "--label", "=v"],
        ] {
            let err = action(args).expect_err("refused");
            assert!(err.use_stderr(), "{args:?}: {err}");
        }
        let err = action(&["run", "x"]).expect_err("no target");
        assert!(err.to_string().contains("--node") && err.to_string().contains("--all"), "{err}");
    }

    #[test]
    fn a_bad_arg_is_refused_without_echoing_its_value() {
        let err = action(&["run", "x", "--all", "--arg", "password"]).expect_err("no =");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(err.to_string().contains("NAME=VALUE"), "{err}");
        let err = action(&["run", "x", "--all", "--arg", "=hunter2"]).expect_err("no name");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let ActionCommand::Run(run) = action(&["run", "x", "--all", "--arg", "password=hunter2"]).expect("parses")
        else {
            panic!("expected run")
        };
        assert!(!format!("{run:?}").contains("hunter2"), "Debug never shows an argument value");
    }

    #[test]
    fn action_tx_takes_an_action_on_nodes_or_paired_writes() {
        let ActionCommand::Tx(tx) =
            action(&["tx", "rotate", "--node", "a", "--node", "b", "--arg", "v=7", "--timeout-ms", "2000"])
                .expect("parses")
        else {
            panic!("expected tx")
        };
        assert_eq!((tx.name.as_deref(), tx.nodes.len(), tx.args.len()), (Some("rotate"), 2, 1));
        assert!(tx.ingest.is_empty());
        let cli = parse(&["action", "tx", "rotate", "--node", "a", "--timeout-ms", "2000"]).expect("parses");
        assert_eq!(cli.global.timeout_ms, Some(2000), "the vote deadline is the global --timeout-ms");

        let ActionCommand::Tx(tx) =
            action(&["tx", "--ingest", "a.jsonl", "--shard", "s1", "--ingest", "b", "--shard", "s2"]).expect("parses")
        else {
            panic!("expected tx")
        };
        assert_eq!(tx.ingest, [PathBuf::from("a.jsonl"), PathBuf::from("b")]);
        assert_eq!(tx.shards, ["s1", "s2"]);
        assert_eq!((tx.collection.as_str(), tx.format), ("docs", FormatArg::Auto));

        for args in [
            &["tx"][..],
            &["tx", "rotate"],
            &["tx", "--node", "a"],
            &["tx", "--ingest", "a.jsonl"],
            &["tx", "--shard", "s1"],
            &["tx", "rotate", "--node", "a", "--ingest", "f", "--shard", "s"],
            &["tx", "--ingest", "f", "--shard", "s", "--arg", "a=b"],
            &["tx", "rotate", "--node", "a", "--collection", "c"],
        ] {
            let err = action(args).expect_err("refused");
            assert!(err.use_stderr(), "{args:?}: {err}");
        }
    }

    #[test]
    fn certs_issue_collects_hosts() {
        let cli = parse(&["certs", "issue", "--dir", "ca", "master", "--host", "m.example", "--host", "10.0.0.1"])
            .expect("parses");
        let Command::Certs(CertsCommand::Issue(issue)) = cli.command else {
            panic!("expected certs issue");
        };
        assert_eq!(issue.name, "master");
        assert_eq!(issue.hosts, ["m.example", "10.0.0.1"]);
        assert_eq!(issue.days, ragmesh_tls::devca::DEFAULT_LEAF_DAYS);
        assert!(issue.out.is_none());
    }
}
