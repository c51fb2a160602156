//! The end-to-end harness: `Mesh::builder().agents(3).start()` runs a real master and real
//! agents on loopback ephemeral ports with real mTLS (a CA made at test time), real sled and
//! real tantivy. Each agent runs on its own OS thread with its own runtime, so a test can
//! *kill* it (the runtime is dropped: every socket closes, as when a process dies) or *freeze*
//! it (its only thread blocks: sockets stay open but nothing answers, as under SIGSTOP).
//! [`assert_outcomes`] checks every node's outcome of a search, so a test that concludes
//! something from the hits (or from their absence) knows each node it counts on searched.
//! [`load`] drives a closed-loop search load through the master for chaos tests; [`sim`] runs
//! many simulated agents in one process for scale benchmarks.

pub mod daemons;
pub mod load;
pub mod sim;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ragmesh_agent::LinkStatus;
use ragmesh_config::{AgentConfig, MasterConfig};
use ragmesh_master::MasterHandle;
use ragmesh_master::node::NodeState;
use ragmesh_proto::v1::{
    self, OutcomeStatus, SkipReason, auth_service_client::AuthServiceClient, master_service_client::MasterServiceClient,
};
use ragmesh_test_util::TestPki;
use ragmesh_tls::TlsFiles;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

pub use ragmesh_test_util::{trace_init, wait_for};

/// Heartbeat interval of test agents (the product default).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);
/// Heartbeat timeout of the test master (the product default).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(2500);
/// Search deadline of the test master when a request sets no `timeout_ms`: longer than the
/// product default (2 s), so that a healthy node on a loaded test machine is never reported
/// `timeout`; tests about deadlines set `timeout_ms` (or a gRPC deadline) well below it.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `timeout_ms` the test master accepts.
pub const MAX_SEARCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Configures a [`Mesh`].
#[derive(Debug, Clone)]
pub struct MeshBuilder {
    agents: usize,
    replicas: usize,
    write_quorum: Option<ragmesh_config::WriteQuorum>,
    resilience: ragmesh_config::ResilienceConfig,
    access: ragmesh_config::AccessConfig,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    max_heartbeats_per_second: u32,
    advertise: BTreeMap<usize, SocketAddr>,
    master_ip: Option<std::net::IpAddr>,
    events: ragmesh_config::EventsConfig,
    cache: ragmesh_config::CacheConfig,
}

impl MeshBuilder {
    /// The master's search caches. Off unless a test turns them on: the other scenarios check
    /// what a fan-out does (failures, deadlines, call counts), and a cached answer would hide it.
    pub fn cache(mut self, cache: ragmesh_config::CacheConfig) -> Self {
        self.cache = cache;
        self
    }

    /// Events and webhooks of the master.
    pub fn events(mut self, events: ragmesh_config::EventsConfig) -> Self {
        self.events = events;
        self
    }

    /// The master listens on `ip` (a local address, e.g. the host end of a veth pair) instead
    /// of 127.0.0.1, with a certificate naming that IP too; clients still verify the name
    /// `127.0.0.1`, which the certificate also carries.
    pub fn master_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.master_ip = Some(ip);
        self
    }

    /// Agent `i` (0-based) advertises `addr` to the master instead of the address it listens
    /// on, so the master's calls to it go there (a proxy in front of the agent, for example).
    pub fn advertise(mut self, i: usize, addr: SocketAddr) -> Self {
        self.advertise.insert(i, addr);
        self
    }

    /// Number of agents (named `agent-1` ...).
    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }

    /// Replicas per shard group: agent `i` (from 0) serves group `shard-{i / replicas + 1}`.
    /// With 1 (the default) each agent is a group of one named after it.
    pub fn replicas(mut self, replicas: usize) -> Self {
        assert!(replicas >= 1 && self.agents.is_multiple_of(replicas), "agents must split into groups of {replicas}");
        self.replicas = replicas;
        self
    }

    /// The master's write quorum.
    pub fn write_quorum(mut self, quorum: ragmesh_config::WriteQuorum) -> Self {
        self.write_quorum = Some(quorum);
        self
    }

    /// The master's breaker, retry and hedge settings.
    pub fn resilience(mut self, resilience: ragmesh_config::ResilienceConfig) -> Self {
        self.resilience = resilience;
        self
    }

    /// Per-principal rate limit of the master.
    pub fn rate_limit(mut self, rps: u32, burst: u32) -> Self {
        self.access.rate_limit_rps = rps;
        self.access.rate_limit_burst = burst;
        self
    }

    /// The agents' heartbeat interval and the master's heartbeat timeout (at least twice the
    /// interval, or the master shortens the interval).
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }

    /// The master's heartbeat budget for the whole fleet (`--max-heartbeats-per-second`).
    pub fn max_heartbeats_per_second(mut self, max: u32) -> Self {
        self.max_heartbeats_per_second = max;
        self
    }

    /// Largest message the master accepts.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.access.max_message_bytes = bytes;
        self
    }

    /// How long past its expiry the master still accepts an access token (0: exactly at `exp`).
    pub fn token_leeway(mut self, leeway: Duration) -> Self {
        self.access.token_leeway = leeway;
        self
    }

    /// Starts the master and the agents and waits until every agent is up.
    pub async fn start(self) -> Mesh {
        let pki = TestPki::new();
        let master_dir = tempfile::tempdir().expect("master tempdir");
        // The mesh owns the master's socket for its whole life: a restarted master is handed
        // the same socket again, so no other process can take the port in between.
        let master_ip = self.master_ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        let master_socket = std::net::TcpListener::bind((master_ip, 0)).expect("bind master");
        master_socket.set_nonblocking(true).expect("non-blocking master socket");
        let master_addr = master_socket.local_addr().expect("master addr");
        let listener = listener_for(&master_socket);
        let master_config = MasterConfig {
            listen: master_addr,
            data_dir: master_dir.path().to_owned(),
            tls: Some(match self.master_ip {
                None => pki.issue("master"),
                Some(ip) => {
                    let out = pki.dir().join("master-ip");
                    ragmesh_tls::devca::issue_for_days(pki.dir(), "master", &[ip.to_string()], &out, 30)
                        .expect("issue the master's certificate for its IP")
                        .tls_files(pki.ca_pem())
                }
            }),
            heartbeat_timeout: self.heartbeat_timeout,
            max_heartbeats_per_second: self.max_heartbeats_per_second,
            search_timeout: SEARCH_TIMEOUT,
            max_search_timeout: MAX_SEARCH_TIMEOUT,
            access: ragmesh_config::AccessConfig {
                // The harness's `client` certificate is an operator, as in `ragmeshctl demo`.
                operators: ["client".to_owned()].into(),
                ..self.access
            },
            replication: ragmesh_config::ReplicationConfig {
                write_quorum: self.write_quorum.unwrap_or_default(),
                ..ragmesh_config::ReplicationConfig::default()
            },
            resilience: self.resilience,
            actions: ragmesh_config::ActionsConfig::default(),
            log: "info".into(),
            events: self.events,
            cache: self.cache,
        };
        let master =
            ragmesh_master::start_with_metrics(master_config.clone(), listener, Some(metrics_listener().await))
                .await
                .expect("master starts");
        let mut mesh = Mesh {
            pki,
            master: Some(master),
            master_socket,
            master_addr,
            master_config,
            _master_dir: master_dir,
            agents: Vec::new(),
            join_token: String::new(),
            heartbeat_interval: self.heartbeat_interval,
        };
        // One multi-use join token admits every agent the test starts.
        mesh.join_token = mesh.create_join_token(1000).await;
        for i in 1..=self.agents {
            let name = format!("agent-{i}");
            let data_dir = tempfile::tempdir().expect("agent tempdir");
            let mut config = mesh.agent_config(&name, data_dir.path().to_owned());
            if self.replicas > 1 {
                config.shard = Some(shard_name((i - 1) / self.replicas));
            }
            if let Some(addr) = self.advertise.get(&(i - 1)) {
                config.advertise = Some(addr.to_string());
            }
            let process = AgentProcess::spawn(config.clone());
            mesh.agents.push(AgentSlot { name, config, _data_dir: data_dir, process: Some(process) });
        }
        for i in 0..mesh.agents.len() {
            mesh.wait_state(&mesh.agents[i].name, NodeState::Up, Duration::from_secs(15)).await;
        }
        mesh
    }
}

/// A running test mesh.
#[derive(Debug)]
pub struct Mesh {
    /// The mesh CA and its certificates.
    pub pki: TestPki,
    master: Option<MasterHandle>,
    /// The master's listening socket; each master serves on a duplicate of it.
    master_socket: std::net::TcpListener,
    master_addr: SocketAddr,
    master_config: MasterConfig,
    _master_dir: tempfile::TempDir,
    agents: Vec<AgentSlot>,
    join_token: String,
    heartbeat_interval: Duration,
}

/// A tokio listener on a duplicate of `socket` (which stays open, and keeps the port, when the
/// master drops its listener).
fn listener_for(socket: &std::net::TcpListener) -> tokio::net::TcpListener {
    let duplicate = socket.try_clone().expect("duplicate the master's socket");
    tokio::net::TcpListener::from_std(duplicate).expect("master listener")
}

#[derive(Debug)]
struct AgentSlot {
    name: String,
    config: AgentConfig,
    _data_dir: tempfile::TempDir,
    process: Option<AgentProcess>,
}

impl Mesh {
    /// A builder with one agent.
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            agents: 1,
            replicas: 1,
            write_quorum: None,
            resilience: ragmesh_config::ResilienceConfig::default(),
            access: ragmesh_config::AccessConfig::default(),
            heartbeat_interval: HEARTBEAT_INTERVAL,
            heartbeat_timeout: HEARTBEAT_TIMEOUT,
            max_heartbeats_per_second: ragmesh_config::DEFAULT_MAX_HEARTBEATS_PER_SECOND,
            advertise: BTreeMap::new(),
            master_ip: None,
            events: ragmesh_config::EventsConfig::default(),
            cache: ragmesh_config::CacheConfig { result_bytes: 0, statistics_bytes: 0 },
        }
    }

    /// An agent config for `name` pointing at this mesh's master.
    pub fn agent_config(&self, name: &str, data_dir: std::path::PathBuf) -> AgentConfig {
        AgentConfig {
            name: Some(name.to_owned()),
            shard: None,
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise: None,
            master: self.master_addr.to_string(),
            data_dir,
            tls: Some(self.pki.issue(name)),
            heartbeat_interval: self.heartbeat_interval,
            labels: BTreeMap::from([("test".to_owned(), "e2e".to_owned())]),
            join_token: Some(ragmesh_config::Secret(self.join_token.clone())),
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: ragmesh_config::DEFAULT_MAX_CONCURRENT_REQUESTS,
            writer_heap_bytes: ragmesh_config::DEFAULT_WRITER_HEAP_BYTES,
            writer_idle_release: Some(std::time::Duration::from_millis(ragmesh_config::DEFAULT_WRITER_IDLE_RELEASE_MS)),
            log: "info".into(),
            actions: Vec::new(),
            analysis: ragmesh_config::AnalysisConfig::default(),
        }
    }

    /// Creates a join token admitting `uses` agents (as the `client` operator).
    pub async fn create_join_token(&self, uses: u32) -> String {
        wait_for("master ready", Duration::from_secs(10), || async { self.master().registry().map(drop) }).await;
        let channel = self.channel_with(&self.client_tls()).await.expect("operator connects");
        let request = v1::CreateJoinTokenRequest { ttl_seconds: 3600, uses, note: "e2e".into() };
        AuthServiceClient::new(channel).create_join_token(request).await.expect("join token").into_inner().token
    }

    /// A client of the master's AuthService authenticated as the `client` operator.
    pub async fn auth_client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel_with(&self.client_tls()).await.expect("operator connects"))
    }

    /// The master's address.
    pub fn master_addr(&self) -> SocketAddr {
        self.master_addr
    }

    /// Heartbeat interval the agents are configured with.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// Silence after which the master marks a node down.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.master_config.heartbeat_timeout
    }

    /// The master's search deadline for requests without `timeout_ms`.
    pub fn search_timeout(&self) -> Duration {
        self.master_config.search_timeout
    }

    /// The running master.
    pub fn master(&self) -> &MasterHandle {
        self.master.as_ref().expect("master is running")
    }

    /// Name of agent `i` (0-based).
    pub fn agent_name(&self, i: usize) -> &str {
        &self.agents[i].name
    }

    /// Where the master serves `/metrics`.
    pub fn master_metrics_addr(&self) -> SocketAddr {
        self.master().metrics_addr().expect("the harness serves the master's metrics")
    }

    /// Where agent `i` (running) serves `/metrics`.
    pub fn agent_metrics_addr(&self, i: usize) -> SocketAddr {
        self.agents[i].process.as_ref().expect("agent is running").metrics
    }

    /// Address of agent `i` (0-based), while it runs.
    pub fn agent_addr(&self, i: usize) -> SocketAddr {
        self.agents[i].process.as_ref().expect("agent is running").addr
    }

    /// Link status of agent `i`.
    pub fn agent_link(&self, i: usize) -> watch::Receiver<LinkStatus> {
        self.agents[i].process.as_ref().expect("agent is running").link.clone()
    }

    /// TLS files of a client certificate named `client`.
    pub fn client_tls(&self) -> TlsFiles {
        self.pki.issue("client")
    }

    /// A client of the master that presents `token` as its bearer token (over mTLS with a
    /// non-operator certificate, so the token is the only credential).
    pub async fn client_with_token(&self, token: &str) -> MasterServiceClient<WithToken> {
        let channel = self.channel_with(&self.pki.issue("app")).await.expect("app connects");
        let value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {token}").parse().expect("token is ASCII");
        MasterServiceClient::with_interceptor(channel, BearerToken(value))
    }

    /// Issues an access token (and refresh token) as the `client` operator.
    pub async fn issue_token(&self, subject: &str, tenant: &str, caps: &[&str]) -> v1::IssueTokenResponse {
        let request = v1::IssueTokenRequest {
            subject: subject.into(),
            tenant: tenant.into(),
            capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            ttl_seconds: 0,
        };
        self.auth_client().await.issue_token(request).await.expect("issue token").into_inner()
    }

    /// A client of the master authenticated as `client`.
    pub async fn client(&self) -> MasterServiceClient<Channel> {
        MasterServiceClient::new(self.channel_with(&self.client_tls()).await.expect("client connects"))
    }

    /// A channel to the master with the given TLS files; the error is the readable explanation.
    pub async fn channel_with(&self, tls: &TlsFiles) -> Result<Channel, String> {
        let loaded = tls.load().map_err(|e| e.to_string())?;
        let endpoint = Endpoint::from_shared(format!("https://{}", self.master_addr))
            .map_err(|e| e.to_string())?
            .tls_config(loaded.client_config("127.0.0.1"))
            .map_err(|e| e.to_string())?;
        endpoint.connect().await.map_err(|e| ragmesh_tls::explain_error(&e))
    }

    /// Waits until node `name` reaches `state`; returns how long it took.
    pub async fn wait_state(&self, name: &str, state: NodeState, timeout: Duration) -> Duration {
        let started = tokio::time::Instant::now();
        let registry =
            wait_for("master registry loaded", Duration::from_secs(10), || async { self.master().registry().cloned() })
                .await
                .0;
        let mut membership = registry.subscribe();
        let reached =
            tokio::time::timeout(timeout, membership.wait_for(|m| m.get(name).is_some_and(|n| n.state == state))).await;
        match reached {
            Ok(Ok(_)) => started.elapsed(),
            _ => panic!(
                "node {name} did not reach {state} within {timeout:?}; it is {:?}",
                registry.get(name).map(|n| (n.state, n.down_reason))
            ),
        }
    }

    /// Waits until the master's registry shows node `name` at index generation `generation` or
    /// later (agents report it, with their collections, in their heartbeats), so that routing
    /// by collection knows what the node holds.
    pub async fn wait_generation(&self, name: &str, generation: u64) {
        let what = format!("{name} to report generation {generation}");
        wait_for(&what, Duration::from_secs(15), || async {
            let node = self.master().registry()?.get(name)?;
            (node.record.generation >= generation).then_some(())
        })
        .await;
    }

    /// Upserts documents into agent `i` through the master.
    pub async fn ingest(&self, i: usize, documents: Vec<v1::Document>) -> v1::IngestDocumentsResponse {
        let node = self.agents[i].name.clone();
        self.client()
            .await
            .ingest_documents(v1::IngestDocumentsRequest { node, documents, shard: String::new() })
            .await
            .expect("ingest succeeds")
            .into_inner()
    }

    /// The shard group agent `i` serves.
    pub fn shard_of(&self, i: usize) -> String {
        self.agents[i].config.shard.clone().unwrap_or_else(|| self.agents[i].name.clone())
    }

    /// Writes `documents` into shard group `shard` (every replica; acknowledged at the quorum).
    pub async fn ingest_shard(&self, shard: &str, documents: Vec<v1::Document>) -> v1::IngestDocumentsResponse {
        self.client()
            .await
            .ingest_documents(v1::IngestDocumentsRequest { shard: shard.to_owned(), documents, node: String::new() })
            .await
            .expect("ingest succeeds")
            .into_inner()
    }

    /// The master's view of node `name`.
    pub async fn node_info(&self, name: &str) -> v1::NodeInfo {
        let request = v1::GetNodeRequest { name: name.to_owned() };
        self.client().await.get_node(request).await.expect("get node").into_inner().node.expect("node")
    }

    /// Waits until node `name` has applied every acknowledged write of its group (`in_sync`).
    pub async fn wait_in_sync(&self, name: &str, timeout: Duration) {
        wait_for(&format!("{name} in sync"), timeout, || async {
            let node = self.node_info(name).await;
            (node.sync == v1::SyncState::InSync as i32 && node.state == v1::NodeState::Up as i32).then_some(())
        })
        .await;
    }

    /// Runs a federated search.
    pub async fn search(&self, request: v1::SearchRequest) -> v1::SearchResponse {
        self.client().await.search(request).await.expect("search succeeds").into_inner()
    }

    /// Kills agent `i` abruptly: all its sockets close at once, as when its process dies.
    pub fn kill_agent(&mut self, i: usize) {
        let process = self.agents[i].process.take().expect("agent is running");
        process.kill();
    }

    /// Freezes agent `i` until the returned guard is dropped: its sockets stay open but nothing
    /// it runs makes progress, as under SIGSTOP or a partition that drops packets.
    pub fn freeze_agent(&self, i: usize) -> Thaw {
        self.agents[i].process.as_ref().expect("agent is running").freeze()
    }

    /// Kills agent `i` while it is frozen: whatever was sent to it while frozen is never
    /// processed, and its sockets close at once (a process that dies while calls are in flight).
    pub fn kill_frozen_agent(&mut self, i: usize, thaw: Thaw) {
        let process = self.agents[i].process.take().expect("agent is running");
        // Queue the kill before thawing: the agent's control loop, which the freeze blocked, runs
        // it first thing, before any other task of the agent gets to run.
        let _ = process.control.send(Control::Kill);
        drop(thaw);
        process.kill();
    }

    /// Starts agent `i` again on its data directory (after [`Mesh::kill_agent`]).
    pub fn restart_agent(&mut self, i: usize) {
        assert!(self.agents[i].process.is_none(), "kill the agent first");
        let config = self.agents[i].config.clone();
        self.agents[i].process = Some(AgentProcess::spawn(config));
    }

    /// Stops the master gracefully and starts a new one on the same socket and data directory.
    /// The socket stays open in between (as with systemd socket activation): connections made
    /// meanwhile wait in its backlog for the new master instead of being refused, and no other
    /// process can take the port.
    pub async fn restart_master(&mut self) {
        let master = self.master.take().expect("master is running");
        master.shutdown().await.expect("master stops cleanly");
        let listener = listener_for(&self.master_socket);
        let metrics = Some(metrics_listener().await);
        let master = ragmesh_master::start_with_metrics(self.master_config.clone(), listener, metrics);
        self.master = Some(master.await.expect("master restarts"));
    }

    /// Stops everything gracefully.
    pub async fn shutdown(mut self) {
        for slot in &mut self.agents {
            if let Some(process) = slot.process.take() {
                process.stop();
            }
        }
        if let Some(master) = self.master.take() {
            master.shutdown().await.expect("master stops cleanly");
        }
    }
}

/// An agent config for `name` joining the master at `master` (any master: the mesh's, or one
/// a test runs as a child process) with certificates from `pki` and the join token `join_token`.
pub fn external_agent_config(
    pki: &TestPki,
    name: &str,
    master: SocketAddr,
    join_token: &str,
    data_dir: std::path::PathBuf,
) -> AgentConfig {
    AgentConfig {
        name: Some(name.to_owned()),
        shard: None,
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        master: master.to_string(),
        data_dir,
        tls: Some(pki.issue(name)),
        heartbeat_interval: HEARTBEAT_INTERVAL,
        labels: BTreeMap::from([("test".to_owned(), "e2e".to_owned())]),
        join_token: Some(ragmesh_config::Secret(join_token.to_owned())),
        max_message_bytes: 4 * 1024 * 1024,
        max_concurrent_requests: ragmesh_config::DEFAULT_MAX_CONCURRENT_REQUESTS,
        writer_heap_bytes: ragmesh_config::DEFAULT_WRITER_HEAP_BYTES,
        writer_idle_release: Some(std::time::Duration::from_millis(ragmesh_config::DEFAULT_WRITER_IDLE_RELEASE_MS)),
        log: "info".into(),
        actions: Vec::new(),
        analysis: ragmesh_config::AnalysisConfig::default(),
    }
}

/// A real agent on its own thread and runtime, for a master the [`Mesh`] does not run (a
/// master child process in crash tests). Killed when dropped.
#[derive(Debug)]
pub struct Agent(Option<AgentProcess>);

impl Agent {
    /// Starts an agent with `config` (see [`external_agent_config`]); returns once it serves.
    pub fn start(config: AgentConfig) -> Agent {
        Agent(Some(AgentProcess::spawn(config)))
    }

    /// The address the agent serves on.
    pub fn addr(&self) -> SocketAddr {
        self.0.as_ref().expect("agent is running").addr
    }

    /// Its link to the master.
    pub fn link(&self) -> watch::Receiver<LinkStatus> {
        self.0.as_ref().expect("agent is running").link.clone()
    }

    /// Stops it gracefully.
    pub fn stop(mut self) {
        if let Some(process) = self.0.take() {
            process.stop();
        }
    }

    /// Kills it abruptly: every socket closes at once, as when its process dies.
    pub fn kill(mut self) {
        if let Some(process) = self.0.take() {
            process.kill();
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct BearerToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel that sends a bearer token.
pub type WithToken = tonic::service::interceptor::InterceptedService<Channel, BearerToken>;

/// Dropping it resumes a frozen agent.
#[derive(Debug)]
pub struct Thaw(Option<std::sync::mpsc::Sender<()>>);

impl Drop for Thaw {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

enum Control {
    Freeze(std::sync::mpsc::Receiver<()>),
    Kill,
    Stop,
}

/// An agent on its own thread and runtime.
#[derive(Debug)]
struct AgentProcess {
    addr: SocketAddr,
    metrics: SocketAddr,
    link: watch::Receiver<LinkStatus>,
    control: mpsc::UnboundedSender<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Freeze(_) => "Freeze",
            Control::Kill => "Kill",
            Control::Stop => "Stop",
        })
    }
}

impl AgentProcess {
    fn spawn(config: AgentConfig) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("agent-{}", config.name.clone().unwrap_or_default()))
            .spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("agent runtime");
                let graceful = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(config.listen).await.expect("bind agent");
                    let metrics = metrics_listener().await;
                    let handle =
                        ragmesh_agent::start_with_metrics(config, listener, Some(metrics)).await.expect("agent starts");
                    let metrics = handle.metrics_addr().expect("metrics served");
                    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
                    ready_tx
                        .send((handle.local_addr(), metrics, handle.link_status(), control_tx))
                        .expect("test waits for the agent");
                    while let Some(command) = control_rx.recv().await {
                        match command {
                            // Blocking the runtime's only thread is the point: everything in it stops.
                            Control::Freeze(thaw) => {
                                let _ = thaw.recv();
                            }
                            Control::Kill => return None,
                            Control::Stop => return Some(handle),
                        }
                    }
                    None
                });
                if let Some(handle) = graceful {
                    let _ = runtime.block_on(handle.shutdown());
                }
                // Drops every task and socket of the agent without running anything further.
                runtime.shutdown_background();
            })
            .expect("spawn agent thread");
        let (addr, metrics, link, control) =
            ready_rx.recv_timeout(Duration::from_secs(10)).expect("agent starts within 10 s");
        AgentProcess { addr, metrics, link, control, thread: Some(thread) }
    }

    fn kill(mut self) {
        let _ = self.control.send(Control::Kill);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn stop(mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn freeze(&self) -> Thaw {
        let (tx, rx) = std::sync::mpsc::channel();
        self.control.send(Control::Freeze(rx)).expect("agent is running");
        Thaw(Some(tx))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Kill);
    }
}

/// A listener for a daemon's `/metrics` on an ephemeral loopback port.
async fn metrics_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind metrics")
}

/// The body of `GET /metrics` from `addr` (plain HTTP/1.1 over loopback, no client library).
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to /metrics");
    let request = "GET /metrics HTTP/1.1\r\nhost: ragmesh\r\nconnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("send the scrape");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response))
        .await
        .expect("a scrape answers within 10 s")
        .expect("read the scrape");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "scrape of {addr} failed: {head}");
    body.to_owned()
}

/// The name of shard group number `index` (from 0) of a mesh with replicas.
pub fn shard_name(index: usize) -> String {
    format!("shard-{}", index + 1)
}

/// `n` documents for agent `agent` in collection `docs`: all mention "mesh", each also a word
/// unique to its agent (`alpha`, `beta`, `gamma`, ...) so tests can tell where hits came from.
pub fn docs_for(agent: usize, n: usize) -> Vec<v1::Document> {
    const WORDS: [&str; 6] = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
    let word = WORDS[agent % WORDS.len()];
    (0..n)
        .map(|j| v1::Document {
            id: format!("{word}-{j}"),
            collection: "docs".into(),
            title: format!("{word} document {j}"),
            body: format!("the mesh federates search; this {word} text is number {j} about {word} things"),
            metadata: [("agent".to_owned(), word.to_owned())].into(),
            acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        })
        .collect()
}

/// A document parsed by ragmesh-index's ingestion as the wire carries it, without an ACL
/// (operators only, like a local index's documents).
pub fn wire_document(doc: ragmesh_index::Document) -> v1::Document {
    v1::Document {
        id: doc.id,
        collection: doc.collection,
        title: doc.title,
        body: doc.body,
        metadata: doc.metadata.into_iter().collect(),
        acl: None,
    }
}

/// `docs` dealt round-robin into `shards` lists of [`wire_document`]s.
pub fn round_robin(docs: Vec<ragmesh_index::Document>, shards: usize) -> Vec<Vec<v1::Document>> {
    let mut lists: Vec<Vec<v1::Document>> = vec![Vec::new(); shards];
    for (i, doc) in docs.into_iter().enumerate() {
        lists[i % shards].push(wire_document(doc));
    }
    lists
}

/// Status of node `name` in a search response.
pub fn outcome_of<'a>(response: &'a v1::SearchResponse, name: &str) -> &'a v1::NodeOutcome {
    response
        .nodes
        .iter()
        .find(|n| n.node == name)
        .unwrap_or_else(|| panic!("no outcome for {name} in {:?}", response.nodes))
}

/// Asserts that node `name`, which holds no document matching the search, either searched at
/// index generation `generation` and found nothing, or was skipped because its term summary
/// proves it (routing by term summaries, once the summary reached the master).
pub fn assert_no_hits_or_no_match(response: &v1::SearchResponse, name: &str, generation: u64) {
    let other = outcome_of(response, name);
    let searched = other.status() == OutcomeStatus::Ok && other.hit_count == 0 && other.generation == generation;
    let skipped = other.status() == OutcomeStatus::Skipped && other.skip_reason() == SkipReason::NoMatch;
    assert!(searched || skipped, "{name}: {other:?}");
}

/// What a test expects of one node's outcome in a search response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The node answered from index generation `generation` with `hits` hits.
    Ok {
        /// Index generation the node searched.
        generation: u64,
        /// Hits it returned.
        hits: u32,
    },
    /// The node was not asked, for this reason.
    Skipped(SkipReason),
    /// The node was asked and did not answer before the deadline.
    Timeout,
    /// The node was asked and could not be reached.
    Unavailable,
    /// The node answered with an error.
    Error,
    /// The call was abandoned because another replica answered first.
    Cancelled,
}

impl Expect {
    fn of(outcome: &v1::NodeOutcome) -> Option<Expect> {
        Some(match outcome.status() {
            OutcomeStatus::Ok => Expect::Ok { generation: outcome.generation, hits: outcome.hit_count },
            OutcomeStatus::Skipped => Expect::Skipped(outcome.skip_reason()),
            OutcomeStatus::Timeout => Expect::Timeout,
            OutcomeStatus::Unavailable => Expect::Unavailable,
            OutcomeStatus::Error => Expect::Error,
            OutcomeStatus::Cancelled => Expect::Cancelled,
            OutcomeStatus::Unspecified => return None,
        })
    }
}

/// Asserts that `response` reports exactly the nodes of `expected`, each with its expected
/// outcome. An empty or partial hit list proves something only when every node that could have
/// contributed really searched the index the test means (its generation) and returned what the
/// test expects; a node that failed or was skipped returns no hits either.
pub fn assert_outcomes(response: &v1::SearchResponse, expected: &[(&str, Expect)]) {
    let mut reported: Vec<&str> = response.nodes.iter().map(|n| n.node.as_str()).collect();
    let mut wanted: Vec<&str> = expected.iter().map(|(name, _)| *name).collect();
    reported.sort_unstable();
    wanted.sort_unstable();
    assert_eq!(reported, wanted, "the nodes reported are not the nodes expected: {:?}", response.nodes);
    for (name, expect) in expected {
        let outcome = outcome_of(response, name);
        assert_eq!(Expect::of(outcome), Some(*expect), "outcome of {name}: {outcome:?}");
    }
}

/// A loopback address where nothing answers: its port stays bound, so no other socket can take
/// it while this value lives, but it never listens, so every connection to it is refused.
#[derive(Debug)]
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// Binds a fresh loopback port without listening on it.
    pub fn bind() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("create a socket");
        socket.bind("127.0.0.1:0".parse().expect("loopback address")).expect("bind a loopback port");
        let addr = socket.local_addr().expect("bound address");
        ClosedPort { _socket: socket, addr }
    }

    /// The address that refuses connections.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A TCP proxy on loopback in front of one agent that delays everything the agent sends back
/// by an adjustable delay (each chunk is held until `delay` after it was read, order kept), so
/// every call through it takes `delay` longer, as from a slow or distant replica. Requests go
/// through undelayed. Give its address to the agent with [`MeshBuilder::advertise`], then the
/// agent's bound address with [`DelayProxy::set_upstream`]; connections made before that wait.
/// Dropping the proxy closes its listener and every connection through it.
#[derive(Debug)]
pub struct DelayProxy {
    addr: SocketAddr,
    upstream: watch::Sender<Option<SocketAddr>>,
    delay_micros: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Binds a loopback port and starts forwarding (with no delay until [`Self::set_delay`]).
    pub async fn start() -> DelayProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (upstream, upstream_rx) = watch::channel(None);
        let delay_micros = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delay = delay_micros.clone();
        let accept = tokio::spawn(async move {
            // Connection tasks live in this set: aborting the accept task drops them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        connections.spawn(proxy_connection(client, upstream_rx.clone(), delay.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        DelayProxy { addr, upstream, delay_micros, accept }
    }

    /// The address to dial (and to advertise).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections go.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        self.upstream.send_replace(Some(upstream));
    }

    /// Delay added from now on to every chunk the upstream sends.
    pub fn set_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.delay_micros.store(micros, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Forwards one connection; ends (closing both sides) when either side closes or fails.
async fn proxy_connection(
    client: tokio::net::TcpStream,
    mut upstream: watch::Receiver<Option<SocketAddr>>,
    delay_micros: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(target) = upstream.wait_for(Option::is_some).await.map(|addr| *addr) else { return };
    let Some(target) = target else { return };
    let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = tokio::io::copy(&mut client_read, &mut server_write);
    let (chunks_tx, mut chunks_rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read_replies = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            let delay = Duration::from_micros(delay_micros.load(std::sync::atomic::Ordering::Relaxed));
            if chunks_tx.send((tokio::time::Instant::now() + delay, buffer[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write_replies = async move {
        while let Some((due, chunk)) = chunks_rx.recv().await {
            tokio::time::sleep_until(due).await;
            if client_write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::select! {
        _ = requests => {}
        _ = async { tokio::join!(read_replies, write_replies) } => {}
    }
}
