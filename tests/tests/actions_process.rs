//! Operator-declared actions (`[[actions]]` in each agent's TOML) run through the master on
//! real agent processes over mTLS: exec actions (argv substituted item by item, never through
//! a shell; a hanging program killed at its timeout), http actions against a small app the test
//! starts on loopback, discovery of each node's schemas, validation on the master, broadcasts
//! that stop at `max_fail_percent`, idempotency keys under concurrency, secrets kept out of the
//! audit log, the daemons' logs and the results, tenant limits, and the real `ragmeshctl`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use ragmesh_e2e::daemons::{ProcessMesh, bin_dir};
use ragmesh_e2e::trace_init;
use ragmesh_proto::v1;
use tokio::task::JoinSet;
use tonic::Code;

/// The actions every agent declares; `{name}` is the agent's name, `{dir}` the mesh's
/// directory, `{APP}` the test app's address (filled in by [`agent_toml`]).
const ACTIONS: &str = r#"
# Prints each argument on its own line: proves whole-item substitution.
[[actions]]
name = "show-args"
description = "Print the arguments on {name}"
tenants = ["*"]
timeout_ms = 10000
[[actions.args]]
name = "text"
description = "Free text"
type = "string"
required = true
min_len = 1
max_len = 200
[[actions.args]]
name = "mode"
type = "string"
default = "fast"
enum = ["fast", "slow"]
[[actions.args]]
name = "count"
type = "integer"
default = 3
min = 1
max = 10
[[actions.args]]
name = "ticket"
type = "string"
pattern = "T-[0-9]+"
[actions.run.exec]
program = "/usr/bin/printf"
argv = ["%s\n", "{text}", "{mode}", "{count}", "{ticket}"]

# Fails on agent-2 only (`test agent-2 != agent-2` exits 1).
[[actions]]
name = "probe"
description = "Succeeds everywhere but on agent-2"
tenants = ["*"]
[actions.run.exec]
program = "/usr/bin/test"
argv = ["{name}", "!=", "agent-2"]

# Hangs until killed at its timeout; `marker` makes its command line unique.
[[actions]]
name = "hang"
description = "Sleep far beyond the timeout"
tenants = ["*"]
timeout_ms = 1500
[[actions.args]]
name = "marker"
type = "string"
required = true
pattern = "[0-9]{6,12}"
[actions.run.exec]
program = "/bin/sleep"
argv = ["600", "{marker}"]

# Echoes a secret: the master must not let it through.
[[actions]]
name = "login"
description = "Print a user and its token"
tenants = ["*"]
[[actions.args]]
name = "user"
type = "string"
required = true
[[actions.args]]
name = "token"
type = "string"
required = true
secret = true
min_len = 12
[actions.run.exec]
program = "/usr/bin/printf"
argv = ["%s:%s\n", "{user}", "{token}"]

# Only tenant acme: leaves a file when it ran.
[[actions]]
name = "acme-only"
description = "Mark that acme ran it"
tenants = ["acme"]
[actions.run.exec]
program = "/usr/bin/touch"
argv = ["{dir}/acme-ran-{name}"]

# Transactional; its prepare step echoes a secret the master must mask.
[[actions]]
name = "stage"
description = "Stage with a key, then make live or drop"
tenants = ["*"]
[[actions.args]]
name = "key"
type = "string"
required = true
secret = true
min_len = 12
[actions.prepare.exec]
program = "/usr/bin/printf"
argv = ["staged with %s\n", "{key}"]
[actions.commit.exec]
program = "/bin/true"
[actions.abort.exec]
program = "/bin/true"

# The local app: POST /internal/clear-cache/{region} with a JSON body of the arguments.
[[actions]]
name = "clear-cache"
description = "Clear one cache region of the app"
tenants = ["*"]
timeout_ms = 5000
[[actions.args]]
name = "region"
type = "string"
required = true
enum = ["sessions", "slow", "boom"]
[[actions.args]]
name = "depth"
type = "integer"
default = 2
[actions.run.http]
method = "POST"
url = "http://{APP}/internal/clear-cache/{region}"
"#;

fn agent_toml(app: SocketAddr) -> String {
    ACTIONS.replace("{APP}", &app.to_string())
}

/// A request the app got.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    body: serde_json::Value,
}

/// The application beside the agents: records every request; `/boom` answers 503, `/slow`
/// answers after 700 ms, anything else 200 `cleared`.
struct App {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Request>>>,
    server: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start() -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the app");
        let addr = listener.local_addr().expect("addr");
        let got: Arc<Mutex<Vec<Request>>> = Arc::default();
        let record = got.clone();
        let server = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let record = record.clone();
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let path = parts.uri.path().to_owned();
                        record.lock().expect("lock").push(Request {
                            method: parts.method.to_string(),
                            path: path.clone(),
                            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                        });
                        let (status, text) = if path.ends_with("/boom") {
                            (503, "overloaded")
                        } else {
                            if path.ends_with("/slow") {
                                tokio::time::sleep(Duration::from_millis(700)).await;
                            }
                            (200, "cleared")
                        };
                        let response = http::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(text.as_bytes())))
                            .expect("response");
                        Ok::<_, Infallible>(response)
                    }
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App { addr, got, server }
    }

    fn requests(&self) -> Vec<Request> {
        self.got.lock().expect("lock").clone()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn mesh(app: &App) -> ProcessMesh {
    ProcessMesh::builder().agents(3).agent_toml(agent_toml(app.addr)).start().await
}

fn call(action: &str, nodes: &[&str], args: &[(&str, &str)]) -> v1::ExecuteActionRequest {
    v1::ExecuteActionRequest {
        call: Some(v1::ActionCall {
            action: action.into(),
            arguments: args.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }),
        selector: Some(v1::NodeSelector {
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The job of a finished call.
fn job(response: v1::ExecuteActionResponse) -> v1::ActionJob {
    let job = response.job.expect("a job");
    assert!(job.finished, "{job:?}");
    job
}

/// The one node's answered result.
fn single(job: &v1::ActionJob) -> (&v1::NodeActionOutcome, &v1::ActionResult) {
    assert_eq!(job.nodes.len(), 1, "{job:?}");
    let node = &job.nodes[0];
    assert_eq!(node.state(), v1::NodeActionState::Done, "{node:?}");
    assert_eq!(node.status(), v1::OutcomeStatus::Ok, "the node answered: {node:?}");
    (node, node.result.as_ref().expect("a result"))
}

async fn history(
    client: &mut v1::master_service_client::MasterServiceClient<tonic::transport::Channel>,
) -> Vec<v1::AuditRecord> {
    let request = v1::ActionHistoryRequest { limit: 1000, ..Default::default() };
    client.action_history(request).await.expect("history").into_inner().records
}

/// Process ids whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(marker) {
            found.push(format!("{name}: {text}"));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_http_actions_run_through_the_master_with_their_schemas_validated_first() {
    trace_init();
    let app = App::start().await;
    let mesh = mesh(&app).await;
    let mut client = mesh.client().await;

    // Discovery: every node lists its declared actions with their schemas (its own config).
    let listed = client.list_node_actions(v1::ListNodeActionsRequest::default()).await.expect("list").into_inner();
    let names: Vec<&str> = listed.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["agent-1", "agent-2", "agent-3"]);
    for node in &listed.nodes {
        assert_eq!(node.status(), v1::OutcomeStatus::Ok, "{node:?}");
        let show = node.actions.iter().find(|a| a.name == "show-args").expect("show-args is offered");
        assert_eq!(show.description, format!("Print the arguments on {}", node.node), "each node's own config");
        assert!(!show.builtin && !show.transactional, "{show:?}");
        assert_eq!((show.timeout_ms, show.capability.as_str()), (10_000, "actions"), "{show:?}");
        assert_eq!(show.tenants, ["*"]);
        let arg = |name: &str| show.arguments.iter().find(|a| a.name == name).expect("declared argument").clone();
        let text = arg("text");
        assert_eq!(text.r#type(), v1::ArgumentType::String);
        assert!(text.required && !text.secret, "{text:?}");
        assert_eq!((text.min_len, text.max_len), (Some(1), Some(200)), "{text:?}");
        let mode = arg("mode");
        assert_eq!(mode.allowed, ["fast", "slow"], "{mode:?}");
        assert_eq!(mode.default_value.as_deref(), Some("fast"));
        let count = arg("count");
        assert_eq!(count.r#type(), v1::ArgumentType::Integer);
        assert_eq!((count.min, count.max), (Some(1.0), Some(10.0)), "{count:?}");
        assert_eq!(arg("ticket").pattern, "T-[0-9]+");
        let login = node.actions.iter().find(|a| a.name == "login").expect("login is offered");
        let token = login.arguments.iter().find(|a| a.name == "token").expect("token");
        assert!(token.secret && token.required, "{token:?}");
        let acme = node.actions.iter().find(|a| a.name == "acme-only").expect("acme-only is offered");
        assert_eq!(acme.tenants, ["acme"]);
    }

    // Exec on one node: an argument with spaces and shell syntax is one argv item, unexpanded.
    let tricky = "two words; echo $HOME && rm -rf /tmp/nothing | cat";
    let response = client
        .execute_action(call("show-args", &["agent-1"], &[("text", tricky), ("ticket", "T-42")]))
        .await
        .expect("runs")
        .into_inner();
    let job = job(response);
    let (node, result) = single(&job);
    assert_eq!(node.node, "agent-1");
    assert_eq!(result.status(), v1::ActionStatus::Ok, "{result:?}");
    let step = &result.steps[0];
    assert_eq!((step.step.as_str(), step.exit_code), ("run", Some(0)), "{step:?}");
    let lines: Vec<&str> = step.stdout.lines().collect();
    assert_eq!(lines, [tricky, "fast", "3", "T-42"], "one argv item per argument, defaults filled in");
    assert!(step.stderr.is_empty(), "{step:?}");
    assert!(result.duration_ms < 10_000 && step.duration_ms <= result.duration_ms, "{result:?}");
    // An optional argument without a default, left out, drops its argv item.
    let job2 = job_of(&mut client, call("show-args", &["agent-2"], &[("text", "x"), ("mode", "slow")])).await;
    let (_, result) = single(&job2);
    assert_eq!(result.steps[0].stdout, "x\nslow\n3\n");

    // Validation errors on the master name the argument; nothing runs, nothing is audited.
    let audited = history(&mut client).await.len();
    assert_eq!(audited, 2, "two calls ran");
    for (args, named) in [
        (vec![("mode", "fast")], "text"),
        (vec![("text", "x"), ("mode", "medium")], "mode"),
        (vec![("text", "x"), ("ticket", "X-1")], "ticket"),
        (vec![("text", "x"), ("count", "11")], "count"),
    ] {
        let refused = client.execute_action(call("show-args", &["agent-1"], &args)).await.expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(named), "names {named}: {}", refused.message());
    }
    assert_eq!(history(&mut client).await.len(), audited, "refused calls ran nowhere");

    // Http: the app gets the method, path and typed JSON body; a 5xx is a failed outcome.
    let job3 = job_of(&mut client, call("clear-cache", &["agent-3"], &[("region", "sessions")])).await;
    let (_, result) = single(&job3);
    assert_eq!(result.status(), v1::ActionStatus::Ok, "{result:?}");
    assert_eq!((result.steps[0].http_status, result.steps[0].stdout.as_str()), (Some(200), "cleared"));
    let requests = app.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!((requests[0].method.as_str(), requests[0].path.as_str()), ("POST", "/internal/clear-cache/sessions"));
    assert_eq!(requests[0].body, serde_json::json!({ "region": "sessions", "depth": 2 }));
    let job4 = job_of(&mut client, call("clear-cache", &["agent-3"], &[("region", "boom"), ("depth", "5")])).await;
    let (_, result) = single(&job4);
    assert_eq!(result.status(), v1::ActionStatus::Failed, "{result:?}");
    assert_eq!((result.steps[0].http_status, result.steps[0].stdout.as_str()), (Some(503), "overloaded"));
    assert_eq!(app.requests().len(), 2);
    assert_eq!(app.requests()[1].body, serde_json::json!({ "region": "boom", "depth": 5 }));
    let records = history(&mut client).await;
    let newest = &records[0];
    assert_eq!(
        (newest.action.as_str(), newest.node.as_str(), newest.status.as_str()),
        ("clear-cache", "agent-3", "failed")
    );
}

async fn job_of(
    client: &mut v1::master_service_client::MasterServiceClient<tonic::transport::Channel>,
    request: v1::ExecuteActionRequest,
) -> v1::ActionJob {
    job(client.execute_action(request).await.expect("runs").into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_exec_is_killed_and_a_broadcast_stops_at_its_failure_budget() {
    trace_init();
    let app = App::start().await;
    let mesh = mesh(&app).await;
    let mut client = mesh.client().await;

    // Hanging: the node reports timeout and the process is gone.
    let marker = format!("{}", 100_000_000 + u64::from(std::process::id()) * 7 % 899_999_999);
    let mut running = tokio::spawn({
        let mut client = client.clone();
        let request = call("hang", &["agent-2"], &[("marker", marker.as_str())]);
        async move { client.execute_action(request).await }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        if seen.is_empty() {
            seen = processes_with(&format!("600 {marker}"));
        }
        tokio::select! {
            done = &mut running => break done.expect("task").expect("runs").into_inner(),
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        assert!(Instant::now() < deadline, "the hanging call never ended");
    };
    assert!(!seen.is_empty(), "the sleep ran (seen in /proc while the call ran)");
    let hung = job(response);
    let (_, result) = single(&hung);
    assert_eq!(result.status(), v1::ActionStatus::Timeout, "{result:?}");
    assert!(result.steps[0].exit_code.is_none(), "killed, no exit code: {result:?}");
    assert!(result.duration_ms >= 1400 && result.duration_ms < 10_000, "{result:?}");
    let left = processes_with(&format!("600 {marker}"));
    assert!(left.is_empty(), "the sleep was killed: {left:?}");
    let record = &history(&mut client).await[0];
    assert_eq!((record.action.as_str(), record.status.as_str()), ("hang", "timeout"));

    // Broadcast, one node at a time, no failure allowed: agent-1 ok, agent-2 fails, agent-3
    // is never started and says why.
    let request = v1::ExecuteActionRequest {
        selector: Some(v1::NodeSelector { all: true, ..Default::default() }),
        max_parallel: 1,
        max_fail_percent: Some(0),
        ..call("probe", &[], &[])
    };
    let broadcast = job_of(&mut client, request).await;
    let names: Vec<&str> = broadcast.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["agent-1", "agent-2", "agent-3"]);
    let [one, two, three] = &broadcast.nodes[..] else { panic!("three outcomes: {broadcast:?}") };
    assert_eq!(one.result.as_ref().map(|r| r.status()), Some(v1::ActionStatus::Ok), "{one:?}");
    let failed = two.result.as_ref().expect("agent-2 answered");
    assert_eq!((failed.status(), failed.steps[0].exit_code), (v1::ActionStatus::Failed, Some(1)), "{two:?}");
    assert_eq!(three.state(), v1::NodeActionState::NotStarted, "{three:?}");
    assert!(three.result.is_none(), "{three:?}");
    assert!(three.message.contains("fail"), "says why: {three:?}");
    let audited: Vec<(String, String)> = history(&mut client)
        .await
        .iter()
        .filter(|r| r.action == "probe")
        .map(|r| (r.node.clone(), r.status.clone()))
        .collect();
    assert!(audited.contains(&("agent-2".into(), "failed".into())), "{audited:?}");
    assert!(!audited.iter().any(|(node, status)| node == "agent-3" && status == "ok"), "{audited:?}");

    // The same broadcast with the default budget runs everywhere.
    let request = v1::ExecuteActionRequest {
        selector: Some(v1::NodeSelector { all: true, ..Default::default() }),
        max_parallel: 1,
        ..call("probe", &[], &[])
    };
    let everywhere = job_of(&mut client, request).await;
    let statuses: Vec<Option<v1::ActionStatus>> =
        everywhere.nodes.iter().map(|n| n.result.as_ref().map(v1::ActionResult::status)).collect();
    assert_eq!(statuses, [Some(v1::ActionStatus::Ok), Some(v1::ActionStatus::Failed), Some(v1::ActionStatus::Ok)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_runs_once_secrets_stay_hidden_and_tenant_limits_hold() {
    trace_init();
    let app = App::start().await;
    let mesh = mesh(&app).await;
    let mut client = mesh.client().await;

    // Idempotency: two concurrent calls with one key; the app (700 ms per request) sees one.
    let keyed = v1::ExecuteActionRequest {
        idempotency_key: "same-key-1".into(),
        ..call("clear-cache", &["agent-1"], &[("region", "slow")])
    };
    let (mut a, mut b) = (client.clone(), client.clone());
    let (first, second) = tokio::join!(a.execute_action(keyed.clone()), b.execute_action(keyed.clone()));
    let (first, second) = (first.expect("first").into_inner(), second.expect("second").into_inner());
    let slow: Vec<Request> = app.requests().into_iter().filter(|r| r.path.ends_with("/slow")).collect();
    assert_eq!(slow.len(), 1, "the action ran once: {slow:?}");
    assert_eq!(first.job, second.job, "both get the one result");
    assert!(first.replayed != second.replayed, "one ran, one replayed: {} {}", first.replayed, second.replayed);
    let (_, result) = single(first.job.as_ref().expect("job"));
    assert_eq!(result.status(), v1::ActionStatus::Ok);
    let runs = history(&mut client).await.iter().filter(|r| r.action == "clear-cache").count();
    assert_eq!(runs, 1, "audited once");

    // Secrets: not in the audit log, the logs of the daemons, nor the result.
    let secret = "hunter2-s3cr3t-value";
    let login = job_of(&mut client, call("login", &["agent-2"], &[("user", "alice"), ("token", secret)])).await;
    let (_, result) = single(&login);
    assert_eq!(result.status(), v1::ActionStatus::Ok, "{result:?}");
    assert_eq!(result.steps[0].stdout, "alice:***\n", "the echoed secret is masked");
    let shown = format!("{login:?}");
    assert!(!shown.contains(secret), "the result hides the secret: {shown}");
    let read = client.get_action_job(v1::GetActionJobRequest { job_id: login.job_id.clone() }).await.expect("get");
    assert!(!format!("{:?}", read.into_inner()).contains(secret), "the stored job too");
    let records = history(&mut client).await;
    let record = records.iter().find(|r| r.action == "login").expect("audited");
    assert_eq!(record.arguments.get("token").map(String::as_str), Some("***"), "{record:?}");
    assert_eq!(record.arguments.get("user").map(String::as_str), Some("alice"), "{record:?}");
    assert!(!record.arguments_digest.is_empty() && !record.arguments_digest.contains(secret));
    assert!(!format!("{records:?}").contains(secret));
    for daemon in ["master", "agent-1", "agent-2", "agent-3"] {
        let log = mesh.log(daemon);
        assert!(!log.is_empty() || daemon != "agent-2", "agent-2 logged something");
        assert!(!log.contains(secret), "{daemon}'s log shows the secret");
    }
    assert!(mesh.log("agent-2").contains("login"), "the run is logged (without its secret)");

    // Tenants: globex may not run an acme action: the master refuses it from the node's
    // descriptor without asking the node (no result), audits the refusal, and nothing runs.
    let globex = mesh.issue_token("gina", "globex", &["actions"]).await;
    let mut globex = mesh.client_with_token(&globex).await;
    let refused = globex.execute_action(call("acme-only", &["agent-1"], &[])).await.expect("a job").into_inner();
    let refused = job(refused);
    let node = &refused.nodes[0];
    assert_eq!((node.state(), node.status()), (v1::NodeActionState::Done, v1::OutcomeStatus::Error), "{node:?}");
    assert!(node.result.is_none(), "the node was not asked: {node:?}");
    assert!(node.message.contains("\"acme\"") && node.message.contains("\"globex\""), "says why: {node:?}");
    let ran_file = mesh.dir().join("acme-ran-agent-1");
    let audited = history(&mut client).await;
    let denied = audited.iter().find(|r| r.action == "acme-only").expect("the refusal is audited");
    assert_eq!((denied.tenant.as_str(), denied.status.as_str()), ("globex", "error"), "{denied:?}");
    assert!(!ran_file.exists(), "globex's call ran nothing");
    let acme = mesh.issue_token("ann", "acme", &["actions"]).await;
    let mut acme = mesh.client_with_token(&acme).await;
    let job = job(acme.execute_action(call("acme-only", &["agent-1"], &[])).await.expect("acme runs").into_inner());
    let (_, result) = single(&job);
    assert_eq!(result.status(), v1::ActionStatus::Ok, "{result:?}");
    assert!(ran_file.exists(), "acme's call ran");
}

/// `ragmeshctl` with the mesh's client certificate, run to completion.
struct Ctl {
    bin: PathBuf,
    env: Vec<(String, String)>,
}

/// What one `ragmeshctl` run printed and how it exited.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ctl {
    fn new(mesh: &ProcessMesh) -> Ctl {
        let bin = bin_dir().join("ragmeshctl");
        assert!(bin.is_file(), "{} is missing: build it with `cargo build --workspace --bins`", bin.display());
        let tls = mesh.tls("client");
        let path = |p: &Path| p.display().to_string();
        let env = vec![
            ("RAGMESH_MASTER".to_owned(), mesh.master_addr().to_string()),
            ("RAGMESH_CA".to_owned(), path(&tls.ca)),
            ("RAGMESH_CERT".to_owned(), path(&tls.cert)),
            ("RAGMESH_KEY".to_owned(), path(&tls.key)),
        ];
        Ctl { bin, env }
    }

    async fn run(&self, args: &[&str]) -> Ran {
        let mut command = tokio::process::Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RAGMESH_") {
                command.env_remove(&key);
            }
        }
        command.args(args).envs(self.env.iter().map(|(k, v)| (k, v))).env("NO_COLOR", "1").kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("ragmeshctl finishes in time")
            .expect("ragmeshctl runs");
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ragmeshctl_lists_runs_and_audits_declared_actions_with_its_exit_statuses() {
    trace_init();
    let app = App::start().await;
    let mesh = mesh(&app).await;
    let ctl = Ctl::new(&mesh);

    let list = ctl.run(&["action", "list"]).await;
    assert_eq!(list.code, Some(0), "{list:?}");
    for shown in ["show-args", "clear-cache", "agent-3", "T-[0-9]+"] {
        assert!(list.stdout.contains(shown), "the list shows {shown}: {list:?}");
    }
    let list = ctl.run(&["action", "list", "--node", "agent-2", "--json"]).await;
    assert_eq!(list.code, Some(0), "{list:?}");
    let nodes: serde_json::Value = serde_json::from_str(&list.stdout).expect("JSON list");
    let nodes = nodes.as_array().expect("an array of nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["node"], "agent-2");
    let login = nodes[0]["actions"].as_array().expect("actions").iter().find(|a| a["name"] == "login").expect("login");
    let token = login["arguments"].as_array().expect("arguments").iter().find(|a| a["name"] == "token").expect("token");
    assert_eq!(token["secret"], true, "{token}");

    let ran = ctl.run(&["action", "run", "show-args", "--node", "agent-1", "--arg", "text=a b;c"]).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.contains("agent-1"), "{ran:?}");
    let ran = ctl
        .run(&["action", "run", "show-args", "--node", "agent-1", "--arg", "text=a b;c", "--arg", "count=4", "--json"])
        .await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let out: serde_json::Value = serde_json::from_str(&ran.stdout).expect("JSON run");
    let node = &out["job"]["nodes"][0];
    assert_eq!(node["node"], "agent-1", "{out}");
    assert!(out["idempotency_key"].as_str().is_some_and(|k| !k.is_empty()), "{out}");
    assert!(out.to_string().contains("a b;c\\nfast\\n4\\n"), "the output travels: {out}");

    let failing = ctl.run(&["action", "run", "probe", "--all", "--max-parallel", "1", "--max-fail-percent", "0"]).await;
    assert_eq!(failing.code, Some(2), "a broadcast with a failed node exits 2: {failing:?}");
    assert!(failing.stdout.contains("agent-2"), "{failing:?}");

    let invalid =
        ctl.run(&["action", "run", "show-args", "--node", "agent-1", "--arg", "text=x", "--arg", "mode=medium"]).await;
    assert_eq!(invalid.code, Some(64), "a validation error exits 64: {invalid:?}");
    assert!(invalid.stderr.contains("mode"), "names the argument: {invalid:?}");

    let secret = "ctl-s3cr3t-token-value";
    let login = ctl
        .run(&[
            "action",
            "run",
            "login",
            "--node",
            "agent-3",
            "--arg",
            "user=bob",
            "--arg",
            &format!("token={secret}"),
            "--output",
        ])
        .await;
    assert_eq!(login.code, Some(0), "{login:?}");
    assert!(!login.stdout.contains(secret) && !login.stderr.contains(secret), "{login:?}");

    let history = ctl.run(&["action", "history"]).await;
    assert_eq!(history.code, Some(0), "{history:?}");
    for shown in ["show-args", "probe", "login"] {
        assert!(history.stdout.contains(shown), "history shows {shown}: {history:?}");
    }
    assert!(!history.stdout.contains(secret), "{history:?}");
    let history = ctl.run(&["action", "history", "--action", "probe", "--json"]).await;
    assert_eq!(history.code, Some(0), "{history:?}");
    let records: serde_json::Value = serde_json::from_str(&history.stdout).expect("JSON history");
    let records = records["records"].as_array().expect("records");
    let statuses: BTreeMap<String, String> = records
        .iter()
        .map(|r| {
            (r["node"].as_str().unwrap_or_default().to_owned(), r["status"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    assert_eq!(statuses.get("agent-1").map(String::as_str), Some("ok"), "{records:?}");
    assert_eq!(statuses.get("agent-2").map(String::as_str), Some("failed"), "{records:?}");
}

fn tx_of(action: &str, nodes: &[&str], args: &[(&str, &str)]) -> v1::ExecuteTransactionRequest {
    let call = v1::ActionCall {
        action: action.into(),
        arguments: args.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    };
    let parts = nodes
        .iter()
        .map(|node| v1::TransactionPart {
            node: (*node).to_owned(),
            shard: String::new(),
            operation: Some(v1::TransactionOperation {
                kind: Some(v1::transaction_operation::Kind::Action(call.clone())),
            }),
        })
        .collect();
    v1::ExecuteTransactionRequest { parts, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_parts_are_checked_on_the_master_and_their_secrets_masked() {
    trace_init();
    let app = App::start().await;
    let mesh = mesh(&app).await;
    let mut client = mesh.client().await;
    let all = ["agent-1", "agent-2", "agent-3"];
    let listed = |client: &mut v1::master_service_client::MasterServiceClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move {
            let request = v1::ListTransactionsRequest { include_finished: true, ..Default::default() };
            client.list_transactions(request).await.expect("list").into_inner().transactions.len()
        }
    };

    // A non-transactional action and invalid arguments are refused before anything is prepared.
    let refused = client.execute_transaction(tx_of("probe", &all, &[])).await.expect_err("not transactional");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("not transactional") && refused.message().contains("nothing was prepared"));
    let refused = client.execute_transaction(tx_of("stage", &all, &[("key", "abc123")])).await.expect_err("too short");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("key"), "names the argument: {}", refused.message());
    assert!(!refused.message().contains("abc123"), "never echoes a secret: {}", refused.message());
    assert_eq!(listed(&mut client).await, 0, "no transaction was started");

    // A valid one commits; the prepare step's echo of the secret never comes back or is kept.
    let secret = "hunter2-hunter2";
    let response =
        client.execute_transaction(tx_of("stage", &all, &[("key", secret)])).await.expect("runs").into_inner();
    let status = response.transaction.expect("status");
    assert_eq!(status.phase(), v1::TransactionPhase::Committed, "{status:?}");
    for participant in &status.participants {
        assert_eq!(participant.vote(), v1::ParticipantVote::Yes, "{participant:?}");
        let prepared = participant.prepare_result.as_ref().expect("prepare result");
        assert_eq!(prepared.steps[0].stdout, "staged with ***\n", "{participant:?}");
    }
    let again = client
        .get_transaction(v1::GetTransactionRequest { tx_id: status.tx_id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert!(!format!("{again:?}").contains(secret), "{again:?}");
    let audited: Vec<v1::AuditRecord> =
        history(&mut client).await.into_iter().filter(|r| r.action == "stage").collect();
    assert_eq!(audited.len(), 3, "one record per participant: {audited:?}");
    for record in &audited {
        assert_eq!(record.arguments.get("key").map(String::as_str), Some("***"), "{record:?}");
    }
    for name in ["master", "agent-1", "agent-2", "agent-3"] {
        assert!(!mesh.log(name).contains(secret), "{name}'s log holds the secret");
    }

    // A selector: the master picks the participants, each takes the one operation.
    let operation = tx_of("stage", &["agent-1"], &[("key", secret)]).parts.remove(0).operation;
    let selected = v1::ExecuteTransactionRequest {
        selector: Some(v1::NodeSelector { all: true, ..Default::default() }),
        operation: operation.clone(),
        ..Default::default()
    };
    let status = client.execute_transaction(selected).await.expect("runs").into_inner().transaction.expect("status");
    assert_eq!(status.phase(), v1::TransactionPhase::Committed, "{status:?}");
    let mut nodes: Vec<&str> = status.participants.iter().map(|p| p.node.as_str()).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, all);
    let both = v1::ExecuteTransactionRequest {
        selector: Some(v1::NodeSelector { all: true, ..Default::default() }),
        operation,
        ..tx_of("stage", &["agent-1"], &[("key", secret)])
    };
    let refused = client.execute_transaction(both).await.expect_err("parts and a selector");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}
