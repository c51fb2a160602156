//! The agent's data plane (`AgentService`): upsert, delete and BM25 search over the local index.
//! Writes are entries of the agent's shard group's write log, applied in order and each once.
//! Index calls are blocking (tantivy), so they run on the blocking pool.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use ragmesh_auth::{
    AuthError, CONTEXT_AUDIENCE, Capability, DEFAULT_MEMO_CAPACITY, Principal, PublicKey, VerifiedMemo, Verifier,
    VerifierConfig, unix_now,
};
use ragmesh_index::{
    Acl, Applied, DocRef, Document, DocumentIndex, IndexError, IndexState, LogPosition, SearchQuery, SubjectRef,
    Viewer, Writer,
};
use ragmesh_proto::v1::{self, agent_service_server::AgentService};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::actions::Actions;
use crate::actions::node::NodeState;
use crate::actions::participant::Participants;
use crate::error::AgentError;

/// Metadata key of the master's signed request context (see ragmesh-master's access module).
pub const CONTEXT_METADATA: &str = "x-ragmesh-context";
/// `iss` of the master's tokens.
pub const MASTER_ISSUER: &str = "ragmesh-master";

/// State shared by the agent's service and its master link.
#[derive(Debug, Clone)]
pub struct AgentState {
    /// Node name.
    pub name: String,
    /// Shard group served (`--shard`, the node name by default); every write must name it.
    pub shard: String,
    /// The index, once open.
    pub index: Arc<OnceLock<Arc<DocumentIndex>>>,
    /// Requests being served now (reported in heartbeats).
    pub in_flight: Arc<AtomicU32>,
    /// Verifies the master's signed request contexts, remembering verified ones (the master
    /// reuses a caller's context across searches); `None` until the master sent its keys, and
    /// replaced, memo and all, whenever it sends new ones.
    verifier: Arc<RwLock<Option<Arc<VerifiedMemo>>>>,
    /// Slots for blocking index work. A slot is held by the blocking closure itself, so work
    /// whose caller gave up (deadline) still holds one until it really ends: the server's
    /// concurrency limit frees its slot when the handler is dropped, this one does not.
    work_slots: Arc<Semaphore>,
    /// Number of slots (`--max-concurrent-requests`).
    work_limit: usize,
    /// The actions offered (declared and built-in), the drain flag and the labels.
    pub actions: Arc<Actions>,
    /// The participant side of transactions; `None` only in tests of the service alone.
    pub participants: Option<Arc<Participants>>,
}

impl AgentState {
    /// State of agent `name` serving shard group `shard`, running at most `max_work` blocking
    /// index operations at once.
    pub fn new(name: String, shard: String, max_work: usize) -> Self {
        let index = Arc::new(OnceLock::new());
        AgentState {
            name,
            shard,
            index: Arc::clone(&index),
            in_flight: Arc::new(AtomicU32::new(0)),
            verifier: Arc::default(),
            work_slots: Arc::new(Semaphore::new(max_work)),
            work_limit: max_work,
            actions: Arc::new(Actions::new(Vec::new(), NodeState::in_memory(BTreeMap::new()), index)),
            participants: None,
        }
    }

    /// The same state offering `actions` and taking part in transactions with `participants`.
    pub fn with_actions(mut self, actions: Arc<Actions>, participants: Option<Arc<Participants>>) -> Self {
        self.actions = actions;
        self.participants = participants;
        self
    }

    /// Installs the master's verification keys (at registration and after a key rotation).
    pub fn set_keys(&self, keys: &[v1::VerificationKey]) -> Result<(), AuthError> {
        let mut verified = Vec::with_capacity(keys.len());
        for key in keys {
            let until = (key.verify_until > 0).then_some(key.verify_until);
            verified.push(PublicKey::new(&key.kid, &key.algorithm, &key.public_key, until)?);
        }
        let verifier = Verifier::new(verified, VerifierConfig::new(MASTER_ISSUER, CONTEXT_AUDIENCE));
        let memo = Arc::new(VerifiedMemo::new(verifier, DEFAULT_MEMO_CAPACITY));
        *self.verifier.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(memo);
        Ok(())
    }

    /// The caller the master vouches for, from the signed `x-ragmesh-context` metadata.
    /// Requests without a valid context are refused: only the master calls agents.
    fn caller<T>(&self, request: &Request<T>, capability: Capability) -> Result<Principal, AgentError> {
        let principal = self.verified(request)?;
        principal.require(capability)?;
        Ok(principal)
    }

    /// The caller the master vouches for, whatever it may do: actions check the capability they
    /// declare themselves.
    fn verified<T>(&self, request: &Request<T>) -> Result<Principal, AgentError> {
        let token =
            request.metadata().get(CONTEXT_METADATA).and_then(|v| v.to_str().ok()).ok_or(AgentError::NoContext)?;
        let verifier = self.verifier.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Ok(verifier.ok_or(AgentError::NoKeys)?.verify(token, unix_now())?)
    }

    /// The log position of a write: required, and of this agent's shard group.
    fn position(&self, position: Option<v1::LogPosition>) -> Result<LogPosition, AgentError> {
        let position = position.ok_or(AgentError::NoPosition)?;
        if position.shard != self.shard {
            return Err(AgentError::Index(IndexError::WrongShard { held: self.shard.clone(), got: position.shard }));
        }
        Ok(LogPosition { shard: position.shard, seq: position.seq })
    }

    fn index(&self) -> Result<Arc<DocumentIndex>, AgentError> {
        self.index.get().cloned().ok_or(AgentError::NotReady)
    }

    /// Runs `work` on the index in the blocking pool, counting it as in flight until `work`
    /// really ends: the count travels with the blocking closure, so a handler dropped at its
    /// deadline (the search goes on in the pool) still shows in the heartbeats' load.
    async fn with_index<T: Send + 'static>(
        &self,
        work: impl FnOnce(&DocumentIndex) -> Result<T, ragmesh_index::IndexError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let index = self.index()?;
        let slot = Arc::clone(&self.work_slots)
            .try_acquire_owned()
            .map_err(|_| AgentError::Overloaded { limit: self.work_limit })?;
        let in_flight = InFlight::enter(Arc::clone(&self.in_flight));
        // The blocking pool runs outside the caller's span: carry it over, so the work's own
        // spans and events stay in the request's trace.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _held = (slot, in_flight);
            span.in_scope(|| work(&index))
        })
        .await
        .map_err(|e| AgentError::Task(e.to_string()))?
        .map_err(AgentError::from)
    }
}

/// Counts one request in flight for as long as it lives.
struct InFlight(Arc<AtomicU32>);

impl InFlight {
    fn enter(counter: Arc<AtomicU32>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The `AgentService` implementation.
#[derive(Debug, Clone)]
pub struct AgentApi(pub AgentState);

/// Operators (admin capability) read everything; anyone else reads what their tenant may.
fn viewer_of(principal: &Principal) -> Viewer {
    if principal.has(Capability::Admin) {
        Viewer::Unrestricted
    } else {
        Viewer::Principal(SubjectRef { tenant: principal.tenant.clone(), subject: principal.subject.clone() })
    }
}

/// Operators write anywhere; anyone else writes for its tenant only.
fn writer_of(principal: &Principal) -> Writer {
    if principal.has(Capability::Admin) { Writer::Operator } else { Writer::Tenant(principal.tenant.clone()) }
}

pub(crate) fn document_from_wire(doc: v1::Document) -> Document {
    let acl = doc.acl.unwrap_or_default();
    Document {
        id: doc.id,
        collection: doc.collection,
        title: doc.title,
        body: doc.body,
        metadata: doc.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        acl: Acl {
            public: acl.public,
            tenants: acl.tenants.into_iter().collect(),
            subjects: acl.subjects.into_iter().map(|s| SubjectRef { tenant: s.tenant, subject: s.subject }).collect(),
        },
    }
}

/// The applied sequence a write answer reports: the snapshot's, which a later entry applied in
/// between may have moved past this one, never below it.
fn applied_seq(applied: &Applied, state: &IndexState) -> u64 {
    state.applied.seq.max(applied.applied_seq)
}

fn log_write(operation: &'static str, documents: u32, seq: u64, applied: &Applied) {
    if applied.already_applied {
        tracing::info!(
            operation,
            documents,
            log.seq = seq,
            log.applied_seq = applied.applied_seq,
            "log entry already applied"
        );
    } else {
        tracing::info!(operation, documents, log.seq = seq, generation = applied.generation, "log entry applied");
    }
}

/// Collection counts on the wire (in write answers and heartbeats).
pub(crate) fn collection_stats(counts: Vec<ragmesh_index::CollectionCount>) -> Vec<v1::CollectionStats> {
    counts.into_iter().map(|c| v1::CollectionStats { name: c.name, doc_count: c.doc_count }).collect()
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn list_actions(
        &self,
        request: Request<v1::ListActionsRequest>,
    ) -> Result<Response<v1::ListActionsResponse>, Status> {
        // Anyone the master vouches for may see what the node offers (as `action list` shows it).
        self.0.verified(&request)?;
        Ok(Response::new(v1::ListActionsResponse { actions: self.0.actions.descriptors() }))
    }

    async fn run_action(
        &self,
        request: Request<v1::RunActionRequest>,
    ) -> Result<Response<v1::RunActionResponse>, Status> {
        let principal = self.0.verified(&request)?;
        let response = self.0.actions.run(&principal, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn prepare_transaction(
        &self,
        request: Request<v1::PrepareTransactionRequest>,
    ) -> Result<Response<v1::PrepareTransactionResponse>, Status> {
        let principal = self.0.verified(&request)?;
        let participants = self.0.participants.as_ref().ok_or(AgentError::NotReady)?;
        Ok(Response::new(participants.prepare(&principal, request.into_inner()).await?))
    }

    async fn decide_transaction(
        &self,
        request: Request<v1::DecideTransactionRequest>,
    ) -> Result<Response<v1::DecideTransactionResponse>, Status> {
        // Only the master (which signs contexts) decides; any principal it vouches for will do.
        self.0.verified(&request)?;
        let participants = self.0.participants.as_ref().ok_or(AgentError::NotReady)?;
        let request = request.into_inner();
        let decision =
            v1::TransactionDecision::try_from(request.decision).unwrap_or(v1::TransactionDecision::Unspecified);
        Ok(Response::new(participants.decide(&request.tx_id, decision).await?))
    }

    async fn upsert_documents(
        &self,
        request: Request<v1::UpsertDocumentsRequest>,
    ) -> Result<Response<v1::UpsertDocumentsResponse>, Status> {
        let writer = writer_of(&self.0.caller(&request, Capability::Ingest)?);
        let request = request.into_inner();
        let position = self.0.position(request.position)?;
        let docs: Vec<Document> = request.documents.into_iter().map(document_from_wire).collect();
        let count = u32::try_from(docs.len()).unwrap_or(u32::MAX);
        let seq = position.seq;
        let (applied, state) = self
            .0
            .with_index(move |index| {
                let applied = index.apply_upsert(&position, docs, &writer)?;
                Ok((applied, index.state()?))
            })
            .await?;
        log_write("upsert", count, seq, &applied);
        let applied_seq = applied_seq(&applied, &state);
        Ok(Response::new(v1::UpsertDocumentsResponse {
            upserted: count,
            generation: state.generation,
            collections: collection_stats(state.collections),
            applied_seq,
            already_applied: applied.already_applied,
        }))
    }

    async fn delete_documents(
        &self,
        request: Request<v1::DeleteDocumentsRequest>,
    ) -> Result<Response<v1::DeleteDocumentsResponse>, Status> {
        let writer = writer_of(&self.0.caller(&request, Capability::Ingest)?);
        let request = request.into_inner();
        let position = self.0.position(request.position)?;
        let refs: Vec<DocRef> =
            request.refs.into_iter().map(|r| DocRef { collection: r.collection, id: r.id }).collect();
        let count = u32::try_from(refs.len()).unwrap_or(u32::MAX);
        let seq = position.seq;
        let (applied, state) = self
            .0
            .with_index(move |index| {
                let applied = index.apply_delete(&position, refs, &writer)?;
                Ok((applied, index.state()?))
            })
            .await?;
        log_write("delete", count, seq, &applied);
        let applied_seq = applied_seq(&applied, &state);
        Ok(Response::new(v1::DeleteDocumentsResponse {
            deleted: count,
            generation: state.generation,
            collections: collection_stats(state.collections),
            applied_seq,
            already_applied: applied.already_applied,
        }))
    }

    async fn node_term_statistics(
        &self,
        request: Request<v1::NodeTermStatisticsRequest>,
    ) -> Result<Response<v1::NodeTermStatisticsResponse>, Status> {
        let viewer = viewer_of(&self.0.caller(&request, Capability::Search)?);
        if self.0.actions.node.is_drained() {
            return Err(AgentError::Drained.into());
        }
        let query = SearchQuery {
            query: request.into_inner().query,
            collections: Vec::new(),
            limit: 0,
            min_score: 0.0,
            viewer,
        };
        let span = tracing::info_span!("index.term_statistics");
        let counted = self.0.with_index(move |index| index.term_statistics_at_generation(&query));
        let (generation, statistics) = tracing::Instrument::instrument(counted, span).await?;
        Ok(Response::new(v1::NodeTermStatisticsResponse {
            statistics: Some(crate::statistics::to_wire(&statistics)),
            generation,
        }))
    }

    async fn node_search(
        &self,
        request: Request<v1::NodeSearchRequest>,
    ) -> Result<Response<v1::NodeSearchResponse>, Status> {
        let viewer = viewer_of(&self.0.caller(&request, Capability::Search)?);
        if self.0.actions.node.is_drained() {
            return Err(AgentError::Drained.into());
        }
        let req = request.into_inner();
        let query = SearchQuery {
            query: req.query,
            collections: req.collections,
            limit: req.limit as usize,
            min_score: req.min_score as f32,
            viewer,
        };
        let span = tracing::info_span!(
            "index.search",
            ragmesh.limit = query.limit,
            ragmesh.collections = query.collections.len()
        );
        let statistics = req.statistics.as_ref().map(crate::statistics::from_wire);
        let searched = self.0.with_index(move |index| match &statistics {
            Some(statistics) => index.search_with_statistics(&query, statistics),
            None => index.search(&query),
        });
        let results = tracing::Instrument::instrument(searched, span).await?;
        let node = self.0.name.clone();
        let hits = results
            .hits
            .into_iter()
            .enumerate()
            .map(|(i, hit)| v1::Hit {
                node: node.clone(),
                doc_id: hit.id,
                collection: hit.collection,
                title: hit.title,
                snippet: hit.snippet,
                score: f64::from(hit.score),
                node_score: f64::from(hit.score),
                node_rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
                also_on: Vec::new(),
                metadata: hit.metadata.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(v1::NodeSearchResponse {
            hits,
            generation: results.generation,
            total_matches: results.total_matches,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::pin::pin;
    use std::sync::mpsc;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use super::*;

    fn state_with_index(dir: &std::path::Path) -> AgentState {
        state_with_slots(dir, 8)
    }

    fn state_with_slots(dir: &std::path::Path, slots: usize) -> AgentState {
        let state = AgentState::new("agent-test".to_owned(), "agent-test".to_owned(), slots);
        let index = DocumentIndex::open(dir).expect("open a fresh index");
        assert!(state.index.set(Arc::new(index)).is_ok(), "the index is set once");
        state
    }

    /// Waits (without sleeping blindly) until the in-flight count is `expected`.
    async fn wait_in_flight(state: &AgentState, expected: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while state.in_flight.load(Ordering::Relaxed) != expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "in flight stayed {} instead of {expected}",
                state.in_flight.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Starts blocking index work that runs until the returned sender is used, then drops its
    /// handler, as the caller's deadline does: the handler is gone, the work goes on.
    async fn abandon_blocked_work(state: &AgentState) -> mpsc::Sender<()> {
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let mut handler = pin!(state.with_index(move |_index| {
            let _ = started_tx.send(());
            // Stands for a slow tantivy search: runs until the test lets it finish.
            let _ = release_rx.recv();
            Ok(())
        }));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(handler.as_mut().poll(&mut cx), Poll::Pending), "the work is blocked");
        tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(10)))
            .await
            .expect("join")
            .expect("the blocking work started");
        release_tx
    }

    /// Regression: the count was held by the async handler, so when the deadline dropped the
    /// handler the count fell to 0 while the blocking search still ran.
    #[tokio::test]
    async fn in_flight_under_reported_when_the_deadline_dropped_the_handler_during_blocking_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state_with_index(dir.path());
        let release_tx = abandon_blocked_work(&state).await;
        assert_eq!(
            state.in_flight.load(Ordering::Relaxed),
            1,
            "the blocking search still runs, so it is still in flight"
        );
        release_tx.send(()).expect("the blocking work waits for the release");
        wait_in_flight(&state, 0).await;
    }

    /// Regression: the server's concurrency limit frees a slot when the deadline drops the
    /// handler, while the blocking search goes on; without a slot held by the blocking work
    /// itself, callers that give up could pile up unbounded tantivy work.
    #[tokio::test]
    async fn blocking_work_whose_caller_gave_up_still_holds_its_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state_with_slots(dir.path(), 1);
        let release_tx = abandon_blocked_work(&state).await;
        let refused = state.with_index(|_index| Ok(())).await.expect_err("the only slot is still taken");
        assert!(matches!(refused, AgentError::Overloaded { limit: 1 }), "{refused:?}");
        let status = Status::from(refused);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("--max-concurrent-requests"), "{}", status.message());
        release_tx.send(()).expect("the blocking work waits for the release");
        wait_in_flight(&state, 0).await;
        state.with_index(|_index| Ok(())).await.expect("the slot is free again");
    }

    #[tokio::test]
    async fn in_flight_returns_to_zero_after_completed_and_failed_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state_with_index(dir.path());
        state.with_index(|_index| Ok(())).await.expect("work succeeds");
        let failed = state
            .with_index(|_index| -> Result<(), _> { Err(ragmesh_index::IndexError::InvalidQuery("bad".to_owned())) })
            .await;
        assert!(failed.is_err());
        assert_eq!(state.in_flight.load(Ordering::Relaxed), 0);
    }
}
