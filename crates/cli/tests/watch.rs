//! `ragmeshctl watch --json` end to end: starts `ragmeshctl demo` (two agents) in the background,
//! runs the real `watch` against it, rotates the signing key and kills an agent with SIGKILL,
//! and reads `signing_key_rotated` and `node_down` as JSON lines. Skipped, saying so, when the
//! daemons have not been built next to `ragmeshctl` (`cargo build --bins`).

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the demo may take to start a master and two agents and load its samples.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long an event may take to reach `watch`.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ragmeshctl"))
}

fn ragmeshctl(args: &[String]) -> Command {
    let mut command = Command::new(exe());
    command.args(args);
    for var in ["RAGMESH_MASTER", "RAGMESH_CA", "RAGMESH_CERT", "RAGMESH_KEY", "RAGMESH_INSECURE", "RAGMESH_TOKEN"] {
        command.env_remove(var);
    }
    command
}

/// A child process killed (and reaped) when dropped, also when an assertion fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Last resort when the demo did not stop them: kills the daemons by their pid files.
struct Daemons(PathBuf);

impl Drop for Daemons {
    fn drop(&mut self) {
        for name in ["agent-1", "agent-2", "master"] {
            if let Ok(pid) = std::fs::read_to_string(self.0.join(format!("{name}.pid"))) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).stderr(Stdio::null()).status();
            }
        }
    }
}

fn connection(dir: &Path) -> Vec<String> {
    let addr = std::fs::read_to_string(dir.join("master.addr")).expect("master.addr");
    let certs = dir.join("certs");
    let path = |name: &str| certs.join(name).to_str().expect("utf-8 temp path").to_owned();
    let mut args = vec!["--master".to_owned(), addr.trim().to_owned()];
    for (flag, file) in [("--ca", "ca.pem"), ("--cert", "client.pem"), ("--key", "client.key")] {
        args.push(flag.to_owned());
        args.push(path(file));
    }
    args
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let mut all = connection(dir);
    all.extend(args.iter().map(|a| (*a).to_owned()));
    ragmeshctl(&all).output().expect("run ragmeshctl")
}

/// Reads JSON lines from `lines` until one matches `want`, within [`EVENT_TIMEOUT`].
fn wait_line(lines: &mpsc::Receiver<String>, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = lines.recv_timeout(left) else { break };
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object: {line:?}: {e}"));
        if want(&value) {
            return value;
        }
        seen.push(line);
    }
    panic!("no {what} line from `ragmeshctl watch --json` within {EVENT_TIMEOUT:?}; saw {seen:?}");
}

#[test]
fn watch_prints_one_json_object_per_event() {
    let bin_dir = exe().parent().expect("the binary lives in a directory");
    if ["ragmesh-master", "ragmesh-agent"].iter().any(|d| !bin_dir.join(d).is_file()) {
        println!("skipped: build the daemons first (cargo build --bins)");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = root.path().join("demo");
    let log = File::create(root.path().join("demo.out")).expect("demo output");
    let demo = Command::new(exe())
        .args(["demo", "--agents", "2", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("clone")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the demo");
    let _daemons = Daemons(dir.clone());
    let _demo = Killed(demo);
    let output = || std::fs::read_to_string(root.path().join("demo.out")).unwrap_or_default();
    let started = Instant::now();
    while !(dir.join("master.addr").is_file() && output().contains("The mesh is running")) {
        assert!(started.elapsed() < START_TIMEOUT, "the demo did not come up in time:\n{}", output());
        std::thread::sleep(POLL);
    }

    let mut args = connection(&dir);
    args.extend(["watch".to_owned(), "--json".to_owned()]);
    let mut watch = ragmeshctl(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start watch");
    let stdout = watch.stdout.take().expect("piped stdout");
    let _watch = Killed(watch);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    // `watch` subscribes shortly after it starts: rotate until the event shows up (bounded).
    let mut rotated = None;
    for _ in 0..10 {
        let rotation = run(&dir, &["token", "rotate-key"]);
        assert!(rotation.status.success(), "{}", String::from_utf8_lossy(&rotation.stderr));
        if let Ok(line) = lines.recv_timeout(Duration::from_secs(3)) {
            rotated = Some(serde_json::from_str::<Value>(&line).expect("one JSON object per line"));
            break;
        }
    }
    let rotated = rotated.expect("signing_key_rotated reached `watch`");
    assert_eq!(rotated["kind"], "signing_key_rotated", "{rotated}");
    assert!(rotated["key_id"].as_str().is_some_and(|k| !k.is_empty()), "{rotated}");
    assert!(rotated["seq"].as_u64().is_some() && rotated["time"].is_string(), "{rotated}");

    let pid = std::fs::read_to_string(dir.join("agent-1.pid")).expect("agent-1.pid");
    let killed = Command::new("kill").args(["-KILL", pid.trim()]).status().expect("kill");
    assert!(killed.success());
    let down = wait_line(&lines, "node_down of agent-1", |v| v["kind"] == "node_down" && v["node"] == "agent-1");
    assert!(down["seq"].as_u64() > rotated["seq"].as_u64(), "{down}");
    assert!(down["message"].as_str().is_some_and(|m| !m.is_empty()), "{down}");
}
