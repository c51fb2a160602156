//! The sequencer and followers against real tonic `AgentService` servers over TCP that apply
//! entries in order and refuse gaps exactly as the agent contract says.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragmesh_auth::Capability;
use ragmesh_config::{AccessConfig, ReplicationConfig, WriteQuorum};
use ragmesh_proto::v1::{self, agent_service_server::AgentService, agent_service_server::AgentServiceServer};
use ragmesh_stack::node_client::ClientConfig;
use ragmesh_stack::node_health::{HealthBook, HealthConfig};
use ragmesh_store::{SledStore, StateStore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use super::log::{Write, WriteLog, Writer};
use super::{Parts, Replication, ReplicationError, WriteTarget};
use crate::access::AccessControl;
use crate::node::LivenessEvent;
use crate::registry::{NodeRecord, Registry, SyncState};

/// What a test agent holds: the sequences it applied, in order, and whether each write came
/// with a signed context.
#[derive(Debug, Default)]
struct AgentState {
    applied: u64,
    applied_log: Vec<u64>,
    contexts: usize,
}

#[derive(Debug, Clone)]
struct TestAgent {
    shard: String,
    state: Arc<Mutex<AgentState>>,
}

impl TestAgent {
    fn apply(&self, position: Option<&v1::LogPosition>, has_context: bool) -> Result<(u64, bool), Status> {
        let position = position.ok_or_else(|| Status::invalid_argument("position is required"))?;
        if position.shard != self.shard {
            return Err(Status::failed_precondition(format!(
                "write for shard {} but this agent serves {}",
                position.shard, self.shard
            )));
        }
        let mut state = self.state.lock().expect("agent state");
        if position.seq <= state.applied {
            return Ok((state.applied, true));
        }
        if position.seq != state.applied + 1 {
            let mut status = Status::failed_precondition(format!(
                "entry {} follows a gap: this agent applied shard {} up to seq {}",
                position.seq, self.shard, state.applied
            ));
            let value = state.applied.to_string().parse().expect("ascii");
            status.metadata_mut().insert("x-ragmesh-applied-seq", value);
            return Err(status);
        }
        state.applied = position.seq;
        state.applied_log.push(position.seq);
        state.contexts += usize::from(has_context);
        Ok((state.applied, false))
    }
}

#[tonic::async_trait]
impl AgentService for TestAgent {
    async fn list_actions(
        &self,
        _request: tonic::Request<v1::ListActionsRequest>,
    ) -> Result<tonic::Response<v1::ListActionsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not offered by this test agent"))
    }

    async fn run_action(
        &self,
        _request: tonic::Request<v1::RunActionRequest>,
    ) -> Result<tonic::Response<v1::RunActionResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not offered by this test agent"))
    }

    async fn prepare_transaction(
        &self,
        _request: tonic::Request<v1::PrepareTransactionRequest>,
    ) -> Result<tonic::Response<v1::PrepareTransactionResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not offered by this test agent"))
    }

    async fn decide_transaction(
        &self,
        _request: tonic::Request<v1::DecideTransactionRequest>,
    ) -> Result<tonic::Response<v1::DecideTransactionResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not offered by this test agent"))
    }

    async fn upsert_documents(
        &self,
        request: Request<v1::UpsertDocumentsRequest>,
    ) -> Result<Response<v1::UpsertDocumentsResponse>, Status> {
        let has_context = request.metadata().contains_key(crate::access::CONTEXT_METADATA);
        let (applied_seq, already_applied) = self.apply(request.get_ref().position.as_ref(), has_context)?;
        Ok(Response::new(v1::UpsertDocumentsResponse {
            upserted: u32::try_from(request.get_ref().documents.len()).expect("small"),
            generation: applied_seq,
            applied_seq,
            already_applied,
            ..Default::default()
        }))
    }

    async fn delete_documents(
        &self,
        request: Request<v1::DeleteDocumentsRequest>,
    ) -> Result<Response<v1::DeleteDocumentsResponse>, Status> {
        let has_context = request.metadata().contains_key(crate::access::CONTEXT_METADATA);
        let (applied_seq, already_applied) = self.apply(request.get_ref().position.as_ref(), has_context)?;
        Ok(Response::new(v1::DeleteDocumentsResponse {
            generation: applied_seq,
            applied_seq,
            already_applied,
            ..Default::default()
        }))
    }

    async fn node_term_statistics(
        &self,
        _request: Request<v1::NodeTermStatisticsRequest>,
    ) -> Result<Response<v1::NodeTermStatisticsResponse>, Status> {
        Err(Status::unimplemented("writes only"))
    }

    async fn node_search(
        &self,
        _request: Request<v1::NodeSearchRequest>,
    ) -> Result<Response<v1::NodeSearchResponse>, Status> {
        Err(Status::unimplemented("writes only"))
    }
}

/// Serves `agent` on a fresh loopback port until the handle is aborted (a killed agent).
async fn serve(agent: TestAgent) -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(agent))
            .serve_with_incoming(incoming)
            .await;
    });
    (address, task)
}

struct Mesh {
    _dir: tempfile::TempDir,
    registry: Registry,
    replication: Replication,
    agents: BTreeMap<String, TestAgent>,
    servers: BTreeMap<String, JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Mesh {
    /// Replicas `names` of group "g", each served and registered.
    async fn start(names: &[&str], config: ReplicationConfig) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn StateStore> = Arc::new(SledStore::open_waiting(dir.path()).expect("open"));
        let registry = Registry::load(store.clone()).expect("registry");
        let log = WriteLog::open(store.clone()).expect("log");
        let access = Arc::new(AccessControl::load(store, AccessConfig::default(), false).expect("access"));
        let shutdown = CancellationToken::new();
        // The master's own node client (breaker, balancing), fed by the registry as in start().
        let clients = crate::clients::NodeClients::new(None);
        let health = HealthBook::new(HealthConfig::default(), None);
        let (directory, client) = crate::directory::node_client(&clients, health.clone(), ClientConfig::default());
        tokio::spawn(crate::directory::follow(registry.subscribe(), clients, health, directory, shutdown.clone()));
        let parts = Parts {
            registry: registry.clone(),
            log,
            client,
            access,
            config,
            send_timeout: Duration::from_secs(5),
            metrics: crate::metrics::MasterMetrics::detached(),
            shutdown: shutdown.clone(),
            tasks: TaskTracker::new(),
        };
        let replication = Replication::start(parts);
        let mut mesh =
            Mesh { _dir: dir, registry, replication, agents: BTreeMap::new(), servers: BTreeMap::new(), shutdown };
        for name in names {
            let agent = TestAgent { shard: "g".into(), state: Arc::default() };
            mesh.agents.insert((*name).to_owned(), agent);
            mesh.bring_up(name).await;
        }
        mesh
    }

    /// (Re)starts `name`'s server and registers it with what it applied.
    async fn bring_up(&mut self, name: &str) {
        let agent = self.agents[name].clone();
        let applied = agent.state.lock().expect("state").applied;
        let (address, task) = serve(agent).await;
        self.servers.insert(name.to_owned(), task);
        let record = NodeRecord { address, shard: "g".into(), ..NodeRecord::for_tests(name, &[]) };
        self.registry.register_at(record, applied).expect("register");
    }

    /// Kills `name`'s server and marks it down, as its health stream ending would.
    fn kill(&mut self, name: &str) {
        self.servers.remove(name).expect("running").abort();
        let session = self.registry.session(name).expect("session");
        self.registry.apply(name, LivenessEvent::StreamEnded(session), "killed by the test");
    }

    async fn write(&self, id: &str, within: Duration) -> Result<super::WriteOutcome, ReplicationError> {
        let writer = Writer { subject: "alice".into(), tenant: "acme".into(), capabilities: vec![Capability::Ingest] };
        let write = Write::Upsert(v1::UpsertDocumentsRequest {
            documents: vec![v1::Document { id: id.into(), collection: "docs".into(), ..Default::default() }],
            position: None,
        });
        self.replication.write(WriteTarget::Shard("g".into()), writer, write, Instant::now() + within).await
    }

    fn applied_log(&self, name: &str) -> Vec<u64> {
        self.agents[name].state.lock().expect("state").applied_log.clone()
    }

    /// Waits (bounded) until `name` is in the given sync state with the given applied sequence.
    async fn wait_for(&self, name: &str, applied: u64, in_sync: bool) {
        let mut membership = self.registry.subscribe();
        let reached = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let done = membership
                    .borrow_and_update()
                    .get(name)
                    .is_some_and(|v| v.applied_seq == applied && v.sync.is_in_sync() == in_sync);
                if done {
                    return;
                }
                membership.changed().await.expect("registry alive");
            }
        })
        .await;
        let view = self.registry.get(name);
        assert!(reached.is_ok(), "{name} did not reach applied {applied} (in sync: {in_sync}): {view:?}");
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for server in self.servers.values() {
            server.abort();
        }
    }
}

fn config(quorum: WriteQuorum) -> ReplicationConfig {
    ReplicationConfig { write_quorum: quorum, ..ReplicationConfig::default() }
}

#[tokio::test]
async fn majority_acknowledges_with_one_replica_down_and_it_catches_up_in_order_when_back() {
    let mut mesh = Mesh::start(&["a", "b", "c"], config(WriteQuorum::Majority)).await;
    let first = mesh.write("d1", Duration::from_secs(10)).await.expect("all three up");
    assert_eq!((first.shard.as_str(), first.seq), ("g", 1));
    mesh.kill("c");
    for i in 2..=6 {
        let outcome = mesh.write(&format!("d{i}"), Duration::from_secs(10)).await.expect("a majority is up");
        assert_eq!(outcome.seq, i);
        let applied: Vec<&str> = outcome.replicas.iter().filter(|r| r.applied).map(|r| r.node.as_str()).collect();
        assert!(applied.len() >= 2 && !applied.contains(&"c"), "{outcome:?}");
        let c = outcome.replicas.iter().find(|r| r.node == "c").expect("c reported");
        assert!(c.message.contains("down"), "{c:?}");
    }
    mesh.wait_for("a", 6, true).await;
    mesh.wait_for("b", 6, true).await;
    let c = mesh.registry.get("c").expect("c");
    assert_eq!(c.sync, SyncState::CatchingUp, "c missed acknowledged writes the log still holds");

    mesh.bring_up("c").await;
    mesh.wait_for("c", 6, true).await;
    for name in ["a", "b", "c"] {
        assert_eq!(mesh.applied_log(name), (1..=6).collect::<Vec<_>>(), "{name}: in order, none twice");
        assert_eq!(mesh.agents[name].state.lock().expect("state").contexts, 6, "{name}: every entry signed");
    }
    // The follower that brought c up to date trims what every replica now holds.
    let mut membership = mesh.registry.subscribe();
    let trimmed = tokio::time::timeout(Duration::from_secs(10), async {
        while mesh.registry.group_log("g").entries != 0 {
            membership.changed().await.expect("registry alive");
        }
    })
    .await;
    let log = mesh.registry.group_log("g");
    assert!(trimmed.is_ok(), "log not trimmed: {log:?}");
    assert_eq!((log.last_seq, log.committed_seq, log.first_seq), (6, 6, 7), "applied everywhere: trimmed");
}

#[tokio::test]
async fn quorum_all_does_not_acknowledge_with_a_replica_down_and_says_why() {
    let mut mesh = Mesh::start(&["a", "b", "c"], config(WriteQuorum::All)).await;
    mesh.kill("c");
    let err = mesh.write("d1", Duration::from_millis(500)).await.expect_err("c is down");
    let ReplicationError::QuorumNotReached { seq, applied, needed, .. } = &err else { panic!("{err:?}") };
    assert_eq!((*seq, *applied, *needed), (1, 2, 3));
    let message = err.to_string();
    for needle in ["quorum all needs 3", "applied by: a, b", "not yet: c (node is down", "IS in the group's log"] {
        assert!(message.contains(needle), "{needle:?} missing from {message}");
    }
    assert_eq!(mesh.registry.group_log("g").committed_seq, 0, "an unacknowledged write is not committed");
    assert_eq!(mesh.registry.get("a").expect("a").sync, SyncState::InSync);

    // The write was logged: c gets it when it is back, and the next write is acknowledged.
    mesh.bring_up("c").await;
    mesh.wait_for("c", 1, true).await;
    let outcome = mesh.write("d2", Duration::from_secs(10)).await.expect("all three up");
    assert_eq!(outcome.seq, 2);
    assert!(outcome.replicas.iter().all(|r| r.applied && r.applied_seq >= 2), "{outcome:?}");
    assert_eq!(mesh.applied_log("c"), vec![1, 2]);
}

#[tokio::test]
async fn a_replica_behind_the_trimmed_log_is_stale_with_an_operator_action() {
    let bounded = ReplicationConfig { write_log_max_entries: 2, ..config(WriteQuorum::Majority) };
    let mut mesh = Mesh::start(&["a", "b", "c"], bounded).await;
    mesh.kill("c");
    for i in 1..=5 {
        mesh.write(&format!("d{i}"), Duration::from_secs(10)).await.expect("majority");
    }
    let log = mesh.registry.group_log("g");
    assert_eq!((log.first_seq, log.last_seq, log.entries), (4, 5, 2), "bounded to 2 entries");
    let c = mesh.registry.get("c").expect("c");
    let SyncState::Stale { message } = &c.sync else { panic!("c should be stale: {c:?}") };
    assert!(message.contains("replica c applied up to 0 but the log of group g now starts at 4"), "{message}");
    assert!(message.contains("copy of in-sync replica a's"), "{message}");

    // Back, it is still stale and is sent nothing (a gap cannot be closed from the log).
    mesh.bring_up("c").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(mesh.applied_log("c").is_empty());
    assert!(matches!(mesh.registry.get("c").expect("c").sync, SyncState::Stale { .. }));
}

#[tokio::test]
async fn unknown_groups_and_nodes_are_not_found_with_the_known_ones_listed() {
    let mesh = Mesh::start(&["a"], config(WriteQuorum::Majority)).await;
    let writer = Writer { subject: "s".into(), tenant: "t".into(), capabilities: vec![Capability::Ingest] };
    let write = Write::Delete(v1::DeleteDocumentsRequest::default());
    let deadline = Instant::now() + Duration::from_secs(5);
    let target = WriteTarget::Shard("nope".into());
    let err = mesh.replication.write(target, writer.clone(), write.clone(), deadline).await.expect_err("unknown");
    assert!(err.to_string().contains("unknown shard group \"nope\": groups are g"), "{err}");
    let target = WriteTarget::Node("ghost".into());
    let err = mesh.replication.write(target, writer.clone(), write.clone(), deadline).await.expect_err("unknown");
    assert!(err.to_string().contains("unknown node \"ghost\""), "{err}");
    let outcome = mesh.replication.write(WriteTarget::Node("a".into()), writer, write, deadline).await.expect("ok");
    assert_eq!((outcome.shard.as_str(), outcome.seq), ("g", 1), "a node names its group");
}
