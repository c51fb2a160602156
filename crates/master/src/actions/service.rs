//! The master's action RPCs: listing what nodes offer, running an action on one node or many
//! (a job driven by a `JoinSet`, durable in the [`JobTable`]), idempotency, the audit trail and
//! history. `api.rs` authenticates and hands over; errors go back as [`MasterError`].
//!
//! A call on the nodes goes: select the nodes (pure, [`super::selector`]), fetch each node's
//! descriptor of the action (cached briefly per node) and validate the arguments against it
//! (all problems at once, before anything runs or a key is used), decide with the idempotency
//! key (replay, conflict, or run), create the job (nodes down at the start are not started),
//! then run: every node call carries a fresh `call_id` (so one resend after a transport failure
//! cannot run it twice), is audited, and ends in the job.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument as _;

use futures::Stream;
use prost::Message as _;
use ragmesh_auth::{Capability, Principal};
use ragmesh_proto::v1;
use ragmesh_stack::node_call::{CallError, NodeCall, NodeReply, NodeRequest, Target};
use ragmesh_store::StateStore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::audit::{AuditConfig, AuditEntry, AuditFilter, AuditLog, AuditRecord, CallKind, Outcome};
use super::idempotency::{Begin, IdempotencyConfig, IdempotencyKeys, Scope, StoredResult};
use super::jobs::{Job, JobTable, JobsConfig, NodeOutcome, NodeState, RunningJob, UNKNOWN};
use super::selector::{self, Candidate, Selector};
use super::{RecordError, unix_now_ms};
use crate::api::Context;
use crate::error::MasterError;

/// Nodes running at once in a job when the caller does not say.
pub(crate) const DEFAULT_MAX_PARALLEL: usize = 16;
/// Most nodes running at once, whatever the caller asks.
pub(crate) const MAX_PARALLEL: usize = 256;
/// How long a node's list of actions is reused before it is asked again.
const DESCRIPTOR_TTL: Duration = Duration::from_secs(5);
/// Deadline of a ListActions call.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time given to a run on top of the action's own timeout (connection, queueing, answer).
const RUN_MARGIN: Duration = Duration::from_secs(5);
/// Timeout assumed for an action whose descriptor gives none.
const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Audit records a history page holds by default, and at most.
const HISTORY_DEFAULT: usize = 50;
const HISTORY_MAX: usize = 1000;
/// Tree and key of the master's secret for argument digests.
const KEYS_TREE: &str = "action_keys";
const DIGEST_KEY: &[u8] = b"digest_key";

/// Each node's actions and when they were fetched.
type DescriptorCache = HashMap<String, (Instant, Vec<v1::ActionDescriptor>)>;

/// The records and caches of remote actions; a clone shares them.
#[derive(Debug, Clone)]
pub(crate) struct Actions {
    keys: IdempotencyKeys,
    audit: Arc<AuditLog>,
    jobs: JobTable,
    digest_key: Arc<[u8]>,
    descriptors: Arc<Mutex<DescriptorCache>>,
}

impl Actions {
    /// Opens the tables over the master's store (blocking) and loads or creates the digest key.
    pub(crate) fn open(
        store: Arc<dyn StateStore>,
        config: &ragmesh_config::ActionsConfig,
    ) -> Result<Self, RecordError> {
        let now_ms = unix_now_ms();
        let keys = IdempotencyKeys::open(
            store.clone(),
            IdempotencyConfig { ttl: config.idempotency_ttl, max_keys: config.idempotency_max_keys },
            now_ms,
        )?;
        let audit = AuditLog::open(
            store.clone(),
            AuditConfig { max_records: config.audit_max_records, max_age: config.audit_max_age },
        )?;
        let jobs = JobTable::open(store.clone(), JobsConfig { max_jobs: config.max_jobs }, now_ms)?;
        let digest_key = match store.get(KEYS_TREE, DIGEST_KEY)? {
            Some(key) if key.len() >= 32 => key,
            _ => {
                let key = rand::random::<[u8; 32]>().to_vec();
                store.put(KEYS_TREE, DIGEST_KEY, &key)?;
                key
            }
        };
        Ok(Actions { keys, audit: Arc::new(audit), jobs, digest_key: digest_key.into(), descriptors: Arc::default() })
    }

    /// The idempotency table (for its sweeper).
    pub(crate) fn keys(&self) -> &IdempotencyKeys {
        &self.keys
    }

    /// The master's secret key of argument digests.
    pub(crate) fn digest_key(&self) -> &[u8] {
        &self.digest_key
    }

    /// The audit log (for its sweeper).
    pub(crate) fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    fn cached(&self, node: &str) -> Option<Vec<v1::ActionDescriptor>> {
        let cache = self.descriptors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get(node).filter(|(at, _)| at.elapsed() < DESCRIPTOR_TTL).map(|(_, list)| list.clone())
    }

    fn remember(&self, node: &str, list: Vec<v1::ActionDescriptor>) {
        let mut cache = self.descriptors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded by the nodes that answered recently: stale entries go on every insert.
        cache.retain(|_, (at, _)| at.elapsed() < DESCRIPTOR_TTL);
        cache.insert(node.to_owned(), (Instant::now(), list));
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RecordError> + Send + 'static,
) -> Result<T, RecordError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| RecordError::Task(e.to_string()))?
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The caller's signed context for agents, valid `ttl`.
pub(super) fn signed_context(
    ctx: &Context,
    principal: &Principal,
    ttl: Duration,
) -> Result<NodeCallContext, MasterError> {
    ctx.access()?.context(principal, ttl)
}

pub(super) type NodeCallContext = tonic::metadata::AsciiMetadataValue;

/// Sends one request to exactly `node`; a repeatable request is sent once more after a
/// transport failure when the deadline leaves time (the agent deduplicates it).
pub(super) async fn call_node(
    ctx: &Context,
    node: &str,
    request: NodeRequest,
    context: Option<NodeCallContext>,
    deadline: Instant,
) -> Result<NodeReply, CallError> {
    let repeatable = request.is_repeatable();
    let mut call = NodeCall::new(Target::Node(node.to_owned()), request, deadline);
    if let Some(context) = context {
        call = call.with_context(context);
    }
    let first = ctx.node_client.clone().oneshot(call.clone()).await;
    match first {
        Err(CallError::Unavailable(_)) if repeatable && call.budget(Instant::now()) > Duration::from_millis(100) => {
            call.kind = ragmesh_stack::node_call::AttemptKind::Retry;
            ctx.node_client.clone().oneshot(call).await.map(|a| a.reply)
        }
        other => other.map(|a| a.reply),
    }
}

/// A call error in the outcome vocabulary: status word and message.
fn call_error_words(error: &CallError) -> (&'static str, String) {
    match error {
        CallError::Timeout { .. } => ("timeout", error.to_string()),
        CallError::Unavailable(message) => ("unavailable", message.clone()),
        CallError::BreakerOpen { .. } => ("unavailable", error.to_string()),
        CallError::Error { kind, message } | CallError::Rejected { kind, message, .. } => {
            ("error", format!("{kind}: {message}"))
        }
    }
}

/// The node's actions, from the cache or asked now in `principal`'s name (an agent answers
/// only requests the master signed; any caller may see what a node offers).
async fn descriptors(
    ctx: &Context,
    actions: &Actions,
    principal: &Principal,
    node: &str,
) -> Result<Vec<v1::ActionDescriptor>, CallError> {
    if let Some(list) = actions.cached(node) {
        return Ok(list);
    }
    let context = signed_context(ctx, principal, LIST_TIMEOUT)
        .map_err(|err| CallError::Error { kind: ragmesh_proto::ErrorKind::Internal, message: err.to_string() })?;
    let deadline = Instant::now() + LIST_TIMEOUT;
    match call_node(ctx, node, NodeRequest::ListActions(v1::ListActionsRequest {}), Some(context), deadline).await? {
        NodeReply::ListActions(reply) => {
            actions.remember(node, reply.actions.clone());
            Ok(reply.actions)
        }
        _ => Err(ragmesh_stack::endpoint::unexpected_reply(node, "ListActions")),
    }
}

/// `ListNodeActions`: each node's actions, or why it did not say.
pub(crate) async fn list_node_actions(
    ctx: &Context,
    actions: &Actions,
    principal: Principal,
    request: v1::ListNodeActionsRequest,
) -> Result<v1::ListNodeActionsResponse, MasterError> {
    let views = ctx.registry()?.snapshot();
    let known: Vec<String> = views.iter().map(|v| v.record.name.clone()).collect();
    let unknown: Vec<String> = request.nodes.iter().filter(|n| !known.contains(n)).cloned().collect();
    if !unknown.is_empty() {
        return Err(MasterError::UnknownNodes { unknown, known });
    }
    let asked: Vec<_> = if request.nodes.is_empty() {
        views.into_iter().filter(|v| v.state.is_searchable()).collect()
    } else {
        views.into_iter().filter(|v| request.nodes.contains(&v.record.name)).collect()
    };
    let mut calls = JoinSet::new();
    for (index, view) in asked.into_iter().enumerate() {
        let (ctx, actions, principal) = (ctx.clone(), actions.clone(), principal.clone());
        calls.spawn(async move {
            let node = view.record.name.clone();
            let entry = if view.state.is_searchable() {
                match descriptors(&ctx, &actions, &principal, &node).await {
                    Ok(list) => v1::NodeActions {
                        node,
                        status: v1::OutcomeStatus::Ok.into(),
                        message: String::new(),
                        actions: list,
                    },
                    Err(error) => {
                        let (status, message) = call_error_words(&error);
                        v1::NodeActions { node, status: outcome_status(status).into(), message, actions: Vec::new() }
                    }
                }
            } else {
                v1::NodeActions {
                    node,
                    status: v1::OutcomeStatus::Unavailable.into(),
                    message: format!("node is down ({})", view.down_reason.unwrap_or_else(|| view.state.to_string())),
                    actions: Vec::new(),
                }
            };
            (index, entry)
        });
    }
    let mut nodes: Vec<(usize, v1::NodeActions)> = calls.join_all().await;
    nodes.sort_by_key(|(index, _)| *index);
    Ok(v1::ListNodeActionsResponse { nodes: nodes.into_iter().map(|(_, n)| n).collect() })
}

/// What one node is asked to run, after validation on the master.
#[derive(Debug, Clone)]
struct Prepared {
    /// The action's timeout on this node.
    timeout: Duration,
    /// Digest of the validated arguments, hex.
    digest: String,
    /// The arguments as audited (JSON): secrets, and whatever the node's schema does not show,
    /// as `***`.
    redacted: String,
    /// Why the node cannot run it (it does not offer the action, the caller may not run it,
    /// or its descriptor could not be had): the node's ERROR outcome, without asking the node.
    refusal: Option<(String, String)>,
    /// Values of the arguments the node's schema flags secret: masked in what the node answers
    /// (a program may echo them), so they are never stored, shown or replayed.
    secrets: Vec<String>,
}

/// Everything a job's driver needs, shared by its node tasks.
#[derive(Debug)]
struct Plan {
    action: String,
    args: BTreeMap<String, String>,
    principal: Principal,
    kind: CallKind,
    prepared: HashMap<String, Prepared>,
    trace_id: Option<String>,
}

/// `ExecuteAction`.
pub(crate) async fn execute_action(
    ctx: &Context,
    actions: &Actions,
    principal: Principal,
    request: v1::ExecuteActionRequest,
) -> Result<v1::ExecuteActionResponse, MasterError> {
    let call = request.call.ok_or_else(|| {
        MasterError::InvalidArgument("no action call: name the action and its arguments (call.action)".into())
    })?;
    if call.action.trim().is_empty() {
        return Err(MasterError::InvalidArgument("call.action is empty: name the action to run".into()));
    }
    let max_fail_percent = request.max_fail_percent.unwrap_or(100);
    if max_fail_percent > 100 {
        return Err(MasterError::InvalidArgument(format!(
            "max_fail_percent {max_fail_percent} is not a percentage: use 0..=100"
        )));
    }
    let max_parallel = match request.max_parallel as usize {
        0 => DEFAULT_MAX_PARALLEL,
        n => n.min(MAX_PARALLEL),
    };
    let selector = Selector::from(request.selector.unwrap_or_default());
    let views = ctx.registry()?.snapshot();
    let candidates: Vec<Candidate> = views
        .iter()
        .map(|v| Candidate {
            name: v.record.name.clone(),
            labels: v.record.labels.clone(),
            group: v.record.group().to_owned(),
        })
        .collect();
    let nodes = selector::select(&selector, &candidates)?;
    let up: Vec<&String> =
        nodes.iter().filter(|n| views.iter().any(|v| &v.record.name == *n && v.state.is_searchable())).collect();
    let args: BTreeMap<String, String> = call.arguments.into_iter().collect();

    // Validate against every reachable node's descriptor before anything runs.
    let mut prepared = HashMap::new();
    let mut lookups = JoinSet::new();
    for node in up {
        let (ctx, actions, node, principal) = (ctx.clone(), actions.clone(), node.clone(), principal.clone());
        lookups.spawn(
            async move {
                let list = descriptors(&ctx, &actions, &principal, &node).await;
                (node, list)
            }
            .in_current_span(),
        );
    }
    let mut problems = Vec::new();
    for (node, list) in lookups.join_all().await {
        let entry = prepare_node(&node, &principal, &call.action, &args, list, &actions.digest_key, &mut problems);
        prepared.insert(node, entry);
    }
    if !problems.is_empty() {
        problems.sort();
        problems.dedup();
        return Err(MasterError::InvalidArgument(format!(
            "arguments of action {:?} refused: {}",
            call.action,
            problems.join("; ")
        )));
    }
    let selector_text = selector.canonical();

    // Idempotency: decided after validation, so a refused call does not use the key.
    let mut guard = None;
    if !request.idempotency_key.is_empty() {
        let scope = Scope::new(principal.subject.clone(), request.idempotency_key.clone());
        let digest = call_digest(&actions.digest_key, &call.action, &selector_text, &args, request.detach);
        match actions.keys.begin(scope, &digest, unix_now_ms()).await? {
            Begin::Replay(stored) => {
                let mut response: v1::ExecuteActionResponse = stored.decode_as().map_err(MasterError::Records)?;
                response.replayed = true;
                return Ok(response);
            }
            Begin::Run(run) => guard = Some(run),
            refused => {
                return Err(refused.refusal().map_or(MasterError::NotReady, MasterError::Records));
            }
        }
    }

    let kind = if nodes.len() == 1 { CallKind::Single } else { CallKind::Broadcast };
    let action = call.action.clone();
    let down: Vec<(String, String)> = views
        .iter()
        .filter(|v| nodes.contains(&v.record.name) && !v.state.is_searchable())
        .map(|v| (v.record.name.clone(), format!("node is down ({})", v.down_reason.clone().unwrap_or_default())))
        .collect();
    let trace_id = ragmesh_telemetry::propagation::sampled_trace_id(&tracing::Span::current());
    let table = actions.jobs.clone();
    let create = {
        let (action, selector_text, nodes, trace_id) =
            (action.clone(), selector_text.clone(), nodes.clone(), trace_id.clone());
        blocking(move || {
            let now_ms = unix_now_ms();
            let mut running =
                table.create(&action, &selector_text, nodes, max_parallel, max_fail_percent as u8, now_ms, trace_id)?;
            for (node, reason) in &down {
                running.skip(node, reason, now_ms)?;
            }
            Ok(running)
        })
    };
    let running = match create.await {
        Ok(running) => running,
        Err(error) => {
            if let Some(guard) = guard {
                let _ = guard.abandon().await;
            }
            return Err(error.into());
        }
    };
    let plan = Arc::new(Plan { action, args, principal, kind, prepared, trace_id: trace_id.clone() });
    let detached = job_response(running.job());
    let driver = drive(ctx.clone(), actions.clone(), plan, running, ctx.shutdown.clone());
    if request.detach {
        let response = v1::ExecuteActionResponse { job: Some(detached), replayed: false };
        if let Some(guard) = guard {
            complete(guard, &response).await;
        }
        ctx.tasks.spawn(driver.in_current_span());
        return Ok(response);
    }
    // The driver owns the job and the key: a caller that goes away does not stop the nodes
    // already asked, and the key still gets its result.
    let finished = ctx.tasks.spawn(
        async move {
            let job = driver.await;
            let response = v1::ExecuteActionResponse { job: job.as_ref().map(job_response), replayed: false };
            if let (Some(guard), Some(_)) = (guard, job.as_ref()) {
                complete(guard, &response).await;
            }
            response
        }
        .in_current_span(),
    );
    finished.await.map_err(|e| MasterError::Records(RecordError::Task(e.to_string())))
}

/// Records `response` as the key's result; a failure leaves the key in doubt (logged).
async fn complete(guard: super::idempotency::Guard, response: &v1::ExecuteActionResponse) {
    let result = StoredResult {
        status: "ok".into(),
        message: String::new(),
        result: response.encode_to_vec(),
        completed_ms: unix_now_ms(),
    };
    if let Err(error) = guard.complete(result).await {
        tracing::error!(%error, "idempotency result not recorded: the key stays in doubt");
    }
}

/// What the master checked of a transaction's action part before anything is prepared.
#[derive(Debug, Clone)]
pub(crate) struct CheckedPart {
    /// The arguments as audited (JSON), secrets as `***`.
    pub redacted: String,
    /// Values of secret arguments, masked in what the node answers.
    pub secrets: Vec<String>,
}

/// Checks a transaction's action part on `node` as a single call is checked (the node offers
/// the action, the caller may run it there, the arguments fit its schema), and that the action
/// is transactional there. A node whose actions cannot be listed now (down, unreachable) is
/// left to the prepare phase, which then aborts the transaction with its reason.
pub(crate) async fn check_part(
    ctx: &Context,
    actions: &Actions,
    principal: &Principal,
    node: &str,
    call: &v1::ActionCall,
) -> Result<CheckedPart, MasterError> {
    let args: BTreeMap<String, String> = call.arguments.clone().into_iter().collect();
    let list = match descriptors(ctx, actions, principal, node).await {
        Ok(list) => list,
        Err(_) => return Ok(CheckedPart { redacted: hidden(&args), secrets: Vec::new() }),
    };
    if list.iter().any(|d| d.name == call.action && !d.transactional) {
        return Err(MasterError::CannotTakePart {
            node: node.to_owned(),
            reason: format!(
                "action {:?} is not transactional there (it declares no prepare/commit/abort steps)",
                call.action
            ),
        });
    }
    let mut problems = Vec::new();
    let prepared = prepare_node(node, principal, &call.action, &args, Ok(list), &actions.digest_key, &mut problems);
    if !problems.is_empty() {
        return Err(MasterError::InvalidArgument(format!(
            "arguments of action {:?} on node {node} refused: {}",
            call.action,
            problems.join("; ")
        )));
    }
    if let Some((_, reason)) = prepared.refusal {
        return Err(MasterError::CannotTakePart { node: node.to_owned(), reason });
    }
    Ok(CheckedPart { redacted: prepared.redacted, secrets: prepared.secrets })
}

/// Checks `principal` may run `action` on the node and validates `args` against the node's
/// descriptor of it; argument problems go to `problems` (the call is refused), other failures
/// (not offered, not allowed, no descriptor) become the node's refusal.
fn prepare_node(
    node: &str,
    principal: &Principal,
    action: &str,
    args: &BTreeMap<String, String>,
    list: Result<Vec<v1::ActionDescriptor>, CallError>,
    key: &[u8],
    problems: &mut Vec<String>,
) -> Prepared {
    let refuse = |status: &str, message: String| Prepared {
        timeout: DEFAULT_ACTION_TIMEOUT,
        digest: String::new(),
        redacted: hidden(args),
        refusal: Some((status.to_owned(), message)),
        secrets: Vec::new(),
    };
    let list = match list {
        Ok(list) => list,
        Err(error) => {
            let (status, message) = call_error_words(&error);
            return refuse(status, format!("cannot list the node's actions: {message}"));
        }
    };
    let Some(descriptor) = list.iter().find(|d| d.name == action) else {
        let offered: Vec<&str> = list.iter().map(|d| d.name.as_str()).collect();
        return refuse("error", format!("node {node} does not offer action {action:?}; it offers {offered:?}"));
    };
    if let Err(reason) = may_run(principal, descriptor) {
        return refuse("error", format!("node {node} refuses action {action:?} to this caller: {reason}"));
    }
    let schema = match ragmesh_actions::wire::argument_schema(descriptor) {
        Ok(schema) => schema,
        Err(message) => return refuse("error", message),
    };
    let timeout = match descriptor.timeout_ms {
        0 => DEFAULT_ACTION_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    match ragmesh_actions::validate_args(action, &schema, args) {
        Ok(valid) => Prepared {
            timeout,
            digest: hex(&ragmesh_actions::digest(key, &valid)),
            redacted: serde_json::to_string(&ragmesh_actions::redacted_args(&schema, args)).unwrap_or_default(),
            refusal: None,
            secrets: schema
                .iter()
                .filter(|spec| spec.secret)
                .filter_map(|spec| args.get(&spec.name))
                .filter(|value| !value.is_empty())
                .cloned()
                .collect(),
        },
        Err(found) => {
            problems.extend(found.iter().map(ToString::to_string));
            refuse("error", "arguments refused".into())
        }
    }
}

/// Whether `principal` may run the action `descriptor` describes, decided as the agent decides
/// it ([`ragmesh_actions::authorize`]; the agent checks again: this only spares a call it would
/// refuse).
fn may_run(principal: &Principal, descriptor: &v1::ActionDescriptor) -> Result<(), String> {
    let capability = match descriptor.capability.as_str() {
        "" => ragmesh_actions::spec::DEFAULT_CAPABILITY,
        named => named,
    };
    ragmesh_actions::authorize(principal, capability, &descriptor.tenants)
}

/// Every value hidden: the arguments of a call no schema describes (JSON).
fn hidden(args: &BTreeMap<String, String>) -> String {
    let shown: BTreeMap<&String, &str> = args.keys().map(|k| (k, ragmesh_actions::REDACTED)).collect();
    serde_json::to_string(&shown).unwrap_or_default()
}

/// HMAC-SHA256 of `bytes` under `key`, hex.
pub(crate) fn keyed_digest(key: &[u8], bytes: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex(ring::hmac::sign(&key, bytes).as_ref())
}

/// The idempotency digest of a call: keyed, over the action, the selector, the arguments and
/// whether it detaches (which changes the answer).
fn call_digest(key: &[u8], action: &str, selector: &str, args: &BTreeMap<String, String>, detach: bool) -> String {
    use ragmesh_actions::{ArgKind, ArgSpec};
    let mut all = args.clone();
    // Reserved names (`@...` is never a valid argument name) carry the rest of the call.
    all.insert("@action".into(), action.to_owned());
    all.insert("@selector".into(), selector.to_owned());
    all.insert("@detach".into(), detach.to_string());
    let schema: Vec<ArgSpec> = all.keys().map(|name| ArgSpec::new(name, ArgKind::String)).collect();
    match ragmesh_actions::validate_args("@call", &schema, &all) {
        Ok(valid) => hex(&ragmesh_actions::digest(key, &valid)),
        // Too large to digest as arguments: a keyed digest of its canonical JSON instead.
        Err(_) => keyed_digest(key, &serde_json::to_vec(&all).unwrap_or_default()),
    }
}

/// Runs the job: starts nodes as the plan allows, records every outcome, until every node has
/// its final state (returns the job) or the master shuts down (returns None; the job is closed
/// at the next start).
async fn drive(
    ctx: Context,
    actions: Actions,
    plan: Arc<Plan>,
    mut running: RunningJob,
    shutdown: tokio_util::sync::CancellationToken,
) -> Option<Job> {
    let job_id = running.job().id.clone();
    let mut calls: JoinSet<(String, NodeOutcome)> = JoinSet::new();
    let mut names = HashMap::new();
    loop {
        let (back, started) = match blocking(move || {
            let started = running.start_next();
            Ok((running, started))
        })
        .await
        {
            Ok((back, Ok(started))) => (back, started),
            Ok((_, Err(error))) | Err(error) => {
                tracing::error!(job.id = %job_id, %error, "job step not recorded: the job is abandoned");
                return None;
            }
        };
        running = back;
        for node in started {
            let run = run_on_node(ctx.clone(), actions.clone(), plan.clone(), job_id.clone(), node.clone());
            let task = calls.spawn(run.in_current_span());
            names.insert(task.id(), node);
        }
        if running.job().is_finished() {
            return Some(running.job().clone());
        }
        let ended = tokio::select! {
            () = shutdown.cancelled() => {
                calls.abort_all();
                return None;
            }
            ended = calls.join_next_with_id() => ended,
        };
        let (node, outcome) = match ended {
            None => {
                // Nothing runs and nothing starts: the plan has nothing left to do.
                return Some(running.job().clone());
            }
            Some(Ok((_, (node, outcome)))) => (node, outcome),
            Some(Err(error)) => {
                let node = names.get(&error.id()).cloned().unwrap_or_default();
                let outcome = NodeOutcome {
                    status: UNKNOWN.into(),
                    message: format!("the master's call to the node failed: {error}"),
                    duration_ms: 0,
                    result: Vec::new(),
                };
                (node, outcome)
            }
        };
        running = match blocking(move || {
            let finished = running.finish(&node, outcome, unix_now_ms());
            Ok((running, finished))
        })
        .await
        {
            Ok((back, Ok(()))) => back,
            Ok((_, Err(error))) | Err(error) => {
                tracing::error!(job.id = %job_id, %error, "job step not recorded: the job is abandoned");
                return None;
            }
        };
    }
}

/// Runs the action on one node and audits the call.
async fn run_on_node(
    ctx: Context,
    actions: Actions,
    plan: Arc<Plan>,
    job_id: String,
    node: String,
) -> (String, NodeOutcome) {
    let started_ms = unix_now_ms();
    let started = Instant::now();
    let prepared = plan.prepared.get(&node).cloned().unwrap_or(Prepared {
        timeout: DEFAULT_ACTION_TIMEOUT,
        digest: String::new(),
        redacted: hidden(&plan.args),
        refusal: Some(("error".into(), "the node was not up when the job started".into())),
        secrets: Vec::new(),
    });
    let outcome = match &prepared.refusal {
        Some((status, message)) => {
            NodeOutcome { status: status.clone(), message: message.clone(), duration_ms: 0, result: Vec::new() }
        }
        None => run_call(&ctx, &plan, &node, &prepared).await,
    };
    let outcome = NodeOutcome { duration_ms: millis(started.elapsed()), ..outcome };
    let entry = AuditEntry {
        time_ms: started_ms,
        subject: plan.principal.subject.clone(),
        tenant: plan.principal.tenant.clone(),
        kind: plan.kind,
        operation_id: Some(job_id),
        node: node.clone(),
        action: plan.action.clone(),
        args_digest: prepared.digest.clone(),
        redacted_args: prepared.redacted.clone(),
        outcome: Outcome { status: outcome.status.clone(), message: outcome.message.clone() },
        duration_ms: outcome.duration_ms,
        trace_id: plan.trace_id.clone(),
    };
    let audit = actions.audit.clone();
    if let Err(error) = blocking(move || audit.append(entry)).await {
        tracing::error!(node.id = %node, %error, "action call not audited");
    }
    (node, outcome)
}

/// The RunAction call itself: a fresh call id, the caller's context, the action's timeout; the
/// answer with the secrets masked.
async fn run_call(ctx: &Context, plan: &Plan, node: &str, prepared: &Prepared) -> NodeOutcome {
    let budget = prepared.timeout + RUN_MARGIN;
    let context = match signed_context(ctx, &plan.principal, budget) {
        Ok(context) => context,
        Err(error) => {
            return NodeOutcome {
                status: "error".into(),
                message: error.to_string(),
                duration_ms: 0,
                result: Vec::new(),
            };
        }
    };
    let request = v1::RunActionRequest {
        call: Some(v1::ActionCall { action: plan.action.clone(), arguments: plan.args.clone().into_iter().collect() }),
        call_id: hex(&rand::random::<[u8; 16]>()),
    };
    let deadline = Instant::now() + budget;
    match call_node(ctx, node, NodeRequest::RunAction(request), Some(context), deadline).await {
        Ok(NodeReply::RunAction(reply)) => {
            let result = ragmesh_actions::wire::mask_result(reply.result.unwrap_or_default(), &prepared.secrets);
            let status = match v1::ActionStatus::try_from(result.status) {
                Ok(v1::ActionStatus::Ok) => "ok",
                Ok(v1::ActionStatus::Failed) => "failed",
                Ok(v1::ActionStatus::Timeout) => "timeout",
                _ => "error",
            };
            NodeOutcome {
                status: status.into(),
                message: result.message.clone(),
                duration_ms: 0,
                result: result.encode_to_vec(),
            }
        }
        Ok(_) => {
            let (status, message) = call_error_words(&ragmesh_stack::endpoint::unexpected_reply(node, "RunAction"));
            NodeOutcome { status: status.into(), message, duration_ms: 0, result: Vec::new() }
        }
        Err(error) => {
            let (status, message) = call_error_words(&error);
            NodeOutcome { status: status.into(), message, duration_ms: 0, result: Vec::new() }
        }
    }
}

/// A job on the wire.
pub(crate) fn job_response(job: &Job) -> v1::ActionJob {
    let nodes = job
        .nodes
        .iter()
        .map(|entry| {
            let mut out = v1::NodeActionOutcome { node: entry.node.clone(), ..Default::default() };
            match &entry.state {
                NodeState::Pending => out.state = v1::NodeActionState::Pending.into(),
                NodeState::Running => out.state = v1::NodeActionState::Running.into(),
                NodeState::NotStarted { reason } => {
                    out.state = v1::NodeActionState::NotStarted.into();
                    out.message = reason.clone();
                }
                NodeState::Done(outcome) => {
                    out.message = outcome.message.clone();
                    if outcome.status == UNKNOWN {
                        out.state = v1::NodeActionState::Unknown.into();
                    } else {
                        out.state = v1::NodeActionState::Done.into();
                    }
                    // A stored result means the node answered; otherwise the call failed.
                    match v1::ActionResult::decode(outcome.result.as_slice()) {
                        Ok(result) if !outcome.result.is_empty() => {
                            out.status = v1::OutcomeStatus::Ok.into();
                            out.result = Some(result);
                        }
                        _ => out.status = outcome_status(&outcome.status).into(),
                    }
                }
            }
            out
        })
        .collect();
    v1::ActionJob {
        job_id: job.id.clone(),
        action: job.action.clone(),
        selector: job.selector.clone(),
        nodes,
        finished: job.is_finished(),
        created_unix_ms: job.created_ms,
        finished_unix_ms: job.finished_ms.unwrap_or(0),
        trace_id: job.trace_id.clone().unwrap_or_default(),
    }
}

fn outcome_status(word: &str) -> v1::OutcomeStatus {
    match word {
        "ok" => v1::OutcomeStatus::Ok,
        "timeout" => v1::OutcomeStatus::Timeout,
        "unavailable" => v1::OutcomeStatus::Unavailable,
        _ => v1::OutcomeStatus::Error,
    }
}

/// `GetActionJob`.
pub(crate) fn get_job(actions: &Actions, id: &str) -> Result<v1::ActionJob, MasterError> {
    Ok(job_response(&actions.jobs.get(id)?))
}

/// The stream type of `WatchActionJob`.
pub(crate) type JobStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<v1::WatchActionJobResponse, tonic::Status>> + Send + 'static>>;

/// `WatchActionJob`: the job now, then after every change; it ends once the job is finished,
/// no longer driven, or the master shuts down.
pub(crate) fn watch_job(
    actions: &Actions,
    id: &str,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<JobStream, MasterError> {
    let receiver = actions.jobs.watch(id)?;
    let state = (receiver, true, false, shutdown);
    let stream = futures::stream::unfold(state, |(mut receiver, first, done, shutdown)| async move {
        if done {
            return None;
        }
        if !first {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                changed = receiver.changed() => changed.ok()?,
            }
        }
        let job: Job = receiver.borrow_and_update().clone();
        let finished = job.is_finished();
        let item = Ok(v1::WatchActionJobResponse { job: Some(job_response(&job)) });
        Some((item, (receiver, false, finished, shutdown)))
    });
    Ok(Box::pin(stream))
}

/// `ActionHistory`: audit records, newest first; a caller who is not an operator (admin) sees
/// only its own records.
pub(crate) async fn history(
    actions: &Actions,
    principal: &Principal,
    request: v1::ActionHistoryRequest,
) -> Result<v1::ActionHistoryResponse, MasterError> {
    let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
    let non_zero = |n: u64| Some(n).filter(|n| *n != 0);
    let mut filter = AuditFilter {
        node: non_empty(request.node),
        action: non_empty(request.action),
        subject: non_empty(request.subject),
        since_ms: non_zero(request.since_unix_ms),
        until_ms: non_zero(request.until_unix_ms),
        before_sequence: non_zero(request.before_sequence),
    };
    if !principal.has(Capability::Admin) {
        if filter.subject.as_ref().is_some_and(|s| *s != principal.subject) {
            return Err(MasterError::InvalidArgument(format!(
                "only operators read other callers' history: ask for your own subject {:?} or none",
                principal.subject
            )));
        }
        filter.subject = Some(principal.subject.clone());
    }
    let limit = match request.limit as usize {
        0 => HISTORY_DEFAULT,
        n => n.min(HISTORY_MAX),
    };
    let audit = actions.audit.clone();
    let page = blocking(move || audit.query(&filter, limit)).await?;
    Ok(v1::ActionHistoryResponse {
        records: page.records.into_iter().map(audit_record).collect(),
        next_before_sequence: page.next_before.unwrap_or(0),
    })
}

fn audit_record(record: AuditRecord) -> v1::AuditRecord {
    let entry = record.entry;
    let arguments: BTreeMap<String, String> = serde_json::from_str(&entry.redacted_args).unwrap_or_default();
    v1::AuditRecord {
        sequence: record.sequence,
        time_unix_ms: entry.time_ms.saturating_add(entry.duration_ms),
        subject: entry.subject,
        tenant: entry.tenant,
        kind: match entry.kind {
            CallKind::Single => v1::AuditKind::Single,
            CallKind::Broadcast => v1::AuditKind::Broadcast,
            CallKind::Transaction => v1::AuditKind::Transaction,
        }
        .into(),
        operation_id: entry.operation_id.unwrap_or_default(),
        node: entry.node,
        action: entry.action,
        arguments_digest: entry.args_digest,
        arguments: arguments.into_iter().collect(),
        status: entry.outcome.status,
        message: entry.outcome.message,
        duration_ms: u32::try_from(entry.duration_ms).unwrap_or(u32::MAX),
        trace_id: entry.trace_id.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenant: &str, capabilities: &[Capability]) -> Principal {
        Principal {
            subject: "someone".into(),
            tenant: tenant.into(),
            capabilities: capabilities.iter().copied().collect(),
            token_id: String::new(),
            expires_at: 0,
            issued_at: 0,
        }
    }

    fn descriptor(capability: &str, tenants: &[&str]) -> v1::ActionDescriptor {
        v1::ActionDescriptor {
            name: "clear-cache".into(),
            capability: capability.into(),
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_master_refuses_what_the_agent_would_refuse_by_tenant_or_capability() {
        let acme = principal("acme", &[Capability::Actions]);
        let globex = principal("globex", &[Capability::Actions]);
        let operator = principal("ops", &[Capability::Admin, Capability::Actions]);
        let limited = descriptor("", &["acme"]);
        assert!(may_run(&acme, &limited).is_ok());
        let refused = may_run(&globex, &limited).expect_err("another tenant");
        assert!(refused.contains("acme") && refused.contains("globex"), "{refused}");
        assert!(may_run(&operator, &limited).is_ok(), "operators pass tenant lists");
        assert!(may_run(&globex, &descriptor("actions", &["*"])).is_ok(), "* admits every tenant");
        assert!(may_run(&acme, &descriptor("actions", &[])).is_err(), "empty: operators only");
        assert!(may_run(&operator, &descriptor("actions", &[])).is_ok());
        let no_cap = may_run(&acme, &descriptor("ingest", &["acme"])).expect_err("the declared capability");
        assert!(no_cap.contains("ingest"), "{no_cap}");
        assert!(may_run(&principal("", &[Capability::Actions]), &descriptor("", &["*"])).is_err(), "no tenant");
    }
}
