//! Tokens and tenancy end to end: starts `ragmeshctl demo` (running, without --no-wait) in the
//! background and drives the real CLI against it: check each agent is listed at the address it
//! bound, issue tokens, ingest as tenant acme, search as acme and as globex, refresh, detect
//! refresh-token reuse, create a join token, list pending nodes; then stops the demo with SIGINT
//! and checks no daemon is left. Skipped, saying so, when the daemons have not been built next
//! to `ragmeshctl` (`cargo build --bins`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the demo may take to start a master and two agents and load its samples.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the demo may take to stop after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two looks at a condition.
const POLL: Duration = Duration::from_millis(100);
/// A word that occurs in no sample document.
const SECRET_WORD: &str = "zanzibarquux";

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ragmeshctl"))
}

/// A running `ragmeshctl demo`; dropping it (also when a test assertion fails) stops it.
struct Demo {
    child: Option<Child>,
    dir: PathBuf,
    stdout: PathBuf,
}

impl Demo {
    fn start(root: &Path) -> Demo {
        let dir = root.join("demo");
        let stdout = root.join("demo.out");
        let out = File::create(&stdout).expect("demo stdout file");
        let err = out.try_clone().expect("demo stderr file");
        let child = Command::new(exe())
            .args(["demo", "--agents", "2", "--dir"])
            .arg(&dir)
            .env_remove("RAGMESH_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start the demo");
        Demo { child: Some(child), dir, stdout }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The connection flags for the demo's master and its operator certificate.
    fn connection(&self) -> Vec<String> {
        let addr = std::fs::read_to_string(self.dir.join("master.addr")).expect("master.addr");
        let certs = self.dir.join("certs");
        let path = |name: &str| certs.join(name).to_str().expect("utf-8 temp path").to_owned();
        vec![
            "--master".to_owned(),
            addr.trim().to_owned(),
            "--ca".to_owned(),
            path("ca.pem"),
            "--cert".to_owned(),
            path("client.pem"),
            "--key".to_owned(),
            path("client.key"),
        ]
    }

    /// Waits until the master's address is written, `ragmeshctl nodes` shows both agents up and
    /// the demo has finished loading its samples.
    fn wait_until_running(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("poll the demo")) {
                panic!("the demo exited early ({status}):\n{}", self.output());
            }
            if self.dir.join("master.addr").is_file() && self.output().contains("The mesh is running") {
                let mut args = self.connection();
                args.push("nodes".to_owned());
                let nodes = ragmeshctl(&args);
                let table = String::from_utf8_lossy(&nodes.stdout);
                // NAME is the first column; STATE follows NAME and GROUP.
                let up = |agent: &str| {
                    table.lines().any(|l| {
                        let columns: Vec<&str> = l.split_whitespace().collect();
                        columns.first() == Some(&agent) && columns.get(2) == Some(&"up")
                    })
                };
                if nodes.status.success() && up("agent-1") && up("agent-2") {
                    return;
                }
            }
            assert!(started.elapsed() < START_TIMEOUT, "the demo did not come up in time:\n{}", self.output());
            std::thread::sleep(POLL);
        }
    }

    /// Sends SIGINT and waits for the demo to exit; returns its status.
    fn interrupt(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let signalled = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        if signalled.is_ok_and(|s| s.success()) {
            let started = Instant::now();
            while started.elapsed() < STOP_TIMEOUT {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status);
                }
                std::thread::sleep(POLL);
            }
        }
        // Last resort, so a failing test does not leave processes behind.
        let _ = child.kill();
        let _ = child.wait();
        for name in ["agent-1", "agent-2", "master"] {
            if let Some(pid) = pid_of(&self.dir, name) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
        None
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.interrupt();
    }
}

fn pid_of(dir: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(dir.join(format!("{name}.pid"))).ok()?.trim().parse().ok()
}

fn ragmeshctl<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(exe())
        .args(args)
        // The caller's settings must not change what the test sees.
        .env_remove("RAGMESH_MASTER")
        .env_remove("RAGMESH_CA")
        .env_remove("RAGMESH_CERT")
        .env_remove("RAGMESH_KEY")
        .env_remove("RAGMESH_INSECURE")
        .env_remove("RAGMESH_TIMEOUT_MS")
        .env_remove("RAGMESH_TOKEN")
        .env_remove("RAGMESH_REFRESH_TOKEN")
        .output()
        .expect("run ragmeshctl")
}

/// Runs ragmeshctl with the demo's connection flags and `args`.
fn run(demo: &Demo, args: &[&str]) -> Output {
    let mut all = demo.connection();
    all.extend(args.iter().map(|a| (*a).to_owned()));
    ragmeshctl(&all)
}

/// Runs, asserts success, and parses stdout as JSON.
fn run_json(demo: &Demo, args: &[&str]) -> Value {
    let output = run(demo, args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{args:?}\nstdout:\n{stdout}\nstderr:\n{}", stderr(&output));
    serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{args:?} printed no JSON ({err}):\n{stdout}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_else(|| panic!("no string {key:?} in {value}")).to_owned()
}

/// The document ids a `search --json` answer holds, after checking every node answered ok.
fn hit_ids(search: &Value) -> Vec<String> {
    let nodes = search["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{search}");
    for node in nodes {
        assert_eq!(node["status"], "ok", "every node must answer, or an empty result proves nothing: {search}");
    }
    search["hits"].as_array().expect("hits").iter().map(|hit| text(hit, "doc_id")).collect()
}

/// The `hit_count` and `generation` node `name` reported in a `search --json` answer.
fn node_counts(search: &Value, name: &str) -> (u64, u64) {
    let nodes = search["nodes"].as_array().expect("nodes");
    let node = nodes.iter().find(|n| n["node"] == name).unwrap_or_else(|| panic!("no outcome for {name}: {search}"));
    let number = |key: &str| node[key].as_u64().unwrap_or_else(|| panic!("no number {key:?} for {name}: {search}"));
    (number("hit_count"), number("generation"))
}

#[test]
fn tokens_scope_search_to_the_tenant_and_refresh_reuse_revokes_the_family() {
    let bin_dir = exe().parent().expect("the binary lives in a directory");
    if ["ragmesh-master", "ragmesh-agent"].iter().any(|d| !bin_dir.join(d).is_file()) {
        println!("skipped: build the daemons first (cargo build --bins)");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let mut demo = Demo::start(root.path());
    demo.wait_until_running();

    // The agents listen on port 0: each advertises the port it really bound, the one it wrote
    // to its --addr-file, and the master lists (and dials) it there.
    let nodes = run_json(&demo, &["nodes", "--json"]);
    for agent in ["agent-1", "agent-2"] {
        let written = std::fs::read_to_string(demo.dir.join(format!("{agent}.addr"))).expect("agent address file");
        let listed = nodes.as_array().expect("a JSON array").iter().find(|n| n["name"] == agent);
        let listed = listed.unwrap_or_else(|| panic!("{agent} not listed: {nodes}"));
        assert_eq!(text(listed, "address"), written.trim_end(), "{nodes}");
    }

    // An acme token that may search and ingest; its documents get acme's ACL by default.
    let acme = run_json(
        &demo,
        &["token", "issue", "--subject", "loader", "--tenant", "acme", "--cap", "search", "--cap", "ingest", "--json"],
    );
    let acme_token = text(&acme, "access_token");
    let first_refresh = text(&acme, "refresh_token");
    assert!(acme["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{acme}");
    assert!(!text(&acme, "token_id").is_empty(), "{acme}");

    let docs = root.path().join("acme.jsonl");
    std::fs::write(
        &docs,
        format!(
            "{{\"id\": \"acme-plan\", \"title\": \"Acme plan\", \"body\": \"the {SECRET_WORD} launch plan of acme\"}}\n"
        ),
    )
    .expect("write documents");
    let ingest = run(
        &demo,
        &["ingest", docs.to_str().expect("utf-8"), "--node", "agent-1", "--collection", "acme", "--token", &acme_token],
    );
    assert_eq!(ingest.status.code(), Some(0), "ingest as acme: {}", stderr(&ingest));
    assert!(stdout(&ingest).contains("ingested 1 document into shard group agent-1"), "{}", stdout(&ingest));

    let found = run_json(&demo, &["search", SECRET_WORD, "--json", "--token", &acme_token]);
    assert_eq!(hit_ids(&found), ["acme-plan"], "acme finds its own document: {found}");
    let (hits, generation_with_plan) = node_counts(&found, "agent-1");
    assert_eq!(hits, 1, "{found}");

    // Another tenant searches the same nodes and sees nothing of acme's.
    let globex =
        run_json(&demo, &["token", "issue", "--subject", "bob", "--tenant", "globex", "--cap", "search", "--json"]);
    let globex_token = text(&globex, "access_token");
    let hidden = run_json(&demo, &["search", SECRET_WORD, "--json", "--token", &globex_token]);
    assert_eq!(hit_ids(&hidden), Vec::<String>::new(), "globex must not see acme's document: {hidden}");
    // agent-1 searched the very index generation that holds acme's plan, and found nothing.
    assert_eq!(node_counts(&hidden, "agent-1"), (0, generation_with_plan), "{hidden}");
    assert_eq!(node_counts(&hidden, "agent-2").0, 0, "{hidden}");

    // A search token cannot administer the mesh; the master's message says what is missing.
    let refused = run(&demo, &["nodes", "--token", &globex_token]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("the master refused the call"), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("admin"), "{}", stderr(&refused));

    // Refresh rotates: new tokens that work.
    let refreshed = run_json(&demo, &["token", "refresh", &first_refresh, "--json"]);
    let second_refresh = text(&refreshed, "refresh_token");
    assert_ne!(second_refresh, first_refresh);
    let again = run_json(&demo, &["search", SECRET_WORD, "--json", "--token", &text(&refreshed, "access_token")]);
    assert_eq!(hit_ids(&again), ["acme-plan"], "the refreshed access token is acme's too: {again}");

    // Presenting the used refresh token again revokes the whole family, the newest token too.
    let reused = run(&demo, &["token", "refresh", &first_refresh]);
    assert_eq!(reused.status.code(), Some(1), "reuse must fail: {}", stdout(&reused));
    assert!(stderr(&reused).contains("revoked"), "{}", stderr(&reused));
    assert!(stdout(&reused).is_empty(), "nothing is printed on stdout: {}", stdout(&reused));
    let newest = run(&demo, &["token", "refresh", &second_refresh]);
    assert_eq!(newest.status.code(), Some(1), "the family is revoked: {}", stdout(&newest));
    assert!(stderr(&newest).contains("revoked family"), "{}", stderr(&newest));

    // A join token for agents, and its listing.
    let join = run(&demo, &["token", "join", "--ttl", "600", "--note", "integration test"]);
    assert_eq!(join.status.code(), Some(0), "{}", stderr(&join));
    let printed = stdout(&join);
    let token = printed
        .lines()
        .find_map(|line| line.strip_prefix("join token:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no join token printed:\n{printed}"));
    assert!(token.starts_with("rmj_"), "{printed}");
    assert!(printed.contains(&format!("--join-token {token}")), "{printed}");
    assert!(printed.contains(&format!("RAGMESH_JOIN_TOKEN={token}")), "{printed}");
    let listed = run(&demo, &["token", "join", "--list"]);
    assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
    assert!(stdout(&listed).contains("integration test"), "{}", stdout(&listed));
    assert!(!stdout(&listed).contains(token), "a listing never shows the secret: {}", stdout(&listed));

    let pending = run(&demo, &["nodes", "--pending"]);
    assert_eq!(pending.status.code(), Some(0), "{}", stderr(&pending));
    assert!(stdout(&pending).starts_with("no pending nodes"), "{}", stdout(&pending));

    // Stop with SIGINT, as Ctrl-C would, and check every daemon is gone.
    let status = demo.interrupt().unwrap_or_else(|| panic!("the demo did not stop on SIGINT:\n{}", demo.output()));
    assert!(status.success(), "demo exit status {status}:\n{}", demo.output());
    assert!(demo.output().contains("stopped agent-1, agent-2, master"), "{}", demo.output());
    for name in ["master", "agent-1", "agent-2"] {
        let pid = pid_of(&demo.dir, name).unwrap_or_else(|| panic!("{name}.pid missing or unreadable"));
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) is still running after the demo exited"
        );
    }
}
