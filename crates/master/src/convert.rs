//! Wire <-> domain conversions of the master: prost types stop here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ragmesh_proto::v1;

use ragmesh_stack::breaker::BreakerState;
use ragmesh_stack::node_call::{Attempt, AttemptEnd, AttemptKind, CallError};
use ragmesh_stack::node_health::HealthSnapshot;

use crate::federation::{GroupEnd, GroupReport, NodeResult, Outcome, SkipReason};
use crate::merge::MergedHit;
use crate::node::NodeState;
use crate::registry::{GroupLog, NodeView, SyncState};
use crate::replication::ReplicaReport;

pub(crate) fn collections_from_wire(list: Vec<v1::CollectionStats>) -> BTreeMap<String, u64> {
    list.into_iter().map(|c| (c.name, c.doc_count)).collect()
}

fn collections_to_wire(map: &BTreeMap<String, u64>) -> Vec<v1::CollectionStats> {
    map.iter().map(|(name, count)| v1::CollectionStats { name: name.clone(), doc_count: *count }).collect()
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn node_state(state: NodeState) -> v1::NodeState {
    match state {
        NodeState::Joining => v1::NodeState::Joining,
        NodeState::Up => v1::NodeState::Up,
        NodeState::Suspect => v1::NodeState::Suspect,
        NodeState::Down => v1::NodeState::Down,
    }
}

pub(crate) fn node_info(view: NodeView, health: Option<HealthSnapshot>) -> v1::NodeInfo {
    let record = Arc::unwrap_or_clone(view.record);
    v1::NodeInfo {
        shard: record.group().to_owned(),
        breaker: Some(breaker_info(health)),
        collections: collections_to_wire(&record.collections),
        name: record.name,
        state: node_state(view.state).into(),
        address: record.address,
        version: record.version,
        protocol_major: record.protocol_major,
        protocol_minor: record.protocol_minor,
        generation: record.generation,
        labels: record.labels.into_iter().collect(),
        last_heartbeat: view.last_heartbeat.map(timestamp),
        registered_at: Some(timestamp(UNIX_EPOCH + Duration::from_millis(record.registered_at_ms))),
        in_flight: view.in_flight,
        down_reason: view.down_reason.unwrap_or_default(),
        sync: sync_state(&view.sync).into(),
        applied_seq: view.applied_seq,
        sync_message: sync_message(&view.sync),
        index_bytes: view.index_bytes,
    }
}

/// A node's breaker as ListNodes shows it; a node never called has a closed breaker.
fn breaker_info(health: Option<HealthSnapshot>) -> v1::BreakerInfo {
    let Some(health) = health else {
        return v1::BreakerInfo { status: v1::BreakerStatus::Closed.into(), ..Default::default() };
    };
    let status = match health.state {
        BreakerState::Closed => v1::BreakerStatus::Closed,
        BreakerState::Open { .. } => v1::BreakerStatus::Open,
        BreakerState::HalfOpen { .. } => v1::BreakerStatus::HalfOpen,
    };
    v1::BreakerInfo {
        status: status.into(),
        probe_at: health.next_probe.map(|since_epoch| timestamp(UNIX_EPOCH + since_epoch)),
        consecutive_failures: health.consecutive_failures,
    }
}

fn skip_reason(reason: SkipReason) -> v1::SkipReason {
    match reason {
        SkipReason::Down => v1::SkipReason::Down,
        SkipReason::NotRouted => v1::SkipReason::NotRouted,
        SkipReason::BreakerOpen => v1::SkipReason::BreakerOpen,
        SkipReason::NotInSync => v1::SkipReason::NotInSync,
        SkipReason::OtherReplica => v1::SkipReason::OtherReplica,
        SkipReason::NoMatch => v1::SkipReason::NoMatch,
    }
}

fn skip_message(reason: SkipReason) -> &'static str {
    match reason {
        SkipReason::Down => "node is down",
        SkipReason::NotRouted => "node holds none of the requested collections",
        SkipReason::BreakerOpen => "node's circuit breaker is open after repeated failures",
        SkipReason::NotInSync => "node misses acknowledged writes of its shard group (catching up or stale)",
        SkipReason::OtherReplica => "another replica of its shard group answered",
        SkipReason::NoMatch => "its term summary proves no document can match",
    }
}

/// The wire status and message of a failed call.
fn call_error(error: &CallError) -> (v1::OutcomeStatus, String) {
    match error {
        CallError::Timeout { budget } => (v1::OutcomeStatus::Timeout, crate::federation::timeout_message(*budget)),
        CallError::Unavailable(message) => (v1::OutcomeStatus::Unavailable, message.clone()),
        CallError::BreakerOpen { .. } => (v1::OutcomeStatus::Skipped, error.to_string()),
        CallError::Error { kind, message } | CallError::Rejected { kind, message, .. } => {
            (v1::OutcomeStatus::Error, format!("{kind}: {message}"))
        }
    }
}

fn attempt(attempt: Attempt) -> v1::Attempt {
    let (status, message) = match &attempt.end {
        AttemptEnd::Ok => (v1::OutcomeStatus::Ok, String::new()),
        AttemptEnd::Cancelled => (v1::OutcomeStatus::Cancelled, "abandoned: another attempt answered first".to_owned()),
        AttemptEnd::Failed(error) => call_error(error),
    };
    let kind = match attempt.kind {
        AttemptKind::First => v1::AttemptKind::First,
        AttemptKind::Retry => v1::AttemptKind::Retry,
        AttemptKind::Hedge => v1::AttemptKind::Hedge,
    };
    v1::Attempt { node: attempt.node, kind: kind.into(), status: status.into(), message, took_ms: millis(attempt.took) }
}

pub(crate) fn group_outcome(report: GroupReport) -> v1::GroupOutcome {
    let mut out = v1::GroupOutcome { shard: report.group, ..Default::default() };
    let status = match report.end {
        GroupEnd::Answered { node } => {
            out.answered_by = node;
            v1::OutcomeStatus::Ok
        }
        GroupEnd::Failed(error) => {
            let (status, message) = call_error(&error);
            if let CallError::BreakerOpen { .. } = error {
                out.skip_reason = v1::SkipReason::BreakerOpen.into();
            }
            out.message = message;
            status
        }
        GroupEnd::Skipped(reason) => {
            out.skip_reason = skip_reason(reason).into();
            out.message = match reason {
                SkipReason::Down => "every replica of the group is down".to_owned(),
                SkipReason::NotInSync => "no replica of the group that is up has every acknowledged write".to_owned(),
                other => skip_message(other).to_owned(),
            };
            v1::OutcomeStatus::Skipped
        }
    };
    out.status = status.into();
    out.attempts = report.attempts.into_iter().map(attempt).collect();
    out
}

pub(crate) fn sync_state(sync: &SyncState) -> v1::SyncState {
    match sync {
        SyncState::InSync => v1::SyncState::InSync,
        SyncState::CatchingUp => v1::SyncState::CatchingUp,
        SyncState::Stale { .. } => v1::SyncState::Stale,
    }
}

fn sync_message(sync: &SyncState) -> String {
    match sync {
        SyncState::InSync => String::new(),
        SyncState::CatchingUp => "catching up from the write log; it serves reads again once in sync".to_owned(),
        SyncState::Stale { message } => message.clone(),
    }
}

/// Every node of `views` by shard group, in the order of `views`.
pub(crate) fn by_group(views: &[NodeView]) -> BTreeMap<&str, Vec<&NodeView>> {
    let mut groups: BTreeMap<&str, Vec<&NodeView>> = BTreeMap::new();
    for view in views {
        groups.entry(view.record.group()).or_default().push(view);
    }
    groups
}

/// One shard group for `ListNodes`: its `replicas` (sorted, as [`by_group`] leaves them) and its log.
pub(crate) fn group_info(group: &str, replicas: &[&NodeView], log: GroupLog) -> v1::ShardGroupInfo {
    v1::ShardGroupInfo {
        shard: group.to_owned(),
        replicas: replicas.iter().map(|v| v.record.name.clone()).collect(),
        in_sync: replicas.iter().filter(|v| v.sync.is_in_sync()).map(|v| v.record.name.clone()).collect(),
        last_seq: log.last_seq,
        committed_seq: log.committed_seq,
        log_first_seq: if log.entries == 0 { 0 } else { log.first_seq },
        log_entries: log.entries,
    }
}

/// What each replica did with a write.
pub(crate) fn replica_writes(reports: &[ReplicaReport]) -> Vec<v1::ReplicaWrite> {
    reports
        .iter()
        .map(|r| v1::ReplicaWrite {
            node: r.node.clone(),
            status: if r.applied { v1::OutcomeStatus::Ok } else { v1::OutcomeStatus::Unavailable }.into(),
            message: r.message.clone(),
            applied_seq: r.applied_seq,
        })
        .collect()
}

pub(crate) fn hit(merged: MergedHit) -> v1::Hit {
    let MergedHit { hit, score, also_on } = merged;
    v1::Hit {
        node: hit.node,
        doc_id: hit.doc_id,
        collection: hit.collection,
        title: hit.payload.title,
        snippet: hit.payload.snippet,
        score,
        node_score: hit.node_score,
        node_rank: hit.node_rank,
        also_on,
        metadata: hit.payload.metadata,
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

pub(crate) fn outcome(result: &NodeResult) -> v1::NodeOutcome {
    let mut out = v1::NodeOutcome { node: result.node.clone(), took_ms: millis(result.took), ..Default::default() };
    let status = match &result.outcome {
        Outcome::Ok { hits, generation } => {
            out.hit_count = u32::try_from(hits.len()).unwrap_or(u32::MAX);
            out.generation = *generation;
            v1::OutcomeStatus::Ok
        }
        Outcome::Timeout { budget } => {
            out.message = crate::federation::timeout_message(*budget);
            v1::OutcomeStatus::Timeout
        }
        Outcome::Unavailable(message) => {
            out.message = message.clone();
            v1::OutcomeStatus::Unavailable
        }
        Outcome::Error { kind, message } => {
            out.message = format!("{kind}: {message}");
            v1::OutcomeStatus::Error
        }
        Outcome::Cancelled => {
            out.message = "abandoned: another replica answered first".to_owned();
            v1::OutcomeStatus::Cancelled
        }
        Outcome::NotAsked(error) => {
            // The group's outcome, which is this replica's too: it had no chance to answer.
            let (status, message) = call_error(error);
            out.message = format!("not asked before its shard group's call ended: {message}");
            status
        }
        Outcome::Skipped(reason) => {
            out.skip_reason = skip_reason(*reason).into();
            out.message = skip_message(*reason).to_owned();
            v1::OutcomeStatus::Skipped
        }
    };
    out.status = status.into();
    out
}
