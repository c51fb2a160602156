//! The master's events: one owner numbers them, writes them to the webhook outbox and then
//! broadcasts them to `WatchEvents` subscribers and the webhook delivery tasks.
//!
//! Sources ([`sources`]: membership, breakers, signing keys, certificates; the registration
//! handler for admission refusals and version mismatches) hold an [`Events`] handle and call
//! [`Events::publish`], which never blocks nor fails: drafts queue on an unbounded channel (events
//! are rare, a few per node state change) and the owner task ([`run`]) drains them once the store
//! is open. Sequence numbers are strictly increasing and survive restarts (the last one is stored).
//!
//! A `WatchEvents` subscriber reads a bounded broadcast; one that falls more than
//! [`LIVE_BUFFER`] events behind is ended with RESOURCE_EXHAUSTED naming the last sequence it got,
//! never left silently missing events. Webhooks never read the broadcast: they read the durable
//! outbox ([`outbox`]), so a slow receiver only delays its own queue.

pub mod outbox;
pub mod sources;
pub mod stream;
pub mod webhook;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ragmesh_proto::v1;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use outbox::Outbox;

/// Events a `WatchEvents` subscriber may lag behind before its stream is ended.
pub const LIVE_BUFFER: usize = 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A node registered for the first time (or again after an eviction).
    NodeJoined,
    /// A node's heartbeats are late.
    NodeSuspect,
    /// A node is down.
    NodeDown,
    /// A node is up (again).
    NodeUp,
    /// An operator evicted a node.
    NodeEvicted,
    /// A join attempt was refused.
    AdmissionRefused,
    /// A node speaks another protocol major version.
    VersionMismatch,
    /// A node's circuit breaker opened.
    BreakerOpened,
    /// A node's circuit breaker closed.
    BreakerClosed,
    /// A replica is behind by more than its group's log retains.
    ReplicaStale,
    /// A replica that was behind is in sync again.
    ReplicaCaughtUp,
    /// The master signs with a new key.
    SigningKeyRotated,
    /// The master's certificate expires soon.
    CertificateNearExpiry,
}

impl EventKind {
    /// Every kind, in wire order.
    pub const ALL: [EventKind; 13] = [
        EventKind::NodeJoined,
        EventKind::NodeSuspect,
        EventKind::NodeDown,
        EventKind::NodeUp,
        EventKind::NodeEvicted,
        EventKind::AdmissionRefused,
        EventKind::VersionMismatch,
        EventKind::BreakerOpened,
        EventKind::BreakerClosed,
        EventKind::ReplicaStale,
        EventKind::ReplicaCaughtUp,
        EventKind::SigningKeyRotated,
        EventKind::CertificateNearExpiry,
    ];

    /// The name webhook filters and payloads use (`node_down`).
    pub fn as_str(self) -> &'static str {
        ragmesh_config::EVENT_KINDS[self.index()]
    }

    fn index(self) -> usize {
        EventKind::ALL.iter().position(|k| *k == self).expect("ALL lists every kind")
    }

    /// The wire enum value.
    pub fn to_wire(self) -> v1::EventKind {
        match self {
            EventKind::NodeJoined => v1::EventKind::NodeJoined,
            EventKind::NodeSuspect => v1::EventKind::NodeSuspect,
            EventKind::NodeDown => v1::EventKind::NodeDown,
            EventKind::NodeUp => v1::EventKind::NodeUp,
            EventKind::NodeEvicted => v1::EventKind::NodeEvicted,
            EventKind::AdmissionRefused => v1::EventKind::AdmissionRefused,
            EventKind::VersionMismatch => v1::EventKind::VersionMismatch,
            EventKind::BreakerOpened => v1::EventKind::BreakerOpened,
            EventKind::BreakerClosed => v1::EventKind::BreakerClosed,
            EventKind::ReplicaStale => v1::EventKind::ReplicaStale,
            EventKind::ReplicaCaughtUp => v1::EventKind::ReplicaCaughtUp,
            EventKind::SigningKeyRotated => v1::EventKind::SigningKeyRotated,
            EventKind::CertificateNearExpiry => v1::EventKind::CertificateNearExpiry,
        }
    }

    /// The kind of a wire enum value (`None` for UNSPECIFIED and unknown values).
    pub fn from_wire(value: i32) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.to_wire() as i32 == value)
    }
}

/// What an event says besides its kind; empty fields are left out of the JSON payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    /// Node concerned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Shard group concerned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shard: String,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Address of the node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// New signing key id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    /// Certificate expiry, in milliseconds since the UNIX epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Protocol the agent spoke (`MAJOR.MINOR`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_protocol: String,
}

/// An event before the owner numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// What happened.
    pub kind: EventKind,
    /// The rest.
    pub detail: Detail,
}

impl Draft {
    /// An event about `node`.
    pub fn node(kind: EventKind, node: &str, message: impl Into<String>) -> Draft {
        Draft { kind, detail: Detail { node: node.to_owned(), message: message.into(), ..Detail::default() } }
    }
}

/// A numbered event: what subscribers and webhooks receive (the webhook body is its JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (`evt-<seq>`): receivers deduplicate on it (delivery is at least once).
    pub id: String,
    /// Sequence number.
    pub seq: u64,
    /// When recorded, in milliseconds since the UNIX epoch.
    pub time_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The rest.
    #[serde(flatten)]
    pub detail: Detail,
}

impl Event {
    /// Numbers `draft`.
    pub fn new(seq: u64, time_ms: u64, draft: Draft) -> Event {
        Event { id: format!("evt-{seq}"), seq, time_ms, kind: draft.kind, detail: draft.detail }
    }

    /// The wire form.
    pub fn to_wire(&self) -> v1::Event {
        let d = &self.detail;
        v1::Event {
            seq: self.seq,
            time: Some(timestamp(self.time_ms)),
            kind: self.kind.to_wire() as i32,
            node: d.node.clone(),
            shard: d.shard.clone(),
            message: d.message.clone(),
            address: d.address.clone(),
            key_id: d.key_id.clone(),
            expires_at: d.expires_at_ms.map(timestamp),
            agent_protocol: d.agent_protocol.clone(),
        }
    }
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// Milliseconds since the UNIX epoch.
pub fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// The handle sources publish to and `WatchEvents` subscribes from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    drafts: mpsc::UnboundedSender<Draft>,
    live: broadcast::Sender<Event>,
}

/// The owner's end of [`Events`], handed to [`run`] once the store is open.
#[derive(Debug)]
pub struct EventsOwner {
    drafts: mpsc::UnboundedReceiver<Draft>,
    live: broadcast::Sender<Event>,
}

impl Events {
    /// A handle and its owner's end; events queue until the owner runs.
    pub fn new() -> (Events, EventsOwner) {
        let (drafts, receiver) = mpsc::unbounded_channel();
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        (Events { drafts, live: live.clone() }, EventsOwner { drafts: receiver, live })
    }

    /// Records an event (never blocks; dropped only once the master has stopped).
    pub fn publish(&self, draft: Draft) {
        tracing::info!(event.kind = draft.kind.as_str(), node.id = %draft.detail.node, message = %draft.detail.message, "event");
        let _ = self.drafts.send(draft);
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}

/// The owner: numbers each draft, appends it to the outbox (when a webhook wants it), then
/// broadcasts it and wakes the delivery tasks through `written`. Ends at `shutdown` or when every
/// handle is gone.
pub async fn run(
    mut owner: EventsOwner,
    outbox: Arc<Outbox>,
    written: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            draft = owner.drafts.recv() => match draft {
                Some(draft) => draft,
                None => return,
            },
        };
        let mut drafts = vec![first];
        while let Ok(next) = owner.drafts.try_recv() {
            drafts.push(next);
        }
        let appender = outbox.clone();
        let numbered = tokio::task::spawn_blocking(move || appender.append(drafts, now_ms())).await;
        let events = match numbered {
            Ok(events) => events,
            Err(error) => {
                tracing::error!(%error, "event outbox task failed");
                continue;
            }
        };
        for event in events {
            let seq = event.seq;
            let _ = owner.live.send(event);
            written.send_replace(seq);
        }
    }
}

/// Opens the webhook outbox for `config` (blocking: call from `spawn_blocking`).
pub fn open_outbox(
    store: Arc<dyn ragmesh_store::StateStore>,
    config: &ragmesh_config::EventsConfig,
) -> Result<Arc<Outbox>, ragmesh_store::StoreError> {
    Outbox::open(store, &config.webhooks, config.outbox_max_events).map(Arc::new)
}

/// What [`start`] needs once the store is open.
#[derive(Debug)]
pub struct Parts<'a> {
    /// The owner's end made with the handle.
    pub owner: EventsOwner,
    /// The handle.
    pub events: &'a Events,
    /// The opened outbox.
    pub outbox: Arc<Outbox>,
    /// Webhooks to deliver to.
    pub webhooks: &'a [ragmesh_config::WebhookConfig],
    /// Membership to follow.
    pub membership: watch::Receiver<crate::registry::Membership>,
    /// Signing keys to follow.
    pub keys: watch::Receiver<Vec<ragmesh_auth::PublicKey>>,
    /// Where the tasks are tracked.
    pub tasks: &'a tokio_util::task::TaskTracker,
    /// Ends every task.
    pub shutdown: &'a CancellationToken,
}

/// Starts the owner, one delivery task per webhook, and the membership and key sources.
pub fn start(parts: Parts<'_>) {
    let Parts { owner, events, outbox, webhooks, membership, keys, tasks, shutdown } = parts;
    let (written, _) = watch::channel(outbox.last_seq());
    for webhook in webhooks {
        tracing::info!(webhook = %webhook.name, url = %webhook.url, "webhook delivery started");
        tasks.spawn(webhook::run(webhook.clone(), outbox.clone(), written.subscribe(), shutdown.clone()));
    }
    tasks.spawn(run(owner, outbox, written, shutdown.clone()));
    tasks.spawn(sources::follow_membership(membership, events.clone(), shutdown.clone()));
    tasks.spawn(sources::follow_keys(keys, events.clone(), shutdown.clone()));
}

/// Turns a wire filter into kinds (empty: every kind); unknown values are refused.
pub fn kinds_from_wire(values: &[i32]) -> Result<Vec<EventKind>, String> {
    let mut kinds = Vec::new();
    for &value in values {
        match EventKind::from_wire(value) {
            Some(kind) => kinds.push(kind),
            None => return Err(format!("unknown event kind {value}")),
        }
    }
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_match_the_config_names_and_the_wire_enum() {
        assert_eq!(EventKind::ALL.len(), ragmesh_config::EVENT_KINDS.len());
        for kind in EventKind::ALL {
            let json = serde_json::to_string(&kind).expect("serialise");
            assert_eq!(json, format!("\"{}\"", kind.as_str()), "serde and config names agree");
            assert_eq!(EventKind::from_wire(kind.to_wire() as i32), Some(kind));
            let wire_name = kind.to_wire().as_str_name().to_lowercase();
            assert_eq!(wire_name, format!("event_kind_{}", kind.as_str()), "wire and config names agree");
        }
        assert_eq!(EventKind::from_wire(0), None);
    }

    #[test]
    fn the_payload_leaves_out_empty_fields_and_round_trips() {
        let event = Event::new(7, 1_700_000_000_123, Draft::node(EventKind::NodeDown, "agent-1", "stream ended"));
        let json = serde_json::to_string(&event).expect("serialise");
        assert_eq!(
            json,
            r#"{"id":"evt-7","seq":7,"time_ms":1700000000123,"kind":"node_down","node":"agent-1","message":"stream ended"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).expect("parse"), event);
        let wire = event.to_wire();
        assert_eq!(wire.time, Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 123_000_000 }));
    }
}
