//! The node client against small real AgentService servers on loopback (plaintext tonic over
//! TCP, real channels), whose answers the tests control: a replica that refuses is retried
//! around, a frozen one is hedged around, a failing node's breaker opens and the node then
//! receives no calls, a group without a readable replica fails at once, and the connections of
//! nodes that leave the directory are closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use ragmesh_proto::v1;
use ragmesh_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use ragmesh_stack::breaker::BreakerConfig;
use ragmesh_stack::discover::{Directory, DirectoryNode};
use ragmesh_stack::hedge::HedgeConfig;
use ragmesh_stack::node_call::{AttemptEnd, AttemptKind, CallError, NodeCall, NodeClient, NodeRequest, Target};
use ragmesh_stack::node_client::{ClientConfig, build};
use ragmesh_stack::node_health::{HealthBook, HealthConfig};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use tower::ServiceExt as _;

const OK: u8 = 0;
const REFUSE: u8 = 1;
const FREEZE: u8 = 2;

/// How a fake agent answers, and how many searches reached it.
#[derive(Debug, Default)]
struct Behaviour {
    mode: AtomicU8,
    searches: AtomicUsize,
}

#[derive(Debug)]
struct FakeAgent(Arc<Behaviour>);

#[tonic::async_trait]
impl AgentService for FakeAgent {
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
        _request: Request<v1::UpsertDocumentsRequest>,
    ) -> Result<Response<v1::UpsertDocumentsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn delete_documents(
        &self,
        _request: Request<v1::DeleteDocumentsRequest>,
    ) -> Result<Response<v1::DeleteDocumentsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn node_term_statistics(
        &self,
        _request: Request<v1::NodeTermStatisticsRequest>,
    ) -> Result<Response<v1::NodeTermStatisticsResponse>, Status> {
        Err(Status::unimplemented("searches only"))
    }

    async fn node_search(
        &self,
        _request: Request<v1::NodeSearchRequest>,
    ) -> Result<Response<v1::NodeSearchResponse>, Status> {
        self.0.searches.fetch_add(1, Ordering::SeqCst);
        match self.0.mode.load(Ordering::SeqCst) {
            REFUSE => Err(Status::unavailable("shutting down")),
            FREEZE => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(Response::new(v1::NodeSearchResponse::default()))
            }
            _ => Ok(Response::new(v1::NodeSearchResponse::default())),
        }
    }
}

struct Agent {
    addr: SocketAddr,
    behaviour: Arc<Behaviour>,
    /// Connections the agent has open now.
    connections: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

/// An accepted connection, counted in its agent's `connections` while the server holds it.
struct Counted {
    stream: TcpStream,
    open: Arc<AtomicUsize>,
}

impl Counted {
    fn new(stream: TcpStream, open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Counted { stream, open }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Connected for Counted {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Agent {
    async fn start(mode: u8) -> Agent {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let behaviour = Arc::new(Behaviour { mode: AtomicU8::new(mode), searches: AtomicUsize::new(0) });
        let connections = Arc::new(AtomicUsize::new(0));
        let open = connections.clone();
        let incoming =
            TcpListenerStream::new(listener).map(move |stream| stream.map(|s| Counted::new(s, open.clone())));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::builder().add_service(AgentServiceServer::new(FakeAgent(behaviour.clone())));
        tokio::spawn(server.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        Agent { addr, behaviour, connections, _stop: stop }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn searches(&self) -> usize {
        self.behaviour.searches.load(Ordering::SeqCst)
    }
}

fn lazy_channel(_node: &str, address: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{address}")).map_err(|e| e.to_string())?;
    Ok(endpoint.connect_lazy())
}

/// A directory of `(name, agent, group, readable)`.
fn directory(nodes: &[(&str, &Agent, &str, bool)]) -> Arc<Directory> {
    let nodes = nodes
        .iter()
        .map(|(name, agent, group, readable)| {
            let node = DirectoryNode { address: agent.addr.to_string(), group: group.to_string(), readable: *readable };
            (name.to_string(), node)
        })
        .collect::<BTreeMap<_, _>>();
    Arc::new(Directory { nodes, tls_generation: 0 })
}

fn client(
    directory: Arc<Directory>,
    health: HealthConfig,
    config: ClientConfig,
) -> (watch::Sender<Arc<Directory>>, NodeClient) {
    let (tx, rx) = watch::channel(directory);
    let client = build(rx, Arc::new(lazy_channel), HealthBook::new(health, None), false, config);
    (tx, client)
}

fn search(group: &str, deadline: Duration) -> NodeCall {
    let request = NodeRequest::Search(v1::NodeSearchRequest { query: "q".into(), ..Default::default() });
    NodeCall::new(Target::Group(group.into()), request, Instant::now() + deadline)
}

#[tokio::test]
async fn a_refusing_replica_is_retried_around_and_every_call_succeeds() {
    let good = Agent::start(OK).await;
    let bad = Agent::start(REFUSE).await;
    let (_tx, client) = client(
        directory(&[("good", &good, "g", true), ("bad", &bad, "g", true)]),
        HealthConfig::default(),
        ClientConfig::default(),
    );
    // A burst, so that the balancer spreads first attempts over both replicas.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let client = client.clone();
        calls.spawn(async move {
            let call = search("g", Duration::from_secs(5));
            let result = client.oneshot(call.clone()).await;
            (result, call.attempts.snapshot())
        });
    }
    let mut retried = 0;
    for (result, attempts) in calls.join_all().await {
        let answer = result.expect("every call succeeds");
        assert_eq!(answer.node, "good");
        let first = &attempts[0];
        if first.node == "bad" {
            assert!(
                matches!(first.end, AttemptEnd::Failed(CallError::Unavailable(_) | CallError::BreakerOpen { .. })),
                "{attempts:?}"
            );
            assert_eq!(first.kind, AttemptKind::First);
            let retry = attempts.iter().find(|a| a.kind == AttemptKind::Retry).expect("a retry");
            assert_eq!((retry.node.as_str(), &retry.end), ("good", &AttemptEnd::Ok), "{attempts:?}");
            retried += 1;
        } else {
            assert_eq!(attempts.len(), 1, "{attempts:?}");
        }
    }
    assert!(retried >= 1, "some first attempts went to the refusing replica and were retried");
    assert!(bad.searches() >= 1);
}

/// Two healthy replicas `good` and `frozen` of group `g`, and a client warmed up for hedging.
async fn warm_pair() -> (Agent, Agent, watch::Sender<Arc<Directory>>, NodeClient) {
    let good = Agent::start(OK).await;
    let frozen = Agent::start(OK).await;
    // One-second histogram periods, so that the histogram is warm after a second of calls.
    let config = ClientConfig {
        hedge: HedgeConfig { period: Duration::from_secs(1), ..HedgeConfig::default() },
        ..Default::default()
    };
    let (tx, client) = client(
        directory(&[("good", &good, "g", true), ("frozen", &frozen, "g", true)]),
        HealthConfig::default(),
        config,
    );
    warm_up(&client).await;
    (good, frozen, tx, client)
}

/// Group reads fill the hedge histogram of `client`; reads pinned to each replica give both an
/// RTT estimate (sequential group reads alone would stick to whichever was measured first).
async fn warm_up(client: &NodeClient) {
    let warm_up = Instant::now();
    let mut warm_calls = 0;
    while warm_up.elapsed() < Duration::from_millis(1200) {
        for target in [Target::Node("good".into()), Target::Node("frozen".into()), Target::Group("g".into())] {
            let mut call = search("g", Duration::from_secs(5));
            call.target = target;
            client.clone().oneshot(call).await.expect("healthy replicas answer");
        }
        warm_calls += 1;
    }
    assert!(warm_calls >= 40, "enough latencies for the histogram: {warm_calls}");
}

#[tokio::test]
async fn a_frozen_replica_is_hedged_around_well_before_the_deadline() {
    let (_good, frozen, _tx, client) = warm_pair().await;

    frozen.behaviour.mode.store(FREEZE, Ordering::SeqCst);
    let before = frozen.searches();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = client.clone();
        calls.spawn(async move {
            let call = search("g", Duration::from_secs(5));
            let started = Instant::now();
            let result = client.oneshot(call.clone()).await;
            (result, started.elapsed(), call.attempts.snapshot())
        });
    }
    let mut hedged = 0;
    for (result, took, attempts) in calls.join_all().await {
        let answer = result.expect("answered");
        assert_eq!(answer.node, "good", "{attempts:?}");
        assert!(took < Duration::from_secs(1), "the frozen replica did not cost the deadline: {took:?}");
        if attempts[0].node == "frozen" {
            let hedge = attempts.iter().find(|a| a.kind == AttemptKind::Hedge).expect("a hedge");
            assert_eq!((hedge.node.as_str(), &hedge.end), ("good", &AttemptEnd::Ok), "{attempts:?}");
            hedged += 1;
        }
    }
    assert!(hedged >= 1, "some first attempts went to the frozen replica and were hedged");
    assert!(frozen.searches() > before);
}

/// Regression: a frozen replica's calls were abandoned when their hedges won, at about the hedge
/// delay, and that age became its RTT estimate: not much worse than its busy sibling, so it
/// kept drawing first attempts, each spending a hedge from the shared budget until heartbeats
/// called it suspect (a partition test once exhausted the budget and a read waited for its
/// deadline). Now its silence counts, and it draws no first attempt once it has been silent
/// for a moment.
#[tokio::test]
async fn regression_a_replica_that_stopped_answering_draws_no_more_first_attempts() {
    let (_good, frozen, _tx, client) = warm_pair().await;

    frozen.behaviour.mode.store(FREEZE, Ordering::SeqCst);
    let frozen_at = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = client.clone();
        workers.spawn(async move {
            let mut calls = Vec::new();
            while frozen_at.elapsed() < Duration::from_millis(1500) {
                let call = search("g", Duration::from_secs(5));
                let started = Instant::now();
                let result = client.clone().oneshot(call.clone()).await;
                calls.push((started - frozen_at, started.elapsed(), result, call.attempts.snapshot()));
            }
            calls
        });
    }
    let calls: Vec<_> = workers.join_all().await.into_iter().flatten().collect();
    let mut early = 0;
    for (started, took, result, attempts) in &calls {
        let answer = result.as_ref().unwrap_or_else(|e| panic!("answered: {e:?} {attempts:?}"));
        assert_eq!(answer.node, "good", "{attempts:?}");
        assert!(*took < Duration::from_secs(1), "the frozen replica did not cost the deadline: {took:?}");
        if attempts[0].node == "frozen" {
            assert!(
                *started < Duration::from_millis(500),
                "a first attempt went to the replica silent for {started:?}: {attempts:?}"
            );
            early += 1;
        }
    }
    assert!(calls.len() >= 100, "reads ran while the replica was frozen: {}", calls.len());
    assert!(early >= 1, "some first attempts went to the frozen replica before it was known silent");
    println!("{} reads, {early} first attempts on the frozen replica, all in its first 500 ms", calls.len());
}

#[tokio::test]
async fn the_breaker_opens_after_7_failures_and_the_node_then_receives_no_calls() {
    let failing = Agent::start(REFUSE).await;
    // A long wait, so that no probe is due while the test runs.
    let health = HealthConfig {
        breaker: BreakerConfig { min_wait: Duration::from_secs(60), ..BreakerConfig::default() },
        ..HealthConfig::default()
    };
    let (_tx, client) = client(directory(&[("failing", &failing, "g", true)]), health, ClientConfig::default());
    for _ in 0..7 {
        let result = client.clone().oneshot(search("g", Duration::from_secs(5))).await;
        assert!(matches!(result, Err(CallError::Unavailable(_))), "{result:?}");
    }
    assert_eq!(failing.searches(), 7);
    for _ in 0..20 {
        let call = search("g", Duration::from_secs(5));
        let result = client.clone().oneshot(call.clone()).await;
        assert!(matches!(result, Err(CallError::BreakerOpen { .. })), "{result:?}");
        let attempts = call.attempts.snapshot();
        assert_eq!(attempts.len(), 1, "a single replica: no retry");
        assert!(matches!(attempts[0].end, AttemptEnd::Failed(CallError::BreakerOpen { .. })));
    }
    let pinned = NodeCall::new(
        Target::Node("failing".into()),
        NodeRequest::Search(v1::NodeSearchRequest::default()),
        Instant::now() + Duration::from_secs(5),
    );
    assert!(matches!(client.clone().oneshot(pinned).await, Err(CallError::BreakerOpen { .. })), "one breaker per node");
    assert_eq!(failing.searches(), 7, "an open breaker sends the node nothing");
}

#[tokio::test]
async fn a_group_without_a_readable_replica_fails_at_once() {
    let catching_up = Agent::start(OK).await;
    let (tx, client) =
        client(directory(&[("c", &catching_up, "g", false)]), HealthConfig::default(), ClientConfig::default());
    let started = Instant::now();
    let result = client.clone().oneshot(search("g", Duration::from_secs(10))).await;
    let Err(CallError::Unavailable(message)) = result else { panic!("unavailable, got {result:?}") };
    assert_eq!(message, "shard group g has no in-sync replica that is up");
    assert!(started.elapsed() < Duration::from_millis(500), "failed fast: {:?}", started.elapsed());
    assert_eq!(catching_up.searches(), 0);

    // It caught up: the same client (no rebuild) now reaches it.
    tx.send(directory(&[("c", &catching_up, "g", true)])).expect("directory");
    let answer = client.clone().oneshot(search("g", Duration::from_secs(5))).await.expect("readable now");
    assert_eq!(answer.node, "c");
    assert_eq!(catching_up.searches(), 1);
}

#[tokio::test]
async fn regression_connections_of_nodes_that_left_the_directory_are_closed() {
    // A group of one, a node called by name, and a group of two: each path of the client
    // (straight to a stack, or through the balancer) holds a connection to its nodes.
    let solo = Agent::start(OK).await;
    let named = Agent::start(OK).await;
    let pair = [Agent::start(OK).await, Agent::start(OK).await];
    let stays = Agent::start(OK).await;
    let (tx, client) = client(
        directory(&[
            ("solo", &solo, "solo", true),
            ("named", &named, "named", true),
            ("pair-1", &pair[0], "pair", true),
            ("pair-2", &pair[1], "pair", true),
            ("stays", &stays, "stays", true),
        ]),
        HealthConfig::default(),
        ClientConfig::default(),
    );
    for group in ["solo", "pair", "stays"] {
        client.clone().oneshot(search(group, Duration::from_secs(5))).await.expect("answer");
    }
    // Each replica of the pair is called by name too, so that both have a connection (the
    // balancer holds their stacks as well, sharing it).
    for node in ["named", "pair-1", "pair-2"] {
        let by_name = NodeCall::new(
            Target::Node(node.into()),
            NodeRequest::Search(v1::NodeSearchRequest::default()),
            Instant::now() + Duration::from_secs(5),
        );
        client.clone().oneshot(by_name).await.expect("answer");
    }
    let leaving = [&solo, &named, &pair[0], &pair[1]];
    for agent in leaving.iter().chain([&&stays]) {
        assert_eq!(agent.connections(), 1, "one connection per node while it is in the directory");
    }

    // They go down (or are evicted): the directory drops them, with no call made afterwards.
    tx.send(directory(&[("stays", &stays, "stays", true)])).expect("directory");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while leaving.iter().any(|agent| agent.connections() > 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let open: Vec<usize> = leaving.iter().map(|agent| agent.connections()).collect();
    assert!(closed.is_ok(), "connections still open to nodes that left the directory: {open:?}");
    assert_eq!(stays.connections(), 1, "the node that stays keeps its connection");
    client.clone().oneshot(search("stays", Duration::from_secs(5))).await.expect("still answers");
}
