//! The agent's link to the master: register, then hold the bidirectional health stream, sending
//! a heartbeat every interval. When anything breaks (master restart, refused registration,
//! network) the link reconnects with capped, jittered exponential backoff; it never gives up and
//! never takes the agent's data plane down with it.
//!
//! Heartbeats also carry the index's term summary (routing by term summaries): built off the
//! runtime at the start of each stream and again whenever the index generation moved since the
//! summary last sent on that stream, at most one build per heartbeat interval however fast
//! writes arrive. A summary names the log position of the snapshot it was built from; the
//! master trusts it only while no later write of the group was acknowledged, so a summary that
//! lags behind the index is never wrong, only unused.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ragmesh_index::DocumentIndex;
use ragmesh_proto::v1::{self, membership_service_client::MembershipServiceClient};
use ragmesh_proto::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use ragmesh_tls::ReloadableTls;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::service::AgentState;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest the first heartbeat of a stream waits for the summary built at its start (small
/// indexes: milliseconds); a slower build rides on a later heartbeat.
const FIRST_SUMMARY_WAIT: Duration = Duration::from_secs(1);
/// Largest encoded term summary sent: the filters' cap plus room for collection and analyzer
/// names. A larger one is not sent (the master then asks the node for every query).
const MAX_ENCODED_SUMMARY: usize = ragmesh_search::MAX_NODE_FILTER_BYTES + 512 * 1024;

/// What the link is doing, for health reporting and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    /// Not connected yet, or reconnecting; carries the last error if any.
    Connecting(Option<String>),
    /// Registered and holding the health stream.
    Attached {
        /// Session id from the master.
        session: String,
    },
}

/// Everything the link needs.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) state: AgentState,
    pub(crate) master: String,
    pub(crate) advertise: String,
    /// Spent at the first admission; re-registrations of an admitted node ignore it.
    pub(crate) join_token: Option<ragmesh_config::Secret>,
    pub(crate) interval: Duration,
    /// Read at every (re)attach, so a reloaded certificate is used from the next attach on.
    pub(crate) tls: Option<ReloadableTls>,
    pub(crate) status: watch::Sender<LinkStatus>,
    pub(crate) shutdown: CancellationToken,
}

/// What registration and heartbeats report about the index, read from one snapshot: the master
/// takes generation, applied sequence and collections as one fact.
#[derive(Debug, Clone, Default)]
struct Counted {
    generation: u64,
    applied_seq: u64,
    collections: Vec<v1::CollectionStats>,
    /// Bytes of the index's files (read beside the snapshot, not part of the one fact).
    index_bytes: u64,
}

/// A term summary ready to send, and the generation it describes.
#[derive(Debug)]
struct BuiltSummary {
    generation: u64,
    wire: v1::TermSummary,
}

/// The term summaries of one health stream: the generation last sent on it, the build running
/// off the runtime, and when the last build started (the rate limit).
#[derive(Debug, Default)]
struct Summaries {
    sent: Option<u64>,
    building: Option<JoinHandle<Result<BuiltSummary, String>>>,
    last_started: Option<Instant>,
}

/// Whether to start a summary build now: none is running, the index was written at least once
/// (a never-written index sends none, so the master asks a fresh node, which is how it shows it
/// serves), it moved since the summary last sent (or none was), and the last build started at
/// least one `interval` ago.
fn should_build(
    sent: Option<u64>,
    generation: u64,
    building: bool,
    last_started: Option<Instant>,
    now: Instant,
    interval: Duration,
) -> bool {
    !building
        && generation > 0
        && sent != Some(generation)
        && last_started.is_none_or(|at| now.duration_since(at) >= interval)
}

impl Summaries {
    /// Starts a build of `index`'s summary when [`should_build`] says so.
    fn maybe_start(&mut self, index: Option<&Arc<DocumentIndex>>, interval: Duration) {
        let Some(index) = index else { return };
        let now = Instant::now();
        if !should_build(self.sent, index.generation(), self.building.is_some(), self.last_started, now, interval) {
            return;
        }
        self.last_started = Some(now);
        let index = Arc::clone(index);
        self.building = Some(tokio::task::spawn_blocking(move || build_summary(&index)));
    }

    /// The finished build's summary, if one finished (waiting up to `wait` for it), unless it
    /// describes the generation already sent.
    async fn ready(&mut self, wait: Duration) -> Option<v1::TermSummary> {
        let building = self.building.as_mut()?;
        // `timeout` polls the build before its timer, so a finished build is taken even with no
        // wait; the handle is dropped once it yielded its output (it must not be polled again).
        let Ok(joined) = tokio::time::timeout(wait, building).await else {
            return None; // still building: a later heartbeat sends it
        };
        self.building = None;
        match joined {
            Ok(Ok(built)) if self.sent != Some(built.generation) => {
                self.sent = Some(built.generation);
                Some(built.wire)
            }
            Ok(Ok(_)) => None,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot build the term summary; the master asks this node for every query until one is sent");
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, "term summary task failed");
                None
            }
        }
    }
}

/// Builds and encodes the summary of the index's current snapshot (blocking).
fn build_summary(index: &DocumentIndex) -> Result<BuiltSummary, String> {
    let routed = index.routing_summary(ragmesh_search::DEFAULT_FALSE_POSITIVE_RATE).map_err(|e| e.to_string())?;
    let encoded = routed.summary.encode();
    if encoded.len() > MAX_ENCODED_SUMMARY {
        return Err(format!("summary of {} bytes is over the {MAX_ENCODED_SUMMARY} byte cap", encoded.len()));
    }
    tracing::debug!(
        index.generation = routed.summary.generation(),
        log.applied_seq = routed.applied.seq,
        summary.bytes = encoded.len(),
        "term summary ready"
    );
    Ok(BuiltSummary {
        generation: routed.summary.generation(),
        wire: v1::TermSummary { encoded, applied_seq: routed.applied.seq },
    })
}

/// How one attached session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Exponential backoff with full jitter between `BACKOFF_MIN` and `BACKOFF_MAX`.
#[derive(Debug)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ceiling = BACKOFF_MIN.saturating_mul(1 << self.attempt.min(6)).min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        let jitter: f64 = rand::random_range(0.5..=1.0);
        ceiling.mul_f64(jitter)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Link {
    /// Runs until shutdown.
    pub(crate) async fn run(self) {
        let mut backoff = Backoff { attempt: 0 };
        loop {
            let outcome = tokio::select! {
                () = self.shutdown.cancelled() => return,
                outcome = self.attach(&mut backoff) => outcome,
            };
            let error = match outcome {
                Ok(SessionEnd::Shutdown) => return,
                Ok(SessionEnd::Lost(reason)) => {
                    tracing::warn!(master = %self.master, reason = %reason, "lost the master; reconnecting");
                    reason
                }
                Err(err) => {
                    tracing::warn!(master = %self.master, error = %err, "cannot attach to the master; retrying");
                    err
                }
            };
            self.status.send_replace(LinkStatus::Connecting(Some(error)));
            let pause = backoff.next();
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    fn endpoint(&self) -> Result<Endpoint, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.master))
            .map_err(|e| format!("master address {:?} is invalid: {e}", self.master))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            let host = self.master.rsplit_once(':').map_or(self.master.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            endpoint = endpoint.tls_config(tls.current().client_config(host)).map_err(|e| format!("tls setup: {e}"))?;
        }
        Ok(endpoint)
    }

    /// The index generation, the log sequence applied and the live documents per collection,
    /// all as of one snapshot.
    async fn counted(&self) -> Counted {
        let Some(index) = self.state.index.get().cloned() else { return Counted::default() };
        let fallback = Counted {
            generation: index.generation(),
            applied_seq: index.applied().seq,
            collections: Vec::new(),
            index_bytes: 0,
        };
        let counted = tokio::task::spawn_blocking(move || index.state().map(|state| (state, index.disk_bytes()))).await;
        match counted {
            Ok(Ok((state, index_bytes))) => Counted {
                generation: state.generation,
                applied_seq: state.applied.seq,
                collections: crate::service::collection_stats(state.collections),
                index_bytes,
            },
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot count documents per collection");
                fallback
            }
            Err(err) => {
                tracing::warn!(error = %err, "collection count task failed");
                fallback
            }
        }
    }

    /// A transport failure in words an operator can act on.
    fn explain(&self, err: &(dyn std::error::Error + 'static)) -> String {
        let context = ragmesh_tls::ErrorContext {
            addr: Some(self.master.clone()),
            ca: self.tls.as_ref().map(|tls| tls.files().ca.clone()),
            tls: Some(self.tls.is_some()),
        };
        ragmesh_tls::explain_error_in(err, &context)
    }

    /// A status from the master, with transport failures explained.
    fn describe_status(&self, what: &str, status: &tonic::Status) -> String {
        use std::error::Error as _;
        match (status.code(), status.source()) {
            (tonic::Code::Unavailable | tonic::Code::Unknown, Some(source)) => {
                format!("{what}: {}", self.explain(source))
            }
            (code, _) => format!("{what}: {code:?}: {}", status.message()),
        }
    }

    /// Applies decisions for in-doubt transactions exactly as `DecideTransaction` does, each in
    /// its own task so a slow commit step never holds up the heartbeats.
    fn apply_decisions(&self, decisions: v1::TransactionDecisions) {
        let Some(participants) = self.state.participants.clone() else { return };
        for outcome in decisions.outcomes {
            let participants = Arc::clone(&participants);
            let decision =
                v1::TransactionDecision::try_from(outcome.decision).unwrap_or(v1::TransactionDecision::Unspecified);
            tokio::spawn(async move {
                match participants.decide(&outcome.tx_id, decision).await {
                    Ok(_) => {}
                    // Its prepare is still running here: applied when it ends, listed until then.
                    Err(err @ crate::error::AgentError::DecisionPending { .. }) => {
                        tracing::info!(tx = %outcome.tx_id, reason = %err, "the master's decision waits for this node's prepare");
                    }
                    Err(err) => {
                        tracing::error!(tx = %outcome.tx_id, error = %err, "cannot apply the master's decision; it will be listed again");
                    }
                }
            });
        }
    }

    fn generation(&self) -> u64 {
        self.state.index.get().map_or(0, |index| index.generation())
    }

    /// Registers and holds the health stream until it ends.
    async fn attach(&self, backoff: &mut Backoff) -> Result<SessionEnd, String> {
        let channel: Channel = self.endpoint()?.connect().await.map_err(|e| self.explain(&e))?;
        let mut client = MembershipServiceClient::new(channel);

        // A restore moves the applied log position back, which the master only takes from a
        // registration (within a session it only grows): a restore ends this session too.
        // Subscribed before counting, so a restore after the count is never missed.
        let mut restores = self.state.actions.watch_restores();
        restores.borrow_and_update();
        let Counted { generation, applied_seq, collections, .. } = self.counted().await;
        // Labels reach the master at registration: a change (node.labels) ends this session
        // below, and the next registration carries the new ones.
        let mut label_changes = self.state.actions.node.watch_labels();
        let labels = label_changes.borrow_and_update().clone();
        let mut register = tonic::Request::new(v1::RegisterRequest {
            node_name: self.state.name.clone(),
            advertised_address: self.advertise.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            collections,
            labels: labels.into_iter().collect(),
            generation,
            heartbeat_interval_ms: u32::try_from(self.interval.as_millis()).unwrap_or(u32::MAX),
            join_token: self.join_token.as_ref().map(|t| t.0.clone()).unwrap_or_default(),
            shard: self.state.shard.clone(),
            applied_seq,
        });
        register.set_timeout(REGISTER_TIMEOUT);
        let registered =
            client.register(register).await.map_err(|status| self.describe_status("registration refused", &status))?;
        let registered = registered.into_inner();
        self.state
            .set_keys(&registered.verification_keys)
            .map_err(|e| format!("the master sent unusable verification keys: {e}"))?;
        let mut interval = granted_interval(registered.heartbeat_interval_ms).unwrap_or(self.interval);
        tracing::info!(
            master = %self.master,
            session = %registered.session_id,
            heartbeat_interval_ms = registered.heartbeat_interval_ms,
            master_version = %registered.master_version,
            "registered with the master"
        );

        let (tx, rx) = mpsc::channel::<v1::HealthStreamRequest>(4);
        let mut seq = 0u64;
        // A heartbeat reports the collections and applied sequence counted at `generation`, never
        // a newer generation with older counts: the master takes the triple as one fact.
        let beat = |seq: u64, counted: &Counted, term_summary: Option<v1::TermSummary>| v1::HealthStreamRequest {
            node_name: self.state.name.clone(),
            session_id: registered.session_id.clone(),
            heartbeat: Some(v1::Heartbeat {
                seq,
                in_flight: self.state.in_flight.load(Ordering::Relaxed),
                collections: counted.collections.clone(),
                generation: counted.generation,
                applied_seq: counted.applied_seq,
                index_bytes: counted.index_bytes,
                term_summary,
            }),
            // Listed in every heartbeat until decided: the master answers with decisions.
            in_doubt_transactions: self.state.participants.as_ref().map(|p| p.in_doubt()).unwrap_or_default(),
        };
        // The master waits for the first heartbeat before it answers the stream, so queue it first.
        let mut summaries = Summaries::default();
        summaries.maybe_start(self.state.index.get(), interval);
        let mut counted = self.counted().await;
        let first_summary = summaries.ready(FIRST_SUMMARY_WAIT.min(interval)).await;
        tx.send(beat(seq, &counted, first_summary)).await.map_err(|_| "health stream closed".to_owned())?;
        let mut inbound = client
            .health_stream(ReceiverStream::new(rx))
            .await
            .map_err(|status| self.describe_status("health stream refused", &status))?
            .into_inner();

        self.status.send_replace(LinkStatus::Attached { session: registered.session_id.clone() });
        backoff.reset();
        let mut ack_timeout = ack_timeout(interval);
        let mut last_ack = Instant::now();
        let mut ticker = heartbeat_ticker(interval);
        loop {
            tokio::select! {
                // Dropping `tx` on return closes our half of the stream: the master marks us down at once.
                () = self.shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                Ok(()) = label_changes.changed() => {
                    tracing::info!("labels changed; re-registering so the master learns them");
                    return Ok(SessionEnd::Lost("labels changed (node.labels): re-registering".to_owned()));
                }
                Ok(()) = restores.changed() => {
                    tracing::info!("index restored; re-registering so the master learns its log position");
                    return Ok(SessionEnd::Lost("index restored (index.restore): re-registering".to_owned()));
                }
                _ = ticker.tick() => {
                    if last_ack.elapsed() > ack_timeout {
                        return Ok(SessionEnd::Lost(format!("master sent no acknowledgement for {} ms", ack_timeout.as_millis())));
                    }
                    seq += 1;
                    // Every commit (and so every applied entry) moves the generation.
                    if self.generation() != counted.generation {
                        counted = self.counted().await;
                    }
                    let summary = summaries.ready(Duration::ZERO).await;
                    summaries.maybe_start(self.state.index.get(), interval);
                    if tx.send(beat(seq, &counted, summary)).await.is_err() {
                        return Ok(SessionEnd::Lost("health stream closed".to_owned()));
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(v1::HealthStreamResponse { body: Some(v1::health_stream_response::Body::Ack(ack)) })) => {
                        last_ack = Instant::now();
                        if let Some(paced) = repaced(interval, &ack) {
                            tracing::debug!(from_ms = interval.as_millis(), to_ms = paced.as_millis(), "the master changed the heartbeat interval");
                            interval = paced;
                            ack_timeout = self::ack_timeout(interval);
                            ticker = heartbeat_ticker(interval);
                        }
                    }
                    Ok(Some(v1::HealthStreamResponse { body: Some(v1::health_stream_response::Body::Keys(keys)) })) => {
                        match self.state.set_keys(&keys.keys) {
                            Ok(()) => tracing::info!(keys = keys.keys.len(), "verification keys updated"),
                            Err(err) => tracing::error!(error = %err, "the master sent unusable verification keys"),
                        }
                    }
                    Ok(Some(v1::HealthStreamResponse { body: Some(v1::health_stream_response::Body::Decisions(decisions)) })) => {
                        self.apply_decisions(decisions);
                    }
                    Ok(Some(v1::HealthStreamResponse { body: None })) => {}
                    Ok(None) => return Ok(SessionEnd::Lost("master closed the health stream".to_owned())),
                    Err(status) => return Ok(SessionEnd::Lost(self.describe_status("health stream ended", &status))),
                },
            }
        }
    }
}

/// Longest heartbeat interval an agent accepts from a master: beating faster than asked is
/// always safe, and an acknowledgement timeout of hours would be no timeout.
const MAX_GRANTED_INTERVAL: Duration = Duration::from_secs(600);

/// The interval a master's `heartbeat_interval_ms` grants (`None` for 0: not said), bounded to
/// 10 ms ..= 10 min.
pub fn granted_interval(ms: u32) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(u64::from(ms)).clamp(Duration::from_millis(10), MAX_GRANTED_INTERVAL))
}

/// The new interval when an acknowledgement changes the pace of a stream beating every `current`.
pub fn repaced(current: Duration, ack: &v1::HeartbeatAck) -> Option<Duration> {
    granted_interval(ack.heartbeat_interval_ms).filter(|granted| *granted != current)
}

/// The ticker of heartbeats every `interval`, its first tick one interval from now: started
/// again when the pace changes, so a faster pace holds from the acknowledgement that set it.
pub fn heartbeat_ticker(interval: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// How long a health stream waits for an acknowledgement before it gives the session up, for
/// heartbeats every `interval`: three intervals, and never less than 5 s.
pub fn ack_timeout(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_rebuilt_only_when_the_index_moved_and_at_most_once_per_interval() {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        assert!(should_build(None, 1, false, None, now, second), "first of the stream");
        assert!(!should_build(None, 0, false, None, now, second), "a never-written index sends none");
        assert!(!should_build(Some(3), 3, false, Some(now - second * 5), now, second), "nothing changed");
        assert!(should_build(Some(3), 4, false, Some(now - second), now, second), "the index moved");
        assert!(!should_build(Some(3), 4, false, Some(now - second / 2), now, second), "rate limited");
        assert!(!should_build(Some(3), 4, true, Some(now - second * 5), now, second), "one build at a time");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_summary_build_is_taken_once_whether_awaited_or_already_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = Arc::new(DocumentIndex::open(dir.path()).expect("open"));
        let write = |id: &str| {
            let doc = ragmesh_index::Document {
                id: id.to_owned(),
                collection: "c".to_owned(),
                title: String::new(),
                body: format!("routing words {id}"),
                metadata: Default::default(),
                acl: ragmesh_index::Acl::public(),
            };
            index.upsert(vec![doc]).expect("upsert");
        };
        write("1");
        let mut summaries = Summaries::default();
        // Finishes while `ready` waits on it (the first heartbeat of a stream).
        summaries.maybe_start(Some(&index), Duration::ZERO);
        let first = summaries.ready(Duration::from_secs(60)).await.expect("the build finished in time");
        assert!(!first.encoded.is_empty());
        assert!(summaries.building.is_none(), "the handle is gone once its output was taken");
        assert_eq!(summaries.ready(Duration::ZERO).await, None, "nothing more to send");
        summaries.maybe_start(Some(&index), Duration::ZERO);
        assert!(summaries.building.is_none(), "the index did not move: no build");
        // Already finished when a later heartbeat looks (no wait at all).
        write("2");
        summaries.maybe_start(Some(&index), Duration::ZERO);
        let handle = summaries.building.as_ref().expect("the index moved: a build runs");
        ragmesh_test_util::wait_for("the build to finish", Duration::from_secs(60), || async {
            handle.is_finished().then_some(())
        })
        .await;
        let second = summaries.ready(Duration::ZERO).await.expect("a finished build is taken at once");
        assert_ne!(second.encoded, first.encoded, "a summary of the moved index");
        assert_eq!(summaries.ready(Duration::ZERO).await, None);
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff { attempt: 0 };
        let first = backoff.next();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        for _ in 0..20 {
            assert!(backoff.next() <= BACKOFF_MAX);
        }
        assert!(backoff.next() >= BACKOFF_MAX / 2);
        backoff.reset();
        assert!(backoff.next() <= BACKOFF_MIN);
    }
}
