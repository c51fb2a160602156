//! Failure-detection times with real processes: a master and agents run as child processes
//! over mTLS; each round kills one agent with SIGKILL (the kernel closes its sockets) or stops
//! it with SIGSTOP (sockets stay open, nothing answers), and measures how long the master takes
//! to report it down. Prints min/median/max next to the limits (1 s and 3 s) as ratios.
//! Every daemon listens on a port the kernel picks (`--listen 127.0.0.1:0`); the master's
//! address is read from its log, so no port is reserved, released and rebound.
//!
//! `cargo build --release --bins && cargo bench -p ragmesh-e2e --bench detection`
//! (RAGMESH_BIN_DIR overrides where the daemons are looked for; ROUNDS sets the rounds, default 7).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ragmesh_proto::v1::{self, auth_service_client::AuthServiceClient, master_service_client::MasterServiceClient};
use ragmesh_tls::TlsFiles;
use tonic::transport::{Channel, Endpoint};

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAGMESH_BIN_DIR") {
        return dir.into();
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    for profile in ["release", "debug"] {
        if target.join(profile).join("ragmesh-agent").is_file() {
            return target.join(profile);
        }
    }
    panic!("build the daemons first: cargo build --release --bins");
}

/// The address in the master's `master serving listen=ADDR` log line, once it is written.
async fn served_address(log: &Path, master: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let serving = text.lines().filter(|line| line.contains("master serving")).find_map(|line| {
            let value = line.split_whitespace().find_map(|field| field.strip_prefix("listen="))?;
            Some(value.to_owned())
        });
        if let Some(addr) = serving {
            return addr;
        }
        if let Some(status) = master.try_wait().expect("poll the master") {
            panic!("the master exited ({status}):\n{text}");
        }
        assert!(Instant::now() < deadline, "the master did not log its address:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A daemon that is killed when dropped, so a failed run leaves no process behind.
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().expect("kill runs");
    assert!(status.success(), "kill -{sig} failed");
}

struct Daemons {
    bin: PathBuf,
    dir: PathBuf,
    master_addr: String,
    /// Admits the agents (created by the `client` operator once the master runs).
    join_token: String,
}

impl Daemons {
    fn tls(&self, name: &str) -> TlsFiles {
        let certs = self.dir.join("certs");
        TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join(format!("{name}.pem")),
            key: certs.join(format!("{name}.key")),
        }
    }

    fn spawn(&self, program: &str, args: &[String], env: &[(&str, &str)], log: &str) -> Running {
        let log = std::fs::File::create(self.dir.join(log)).expect("log file");
        let child = Command::new(self.bin.join(program))
            .args(args)
            .envs(env.iter().copied())
            // Plain log lines: the master's address is read from its log.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        Running(child)
    }

    fn tls_args(&self, name: &str) -> Vec<String> {
        let tls = self.tls(name);
        vec![
            "--ca".into(),
            tls.ca.display().to_string(),
            "--cert".into(),
            tls.cert.display().to_string(),
            "--key".into(),
            tls.key.display().to_string(),
        ]
    }

    fn spawn_agent(&self, name: &str) -> Running {
        let mut args = vec![
            // The agent advertises the address it bound.
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--master".into(),
            self.master_addr.clone(),
            "--data-dir".into(),
            self.dir.join(name).display().to_string(),
        ];
        args.extend(self.tls_args(name));
        let env = [("RAGMESH_JOIN_TOKEN", self.join_token.as_str())];
        self.spawn("ragmesh-agent", &args, &env, &format!("{name}.log"))
    }
}

async fn state_of(client: &mut MasterServiceClient<Channel>, name: &str) -> Option<v1::NodeState> {
    let nodes = client.list_nodes(v1::ListNodesRequest {}).await.ok()?.into_inner().nodes;
    nodes.into_iter().find(|n| n.name == name).map(|n| n.state())
}

/// Polls every 2 ms until `name` is in `state`; returns the time since `since`.
async fn wait_state(
    client: &mut MasterServiceClient<Channel>,
    name: &str,
    state: v1::NodeState,
    since: Instant,
) -> Duration {
    let deadline = since + Duration::from_secs(20);
    loop {
        if state_of(client, name).await == Some(state) {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "{name} never reached {state:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn summary(label: &str, mut samples: Vec<Duration>, limit: Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    println!(
        "{label:<28} n={:<3} min={:>8.1?} median={:>8.1?} max={:>8.1?}  limit={limit:?}  median/limit={:.3}",
        samples.len(),
        samples[0],
        median,
        samples[samples.len() - 1],
        median.as_secs_f64() / limit.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(7);
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = tmp.path().join("certs");
    ragmesh_tls::devca::init_ca(&certs, false).expect("ca");
    for name in ["master", "client", "agent-1", "agent-2"] {
        ragmesh_tls::devca::issue(&certs, name, &[], &certs).expect("cert");
    }
    let mut daemons =
        Daemons { bin: bin_dir(), dir: tmp.path().to_owned(), master_addr: String::new(), join_token: String::new() };
    println!("daemons from {}", daemons.bin.display());

    let mut master_args = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        tmp.path().join("master").display().to_string(),
        // The "master serving" line, which names the bound address, is logged at info.
        "--log".into(),
        "info".into(),
        // The client lists nodes and creates the agents' join token.
        "--operators".into(),
        "client".into(),
    ];
    master_args.extend(daemons.tls_args("master"));
    let mut master = daemons.spawn("ragmesh-master", &master_args, &[], "master.log");
    daemons.master_addr = served_address(&tmp.path().join("master.log"), &mut master).await;

    let client_tls = daemons.tls("client").load().expect("client tls");
    let endpoint = Endpoint::from_shared(format!("https://{}", daemons.master_addr))
        .expect("uri")
        .tls_config(client_tls.client_config("127.0.0.1"))
        .expect("tls");
    let channel = loop {
        if let Ok(channel) = endpoint.connect().await {
            break channel;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut client = MasterServiceClient::new(channel.clone());
    let mut auth = AuthServiceClient::new(channel);
    // The master answers UNAVAILABLE until its registry is loaded.
    let loaded_by = Instant::now() + Duration::from_secs(20);
    daemons.join_token = loop {
        let request = v1::CreateJoinTokenRequest { ttl_seconds: 3600, uses: 1000, note: "detection bench".into() };
        match auth.create_join_token(request).await {
            Ok(response) => break response.into_inner().token,
            Err(status) => assert!(Instant::now() < loaded_by, "cannot create a join token: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut survivor = daemons.spawn_agent("agent-1");

    let mut killed = Vec::new();
    let mut stopped = Vec::new();
    let mut victim = daemons.spawn_agent("agent-2");
    for _ in 0..rounds {
        wait_state(&mut client, "agent-2", v1::NodeState::Up, Instant::now()).await;
        let at = Instant::now();
        signal(&victim, "KILL");
        killed.push(wait_state(&mut client, "agent-2", v1::NodeState::Down, at).await);
        let _ = victim.wait();
        victim = daemons.spawn_agent("agent-2");

        wait_state(&mut client, "agent-2", v1::NodeState::Up, Instant::now()).await;
        let at = Instant::now();
        signal(&victim, "STOP");
        stopped.push(wait_state(&mut client, "agent-2", v1::NodeState::Down, at).await);
        signal(&victim, "CONT");
    }
    summary("kill -9 -> down", killed, Duration::from_secs(1));
    summary("SIGSTOP (silent) -> down", stopped, Duration::from_secs(3));

    for child in [&mut victim, &mut survivor, &mut master] {
        signal(child, "TERM");
        let _ = child.wait();
    }
}
