//! The fresh local mesh of `ragmeshctl eval`: the demo's pieces (work directory, dev CA and
//! certificates, [`Supervisor`] of daemon processes) with a master, one agent per shard
//! (`shard-1`..`shard-N`) and a `baseline` agent, each agent its own shard group. Messages go to
//! stderr, so `--json` output stays clean.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use ragmesh_proto::v1;

use crate::client::Master;
use crate::demo::daemons::Supervisor;
use crate::demo::workdir::Workdir;
use crate::demo::{self, Binaries};

/// Name of the agent holding every document.
pub const BASELINE: &str = "baseline";
/// How long the local mesh is given, after loading, for every agent's term summary to reach the
/// master: three of its heartbeats.
pub const SETTLE_MS: u64 = 1500;
/// How long an agent may take to bind and write its address file.
const ADDR_TIMEOUT: Duration = Duration::from_secs(30);

/// The shard agents' names: `shard-1`..`shard-N`.
pub fn shard_names(shards: usize) -> Vec<String> {
    (1..=shards).map(|i| format!("shard-{i}")).collect()
}

/// A running local mesh. [`LocalMesh::stop`] stops it; dropped without that (an error while
/// starting, a panic), the supervisor still stops the daemons and a temporary directory is
/// still removed.
#[derive(Debug)]
pub struct LocalMesh {
    supervisor: Supervisor,
    workdir: Workdir,
    master: Option<Master>,
}

impl LocalMesh {
    /// Starts the master and `shards` + 1 agents in `dir` (a temporary directory when `None`)
    /// and waits until every agent is up.
    pub async fn start(dir: Option<&Path>, shards: usize) -> anyhow::Result<LocalMesh> {
        let binaries = Binaries::locate()?;
        let workdir = match dir {
            Some(dir) => Workdir::keep(dir)?,
            None => Workdir::temporary_named("ragmesh-eval-")?,
        };
        let mut mesh = LocalMesh { supervisor: Supervisor::new(), workdir, master: None };
        let mut names = shard_names(shards);
        names.push(BASELINE.to_owned());
        eprintln!(
            "starting a local mesh in {}: 1 master, {} agents ({})",
            mesh.workdir.path().display(),
            names.len(),
            names.join(", ")
        );
        let client_tls = demo::make_certs(&mesh.workdir, &names)?;
        let master = demo::start_master(&binaries, &mesh.workdir, &mut mesh.supervisor, client_tls).await?;
        let join = master
            .create_join_token(v1::CreateJoinTokenRequest {
                ttl_seconds: 600,
                uses: u32::try_from(names.len()).unwrap_or(u32::MAX),
                note: "ragmeshctl eval".to_owned(),
            })
            .await?;
        let mut started = Vec::with_capacity(names.len());
        for name in &names {
            let args: Vec<OsString> = vec![
                "--name".into(),
                name.into(),
                "--master".into(),
                master.addr().into(),
                "--heartbeat-interval-ms".into(),
                demo::HEARTBEAT_INTERVAL_MS.into(),
                "--label".into(),
                "started-by=ragmeshctl-eval".into(),
            ];
            let mut agent = demo::spec(&mesh.workdir, name, &binaries.agent, args);
            agent.env.push(("RAGMESH_JOIN_TOKEN".into(), join.token.clone().into()));
            started.push(mesh.supervisor.spawn(agent)?);
        }
        for index in started {
            mesh.supervisor.wait_for_addr(index, ADDR_TIMEOUT).await?;
        }
        let waited = demo::wait_for_agents(&master, &mut mesh.supervisor, &names, &mesh.workdir).await?;
        eprintln!("all {} agents up after {:.1} s", names.len(), waited.as_secs_f64());
        mesh.master = Some(master);
        Ok(mesh)
    }

    /// The master's client.
    pub fn master(&self) -> anyhow::Result<&Master> {
        self.master.as_ref().ok_or_else(|| anyhow::anyhow!("the local mesh has no master"))
    }

    /// Fails, with the tail of its log, if a daemon has died.
    pub fn check(&mut self) -> anyhow::Result<()> {
        self.supervisor.check()
    }

    /// Stops the daemons and removes a temporary directory, or keeps it (and says so) when the
    /// evaluation `failed`, for its logs.
    pub async fn stop(mut self, failed: bool) -> anyhow::Result<()> {
        let report = self.supervisor.stop().await;
        for problem in &report.problems {
            eprintln!("warning: {problem}");
        }
        if failed && self.workdir.is_temporary() {
            let kept = self.workdir.keep_for_inspection();
            eprintln!("kept {} because the evaluation failed: read its logs, then delete it", kept.display());
            return Ok(());
        }
        let path = self.workdir.path().to_path_buf();
        match self.workdir.remove()? {
            Some(removed) => eprintln!("stopped the local mesh and removed {}", removed.display()),
            None => eprintln!("stopped the local mesh; kept {} (certs, data, logs)", path.display()),
        }
        Ok(())
    }
}
