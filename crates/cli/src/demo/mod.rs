//! `ragmeshctl demo`: a whole mesh on this machine. Makes a dev CA and certificates, starts
//! `ragmesh-master` and N `ragmesh-agent`s as child processes (each binds port 0 and reports the
//! port it got in `DIR/<name>.addr`), waits until every agent is up,
//! loads the sample corpus round-robin over the shard groups, runs one federated search, prints
//! how to talk to the mesh, and stops everything on Ctrl-C/SIGTERM (or at once with
//! `--no-wait`). With `--replicas 2` or more, each group has that many replicas, and the demo
//! kills one replica (SIGKILL) and searches again: the answer does not change.
//!
//! Each agent sits beside a stand-in application ([`app`], an HTTP server in this process) and
//! declares actions on it and on itself in its config file ([`actions`]), so `ragmeshctl
//! action ...` can be tried on real exec and http actions, broadcasts and transactions.

pub mod actions;
pub mod app;
pub mod daemons;
pub mod workdir;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ragmesh_proto::v1;
use ragmesh_tls::TlsFiles;
use ragmesh_tls::devca::{self, DevCa};

use crate::args::DemoArgs;
use crate::client::{Master, Target};
use crate::render::{Column, Table};
use crate::samples;
use crate::search::{self, Style};
use daemons::{DaemonSpec, Supervisor};
use workdir::Workdir;

/// Executable of the master, looked for next to `ragmeshctl`.
pub const MASTER_BIN: &str = "ragmesh-master";
/// Executable of an agent, looked for next to `ragmeshctl`.
pub const AGENT_BIN: &str = "ragmesh-agent";
/// How long a daemon may take to bind and write its address file.
const ADDR_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the master may take to answer its first RPC.
const MASTER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the agents may take to register and come up.
const AGENTS_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two looks at the daemons while waiting.
const POLL: Duration = Duration::from_millis(100);
/// A short heartbeat, so the master notices state changes quickly in a demo.
pub(crate) const HEARTBEAT_INTERVAL_MS: &str = "500";
/// Deadline of the demo's RPCs.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Search deadline of the demo's federated search.
const SEARCH_TIMEOUT_MS: u32 = 5000;
/// Documents per ingest call of the demo.
const INGEST_BATCH: usize = 500;

/// Runs the demo. Daemons are always stopped before this returns, error or not.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let agents = usize::try_from(args.agents).unwrap_or(1);
    let layout = Layout::new(agents, usize::try_from(args.replicas).unwrap_or(1))?;
    let binaries = Binaries::locate()?;
    let workdir = match &args.dir {
        Some(dir) => Workdir::keep(dir)?,
        None => Workdir::temporary()?,
    };
    let mut supervisor = Supervisor::new();

    // Listen from the start: the daemons run in their own process group, so a Ctrl-C during
    // start-up must reach this process and end in an orderly stop too.
    let mut signals = StopSignals::new()?;
    let outcome = tokio::select! {
        outcome = run_mesh(args, layout, &binaries, &workdir, &mut supervisor) => outcome,
        signal = signals.next() => {
            println!();
            println!("{signal}: stopping");
            Ok(())
        }
    };

    println!();
    println!("Stopping the mesh ...");
    let report = supervisor.stop().await;
    if !report.stopped.is_empty() {
        println!("  stopped {}", report.stopped.join(", "));
    }
    for problem in &report.problems {
        println!("  warning: {problem}");
    }
    if outcome.is_err() && workdir.is_temporary() {
        let kept = workdir.keep_for_inspection();
        println!("  kept {} because the demo failed: read its logs, then delete it", kept.display());
        return outcome;
    }
    let kept = workdir.path().to_path_buf();
    match workdir.remove()? {
        Some(removed) => println!("  removed {}", removed.display()),
        None => println!("  kept {} (certs, data, logs)", kept.display()),
    }
    outcome
}

/// Everything between "directory ready" and "stop": any error ends the demo.
async fn run_mesh(
    args: &DemoArgs,
    layout: Layout,
    binaries: &Binaries,
    workdir: &Workdir,
    supervisor: &mut Supervisor,
) -> anyhow::Result<()> {
    let agents = layout.agents;
    let agent_names = layout.names();
    println!("ragmesh demo: 1 master and {agents} agent{} on 127.0.0.1, mutual TLS everywhere", plural(agents));
    if layout.replicas > 1 {
        println!("shard groups: {} groups of {} replicas ({})", layout.groups(), layout.replicas, layout.describe());
    }
    let removal = if workdir.is_temporary() { "removed at exit; pass --dir to keep it" } else { "kept after exit" };
    println!("directory: {} ({removal})", workdir.path().display());
    println!();

    let client_tls = make_certs(workdir, &agent_names)?;
    println!(
        "Certificates: a development CA and certificates for master, {} and client in {}",
        agent_names.join(", "),
        workdir.certs().display()
    );

    let master = start_master(binaries, workdir, supervisor, client_tls).await?;
    let join = master
        .create_join_token(v1::CreateJoinTokenRequest {
            ttl_seconds: 600,
            uses: u32::try_from(agent_names.len()).unwrap_or(u32::MAX),
            note: "ragmeshctl demo".to_owned(),
        })
        .await?;
    start_agents(binaries, workdir, supervisor, &layout, master.addr(), &join.token).await?;
    print_daemons(workdir, supervisor);

    print!("Waiting for {agents} agent{} to join ... ", plural(agents));
    flush_stdout();
    match wait_for_agents(&master, supervisor, &agent_names, workdir).await {
        Ok(waited) => println!("all up after {:.1} s", waited.as_secs_f64()),
        Err(err) => {
            println!("failed");
            return Err(err);
        }
    }
    println!();

    ingest_samples(&master, &layout).await?;

    println!();
    println!("Federated search for {:?} over all agents:", samples::DEMO_QUERY);
    println!();
    let first = search_once(&master).await?;
    let mut all_answered = first.complete;
    if layout.replicas > 1 {
        let victim = layout.names()[1].clone();
        println!();
        println!(
            "Killing {victim} (kill -9), one of {}'s {} replicas, and searching again at once:",
            layout.shard_of(1),
            layout.replicas
        );
        println!();
        supervisor.kill(&victim);
        let second = search_once(&master).await?;
        let same = second.documents == first.documents;
        println!();
        if second.complete && same {
            println!("Same hits, every shard group answered: the other replica stood in for {victim}.");
        } else {
            println!("The answer changed after {victim} was killed (see above): this is a bug, please report it.");
        }
        all_answered &= second.complete && same;
    }

    println!();
    // The master writes it before its gRPC address, which the demo waited for.
    let metrics_addr = std::fs::read_to_string(workdir.metrics_addr_file("master")).ok();
    let metrics_addr = metrics_addr.as_deref().map(str::trim).filter(|addr| !addr.is_empty());
    print!("{}", usage_hints(workdir, master.addr(), metrics_addr, &agent_names, args.no_wait));
    if args.no_wait {
        if !all_answered {
            anyhow::bail!(
                "not every agent answered the demo search (see the node table above and the logs in {})",
                workdir.path().join("logs").display()
            );
        }
        return Ok(());
    }
    watch_daemons(supervisor).await
}

/// The daemon executables next to the running `ragmeshctl`.
#[derive(Debug)]
pub(crate) struct Binaries {
    /// `ragmesh-master`.
    pub(crate) master: PathBuf,
    /// `ragmesh-agent`.
    pub(crate) agent: PathBuf,
}

impl Binaries {
    /// Finds both next to the running executable, or says how to build them.
    pub(crate) fn locate() -> anyhow::Result<Binaries> {
        let exe =
            std::env::current_exe().map_err(|err| anyhow::anyhow!("cannot find the ragmeshctl executable: {err}"))?;
        let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        let binaries = Binaries { master: dir.join(MASTER_BIN), agent: dir.join(AGENT_BIN) };
        let missing: Vec<String> = [&binaries.master, &binaries.agent]
            .into_iter()
            .filter(|path| !path.is_file())
            .map(|path| path.display().to_string())
            .collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "build the daemons first: cargo build --bins ({} not found next to {})",
                missing.join(" and "),
                exe.display()
            );
        }
        Ok(binaries)
    }
}

/// Writes the CA and the certificates of master, agents and client into `DIR/certs`, and
/// returns the client's files.
pub(crate) fn make_certs(workdir: &Workdir, agent_names: &[String]) -> anyhow::Result<TlsFiles> {
    let dir = workdir.certs();
    let ca = DevCa::generate()?;
    let ca_paths = ca.write(&dir, true)?;
    let names =
        std::iter::once("master").chain(agent_names.iter().map(String::as_str)).chain(std::iter::once("client"));
    let mut client = None;
    for name in names {
        let issued = devca::issue_with_ca(&ca, name, &[], &dir, devca::DEFAULT_LEAF_DAYS)?;
        if name == "client" {
            client = Some(issued.tls_files(&ca_paths.cert));
        }
    }
    client.ok_or_else(|| anyhow::anyhow!("the client certificate was not issued"))
}

/// The TLS flags of a daemon whose certificate is `name`.
fn tls_args(workdir: &Workdir, name: &str) -> Vec<OsString> {
    let certs = workdir.certs();
    vec![
        "--ca".into(),
        certs.join("ca.pem").into(),
        "--cert".into(),
        certs.join(format!("{name}.pem")).into(),
        "--key".into(),
        certs.join(format!("{name}.key")).into(),
    ]
}

/// How to start daemon `name` (certificate `name`, data, logs and address files in `workdir`).
pub(crate) fn spec(workdir: &Workdir, name: &str, program: &Path, mut args: Vec<OsString>) -> DaemonSpec {
    args.push("--data-dir".into());
    args.push(workdir.data(name).into());
    // Prometheus metrics on a port of the daemon's choosing, reported like the gRPC address.
    args.extend(["--metrics-listen".into(), "127.0.0.1:0".into(), "--metrics-addr-file".into()]);
    args.push(workdir.metrics_addr_file(name).into());
    args.extend(tls_args(workdir, name));
    DaemonSpec {
        name: name.to_owned(),
        program: program.to_path_buf(),
        args,
        log: workdir.log(name),
        pid_file: workdir.pid_file(name),
        addr_file: workdir.addr_file(name),
        env: Vec::new(),
    }
}

/// Starts the master, learns its address from `DIR/master.addr` (which the master writes
/// itself, `--addr-file`), and waits until it answers `ListNodes`.
pub(crate) async fn start_master(
    binaries: &Binaries,
    workdir: &Workdir,
    supervisor: &mut Supervisor,
    client_tls: TlsFiles,
) -> anyhow::Result<Master> {
    // The demo's `client` certificate is the operator: it creates the join token and searches.
    let master_args = vec!["--operators".into(), "client".into()];
    let index = supervisor.spawn(spec(workdir, "master", &binaries.master, master_args))?;
    let addr = supervisor.wait_for_addr(index, ADDR_TIMEOUT).await?;
    let target = Target {
        addr: addr.to_string(),
        host: "127.0.0.1".to_owned(),
        tls: Some(Arc::new(client_tls.load()?)),
        timeout: RPC_TIMEOUT,
        bearer: None,
    };
    let started = Instant::now();
    loop {
        supervisor.check()?;
        let error = match Master::connect(target.clone()).await {
            Ok(master) => match master.list_nodes().await {
                Ok(_) => return Ok(master),
                Err(err) => err,
            },
            Err(err) => err,
        };
        if started.elapsed() > MASTER_READY_TIMEOUT {
            anyhow::bail!(
                "the master did not become ready within {} s ({error:#}); see {}",
                MASTER_READY_TIMEOUT.as_secs(),
                workdir.log("master").display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Starts one agent per name, registering with the master at `master_addr`, and waits until
/// each has reported the address it bound (which it also advertises to the master).
/// How the demo's agents form shard groups: `agents` agents, `replicas` per group, agent i
/// (from 0) in group `i / replicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    agents: usize,
    replicas: usize,
}

impl Layout {
    fn new(agents: usize, replicas: usize) -> anyhow::Result<Self> {
        if replicas == 0 || replicas > agents || !agents.is_multiple_of(replicas) {
            return Err(crate::error::usage(format!(
                "--agents {agents} cannot be split into shard groups of --replicas {replicas}: \
                 pass a number of agents that is a multiple of the replicas (e.g. --agents {} --replicas {replicas})",
                replicas.max(1) * 2
            )));
        }
        Ok(Layout { agents, replicas })
    }

    fn groups(&self) -> usize {
        self.agents / self.replicas
    }

    fn names(&self) -> Vec<String> {
        (1..=self.agents).map(|i| format!("agent-{i}")).collect()
    }

    /// The shard group of agent `index` (from 0): `shard-N` with replicas, else the agent's own
    /// name (the agent's default: a group of one).
    fn shard_of(&self, index: usize) -> String {
        if self.replicas > 1 { format!("shard-{}", index / self.replicas + 1) } else { format!("agent-{}", index + 1) }
    }

    /// `shard-1: agent-1, agent-2; shard-2: ...`.
    fn describe(&self) -> String {
        let names = self.names();
        (0..self.groups())
            .map(|g| {
                let members = &names[g * self.replicas..(g + 1) * self.replicas];
                format!("{}: {}", self.shard_of(g * self.replicas), members.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Every group, in order.
    fn shards(&self) -> Vec<String> {
        (0..self.groups()).map(|g| self.shard_of(g * self.replicas)).collect()
    }
}

async fn start_agents(
    binaries: &Binaries,
    workdir: &Workdir,
    supervisor: &mut Supervisor,
    layout: &Layout,
    master_addr: &str,
    join_token: &str,
) -> anyhow::Result<()> {
    let names = layout.names();
    let apps = app::start(&names).await?;
    let tail = actions::find_program("tail");
    let mut started = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let config = workdir.agent_config(name);
        std::fs::write(&config, actions::agent_config(apps[index], &workdir.log(name), tail.as_deref()))
            .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", config.display()))?;
        let mut args: Vec<OsString> = vec![
            "--name".into(),
            name.into(),
            "--master".into(),
            master_addr.into(),
            "--heartbeat-interval-ms".into(),
            HEARTBEAT_INTERVAL_MS.into(),
            "--label".into(),
            "started-by=ragmeshctl-demo".into(),
            "--config".into(),
            config.into(),
        ];
        if layout.replicas > 1 {
            args.extend(["--shard".into(), layout.shard_of(index).into()]);
        }
        let mut agent = spec(workdir, name, &binaries.agent, args);
        // In the environment rather than on the command line, where `ps` would show it.
        agent.env.push(("RAGMESH_JOIN_TOKEN".into(), join_token.into()));
        started.push(supervisor.spawn(agent)?);
    }
    let listed: Vec<String> = names.iter().zip(&apps).map(|(name, addr)| format!("{name} http://{addr}")).collect();
    println!(
        "Applications beside the agents (the demo's stand-ins, called by their http actions): {}",
        listed.join(", ")
    );
    // They start side by side; waiting for each in turn costs no more than the slowest.
    for index in started {
        supervisor.wait_for_addr(index, ADDR_TIMEOUT).await?;
    }
    Ok(())
}

fn print_daemons(workdir: &Workdir, supervisor: &Supervisor) {
    println!("Started (logs in {}):", workdir.path().join("logs").display());
    let mut table = Table::new(vec![Column::left("NAME"), Column::left("ADDRESS"), Column::right("PID")]);
    for daemon in supervisor.daemons() {
        let addr = daemon.addr().map_or_else(|| "-".to_owned(), |addr| addr.to_string());
        table.push(vec![daemon.name().to_owned(), addr, daemon.pid().to_string()]);
    }
    print!("{}", indent(&table.render()));
}

/// Polls `ListNodes` until every agent is up, failing early when a daemon dies.
pub(crate) async fn wait_for_agents(
    master: &Master,
    supervisor: &mut Supervisor,
    names: &[String],
    workdir: &Workdir,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        supervisor.check()?;
        let nodes = master.list_nodes().await?;
        let pending: Vec<String> = names
            .iter()
            .filter_map(|name| match nodes.iter().find(|n| &n.name == name) {
                Some(node) if node.state == v1::NodeState::Up as i32 => None,
                Some(node) => Some(format!("{name} is {}", crate::nodes::state_name(node.state))),
                None => Some(format!("{name} has not registered")),
            })
            .collect();
        if pending.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > AGENTS_UP_TIMEOUT {
            let logs: Vec<String> = names.iter().map(|name| workdir.log(name).display().to_string()).collect();
            anyhow::bail!(
                "agents not up after {} s: {}; look at {} and {}",
                AGENTS_UP_TIMEOUT.as_secs(),
                pending.join(", "),
                logs.join(", "),
                workdir.log("master").display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Splits the sample corpus round-robin over the shard groups and writes each share through
/// the master, which logs it and applies it on every replica of the group.
async fn ingest_samples(master: &Master, layout: &Layout) -> anyhow::Result<()> {
    let docs =
        samples::documents().map_err(|err| anyhow::anyhow!("the built-in sample corpus does not parse: {err}"))?;
    let total = docs.len();
    let shards = layout.shards();
    println!("Loading {total} sample documents round-robin over {} shard group{}:", shards.len(), plural(shards.len()));
    let mut table = Table::new(vec![
        Column::left("SHARD"),
        Column::right("DOCUMENTS"),
        Column::right("SEQ"),
        Column::left("APPLIED BY"),
    ]);
    for (shard, share) in shards.iter().zip(samples::round_robin(docs, shards.len())) {
        let count = share.len();
        let mut seq = 0;
        let mut applied_by = Vec::new();
        let mut remaining = share.into_iter().peekable();
        while remaining.peek().is_some() {
            let documents: Vec<v1::Document> =
                remaining.by_ref().take(INGEST_BATCH).map(crate::ingest::to_wire).collect();
            // A group of one is named after its node; naming the node works with any master.
            let request = if layout.replicas > 1 {
                v1::IngestDocumentsRequest { shard: shard.clone(), documents, node: String::new() }
            } else {
                v1::IngestDocumentsRequest { node: shard.clone(), documents, shard: String::new() }
            };
            let response = master
                .ingest(request, RPC_TIMEOUT)
                .await
                .map_err(|status| master.describe(&format!("ingest into {shard}"), &status))?;
            seq = response.seq;
            applied_by = response
                .replicas
                .iter()
                .filter(|r| r.status == v1::OutcomeStatus::Ok as i32)
                .map(|r| r.node.clone())
                .collect();
        }
        table.push(vec![shard.clone(), count.to_string(), seq.to_string(), applied_by.join(", ")]);
    }
    print!("{}", indent(&table.render()));
    Ok(())
}

/// What the demo's search found.
#[derive(Debug)]
struct Searched {
    /// Every group (or, from a master without groups, every node) answered.
    complete: bool,
    /// The hits as `collection/id`, in rank order.
    documents: Vec<String>,
}

/// Runs the demo query and prints the result.
async fn search_once(master: &Master) -> anyhow::Result<Searched> {
    let (timeout_ms, deadline) = search::deadlines(Some(SEARCH_TIMEOUT_MS));
    let request =
        v1::SearchRequest { query: samples::DEMO_QUERY.to_owned(), limit: 10, timeout_ms, ..Default::default() };
    let response = master.search(request, deadline).await?;
    print!("{}", search::render(&response, samples::DEMO_QUERY, Style::for_stdout()));
    let ok = v1::OutcomeStatus::Ok as i32;
    let complete = !response.groups.is_empty() && response.groups.iter().all(|g| g.status == ok);
    let documents = response.hits.iter().map(|h| format!("{}/{}", h.collection, h.doc_id)).collect();
    Ok(Searched { complete, documents })
}

/// The commands to try, with absolute paths that can be pasted as they are.
fn usage_hints(
    workdir: &Workdir,
    master_addr: &str,
    metrics_addr: Option<&str>,
    agents: &[String],
    no_wait: bool,
) -> String {
    let certs = workdir.certs();
    let ca = quote(&certs.join("ca.pem"));
    let cert = quote(&certs.join("client.pem"));
    let key = quote(&certs.join("client.key"));
    let exe = std::env::current_exe().map(|p| quote(&p)).unwrap_or_else(|_| "ragmeshctl".to_owned());
    let query = "index replication";
    let tls = format!("-cacert {ca} -cert {cert} -key {key}");

    let mut out = String::new();
    if no_wait {
        let _ = writeln!(out, "--no-wait: the mesh stops now. Without it, the demo keeps running and you can try:");
    } else {
        let _ = writeln!(out, "The mesh is running. In another terminal, try:");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "  # ragmeshctl (the flags can also come from the environment)");
    let _ = writeln!(out, "  {exe} --master {master_addr} --ca {ca} --cert {cert} --key {key} nodes");
    let _ =
        writeln!(out, "  export RAGMESH_MASTER={master_addr} RAGMESH_CA={ca} RAGMESH_CERT={cert} RAGMESH_KEY={key}");
    let _ = writeln!(out, "  {exe} search {}", quote_str(query));
    let _ = writeln!(out, "  {exe} node agent-1");
    let _ = writeln!(out, "  {exe} stats   # documents per collection, node and shard group; index sizes");
    let _ = writeln!(out, "  {exe} token issue --subject alice --tenant acme --cap search   # a tenant's token");
    let _ = writeln!(out, "  {exe} watch   # membership, breaker and key events, live (kill an agent to see one)");
    if let Some(metrics) = metrics_addr {
        let _ = writeln!(out, "  {exe} top --metrics {metrics}   # per-node traffic, latency, breakers, live");
        let _ = writeln!(out, "  curl -s http://{metrics}/metrics   # the master's Prometheus metrics");
    }
    let _ = writeln!(out);
    let first = agents.first().map_or("agent-1", String::as_str);
    let _ = writeln!(
        out,
        "  # remote actions: each agent's are declared in {} (and siblings); the apps are the demo's",
        quote(&workdir.agent_config(first))
    );
    let _ = writeln!(out, "  {exe} action list --node {first}");
    let _ = writeln!(out, "  {exe} action run app.log-tail --node {first} --arg lines=3   # exec");
    let _ = writeln!(out, "  {exe} action run app.clear-cache --all --arg region=sessions   # http, broadcast");
    if let Some(second) = agents.get(1) {
        let _ = writeln!(
            out,
            "  {exe} action run app.maintenance --node {second} --arg on=true   # then app.health --all fails there"
        );
    }
    let _ = writeln!(out, "  {exe} action tx app.release --all --arg version=v2.0.0   # every node or none");
    let _ = writeln!(out, "  {exe} action history");
    let _ = writeln!(out);
    let _ = writeln!(out, "  # grpcurl (over the same mutual TLS)");
    let _ = writeln!(out, "  grpcurl {tls} {master_addr} list");
    let _ = writeln!(out, "  grpcurl {tls} {master_addr} ragmesh.v1.MasterService/ListNodes");
    let _ =
        writeln!(out, "  grpcurl {tls} -d '{{\"query\":\"{query}\"}}' {master_addr} ragmesh.v1.MasterService/Search");
    if !no_wait {
        let _ = writeln!(out);
        let what = if workdir.is_temporary() {
            format!("stop the daemons and remove {}", workdir.path().display())
        } else {
            "stop the daemons".to_owned()
        };
        let _ = writeln!(out, "Press Ctrl-C to {what}.");
    }
    out
}

/// Watches the daemons until a stop signal ends the demo (see [`run`]). An agent that exits
/// (perhaps killed on purpose to watch the mesh cope) is reported and the demo goes on; the
/// master exiting ends it.
async fn watch_daemons(supervisor: &mut Supervisor) -> anyhow::Result<()> {
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        check.tick().await;
        for (name, status) in supervisor.newly_exited()? {
            if name == "master" {
                anyhow::bail!("the master exited ({status}); see its log in the logs directory");
            }
            println!(
                "{name} exited ({status}): the master marks it down and searches report it skipped; `ragmeshctl nodes` shows it"
            );
        }
    }
}

/// The signals that end the demo (and `eval`).
pub(crate) struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts listening for Ctrl-C, SIGTERM and SIGHUP.
    pub(crate) fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals { term: signal(SignalKind::terminate())?, hup: signal(SignalKind::hangup())? })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// The name of the next signal received.
    pub(crate) async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = self.term.recv() => "SIGTERM received",
                _ = self.hup.recv() => "SIGHUP received",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupted"
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

fn flush_stdout() {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

/// `path` quoted for a POSIX shell when it needs to be.
fn quote(path: &Path) -> String {
    quote_str(&path.to_string_lossy())
}

/// `text` quoted for a POSIX shell when it holds anything but `[A-Za-z0-9/._:=@+,-]`.
pub fn quote_str(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._:=@+,-".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_form_groups_of_replicas_in_order() {
        let layout = Layout::new(4, 2).expect("4 agents in groups of 2");
        assert_eq!(layout.shards(), ["shard-1", "shard-2"]);
        assert_eq!((layout.shard_of(1), layout.shard_of(2)), ("shard-1".to_owned(), "shard-2".to_owned()));
        assert_eq!(layout.describe(), "shard-1: agent-1, agent-2; shard-2: agent-3, agent-4");
        let single = Layout::new(3, 1).expect("groups of one");
        assert_eq!(single.shards(), ["agent-1", "agent-2", "agent-3"], "a group of one is named after its agent");
        let uneven = Layout::new(3, 2).expect_err("3 agents do not split into groups of 2").to_string();
        assert!(uneven.contains("multiple of the replicas"), "{uneven}");
    }

    #[test]
    fn shell_quoting_only_when_needed() {
        assert_eq!(quote_str("/tmp/demo/certs/ca.pem"), "/tmp/demo/certs/ca.pem");
        assert_eq!(quote_str("/tmp/my demo/ca.pem"), "'/tmp/my demo/ca.pem'");
        assert_eq!(quote_str("it's"), r"'it'\''s'");
        assert_eq!(quote_str("index replication"), "'index replication'");
        assert_eq!(quote_str(""), "''");
    }

    #[test]
    fn hints_use_absolute_paths_and_the_master_address() {
        let workdir = Workdir::temporary().expect("temp");
        let agents = ["agent-1".to_owned(), "agent-2".to_owned()];
        let hints = usage_hints(&workdir, "127.0.0.1:40001", Some("127.0.0.1:40002"), &agents, false);
        let ca = workdir.certs().join("ca.pem");
        let expected = format!(
            "grpcurl -cacert {} -cert {} -key {} 127.0.0.1:40001 list",
            ca.display(),
            workdir.certs().join("client.pem").display(),
            workdir.certs().join("client.key").display()
        );
        assert!(hints.contains(&expected), "{hints}");
        assert!(
            hints.contains("-d '{\"query\":\"index replication\"}' 127.0.0.1:40001 ragmesh.v1.MasterService/Search"),
            "{hints}"
        );
        assert!(hints.contains("Press Ctrl-C"), "{hints}");
        assert!(hints.contains("top --metrics 127.0.0.1:40002"), "{hints}");
        assert!(hints.contains("curl -s http://127.0.0.1:40002/metrics"), "{hints}");
        assert!(hints.contains("action tx app.release --all --arg version=v2.0.0"), "{hints}");
        assert!(hints.contains("action run app.maintenance --node agent-2 --arg on=true"), "{hints}");
        let no_wait = usage_hints(&workdir, "127.0.0.1:40001", None, &agents, true);
        assert!(!no_wait.contains("top --metrics"), "no metrics address, no top hint: {no_wait}");
        assert!(no_wait.contains("the mesh stops now"), "{no_wait}");
        assert!(!no_wait.contains("Press Ctrl-C"), "{no_wait}");
    }
}
