//! `ragmeshctl nodes`, `nodes --pending`, `nodes evict NAME` and `ragmeshctl node NAME`: what
//! the master knows about its nodes and the agents it refused, as tables, a detailed view or
//! JSON, and eviction.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use ragmesh_proto::v1;
use serde_json::{Value, json};

use crate::render::{self, Column, Table, clean};

/// Lowercase name of a node state, as shown in tables and JSON.
pub fn state_name(state: i32) -> &'static str {
    match v1::NodeState::try_from(state) {
        Ok(v1::NodeState::Joining) => "joining",
        Ok(v1::NodeState::Up) => "up",
        Ok(v1::NodeState::Suspect) => "suspect",
        Ok(v1::NodeState::Down) => "down",
        Ok(v1::NodeState::Unspecified) | Err(_) => "unknown",
    }
}

/// Lowercase name of a sync state; empty when the master does not report one.
pub fn sync_name(sync: i32) -> &'static str {
    match v1::SyncState::try_from(sync) {
        Ok(v1::SyncState::InSync) => "in_sync",
        Ok(v1::SyncState::CatchingUp) => "catching_up",
        Ok(v1::SyncState::Stale) => "stale",
        Ok(v1::SyncState::Unspecified) | Err(_) => "",
    }
}

/// Lowercase name of a breaker state; empty when the master does not report one.
pub fn breaker_name(breaker: Option<&v1::BreakerInfo>) -> &'static str {
    match breaker.map(|b| v1::BreakerStatus::try_from(b.status)) {
        Some(Ok(v1::BreakerStatus::Closed)) => "closed",
        Some(Ok(v1::BreakerStatus::Open)) => "open",
        Some(Ok(v1::BreakerStatus::HalfOpen)) => "half_open",
        Some(Ok(v1::BreakerStatus::Unspecified) | Err(_)) | None => "",
    }
}

/// The breaker as a table cell: empty while closed (the normal case), else its state and when
/// it lets its next probe through (`open (probe in 12s)`).
fn breaker_cell(breaker: Option<&v1::BreakerInfo>, now: SystemTime) -> String {
    let name = breaker_name(breaker);
    if name.is_empty() || name == "closed" {
        return String::new();
    }
    let probe = breaker.and_then(|b| b.probe_at.as_ref()).and_then(|ts| SystemTime::try_from(*ts).ok());
    match probe.map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)) {
        Some(wait) if wait > Duration::ZERO => format!("{name} (probe in {})", render::age(wait)),
        Some(_) => format!("{name} (probe due)"),
        None => name.to_owned(),
    }
}

/// One line per shard group: replicas in sync out of all, and where its write log stands.
pub fn groups_summary(groups: &[v1::ShardGroupInfo]) -> String {
    let mut out = String::new();
    for group in groups {
        let log = if group.log_entries == 0 {
            "log empty".to_owned()
        } else {
            format!("log {}..{} ({} entries)", group.log_first_seq, group.last_seq, group.log_entries)
        };
        let _ = writeln!(
            out,
            "group {}: {} of {} replicas in sync, committed seq {}, {log}",
            clean(&group.shard),
            group.in_sync.len(),
            group.replicas.len(),
            group.committed_seq,
        );
    }
    out
}

/// Live documents over all collections of a node.
pub fn doc_count(node: &v1::NodeInfo) -> u64 {
    node.collections.iter().map(|c| c.doc_count).sum()
}

/// Time since `timestamp`, or `None` without one; a timestamp in the future (clock skew) is now.
fn since(timestamp: Option<&prost_types::Timestamp>, now: SystemTime) -> Option<Duration> {
    let time = SystemTime::try_from(*timestamp?).ok()?;
    Some(now.duration_since(time).unwrap_or(Duration::ZERO))
}

/// The `nodes` table: NAME STATE ADDRESS DOCS GEN LAST-HEARTBEAT VERSION, and REASON when a
/// node is down. `now` is a parameter so the ages are testable.
pub fn table(nodes: &[v1::NodeInfo], now: SystemTime) -> String {
    if nodes.is_empty() {
        return "no nodes have registered yet: start an agent with --master pointing at this \
                master (see `ragmesh-agent --help`)\n"
            .to_owned();
    }
    let mut table = Table::new(vec![
        Column::left("NAME"),
        Column::left("GROUP"),
        Column::left("STATE"),
        Column::left("SYNC"),
        Column::right("APPLIED"),
        Column::left("BREAKER"),
        Column::left("ADDRESS"),
        Column::right("DOCS"),
        Column::right("GEN"),
        Column::left("LAST-HEARTBEAT"),
        Column::left("VERSION"),
        Column::left("REASON").max_width(60),
    ]);
    for node in nodes {
        let heartbeat = since(node.last_heartbeat.as_ref(), now).map_or_else(|| "never".to_owned(), render::age);
        let synced = !sync_name(node.sync).is_empty();
        table.push(vec![
            clean(&node.name),
            clean(&node.shard),
            state_name(node.state).to_owned(),
            sync_name(node.sync).to_owned(),
            if synced { node.applied_seq.to_string() } else { String::new() },
            breaker_cell(node.breaker.as_ref(), now),
            clean(&node.address),
            doc_count(node).to_string(),
            node.generation.to_string(),
            heartbeat,
            clean(&node.version),
            if node.down_reason.is_empty() { clean(&node.sync_message) } else { clean(&node.down_reason) },
        ]);
    }
    table.drop_empty_columns();
    let mut out = table.render();
    let up = nodes.iter().filter(|n| n.state == v1::NodeState::Up as i32).count();
    let _ = writeln!(out, "{up} of {} nodes up", nodes.len());
    out
}

/// One node as a JSON object: numbers stay numbers, timestamps are RFC 3339 strings, an empty
/// down reason is null.
pub fn to_json(node: &v1::NodeInfo, now: SystemTime) -> Value {
    let collections: Vec<Value> =
        node.collections.iter().map(|c| json!({"name": c.name, "doc_count": c.doc_count})).collect();
    let mut labels: Vec<(&String, &String)> = node.labels.iter().collect();
    labels.sort();
    let labels: serde_json::Map<String, Value> =
        labels.into_iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let age_ms = since(node.last_heartbeat.as_ref(), now).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    json!({
        "name": node.name,
        "state": state_name(node.state),
        "address": node.address,
        "version": node.version,
        "protocol": format!("{}.{}", node.protocol_major, node.protocol_minor),
        "docs": doc_count(node),
        "collections": collections,
        "generation": node.generation,
        "labels": labels,
        "last_heartbeat": node.last_heartbeat.as_ref().map(ToString::to_string),
        "last_heartbeat_age_ms": age_ms,
        "registered_at": node.registered_at.as_ref().map(ToString::to_string),
        "in_flight": node.in_flight,
        "down_reason": (!node.down_reason.is_empty()).then(|| node.down_reason.clone()),
        "shard": node.shard,
        "sync": sync_name(node.sync),
        "applied_seq": node.applied_seq,
        "sync_message": (!node.sync_message.is_empty()).then(|| node.sync_message.clone()),
        "breaker": node.breaker.as_ref().map(|b| json!({
            "state": breaker_name(Some(b)),
            "probe_at": b.probe_at.as_ref().map(ToString::to_string),
            "consecutive_failures": b.consecutive_failures,
        })),
    })
}

/// Every node as a JSON array.
pub fn list_json(nodes: &[v1::NodeInfo], now: SystemTime) -> Value {
    Value::Array(nodes.iter().map(|n| to_json(n, now)).collect())
}

/// The `nodes --pending` table: NAME ADDRESS LAST-ATTEMPT REASON, with what to do about them.
pub fn pending_table(nodes: &[v1::PendingNode], now: SystemTime) -> String {
    if nodes.is_empty() {
        return "no pending nodes: no agent has been refused admission since the master started\n".to_owned();
    }
    let mut table = Table::new(vec![
        Column::left("NAME"),
        Column::left("ADDRESS"),
        Column::left("LAST-ATTEMPT"),
        Column::left("REASON").max_width(160),
    ]);
    for node in nodes {
        let attempt = since(node.last_attempt.as_ref(), now).map_or_else(|| "unknown".to_owned(), render::age);
        table.push(vec![clean(&node.name), clean(&node.address), attempt, clean(&node.reason)]);
    }
    let mut out = table.render();
    let agents = if nodes.len() == 1 { "1 agent was".to_owned() } else { format!("{} agents were", nodes.len()) };
    let _ = writeln!(
        out,
        "{agents} refused: to admit, create a join token with `ragmeshctl token join` and restart \
         the agent with --join-token TOKEN"
    );
    out
}

/// Refused join attempts as a JSON array.
pub fn pending_json(nodes: &[v1::PendingNode], now: SystemTime) -> Value {
    let list = nodes
        .iter()
        .map(|node| {
            let age_ms =
                since(node.last_attempt.as_ref(), now).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            json!({
                "name": node.name,
                "address": node.address,
                "last_attempt": render::timestamp_json(node.last_attempt.as_ref()),
                "last_attempt_age_ms": age_ms,
                "reason": node.reason,
            })
        })
        .collect();
    Value::Array(list)
}

/// What `nodes evict NAME` did, and what is left to do.
pub fn evicted(name: &str) -> String {
    let name = clean(name);
    format!(
        "evicted {name}: its health stream is closed and it cannot register again without a new \
         join token\n\
         stop the agent on its server; if the join token that admitted it has uses left, revoke \
         it too (`ragmeshctl token join --list`, then `ragmeshctl token join --revoke ID`)\n"
    )
}

/// The detailed view of one node, one `key: value` per line.
pub fn detail(node: &v1::NodeInfo, now: SystemTime) -> String {
    let mut rows: Vec<(&str, String)> = vec![("name", clean(&node.name)), ("state", state_name(node.state).to_owned())];
    if !node.down_reason.is_empty() {
        rows.push(("down reason", clean(&node.down_reason)));
    }
    if !node.shard.is_empty() {
        rows.push(("group", clean(&node.shard)));
        rows.push(("sync", format!("{} (applied seq {})", sync_name(node.sync), node.applied_seq)));
    }
    if !node.sync_message.is_empty() {
        rows.push(("sync action", clean(&node.sync_message)));
    }
    if let Some(breaker) = &node.breaker {
        let cell = breaker_cell(Some(breaker), now);
        let state = if cell.is_empty() { breaker_name(Some(breaker)).to_owned() } else { cell };
        rows.push(("breaker", format!("{state}, {} failed calls in a row", breaker.consecutive_failures)));
    }
    let when = |ts: Option<&prost_types::Timestamp>| match (ts, since(ts, now)) {
        (Some(ts), Some(age)) => format!("{ts} ({})", render::age(age)),
        _ => "never".to_owned(),
    };
    rows.extend([
        ("address", clean(&node.address)),
        ("version", clean(&node.version)),
        ("protocol", format!("{}.{}", node.protocol_major, node.protocol_minor)),
        ("generation", node.generation.to_string()),
        ("documents", doc_count(node).to_string()),
        ("in flight", node.in_flight.to_string()),
        ("last heartbeat", when(node.last_heartbeat.as_ref())),
        ("registered", when(node.registered_at.as_ref())),
    ]);
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "{:<15} {value}", format!("{key}:"));
    }
    let _ = writeln!(out, "collections:");
    if node.collections.is_empty() {
        let _ =
            writeln!(out, "  (none yet: ingest documents with `ragmeshctl ingest PATH --node {}`)", clean(&node.name));
    }
    for collection in &node.collections {
        let unit = if collection.doc_count == 1 { "document" } else { "documents" };
        let _ = writeln!(out, "  {:<20} {} {unit}", clean(&collection.name), collection.doc_count);
    }
    let _ = writeln!(out, "labels:");
    let mut labels: Vec<_> = node.labels.iter().collect();
    labels.sort();
    if labels.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (key, value) in labels {
        let _ = writeln!(out, "  {}={}", clean(key), clean(value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64, nanos: i32) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds: secs, nanos }
    }

    fn node(name: &str, state: v1::NodeState, docs: &[(&str, u64)]) -> v1::NodeInfo {
        v1::NodeInfo {
            name: name.to_owned(),
            state: state as i32,
            address: "127.0.0.1:7401".to_owned(),
            version: "0.1.0".to_owned(),
            protocol_major: 1,
            protocol_minor: 0,
            collections: docs
                .iter()
                .map(|(c, n)| v1::CollectionStats { name: (*c).to_owned(), doc_count: *n })
                .collect(),
            generation: 7,
            last_heartbeat: Some(at(1_000, 0)),
            registered_at: Some(at(900, 0)),
            ..Default::default()
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_400)
    }

    #[test]
    fn table_shows_ages_doc_sums_and_reasons_only_when_down() {
        let up = node("agent-1", v1::NodeState::Up, &[("guides", 12), ("faq", 8)]);
        let out = table(std::slice::from_ref(&up), now());
        assert_eq!(
            out,
            "NAME     STATE  ADDRESS         DOCS  GEN  LAST-HEARTBEAT  VERSION\n\
             agent-1  up     127.0.0.1:7401    20    7  0.4s ago        0.1.0\n\
             1 of 1 nodes up\n"
        );

        let mut down = node("agent-2", v1::NodeState::Down, &[]);
        down.down_reason = "health stream closed by the agent".to_owned();
        down.last_heartbeat = None;
        let out = table(&[up, down], now());
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with("VERSION  REASON"), "{out}");
        assert!(lines[2].contains("never"), "{out}");
        assert!(lines[2].ends_with("health stream closed by the agent"), "{out}");
        assert_eq!(lines[3], "1 of 2 nodes up");
    }

    #[test]
    fn table_shows_groups_sync_states_and_what_to_do_about_a_stale_replica() {
        let mut a = node("a", v1::NodeState::Up, &[]);
        (a.shard, a.sync, a.applied_seq) = ("g".into(), v1::SyncState::InSync as i32, 5);
        let mut b = node("b", v1::NodeState::Up, &[]);
        (b.shard, b.sync, b.applied_seq) = ("g".into(), v1::SyncState::Stale as i32, 0);
        b.sync_message = "replica b applied up to 0 but the log of group g now starts at 4: stop b".into();
        let out = table(&[a, b], now());
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME  GROUP  STATE  SYNC     APPLIED  ADDRESS"), "{out}");
        assert!(lines[1].starts_with("a     g      up     in_sync        5"), "{out}");
        assert!(lines[2].contains("stale") && lines[2].contains("replica b applied up to 0"), "{out}");
        let group = v1::ShardGroupInfo {
            shard: "g".into(),
            replicas: vec!["a".into(), "b".into()],
            in_sync: vec!["a".into()],
            last_seq: 5,
            committed_seq: 5,
            log_first_seq: 4,
            log_entries: 2,
        };
        assert_eq!(
            groups_summary(&[group]),
            "group g: 1 of 2 replicas in sync, committed seq 5, log 4..5 (2 entries)\n"
        );
    }

    #[test]
    fn an_open_breaker_shows_when_it_probes_and_a_closed_one_stays_quiet() {
        let mut open = node("agent-1", v1::NodeState::Up, &[]);
        open.breaker = Some(v1::BreakerInfo {
            status: v1::BreakerStatus::Open as i32,
            probe_at: Some(at(1_700_000_012, 0)),
            consecutive_failures: 0,
        });
        let mut closed = node("agent-2", v1::NodeState::Up, &[]);
        closed.breaker = Some(v1::BreakerInfo { status: v1::BreakerStatus::Closed as i32, ..Default::default() });
        let out = table(&[open.clone(), closed.clone()], now());
        assert!(out.contains("BREAKER"), "{out}");
        assert!(out.contains("open (probe in"), "{out}");
        let quiet = table(&[closed.clone()], now());
        assert!(!quiet.contains("BREAKER"), "no column while every breaker is closed: {quiet}");
        assert_eq!(to_json(&open, now())["breaker"]["state"], "open");
        assert!(
            detail(&closed, now()).contains("breaker:        closed, 0 failed calls in a row"),
            "{}",
            detail(&closed, now())
        );
    }

    #[test]
    fn empty_registry_says_what_to_do() {
        assert!(table(&[], now()).contains("start an agent"));
    }

    #[test]
    fn json_keeps_numbers_as_numbers() {
        let value = list_json(&[node("agent-1", v1::NodeState::Up, &[("docs", 3)])], now());
        let first = &value[0];
        assert_eq!(first["name"], "agent-1");
        assert_eq!(first["state"], "up");
        assert_eq!(first["docs"], 3);
        assert_eq!(first["generation"], 7);
        assert_eq!(first["collections"][0]["doc_count"], 3);
        assert_eq!(first["last_heartbeat"], "1970-01-01T00:16:40Z");
        assert_eq!(first["last_heartbeat_age_ms"], 400);
        assert!(first["down_reason"].is_null());
    }

    fn pending(name: &str, reason: &str) -> v1::PendingNode {
        v1::PendingNode {
            name: name.to_owned(),
            address: "10.0.0.7:7401".to_owned(),
            last_attempt: Some(at(990, 0)),
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn pending_table_shows_attempt_ages_and_how_to_admit() {
        let out = pending_table(&[pending("app-9", "it presented no join token")], now());
        assert_eq!(
            out,
            "NAME   ADDRESS        LAST-ATTEMPT  REASON\n\
             app-9  10.0.0.7:7401  10s ago       it presented no join token\n\
             1 agent was refused: to admit, create a join token with `ragmeshctl token join` and \
             restart the agent with --join-token TOKEN\n"
        );
        let two = pending_table(&[pending("a", "x"), pending("b", "y\x1b[2J")], now());
        assert!(two.contains("2 agents were refused"), "{two}");
        assert!(!two.contains('\x1b'), "escapes from the wire are neutralised: {two:?}");
        assert!(pending_table(&[], now()).starts_with("no pending nodes"));
    }

    #[test]
    fn pending_json_keeps_reason_and_age() {
        let value = pending_json(&[pending("app-9", "join token expired")], now());
        assert_eq!(value[0]["name"], "app-9");
        assert_eq!(value[0]["reason"], "join token expired");
        assert_eq!(value[0]["last_attempt"], "1970-01-01T00:16:30Z");
        assert_eq!(value[0]["last_attempt_age_ms"], 10_400);
    }

    #[test]
    fn eviction_message_says_what_is_left_to_do() {
        let out = evicted("agent-2");
        assert!(out.starts_with("evicted agent-2: "), "{out}");
        assert!(out.contains("--revoke ID"), "{out}");
    }

    #[test]
    fn detail_lists_collections_and_labels() {
        let mut info = node("agent-1", v1::NodeState::Up, &[("guides", 2)]);
        info.labels.insert("zone".to_owned(), "eu-1".to_owned());
        let out = detail(&info, now());
        assert!(out.contains("state:          up\n"), "{out}");
        assert!(out.contains("  guides               2 documents\n"), "{out}");
        assert!(out.contains("  zone=eu-1\n"), "{out}");
    }
}
