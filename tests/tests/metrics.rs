//! `/metrics` of master and agents over a real mesh: the text passes the real
//! `promtool check metrics` (Debian package `prometheus`; scripts/test installs it; without it
//! the check is skipped with a message, except under CI=true where that is a failure), and the
//! series move as they must across a search, an agent killed mid-search (outcome unavailable,
//! node state down), rate-limited calls and the eviction of the dead agent (its series go, the
//! others stay). `ragmeshctl top --once` (the real binary) shows
//! every node of a real mesh with the traffic of the searches made meanwhile.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use ragmesh_e2e::{Expect, Mesh, assert_outcomes, docs_for, outcome_of, scrape, trace_init};
use ragmesh_master::node::NodeState;
use ragmesh_proto::v1::{self, OutcomeStatus};
use tonic::Code;

/// Samples of one scrape: `name{labels}` (as written) to value.
#[derive(Debug)]
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    async fn of(addr: std::net::SocketAddr) -> Scrape {
        let text = scrape(addr).await;
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (series, value) = line.rsplit_once(' ').expect("a sample line is `series value`");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number in {line:?}"));
            samples.insert(series.to_owned(), value);
        }
        Scrape { text, samples }
    }

    /// The value of `series` (0 when absent: a counter not yet created).
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The value of `series`, which must be present.
    fn must(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("{series} missing from:\n{}", self.text))
    }
}

/// `promtool`, or `None` (outside CI) when it is not installed.
fn promtool() -> Option<String> {
    let path = std::env::var("RAGMESH_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let found = Command::new(&path).arg("--version").output().is_ok_and(|o| o.status.success());
    if found {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "promtool not found ({path}): CI must install it (apt-get install prometheus; scripts/test does)"
    );
    println!("NOTE: promtool not found ({path}): `promtool check metrics` SKIPPED; apt-get install prometheus");
    None
}

/// Runs `promtool check metrics` on `text` and fails with its findings.
fn promtool_check(promtool: &str, what: &str, text: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let output = child.wait_with_output().expect("promtool ends");
    let findings = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool check metrics failed on {what}:\n{findings}\n--- scrape ---\n{text}");
    println!("promtool check metrics: {what} passes ({} lines)", text.lines().count());
}

fn search_ok(code: &str) -> String {
    format!(
        r#"grpc_server_handled_total{{grpc_service="ragmesh.v1.MasterService",grpc_method="Search",grpc_code="{code}"}}"#
    )
}

fn calls(node: &str, outcome: &str) -> String {
    format!(r#"ragmesh_node_client_calls_total{{node="{node}",outcome="{outcome}"}}"#)
}

fn node_state(node: &str, state: &str) -> String {
    format!(r#"ragmesh_membership_node_state{{node="{node}",state="{state}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_move_across_a_search_a_killed_agent_and_a_rate_limited_call() {
    trace_init();
    let promtool = promtool();
    // Rate limit for the principal `alice` below; the harness's operator stays well under it.
    let mut mesh = Mesh::builder().agents(3).rate_limit(20, 10).start().await;
    let mut generations = Vec::new();
    for i in 0..3 {
        let before = Scrape::of(mesh.master_metrics_addr()).await;
        generations.push(mesh.ingest(i, docs_for(i, 4)).await.generation);
        // The replicated write is a node-client call too.
        let after = Scrape::of(mesh.master_metrics_addr()).await;
        let node = mesh.agent_name(i);
        assert_eq!(after.get(&calls(node, "ok")) - before.get(&calls(node, "ok")), 1.0, "the write to {node}");
    }

    // 1. One search: every layer counts it once.
    let master_before = Scrape::of(mesh.master_metrics_addr()).await;
    let mut agents_before = Vec::new();
    for i in 0..3 {
        agents_before.push(Scrape::of(mesh.agent_metrics_addr(i)).await);
    }
    let response = mesh.search(v1::SearchRequest { query: "mesh".into(), limit: 20, ..Default::default() }).await;
    assert_eq!(response.hits.len(), 12);
    let master = Scrape::of(mesh.master_metrics_addr()).await;
    let started = r#"grpc_server_started_total{grpc_service="ragmesh.v1.MasterService",grpc_method="Search"}"#;
    assert_eq!(master.get(started) - master_before.get(started), 1.0);
    assert_eq!(master.get(&search_ok("OK")) - master_before.get(&search_ok("OK")), 1.0);
    let histogram =
        r#"grpc_server_handling_seconds_count{grpc_service="ragmesh.v1.MasterService",grpc_method="Search"}"#;
    assert_eq!(master.get(histogram) - master_before.get(histogram), 1.0);
    let asked = "ragmesh_search_groups_asked_total";
    let answered = "ragmesh_search_groups_answered_total";
    assert_eq!(master.get(asked) - master_before.get(asked), 3.0, "three groups asked");
    assert_eq!(master.get(answered) - master_before.get(answered), 3.0, "three groups answered");
    for i in 0..3 {
        let node = mesh.agent_name(i);
        assert_eq!(master.get(&calls(node, "ok")) - master_before.get(&calls(node, "ok")), 1.0, "{node}");
        let latency = format!(r#"ragmesh_node_client_call_seconds_count{{node="{node}"}}"#);
        assert_eq!(master.get(&latency) - master_before.get(&latency), 1.0, "{node}");
        assert_eq!(master.must(&node_state(node, "up")), 1.0);
        assert_eq!(master.must(&node_state(node, "down")), 0.0);
        assert_eq!(master.must(&format!(r#"ragmesh_breaker_state{{node="{node}"}}"#)), 0.0, "closed");
        let lag = master.must(&format!(r#"ragmesh_membership_heartbeat_lag_seconds{{node="{node}"}}"#));
        assert!((0.0..10.0).contains(&lag), "{node}: heartbeat lag {lag} s");

        let agent = Scrape::of(mesh.agent_metrics_addr(i)).await;
        let node_search = r#"grpc_server_handled_total{grpc_service="ragmesh.v1.AgentService",grpc_method="NodeSearch",grpc_code="OK"}"#;
        assert_eq!(agent.get(node_search) - agents_before[i].get(node_search), 1.0, "{node}");
        assert_eq!(agent.must("ragmesh_index_documents"), 4.0, "{node}");
        assert_eq!(agent.must("ragmesh_index_generation"), generations[i] as f64, "{node}");
        let segments = agent.must("ragmesh_index_segments");
        assert!((1.0..=4.0).contains(&segments), "{node}: 4 documents written in at most 4 segments, not {segments}");
        let expiry = agent.must("ragmesh_tls_certificate_expiry_seconds");
        assert!(expiry > 86_400.0, "{node}: the test certificate is valid for days, not {expiry} s");
        if let Some(promtool) = &promtool {
            promtool_check(promtool, &format!("{node} /metrics"), &agent.text);
        }
    }
    assert!(master.must("ragmesh_tls_certificate_expiry_seconds") > 86_400.0);

    // 2. agent-3 dies with the search in flight: the search reports it unavailable, and so do
    // the metrics; then the master marks it down.
    let victim = 2;
    let name = mesh.agent_name(victim).to_owned();
    let before = Scrape::of(mesh.master_metrics_addr()).await;
    let thaw = mesh.freeze_agent(victim);
    let mut client = mesh.client().await;
    let search = tokio::spawn(async move {
        client
            .search(v1::SearchRequest { query: "mesh".into(), limit: 20, timeout_ms: 20_000, ..Default::default() })
            .await
    });
    // Only decides whether the call is cut mid-flight or refused at connect: both are
    // `unavailable`, so the sleep cannot make the test pass.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::block_in_place(|| mesh.kill_frozen_agent(victim, thaw));
    let response = search.await.expect("search task").expect("the others answered").into_inner();
    assert_eq!(outcome_of(&response, &name).status(), OutcomeStatus::Unavailable, "{response:?}");
    mesh.wait_state(&name, NodeState::Down, Duration::from_secs(15)).await;
    let after = Scrape::of(mesh.master_metrics_addr()).await;
    assert_eq!(after.get(&calls(&name, "unavailable")) - before.get(&calls(&name, "unavailable")), 1.0);
    assert_eq!(after.get(&calls(&name, "ok")) - before.get(&calls(&name, "ok")), 0.0);
    assert_eq!(after.get(answered) - before.get(answered), 2.0, "two of three groups answered");
    assert_eq!(after.get(asked) - before.get(asked), 3.0);
    assert_eq!(after.must(&node_state(&name, "down")), 1.0);
    assert_eq!(after.must(&node_state(&name, "up")), 0.0);
    // A search now skips it (down): no call, no new outcome.
    let response = mesh.search(v1::SearchRequest { query: "mesh".into(), limit: 20, ..Default::default() }).await;
    assert_outcomes(
        &response,
        &[
            (mesh.agent_name(0), Expect::Ok { generation: generations[0], hits: 4 }),
            (mesh.agent_name(1), Expect::Ok { generation: generations[1], hits: 4 }),
            (&name, Expect::Skipped(v1::SkipReason::Down)),
        ],
    );
    let skipped = Scrape::of(mesh.master_metrics_addr()).await;
    assert_eq!(skipped.get(&calls(&name, "unavailable")), after.get(&calls(&name, "unavailable")));
    assert_eq!(skipped.get(asked) - after.get(asked), 2.0, "a down group is not asked");

    // 3. Rate-limited calls: refusals counted by the limiter and as RESOURCE_EXHAUSTED.
    let token = mesh.issue_token("alice", "acme", &["search"]).await.access_token;
    let client = mesh.client_with_token(&token).await;
    let mut calls_made = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let mut client = client.clone();
        calls_made
            .spawn(async move { client.search(v1::SearchRequest { query: "x".into(), ..Default::default() }).await });
    }
    let mut refused = 0.0;
    while let Some(outcome) = calls_made.join_next().await {
        if let Err(status) = outcome.expect("task") {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            refused += 1.0;
        }
    }
    assert!(refused >= 1.0, "40 calls at once exceed a burst of 10");
    let limited = Scrape::of(mesh.master_metrics_addr()).await;
    let refusals = "ragmesh_rate_limit_refusals_total";
    assert_eq!(limited.get(refusals) - skipped.get(refusals), refused);
    let exhausted = search_ok("RESOURCE_EXHAUSTED");
    assert_eq!(limited.get(&exhausted) - skipped.get(&exhausted), refused, "the refusal is in the gRPC series too");
    println!("rate limited: {refused} of 40 refused, counted in both series");
    assert!(!limited.text.contains("alice") && !limited.text.contains("acme"), "no subject or tenant in a label");
    assert!(!limited.text.contains("mesh\""), "no query in a label");
    if let Some(promtool) = &promtool {
        promtool_check(promtool, "master /metrics", &limited.text);
    }

    // 4. Evicting the dead agent drops its series; the others keep theirs.
    assert!(limited.text.contains(&format!("node=\"{name}\"")), "the dead agent still has series before eviction");
    mesh.auth_client()
        .await
        .evict_node(v1::EvictNodeRequest { name: name.clone() })
        .await
        .expect("an operator may evict a node");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let evicted = loop {
        let scrape = Scrape::of(mesh.master_metrics_addr()).await;
        if !scrape.text.contains(&format!("node=\"{name}\"")) {
            break scrape;
        }
        assert!(std::time::Instant::now() < deadline, "series of evicted {name} still exported:\n{}", scrape.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kept = mesh.agent_name(0);
    assert_eq!(evicted.get(&calls(kept, "ok")), limited.get(&calls(kept, "ok")), "the others' counters stay");
    assert_eq!(evicted.must(&node_state(kept, "up")), 1.0);
    mesh.shutdown().await;
}

/// Where `ragmeshctl` is: beside the daemons ([`ragmesh_e2e::daemons::bin_dir`]).
fn ragmeshctl() -> std::path::PathBuf {
    let path = ragmesh_e2e::daemons::bin_dir().join("ragmeshctl");
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ragmeshctl_top_once_shows_every_node_with_its_traffic_breaker_and_heartbeat() {
    trace_init();
    let mesh = Mesh::builder().agents(3).rate_limit(1_000_000, 1_000_000).start().await;
    for i in 0..3 {
        mesh.ingest(i, docs_for(i, 2)).await;
    }
    // The harness issues the client certificate anew for each client: make the load's client
    // first, so the files top reads stay as they are while it runs.
    let client = mesh.client().await;
    let tls = mesh.client_tls();
    let mut command = tokio::process::Command::new(ragmeshctl());
    command
        .arg("--master")
        .arg(mesh.master_addr().to_string())
        .arg("--ca")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key)
        .args(["top", "--once", "--interval-ms", "1500", "--metrics"])
        .arg(mesh.master_metrics_addr().to_string())
        .env_remove("RAGMESH_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let top = command.spawn().expect("ragmeshctl top runs");
    // Traffic inside top's window: searches until it has printed.
    let load = tokio::spawn(async move {
        let mut searches = 0u32;
        for _ in 0..10_000 {
            let mut client = client.clone();
            let request = v1::SearchRequest { query: "mesh".into(), ..Default::default() };
            client.search(request).await.expect("search");
            searches += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        searches
    });
    let output = tokio::time::timeout(Duration::from_secs(60), top.wait_with_output())
        .await
        .expect("top --once ends within 60 s")
        .expect("top output");
    load.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "top failed: {stderr}\n{stdout}");
    println!("{stdout}");
    assert!(!stdout.contains('\x1b'), "stdout is not a terminal: plain text only");
    let header = stdout.lines().find(|l| l.starts_with("NODE")).expect("a table");
    for column in ["STATE", "REQ/S", "P50", "P99", "ERR/S", "BREAKER", "HB LAG"] {
        assert!(header.contains(column), "{column}: {header}");
    }
    for i in 0..3 {
        let name = mesh.agent_name(i);
        let line = stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {stdout}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        // NODE STATE REQ/S P50 ms P99 ms ERR/S BREAKER LAG
        assert_eq!(cells[1], "up", "{line}");
        let rps: f64 = cells[2].parse().unwrap_or_else(|_| panic!("REQ/S in {line}"));
        assert!(rps > 0.0, "{name} served searches during the window: {line}");
        assert!(cells[3].parse::<f64>().is_ok() && cells[4] == "ms", "p50 in {line}");
        assert_eq!(cells[7], "0.0", "no errors: {line}");
        assert_eq!(cells[8], "closed", "{line}");
        let lag: f64 = cells[9].trim_end_matches('s').parse().unwrap_or_else(|_| panic!("lag in {line}"));
        assert!(lag < 10.0, "{line}");
    }
    mesh.shutdown().await;
}
