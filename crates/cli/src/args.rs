//! The command line of `ragmeshctl`: global connection flags and one struct per subcommand.
//! Only definitions live here; each subcommand's module interprets its own arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
        To see a whole mesh on this machine, run `ragmeshctl demo`.",
    after_help = "Exit status: 0 success, 1 runtime failure, 64 usage or configuration error."
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
    /// RPC deadline [default: 10000; ingest: 70000 per batch]; for search, the search deadline
    /// sent to the master [default: the master's own], with the gRPC deadline slightly above
    #[arg(
        long,
        global = true,
        env = "RAGMESH_TIMEOUT_MS",
        value_name = "MS",
        value_parser = clap::value_parser!(u32).range(1..=600_000)
    )]
    pub timeout_ms: Option<u32>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a development CA and issue certificates for the master, agents and operators
    #[command(subcommand)]
    Certs(CertsCommand),
    /// List the nodes the master knows, with their state and last heartbeat
    Nodes(NodesArgs),
    /// Show everything the master knows about one node
    Node(NodeArgs),
    /// Run a federated BM25 search and show the merged hits and what every node did
    Search(SearchArgs),
    /// Load documents from files and write them into one node's index through the master
    Ingest(IngestArgs),
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

/// `ragmeshctl nodes`
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Print a JSON array instead of a table
    #[arg(long)]
    pub json: bool,
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
    /// Print {"hits":[...],"nodes":[...],"took_ms":..,"merge_strategy":..} instead of tables
    #[arg(long)]
    pub json: bool,
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

/// `ragmeshctl ingest PATH --node NODE`
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// File or directory to load (directories are walked recursively, hidden entries skipped)
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Node whose index receives the documents (see `ragmeshctl nodes`)
    #[arg(long, value_name = "NODE")]
    pub node: String,
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

/// `ragmeshctl demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of agents to start (1-16)
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub agents: u32,
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
    fn ingest_requires_a_node() {
        let err = parse(&["ingest", "corpus/"]).expect_err("node missing");
        assert!(err.to_string().contains("--node"), "{err}");
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
