//! Simulated agents for scale benchmarks: many agents in one process, each with its own client
//! certificate from the mesh CA, registering with a real master over mTLS and holding a real
//! health stream that sends a heartbeat every interval, as `ragmesh-agent`'s link does
//! (crates/agent/src/link.rs: register with a join token, open the health stream with the first
//! heartbeat queued, heartbeat on a ticker, reconnect with capped backoff when anything breaks).
//!
//! Each simulated agent also serves the agent gRPC service on its own loopback listener with its
//! own certificate (the master dials a node at its advertised address and checks that the
//! certificate names the node), answering `NodeSearch` and `NodeTermStatistics` with small,
//! well-formed answers computed from the query: a load generator, not an index. Every other
//! agent RPC answers UNIMPLEMENTED.
//!
//! The link is a faithful minimal client rather than the agent's own (`ragmesh_agent`'s link is
//! private to the agent and needs a whole agent state with an index per node).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragmesh_agent::link;
use ragmesh_proto::v1::{
    self, agent_service_server::AgentService, agent_service_server::AgentServiceServer,
    membership_service_client::MembershipServiceClient,
};
use ragmesh_proto::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use ragmesh_tls::devca::IssuedCert;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// As the agent's link: how long to wait for the TCP and TLS connection to the master.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// As the agent's link: how long a registration may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The one collection every simulated agent reports, and its document count.
pub const SIM_COLLECTION: &str = "sim";
const SIM_DOCS: u64 = 3;
/// Index generation every simulated agent reports (it never changes: nothing is written).
const SIM_GENERATION: u64 = 1;
/// Most hits one simulated answer holds.
const MAX_SIM_HITS: u32 = 3;

/// What every simulated agent of a fleet is started with.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The master's address (loopback; its certificate has the 127.0.0.1 IP SAN).
    pub master: SocketAddr,
    /// The mesh CA certificate, PEM.
    pub ca_pem: String,
    /// A join token with at least one use per agent.
    pub join_token: String,
    /// The heartbeat interval the agents ask for (the agent's default is 1 s).
    pub interval: Duration,
}

/// Counters shared by every simulated agent of a fleet.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Agents registered and holding their health stream now.
    pub attached: AtomicUsize,
    /// Registrations that succeeded (a re-registration counts again).
    pub registrations: AtomicU64,
    /// Heartbeats handed to the health streams.
    pub heartbeats: AtomicU64,
    /// Acknowledgements received.
    pub acks: AtomicU64,
    /// The heartbeat interval the master most recently granted any agent, in ms.
    pub interval_ms: AtomicU64,
    /// Sessions lost or attaches that failed (each is retried with backoff).
    pub failures: AtomicU64,
    /// `NodeSearch` calls answered.
    pub searches: AtomicU64,
    /// `NodeTermStatistics` calls answered.
    pub statistics: AtomicU64,
    /// The most recent failure, for the bench's report.
    pub last_error: Mutex<Option<String>>,
}

impl SimStats {
    fn failed(&self, name: &str, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = Some(format!("{name}: {error}"));
    }

    /// The most recent failure, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// One simulated agent's identity: its name and certificate.
#[derive(Debug, Clone)]
pub struct SimIdentity {
    /// Node name (the certificate's CN and DNS SAN).
    pub name: String,
    /// Its certificate and key, signed by the mesh CA.
    pub cert: IssuedCert,
}

/// Running simulated agents; dropping the fleet stops every one of them (their tasks are
/// aborted: listeners and streams close, as when a process dies).
#[derive(Debug)]
pub struct SimFleet {
    names: Vec<String>,
    stats: Arc<SimStats>,
    tasks: JoinSet<()>,
}

impl SimFleet {
    /// Starts one simulated agent per identity, all at once: each binds its listener, then
    /// registers and holds its health stream until the fleet is dropped.
    pub fn start(config: &SimConfig, identities: Vec<SimIdentity>) -> SimFleet {
        let stats = Arc::new(SimStats::default());
        let mut tasks = JoinSet::new();
        let mut names = Vec::with_capacity(identities.len());
        for (index, identity) in identities.into_iter().enumerate() {
            names.push(identity.name.clone());
            let agent = SimAgent { index, identity, config: config.clone(), stats: Arc::clone(&stats) };
            tasks.spawn(agent.run());
        }
        SimFleet { names, stats, tasks }
    }

    /// The agents' names, in start order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The fleet's counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Agents whose task ended (it only ends on a setup error, such as a listener that cannot
    /// be bound; the error is in [`SimStats::last_error`]).
    pub fn ended(&self) -> usize {
        self.names.len() - self.tasks.len()
    }
}

struct SimAgent {
    index: usize,
    identity: SimIdentity,
    config: SimConfig,
    stats: Arc<SimStats>,
}

impl SimAgent {
    async fn run(self) {
        let name = self.identity.name.clone();
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(err) => return self.stats.failed(&name, format!("bind the agent listener: {err}")),
        };
        let advertised = match listener.local_addr() {
            Ok(addr) => addr.to_string(),
            Err(err) => return self.stats.failed(&name, format!("read the agent listener's address: {err}")),
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.identity.cert.cert_pem, &self.identity.cert.key_pem))
            .client_ca_root(Certificate::from_pem(&self.config.ca_pem))
            .client_auth_optional(false);
        let mut server = match Server::builder().tls_config(tls) {
            Ok(builder) => builder,
            Err(err) => return self.stats.failed(&name, format!("agent server tls: {err}")),
        };
        let service = SimService { name: name.clone(), stats: Arc::clone(&self.stats) };
        // Served inside this task (not spawned), so aborting the task stops the server too.
        let serve =
            server.add_service(AgentServiceServer::new(service)).serve_with_incoming(TcpListenerStream::new(listener));
        let stats = Arc::clone(&self.stats);
        let link = self.link(&advertised);
        tokio::select! {
            served = serve => {
                if let Err(err) = served {
                    stats.failed(&name, format!("agent server ended: {err}"));
                }
            }
            () = link => {}
        }
    }

    /// Registers and holds the health stream, reconnecting with backoff; never returns.
    async fn link(&self, advertised: &str) {
        let mut attempt: u32 = 0;
        loop {
            let reason = self.attach(advertised, &mut attempt).await;
            self.stats.failed(&self.identity.name, reason);
            // Full jitter as the agent's link, derived from the agent and the attempt (no RNG).
            let ceiling = BACKOFF_MIN.saturating_mul(1 << attempt.min(6)).min(BACKOFF_MAX);
            let jitter =
                0.5 + 0.5 * ((self.index.wrapping_mul(7919) + attempt as usize * 104_729) % 1000) as f64 / 1000.0;
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(ceiling.mul_f64(jitter)).await;
        }
    }

    fn heartbeat(&self, session: &str, seq: u64) -> v1::HealthStreamRequest {
        v1::HealthStreamRequest {
            node_name: self.identity.name.clone(),
            session_id: session.to_owned(),
            heartbeat: Some(v1::Heartbeat {
                seq,
                in_flight: 0,
                collections: collections(),
                generation: SIM_GENERATION,
                applied_seq: 0,
                index_bytes: 4096,
                term_summary: None,
            }),
            in_doubt_transactions: Vec::new(),
        }
    }

    /// One attach: register, then hold the health stream; returns why it ended.
    async fn attach(&self, advertised: &str, attempt: &mut u32) -> String {
        let client_tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.config.ca_pem))
            .identity(Identity::from_pem(&self.identity.cert.cert_pem, &self.identity.cert.key_pem))
            .domain_name(self.config.master.ip().to_string());
        let endpoint = match Endpoint::from_shared(format!("https://{}", self.config.master))
            .and_then(|e| e.tls_config(client_tls))
        {
            Ok(endpoint) => endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5)),
            Err(err) => return format!("master endpoint: {err}"),
        };
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(err) => return format!("connect to the master: {}", ragmesh_tls::explain_error(&err)),
        };
        let mut client = MembershipServiceClient::new(channel);
        let mut register = Request::new(v1::RegisterRequest {
            node_name: self.identity.name.clone(),
            advertised_address: advertised.to_owned(),
            version: concat!(env!("CARGO_PKG_VERSION"), "-sim").to_owned(),
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            collections: collections(),
            labels: Default::default(),
            generation: SIM_GENERATION,
            heartbeat_interval_ms: u32::try_from(self.config.interval.as_millis()).unwrap_or(u32::MAX),
            join_token: self.config.join_token.clone(),
            shard: String::new(),
            applied_seq: 0,
        });
        register.set_timeout(REGISTER_TIMEOUT);
        let registered = match client.register(register).await {
            Ok(response) => response.into_inner(),
            Err(status) => return format!("registration refused: {:?}: {}", status.code(), status.message()),
        };
        self.stats.registrations.fetch_add(1, Ordering::Relaxed);
        let mut interval = link::granted_interval(registered.heartbeat_interval_ms).unwrap_or(self.config.interval);
        self.stats.interval_ms.store(duration_ms(interval), Ordering::Relaxed);
        let session = registered.session_id;

        let (tx, rx) = mpsc::channel::<v1::HealthStreamRequest>(4);
        let mut seq = 0;
        // The master waits for the first heartbeat before it answers the stream: queue it first.
        if tx.send(self.heartbeat(&session, seq)).await.is_err() {
            return "health stream closed".to_owned();
        }
        self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        let mut inbound = match client.health_stream(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return format!("health stream refused: {:?}: {}", status.code(), status.message()),
        };
        *attempt = 0;
        self.stats.attached.fetch_add(1, Ordering::Relaxed);
        let _detached = Detach(&self.stats.attached);
        let mut ack_timeout = link::ack_timeout(interval);
        let mut last_ack = Instant::now();
        let mut ticker = link::heartbeat_ticker(interval);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if last_ack.elapsed() > ack_timeout {
                        return format!("master sent no acknowledgement for {} ms", ack_timeout.as_millis());
                    }
                    seq += 1;
                    if tx.send(self.heartbeat(&session, seq)).await.is_err() {
                        return "health stream closed".to_owned();
                    }
                    self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                message = inbound.message() => match message {
                    Ok(Some(v1::HealthStreamResponse { body: Some(v1::health_stream_response::Body::Ack(ack)) })) => {
                        self.stats.acks.fetch_add(1, Ordering::Relaxed);
                        last_ack = Instant::now();
                        // Paced as the real agent is, with the same helpers.
                        if let Some(paced) = link::repaced(interval, &ack) {
                            interval = paced;
                            ack_timeout = link::ack_timeout(interval);
                            ticker = link::heartbeat_ticker(interval);
                            self.stats.interval_ms.store(duration_ms(interval), Ordering::Relaxed);
                        }
                    }
                    // Keys (the simulated service checks no context), decisions (it has no
                    // transactions) and empty bodies need nothing.
                    Ok(Some(_)) => {}
                    Ok(None) => return "master closed the health stream".to_owned(),
                    Err(status) => return format!("health stream ended: {:?}: {}", status.code(), status.message()),
                },
            }
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Decrements the attached count when a session ends, however it ends.
struct Detach<'a>(&'a AtomicUsize);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn collections() -> Vec<v1::CollectionStats> {
    vec![v1::CollectionStats { name: SIM_COLLECTION.to_owned(), doc_count: SIM_DOCS }]
}

/// The query's words, lowercased, as the synthetic answers' terms.
fn words(query: &str) -> Vec<String> {
    query.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).take(32).collect()
}

/// A stable score in (0, 10] for `node`'s `rank`-th hit of `query` (FNV-1a, no RNG).
fn synthetic_score(node: &str, query: &str, rank: u32) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain(query.bytes()).chain(rank.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    1.0 + (hash % 9000) as f64 / 1000.0 / f64::from(rank)
}

/// The agent service of one simulated agent.
#[derive(Debug)]
struct SimService {
    name: String,
    stats: Arc<SimStats>,
}

/// The synthetic answer of `node` to `query`: up to [`MAX_SIM_HITS`] hits, best first.
pub fn sim_answer(node: &str, query: &str, limit: u32) -> v1::NodeSearchResponse {
    let limit = if limit == 0 { 10 } else { limit }.min(MAX_SIM_HITS);
    let hits: Vec<v1::Hit> = (1..=limit)
        .map(|rank| {
            let score = synthetic_score(node, query, rank);
            v1::Hit {
                node: node.to_owned(),
                doc_id: format!("{node}-doc-{rank}"),
                collection: SIM_COLLECTION.to_owned(),
                title: format!("{query} ({rank})"),
                snippet: format!("a simulated passage about {query}"),
                score,
                node_score: score,
                node_rank: rank,
                also_on: Vec::new(),
                metadata: Default::default(),
            }
        })
        .collect();
    v1::NodeSearchResponse { hits, generation: SIM_GENERATION, total_matches: u64::from(limit) }
}

#[tonic::async_trait]
impl AgentService for SimService {
    async fn node_search(
        &self,
        request: Request<v1::NodeSearchRequest>,
    ) -> Result<Response<v1::NodeSearchResponse>, Status> {
        let req = request.into_inner();
        self.stats.searches.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(sim_answer(&self.name, &req.query, req.limit)))
    }

    async fn node_term_statistics(
        &self,
        request: Request<v1::NodeTermStatisticsRequest>,
    ) -> Result<Response<v1::NodeTermStatisticsResponse>, Status> {
        let words = words(&request.into_inner().query);
        self.stats.statistics.fetch_add(1, Ordering::Relaxed);
        let mut terms = Vec::with_capacity(words.len() * 2);
        for field in ["title", "body"] {
            for word in &words {
                terms.push(v1::TermFrequency { field: field.to_owned(), term: word.clone(), doc_freq: 1 });
            }
        }
        let statistics = v1::TermStatistics {
            total_docs: SIM_DOCS,
            fields: vec![
                v1::FieldTokens { field: "title".to_owned(), total_tokens: SIM_DOCS * 4 },
                v1::FieldTokens { field: "body".to_owned(), total_tokens: SIM_DOCS * 40 },
            ],
            terms,
        };
        Ok(Response::new(v1::NodeTermStatisticsResponse { statistics: Some(statistics), generation: SIM_GENERATION }))
    }

    async fn upsert_documents(
        &self,
        _request: Request<v1::UpsertDocumentsRequest>,
    ) -> Result<Response<v1::UpsertDocumentsResponse>, Status> {
        Err(Status::unimplemented("a simulated agent holds no index"))
    }

    async fn delete_documents(
        &self,
        _request: Request<v1::DeleteDocumentsRequest>,
    ) -> Result<Response<v1::DeleteDocumentsResponse>, Status> {
        Err(Status::unimplemented("a simulated agent holds no index"))
    }

    async fn list_actions(
        &self,
        _request: Request<v1::ListActionsRequest>,
    ) -> Result<Response<v1::ListActionsResponse>, Status> {
        Ok(Response::new(v1::ListActionsResponse::default()))
    }

    async fn run_action(
        &self,
        _request: Request<v1::RunActionRequest>,
    ) -> Result<Response<v1::RunActionResponse>, Status> {
        Err(Status::unimplemented("a simulated agent declares no actions"))
    }

    async fn prepare_transaction(
        &self,
        _request: Request<v1::PrepareTransactionRequest>,
    ) -> Result<Response<v1::PrepareTransactionResponse>, Status> {
        Err(Status::unimplemented("a simulated agent takes part in no transactions"))
    }

    async fn decide_transaction(
        &self,
        _request: Request<v1::DecideTransactionRequest>,
    ) -> Result<Response<v1::DecideTransactionResponse>, Status> {
        Err(Status::unimplemented("a simulated agent takes part in no transactions"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_answers_are_well_formed_stable_and_bounded() {
        let a = sim_answer("sim-1", "federated search", 10);
        assert_eq!(a.hits.len(), MAX_SIM_HITS as usize);
        assert_eq!(a, sim_answer("sim-1", "federated search", 10), "stable");
        for (i, hit) in a.hits.iter().enumerate() {
            assert_eq!(hit.node_rank as usize, i + 1);
            assert_eq!(hit.node, "sim-1");
            assert!(hit.score > 0.0 && hit.score <= 10.0, "{}", hit.score);
        }
        assert_eq!(sim_answer("sim-1", "q", 1).hits.len(), 1);
        assert_ne!(sim_answer("sim-2", "q", 1).hits[0].doc_id, sim_answer("sim-1", "q", 1).hits[0].doc_id);
        assert_eq!(words("Mesh, federated-SEARCH"), ["mesh", "federated", "search"]);
    }
}
