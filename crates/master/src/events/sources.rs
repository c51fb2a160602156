//! The sources of events that follow state owned elsewhere: membership and replica sync (a diff
//! of successive registry snapshots, [`membership_changes`]), circuit breakers (a tee in front of
//! the breakers writer, which sees every transition), signing keys (the key watch) and the
//! master's certificate (a periodic check). Admission refusals and version mismatches are
//! published by the registration handler itself.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use ragmesh_auth::PublicKey;
use ragmesh_stack::breaker::BreakerState;
use ragmesh_stack::node_health::BreakerUpdate;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Detail, Draft, EventKind, Events};
use crate::node::NodeState;
use crate::registry::{Membership, NodeView, SyncState};

/// How often the master's certificate is checked (it is also checked on every reload).
pub const CERTIFICATE_CHECK: Duration = Duration::from_secs(3600);

fn node_event(kind: EventKind, view: &NodeView, message: impl Into<String>) -> Draft {
    Draft {
        kind,
        detail: Detail {
            node: view.record.name.clone(),
            shard: view.record.group().to_owned(),
            message: message.into(),
            ..Detail::default()
        },
    }
}

/// The events between two membership snapshots, in node-name order: joins (a name not known
/// before), evictions (a name gone), liveness transitions into suspect, down and up, and replica
/// sync transitions into stale and back in sync.
pub fn membership_changes(old: &Membership, new: &Membership) -> Vec<Draft> {
    let mut drafts = Vec::new();
    for (name, view) in new.iter() {
        let Some(before) = old.get(name) else {
            drafts.push(Draft {
                kind: EventKind::NodeJoined,
                detail: Detail {
                    node: name.clone(),
                    shard: view.record.group().to_owned(),
                    address: view.record.address.clone(),
                    message: format!("agent {} joined", view.record.version),
                    ..Detail::default()
                },
            });
            if view.state == NodeState::Up {
                drafts.push(node_event(EventKind::NodeUp, view, "heartbeats arrive on time"));
            }
            continue;
        };
        if before.state != view.state {
            match view.state {
                NodeState::Suspect => drafts.push(node_event(EventKind::NodeSuspect, view, "heartbeats are late")),
                NodeState::Down => drafts.push(node_event(
                    EventKind::NodeDown,
                    view,
                    view.down_reason.clone().unwrap_or_else(|| "down".to_owned()),
                )),
                NodeState::Up => drafts.push(node_event(EventKind::NodeUp, view, "heartbeats arrive on time")),
                NodeState::Joining => {}
            }
        }
        match (&before.sync, &view.sync) {
            (SyncState::Stale { .. }, SyncState::Stale { .. }) => {}
            (_, SyncState::Stale { message }) => {
                drafts.push(node_event(EventKind::ReplicaStale, view, message.clone()))
            }
            (SyncState::CatchingUp | SyncState::Stale { .. }, SyncState::InSync) => {
                drafts.push(node_event(EventKind::ReplicaCaughtUp, view, "applied every acknowledged write"))
            }
            _ => {}
        }
    }
    for (name, view) in old.iter() {
        if !new.contains_key(name) {
            drafts.push(node_event(EventKind::NodeEvicted, view, "evicted by an operator"));
        }
    }
    drafts
}

/// Publishes the membership changes until `shutdown`. The first snapshot is the baseline (a
/// restarted master does not announce the nodes it loaded).
pub async fn follow_membership(
    mut membership: watch::Receiver<Membership>,
    events: Events,
    shutdown: CancellationToken,
) {
    let mut previous = membership.borrow_and_update().clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = membership.changed() => if changed.is_err() { return },
        }
        let current = membership.borrow_and_update().clone();
        for draft in membership_changes(&previous, &current) {
            events.publish(draft);
        }
        previous = current;
    }
}

/// Whether a breaker transition from `before` (`None`: not seen since the master started) to
/// `after` is an event: opening from closed (not each failed probe of an open breaker), and
/// closing from anything else.
pub fn breaker_change(before: Option<&BreakerState>, after: &BreakerState) -> Option<EventKind> {
    match (before, after) {
        (None | Some(BreakerState::Closed), BreakerState::Open { .. }) => Some(EventKind::BreakerOpened),
        (Some(BreakerState::Closed), BreakerState::Closed) => None,
        (_, BreakerState::Closed) => Some(EventKind::BreakerClosed),
        _ => None,
    }
}

/// Sits in front of the breakers writer: forwards every transition unchanged and publishes
/// opened/closed events. Returns the writer's receiver; the tee ends with its sender.
pub fn tee_breakers(
    mut updates: mpsc::UnboundedReceiver<BreakerUpdate>,
    events: Events,
) -> mpsc::UnboundedReceiver<BreakerUpdate> {
    let (forward, writer) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut last: HashMap<String, BreakerState> = HashMap::new();
        while let Some(update) = updates.recv().await {
            if let Some(kind) = breaker_change(last.get(&update.node), &update.state) {
                let message = match update.state {
                    BreakerState::Open { attempt, .. } => {
                        format!("calls failed repeatedly; refused locally until a probe passes (opening {attempt})")
                    }
                    _ => "a probe passed; calls flow again".to_owned(),
                };
                events.publish(Draft::node(kind, &update.node, message));
            }
            last.insert(update.node.clone(), update.state);
            if forward.send(update).is_err() {
                return;
            }
        }
    });
    writer
}

/// The key ids of `before` that `after` adds: the keys a rotation introduced.
pub fn new_keys(before: &[String], after: &[String]) -> Vec<String> {
    after.iter().filter(|kid| !before.contains(kid)).cloned().collect()
}

/// Publishes `signing_key_rotated` for every verification key that appears (a rotation adds
/// one; keys that age out are not events).
pub async fn follow_keys(mut keys: watch::Receiver<Vec<PublicKey>>, events: Events, shutdown: CancellationToken) {
    let kids = |keys: &[PublicKey]| keys.iter().map(|k| k.kid().to_owned()).collect::<Vec<_>>();
    let mut current = kids(&keys.borrow_and_update());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = keys.changed() => if changed.is_err() { return },
        }
        let latest = kids(&keys.borrow_and_update());
        for kid in new_keys(&current, &latest) {
            events.publish(Draft {
                kind: EventKind::SigningKeyRotated,
                detail: Detail { key_id: kid, message: "tokens are signed with a new key".into(), ..Detail::default() },
            });
        }
        current = latest;
    }
}

/// The event for a certificate in state `expiry` at `now`, unless already announced: `announced`
/// holds the expiry time last announced (one event per certificate and per warning/expired step).
pub fn certificate_event(
    expiry: &ragmesh_tls::Expiry,
    now: SystemTime,
    announced: &mut Option<(SystemTime, bool)>,
) -> Option<Draft> {
    let (expires_at, expired, message) = match *expiry {
        ragmesh_tls::Expiry::Valid { .. } => return None,
        ragmesh_tls::Expiry::ExpiresSoon { remaining } => (
            now + remaining,
            false,
            format!("the master's certificate expires in {} h: renew it", remaining.as_secs() / 3600),
        ),
        ragmesh_tls::Expiry::Expired { since } => {
            (now - since, true, "the master's certificate has expired: renew it now".to_owned())
        }
    };
    // Round to the second so repeated checks of the same certificate compare equal.
    let expires_ms = expires_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() * 1000);
    let key = (SystemTime::UNIX_EPOCH + Duration::from_millis(expires_ms), expired);
    if *announced == Some(key) {
        return None;
    }
    *announced = Some(key);
    Some(Draft {
        kind: EventKind::CertificateNearExpiry,
        detail: Detail { message, expires_at_ms: Some(expires_ms), ..Detail::default() },
    })
}

/// Checks the master's certificate every [`CERTIFICATE_CHECK`] and on every reload.
pub async fn watch_certificate(tls: ragmesh_tls::ReloadableTls, events: Events, shutdown: CancellationToken) {
    let mut reloads = tls.subscribe();
    let mut tick = tokio::time::interval(CERTIFICATE_CHECK);
    let mut announced = None;
    loop {
        if let Some(draft) = certificate_event(&tls.current().expiry(), SystemTime::now(), &mut announced) {
            events.publish(draft);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = reloads.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::registry::NodeRecord;

    fn view(name: &str, state: NodeState, sync: SyncState) -> NodeView {
        let mut view = NodeView::for_tests(name, state, &["docs"]);
        view.sync = sync;
        view
    }

    fn membership(views: &[NodeView]) -> Membership {
        Arc::new(views.iter().map(|v| (v.record.name.clone(), v.clone())).collect::<BTreeMap<_, _>>())
    }

    fn kinds(drafts: &[Draft]) -> Vec<(EventKind, String)> {
        drafts.iter().map(|d| (d.kind, d.detail.node.clone())).collect()
    }

    #[test]
    fn liveness_and_sync_transitions_become_events() {
        let old = membership(&[
            view("a", NodeState::Up, SyncState::InSync),
            view("b", NodeState::Up, SyncState::CatchingUp),
            view("c", NodeState::Suspect, SyncState::InSync),
            view("gone", NodeState::Down, SyncState::InSync),
        ]);
        let mut down = view("a", NodeState::Down, SyncState::InSync);
        down.down_reason = Some("health stream ended".into());
        let new = membership(&[
            down,
            view("b", NodeState::Up, SyncState::InSync),
            view("c", NodeState::Up, SyncState::Stale { message: "restore from a snapshot".into() }),
            view("new", NodeState::Joining, SyncState::InSync),
        ]);
        let drafts = membership_changes(&old, &new);
        assert_eq!(
            kinds(&drafts),
            [
                (EventKind::NodeDown, "a".into()),
                (EventKind::ReplicaCaughtUp, "b".into()),
                (EventKind::NodeUp, "c".into()),
                (EventKind::ReplicaStale, "c".into()),
                (EventKind::NodeJoined, "new".into()),
                (EventKind::NodeEvicted, "gone".into()),
            ]
        );
        assert_eq!(drafts[0].detail.message, "health stream ended");
        assert_eq!(drafts[3].detail.message, "restore from a snapshot");
        assert!(membership_changes(&new, &new).is_empty(), "no change, no event");
    }

    #[test]
    fn a_heartbeat_that_changes_nothing_visible_is_no_event() {
        let old = membership(&[view("a", NodeState::Up, SyncState::InSync)]);
        let mut beat = view("a", NodeState::Up, SyncState::InSync);
        beat.in_flight = 7;
        beat.record = std::sync::Arc::new(NodeRecord { generation: 9, ..NodeRecord::clone(&beat.record) });
        assert!(membership_changes(&old, &membership(&[beat])).is_empty());
    }

    #[test]
    fn breakers_announce_opening_once_and_closing() {
        let open = BreakerState::Open { until: Duration::from_secs(1), attempt: 0 };
        let reopened = BreakerState::Open { until: Duration::from_secs(3), attempt: 1 };
        let probing = BreakerState::HalfOpen { since: Duration::from_secs(1), attempt: 0 };
        assert_eq!(breaker_change(None, &open), Some(EventKind::BreakerOpened));
        assert_eq!(breaker_change(Some(&BreakerState::Closed), &open), Some(EventKind::BreakerOpened));
        assert_eq!(breaker_change(Some(&open), &probing), None);
        assert_eq!(breaker_change(Some(&probing), &reopened), None, "a failed probe is not a new opening");
        assert_eq!(breaker_change(Some(&probing), &BreakerState::Closed), Some(EventKind::BreakerClosed));
        assert_eq!(
            breaker_change(None, &BreakerState::Closed),
            Some(EventKind::BreakerClosed),
            "restored open, then closed"
        );
        assert_eq!(breaker_change(Some(&BreakerState::Closed), &BreakerState::Closed), None);
    }

    #[test]
    fn only_added_keys_are_rotations() {
        let kids = |k: &[&str]| k.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(new_keys(&kids(&["b", "a"]), &kids(&["a", "c", "b"])), ["c"]);
        assert!(new_keys(&kids(&["a", "b"]), &kids(&["b"])).is_empty(), "a retired key is no event");
    }

    #[test]
    fn a_certificate_is_announced_once_per_step() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let mut announced = None;
        assert!(certificate_event(&ragmesh_tls::Expiry::Valid { remaining: 30 * day }, now, &mut announced).is_none());
        let soon = ragmesh_tls::Expiry::ExpiresSoon { remaining: 2 * day };
        let first = certificate_event(&soon, now, &mut announced).expect("announced");
        assert_eq!(first.detail.expires_at_ms, Some((1_000_000 + 2 * 86_400) * 1000));
        let later = ragmesh_tls::Expiry::ExpiresSoon { remaining: day };
        assert!(certificate_event(&later, now + day, &mut announced).is_none(), "same certificate, same step");
        let expired = ragmesh_tls::Expiry::Expired { since: Duration::from_secs(10) };
        let last = certificate_event(&expired, now + 2 * day + Duration::from_secs(10), &mut announced);
        assert!(last.expect("expired is a new step").detail.message.contains("has expired"));
    }
}
