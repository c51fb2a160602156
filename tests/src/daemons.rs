//! A mesh of real daemon processes: the `ragmesh-master` and `ragmesh-agent` binaries (built
//! by `cargo build --workspace --bins`), each in its own process, on loopback with a dev CA
//! made at test time. For tests and benchmarks that need what only a process has of its own,
//! such as its global telemetry (one OTLP resource per daemon).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ragmesh_proto::v1::{self, auth_service_client::AuthServiceClient, master_service_client::MasterServiceClient};
use ragmesh_tls::TlsFiles;
use tonic::transport::{Channel, Endpoint};

/// How long a daemon may take to start, join or catch up on a loaded machine.
const STARTUP: Duration = Duration::from_secs(30);

/// The master's search caches are off, as in `Mesh`: the scenarios check what each fan-out
/// does (traces, node counts), which a cached answer would skip. Set in the environment, so a
/// test turns them on with a flag in `master_args` (flags beat the environment).
const CACHES_OFF: [(&str, &str); 2] = [("RAGMESH_RESULT_CACHE_BYTES", "0"), ("RAGMESH_STATISTICS_CACHE_BYTES", "0")];

/// The directory of the daemon binaries: `RAGMESH_BIN_DIR`, else the workspace's target dir
/// (`CARGO_TARGET_DIR` honoured), debug build.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAGMESH_BIN_DIR") {
        return dir.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
    let dir = target.join("debug");
    assert!(
        dir.join("ragmesh-agent").is_file() && dir.join("ragmesh-master").is_file(),
        "the daemons are missing from {}: build them first with `cargo build --workspace --bins` (scripts/test does)",
        dir.display()
    );
    dir
}

/// What the daemons of a [`ProcessMesh`] are started with.
#[derive(Debug, Clone, Default)]
pub struct ProcessMeshBuilder {
    agents: usize,
    args: Vec<String>,
    master_args: Vec<String>,
    env: Vec<(String, String)>,
    master_env: Vec<(String, String)>,
    agent_env: Vec<(usize, String, String)>,
    agent_toml: Option<String>,
    before_master: Option<MasterHook>,
}

/// A function given the master's data directory before its first start.
#[derive(Clone)]
struct MasterHook(Arc<dyn Fn(&Path) + Send + Sync>);

impl std::fmt::Debug for MasterHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterHook")
    }
}

impl ProcessMeshBuilder {
    /// Number of agents, each its own shard group (`agent-1`, `agent-2`, ...).
    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }

    /// Extra flags for every daemon (master and agents).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Extra flags for the master only.
    pub fn master_arg(mut self, arg: impl Into<String>) -> Self {
        self.master_args.push(arg.into());
        self
    }

    /// An environment variable for every daemon (the test's own `RAGMESH_*` and `OTEL_*` are
    /// never inherited).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// An environment variable for the master's first start only (a restart takes its own).
    pub fn master_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.master_env.push((key.into(), value.into()));
        self
    }

    /// An environment variable for agent `i`'s (from 0) first start only.
    pub fn agent_env(mut self, i: usize, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.agent_env.push((i, key.into(), value.into()));
        self
    }

    /// A TOML config file for every agent (`--config`; e.g. its `[[actions]]`), in which
    /// `{name}` becomes the agent's name and `{dir}` the mesh's directory.
    pub fn agent_toml(mut self, toml: impl Into<String>) -> Self {
        self.agent_toml = Some(toml.into());
        self
    }

    /// Runs `prepare` with the master's (empty) data directory before its first start, e.g. to
    /// provision its state store with a signing key ring the caller keeps (a benchmark that
    /// signs request contexts as the master would).
    pub fn before_master(mut self, prepare: impl Fn(&Path) + Send + Sync + 'static) -> Self {
        self.before_master = Some(MasterHook(Arc::new(prepare)));
        self
    }

    /// Starts the master and the agents, and waits until every agent is up.
    pub async fn start(self) -> ProcessMesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        ragmesh_tls::devca::init_ca(&certs, false).expect("dev CA");
        let names: Vec<String> = (1..=self.agents).map(|i| format!("agent-{i}")).collect();
        for name in ["master", "client"].into_iter().chain(names.iter().map(String::as_str)) {
            ragmesh_tls::devca::issue(&certs, name, &[], &certs).expect("certificate");
        }
        let mut mesh = ProcessMesh {
            bin: bin_dir(),
            dir,
            builder: self,
            master: None,
            agents: Vec::new(),
            agent_args: Vec::new(),
            join_token: String::new(),
            master_addr: "127.0.0.1:0".parse().expect("addr"),
        };
        let addr_file = mesh.dir.path().join("master.addr");
        let mut master_args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--addr-file".to_owned(),
            addr_file.display().to_string(),
            "--data-dir".to_owned(),
            mesh.dir.path().join("master").display().to_string(),
            "--operators".to_owned(),
            "client".to_owned(),
        ];
        master_args.extend(mesh.tls_args("master"));
        master_args.extend(mesh.builder.master_args.iter().cloned());
        if let Some(MasterHook(prepare)) = &mesh.builder.before_master {
            prepare(&mesh.dir.path().join("master"));
        }
        let env = mesh.builder.master_env.clone();
        mesh.master = Some(mesh.spawn("ragmesh-master", master_args, &pairs(&env), "master"));
        mesh.master_addr = mesh.wait_addr(&addr_file).await;

        mesh.join_token = mesh.join_token().await;
        for (i, name) in names.iter().enumerate() {
            let mut args = vec![
                "--name".to_owned(),
                name.clone(),
                "--listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--master".to_owned(),
                mesh.master_addr.to_string(),
                "--data-dir".to_owned(),
                mesh.dir.path().join(name).display().to_string(),
            ];
            args.extend(mesh.tls_args(name));
            if let Some(toml) = &mesh.builder.agent_toml {
                let text = toml.replace("{name}", name).replace("{dir}", &mesh.dir.path().display().to_string());
                let file = mesh.dir.path().join(format!("{name}.toml"));
                std::fs::write(&file, text).expect("write the agent's config file");
                args.extend(["--config".to_owned(), file.display().to_string()]);
            }
            let env: Vec<(String, String)> = mesh
                .builder
                .agent_env
                .iter()
                .filter(|(at, ..)| *at == i)
                .map(|(_, k, v)| (k.clone(), v.clone()))
                .collect();
            let child = mesh.spawn_agent(&args, &pairs(&env), name);
            mesh.agents.push(child);
            mesh.agent_args.push(args);
        }
        let mut client = mesh.client().await;
        for name in &names {
            mesh.wait_up(&mut client, name).await;
        }
        mesh
    }
}

/// A running master and its agents, each a process; killed when dropped.
#[derive(Debug)]
pub struct ProcessMesh {
    bin: PathBuf,
    dir: tempfile::TempDir,
    builder: ProcessMeshBuilder,
    master: Option<Child>,
    agents: Vec<Child>,
    /// Each agent's command line, to restart it alike.
    agent_args: Vec<Vec<String>>,
    join_token: String,
    master_addr: SocketAddr,
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl ProcessMesh {
    /// A builder of a mesh with no agents and no extra flags.
    pub fn builder() -> ProcessMeshBuilder {
        ProcessMeshBuilder::default()
    }

    /// The mesh's directory (certificates, data directories, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The master's address.
    pub fn master_addr(&self) -> SocketAddr {
        self.master_addr
    }

    /// The process ids of the master and the agents (for CPU accounting from /proc).
    pub fn pids(&self) -> Vec<u32> {
        self.master.iter().chain(&self.agents).map(Child::id).collect()
    }

    /// The master's process id (for CPU and memory accounting from /proc).
    pub fn master_pid(&self) -> Option<u32> {
        self.master.as_ref().map(Child::id)
    }

    /// An mTLS client of the master's auth service as the operator `client` (join tokens,
    /// access tokens).
    pub async fn auth_client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel().await)
    }

    /// The name of agent `i` (from 0).
    pub fn agent_name(&self, i: usize) -> String {
        format!("agent-{}", i + 1)
    }

    /// The log (stderr) of daemon `name` (`master`, `agent-1`, ...) so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Waits until daemon `name`'s log holds `line` at least `times` times, looking every 50 ms;
    /// false when `within` passed first.
    pub async fn wait_log(&self, name: &str, line: &str, times: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.log(name).matches(line).count() < times {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// The certificate files of `name`.
    pub fn tls(&self, name: &str) -> TlsFiles {
        let certs = self.dir.path().join("certs");
        TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join(format!("{name}.pem")),
            key: certs.join(format!("{name}.key")),
        }
    }

    /// An mTLS client of the master as the operator `client`.
    pub async fn client(&self) -> MasterServiceClient<Channel> {
        MasterServiceClient::new(self.channel().await)
    }

    /// An mTLS channel to the master as the operator `client`, for any of its services (e.g.
    /// `grpc.health.v1`): the same client stack as [`ProcessMesh::client`].
    pub async fn master_channel(&self) -> Channel {
        self.channel().await
    }

    /// Upserts `documents` into agent `i`'s index through the master; returns the index
    /// generation after the write.
    pub async fn ingest(&self, i: usize, documents: Vec<v1::Document>) -> u64 {
        let request = v1::IngestDocumentsRequest { node: self.agent_name(i), documents, shard: String::new() };
        self.client().await.ingest_documents(request).await.expect("ingest succeeds").into_inner().generation
    }

    /// Issues an access token as the `client` operator; returns the access token.
    pub async fn issue_token(&self, subject: &str, tenant: &str, caps: &[&str]) -> String {
        let request = v1::IssueTokenRequest {
            subject: subject.into(),
            tenant: tenant.into(),
            capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            ttl_seconds: 0,
        };
        let mut auth = AuthServiceClient::new(self.channel().await);
        auth.issue_token(request).await.expect("issue a token").into_inner().access_token
    }

    /// A client of the master presenting `token` (over mTLS with a non-operator certificate
    /// `app`, so the token is the only credential).
    pub async fn client_with_token(&self, token: &str) -> MasterServiceClient<crate::WithToken> {
        let certs = self.dir.path().join("certs");
        if !certs.join("app.pem").is_file() {
            ragmesh_tls::devca::issue(&certs, "app", &[], &certs).expect("certificate");
        }
        let value = format!("Bearer {token}").parse().expect("token is ASCII");
        MasterServiceClient::with_interceptor(self.channel_as("app").await, crate::BearerToken(value))
    }

    /// Kills the master with SIGKILL and reaps it.
    pub fn kill_master(&mut self) {
        if let Some(mut master) = self.master.take() {
            let _ = master.kill();
            let _ = master.wait();
        }
    }

    /// Waits until the master exits by itself (e.g. at a failpoint); returns its exit status.
    pub async fn wait_master_exit(&mut self) -> std::process::ExitStatus {
        let mut master = self.master.take().expect("the master is running");
        wait_exit(&mut master, "master", || self.log("master")).await
    }

    /// Starts the master again on the same address and data directory, with `env` added to
    /// the mesh's environment, and waits until it answers.
    pub async fn restart_master(&mut self, env: &[(&str, &str)]) {
        self.kill_master();
        let addr_file = self.dir.path().join("master.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut args = vec![
            "--listen".to_owned(),
            self.master_addr.to_string(),
            "--addr-file".to_owned(),
            addr_file.display().to_string(),
            "--data-dir".to_owned(),
            self.dir.path().join("master").display().to_string(),
            "--operators".to_owned(),
            "client".to_owned(),
        ];
        args.extend(self.tls_args("master"));
        args.extend(self.builder.master_args.iter().cloned());
        self.master = Some(self.spawn("ragmesh-master", args, env, "master"));
        let addr = self.wait_addr(&addr_file).await;
        assert_eq!(addr, self.master_addr, "the master came back on another address");
    }

    /// Kills agent `i` with SIGKILL and reaps it.
    pub fn kill_agent(&mut self, i: usize) {
        let _ = self.agents[i].kill();
        let _ = self.agents[i].wait();
    }

    /// Waits until agent `i` exits by itself (e.g. at a failpoint); returns its exit status.
    pub async fn wait_agent_exit(&mut self, i: usize) -> std::process::ExitStatus {
        let name = self.agent_name(i);
        let log = self.log(&name);
        wait_exit(&mut self.agents[i], &name, || log.clone()).await
    }

    /// Starts agent `i` again with its data directory and config, `env` added to the mesh's
    /// environment, and waits until the master sees it up.
    pub async fn restart_agent(&mut self, i: usize, env: &[(&str, &str)]) {
        self.kill_agent(i);
        let name = self.agent_name(i);
        let args = self.agent_args[i].clone();
        self.agents[i] = self.spawn_agent(&args, env, &name);
        self.wait_agent_up(&name).await;
    }

    /// Waits until the master lists `name` up.
    pub async fn wait_agent_up(&self, name: &str) {
        let mut client = self.client().await;
        self.wait_up(&mut client, name).await;
    }

    async fn channel(&self) -> Channel {
        self.channel_as("client").await
    }

    async fn channel_as(&self, identity: &str) -> Channel {
        let tls = self.tls(identity).load().expect("client tls");
        let endpoint = Endpoint::from_shared(format!("https://{}", self.master_addr))
            .expect("uri")
            .tls_config(tls.client_config("127.0.0.1"))
            .expect("tls");
        let deadline = Instant::now() + STARTUP;
        loop {
            match endpoint.connect().await {
                Ok(channel) => return channel,
                Err(err) => {
                    assert!(Instant::now() < deadline, "cannot reach the master: {err}\n{}", self.log("master"))
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn tls_args(&self, name: &str) -> Vec<String> {
        let tls = self.tls(name);
        let mut args = Vec::new();
        for (flag, path) in [("--ca", tls.ca), ("--cert", tls.cert), ("--key", tls.key)] {
            args.push(flag.to_owned());
            args.push(path.display().to_string());
        }
        args
    }

    fn spawn_agent(&self, args: &[String], env: &[(&str, &str)], name: &str) -> Child {
        let mut env = env.to_vec();
        env.push(("RAGMESH_JOIN_TOKEN", &self.join_token));
        self.spawn("ragmesh-agent", args.to_vec(), &env, name)
    }

    fn spawn(&self, program: &str, mut args: Vec<String>, env: &[(&str, &str)], name: &str) -> Child {
        args.extend(self.builder.args.iter().cloned());
        // Appended to, so the log of a process killed and started again keeps both lives.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log file");
        let mut command = Command::new(self.bin.join(program));
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("RAGMESH_") || key_text.starts_with("OTEL_") {
                command.env_remove(&key);
            }
        }
        if program == "ragmesh-master" {
            command.envs(CACHES_OFF);
        }
        command
            .args(&args)
            .envs(self.builder.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        command.spawn().unwrap_or_else(|err| panic!("start {program}: {err}"))
    }

    async fn wait_addr(&mut self, addr_file: &Path) -> SocketAddr {
        let deadline = Instant::now() + STARTUP;
        loop {
            let text = std::fs::read_to_string(addr_file).unwrap_or_default();
            if let Ok(addr) = text.trim().parse() {
                return addr;
            }
            if let Some(master) = self.master.as_mut()
                && let Some(status) = master.try_wait().expect("poll the master")
            {
                panic!("the master exited ({status}):\n{}", self.log("master"));
            }
            assert!(Instant::now() < deadline, "the master never reported its address:\n{}", self.log("master"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn join_token(&self) -> String {
        let mut auth = AuthServiceClient::new(self.channel().await);
        let deadline = Instant::now() + STARTUP;
        loop {
            let request = v1::CreateJoinTokenRequest { ttl_seconds: 3600, uses: 1000, note: "process mesh".into() };
            // UNAVAILABLE until the master's registry is loaded.
            match auth.create_join_token(request).await {
                Ok(response) => return response.into_inner().token,
                Err(status) => assert!(Instant::now() < deadline, "cannot create a join token: {status:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_up(&self, client: &mut MasterServiceClient<Channel>, name: &str) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let nodes =
                client.list_nodes(v1::ListNodesRequest {}).await.map(|r| r.into_inner().nodes).unwrap_or_default();
            if nodes.iter().any(|n| n.name == name && n.state() == v1::NodeState::Up) {
                return;
            }
            assert!(Instant::now() < deadline, "{name} never came up:\n{}", self.log(name));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits (bounded) until `child` exits; panics with its log if it does not.
async fn wait_exit(child: &mut Child, name: &str, log: impl Fn() -> String) -> std::process::ExitStatus {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(status) = child.try_wait().expect("poll the process") {
            return status;
        }
        assert!(Instant::now() < deadline, "{name} did not exit:\n{}", log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for ProcessMesh {
    fn drop(&mut self) {
        for child in self.agents.iter_mut().chain(self.master.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
