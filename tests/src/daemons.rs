//! A mesh of real daemon processes: the `ragmesh-master` and `ragmesh-agent` binaries (built
//! by `cargo build --workspace --bins`), each in its own process, on loopback with a dev CA
//! made at test time. For tests and benchmarks that need what only a process has of its own,
//! such as its global telemetry (one OTLP resource per daemon).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ragmesh_proto::v1::{self, auth_service_client::AuthServiceClient, master_service_client::MasterServiceClient};
use ragmesh_tls::TlsFiles;
use tonic::transport::{Channel, Endpoint};

/// How long a daemon may take to start, join or catch up on a loaded machine.
const STARTUP: Duration = Duration::from_secs(30);

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
        mesh.master = Some(mesh.spawn("ragmesh-master", master_args, &[], "master"));
        mesh.master_addr = mesh.wait_addr(&addr_file).await;

        let token = mesh.join_token().await;
        for name in &names {
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
            let child = mesh.spawn("ragmesh-agent", args, &[("RAGMESH_JOIN_TOKEN", &token)], name);
            mesh.agents.push(child);
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
    master_addr: SocketAddr,
}

impl ProcessMesh {
    /// A builder of a mesh with no agents and no extra flags.
    pub fn builder() -> ProcessMeshBuilder {
        ProcessMeshBuilder::default()
    }

    /// The master's address.
    pub fn master_addr(&self) -> SocketAddr {
        self.master_addr
    }

    /// The process ids of the master and the agents (for CPU accounting from /proc).
    pub fn pids(&self) -> Vec<u32> {
        self.master.iter().chain(&self.agents).map(Child::id).collect()
    }

    /// The name of agent `i` (from 0).
    pub fn agent_name(&self, i: usize) -> String {
        format!("agent-{}", i + 1)
    }

    /// The log (stderr) of daemon `name` (`master`, `agent-1`, ...) so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
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

    /// Upserts `documents` into agent `i`'s index through the master.
    pub async fn ingest(&self, i: usize, documents: Vec<v1::Document>) {
        let request = v1::IngestDocumentsRequest { node: self.agent_name(i), documents, shard: String::new() };
        self.client().await.ingest_documents(request).await.expect("ingest succeeds");
    }

    async fn channel(&self) -> Channel {
        let tls = self.tls("client").load().expect("client tls");
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

    fn spawn(&self, program: &str, mut args: Vec<String>, env: &[(&str, &str)], name: &str) -> Child {
        args.extend(self.builder.args.iter().cloned());
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file");
        let mut command = Command::new(self.bin.join(program));
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("RAGMESH_") || key_text.starts_with("OTEL_") {
                command.env_remove(&key);
            }
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

impl Drop for ProcessMesh {
    fn drop(&mut self) {
        for child in self.agents.iter_mut().chain(self.master.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
