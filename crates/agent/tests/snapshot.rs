//! `index.snapshot` and `index.restore` over gRPC on a real agent (plaintext, on loopback)
//! attached to a stand-in master (a real tonic MembershipService that hands out verification
//! keys and records registrations), called with contexts signed as the master signs them:
//! ingest, snapshot, ingest more, restore, and the search shows the snapshot's documents.

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use clap::Parser as _;
use ragmesh_agent::AgentHandle;
use ragmesh_agent::service::{CONTEXT_METADATA, MASTER_ISSUER};
use ragmesh_auth::{Capability, KeyRing, KeyRingConfig, Principal, unix_now};
use ragmesh_config::AgentArgs;
use ragmesh_proto::v1::membership_service_server::{MembershipService, MembershipServiceServer};
use ragmesh_proto::v1::{self, agent_service_client::AgentServiceClient};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
struct StandInMaster {
    keys: Vec<v1::VerificationKey>,
    heartbeats: mpsc::UnboundedSender<v1::HealthStreamRequest>,
    registrations: mpsc::UnboundedSender<v1::RegisterRequest>,
    /// Messages sent down every open health stream (none in these tests).
    down: broadcast::Sender<v1::HealthStreamResponse>,
}

type Responses = Pin<Box<dyn Stream<Item = Result<v1::HealthStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MembershipService for StandInMaster {
    async fn register(&self, request: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let _ = self.registrations.send(request.into_inner());
        Ok(Response::new(v1::RegisterResponse {
            session_id: "session-1".into(),
            heartbeat_interval_ms: 50,
            master_version: "stand-in".into(),
            protocol_major: ragmesh_proto::PROTOCOL_MAJOR,
            protocol_minor: ragmesh_proto::PROTOCOL_MINOR,
            verification_keys: self.keys.clone(),
        }))
    }

    type HealthStreamStream = Responses;

    async fn health_stream(
        &self,
        request: Request<Streaming<v1::HealthStreamRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let mut inbound = request.into_inner();
        let heartbeats = self.heartbeats.clone();
        let mut down = self.down.subscribe();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = inbound.message() => {
                        let Ok(Some(message)) = message else { return };
                        let Some(heartbeat) = message.heartbeat.clone() else { continue };
                        let _ = heartbeats.send(message);
                        let body = Some(v1::health_stream_response::Body::Ack(v1::HeartbeatAck { seq: heartbeat.seq }));
                        if tx.send(Ok(v1::HealthStreamResponse { body })).await.is_err() {
                            return;
                        }
                    }
                    Ok(message) = down.recv() => {
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Master {
    addr: String,
    ring: KeyRing,
    registrations: mpsc::UnboundedReceiver<v1::RegisterRequest>,
    stop: CancellationToken,
}

impl Drop for Master {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Master {
    async fn start() -> Master {
        let ring = KeyRing::generate(KeyRingConfig::new(MASTER_ISSUER, "ragmesh"), unix_now()).expect("key ring");
        let keys = ring.public_keys(unix_now()).iter().map(ragmesh_auth::PublicKey::to_wire).collect();
        // Heartbeats are not examined here: their receiver is dropped, sends are ignored.
        let (heartbeats_tx, _) = mpsc::unbounded_channel();
        let (registrations_tx, registrations) = mpsc::unbounded_channel();
        let (down, _) = broadcast::channel(16);
        let service =
            StandInMaster { keys, heartbeats: heartbeats_tx, registrations: registrations_tx, down: down.clone() };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the stand-in master");
        let addr = listener.local_addr().expect("local addr").to_string();
        let stop = CancellationToken::new();
        let serving = stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MembershipServiceServer::new(service))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), serving.cancelled_owned()),
        );
        Master { addr, ring, registrations, stop }
    }

    /// A context signed as the master signs the ones it attaches to agent calls.
    fn context(&self, tenant: &str, capabilities: &[Capability]) -> String {
        let now = unix_now();
        let principal = Principal {
            subject: format!("{tenant}-user"),
            tenant: tenant.into(),
            capabilities: capabilities.iter().copied().collect(),
            token_id: "test".into(),
            expires_at: now + 600,
            issued_at: now,
        };
        self.ring.sign_context(&principal, Duration::from_secs(300), now).expect("sign context").into_string()
    }

    fn operator(&self) -> String {
        self.context("ops", &[Capability::Actions, Capability::Admin, Capability::Search, Capability::Ingest])
    }
}

async fn start_agent(master: &str, data_dir: &Path) -> AgentHandle {
    let args = AgentArgs::try_parse_from([
        "ragmesh-agent",
        "--insecure",
        "--name",
        "agent-a",
        "--listen",
        "127.0.0.1:0",
        "--master",
        master,
        "--data-dir",
        data_dir.to_str().expect("utf-8"),
        "--heartbeat-interval-ms",
        "50",
    ])
    .expect("parse");
    let config = args.resolve().expect("valid config");
    let listener = TcpListener::bind(config.listen).await.expect("bind");
    let agent = ragmesh_agent::start(config, listener).await.expect("agent starts");
    let mut status = agent.link_status();
    let attached = status.wait_for(|s| matches!(s, ragmesh_agent::LinkStatus::Attached { .. }));
    tokio::time::timeout(WAIT, attached).await.expect("attached in time").expect("link status");
    agent
}

async fn client(agent: &AgentHandle) -> AgentServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", agent.local_addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the agent");
    AgentServiceClient::new(channel)
}

fn signed<T>(message: T, context: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(CONTEXT_METADATA, context.parse().expect("ascii token"));
    request
}

fn run(action: &str, args: &[(&str, &str)]) -> v1::RunActionRequest {
    v1::RunActionRequest {
        call: Some(v1::ActionCall {
            action: action.into(),
            arguments: args.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }),
        call_id: String::new(),
    }
}

/// The write-log entry `seq` of this agent's group (its name: no --shard) upserting `docs`.
fn entry(seq: u64, docs: Vec<v1::Document>) -> v1::UpsertDocumentsRequest {
    v1::UpsertDocumentsRequest { documents: docs, position: Some(v1::LogPosition { shard: "agent-a".into(), seq }) }
}

fn doc(id: &str, tenants: &[&str]) -> v1::Document {
    v1::Document {
        id: id.into(),
        collection: "notes".into(),
        title: format!("note {id}"),
        body: "snapshot words".into(),
        acl: Some(v1::DocumentAcl {
            public: false,
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            subjects: Vec::new(),
        }),
        ..Default::default()
    }
}

async fn visible(client: &mut AgentServiceClient<Channel>, context: &str) -> (Vec<String>, u64) {
    let search = v1::NodeSearchRequest { query: "snapshot".into(), limit: 20, ..Default::default() };
    let found = client.node_search(signed(search, context)).await.expect("search").into_inner();
    let mut ids: Vec<String> = found.hits.into_iter().map(|hit| hit.doc_id).collect();
    ids.sort();
    (ids, found.generation)
}

/// Runs a built-in and returns its result (status, output, message).
async fn action(
    client: &mut AgentServiceClient<Channel>,
    context: &str,
    name: &str,
    args: &[(&str, &str)],
) -> v1::ActionResult {
    let response = client.run_action(signed(run(name, args), context)).await.expect("RunAction answers");
    response.into_inner().result.expect("a result")
}

#[tokio::test]
async fn ingest_snapshot_ingest_more_restore_and_search_shows_the_snapshots_documents() {
    let mut master = Master::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let agent = start_agent(&master.addr, &data).await;
    let mut client = client(&agent).await;
    let operator = master.operator();
    let acme = master.context("acme", &[Capability::Ingest, Capability::Search, Capability::Actions]);

    // Discovery: both built-ins are listed with their schema, operators only.
    let listed = client.list_actions(signed(v1::ListActionsRequest::default(), &operator)).await.expect("list");
    let listed = listed.into_inner().actions;
    for name in ["index.snapshot", "index.restore"] {
        let found = listed.iter().find(|a| a.name == name).unwrap_or_else(|| panic!("{name} listed: {listed:?}"));
        assert!(found.builtin && found.tenants.is_empty() && found.capability == "actions", "{found:?}");
        assert!(found.arguments.iter().any(|arg| arg.name == "name" && arg.required), "{found:?}");
    }

    client.upsert_documents(signed(entry(1, vec![doc("a", &["acme"]), doc("b", &["acme"])]), &acme)).await.expect("1");
    let (ids, generation) = visible(&mut client, &acme).await;
    assert_eq!((ids.as_slice(), generation), (["a".to_owned(), "b".to_owned()].as_slice(), 1));

    let written = action(&mut client, &operator, "index.snapshot", &[("name", "before")]).await;
    assert_eq!(written.status, v1::ActionStatus::Ok as i32, "{written:?}");
    let snapshot_file = data.join("snapshots").join("before.snap");
    let output = &written.steps[0].stdout;
    assert!(output.contains(&format!("path={}", snapshot_file.display())), "{output}");
    assert!(output.contains("documents=2") && output.contains("applied=agent-a:1"), "{output}");
    assert!(snapshot_file.is_file());
    let again = action(&mut client, &operator, "index.snapshot", &[("name", "before")]).await;
    assert_eq!(again.status, v1::ActionStatus::Error as i32, "an existing snapshot is kept: {again:?}");
    assert!(again.steps[0].message.contains("overwrite=true"), "{again:?}");

    // Refused before running: a path instead of a name, and a tenant's token (operators only).
    let escape = client.run_action(signed(run("index.snapshot", &[("name", "../escape")]), &operator)).await;
    assert_eq!(escape.expect_err("a path is not a name").code(), Code::InvalidArgument);
    let tenant = client.run_action(signed(run("index.restore", &[("name", "before")]), &acme)).await;
    assert_eq!(tenant.expect_err("operators only").code(), Code::PermissionDenied);

    client.upsert_documents(signed(entry(2, vec![doc("c", &["acme"])]), &acme)).await.expect("2");
    let delete = v1::DeleteDocumentsRequest {
        refs: vec![v1::DocumentRef { collection: "notes".into(), id: "a".into() }],
        position: Some(v1::LogPosition { shard: "agent-a".into(), seq: 3 }),
    };
    client.delete_documents(signed(delete, &acme)).await.expect("3");
    let (ids, generation) = visible(&mut client, &acme).await;
    assert_eq!((ids.as_slice(), generation), (["b".to_owned(), "c".to_owned()].as_slice(), 3));

    let checked = action(&mut client, &operator, "index.restore", &[("name", "before"), ("check_only", "true")]).await;
    assert_eq!(checked.status, v1::ActionStatus::Ok as i32, "{checked:?}");
    let output = &checked.steps[0].stdout;
    assert!(
        output.starts_with("intact: documents=2") && output.contains("applied=agent-a:1 (the index is at agent-a:3)"),
        "{output}"
    );
    assert_eq!(visible(&mut client, &acme).await.1, 3, "a check changes nothing");

    while master.registrations.try_recv().is_ok() {}
    let restored = action(&mut client, &operator, "index.restore", &[("name", "before")]).await;
    assert_eq!(restored.status, v1::ActionStatus::Ok as i32, "{restored:?}");
    let output = &restored.steps[0].stdout;
    assert!(output.contains("generation=4 (was 3"), "{output}");
    assert!(output.contains("from seq 2"), "says where the master resumes: {output}");
    let (ids, generation) = visible(&mut client, &acme).await;
    assert_eq!((ids.as_slice(), generation), (["a".to_owned(), "b".to_owned()].as_slice(), 4));
    // ACLs came back: another tenant sees none of them.
    let globex = master.context("globex", &[Capability::Search]);
    assert_eq!(visible(&mut client, &globex).await.0, Vec::<String>::new());
    // The master learns the position moved back at the re-registration that follows.
    let registration =
        tokio::time::timeout(WAIT, master.registrations.recv()).await.expect("re-registers").expect("open");
    assert_eq!((registration.applied_seq, registration.generation), (1, 4), "{registration:?}");
    // The log resumes after the snapshot: entry 2 applies again (not acknowledged as a duplicate).
    let resent = client.upsert_documents(signed(entry(2, vec![doc("c", &["acme"])]), &acme)).await.expect("2 again");
    assert!(!resent.into_inner().already_applied);

    // A damaged snapshot is refused and the index stays as it is.
    let mut bytes = std::fs::read(&snapshot_file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(data.join("snapshots").join("damaged.snap"), &bytes).expect("write");
    let damaged = action(&mut client, &operator, "index.restore", &[("name", "damaged")]).await;
    assert_eq!(damaged.status, v1::ActionStatus::Error as i32, "{damaged:?}");
    assert!(damaged.steps[0].message.contains("unusable"), "{damaged:?}");
    let (ids, generation) = visible(&mut client, &acme).await;
    assert_eq!((ids.as_slice(), generation), (["a".to_owned(), "b".to_owned(), "c".to_owned()].as_slice(), 5));
    agent.shutdown().await.expect("clean shutdown");
}
