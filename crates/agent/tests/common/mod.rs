//! What the agent's integration tests share: a stand-in master (a real tonic
//! MembershipService on a loopback socket that hands out the verification keys of a key ring
//! it holds, records registrations and heartbeats, acknowledges them with the heartbeat pace a
//! test sets, and can send messages down every open health stream), contexts signed with that ring exactly as the master signs them, and a
//! plaintext client of an agent. Each test file uses what it needs.
#![allow(dead_code)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ragmesh_agent::AgentHandle;
use ragmesh_agent::service::{CONTEXT_METADATA, MASTER_ISSUER};
use ragmesh_auth::{Capability, KeyRing, KeyRingConfig, Principal, unix_now};
use ragmesh_proto::v1::membership_service_server::{MembershipService, MembershipServiceServer};
use ragmesh_proto::v1::{self, agent_service_client::AgentServiceClient};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// How long anything the tests wait for may take on a loaded machine.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
struct StandInMaster {
    keys: Vec<v1::VerificationKey>,
    heartbeats: mpsc::UnboundedSender<v1::HealthStreamRequest>,
    registrations: mpsc::UnboundedSender<v1::RegisterRequest>,
    down: broadcast::Sender<v1::HealthStreamResponse>,
    pace_ms: Arc<AtomicU32>,
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
        let pace_ms = Arc::clone(&self.pace_ms);
        let mut down = self.down.subscribe();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = inbound.message() => {
                        let Ok(Some(message)) = message else { return };
                        let Some(heartbeat) = message.heartbeat.clone() else { continue };
                        let _ = heartbeats.send(message);
                        let ack = v1::HeartbeatAck {
                            seq: heartbeat.seq,
                            heartbeat_interval_ms: pace_ms.load(Ordering::Relaxed),
                        };
                        let body = Some(v1::health_stream_response::Body::Ack(ack));
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

/// The stand-in master; stops serving when dropped.
pub(crate) struct Master {
    /// Where it listens (`--master`).
    pub(crate) addr: String,
    ring: KeyRing,
    /// Every health-stream message with a heartbeat, in order.
    pub(crate) heartbeats: mpsc::UnboundedReceiver<v1::HealthStreamRequest>,
    /// Every registration, in order.
    pub(crate) registrations: mpsc::UnboundedReceiver<v1::RegisterRequest>,
    /// Sends a message down every open health stream.
    pub(crate) down: broadcast::Sender<v1::HealthStreamResponse>,
    /// The heartbeat interval every acknowledgement carries, in ms (0, the default: none).
    pub(crate) pace_ms: Arc<AtomicU32>,
    stop: CancellationToken,
}

impl Drop for Master {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Master {
    /// Starts serving on a loopback port.
    pub(crate) async fn start() -> Master {
        let ring = KeyRing::generate(KeyRingConfig::new(MASTER_ISSUER, "ragmesh"), unix_now()).expect("key ring");
        let keys = ring.public_keys(unix_now()).iter().map(ragmesh_auth::PublicKey::to_wire).collect();
        let (heartbeats_tx, heartbeats) = mpsc::unbounded_channel();
        let (registrations_tx, registrations) = mpsc::unbounded_channel();
        let (down, _) = broadcast::channel(16);
        let pace_ms = Arc::new(AtomicU32::new(0));
        let service = StandInMaster {
            keys,
            heartbeats: heartbeats_tx,
            registrations: registrations_tx,
            down: down.clone(),
            pace_ms: Arc::clone(&pace_ms),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the stand-in master");
        let addr = listener.local_addr().expect("local addr").to_string();
        let stop = CancellationToken::new();
        let serving = stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MembershipServiceServer::new(service))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), serving.cancelled_owned()),
        );
        Master { addr, ring, heartbeats, registrations, down, pace_ms, stop }
    }

    /// A context of `{tenant}-user` signed as the master signs the ones it attaches to agent calls.
    pub(crate) fn context(&self, tenant: &str, capabilities: &[Capability]) -> String {
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

    /// An operator's context (every capability an operator uses).
    pub(crate) fn operator(&self) -> String {
        self.context("ops", &[Capability::Actions, Capability::Admin, Capability::Search, Capability::Ingest])
    }

    /// The next registration.
    pub(crate) async fn next_registration(&mut self) -> v1::RegisterRequest {
        tokio::time::timeout(WAIT, self.registrations.recv()).await.expect("registers in time").expect("open")
    }

    /// The next heartbeat message.
    pub(crate) async fn next_heartbeat(&mut self, what: &str) -> v1::HealthStreamRequest {
        tokio::time::timeout(WAIT, self.heartbeats.recv())
            .await
            .unwrap_or_else(|_| panic!("no heartbeat {what} in time"))
            .expect("open")
    }
}

/// Starts agent `name` (plaintext, loopback, its own shard group) attached to `master` and
/// waits until it is.
pub(crate) async fn start_agent(name: &str, master: &str, data_dir: &std::path::Path) -> AgentHandle {
    start_agent_with(name, master, data_dir, &[]).await
}

/// The arguments of an insecure test agent `name` of `master` keeping its data in `data_dir`,
/// heartbeating every 50 ms, plus `extra` flags (e.g. `--config FILE`, `--shard G`).
pub(crate) fn agent_args(
    name: &str,
    master: &str,
    data_dir: &std::path::Path,
    extra: &[&str],
) -> ragmesh_config::AgentArgs {
    use clap::Parser as _;
    let data_dir = data_dir.to_str().expect("utf-8");
    let mut args = vec![
        "ragmesh-agent",
        "--insecure",
        "--name",
        name,
        "--listen",
        "127.0.0.1:0",
        "--master",
        master,
        "--data-dir",
        data_dir,
        "--heartbeat-interval-ms",
        "50",
    ];
    args.extend_from_slice(extra);
    ragmesh_config::AgentArgs::try_parse_from(args).expect("parse")
}

/// [`start_agent`] with `extra` flags (e.g. `--config FILE`).
pub(crate) async fn start_agent_with(
    name: &str,
    master: &str,
    data_dir: &std::path::Path,
    extra: &[&str],
) -> AgentHandle {
    let config = agent_args(name, master, data_dir, extra).resolve().expect("valid config");
    let listener = TcpListener::bind(config.listen).await.expect("bind");
    let agent = ragmesh_agent::start(config, listener).await.expect("agent starts");
    wait_attached(&agent).await;
    agent
}

/// Waits until `agent` is attached to its master.
pub(crate) async fn wait_attached(agent: &AgentHandle) {
    let mut status = agent.link_status();
    let attached = status.wait_for(|s| matches!(s, ragmesh_agent::LinkStatus::Attached { .. }));
    tokio::time::timeout(WAIT, attached).await.expect("attached in time").expect("link status");
}

/// A plaintext client of `agent`.
pub(crate) async fn client(agent: &AgentHandle) -> AgentServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", agent.local_addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the agent");
    AgentServiceClient::new(channel)
}

/// `message` carrying the signed `context`.
pub(crate) fn signed<T>(message: T, context: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(CONTEXT_METADATA, context.parse().expect("ascii token"));
    request
}
