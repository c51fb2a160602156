//! The circuit breaker end to end: a TCP proxy sits between the master and one replica of a
//! two-replica group (the agent advertises the proxy's address), so the replica's calls can fail
//! while its health stream (agent to master, not through the proxy) stays up. The proxy counts
//! every connection the master opens towards the replica: once the breaker is open, only its
//! probes may get there. A restarted master restores the open breaker from sled, and a probe
//! through the healed proxy closes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ragmesh_e2e::{Mesh, docs_for, shard_name, trace_init, wait_for};
use ragmesh_proto::v1;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

const OK: i32 = v1::OutcomeStatus::Ok as i32;
const OPEN: i32 = v1::BreakerStatus::Open as i32;
const CLOSED: i32 = v1::BreakerStatus::Closed as i32;
/// The breaker's failure threshold (the product default).
const THRESHOLD: u32 = 7;
/// The replica behind the proxy, and its sibling.
const PROXIED: &str = "agent-1";
const SIBLING: &str = "agent-2";

/// A TCP proxy in front of one agent: forwards, or accepts and closes at once.
struct Proxy {
    addr: SocketAddr,
    target: watch::Sender<Option<SocketAddr>>,
    shared: Arc<ProxyShared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyShared {
    /// Accept and close every connection (and close the forwarded ones).
    failing: AtomicBool,
    /// Connections accepted.
    accepted: AtomicUsize,
    /// Connections forwarded to the agent.
    forwarded: AtomicUsize,
    /// Wakes forwarded connections when the proxy starts failing.
    cut: Notify,
}

impl Proxy {
    async fn bind() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (target, target_rx) = watch::channel(None);
        let shared = Arc::new(ProxyShared::default());
        let task = tokio::spawn(serve(listener, target_rx, shared.clone()));
        Proxy { addr, target, shared, task }
    }

    /// Forwards to `agent` from now on.
    fn forward_to(&self, agent: SocketAddr) {
        self.target.send_replace(Some(agent));
    }

    /// Accepts and closes every connection; the forwarded ones close too.
    fn fail(&self) {
        self.shared.failing.store(true, Ordering::SeqCst);
        self.shared.cut.notify_waiters();
    }

    /// Forwards again.
    fn heal(&self) {
        self.shared.failing.store(false, Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.failing.store(true, Ordering::SeqCst);
        self.shared.cut.notify_waiters();
    }
}

async fn serve(listener: TcpListener, target: watch::Receiver<Option<SocketAddr>>, shared: Arc<ProxyShared>) {
    while let Ok((client, _)) = listener.accept().await {
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.failing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let mut target = target.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            // The agent's address is known once it runs; the master may dial before.
            let Ok(agent) = target.wait_for(Option::is_some).await.map(|t| t.expect("some")) else { return };
            let Ok(mut upstream) = TcpStream::connect(agent).await else { return };
            shared.forwarded.fetch_add(1, Ordering::SeqCst);
            let mut client = client;
            let cut = shared.cut.notified();
            tokio::pin!(cut);
            cut.as_mut().enable();
            if shared.failing.load(Ordering::SeqCst) {
                return;
            }
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                () = cut => {}
            }
        });
    }
}

fn search(nodes: &[&str]) -> v1::SearchRequest {
    v1::SearchRequest {
        query: "mesh".into(),
        limit: 100,
        timeout_ms: 5000,
        nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

/// A search naming `nodes`; with no node answering it is an error (the status's message says why).
async fn try_search(mesh: &Mesh, nodes: &[&str]) -> Result<v1::SearchResponse, tonic::Status> {
    mesh.client().await.search(search(nodes)).await.map(tonic::Response::into_inner)
}

async fn breaker_of(mesh: &Mesh, node: &str) -> v1::BreakerInfo {
    mesh.node_info(node).await.breaker.expect("GetNode reports the breaker")
}

/// A two-replica group whose first replica is behind `proxy`, with documents in sync.
async fn mesh_behind(proxy: &Proxy) -> Mesh {
    let mesh = Mesh::builder().agents(2).replicas(2).advertise(0, proxy.addr).start().await;
    proxy.forward_to(mesh.agent_addr(0));
    mesh.ingest_shard(&shard_name(0), docs_for(0, 5)).await;
    for name in [PROXIED, SIBLING] {
        mesh.wait_in_sync(name, Duration::from_secs(15)).await;
    }
    let through_proxy = mesh.search(search(&[PROXIED])).await;
    assert_eq!((through_proxy.hits.len(), through_proxy.groups[0].status), (5, OK), "{through_proxy:?}");
    assert!(proxy.forwarded() >= 1, "the master reached {PROXIED} through the proxy");
    mesh
}

/// Makes the proxy fail and opens the breaker with calls naming the proxied node: each fails,
/// and the 7th opens it. Returns when GetNode shows it open.
async fn open_breaker(mesh: &Mesh, proxy: &Proxy) {
    assert_eq!(breaker_of(mesh, PROXIED).await.status, CLOSED);
    proxy.fail();
    let before = proxy.accepted();
    for failures in 1..=THRESHOLD {
        let response = try_search(mesh, &[PROXIED]).await;
        assert!(response.is_err(), "call {failures} through the failing proxy: {response:?}");
        let breaker = breaker_of(mesh, PROXIED).await;
        if failures < THRESHOLD {
            assert_eq!((breaker.status, breaker.consecutive_failures), (CLOSED, failures), "{breaker:?}");
        } else {
            assert_eq!(breaker.status, OPEN, "open after {THRESHOLD} failures: {breaker:?}");
            assert!(breaker.probe_at.is_some(), "an open breaker says when it probes: {breaker:?}");
        }
    }
    let attempts = proxy.accepted() - before;
    assert!(attempts >= THRESHOLD as usize, "each failed call reached the proxy: {attempts} connections");
}

/// Most probes an open breaker lets through in `window` after opening: waits of at least
/// 0.5 s, 1 s, 2 s, ... (1 s doubling, jittered down by at most half) between them.
fn probes_within(window: Duration) -> usize {
    let (mut at, mut wait, mut probes) = (Duration::ZERO, Duration::from_millis(500), 0);
    loop {
        at += wait;
        if at > window {
            return probes;
        }
        probes += 1;
        wait *= 2;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_repeated_failures_and_the_node_then_gets_no_calls() {
    trace_init();
    let proxy = Proxy::bind().await;
    let mesh = mesh_behind(&proxy).await;
    open_breaker(&mesh, &proxy).await;
    let opened = Instant::now();
    let (accepted, forwarded) = (proxy.accepted(), proxy.forwarded());

    // Calls naming the node, and group reads, for a few seconds: the named ones are refused
    // locally (or are the breaker's probes), the group reads are answered by the sibling.
    let window = Duration::from_secs(4);
    let (mut named, mut grouped, mut refused, mut probes) = (0, 0, 0, 0);
    while opened.elapsed() < window {
        // No node answers a search naming only the proxied node: the error says why.
        let status = try_search(&mesh, &[PROXIED]).await.expect_err("nobody answers for the proxied node");
        named += 1;
        let skipped = status.message().contains("breaker");
        let probe_failed = status.message().contains("unavailable");
        assert!(skipped || probe_failed, "a call naming {PROXIED} is refused or a failed probe: {status:?}");
        refused += usize::from(skipped);
        probes += usize::from(!skipped);

        let response = mesh.search(search(&[])).await;
        grouped += 1;
        let group = &response.groups[0];
        assert_eq!((group.status, group.answered_by.as_str()), (OK, SIBLING), "{group:?}");
        assert_eq!(response.hits.len(), 5, "{response:?}");
        let outcome = ragmesh_e2e::outcome_of(&response, PROXIED);
        let reported = (outcome.status == v1::OutcomeStatus::Skipped as i32
            && outcome.skip_reason == v1::SkipReason::BreakerOpen as i32)
            || group.attempts.iter().any(|a| a.node == PROXIED && a.status != OK);
        assert!(reported, "{PROXIED} is reported skipped(breaker_open) or with a failed attempt: {response:?}");
        // A due probe ranks first in the balancer, so a group read may carry it (and fail over).
        probes += group.attempts.iter().filter(|a| a.node == PROXIED && a.status != OK).count();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = opened.elapsed();
    let reached = proxy.accepted() - accepted;
    let allowed = probes_within(elapsed);
    println!(
        "breaker open for {:.1} s: {named} calls naming {PROXIED} ({refused} refused locally), {grouped} group \
         reads; {probes} probes; {reached} connections reached the proxy (at most {allowed} probes allowed)",
        elapsed.as_secs_f64()
    );
    assert!(named >= 20 && grouped >= 20, "the window made calls: {named} named, {grouped} grouped");
    assert!(refused >= named - allowed, "all but the probes were refused: {refused} of {named}");
    assert!(
        reached <= allowed,
        "{reached} connections reached {PROXIED} while its breaker was open; probes allowed: {allowed}"
    );
    assert_eq!(proxy.forwarded(), forwarded, "nothing was forwarded to the agent");
    assert_eq!(mesh.node_info(PROXIED).await.state, v1::NodeState::Up as i32, "its health stream stayed up");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_state_survives_a_master_restart() {
    trace_init();
    let proxy = Proxy::bind().await;
    let mut mesh = mesh_behind(&proxy).await;
    open_breaker(&mesh, &proxy).await;

    mesh.restart_master().await;
    mesh.wait_state(PROXIED, ragmesh_master::node::NodeState::Up, Duration::from_secs(15)).await;
    let restored = breaker_of(&mesh, PROXIED).await;
    assert_eq!(restored.status, OPEN, "the restarted master restored the open breaker: {restored:?}");
    assert!(restored.probe_at.is_some(), "{restored:?}");
    assert_eq!(breaker_of(&mesh, SIBLING).await.status, CLOSED);

    // Healed: the next call naming the node is the probe, and its success closes the breaker.
    proxy.heal();
    let healed = Instant::now();
    let closed = wait_for("the breaker to close after a probe", Duration::from_secs(65), || async {
        let response = try_search(&mesh, &[PROXIED]).await;
        let breaker = breaker_of(&mesh, PROXIED).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        (breaker.status == CLOSED).then_some(response)
    })
    .await
    .0;
    println!("breaker closed {:.1} s after healing", healed.elapsed().as_secs_f64());
    let closed = closed.expect("the probe that closed the breaker was answered");
    assert_eq!((closed.groups[0].status, closed.hits.len()), (OK, 5), "the probe answered: {closed:?}");
    let group = mesh.search(search(&[])).await;
    assert_eq!(group.groups[0].status, OK, "{group:?}");
    mesh.shutdown().await;
}
