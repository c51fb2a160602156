//! The demo's child processes: start `ragmesh-master`/`ragmesh-agent` on port 0 with their
//! output in a log file, learn the address each bound from its `--addr-file`, notice when one
//! dies (and show why), and stop them all with SIGTERM, a grace period, and SIGKILL only as the
//! last resort.
//!
//! The daemons bind port 0 themselves and report what they got, so no other process can take a
//! port between our choosing it and their binding it.
//!
//! Children run in their own process group, so a Ctrl-C in the terminal reaches only
//! `ragmeshctl`, which then stops the agents before the master. A [`Supervisor`] that is dropped
//! without [`Supervisor::stop`] (an error path, a panic) still stops its children.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon gets to exit after SIGTERM; the daemons drain for up to 5 s.
const STOP_GRACE: Duration = Duration::from_secs(8);
/// How often a stopping daemon is polled.
const STOP_POLL: Duration = Duration::from_millis(50);
/// Lines of a dead daemon's log shown in the error.
const LOG_TAIL_LINES: usize = 15;
/// How often a starting daemon's address file is looked for.
const ADDR_POLL: Duration = Duration::from_millis(25);
/// What every daemon is told to listen on: loopback, any free port, chosen by its own bind.
const LISTEN: &str = "127.0.0.1:0";
/// The daemon stopped last: every other one is an agent.
const MASTER_NAME: &str = "master";

/// How to start one daemon; `--listen 127.0.0.1:0 --addr-file ADDR_FILE` is added by
/// [`Supervisor::spawn`].
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// Name shown to the user (`master`, `agent-1`).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Arguments besides `--listen` and `--addr-file`.
    pub args: Vec<OsString>,
    /// Environment variables to set (secrets go here, out of sight of `ps`).
    pub env: Vec<(OsString, OsString)>,
    /// File receiving stdout and stderr.
    pub log: PathBuf,
    /// File receiving the pid.
    pub pid_file: PathBuf,
    /// File the daemon writes the address it bound to (`--addr-file`); removed before it starts.
    pub addr_file: PathBuf,
}

/// A running (or exited) daemon.
#[derive(Debug)]
pub struct Daemon {
    spec: DaemonSpec,
    /// The address it bound, once [`Supervisor::wait_for_addr`] has read it.
    addr: Option<SocketAddr>,
    child: Child,
    exit: Option<ExitStatus>,
    /// Its death was already reported as an error; stopping need not mention it again.
    reported: bool,
}

impl Daemon {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The address it listens on, once it has reported it ([`Supervisor::wait_for_addr`]).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
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

    /// The address in its `--addr-file`; `None` while the file does not exist yet. The daemon
    /// replaces the file atomically, so an existing file holds a whole line.
    fn read_addr_file(&self) -> anyhow::Result<Option<SocketAddr>> {
        let path = &self.spec.addr_file;
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => anyhow::bail!("cannot read {}: {err}", path.display()),
        };
        let addr = text
            .trim_end()
            .parse()
            .map_err(|_| anyhow::anyhow!("{} wrote {text:?} to {}, not IP:PORT", self.spec.name, path.display()))?;
        Ok(Some(addr))
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

    /// Starts `spec` listening on a port of its own choosing; returns its index. Its address is
    /// known once [`Supervisor::wait_for_addr`] returns.
    pub fn spawn(&mut self, spec: DaemonSpec) -> anyhow::Result<usize> {
        let child = start(&spec)?;
        self.daemons.push(Daemon { spec, addr: None, child, exit: None, reported: false });
        Ok(self.daemons.len() - 1)
    }

    /// Waits until daemon `index` has written the address it bound to its `--addr-file`, and
    /// returns it. Fails, with the tail of its log, if the daemon exits first or `timeout`
    /// passes without the file.
    pub async fn wait_for_addr(&mut self, index: usize, timeout: Duration) -> anyhow::Result<SocketAddr> {
        let daemon = self.daemons.get_mut(index).ok_or_else(|| anyhow::anyhow!("no daemon number {index}"))?;
        let started = Instant::now();
        loop {
            if let Some(status) = daemon.poll_exit()? {
                return Err(daemon.died_error(status));
            }
            if let Some(addr) = daemon.read_addr_file()? {
                daemon.addr = Some(addr);
                return Ok(addr);
            }
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "{} (pid {}) did not write its address to {} within {} s; the last lines of {}:\n{}",
                    daemon.spec.name,
                    daemon.pid(),
                    daemon.spec.addr_file.display(),
                    timeout.as_secs(),
                    daemon.spec.log.display(),
                    daemon.log_tail().trim_end()
                );
            }
            tokio::time::sleep(ADDR_POLL).await;
        }
    }

    /// Fails, with the tail of its log, if a daemon has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for daemon in &mut self.daemons {
            if daemon.reported {
                continue;
            }
            if let Some(status) = daemon.poll_exit()? {
                return Err(daemon.died_error(status));
            }
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

    /// Kills daemon `name` at once (SIGKILL, as `kill -9` would), reaps it and marks its death
    /// as expected. Returns whether it was running.
    pub fn kill(&mut self, name: &str) -> bool {
        let Some(daemon) = self.daemons.iter_mut().find(|d| d.spec.name == name) else { return false };
        let running = matches!(daemon.poll_exit(), Ok(None));
        daemon.kill_and_reap();
        daemon.reported = true;
        running
    }

    /// Stops every daemon: agents (every daemon but the one named `master`) first (SIGTERM, so
    /// they close their health streams), then the master; SIGKILL after the grace period.
    pub async fn stop(&mut self) -> StopReport {
        let (agents, others): (Vec<usize>, Vec<usize>) =
            (0..self.daemons.len()).partition(|&i| self.daemons[i].spec.name != MASTER_NAME);
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

/// Starts one process with `--listen 127.0.0.1:0 --addr-file ADDR_FILE` (after removing a stale
/// ADDR_FILE, so only the new process's address can be read from it), its output appended to
/// its log, in its own process group, without the caller's `RAGMESH_*` settings (the demo passes
/// everything as flags, and secrets in `spec.env`), and writes its pid file.
fn start(spec: &DaemonSpec) -> anyhow::Result<Child> {
    match fs::remove_file(&spec.addr_file) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => anyhow::bail!("cannot remove the old {}: {err}", spec.addr_file.display()),
    }
    let log = open_log(&spec.log)?;
    let log_err =
        log.try_clone().map_err(|err| anyhow::anyhow!("cannot use log file {}: {err}", spec.log.display()))?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .arg("--listen")
        .arg(LISTEN)
        .arg("--addr-file")
        .arg(&spec.addr_file)
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

    /// A daemon played by `sh -c SCRIPT --listen 127.0.0.1:0 --addr-file FILE`: "--listen"
    /// becomes $0, so the address asked for is $1 and the address file $3.
    fn fake(dir: &Path, name: &str, script: &str) -> DaemonSpec {
        DaemonSpec {
            name: name.to_owned(),
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            log: dir.join(format!("{name}.log")),
            pid_file: dir.join(format!("{name}.pid")),
            addr_file: dir.join(format!("{name}.addr")),
            env: Vec::new(),
        }
    }

    /// Writes ADDR to the address file the way the daemons do: a temporary file, then a rename.
    fn report(addr: &str) -> String {
        format!("echo {addr} > \"$3.tmp\" && mv \"$3.tmp\" \"$3\"")
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_address_comes_from_the_addr_file_of_a_daemon_told_to_listen_on_port_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A stale file from an earlier run must not be taken for the new daemon's address.
        fs::write(dir.path().join("master.addr"), "127.0.0.1:1\n").expect("stale addr file");
        let script = format!(
            "[ \"$1 $2\" = \"127.0.0.1:0 --addr-file\" ] || exit 9; sleep 0.2; {}; exec sleep 30",
            report("127.0.0.1:40123")
        );
        let mut supervisor = Supervisor::new();
        let index = supervisor.spawn(fake(dir.path(), "master", &script)).expect("spawn");
        assert_eq!(supervisor.daemons()[index].addr(), None, "unknown until reported");
        let addr = supervisor.wait_for_addr(index, Duration::from_secs(10)).await.expect("reported");
        assert_eq!(addr, "127.0.0.1:40123".parse::<SocketAddr>().expect("addr"));
        assert_eq!(supervisor.get("master").and_then(Daemon::addr), Some(addr));
        supervisor.check().expect("still running");
        let report = supervisor.stop().await;
        assert!(report.problems.is_empty(), "{report:?}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_daemon_that_dies_before_reporting_its_address_fails_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut supervisor = Supervisor::new();
        let index = supervisor
            .spawn(fake(dir.path(), "agent-1", "echo \"cannot listen on $1: denied\" >&2; exit 1"))
            .expect("spawn");
        let err = supervisor.wait_for_addr(index, Duration::from_secs(10)).await.expect_err("died");
        let message = err.to_string();
        assert!(message.starts_with("agent-1 (pid "), "{message}");
        assert!(message.contains("exited unexpectedly"), "{message}");
        assert!(message.contains("cannot listen on 127.0.0.1:0: denied"), "{message}");
        let report = supervisor.stop().await;
        assert!(report.problems.is_empty(), "its death was already reported: {report:?}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_daemon_that_never_reports_its_address_times_out_naming_the_file_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut supervisor = Supervisor::new();
        let index = supervisor.spawn(fake(dir.path(), "master", "echo still starting; exec sleep 30")).expect("spawn");
        let err = supervisor.wait_for_addr(index, Duration::from_millis(300)).await.expect_err("timed out");
        let message = err.to_string();
        let addr_file = dir.path().join("master.addr");
        assert!(message.contains(&format!("did not write its address to {}", addr_file.display())), "{message}");
        assert!(message.contains("still starting"), "{message}");
        let report = supervisor.stop().await;
        assert!(report.problems.is_empty(), "{report:?}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn supervisor_reports_death_with_the_log_and_stops_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut supervisor = Supervisor::new();
        let sleeper = format!("echo started on $1; {}; exec sleep 30", report("127.0.0.1:40124"));
        supervisor.spawn(fake(dir.path(), "agent-1", &sleeper)).expect("spawn sleeper");
        supervisor.spawn(fake(dir.path(), "agent-2", "echo boom: bad config >&2; exit 3")).expect("spawn failing");

        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match supervisor.check() {
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
