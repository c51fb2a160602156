//! The master's gRPC services: `MasterService` for clients, `MembershipService` for agents.
//! Handlers validate, call the domain code and map `MasterError` to `Status` via `?`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ragmesh_config::MasterConfig;
use ragmesh_proto::v1::{self, master_service_server::MasterService, membership_service_server::MembershipService};
use ragmesh_proto::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use ragmesh_auth::{Capability, Principal};

use crate::access::AccessControl;
use crate::actions::service as action_service;
use crate::actions::tx_service;
use crate::clients::NodeClients;
use crate::convert;
use crate::error::MasterError;
use crate::federation::{self, NoAnswer, NodeQuery, Outcome};
use crate::membership::{self, Outbound, StreamWatcher};
use crate::merge;
use crate::node::SessionId;
use crate::pace::Pacing;
use crate::registry::{NodeRecord, Registry};
use crate::replication::log::{Write, Writer};
use crate::replication::{Replication, WriteOutcome, WriteTarget};
use crate::result_cache::{self, Answer, Freshness, Scope};
use crate::stats_cache;

/// Longest query string accepted.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Most hits a search may ask for.
pub const MAX_LIMIT: u32 = 1000;
/// Most documents in one ingest call.
pub const MAX_BATCH: usize = 10_000;
/// Deadline of a write forwarded to a node.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// State shared by the master's services.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) registry: Arc<OnceLock<Registry>>,
    pub(crate) access: Arc<OnceLock<Arc<AccessControl>>>,
    pub(crate) replication: Arc<OnceLock<Replication>>,
    /// Records of remote actions (idempotency keys, audit log, jobs), once the store is open.
    pub(crate) actions: Arc<OnceLock<crate::actions::service::Actions>>,
    /// The 2PC coordinator's driver and log, once the store is open.
    pub(crate) transactions: Arc<OnceLock<crate::actions::transactions::Transactions>>,
    pub(crate) clients: NodeClients,
    /// Every call to agents goes through it (searches today; writes too, later).
    pub(crate) node_client: ragmesh_stack::node_call::NodeClient,
    /// Breaker and load state of every node (shown by ListNodes and GetNode).
    pub(crate) health: ragmesh_stack::node_health::HealthBook,
    pub(crate) config: Arc<MasterConfig>,
    pub(crate) shutdown: CancellationToken,
    /// The master's Prometheus series.
    pub(crate) metrics: crate::metrics::MasterMetrics,
    /// Health-stream watchers, drained on shutdown so no task outlives the master.
    pub(crate) tasks: tokio_util::task::TaskTracker,
    /// Where events are published (admission refusals and version mismatches from here).
    pub(crate) events: crate::events::Events,
    /// Merged search answers (`--result-cache-bytes`).
    pub(crate) result_cache: crate::result_cache::ResultCache,
    /// Per-group BM25 statistics of a query (`--statistics-cache-bytes`).
    pub(crate) stats_cache: crate::stats_cache::StatisticsCache,
    /// Query parsers for routing by term summaries, one per analysis profile.
    pub(crate) routing: federation::RoutingParsers,
    /// Registrations admitted at once (see [`MAX_CONCURRENT_REGISTRATIONS`]).
    pub(crate) registrations: Arc<tokio::sync::Semaphore>,
}

/// Registrations the master runs at once; more wait their turn. Each runs blocking work (the
/// join token's compare-and-swap, the registry's write), all serialised on the same locks: run
/// unbounded, a thousand agents registering together had the blocking pool start hundreds of
/// threads (and their memory) that only queued on those locks.
pub(crate) const MAX_CONCURRENT_REGISTRATIONS: usize = 8;

impl Context {
    pub(crate) fn registry(&self) -> Result<&Registry, MasterError> {
        self.registry.get().ok_or(MasterError::NotReady)
    }

    pub(crate) fn access(&self) -> Result<&Arc<AccessControl>, MasterError> {
        self.access.get().ok_or(MasterError::NotReady)
    }

    pub(crate) fn replication(&self) -> Result<&Replication, MasterError> {
        self.replication.get().ok_or(MasterError::NotReady)
    }

    pub(crate) fn actions(&self) -> Result<&crate::actions::service::Actions, MasterError> {
        self.actions.get().ok_or(MasterError::NotReady)
    }

    pub(crate) fn transactions(&self) -> Result<&crate::actions::transactions::Transactions, MasterError> {
        self.transactions.get().ok_or(MasterError::NotReady)
    }

    /// Authenticates the caller and checks the capability the RPC needs.
    pub(crate) fn require<T>(&self, request: &Request<T>, capability: Capability) -> Result<Principal, MasterError> {
        self.access()?.require(request, capability)
    }

    /// In mTLS mode, the caller's certificate must name `claimed`.
    fn check_identity<T>(&self, request: &Request<T>, claimed: &str) -> Result<(), MasterError> {
        if self.config.tls.is_none() {
            return Ok(());
        }
        let identity = ragmesh_tls::peer_identity_of(request).ok_or(MasterError::NoPeerIdentity)?;
        if identity.is(claimed) {
            Ok(())
        } else {
            Err(MasterError::IdentityMismatch { cert_name: identity.name, claimed: claimed.to_owned() })
        }
    }
}

/// Client-facing API.
#[derive(Debug, Clone)]
pub(crate) struct MasterApi(pub(crate) Context);

/// Agent-facing API.
#[derive(Debug, Clone)]
pub(crate) struct MembershipApi(pub(crate) Context);

/// Parses a `grpc-timeout` header value (`<digits><H|M|S|m|u|n>`).
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Time kept back from the node deadline to merge and answer before the caller's deadline:
/// a tenth of the budget within 2..50 ms, but never more than half, so nodes always get most of
/// even a 1 ms budget.
fn merge_margin(budget: Duration) -> Duration {
    (budget / 10).clamp(Duration::from_millis(2), Duration::from_millis(50)).min(budget / 2)
}

impl MasterApi {
    fn search_budget(&self, request: &Request<v1::SearchRequest>) -> Result<Duration, MasterError> {
        let config = &self.0.config;
        let asked = request.get_ref().timeout_ms;
        if Duration::from_millis(u64::from(asked)) > config.max_search_timeout {
            return Err(MasterError::InvalidArgument(format!(
                "timeout_ms {asked} exceeds the master's maximum {} ms",
                config.max_search_timeout.as_millis()
            )));
        }
        let mut budget = if asked == 0 { config.search_timeout } else { Duration::from_millis(u64::from(asked)) };
        let header = request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok());
        if let Some(caller) = header.and_then(parse_grpc_timeout) {
            budget = budget.min(caller);
        }
        Ok(budget)
    }
}

/// Checks a search request before anything is asked; returns its merge strategy.
fn validate_search(req: &v1::SearchRequest) -> Result<merge::Strategy, MasterError> {
    if req.query.trim().is_empty() {
        return Err(MasterError::InvalidArgument("query is empty: pass the words to search for".into()));
    }
    if req.query.len() > MAX_QUERY_BYTES {
        return Err(MasterError::InvalidArgument(format!(
            "query is {} bytes long; the maximum is {MAX_QUERY_BYTES}",
            req.query.len()
        )));
    }
    if req.limit > MAX_LIMIT {
        return Err(MasterError::InvalidArgument(format!("limit {} exceeds the maximum {MAX_LIMIT}", req.limit)));
    }
    if !req.min_score.is_finite() {
        return Err(MasterError::InvalidArgument("min_score must be a finite number".into()));
    }
    let strategy = merge::Strategy::parse(&req.merge).map_err(MasterError::InvalidArgument)?;
    // Refused here, once, rather than fanned out to every agent (which would refuse it too):
    // a deeply nested query would overflow the stack of tantivy's recursive parser.
    ragmesh_types::query::check(&req.query, &ragmesh_types::query::QueryLimits::default())
        .map_err(|err| MasterError::InvalidArgument(err.to_string()))?;
    Ok(strategy)
}

#[tonic::async_trait]
impl MasterService for MasterApi {
    type WatchEventsStream = crate::events::stream::EventStream;
    type WatchActionJobStream = crate::actions::service::JobStream;

    async fn list_node_actions(
        &self,
        request: Request<v1::ListNodeActionsRequest>,
    ) -> Result<Response<v1::ListNodeActionsResponse>, Status> {
        let principal = self.0.require(&request, Capability::Actions)?;
        let actions = self.0.actions()?;
        let response = action_service::list_node_actions(&self.0, actions, principal, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn execute_action(
        &self,
        request: Request<v1::ExecuteActionRequest>,
    ) -> Result<Response<v1::ExecuteActionResponse>, Status> {
        let principal = self.0.require(&request, Capability::Actions)?;
        let actions = self.0.actions()?;
        let response = action_service::execute_action(&self.0, actions, principal, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn get_action_job(
        &self,
        request: Request<v1::GetActionJobRequest>,
    ) -> Result<Response<v1::GetActionJobResponse>, Status> {
        self.0.require(&request, Capability::Actions)?;
        let job = action_service::get_job(self.0.actions()?, &request.get_ref().job_id)?;
        Ok(Response::new(v1::GetActionJobResponse { job: Some(job) }))
    }

    async fn watch_action_job(
        &self,
        request: Request<v1::WatchActionJobRequest>,
    ) -> Result<Response<Self::WatchActionJobStream>, Status> {
        self.0.require(&request, Capability::Actions)?;
        let stream = action_service::watch_job(self.0.actions()?, &request.get_ref().job_id, self.0.shutdown.clone())?;
        Ok(Response::new(stream))
    }

    async fn execute_transaction(
        &self,
        request: Request<v1::ExecuteTransactionRequest>,
    ) -> Result<Response<v1::ExecuteTransactionResponse>, Status> {
        let principal = self.0.require(&request, Capability::Actions)?;
        let (actions, transactions) = (self.0.actions()?, self.0.transactions()?);
        let response = tx_service::execute(&self.0, actions, transactions, principal, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn get_transaction(
        &self,
        request: Request<v1::GetTransactionRequest>,
    ) -> Result<Response<v1::GetTransactionResponse>, Status> {
        self.0.require(&request, Capability::Actions)?;
        let transaction = tx_service::get(self.0.transactions()?, &request.get_ref().tx_id).await?;
        Ok(Response::new(v1::GetTransactionResponse { transaction: Some(transaction) }))
    }

    async fn list_transactions(
        &self,
        request: Request<v1::ListTransactionsRequest>,
    ) -> Result<Response<v1::ListTransactionsResponse>, Status> {
        self.0.require(&request, Capability::Actions)?;
        let response = tx_service::list(self.0.transactions()?, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn action_history(
        &self,
        request: Request<v1::ActionHistoryRequest>,
    ) -> Result<Response<v1::ActionHistoryResponse>, Status> {
        let principal = self.0.require(&request, Capability::Actions)?;
        let response = action_service::history(self.0.actions()?, &principal, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.0.require(&request, Capability::Admin)?;
        let kinds = crate::events::kinds_from_wire(&request.get_ref().kinds).map_err(MasterError::InvalidArgument)?;
        let live = self.0.events.subscribe();
        Ok(Response::new(crate::events::stream::watch(live, kinds, self.0.shutdown.clone())))
    }

    async fn search(&self, request: Request<v1::SearchRequest>) -> Result<Response<v1::SearchResponse>, Status> {
        let started = Instant::now();
        let registry = self.0.registry()?;
        let principal = self.0.require(&request, Capability::Search)?;
        let strategy = validate_search(request.get_ref())?;
        let budget = self.search_budget(&request)?;
        let req = request.into_inner();
        let deadline = started + budget.saturating_sub(merge_margin(budget));

        // The epoch goes with the snapshot; each group's last assigned sequence is read after
        // it, so a replica the snapshot shows at `last` had applied it before any call.
        let (epoch, nodes) = registry.snapshot_at_epoch();
        let health = &self.0.health;
        let replicas = federation::replicas_of(&nodes, |node| health.snapshot(node).is_some_and(|h| h.refuses_calls()));
        let mut plan = federation::plan(&replicas, &req.collections, &req.nodes).map_err(|unknown| {
            MasterError::UnknownNodes { unknown, known: nodes.iter().map(|n| n.record.name.clone()).collect() }
        })?;
        let summaries = registry.term_summaries();
        let readings = federation::QueryReadings::new(&self.0.routing, &req.query);
        federation::skip_no_match(&mut plan, &summaries, &req.collections, &readings);
        let replication = self.0.replication()?;
        let considered = federation::considered(&replicas, &req.nodes).map(|r| r.group.as_str());
        let freshness = Freshness::read(epoch, &nodes, considered, |group| replication.log_state(group).last);
        let limit = if req.limit == 0 { 10 } else { req.limit };
        let scope = Scope::of(&principal);
        let key = result_cache::result_key(&scope, &req, limit, strategy, &plan, &freshness);
        let search = Search {
            query: req.query,
            collections: req.collections,
            limit,
            min_score: req.min_score,
            principal,
            budget,
            nodes: req.nodes,
            strategy,
            plan,
            replicas,
            freshness,
            scope,
            deadline,
            summaries,
            readings,
        };
        let (mut response, served) =
            self.0.result_cache.serve(Some(key), req.bypass_cache, || self.fan_out(&search)).await?;
        response.took_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        response.cached = served.cached();
        Ok(Response::new(response))
    }

    async fn stats(&self, request: Request<v1::StatsRequest>) -> Result<Response<v1::StatsResponse>, Status> {
        self.0.require(&request, Capability::Admin)?;
        Ok(Response::new(crate::stats::build(self.0.registry()?.snapshot())))
    }

    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        self.0.require(&request, Capability::Admin)?;
        let registry = self.0.registry()?;
        let views = registry.snapshot();
        // One pass over the nodes, not one per group: a thousand single-node groups made this
        // a million comparisons.
        let members = convert::by_group(&views);
        let groups = registry
            .groups()
            .into_iter()
            .map(|g| {
                let replicas = members.get(g.as_str()).map_or(&[][..], Vec::as_slice);
                convert::group_info(&g, replicas, registry.group_log(&g))
            })
            .collect();
        let health = &self.0.health;
        let nodes = views
            .into_iter()
            .map(|view| {
                let snapshot = health.snapshot(&view.record.name);
                convert::node_info(view, snapshot)
            })
            .collect();
        Ok(Response::new(v1::ListNodesResponse { nodes, groups }))
    }

    async fn get_node(&self, request: Request<v1::GetNodeRequest>) -> Result<Response<v1::GetNodeResponse>, Status> {
        let registry = self.0.registry()?;
        self.0.require(&request, Capability::Admin)?;
        let name = request.into_inner().name;
        let view = registry.get(&name).ok_or_else(|| MasterError::UnknownNodes {
            unknown: vec![name],
            known: registry.snapshot().into_iter().map(|n| n.record.name.clone()).collect(),
        })?;
        let health = self.0.health.snapshot(&view.record.name);
        Ok(Response::new(v1::GetNodeResponse { node: Some(convert::node_info(view, health)) }))
    }

    async fn ingest_documents(
        &self,
        request: Request<v1::IngestDocumentsRequest>,
    ) -> Result<Response<v1::IngestDocumentsResponse>, Status> {
        let principal = self.0.require(&request, Capability::Ingest)?;
        let req = request.into_inner();
        if req.documents.is_empty() {
            return Err(MasterError::InvalidArgument("no documents in the request".into()).into());
        }
        if req.documents.len() > MAX_BATCH {
            return Err(MasterError::InvalidArgument(format!(
                "{} documents in one request; send at most {MAX_BATCH} per call",
                req.documents.len()
            ))
            .into());
        }
        let upserted = u32::try_from(req.documents.len()).unwrap_or(u32::MAX);
        let write = Write::Upsert(v1::UpsertDocumentsRequest { documents: req.documents, position: None });
        let outcome = self.replicate(&req.node, &req.shard, &principal, write).await?;
        Ok(Response::new(v1::IngestDocumentsResponse {
            upserted,
            generation: self.generation_after(&outcome, &req.node),
            shard: outcome.shard.clone(),
            seq: outcome.seq,
            replicas: convert::replica_writes(&outcome.replicas),
        }))
    }

    async fn remove_documents(
        &self,
        request: Request<v1::RemoveDocumentsRequest>,
    ) -> Result<Response<v1::RemoveDocumentsResponse>, Status> {
        let principal = self.0.require(&request, Capability::Ingest)?;
        let req = request.into_inner();
        if req.refs.is_empty() {
            return Err(MasterError::InvalidArgument("no document references in the request".into()).into());
        }
        let removed = u32::try_from(req.refs.len()).unwrap_or(u32::MAX);
        let write = Write::Delete(v1::DeleteDocumentsRequest { refs: req.refs, position: None });
        let outcome = self.replicate(&req.node, &req.shard, &principal, write).await?;
        Ok(Response::new(v1::RemoveDocumentsResponse {
            removed,
            generation: self.generation_after(&outcome, &req.node),
            shard: outcome.shard.clone(),
            seq: outcome.seq,
            replicas: convert::replica_writes(&outcome.replicas),
        }))
    }
}

impl MasterApi {
    /// Sends a write through its group's log: `shard` names the group, or `node` a replica of it.
    /// The caller is recorded as the writer of the entry, so every replica stores the documents
    /// with the owner the caller's context gives them, however late the entry reaches it.
    async fn replicate(
        &self,
        node: &str,
        shard: &str,
        principal: &Principal,
        write: Write,
    ) -> Result<WriteOutcome, MasterError> {
        let target = match (node.is_empty(), shard.is_empty()) {
            (_, false) if !node.is_empty() => {
                return Err(MasterError::InvalidArgument(
                    "set node or shard, not both: a write goes to one shard group".into(),
                ));
            }
            (_, false) => WriteTarget::Shard(shard.to_owned()),
            (false, true) => WriteTarget::Node(node.to_owned()),
            (true, true) => WriteTarget::Shard(String::new()),
        };
        let writer = Writer {
            subject: principal.subject.clone(),
            tenant: principal.tenant.clone(),
            capabilities: principal.capabilities.iter().copied().collect(),
        };
        let deadline = Instant::now() + WRITE_TIMEOUT;
        Ok(self.0.replication()?.write(target, writer, write, deadline).await?)
    }

    /// The generation after an acknowledged write: of the replica named in the request if it
    /// applied it, else the highest of the replicas that did.
    fn generation_after(&self, outcome: &WriteOutcome, node: &str) -> u64 {
        let Ok(registry) = self.0.registry() else { return 0 };
        let applied = outcome.replicas.iter().filter(|r| r.applied);
        let generation = |name: &str| registry.get(name).map_or(0, |v| v.record.generation);
        if let Some(named) = outcome.replicas.iter().find(|r| r.applied && r.node == node) {
            return generation(&named.node);
        }
        applied.map(|r| generation(&r.node)).max().unwrap_or(0)
    }
}

/// A search ready to fan out: what the cache keyed, and what the fan-out needs.
struct Search {
    query: String,
    collections: Vec<String>,
    limit: u32,
    min_score: f64,
    /// The caller, signed into the nodes' query only when a fan-out runs (not for a cache hit).
    principal: Principal,
    /// The caller's budget, the signed context's life.
    budget: Duration,
    nodes: Vec<String>,
    strategy: merge::Strategy,
    plan: federation::Plan,
    replicas: Vec<federation::Replica>,
    freshness: Freshness,
    scope: Scope,
    deadline: Instant,
    /// The nodes' term summaries as the search began: they name each group's analysis profile,
    /// which the statistics cache analyses the query with.
    summaries: std::collections::BTreeMap<String, federation::NodeTermSummary>,
    /// The query as each analysis profile reads it: routing made the first readings, the
    /// statistics cache's term lookup reuses them.
    readings: federation::QueryReadings,
}

impl MasterApi {
    /// The statistics phase of a global-BM25 search: targets whose statistics are cached (every
    /// term of the query, or this exact query) are not asked. Returns the summed statistics, the
    /// targets to search and the groups that failed the phase (reported as failed, not searched).
    async fn statistics(
        &self,
        search: &Search,
        query: &NodeQuery,
    ) -> (v1::TermStatistics, Vec<federation::GroupTarget>, Vec<federation::GroupResult>) {
        let cache = &self.0.stats_cache;
        let mut known = Vec::new();
        let mut ask = Vec::new();
        for target in &search.plan.targets {
            let profile = stats_cache::group_profile(target, &search.summaries);
            let lookup =
                cache.prepare(&search.scope, &query.query, target, profile, &search.freshness, &search.readings);
            match cache.get(&lookup, &search.scope, target, &search.freshness).await {
                Some(cached) => known.push((target.clone(), cached)),
                None => ask.push((target.clone(), lookup)),
            }
        }
        let mut gathered = Vec::new();
        if !ask.is_empty() {
            // The statistics phase gets at most half of what is left, so the search keeps time.
            let now = Instant::now();
            let phase_deadline = now + search.deadline.saturating_duration_since(now) / 2;
            let targets: Vec<_> = ask.iter().map(|(target, _)| target.clone()).collect();
            gathered = federation::gather_statistics(&self.0.node_client, &targets, query, phase_deadline).await;
        }
        for (result, (target, lookup)) in gathered.iter().zip(ask) {
            if let Ok((node, reply)) = &result.answer
                && search.freshness.holds(&result.target.group, node)
            {
                cache.insert(lookup, &search.scope, &target, &search.freshness, node, reply.clone()).await;
            }
        }
        let answered = known.iter().map(|(_, cached)| cached).chain(
            gathered.iter().filter_map(|g| g.answer.as_ref().ok().and_then(|(_, reply)| reply.statistics.as_ref())),
        );
        let statistics = merge::sum_statistics(answered);
        let targets = search
            .plan
            .targets
            .iter()
            .filter(|target| {
                known.iter().any(|(t, _)| t.target == target.target)
                    || gathered.iter().any(|g| g.target.target == target.target && g.answer.is_ok())
            })
            .cloned()
            .collect();
        let unscored = gathered.into_iter().filter_map(federation::StatisticsResult::into_failed_search).collect();
        (statistics, targets, unscored)
    }

    /// One fan-out of `search` and its merge, with whether the answer is complete (every routed
    /// group answered) and fresh (every answering replica had applied its group's `last`).
    async fn fan_out(&self, search: &Search) -> Result<Answer, MasterError> {
        let context = self.0.access()?.context(&search.principal, search.budget)?;
        let mut query = NodeQuery {
            query: search.query.clone(),
            collections: search.collections.clone(),
            limit: search.limit,
            min_score: search.min_score,
            context,
            statistics: None,
        };
        let mut targets = search.plan.targets.clone();
        let mut unscored = Vec::new();
        let plan = &search.plan;
        if search.strategy == merge::Strategy::GlobalBm25 && targets.iter().any(|t| !plan.proven_no_match(t)) {
            let (statistics, scored, failed) = self.statistics(search, &query).await;
            query.statistics = Some(statistics);
            targets = scored;
            unscored = failed;
        }
        // Groups proven not to match gave their statistics above; they are not asked to search.
        targets.retain(|target| !plan.proven_no_match(target));
        let mut groups = federation::fan_out(&self.0.node_client, &targets, &query, search.deadline).await;
        groups.extend(unscored);
        self.0.metrics.record_search(&search.plan, &groups);
        let complete = search.plan.unanswerable.is_empty() && groups.iter().all(|g| g.answer.is_ok());
        let fresh = groups.iter().all(|g| match &g.answer {
            Ok((node, _)) => search.freshness.holds(&g.target.group, node),
            Err(_) => true,
        });
        let reports = federation::group_reports(plan, &groups);
        let results = federation::node_results(plan, groups);
        // An answer no node gave is an error, never "OK, zero hits".
        federation::verdict(&results, &search.replicas, &search.nodes, &query.collections).map_err(|failure| {
            match failure {
                NoAnswer::NoNodes => MasterError::NoNodes,
                NoAnswer::NoSuchCollections { requested, existing } => {
                    MasterError::NoSuchCollections { requested, existing }
                }
                NoAnswer::NoneAnswered { kind, summary } => MasterError::NoAnswer { kind, summary },
            }
        })?;

        let outcomes = results.iter().map(convert::outcome).collect();
        let lists = results
            .into_iter()
            .filter_map(|r| match r.outcome {
                Outcome::Ok { hits, .. } => Some(hits),
                _ => None,
            })
            .collect();
        let limit = query.limit as usize;
        let merged = match search.strategy {
            merge::Strategy::GlobalBm25 | merge::Strategy::Raw => merge::merge_by_score(lists, limit),
            merge::Strategy::Rrf => merge::merge_rrf(lists, limit),
        };
        let hits = merged.into_iter().map(convert::hit).collect();
        let response = v1::SearchResponse {
            hits,
            nodes: outcomes,
            took_ms: 0,
            merge_strategy: search.strategy.as_str().to_owned(),
            groups: reports.into_iter().map(convert::group_outcome).collect(),
            cached: false,
        };
        Ok(Answer { response, complete, fresh })
    }
}

impl MembershipApi {
    fn pacing(&self) -> Pacing {
        Pacing { max_per_second: self.0.config.max_heartbeats_per_second, timeout: self.0.config.heartbeat_timeout }
    }

    /// A node joins once, with a join token; after that it is known (persisted) and re-registers
    /// freely until evicted. Refused attempts are listed for operators (`ListPendingNodes`).
    async fn admit(
        &self,
        registry: &Registry,
        access: &Arc<AccessControl>,
        node: &str,
        address: &str,
        join_token: &str,
    ) -> Result<(), MasterError> {
        if registry.get(node).is_some() || !access.admission_required() {
            return Ok(());
        }
        let refuse = |reason: String| {
            access.record_pending(node, address, &reason);
            self.0.events.publish(crate::events::Draft {
                kind: crate::events::EventKind::AdmissionRefused,
                detail: crate::events::Detail {
                    node: node.to_owned(),
                    address: address.to_owned(),
                    message: reason.clone(),
                    ..Default::default()
                },
            });
            tracing::warn!(node.id = node, node.address = address, reason = %reason, "join refused");
            MasterError::NotAdmitted { node: node.to_owned(), reason }
        };
        if join_token.is_empty() {
            return Err(refuse("it presented no join token".to_owned()));
        }
        let (access2, token, name) = (access.clone(), join_token.to_owned(), node.to_owned());
        let consumed =
            tokio::task::spawn_blocking(move || access2.joins.consume(&token, &name, ragmesh_auth::unix_now()))
                .await
                .map_err(|e| MasterError::InvalidArgument(format!("join check failed: {e}")))?;
        match consumed {
            Ok(info) if registry.evicted_at(node).is_some_and(|evicted| info.created_at <= evicted) => {
                Err(refuse(format!(
                    "it was evicted by an operator, and join tokens created before the eviction cannot readmit it (token {})",
                    info.id
                )))
            }
            Ok(info) => {
                access.clear_pending(node);
                tracing::info!(node.id = node, join_token.id = %info.id, "node admitted");
                Ok(())
            }
            Err(err) => Err(refuse(err.to_string())),
        }
    }
}

#[tonic::async_trait]
impl MembershipService for MembershipApi {
    async fn register(&self, request: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let registry = self.0.registry()?.clone();
        let claimed = request.get_ref().node_name.clone();
        if !ragmesh_config::valid_node_name(&claimed) {
            return Err(MasterError::InvalidArgument(format!(
                "node name {claimed:?} is invalid: use 1-63 characters of a-z, 0-9 and '-'"
            ))
            .into());
        }
        self.0.check_identity(&request, &claimed)?;
        let req = request.into_inner();
        if !req.shard.is_empty() && !ragmesh_config::valid_node_name(&req.shard) {
            return Err(MasterError::InvalidArgument(format!(
                "shard group {:?} is invalid: use 1-63 characters of a-z, 0-9 and '-'",
                req.shard
            ))
            .into());
        }
        if req.protocol_major != PROTOCOL_MAJOR {
            self.0.events.publish(crate::events::Draft {
                kind: crate::events::EventKind::VersionMismatch,
                detail: crate::events::Detail {
                    node: claimed.clone(),
                    address: req.advertised_address.clone(),
                    agent_protocol: format!("{}.{}", req.protocol_major, req.protocol_minor),
                    message: format!(
                        "agent {} speaks protocol {}.{}, the master {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}: upgrade one of them",
                        req.version, req.protocol_major, req.protocol_minor
                    ),
                    ..Default::default()
                },
            });
            return Err(MasterError::ProtocolMismatch {
                node: claimed,
                agent_major: req.protocol_major,
                agent_minor: req.protocol_minor,
                master_major: PROTOCOL_MAJOR,
                master_minor: PROTOCOL_MINOR,
            }
            .into());
        }
        if req
            .advertised_address
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(MasterError::InvalidArgument(format!(
                "advertised address {:?} is not HOST:PORT",
                req.advertised_address
            ))
            .into());
        }
        let access = self.0.access()?.clone();
        let _turn = self.0.registrations.acquire().await.map_err(|_| MasterError::NotReady)?;
        self.admit(&registry, &access, &claimed, &req.advertised_address, &req.join_token).await?;
        let pacing = self.pacing();
        let agreed = pacing.agreed(req.heartbeat_interval_ms);
        let follows_pace = req.protocol_minor >= 1;
        let record = NodeRecord {
            name: claimed.clone(),
            address: req.advertised_address,
            version: req.version,
            protocol_major: req.protocol_major,
            protocol_minor: req.protocol_minor,
            collections: convert::collections_from_wire(req.collections),
            labels: req.labels.into_iter().collect(),
            generation: req.generation,
            registered_at_ms: convert::now_ms(),
            heartbeat_interval_ms: u64::try_from(agreed.as_millis()).unwrap_or(u64::MAX),
            shard: if req.shard.is_empty() { claimed.clone() } else { req.shard },
        };
        let applied_seq = req.applied_seq;
        let address = record.address.clone();
        let registering = registry.clone();
        let session = tokio::task::spawn_blocking(move || registering.register_at(record, applied_seq))
            .await
            .map_err(|e| Status::internal(format!("registration task failed: {e}")))?
            .map_err(MasterError::from)?;
        // The fleet counted after this node joined it; a 1.0 agent keeps its agreed interval.
        let interval = if follows_pace { pacing.pace(agreed, registry.beating()).interval } else { agreed };
        tracing::info!(
            node.id = %claimed,
            node.address = %address,
            session = %session,
            heartbeat_interval_ms = interval.as_millis(),
            "node registered"
        );
        Ok(Response::new(v1::RegisterResponse {
            session_id: session.0,
            heartbeat_interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            master_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            verification_keys: access.public_keys(),
        }))
    }

    type HealthStreamStream = Outbound;

    async fn health_stream(
        &self,
        request: Request<Streaming<v1::HealthStreamRequest>>,
    ) -> Result<Response<Self::HealthStreamStream>, Status> {
        let registry = self.0.registry()?.clone();
        let timeout = self.0.config.heartbeat_timeout;
        // Identity is checked before anything is read: a certificate that is not a registered
        // agent cannot hold a stream open, not even until the first-heartbeat timeout.
        let identity = match self.0.config.tls {
            Some(_) => Some(ragmesh_tls::peer_identity_of(&request).ok_or(MasterError::NoPeerIdentity)?),
            None => None,
        };
        if let Some(identity) = &identity {
            if registry.get(&identity.name).is_none() {
                return Err(MasterError::NotAnAgent { name: identity.name.clone() }.into());
            }
            if registry.session(&identity.name).is_none() {
                return Err(MasterError::UnknownSession { node: identity.name.clone() }.into());
            }
        }
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(timeout, inbound.message()).await {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => return Err(Status::invalid_argument("health stream closed before its first heartbeat")),
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no heartbeat within {} ms of opening the health stream",
                    timeout.as_millis()
                )));
            }
        };
        if let Some(identity) = identity
            && !identity.is(&first.node_name)
        {
            return Err(MasterError::IdentityMismatch { cert_name: identity.name, claimed: first.node_name }.into());
        }
        let session = SessionId(first.session_id.clone());
        if registry.session(&first.node_name).as_ref() != Some(&session) {
            return Err(MasterError::UnknownSession { node: first.node_name }.into());
        }
        let (agreed, follows_pace) = registry.get(&first.node_name).map_or((Duration::from_secs(1), false), |v| {
            (Duration::from_millis(v.record.heartbeat_interval_ms), v.record.protocol_minor >= 1)
        });
        let (tx, done, outbound) = membership::outbound(self.0.access()?.subscribe_keys());
        let watcher = StreamWatcher {
            registry,
            node: first.node_name.clone(),
            session,
            agreed,
            pacing: self.pacing(),
            follows_pace,
            tx,
            done,
            shutdown: self.0.shutdown.clone(),
            transactions: self.0.transactions.get().cloned(),
        };
        let span = tracing::info_span!("membership.health_stream", node.id = %first.node_name);
        self.0.tasks.spawn(tracing::Instrument::instrument(watcher.run(first, inbound), span));
        Ok(Response::new(outbound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses_every_unit() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }
}
