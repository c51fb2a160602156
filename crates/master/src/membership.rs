//! One agent's health stream on the master: the watcher that turns heartbeats, silence and the
//! end of the stream into liveness events, and the outbound half that carries acknowledgements
//! and verification keys down to the agent.
//!
//! Acknowledgements may be dropped when the agent does not read them (liveness is judged on
//! heartbeats alone), but keys may not: an agent that misses a rotation refuses the master's
//! calls. So keys do not share the bounded acknowledgement queue: the outbound stream merges that
//! queue with the key `watch`, which always holds the complete current key set. The agent gets
//! the current set when the stream opens and after every change, however full the queue is.
//!
//! Each acknowledgement tells the agent the interval to beat at (the fleet's pace under the
//! master's heartbeat budget, see `pace`), and silence is judged at the pace the agent was told.
//!
//! A heartbeat may carry the node's term summary (routing by term summaries): decoded here and
//! kept in the registry for this session. One that cannot be read is logged once per stream and
//! forgotten: the node is then asked for every query, which is always correct.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use ragmesh_proto::v1;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::convert;
use crate::node::{LivenessEvent, SessionId};
use crate::pace::{Pace, Pacing};
use crate::registry::{HeartbeatInfo, Registry};

/// Acknowledgements queued for one agent before new ones are dropped.
const ACK_QUEUE: usize = 16;
/// How long the watcher tries to deliver the status that ends a stream.
const END_DELIVERY: Duration = Duration::from_secs(1);

/// What the master sends down one health stream.
pub(crate) type Outbound = Pin<Box<dyn Stream<Item = Result<v1::HealthStreamResponse, Status>> + Send>>;

/// The master's half of a health stream: the sender the watcher writes acknowledgements and the
/// final status to, and the stream tonic sends to the agent.
pub(crate) fn outbound(
    keys: watch::Receiver<Vec<ragmesh_auth::PublicKey>>,
) -> (mpsc::Sender<Result<v1::HealthStreamResponse, Status>>, CancellationToken, Outbound) {
    let (tx, rx) = mpsc::channel(ACK_QUEUE);
    let done = CancellationToken::new();
    // `WatchStream::new` yields the current keys first, so a rotation between the agent's
    // registration and this stream opening is not missed either.
    let keys = WatchStream::new(keys).map(|keys| Ok(keys_message(&keys))).take_until(done.clone().cancelled_owned());
    let merged = futures::stream::select(ReceiverStream::new(rx), keys);
    (tx, done, Box::pin(merged))
}

fn keys_message(keys: &[ragmesh_auth::PublicKey]) -> v1::HealthStreamResponse {
    let keys = keys.iter().map(ragmesh_auth::PublicKey::to_wire).collect();
    v1::HealthStreamResponse { body: Some(v1::health_stream_response::Body::Keys(v1::VerificationKeys { keys })) }
}

/// Watches one health stream: applies heartbeats, acknowledges them, and turns silence or the
/// end of the stream into liveness events.
#[derive(Debug)]
pub(crate) struct StreamWatcher {
    pub(crate) registry: Registry,
    pub(crate) node: String,
    pub(crate) session: SessionId,
    /// The heartbeat interval agreed at registration.
    pub(crate) agreed: Duration,
    /// The master's pacing rules: they give the interval and the silences tolerated.
    pub(crate) pacing: Pacing,
    /// Whether the agent follows the interval in acknowledgements (protocol 1.1); one that does
    /// not is held to its agreed interval.
    pub(crate) follows_pace: bool,
    pub(crate) tx: mpsc::Sender<Result<v1::HealthStreamResponse, Status>>,
    /// Cancelled when the watcher ends, which ends the outbound stream's key half.
    pub(crate) done: CancellationToken,
    pub(crate) shutdown: CancellationToken,
    /// Answers the agent's in-doubt transactions (once the coordinator log is open).
    pub(crate) transactions: Option<crate::actions::transactions::Transactions>,
}

impl StreamWatcher {
    /// Runs until the stream ends, the node falls silent, or the master shuts down.
    pub(crate) async fn run<S>(self, first: v1::HealthStreamRequest, mut inbound: S)
    where
        S: Stream<Item = Result<v1::HealthStreamRequest, Status>> + Unpin + Send,
    {
        let _end_outbound = self.done.clone().drop_guard();
        let mut pending = Some(first);
        let mut late = false;
        let mut last_heartbeat = Instant::now();
        let mut pace = self.pace_now();
        // An unreadable term summary is logged once per stream.
        let mut summary_warned = false;
        loop {
            if let Some(message) = pending.take() {
                let in_doubt = message.in_doubt_transactions.clone();
                let next = self.pace_now();
                let Some(acked) = self.on_heartbeat(message, next.interval, &mut summary_warned) else {
                    self.end(Status::failed_precondition(
                        "session is no longer valid (superseded by a newer registration, or the node was evicted): register again",
                    ))
                    .await;
                    return;
                };
                // A faster pace counts only once the agent can know it: from an acknowledgement.
                if acked || next.interval >= pace.interval {
                    pace = next;
                }
                late = false;
                last_heartbeat = Instant::now();
                self.answer_in_doubt(&in_doubt).await;
            }
            // Deadlines count from the last heartbeat, so other events never extend the silence.
            let deadline = last_heartbeat + if late { pace.timeout } else { pace.suspect_after };
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.down("master shutting down");
                    self.end(Status::unavailable("master is shutting down: reconnect")).await;
                    return;
                }
                next = tokio::time::timeout_at(deadline, inbound.next()) => match next {
                    Ok(Some(Ok(message))) => pending = Some(message),
                    Ok(None) => {
                        self.down("health stream closed by the agent");
                        return;
                    }
                    Ok(Some(Err(status))) => {
                        self.down(&format!("health stream broke (connection lost): {}", status.message()));
                        return;
                    }
                    Err(_elapsed) if !late => {
                        late = true;
                        self.registry.apply(&self.node, LivenessEvent::Late(self.session.clone()), "");
                    }
                    Err(_elapsed) => {
                        let reason = format!("no heartbeat for {} ms", pace.timeout.as_millis());
                        self.down(&reason);
                        self.end(Status::deadline_exceeded(format!("{reason}: reconnect"))).await;
                        return;
                    }
                },
            }
        }
    }

    /// The pace this stream is held to now, from the fleet's size.
    fn pace_now(&self) -> Pace {
        let fleet = if self.follows_pace { self.registry.beating() } else { 0 };
        self.pacing.pace(self.agreed, fleet)
    }

    /// Applies a heartbeat and acknowledges it with the `interval` expected from now on; `None`
    /// when this stream's session was superseded, else whether the acknowledgement was queued.
    fn on_heartbeat(
        &self,
        message: v1::HealthStreamRequest,
        interval: Duration,
        summary_warned: &mut bool,
    ) -> Option<bool> {
        let mut heartbeat = message.heartbeat.unwrap_or_default();
        let term_summary = heartbeat.term_summary.take();
        let info = HeartbeatInfo {
            in_flight: heartbeat.in_flight,
            collections: convert::collections_from_wire(heartbeat.collections),
            generation: heartbeat.generation,
            applied_seq: heartbeat.applied_seq,
            index_bytes: heartbeat.index_bytes,
        };
        if !self.registry.heartbeat(&self.node, &self.session, info) {
            return None;
        }
        if let Some(summary) = term_summary {
            self.on_term_summary(summary, summary_warned);
        }
        let heartbeat_interval_ms =
            if self.follows_pace { u32::try_from(interval.as_millis()).unwrap_or(u32::MAX) } else { 0 };
        let ack = v1::HealthStreamResponse {
            body: Some(v1::health_stream_response::Body::Ack(v1::HeartbeatAck {
                seq: heartbeat.seq,
                heartbeat_interval_ms,
            })),
        };
        // A full queue means the agent is not reading acks; liveness is judged on heartbeats alone.
        Some(self.tx.try_send(Ok(ack)).is_ok())
    }

    /// Keeps a summary the node sent, or forgets the previous one when this one cannot be read.
    fn on_term_summary(&self, summary: v1::TermSummary, warned: &mut bool) {
        let decoded = match ragmesh_search::NodeSummary::decode(&summary.encoded) {
            Ok(decoded) => {
                tracing::debug!(
                    node.id = %self.node,
                    index.generation = decoded.generation(),
                    log.applied_seq = summary.applied_seq,
                    summary.bytes = summary.encoded.len(),
                    "term summary received"
                );
                Some((decoded, summary.applied_seq))
            }
            Err(err) => {
                if !*warned {
                    *warned = true;
                    tracing::warn!(node.id = %self.node, error = %err, "cannot read the node's term summary; it is asked for every query");
                }
                None
            }
        };
        self.registry.set_term_summary(&self.node, &self.session, decoded);
    }

    /// Sends the decisions of the transactions the agent reports in doubt (those decided, or
    /// unknown here: presumed abort) on its stream.
    async fn answer_in_doubt(&self, in_doubt: &[String]) {
        let Some(transactions) = &self.transactions else { return };
        if in_doubt.is_empty() {
            return;
        }
        let decisions = crate::actions::tx_service::decisions(transactions, in_doubt).await;
        if decisions.outcomes.is_empty() {
            return;
        }
        tracing::info!(node.id = %self.node, answered = decisions.outcomes.len(), "in-doubt transactions answered");
        let message = v1::HealthStreamResponse { body: Some(v1::health_stream_response::Body::Decisions(decisions)) };
        // Asked again with the next heartbeat if the queue is full.
        let _ = self.tx.try_send(Ok(message));
    }

    fn down(&self, reason: &str) {
        self.registry.apply(&self.node, LivenessEvent::StreamEnded(self.session.clone()), reason);
    }

    /// Ends the stream with `status`, waiting a little for room in a full queue.
    async fn end(&self, status: Status) {
        let _ = tokio::time::timeout(END_DELIVERY, self.tx.send(Err(status))).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ragmesh_store::SledStore;

    use super::*;
    use crate::node::NodeState;
    use crate::registry::NodeRecord;

    const SUSPECT_AFTER: Duration = Duration::from_millis(150);
    const TIMEOUT: Duration = Duration::from_secs(1);

    struct Fixture {
        _dir: tempfile::TempDir,
        registry: Registry,
        heartbeats: mpsc::Sender<Result<v1::HealthStreamRequest, Status>>,
        outbound: Outbound,
        shutdown: CancellationToken,
        keys: watch::Sender<Vec<ragmesh_auth::PublicKey>>,
        session: SessionId,
    }

    fn heartbeat(session: &SessionId, seq: u64) -> v1::HealthStreamRequest {
        v1::HealthStreamRequest {
            node_name: "a".into(),
            session_id: session.0.clone(),
            heartbeat: Some(v1::Heartbeat { seq, ..Default::default() }),
            in_doubt_transactions: Vec::new(),
        }
    }

    /// A registered node "a" whose watcher runs on the (paused) test clock.
    fn start() -> Fixture {
        start_with(None)
    }

    /// [`start`], answering in-doubt transactions from `transactions`.
    fn start_with(transactions: Option<crate::actions::transactions::Transactions>) -> Fixture {
        start_paced(Pacing { max_per_second: 0, timeout: TIMEOUT }, true, 0, transactions)
    }

    /// Node "a" (agreed interval 100 ms) in a fleet with `others` more registered nodes, under
    /// `pacing`; `follows_pace`: it speaks protocol 1.1.
    fn start_paced(
        pacing: Pacing,
        follows_pace: bool,
        others: usize,
        transactions: Option<crate::actions::transactions::Transactions>,
    ) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::load(Arc::new(SledStore::open_waiting(dir.path()).expect("open"))).expect("load");
        for i in 0..others {
            registry.register(NodeRecord::for_tests(&format!("other-{i}"), &[])).expect("register another");
        }
        let record = NodeRecord { heartbeat_interval_ms: 100, ..NodeRecord::for_tests("a", &[]) };
        let session = registry.register(record).expect("register");
        let keys = watch::Sender::new(Vec::new());
        let (tx, done, outbound) = super::outbound(keys.subscribe());
        let (heartbeats, inbound) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let watcher = StreamWatcher {
            registry: registry.clone(),
            node: "a".into(),
            session: session.clone(),
            agreed: Duration::from_millis(100),
            pacing,
            follows_pace,
            tx,
            done,
            shutdown: shutdown.clone(),
            transactions,
        };
        tokio::spawn(watcher.run(heartbeat(&session, 0), ReceiverStream::new(inbound)));
        Fixture { _dir: dir, registry, heartbeats, outbound, shutdown, keys, session }
    }

    fn state(registry: &Registry) -> NodeState {
        registry.get("a").expect("a").state
    }

    /// Advances the paused clock by `d`, letting every task run at each step.
    async fn advance(d: Duration) {
        tokio::time::sleep(d).await;
        tokio::task::yield_now().await;
    }

    #[tokio::test]
    async fn in_doubt_transactions_are_answered_with_the_logged_decision_or_presumed_abort() {
        use ragmesh_coordinator::coordinator::{Coordinator, CoordinatorConfig};
        use ragmesh_coordinator::{Decision, TxId};

        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn ragmesh_store::StateStore> = Arc::new(SledStore::open_waiting(dir.path()).expect("open"));
        let log = ragmesh_coordinator::log::CoordinatorLog::new(store.clone());
        let committed = TxId(5);
        let machine = Coordinator::new(committed, &["a".to_owned()], u64::MAX, CoordinatorConfig::default());
        let mut record = machine.record();
        record.decision = Some(Decision::Commit);
        log.write_decision(&record, 1).expect("log commit");
        let f = start_with(Some(crate::actions::transactions::Transactions::new(store)));
        let mut asking = heartbeat(&f.session, 1);
        asking.in_doubt_transactions = vec![committed.to_string(), TxId(6).to_string(), "not-a-tx".into()];
        f.heartbeats.send(Ok(asking)).await.expect("send");
        let mut outbound = f.outbound;
        let decisions = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(message) = outbound.next().await {
                if let Ok(v1::HealthStreamResponse { body: Some(v1::health_stream_response::Body::Decisions(d)) }) =
                    message
                {
                    return d;
                }
            }
            panic!("the stream ended without decisions");
        })
        .await
        .expect("answered in time");
        let answered: Vec<(String, i32)> = decisions.outcomes.into_iter().map(|o| (o.tx_id, o.decision)).collect();
        assert_eq!(
            answered,
            [
                (committed.to_string(), v1::TransactionDecision::Commit as i32),
                (TxId(6).to_string(), v1::TransactionDecision::Abort as i32),
            ],
            "the logged commit, presumed abort for an unknown id, nothing for a malformed one"
        );
        f.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn silence_makes_a_node_suspect_then_down_exactly_at_the_configured_thresholds() {
        let f = start();
        advance(Duration::from_millis(1)).await;
        assert_eq!(state(&f.registry), NodeState::Up, "the first heartbeat brings the node up");

        advance(SUSPECT_AFTER - Duration::from_millis(2)).await;
        assert_eq!(state(&f.registry), NodeState::Up, "not suspect before the threshold");
        advance(Duration::from_millis(2)).await;
        assert_eq!(state(&f.registry), NodeState::Suspect, "suspect once the threshold passes");

        f.heartbeats.send(Ok(heartbeat(&f.session, 1))).await.expect("send");
        advance(Duration::from_millis(1)).await;
        assert_eq!(state(&f.registry), NodeState::Up, "a heartbeat clears suspicion");

        // Silence again: suspect after SUSPECT_AFTER, down after TIMEOUT, both from the last heartbeat.
        advance(SUSPECT_AFTER + Duration::from_millis(1)).await;
        assert_eq!(state(&f.registry), NodeState::Suspect);
        advance(TIMEOUT - SUSPECT_AFTER - Duration::from_millis(10)).await;
        assert_eq!(state(&f.registry), NodeState::Suspect, "not down before the timeout");
        advance(Duration::from_millis(20)).await;
        let a = f.registry.get("a").expect("a");
        assert_eq!(a.state, NodeState::Down);
        assert_eq!(a.down_reason.as_deref(), Some("no heartbeat for 1000 ms"));

        let statuses: Vec<_> = f.outbound.filter_map(|m| async move { m.err() }).collect().await;
        assert_eq!(statuses.len(), 1, "the stream ends with one status");
        assert_eq!(statuses[0].code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_on_time_keep_a_node_up_indefinitely() {
        let f = start();
        for seq in 1..50 {
            advance(SUSPECT_AFTER / 2).await;
            f.heartbeats.send(Ok(heartbeat(&f.session, seq))).await.expect("send");
            advance(Duration::ZERO).await;
            assert_eq!(state(&f.registry), NodeState::Up, "heartbeat {seq}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_ending_or_breaking_takes_the_node_down_at_once() {
        let f = start();
        advance(Duration::from_millis(1)).await;
        drop(f.heartbeats);
        advance(Duration::ZERO).await;
        let a = f.registry.get("a").expect("a");
        assert_eq!(a.state, NodeState::Down);
        assert_eq!(a.down_reason.as_deref(), Some("health stream closed by the agent"));

        let g = start();
        advance(Duration::from_millis(1)).await;
        g.heartbeats.send(Err(Status::unknown("connection reset"))).await.expect("send");
        advance(Duration::ZERO).await;
        let a = g.registry.get("a").expect("a");
        assert_eq!(a.state, NodeState::Down);
        assert!(a.down_reason.expect("reason").contains("connection lost"));
    }

    #[tokio::test(start_paused = true)]
    async fn master_shutdown_takes_the_node_down_and_tells_the_agent() {
        let f = start();
        advance(Duration::from_millis(1)).await;
        f.shutdown.cancel();
        advance(Duration::ZERO).await;
        assert_eq!(state(&f.registry), NodeState::Down);
        let statuses: Vec<_> = f.outbound.filter_map(|m| async move { m.err() }).collect().await;
        assert_eq!(statuses.iter().map(Status::code).collect::<Vec<_>>(), [tonic::Code::Unavailable]);
    }

    #[tokio::test(start_paused = true)]
    async fn regression_key_rotation_is_delivered_when_the_ack_queue_is_full() {
        let mut f = start();
        // The agent reads nothing while far more heartbeats than the queue holds are acknowledged.
        for seq in 1..=(ACK_QUEUE as u64 * 3) {
            f.heartbeats.send(Ok(heartbeat(&f.session, seq))).await.expect("send");
            advance(Duration::ZERO).await;
        }
        let rotated = ragmesh_auth::PublicKey::from_raw(&[7; 32], None).expect("32 bytes");
        f.keys.send_replace(vec![rotated.clone()]);
        advance(Duration::ZERO).await;

        let mut last_keys = None;
        for _ in 0..(ACK_QUEUE * 4) {
            let next = tokio::time::timeout(Duration::from_millis(10), f.outbound.next()).await;
            let Ok(Some(Ok(message))) = next else { break };
            if let Some(v1::health_stream_response::Body::Keys(keys)) = message.body {
                last_keys = Some(keys.keys.into_iter().map(|k| k.kid).collect::<Vec<_>>());
            }
        }
        assert_eq!(last_keys, Some(vec![rotated.kid().to_owned()]), "the agent ends up with the current keys");
    }

    /// The next acknowledgement on `outbound`, skipping keys.
    async fn next_ack(outbound: &mut Outbound) -> v1::HeartbeatAck {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(1), outbound.next()).await;
            match message.expect("a message in time").expect("stream open").expect("not a status").body {
                Some(v1::health_stream_response::Body::Ack(ack)) => return ack,
                _ => continue,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fleet_over_the_budget_is_told_a_slower_pace_and_judged_by_it() {
        // 30 beating nodes at 10 heartbeats/s beat every 3 s; the 1 s timeout stretches to 2.5
        // intervals (7.5 s) and suspicion to half of that.
        let mut f = start_paced(Pacing { max_per_second: 10, timeout: TIMEOUT }, true, 29, None);
        let ack = next_ack(&mut f.outbound).await;
        assert_eq!((ack.seq, ack.heartbeat_interval_ms), (0, 3000), "the first acknowledgement sets the pace");
        advance(Duration::from_millis(3749)).await;
        assert_eq!(state(&f.registry), NodeState::Up, "not suspect before 1.25 paced intervals");
        advance(Duration::from_millis(2)).await;
        assert_eq!(state(&f.registry), NodeState::Suspect, "suspect after 1.25 paced intervals");
        advance(Duration::from_millis(7500 - 3751 - 10)).await;
        assert_eq!(state(&f.registry), NodeState::Suspect, "not down before the stretched timeout");
        advance(Duration::from_millis(20)).await;
        let a = f.registry.get("a").expect("a");
        assert_eq!(a.state, NodeState::Down);
        assert_eq!(a.down_reason.as_deref(), Some("no heartbeat for 7500 ms"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shrinking_fleet_gets_a_faster_pace_from_the_next_acknowledgement_on() {
        let mut f = start_paced(Pacing { max_per_second: 10, timeout: TIMEOUT }, true, 29, None);
        assert_eq!(next_ack(&mut f.outbound).await.heartbeat_interval_ms, 3000);
        for i in 0..20 {
            assert!(f.registry.remove(&format!("other-{i}")).expect("remove"), "other-{i} was registered");
        }
        // Still judged at the slow pace until an acknowledgement says otherwise.
        advance(Duration::from_millis(3500)).await;
        assert_eq!(state(&f.registry), NodeState::Up, "the pace the agent was told still holds");
        f.heartbeats.send(Ok(heartbeat(&f.session, 1))).await.expect("send");
        advance(Duration::ZERO).await;
        let ack = next_ack(&mut f.outbound).await;
        assert_eq!((ack.seq, ack.heartbeat_interval_ms), (1, 1000), "10 nodes at 10/s");
        advance(Duration::from_millis(1249)).await;
        assert_eq!(state(&f.registry), NodeState::Up);
        advance(Duration::from_millis(2)).await;
        assert_eq!(state(&f.registry), NodeState::Suspect, "judged at the new pace");
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_cannot_follow_a_pace_is_held_to_its_agreed_interval() {
        let mut f = start_paced(Pacing { max_per_second: 10, timeout: TIMEOUT }, false, 29, None);
        let ack = next_ack(&mut f.outbound).await;
        assert_eq!(ack.heartbeat_interval_ms, 0, "a 1.0 agent is told nothing");
        advance(SUSPECT_AFTER + Duration::from_millis(1)).await;
        assert_eq!(state(&f.registry), NodeState::Suspect, "judged at the interval it registered with");
    }
}
