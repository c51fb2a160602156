//! Events end to end: a real master and real agents over mTLS, `WatchEvents`, and a real HTTP
//! webhook receiver (hyper on 127.0.0.1) that checks signatures the way a receiver in any
//! language would (HMAC-SHA256 over "<t>.<body>", computed here with ring, not with the master's
//! code), and that can be stopped and started again on the same port.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use ragmesh_config::{EventsConfig, Secret, WebhookConfig};
use ragmesh_e2e::{Mesh, trace_init, wait_for};
use ragmesh_proto::v1;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

const SECRET: &str = "test-webhook-secret-0123456789";
/// The receiver's replay window.
const WINDOW_S: u64 = 300;
/// Generous: a loaded two-core machine, heartbeat timeouts, backoff.
const WAIT: Duration = Duration::from_secs(30);

/// One POST as the receiver got it.
#[derive(Debug, Clone)]
struct Delivery {
    headers: http::HeaderMap,
    body: Bytes,
}

impl Delivery {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("header {name} is missing"))
    }
}

/// What a receiver does with `X-Ragmesh-Signature`: parse `t=..,v1=..`, check the replay window,
/// recompute HMAC-SHA256(secret, "<t>.<body>") and compare in constant time.
fn receiver_verifies(secret: &str, header: &str, body: &[u8], now: u64) -> Result<(), String> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return Err(format!("malformed signature header {header:?}")) };
    if t.abs_diff(now) > WINDOW_S {
        return Err(format!("timestamp {t} outside the replay window around {now}"));
    }
    let tag: Vec<u8> = (0..v1.len())
        .step_by(2)
        .map(|i| v1.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()
        .ok_or("v1 is not hex")?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    ring::hmac::verify(&key, &signed, &tag).map_err(|_| "signature does not match".to_owned())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// A webhook receiver: answers 200 to every POST and records it.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Delivery>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on `addr` (port 0: any), recording into `got`.
    async fn start(addr: SocketAddr, got: Arc<Mutex<Vec<Delivery>>>) -> Receiver {
        let socket = TcpSocket::new_v4().expect("socket");
        // Started again on the same port after `stop`.
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(addr).expect("bind the receiver");
        let listener = socket.listen(64).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let record = got.clone();
        let server = tokio::spawn(async move {
            // Connections live in this set: aborting the server drops them all at once.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let record = record.clone();
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        record.lock().expect("lock").push(Delivery { headers: parts.headers, body });
                        Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
                    }
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, got, server }
    }

    /// Stops listening and drops every connection: the master's deliveries are refused.
    async fn stop(self) -> (SocketAddr, Arc<Mutex<Vec<Delivery>>>) {
        self.server.abort();
        let _ = self.server.await;
        (self.addr, self.got)
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().expect("lock").clone()
    }
}

fn webhook(addr: SocketAddr) -> EventsConfig {
    EventsConfig {
        webhooks: vec![WebhookConfig {
            name: "test".into(),
            url: format!("http://{addr}/hooks/ragmesh"),
            events: Vec::new(),
            secret: Secret(SECRET.into()),
            timeout: Duration::from_secs(5),
            max_backoff: Duration::from_millis(500),
        }],
        outbox_max_events: 10_000,
    }
}

fn kind(event: &v1::Event) -> v1::EventKind {
    v1::EventKind::try_from(event.kind).expect("known kind")
}

/// Reads `stream` until an event matches `want`; returns it and every event read.
async fn next_matching(
    stream: &mut tonic::Streaming<v1::WatchEventsResponse>,
    what: &str,
    want: impl Fn(&v1::Event) -> bool,
) -> (v1::Event, Vec<v1::Event>) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let message = stream.message().await.expect("stream ok").expect("stream open");
            let event = message.event.expect("event");
            seen.push(event.clone());
            if want(&event) {
                return event;
            }
        }
    })
    .await;
    match found {
        Ok(event) => (event, seen),
        Err(_) => panic!("no {what} event within {WAIT:?}; saw {seen:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_is_down_on_watch_events_and_at_a_signed_webhook() {
    trace_init();
    let receiver = Receiver::start("127.0.0.1:0".parse().expect("addr"), Arc::default()).await;
    let mut mesh = Mesh::builder().agents(2).events(webhook(receiver.addr)).start().await;
    let mut stream = mesh
        .client()
        .await
        .watch_events(v1::WatchEventsRequest { kinds: Vec::new() })
        .await
        .expect("an operator may watch")
        .into_inner();

    mesh.kill_agent(0);
    let (down, _) = next_matching(&mut stream, "node_down of agent-1", |e| {
        kind(e) == v1::EventKind::NodeDown && e.node == "agent-1"
    })
    .await;
    assert!(down.seq > 0 && down.time.is_some(), "{down:?}");
    assert!(!down.message.is_empty(), "a down event says why: {down:?}");

    let (delivery, _) = wait_for("the node_down POST at the receiver", WAIT, || {
        let found = receiver.deliveries().into_iter().find(|d| d.json()["seq"] == down.seq);
        async move { found }
    })
    .await;
    let body = delivery.json();
    assert_eq!(body["kind"], "node_down");
    assert_eq!(body["node"], "agent-1");
    assert_eq!(body["id"], format!("evt-{}", down.seq));
    assert_eq!(delivery.header("x-ragmesh-event-id"), format!("evt-{}", down.seq));
    assert_eq!(delivery.header("x-ragmesh-event-kind"), "node_down");
    assert_eq!(delivery.header("content-type"), "application/json");
    let signature = delivery.header("x-ragmesh-signature");
    let signed_at: u64 = delivery.header("x-ragmesh-timestamp").parse().expect("unix seconds");
    assert!(signature.starts_with(&format!("t={signed_at},v1=")), "{signature}");
    assert_eq!(receiver_verifies(SECRET, signature, &delivery.body, unix_now()), Ok(()));

    // A tampered body, a wrong secret and a replay outside the window all fail.
    let tampered = String::from_utf8(delivery.body.to_vec()).expect("utf8").replace("agent-1", "agent-9");
    assert_ne!(tampered.as_bytes(), &delivery.body[..]);
    assert_eq!(
        receiver_verifies(SECRET, signature, tampered.as_bytes(), unix_now()),
        Err("signature does not match".to_owned())
    );
    assert!(receiver_verifies("another-secret-0123456789", signature, &delivery.body, unix_now()).is_err());
    let replayed = receiver_verifies(SECRET, signature, &delivery.body, signed_at + WINDOW_S + 1);
    assert!(replayed.expect_err("too old").contains("replay window"));
    // The master's own verifier (the one documented for Rust receivers) agrees.
    use ragmesh_master::events::webhook::{SignatureError, verify};
    assert_eq!(verify(SECRET.as_bytes(), signature, &delivery.body, signed_at, WINDOW_S), Ok(()));
    assert_eq!(
        verify(SECRET.as_bytes(), signature, tampered.as_bytes(), signed_at, WINDOW_S),
        Err(SignatureError::Mismatch)
    );

    // An agent without a join token is refused: admission_refused, naming it and why.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stranger = mesh.agent_config("stranger", dir.path().to_owned());
    stranger.join_token = None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agent = ragmesh_agent::start(stranger, listener).await.expect("agent starts");
    let (refused, _) = next_matching(&mut stream, "admission_refused of stranger", |e| {
        kind(e) == v1::EventKind::AdmissionRefused && e.node == "stranger"
    })
    .await;
    assert!(refused.message.contains("join token"), "{refused:?}");
    assert!(!refused.address.is_empty(), "{refused:?}");
    agent.shutdown().await.expect("agent stops");

    // A caller without the admin capability may not watch.
    let token = mesh.issue_token("reader", "acme", &["search"]).await.access_token;
    let refused = mesh
        .client_with_token(&token)
        .await
        .watch_events(v1::WatchEventsRequest { kinds: Vec::new() })
        .await
        .expect_err("needs admin");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_raised_while_the_receiver_is_down_arrive_in_order_once_after_a_master_restart() {
    trace_init();
    let receiver = Receiver::start("127.0.0.1:0".parse().expect("addr"), Arc::default()).await;
    let mut mesh = Mesh::builder().agents(3).events(webhook(receiver.addr)).start().await;
    // Deliveries flow: every agent's node_up reached the receiver.
    wait_for("node_up of every agent at the receiver", WAIT, || {
        let ups: BTreeSet<String> = receiver
            .deliveries()
            .iter()
            .map(Delivery::json)
            .filter(|e| e["kind"] == "node_up")
            .map(|e| e["node"].as_str().unwrap_or_default().to_owned())
            .collect();
        async move { (ups.len() == 3).then_some(()) }
    })
    .await;

    let (addr, got) = receiver.stop().await;
    let mut stream = mesh
        .client()
        .await
        .watch_events(v1::WatchEventsRequest { kinds: Vec::new() })
        .await
        .expect("watch")
        .into_inner();
    // Events while the receiver is down: two agents go down, the signing key rotates.
    mesh.kill_agent(0);
    mesh.kill_agent(1);
    let mut raised = Vec::new();
    // The two downs come in either order.
    let mut down = BTreeSet::new();
    while down.len() < 2 {
        let (event, seen) = next_matching(&mut stream, "node_down", |e| kind(e) == v1::EventKind::NodeDown).await;
        down.insert(event.node);
        raised.extend(seen);
    }
    assert_eq!(down, BTreeSet::from(["agent-1".to_owned(), "agent-2".to_owned()]));
    let kid = mesh
        .auth_client()
        .await
        .rotate_signing_key(v1::RotateSigningKeyRequest {})
        .await
        .expect("rotate")
        .into_inner()
        .kid;
    let (rotated, seen) =
        next_matching(&mut stream, "signing_key_rotated", |e| kind(e) == v1::EventKind::SigningKeyRotated).await;
    raised.extend(seen);
    assert_eq!(rotated.key_id, kid);
    drop(stream);
    let raised: BTreeSet<u64> = raised.iter().map(|e| e.seq).collect();
    let last_raised = *raised.last().expect("events were raised");

    mesh.restart_master().await;
    let receiver = Receiver::start(addr, got).await;
    let (deliveries, _) = wait_for("every event raised while the receiver was down", WAIT, || {
        let deliveries = receiver.deliveries();
        let done = deliveries.iter().any(|d| d.json()["seq"].as_u64() >= Some(last_raised));
        async move { done.then_some(deliveries) }
    })
    .await;

    let seqs: Vec<u64> = deliveries.iter().map(|d| d.json()["seq"].as_u64().expect("seq")).collect();
    let ids: Vec<String> = deliveries.iter().map(|d| d.header("x-ragmesh-event-id").to_owned()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "delivered in order, each once: {seqs:?}");
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "no id twice: {ids:?}");
    let delivered: BTreeSet<u64> = seqs.iter().copied().collect();
    let missing: Vec<u64> = raised.difference(&delivered).copied().collect();
    assert!(missing.is_empty(), "events lost across the restart: {missing:?} (delivered {seqs:?})");
    for delivery in &deliveries {
        let signature = delivery.header("x-ragmesh-signature");
        let signed_at: u64 = delivery.header("x-ragmesh-timestamp").parse().expect("unix seconds");
        // Replayed from the outbox: signed when sent, not when raised, so within the window.
        assert_eq!(receiver_verifies(SECRET, signature, &delivery.body, signed_at), Ok(()));
    }
    let rotated_body = deliveries.iter().map(Delivery::json).find(|e| e["kind"] == "signing_key_rotated");
    assert_eq!(rotated_body.expect("the rotation was delivered")["key_id"], kid.as_str());
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_never_answers_delays_only_its_own_queue() {
    trace_init();
    // Accepts connections (the kernel does, into the backlog) and never answers a request.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the hanging receiver");
    let live = Receiver::start("127.0.0.1:0".parse().expect("addr"), Arc::default()).await;
    let mut events = webhook(live.addr);
    let mut dead = events.webhooks[0].clone();
    dead.name = "hanging".into();
    dead.url = format!("http://{}/never", hanging.local_addr().expect("addr"));
    dead.timeout = Duration::from_secs(600);
    events.webhooks.insert(0, dead);
    let mut mesh = Mesh::builder().agents(2).events(events).start().await;
    let mut stream = mesh
        .client()
        .await
        .watch_events(v1::WatchEventsRequest { kinds: vec![v1::EventKind::NodeDown as i32] })
        .await
        .expect("watch")
        .into_inner();

    mesh.kill_agent(0);
    let (down, seen) = next_matching(&mut stream, "node_down", |e| kind(e) == v1::EventKind::NodeDown).await;
    assert_eq!(down.node, "agent-1");
    assert!(seen.iter().all(|e| kind(e) == v1::EventKind::NodeDown), "the kind filter holds: {seen:?}");
    // The other webhook's queue moves although the first one's is stuck on its first event.
    wait_for("node_down at the live receiver", WAIT, || {
        let found = live.deliveries().iter().any(|d| d.json()["seq"] == down.seq);
        async move { found.then_some(()) }
    })
    .await;
    // And the mesh itself does not wait for webhooks.
    let started = tokio::time::Instant::now();
    let response = mesh.search(v1::SearchRequest { query: "anything".into(), ..Default::default() }).await;
    assert!(response.nodes.iter().any(|n| n.node == "agent-2"), "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "search took {:?}", started.elapsed());
    mesh.shutdown().await;
    drop(hanging);
}
