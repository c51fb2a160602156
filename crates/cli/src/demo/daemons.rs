//! The demo's child processes: start `ragmesh-master`/`ragmesh-agent` with their output in a
//! log file, notice when one dies (and show why), restart once on a lost port race, and stop
//! them all with SIGTERM, a grace period, and SIGKILL only as the last resort.
//!
//! Children run in their own process group, so a Ctrl-C in the terminal reaches only
//! `ragmeshctl`, which then stops the agents before the master. A [`Supervisor`] that is dropped
//! without [`Supervisor::stop`] (an error path, a panic) still stops its children.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon gets to exit after SIGTERM; the daemons drain for up to 5 s.
const STOP_GRACE: Duration = Duration::from_secs(8);
/// How often a stopping daemon is polled.
const STOP_POLL: Duration = Duration::from_millis(50);
/// Lines of a dead daemon's log shown in the error.
const LOG_TAIL_LINES: usize = 15;
/// What the daemons print when their port was taken between our probe and their bind.
const BIND_FAILURE: &str = "cannot listen on";

/// Finds `count` distinct free ports on 127.0.0.1 by binding them all at once, then releasing
/// them for the daemons. Another process could take one in between: [`Supervisor::check`]
/// restarts a daemon once on a new port when that happens.
pub fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<io::Result<_>>()?;
    listeners.iter().map(|listener| listener.local_addr().map(|addr| addr.port())).collect()
}

/// How to start one daemon; `--listen 127.0.0.1:PORT` is added by [`Supervisor::spawn`].
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// Name shown to the user (`master`, `agent-1`).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Arguments besides `--listen`.
    pub args: Vec<OsString>,
    /// Environment variables to set (secrets go here, out of sight of `ps`).
    pub env: Vec<(OsString, OsString)>,
    /// File receiving stdout and stderr.
    pub log: PathBuf,
    /// File receiving the pid.
    pub pid_file: PathBuf,
}

/// A running (or exited) daemon.
#[derive(Debug)]
pub struct Daemon {
    spec: DaemonSpec,
    port: u16,
    child: Child,
    restarted: bool,
    exit: Option<ExitStatus>,
    /// Its death was already reported as an error; stopping need not mention it again.
    reported: bool,
}

impl Daemon {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// `127.0.0.1:PORT` it listens on.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.spec.log
    }

    /// The exit status once it has exited; polls without blocking.
    fn poll_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    fn lost_port_race(&self) -> bool {
        fs::read_to_string(&self.spec.log).is_ok_and(|log| log.contains(BIND_FAILURE))
    }

    /// The last lines of its log, indented, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.spec.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        let mut tail = String::new();
        for line in &lines[start..] {
            tail.push_str("    ");
            tail.push_str(&crate::render::strip_ansi(line));
            tail.push('\n');
        }
        if tail.is_empty() {
            tail.push_str("    (the log is empty)\n");
        }
        tail
    }

    fn died_error(&mut self, status: ExitStatus) -> anyhow::Error {
        self.reported = true;
        anyhow::anyhow!(
            "{} (pid {}) exited unexpectedly ({status}); the last lines of {}:\n{}",
            self.spec.name,
            self.pid(),
            self.spec.log.display(),
            self.log_tail().trim_end()
        )
    }

    /// Asks it to stop with SIGTERM (via `kill -TERM`), or kills it if that cannot be sent.
    fn terminate(&mut self) {
        if matches!(self.poll_exit(), Ok(Some(_))) {
            return;
        }
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !sent {
            let _ = self.child.kill();
        }
    }

    /// Kills it after the grace period and reaps it.
    fn kill_and_reap(&mut self) {
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.exit = Some(status);
        }
    }
}

/// What stopping found: daemons that needed SIGKILL or exited with an error.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// Names of the daemons stopped.
    pub stopped: Vec<String>,
    /// `name: what went wrong` for each daemon that did not stop cleanly.
    pub problems: Vec<String>,
}

/// The demo's daemons, in start order.
#[derive(Debug)]
pub struct Supervisor {
    daemons: Vec<Daemon>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// No daemons yet.
    pub fn new() -> Self {
        Supervisor { daemons: Vec::new() }
    }

    /// The daemons, in start order.
    pub fn daemons(&self) -> &[Daemon] {
        &self.daemons
    }

    /// The daemon called `name`.
    pub fn get(&self, name: &str) -> Option<&Daemon> {
        self.daemons.iter().find(|d| d.spec.name == name)
    }

    /// Starts `spec` listening on `port`; returns its index.
    pub fn spawn(&mut self, spec: DaemonSpec, port: u16) -> anyhow::Result<usize> {
        let child = start(&spec, port)?;
        self.daemons.push(Daemon { spec, port, child, restarted: false, exit: None, reported: false });
        Ok(self.daemons.len() - 1)
    }

    /// Fails, with the tail of its log, if a daemon has exited. With `allow_restart`, a daemon
    /// that lost its port to another process is restarted once on a new port instead (while
    /// starting up, before anyone depends on its address).
    pub fn check(&mut self, allow_restart: bool) -> anyhow::Result<()> {
        for daemon in &mut self.daemons {
            let Some(status) = daemon.poll_exit()? else {
                continue;
            };
            if allow_restart && !daemon.restarted && daemon.lost_port_race() {
                let port = free_ports(1)?.first().copied().ok_or_else(|| anyhow::anyhow!("no free port"))?;
                daemon.child = start(&daemon.spec, port)?;
                daemon.port = port;
                daemon.restarted = true;
                daemon.exit = None;
                continue;
            }
            return Err(daemon.died_error(status));
        }
        Ok(())
    }

    /// Daemons that exited since the last call, with their status, each reported once: what the
    /// running demo prints while it keeps going (an operator may kill an agent on purpose, to
    /// watch the mesh handle it).
    pub fn newly_exited(&mut self) -> anyhow::Result<Vec<(String, ExitStatus)>> {
        let mut exited = Vec::new();
        for daemon in &mut self.daemons {
            if daemon.reported {
                continue;
            }
            if let Some(status) = daemon.poll_exit()? {
                daemon.reported = true;
                exited.push((daemon.spec.name.clone(), status));
            }
        }
        Ok(exited)
    }

    /// Stops every daemon: agents first (SIGTERM, so they close their health streams), then
    /// the others; SIGKILL after the grace period.
    pub async fn stop(&mut self) -> StopReport {
        let (agents, others): (Vec<usize>, Vec<usize>) =
            (0..self.daemons.len()).partition(|&i| self.daemons[i].spec.name.starts_with("agent"));
        let mut report = StopReport::default();
        for group in [agents, others] {
            for &i in &group {
                self.daemons[i].terminate();
            }
            let started = Instant::now();
            while started.elapsed() < STOP_GRACE && !self.all_exited(&group) {
                tokio::time::sleep(STOP_POLL).await;
            }
            self.finish(&group, &mut report);
        }
        report
    }

    fn all_exited(&mut self, group: &[usize]) -> bool {
        group.iter().all(|&i| !matches!(self.daemons[i].poll_exit(), Ok(None)))
    }

    /// Kills what is left of `group` and records how each daemon ended.
    fn finish(&mut self, group: &[usize], report: &mut StopReport) {
        for &i in group {
            let daemon = &mut self.daemons[i];
            if matches!(daemon.poll_exit(), Ok(None)) {
                daemon.kill_and_reap();
                report.problems.push(format!(
                    "{} did not stop within {} s of SIGTERM and was killed",
                    daemon.spec.name,
                    STOP_GRACE.as_secs()
                ));
            } else if let Some(status) = daemon.exit
                && !stopped_cleanly(status)
                && !daemon.reported
            {
                report.problems.push(format!(
                    "{} exited with {status} (see {})",
                    daemon.spec.name,
                    daemon.spec.log.display()
                ));
            }
            report.stopped.push(daemon.spec.name.clone());
        }
    }

    /// Blocking version of [`Supervisor::stop`] for `Drop`, where nothing can be awaited.
    fn stop_blocking(&mut self) {
        for daemon in &mut self.daemons {
            daemon.terminate();
        }
        let all: Vec<usize> = (0..self.daemons.len()).collect();
        let started = Instant::now();
        while started.elapsed() < STOP_GRACE && !self.all_exited(&all) {
            std::thread::sleep(STOP_POLL);
        }
        self.finish(&all, &mut StopReport::default());
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let running = (0..self.daemons.len()).any(|i| matches!(self.daemons[i].poll_exit(), Ok(None)));
        if running {
            self.stop_blocking();
        }
    }
}

/// Success, or death by the SIGTERM we sent (a process that had not installed its handler yet).
fn stopped_cleanly(status: ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        const SIGTERM: i32 = 15;
        if status.signal() == Some(SIGTERM) {
            return true;
        }
    }
    status.success()
}

/// Starts one process with `--listen 127.0.0.1:port`, its output appended to its log, in its
/// own process group, without the caller's `RAGMESH_*` settings (the demo passes everything
/// as flags, and secrets in `spec.env`), and writes its pid file.
fn start(spec: &DaemonSpec, port: u16) -> anyhow::Result<Child> {
    let log = open_log(&spec.log)?;
    let log_err =
        log.try_clone().map_err(|err| anyhow::anyhow!("cannot use log file {}: {err}", spec.log.display()))?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // The daemons' log lines go to a file: keep terminal colour codes out of it.
    command.env("NO_COLOR", "1");
    for (key, _) in std::env::vars_os() {
        let inherited_setting = key.to_string_lossy().starts_with("RAGMESH_") && key != "RAGMESH_LOG";
        if inherited_setting {
            command.env_remove(key);
        }
    }
    command.envs(spec.env.iter().map(|(key, value)| (key, value)));
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        command.process_group(0);
    }
    let child = command.spawn().map_err(|err| {
        anyhow::anyhow!(
            "cannot start {} ({}): {err}: build the daemons first: cargo build --bins",
            spec.name,
            spec.program.display()
        )
    })?;
    fs::write(&spec.pid_file, format!("{}\n", child.id()))
        .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", spec.pid_file.display()))?;
    Ok(child)
}

fn open_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| anyhow::anyhow!("cannot open log file {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_nonzero() {
        let ports = free_ports(5).expect("ports");
        let unique: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), 5);
        assert!(ports.iter().all(|&p| p != 0));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_daemon_that_lost_its_port_is_restarted_once_on_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("tried-once");
        // First run: fail like a daemon whose port was taken. Second run: stay up.
        let script = format!(
            "if [ -f {m} ]; then exec sleep 30; fi; touch {m}; echo \"cannot listen on $1: address in use\" >&2; exit 1",
            m = marker.display()
        );
        let spec = DaemonSpec {
            name: "agent-1".to_owned(),
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            log: dir.path().join("agent-1.log"),
            pid_file: dir.path().join("agent-1.pid"),
            env: Vec::new(),
        };
        let mut supervisor = Supervisor::new();
        supervisor.spawn(spec, 1).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        while supervisor.get("agent-1").expect("agent-1").addr() == "127.0.0.1:1" {
            supervisor.check(true).expect("a lost port race is not fatal");
            assert!(Instant::now() < deadline, "not restarted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        supervisor.check(true).expect("the restarted daemon keeps running");
        let report = supervisor.stop().await;
        assert!(report.problems.is_empty(), "{report:?}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn supervisor_reports_death_with_the_log_and_stops_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        // `sh -c SCRIPT --listen ADDR`: "--listen" becomes $0, the address $1.
        let spec = |name: &str, script: &str| DaemonSpec {
            name: name.to_owned(),
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            log: dir.path().join(format!("{name}.log")),
            pid_file: dir.path().join(format!("{name}.pid")),
            env: Vec::new(),
        };
        let mut supervisor = Supervisor::new();
        supervisor.spawn(spec("agent-1", "echo started on $1; exec sleep 30"), 1).expect("spawn sleeper");
        supervisor.spawn(spec("agent-2", "echo boom: bad config >&2; exit 3"), 2).expect("spawn failing");

        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match supervisor.check(true) {
                Err(err) => break err,
                Ok(()) if Instant::now() > deadline => panic!("death not noticed"),
                Ok(()) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let message = err.to_string();
        assert!(message.starts_with("agent-2 (pid "), "{message}");
        assert!(message.contains("boom: bad config"), "{message}");

        let sleeper_pid = supervisor.get("agent-1").expect("agent-1").pid();
        let pid_file = fs::read_to_string(dir.path().join("agent-1.pid")).expect("pid file");
        assert_eq!(pid_file.trim(), sleeper_pid.to_string());
        let report = supervisor.stop().await;
        assert_eq!(report.stopped, ["agent-1", "agent-2"]);
        // agent-2's death was the error above; the sleeper stopped cleanly on SIGTERM.
        assert!(report.problems.is_empty(), "{report:?}");
        assert!(!Path::new(&format!("/proc/{sleeper_pid}")).exists(), "sleeper still running");
    }
}
