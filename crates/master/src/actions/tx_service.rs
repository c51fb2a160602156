//! The master's transaction RPCs (`ExecuteTransaction`, `GetTransaction`, `ListTransactions`),
//! the [`Transport`] that reaches agents through the node client and the write log through
//! replication, and the answers to agents' in-doubt transactions on their health streams.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ragmesh_auth::{Capability, Principal};
use ragmesh_coordinator::{Decision, TxId};
use ragmesh_proto::v1;
use ragmesh_stack::node_call::{NodeReply, NodeRequest};
use tokio::time::Instant;

use super::audit::{AuditEntry, CallKind, Outcome};
use super::idempotency::{Begin, Scope, StoredResult};
use super::selector::{self, Candidate, Selector};
use super::service::{Actions, keyed_digest};
use super::transactions::{
    self, DEFAULT_TIMEOUT, MAX_TIMEOUT, Plan, Runtime, Transactions, Transport, TxError, TxView,
};
use super::unix_now_ms;
use crate::api::Context;
use crate::error::MasterError;
use crate::replication::log::{Write, Writer};
use crate::replication::{ReplicationError, WriteTarget};
use prost::Message as _;

/// Deadline of one DecideTransaction call.
const DECIDE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long appending a committed write part waits for its group's replicas to apply it. Once
/// appended the write is in the group's log and reaches every replica (one that is down catches
/// up when it is back), so a transaction never waits longer than this for a dead replica
/// before its decisions go out.
const WRITE_QUORUM_WAIT: Duration = Duration::from_secs(5);
/// How long an answer waits for acknowledgements once the decision is logged.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// Transactions listed by default, and at most.
const LIST_DEFAULT: usize = 100;
const LIST_MAX: usize = 1000;
/// Most in-doubt transactions answered per heartbeat.
pub(crate) const MAX_IN_DOUBT: usize = 256;

/// The transport of a transaction: agents through the node client, signed for the caller
/// `plan` names; committed writes through replication, for the caller of the transaction's own
/// plan (the one the driver passes).
#[derive(Debug, Clone)]
pub(crate) struct PlanTransport {
    ctx: Context,
    plan: Plan,
}

impl PlanTransport {
    /// The caller as the participants see it, for one call of `budget`: a signed context
    /// never outlives its principal's expiry, so the principal lives as long as the call (the
    /// caller's own token may be gone by the time a decision is re-sent).
    fn principal(&self, budget: Duration) -> Principal {
        let now = ragmesh_auth::unix_now();
        Principal {
            subject: self.plan.subject.clone(),
            tenant: self.plan.tenant.clone(),
            capabilities: self.plan.capabilities.iter().copied().collect(),
            token_id: String::new(),
            expires_at: now.saturating_add(budget.as_secs().saturating_add(1)),
            issued_at: now,
        }
    }

    /// Sends `request` to `node` within `budget`, in the plan's caller's name.
    fn send(
        &self,
        node: &str,
        request: NodeRequest,
        budget: Duration,
    ) -> BoxFuture<'static, Result<NodeReply, String>> {
        let signed = super::service::signed_context(&self.ctx, &self.principal(budget), budget);
        let (ctx, node) = (self.ctx.clone(), node.to_owned());
        Box::pin(async move {
            let context = signed.map_err(|e| e.to_string())?;
            // Prepare and decide are idempotent per transaction id: resent once after a lost connection.
            super::service::call_node(&ctx, &node, request, Some(context), Instant::now() + budget)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

impl Transport for PlanTransport {
    fn prepare(
        &self,
        node: &str,
        tx: TxId,
        operation: v1::TransactionOperation,
        deadline_ms: u64,
    ) -> BoxFuture<'static, Result<v1::PrepareTransactionResponse, String>> {
        let request = v1::PrepareTransactionRequest {
            tx_id: tx.to_string(),
            operation: Some(operation),
            deadline_unix_ms: deadline_ms,
        };
        let budget = Duration::from_millis(deadline_ms.saturating_sub(unix_now_ms())).max(Duration::from_millis(1));
        let send = self.send(node, NodeRequest::Prepare(request), budget);
        let node = node.to_owned();
        Box::pin(async move {
            match send.await? {
                NodeReply::Prepare(reply) => Ok(reply),
                _ => Err(format!("node {node} answered a prepare with another reply")),
            }
        })
    }

    fn decide(
        &self,
        node: &str,
        tx: TxId,
        decision: Decision,
    ) -> BoxFuture<'static, Result<v1::DecideTransactionResponse, String>> {
        let decision = match decision {
            Decision::Commit => v1::TransactionDecision::Commit,
            Decision::Abort => v1::TransactionDecision::Abort,
        };
        let request = v1::DecideTransactionRequest { tx_id: tx.to_string(), decision: decision.into() };
        let send = self.send(node, NodeRequest::Decide(request), DECIDE_TIMEOUT);
        let node = node.to_owned();
        Box::pin(async move {
            match send.await? {
                NodeReply::Decide(reply) => Ok(reply),
                _ => Err(format!("node {node} answered a decision with another reply")),
            }
        })
    }

    /// Appends a committed write part to group `shard`'s log for `plan`'s caller.
    fn apply_write(
        &self,
        plan: &Plan,
        shard: &str,
        write: v1::DocumentWrite,
    ) -> BoxFuture<'static, Result<(), String>> {
        let ctx = self.ctx.clone();
        let writer = Writer {
            subject: plan.subject.clone(),
            tenant: plan.tenant.clone(),
            capabilities: plan.capabilities.clone(),
        };
        let shard = shard.to_owned();
        Box::pin(async move {
            let replication = ctx.replication().map_err(|e| e.to_string())?;
            let deadline = Instant::now() + WRITE_QUORUM_WAIT;
            if !write.upserts.is_empty() {
                let upsert = Write::Upsert(v1::UpsertDocumentsRequest { documents: write.upserts, position: None });
                let written = replication.write(WriteTarget::Shard(shard.clone()), writer.clone(), upsert, deadline);
                appended(&shard, written.await)?;
            }
            if !write.deletes.is_empty() {
                let delete = Write::Delete(v1::DeleteDocumentsRequest { refs: write.deletes, position: None });
                let written = replication.write(WriteTarget::Shard(shard.clone()), writer, delete, deadline);
                appended(&shard, written.await)?;
            }
            Ok(())
        })
    }
}

/// Whether a committed write part is in its group's log: written, or appended without reaching
/// its quorum in time (a replica is down: it catches up from the log when it is back, so the
/// transaction goes on rather than waiting for it, or appending the write again).
fn appended<T>(shard: &str, written: Result<T, ReplicationError>) -> Result<(), String> {
    match written {
        Ok(_) => Ok(()),
        Err(ReplicationError::QuorumNotReached { seq, missing, .. }) => {
            tracing::warn!(
                shard = %shard,
                seq,
                missing = ?missing,
                "committed write appended to its group's log; replicas not yet applying it catch up from the log"
            );
            Ok(())
        }
        Err(error) => Err(error.to_string()),
    }
}

/// The runtime of drivers started for `plan`'s caller.
pub(crate) fn runtime(ctx: &Context, plan: &Plan) -> Runtime {
    Runtime {
        transport: Arc::new(PlanTransport { ctx: ctx.clone(), plan: plan.clone() }),
        tasks: ctx.tasks.clone(),
        shutdown: ctx.shutdown.clone(),
    }
}

/// Resumes the unfinished transactions of the log (start-up). Their prepares and decisions are
/// signed for the master itself (the caller's token is long gone; agents apply a logged
/// decision whoever relays it); committed writes still go in for each transaction's own caller.
pub(crate) async fn recover(ctx: &Context, transactions: &Transactions) -> Result<usize, TxError> {
    transactions.recover(&runtime(ctx, &master_plan())).await
}

fn master_plan() -> Plan {
    Plan {
        subject: "master:recovery".into(),
        tenant: "operators".into(),
        capabilities: Capability::ALL.to_vec(),
        ..Plan::default()
    }
}

/// `ExecuteTransaction`: validates the parts, starts the driver and answers once the
/// transaction is done, or with its state when acknowledgements are late.
pub(crate) async fn execute(
    ctx: &Context,
    actions: &Actions,
    transactions: &Transactions,
    principal: Principal,
    request: v1::ExecuteTransactionRequest,
) -> Result<v1::ExecuteTransactionResponse, MasterError> {
    let started = Instant::now();
    let started_ms = unix_now_ms();
    // The parameters the idempotency key guards: the request without its key.
    let parameters = v1::ExecuteTransactionRequest { idempotency_key: String::new(), ..request.clone() };
    let timeout = match request.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    if timeout > MAX_TIMEOUT {
        return Err(MasterError::InvalidArgument(format!(
            "timeout_ms {} exceeds the maximum {} ms",
            request.timeout_ms,
            MAX_TIMEOUT.as_millis()
        )));
    }
    let views = ctx.registry()?.snapshot();
    let known: Vec<String> = views.iter().map(|v| v.record.name.clone()).collect();
    let request = with_selected_parts(request, &views)?;
    if request.parts.is_empty() {
        return Err(MasterError::InvalidArgument(
            "a transaction needs at least one part: give parts, or a selector and an operation".into(),
        ));
    }
    let mut operations = BTreeMap::new();
    let mut shards = BTreeMap::new();
    let mut writes = Vec::new();
    for (index, part) in request.parts.into_iter().enumerate() {
        let operation = part.operation.ok_or_else(|| {
            MasterError::InvalidArgument(format!("part {index} has no operation: give an action or a write"))
        })?;
        let participants: Vec<String> = match &operation.kind {
            Some(v1::transaction_operation::Kind::Action(_)) => {
                if part.node.is_empty() || !part.shard.is_empty() {
                    return Err(MasterError::InvalidArgument(format!(
                        "part {index}: an action part names one node (node), not a shard group"
                    )));
                }
                if !known.contains(&part.node) {
                    return Err(MasterError::UnknownNodes { unknown: vec![part.node], known });
                }
                vec![part.node]
            }
            Some(v1::transaction_operation::Kind::Write(write)) => {
                let group = if !part.shard.is_empty() {
                    part.shard.clone()
                } else {
                    let view = views.iter().find(|v| v.record.name == part.node).ok_or_else(|| {
                        MasterError::UnknownNodes { unknown: vec![part.node.clone()], known: known.clone() }
                    })?;
                    view.record.group().to_owned()
                };
                let replicas: Vec<String> =
                    views.iter().filter(|v| v.record.group() == group).map(|v| v.record.name.clone()).collect();
                if replicas.is_empty() {
                    return Err(MasterError::InvalidArgument(format!(
                        "part {index}: shard group {group:?} has no replica"
                    )));
                }
                writes.push((group.clone(), write.clone()));
                for replica in &replicas {
                    shards.insert(replica.clone(), group.clone());
                }
                replicas
            }
            None => return Err(MasterError::InvalidArgument(format!("part {index} has an empty operation"))),
        };
        for node in participants {
            if operations.insert(node.clone(), operation.clone()).is_some() {
                return Err(MasterError::InvalidArgument(format!(
                    "node {node} takes part twice: give each node (and each shard group) one part"
                )));
            }
        }
    }
    // Each action part checked as a single call would be (offered, allowed, valid arguments,
    // transactional), before the key is used or anything is prepared.
    let caller = &principal;
    let checks = operations.iter().filter_map(|(node, operation)| match &operation.kind {
        Some(v1::transaction_operation::Kind::Action(call)) => {
            Some(async move { (node.clone(), super::service::check_part(ctx, actions, caller, node, call).await) })
        }
        _ => None,
    });
    let mut checked = BTreeMap::new();
    for (node, check) in futures::future::join_all(checks).await {
        checked.insert(node, check?);
    }
    let mut guard = None;
    if !request.idempotency_key.is_empty() {
        let scope = Scope::new(principal.subject.clone(), request.idempotency_key.clone());
        let digest =
            keyed_digest(actions.digest_key(), &[b"transaction\0".as_slice(), &parameters.encode_to_vec()].concat());
        match actions.keys().begin(scope, &digest, unix_now_ms()).await? {
            Begin::Replay(stored) => {
                let mut response: v1::ExecuteTransactionResponse = stored.decode_as().map_err(MasterError::Records)?;
                response.replayed = true;
                return Ok(response);
            }
            Begin::Run(run) => guard = Some(run),
            refused => return Err(refused.refusal().map_or(MasterError::NotReady, MasterError::Records)),
        }
    }
    let audited: BTreeMap<String, v1::TransactionOperation> = operations.clone();
    let mut plan = Plan::new(&principal.subject, &principal.tenant, &writes, shards);
    plan.capabilities = principal.capabilities.iter().copied().collect();
    plan.trace_id = ragmesh_telemetry::propagation::sampled_trace_id(&tracing::Span::current());
    let tx = TxId(rand::random::<u128>());
    let deadline_ms = unix_now_ms().saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    let runtime = runtime(ctx, &plan);
    let secrets = checked.iter().map(|(node, part)| (node.clone(), part.secrets.clone())).collect();
    let mut view = match transactions.start(tx, operations, plan, deadline_ms, secrets, &runtime).await {
        Ok(view) => view,
        Err(error) => {
            if let Some(guard) = guard {
                let _ = guard.abandon().await;
            }
            return Err(error.into());
        }
    };
    tracing::info!(tx = %tx, "transaction started");
    // Wait until done; once decided, only a little longer for late acknowledgements.
    let until = Instant::now() + timeout + ACK_WAIT;
    let _ = tokio::time::timeout_at(until, view.wait_for(|v| v.status.decision.is_some())).await;
    let _ = tokio::time::timeout(ACK_WAIT, view.wait_for(transactions::is_settled)).await;
    let current: TxView = view.borrow().clone();
    let response =
        v1::ExecuteTransactionResponse { transaction: Some(transactions::to_wire(&current)), replayed: false };
    audit(actions, &principal, &current, &audited, &checked, started_ms, started.elapsed()).await;
    if let Some(guard) = guard {
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
    Ok(response)
}

/// The request with a selector's parts spelled out: one action part per selected node, or one
/// write part per shard group of the selected nodes. A request without a selector is returned
/// as it is; a selector with parts, or without an operation, is refused.
fn with_selected_parts(
    mut request: v1::ExecuteTransactionRequest,
    views: &[crate::registry::NodeView],
) -> Result<v1::ExecuteTransactionRequest, MasterError> {
    let (selector, operation) = (request.selector.take(), request.operation.take());
    let Some(selector) = selector else {
        if operation.is_some() {
            return Err(MasterError::InvalidArgument(
                "an operation without a selector: give a selector too, or put the operation in parts".into(),
            ));
        }
        return Ok(request);
    };
    if !request.parts.is_empty() {
        return Err(MasterError::InvalidArgument("give parts or a selector with an operation, not both".into()));
    }
    let Some(operation) = operation else {
        return Err(MasterError::InvalidArgument(
            "a selector needs the operation every selected node takes (operation)".into(),
        ));
    };
    let candidates: Vec<Candidate> = views
        .iter()
        .map(|v| Candidate {
            name: v.record.name.clone(),
            labels: v.record.labels.clone(),
            group: v.record.group().to_owned(),
        })
        .collect();
    let selected = selector::select(&Selector::from(selector), &candidates)?;
    let part = |node: String, shard: String| v1::TransactionPart { node, shard, operation: Some(operation.clone()) };
    request.parts = match &operation.kind {
        Some(v1::transaction_operation::Kind::Write(_)) => {
            let groups: BTreeSet<String> =
                candidates.iter().filter(|c| selected.contains(&c.name)).map(|c| c.group.clone()).collect();
            groups.into_iter().map(|group| part(String::new(), group)).collect()
        }
        _ => selected.into_iter().map(|node| part(node, String::new())).collect(),
    };
    Ok(request)
}

/// One audit record per participant, as the transaction stands when the caller is answered.
async fn audit(
    actions: &Actions,
    principal: &Principal,
    view: &TxView,
    operations: &BTreeMap<String, v1::TransactionOperation>,
    checked: &BTreeMap<String, super::service::CheckedPart>,
    started_ms: u64,
    took: Duration,
) {
    let trace_id = ragmesh_telemetry::propagation::sampled_trace_id(&tracing::Span::current());
    let mut entries = Vec::new();
    for participant in &view.status.participants {
        let operation = operations.get(&participant.node).cloned().unwrap_or_default();
        let (action, arguments) = match &operation.kind {
            Some(v1::transaction_operation::Kind::Action(call)) => {
                (call.action.clone(), call.arguments.keys().cloned().collect())
            }
            _ => ("documents.write".to_owned(), Vec::new()),
        };
        // Shown as the node's schema allows (secrets hidden); without it, every value is hidden.
        let redacted = match checked.get(&participant.node) {
            Some(part) => part.redacted.clone(),
            None => {
                let shown: BTreeMap<String, &str> =
                    arguments.into_iter().map(|k| (k, ragmesh_actions::REDACTED)).collect();
                serde_json::to_string(&shown).unwrap_or_default()
            }
        };
        let status = match (view.status.decision, participant.acked) {
            (Some(Decision::Commit), true) => "ok",
            (Some(Decision::Commit), false) => "unknown",
            (Some(Decision::Abort), _) => "aborted",
            (None, _) => "unknown",
        };
        let message = view.details.get(&participant.node).map(|d| d.message.clone()).unwrap_or_default();
        entries.push(AuditEntry {
            time_ms: started_ms,
            subject: principal.subject.clone(),
            tenant: principal.tenant.clone(),
            kind: CallKind::Transaction,
            operation_id: Some(view.status.tx.to_string()),
            node: participant.node.clone(),
            action,
            args_digest: keyed_digest(actions.digest_key(), &operation.encode_to_vec()),
            redacted_args: redacted,
            outcome: Outcome { status: status.to_owned(), message },
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            trace_id: trace_id.clone(),
        });
    }
    let log = actions.audit().clone();
    let appended =
        tokio::task::spawn_blocking(move || entries.into_iter().try_for_each(|e| log.append(e).map(drop))).await;
    if !matches!(appended, Ok(Ok(()))) {
        tracing::error!(tx = %view.status.tx, "transaction participants not audited");
    }
}

fn parse_tx(text: &str) -> Result<TxId, MasterError> {
    TxId::parse(text).map_err(|e| MasterError::InvalidArgument(e.to_string()))
}

/// `GetTransaction`.
pub(crate) async fn get(transactions: &Transactions, tx_id: &str) -> Result<v1::TransactionStatus, MasterError> {
    let tx = parse_tx(tx_id)?;
    match transactions.get(tx).await? {
        Some(view) => Ok(transactions::to_wire(&view)),
        None => Err(MasterError::Refused(tonic::Status::not_found(format!(
            "no transaction {tx_id}: it never existed here or was compacted (see `ragmeshctl action history`)"
        )))),
    }
}

/// `ListTransactions`: unfinished first, newest first within each.
pub(crate) async fn list(
    transactions: &Transactions,
    request: v1::ListTransactionsRequest,
) -> Result<v1::ListTransactionsResponse, MasterError> {
    let mut views = transactions.list().await?;
    if !request.include_finished {
        views.retain(|v| !transactions::is_settled(v));
    }
    views.sort_by_key(|v| (transactions::is_settled(v), std::cmp::Reverse(v.status.started_ms)));
    let limit = match request.limit as usize {
        0 => LIST_DEFAULT,
        n => n.min(LIST_MAX),
    };
    views.truncate(limit);
    Ok(v1::ListTransactionsResponse { transactions: views.iter().map(transactions::to_wire).collect() })
}

/// The decisions for an agent's in-doubt transactions (bounded); transactions still being
/// prepared here are left out (the agent hears when they are decided).
pub(crate) async fn decisions(transactions: &Transactions, in_doubt: &[String]) -> v1::TransactionDecisions {
    let mut outcomes = Vec::new();
    for text in in_doubt.iter().take(MAX_IN_DOUBT) {
        let Ok(tx) = TxId::parse(text) else { continue };
        match transactions.decision_for(tx).await {
            Ok(Some(decision)) => outcomes.push(v1::TransactionOutcome {
                tx_id: text.clone(),
                decision: match decision {
                    Decision::Commit => v1::TransactionDecision::Commit,
                    Decision::Abort => v1::TransactionDecision::Abort,
                }
                .into(),
            }),
            Ok(None) => {}
            Err(error) => tracing::error!(tx = %tx, %error, "in-doubt transaction not answered"),
        }
    }
    v1::TransactionDecisions { outcomes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragmesh_config::WriteQuorum;

    #[test]
    fn a_write_appended_without_its_quorum_is_in_the_log_and_other_failures_are_not() {
        assert_eq!(appended("g", Ok::<(), ReplicationError>(())), Ok(()));
        let slow = ReplicationError::QuorumNotReached {
            group: "g".into(),
            seq: 7,
            applied: 0,
            applied_by: Vec::new(),
            missing: vec!["agent-3 (down)".into()],
            replicas: 1,
            quorum: WriteQuorum::default(),
            needed: 1,
        };
        assert_eq!(appended::<()>("g", Err(slow)), Ok(()), "appended: its replicas catch up from the log");
        let unknown = ReplicationError::NoReplicas { group: "g".into() };
        let refused = appended::<()>("g", Err(unknown)).expect_err("nothing was appended");
        assert!(refused.contains("no replica"), "{refused}");
    }
}
