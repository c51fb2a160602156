//! No acknowledged write is ever lost: a replica killed during a stream of acknowledged writes
//! catches up to the very same documents as its group; a master that crashes (a real
//! `ragmesh-master` process aborted by its failpoints) between the log append and the forward,
//! or after the forward, loses no write and applies none twice once restarted; and a write every
//! replica refuses is answered with the refusal and consumes its sequence.
//!
//! The crash test runs the daemon binaries built by `cargo build --workspace --bins` (from
//! `target/debug`, or `RAGMESH_BIN_DIR`); it fails, saying so, when they are missing.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ragmesh_e2e::{Agent, Mesh, external_agent_config, shard_name, trace_init, wait_for};
use ragmesh_proto::v1::{self, auth_service_client::AuthServiceClient, master_service_client::MasterServiceClient};
use ragmesh_test_util::TestPki;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

const OK: i32 = v1::OutcomeStatus::Ok as i32;
/// Collection every test document is written to.
const COLLECTION: &str = "stream";

/// `count` documents of write number `write`; every one mentions "replicated".
fn batch(write: usize, count: usize) -> Vec<v1::Document> {
    (0..count)
        .map(|j| v1::Document {
            id: format!("w{write}-{j}"),
            collection: COLLECTION.into(),
            title: format!("write {write} document {j}"),
            body: format!("replicated text of write {write}, document {j}"),
            metadata: Default::default(),
            acl: Some(v1::DocumentAcl { public: true, ..Default::default() }),
        })
        .collect()
}

/// `collection/id` of every document in `documents`.
fn ids(documents: &[v1::Document]) -> BTreeSet<String> {
    documents.iter().map(|d| format!("{}/{}", d.collection, d.id)).collect()
}

/// Searches node `name` alone for every test document; asserts that it answered (so an
/// empty or short result is what it holds) and returns `collection/id` of each hit.
async fn documents_on(client: &mut MasterServiceClient<Channel>, name: &str) -> BTreeSet<String> {
    let request = v1::SearchRequest {
        query: "replicated".into(),
        limit: 1000,
        nodes: vec![name.to_owned()],
        timeout_ms: 10_000,
        ..Default::default()
    };
    let response = client.search(request).await.unwrap_or_else(|e| panic!("search {name}: {e}")).into_inner();
    let answered: Vec<&str> = response.nodes.iter().filter(|n| n.status == OK).map(|n| n.node.as_str()).collect();
    assert_eq!(answered, [name], "only {name} answered: {:?}", response.nodes);
    assert!(response.hits.len() < 1000, "the limit did not cut the answer");
    response.hits.iter().map(|h| format!("{}/{}", h.collection, h.doc_id)).collect()
}

async fn node_info(client: &mut MasterServiceClient<Channel>, name: &str) -> v1::NodeInfo {
    let request = v1::GetNodeRequest { name: name.to_owned() };
    client.get_node(request).await.unwrap_or_else(|e| panic!("get node {name}: {e}")).into_inner().node.expect("node")
}

async fn group_info(client: &mut MasterServiceClient<Channel>, shard: &str) -> v1::ShardGroupInfo {
    let listed = client.list_nodes(v1::ListNodesRequest {}).await.expect("list nodes").into_inner();
    listed.groups.into_iter().find(|g| g.shard == shard).unwrap_or_else(|| panic!("no group {shard}"))
}

/// Waits until `name` is up, in sync and has applied exactly `seq`.
async fn wait_applied(client: &MasterServiceClient<Channel>, name: &str, seq: u64, timeout: Duration) -> Duration {
    let what = format!("{name} up, in sync at applied_seq {seq}");
    let (_, took) = wait_for(&what, timeout, || {
        let mut client = client.clone();
        async move {
            let request = v1::GetNodeRequest { name: name.to_owned() };
            let node = client.get_node(request).await.ok()?.into_inner().node?;
            let ready = node.state == v1::NodeState::Up as i32
                && node.sync == v1::SyncState::InSync as i32
                && node.applied_seq == seq;
            ready.then_some(())
        }
    })
    .await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_a_stream_of_acknowledged_writes_catches_up_identically() {
    trace_init();
    const WRITES: usize = 60;
    const PER_WRITE: usize = 2;
    const KILL_AFTER: usize = 20;
    const RESTART_AFTER: usize = 40;
    // One group of three replicas: a majority (2) still acknowledges while one is dead.
    let mut mesh = Mesh::builder().agents(3).replicas(3).start().await;
    let shard = shard_name(0);
    let victim = 1;
    let names: Vec<String> = (0..3).map(|i| mesh.agent_name(i).to_owned()).collect();

    // The writer acknowledges writes one after another and publishes how many were; it holds
    // back write RESTART_AFTER + 1 until the victim is restarted, so some writes certainly go
    // to a group whose restarted replica is still catching up.
    let (acked_tx, mut acked) = tokio::sync::watch::channel(0usize);
    let (restarted_tx, restarted) = tokio::sync::oneshot::channel::<()>();
    let mut client = mesh.client().await;
    let writer_shard = shard.clone();
    let writer = tokio::spawn(async move {
        let mut restarted = Some(restarted);
        let mut written = Vec::new();
        for n in 1..=WRITES {
            if n == RESTART_AFTER + 1 {
                restarted.take().expect("once").await.expect("the test restarts the replica");
            }
            let request = v1::IngestDocumentsRequest {
                shard: writer_shard.clone(),
                documents: batch(n, PER_WRITE),
                node: String::new(),
            };
            let sent = Instant::now();
            let response = match client.ingest_documents(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => return Err(format!("write {n} was not acknowledged: {status:?}")),
            };
            written.push((response, sent.elapsed()));
            acked_tx.send_replace(n);
        }
        Ok(written)
    });

    acked.wait_for(|n| *n >= KILL_AFTER).await.expect("writer runs");
    let killed_at = Instant::now();
    mesh.kill_agent(victim);
    let at_kill = *acked.borrow();
    acked.wait_for(|n| *n >= RESTART_AFTER).await.expect("writer runs");
    let down_for = killed_at.elapsed();
    mesh.restart_agent(victim);
    restarted_tx.send(()).expect("writer waits");
    let (written, mut latencies): (Vec<_>, Vec<Duration>) =
        writer.await.expect("writer task").unwrap_or_else(|e| panic!("{e}")).into_iter().unzip();
    latencies.sort();
    let stream_took = killed_at.elapsed();

    // Every write was acknowledged, in order, at a quorum; those made while the victim was dead
    // were applied by the two others.
    let seqs: Vec<u64> = written.iter().map(|w| w.seq).collect();
    assert_eq!(seqs, (1..=WRITES as u64).collect::<Vec<_>>(), "one sequence per write, in order");
    for (n, write) in written.iter().enumerate() {
        assert_eq!(write.shard, shard);
        let applied: Vec<&str> = write.replicas.iter().filter(|r| r.status == OK).map(|r| r.node.as_str()).collect();
        assert!(applied.len() >= 2, "write {} acknowledged by a majority: {:?}", n + 1, write.replicas);
    }
    // Write `at_kill + 1` may have been in flight at the kill; every later one before the
    // restart was acknowledged without the dead replica.
    let while_dead = &written[at_kill + 1..RESTART_AFTER];
    let without_victim =
        while_dead.iter().filter(|w| w.replicas.iter().all(|r| r.node != names[victim] || r.status != OK)).count();
    assert!(!while_dead.is_empty(), "writes were made while the replica was dead");
    assert_eq!(without_victim, while_dead.len(), "the dead replica applied nothing: {while_dead:?}");

    let sync_started = Instant::now();
    for name in &names {
        mesh.wait_in_sync(name, Duration::from_secs(60)).await;
    }
    let caught_up_in = sync_started.elapsed();

    // The three replicas are identical, and hold every acknowledged write's documents.
    let mut client = mesh.client().await;
    let expected: BTreeSet<String> = (1..=WRITES).flat_map(|n| ids(&batch(n, PER_WRITE))).collect();
    let mut infos = Vec::new();
    for name in &names {
        infos.push(node_info(&mut client, name).await);
    }
    for info in &infos {
        assert_eq!(info.applied_seq, WRITES as u64, "{} applied every entry: {info:?}", info.name);
        assert_eq!(info.generation, infos[0].generation, "{} at the generation of {}", info.name, infos[0].name);
        assert_eq!(info.generation, WRITES as u64, "{}: each entry applied once, none twice", info.name);
        let collections: Vec<(&str, u64)> = info.collections.iter().map(|c| (c.name.as_str(), c.doc_count)).collect();
        assert_eq!(collections, [(COLLECTION, (WRITES * PER_WRITE) as u64)], "{}", info.name);
        let held = documents_on(&mut client, &info.name).await;
        assert_eq!(held, expected, "{} holds exactly every acknowledged document", info.name);
    }
    let group = group_info(&mut client, &shard).await;
    assert_eq!((group.last_seq, group.committed_seq), (WRITES as u64, WRITES as u64), "{group:?}");
    assert_eq!(group.in_sync.len(), 3, "{group:?}");
    eprintln!(
        "killed after {at_kill} acks, down {down_for:?} ({without_victim} writes acknowledged without it), \
         stream done {stream_took:?} after the kill, all in sync {caught_up_in:?} later; generation {}; \
         write latency median {:?} max {:?}",
        infos[0].generation,
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_by_every_replica_is_answered_with_the_refusal_and_consumes_its_seq() {
    trace_init();
    let mesh = Mesh::builder().agents(2).replicas(2).start().await;
    let shard = shard_name(0);
    let mut client = mesh.client().await;

    let mut invalid = batch(1, 2);
    invalid[1].collection = "bad name".into();
    let request = v1::IngestDocumentsRequest { shard: shard.clone(), documents: invalid, node: String::new() };
    let refused = client.ingest_documents(request).await.expect_err("an invalid collection is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains(&shard), "the refusal names the group: {refused:?}");
    assert!(refused.message().contains("bad name"), "and says what is wrong: {refused:?}");

    // The refused entry consumed sequence 1 and counts as applied on both replicas.
    let group = group_info(&mut client, &shard).await;
    assert_eq!((group.last_seq, group.committed_seq), (1, 1), "{group:?}");
    for i in 0..2 {
        wait_applied(&client, mesh.agent_name(i), 1, Duration::from_secs(15)).await;
    }

    let written = mesh.ingest_shard(&shard, batch(2, 3)).await;
    assert_eq!(written.seq, 2, "the next write takes the next sequence");
    let applied: Vec<&str> = written.replicas.iter().filter(|r| r.status == OK).map(|r| r.node.as_str()).collect();
    assert_eq!(applied, ["agent-1", "agent-2"], "majority of 2 is both: {:?}", written.replicas);
    let expected = ids(&batch(2, 3));
    for i in 0..2 {
        let name = mesh.agent_name(i);
        wait_applied(&client, name, 2, Duration::from_secs(15)).await;
        let info = node_info(&mut client, name).await;
        // Nothing of the refused write was written anywhere: one write, one generation.
        assert_eq!(info.generation, 1, "{info:?}");
        assert_eq!(documents_on(&mut client, name).await, expected, "{name} holds only the valid write");
    }
    let group = group_info(&mut client, &shard).await;
    assert_eq!((group.last_seq, group.committed_seq, group.in_sync.len()), (2, 2, 2), "{group:?}");
    mesh.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The master as a child process, for crash tests.

/// A `ragmesh-master` child process; killed when dropped.
struct MasterProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

/// What the crash test keeps across master restarts.
struct MasterSetup {
    bin: PathBuf,
    pki: TestPki,
    dir: tempfile::TempDir,
    starts: usize,
}

impl MasterSetup {
    /// Starts a master on `listen` (port 0 the first time; then the port it had, which the
    /// agents dial) on the same data directory, with `RAGMESH_FAILPOINT=failpoint` if given.
    /// A child process cannot inherit the test's socket (the master takes no listening file
    /// descriptor), so the port is free between two masters; another process taking it in that
    /// moment makes the restart fail loudly (the master exits saying it cannot listen).
    async fn start(&mut self, listen: SocketAddr, failpoint: Option<&str>) -> MasterProcess {
        self.starts += 1;
        let tls = self.pki.issue("master");
        let addr_file = self.dir.path().join(format!("master-{}.addr", self.starts));
        let log = self.dir.path().join(format!("master-{}.log", self.starts));
        let log_file = std::fs::File::create(&log).expect("master log file");
        // A failpoint aborts the process: no core file for it.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("ulimit -c 0; exec \"$0\" \"$@\"")
            .arg(self.bin.join("ragmesh-master"))
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--data-dir")
            .arg(self.dir.path().join("master-data"))
            .args(["--ca", &tls.ca.display().to_string()])
            .args(["--cert", &tls.cert.display().to_string()])
            .args(["--key", &tls.key.display().to_string()])
            .args(["--operators", "client", "--log", "info"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        ragmesh_test_util::daemon::without_ragmesh_env(&mut command);
        if let Some(step) = failpoint {
            command.env("RAGMESH_FAILPOINT", step);
        }
        let mut child = command.spawn().expect("start ragmesh-master");
        let started = Instant::now();
        let addr = loop {
            if let Some(status) = child.try_wait().expect("poll the master") {
                panic!("the master exited ({status}) before serving:\n{}", read(&log));
            }
            if let Some(addr) = std::fs::read_to_string(&addr_file).ok().and_then(|t| t.trim().parse().ok()) {
                break addr;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the master did not serve within 30 s:\n{}",
                read(&log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        MasterProcess { child, addr, log }
    }

    /// A client of `master` as the `client` operator, once its registry is loaded.
    async fn client(&self, master: &MasterProcess) -> MasterServiceClient<Channel> {
        let channel = self.channel(master).await;
        let client = MasterServiceClient::new(channel);
        // The master answers UNAVAILABLE until its registry is loaded.
        wait_for("the master answers ListNodes", Duration::from_secs(20), || {
            let mut client = client.clone();
            async move { client.list_nodes(v1::ListNodesRequest {}).await.ok().map(drop) }
        })
        .await;
        client
    }

    async fn channel(&self, master: &MasterProcess) -> Channel {
        let tls = self.pki.issue("client").load().expect("client TLS files");
        let endpoint = Endpoint::from_shared(format!("https://{}", master.addr))
            .expect("master URI")
            .tls_config(tls.client_config("127.0.0.1"))
            .expect("client TLS config");
        wait_for("a connection to the master", Duration::from_secs(20), || {
            let endpoint = endpoint.clone();
            async move { endpoint.connect().await.ok() }
        })
        .await
        .0
    }

    async fn join_token(&self, master: &MasterProcess) -> String {
        let mut auth = AuthServiceClient::new(self.channel(master).await);
        let request = v1::CreateJoinTokenRequest { ttl_seconds: 3600, uses: 100, note: "crash test".into() };
        auth.create_join_token(request).await.expect("join token").into_inner().token
    }
}

impl MasterProcess {
    /// Stops it with SIGTERM and asserts it exits cleanly.
    async fn stop(mut self) {
        let pid = self.child.id().expect("master runs").to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the master did not stop within 20 s:\n{}", read(&self.log)))
            .expect("wait for the master");
        assert!(status.success(), "the master stops cleanly ({status}):\n{}", read(&self.log));
    }

    /// Waits for it to die of SIGABRT (its failpoint).
    async fn wait_aborted(mut self, step: &str) {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the master did not abort at {step} within 20 s:\n{}", read(&self.log)))
            .expect("wait for the master");
        assert_eq!(status.signal(), Some(6), "the master aborted (SIGABRT) at {step} ({status}):\n{}", read(&self.log));
        let log = read(&self.log);
        assert!(log.contains("failpoint reached"), "the abort was the failpoint {step}:\n{log}");
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Asserts that both replicas are at `seq` and generation `seq` (every entry applied once,
/// each once) and hold exactly the documents of writes `1..=seq`.
async fn assert_replicas_hold(
    client: &mut MasterServiceClient<Channel>,
    replicas: &[&str],
    seq: u64,
    per_write: usize,
) {
    let expected: BTreeSet<String> = (1..=seq as usize).flat_map(|n| ids(&batch(n, per_write))).collect();
    for name in replicas {
        let info = node_info(client, name).await;
        assert_eq!(info.applied_seq, seq, "{name}: {info:?}");
        assert_eq!(info.generation, seq, "{name} applied each of {seq} entries exactly once: {info:?}");
        assert_eq!(documents_on(client, name).await, expected, "{name} holds every write up to {seq}");
    }
}

/// Write 1 acknowledged; master stopped and restarted with the failpoint; write 2 crashes it at
/// `step`; restarted without: writes 1 and 2 are on both replicas, each applied once, and write
/// 3 is acknowledged by both.
async fn master_crash_loses_nothing(step: &str) {
    trace_init();
    const PER_WRITE: usize = 2;
    let shard = "crash-group";
    let mut setup = MasterSetup {
        bin: ragmesh_e2e::daemons::bin_dir(),
        pki: TestPki::new(),
        dir: tempfile::tempdir().expect("tempdir"),
        starts: 0,
    };
    let master = setup.start("127.0.0.1:0".parse().expect("addr"), None).await;
    let addr = master.addr;
    let mut client = setup.client(&master).await;
    let token = setup.join_token(&master).await;
    let mut agents = Vec::new();
    let mut dirs = Vec::new();
    let replicas = ["replica-1", "replica-2"];
    for name in replicas {
        let dir = tempfile::tempdir().expect("agent dir");
        let mut config = external_agent_config(&setup.pki, name, addr, &token, dir.path().to_owned());
        config.shard = Some(shard.to_owned());
        agents.push(Agent::start(config));
        dirs.push(dir);
    }
    for name in replicas {
        wait_applied(&client, name, 0, Duration::from_secs(20)).await;
    }

    let request = |n: usize| v1::IngestDocumentsRequest {
        shard: shard.to_owned(),
        documents: batch(n, PER_WRITE),
        node: String::new(),
    };
    let first = client.ingest_documents(request(1)).await.expect("write 1 acknowledged").into_inner();
    assert_eq!(first.seq, 1);
    master.stop().await;

    let master = setup.start(addr, Some(step)).await;
    let mut client = setup.client(&master).await;
    for name in replicas {
        wait_applied(&client, name, 1, Duration::from_secs(30)).await;
    }
    let crashed = client.ingest_documents(request(2)).await;
    assert!(crashed.is_err(), "write 2 is not acknowledged by a master that aborts at {step}: {crashed:?}");
    master.wait_aborted(step).await;

    let restarted_at = Instant::now();
    let master = setup.start(addr, None).await;
    let mut client = setup.client(&master).await;
    let mut recovered_in = Duration::ZERO;
    for name in replicas {
        recovered_in = recovered_in.max(wait_applied(&client, name, 2, Duration::from_secs(30)).await);
    }
    let group = group_info(&mut client, shard).await;
    assert_eq!((group.last_seq, group.committed_seq), (2, 2), "the logged write counts after a restart: {group:?}");
    assert_replicas_hold(&mut client, &replicas, 2, PER_WRITE).await;

    let third = client.ingest_documents(request(3)).await.expect("write 3 acknowledged").into_inner();
    assert_eq!(third.seq, 3, "{third:?}");
    let applied: Vec<&str> = third.replicas.iter().filter(|r| r.status == OK).map(|r| r.node.as_str()).collect();
    assert_eq!(applied, replicas, "{:?}", third.replicas);
    for name in replicas {
        wait_applied(&client, name, 3, Duration::from_secs(15)).await;
    }
    assert_replicas_hold(&mut client, &replicas, 3, PER_WRITE).await;
    eprintln!(
        "failpoint {step}: both replicas at seq 2 {recovered_in:?} after the master was ready ({:?} after its restart)",
        restarted_at.elapsed()
    );

    for agent in agents {
        agent.stop();
    }
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_crash_between_log_append_and_forward_loses_no_write_and_applies_none_twice() {
    master_crash_loses_nothing("after_log_append").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_crash_after_forward_loses_no_write_and_applies_none_twice() {
    master_crash_loses_nothing("after_forward").await;
}
