//! The liveness state machine of one node, as a pure function of events: no clock reads, no I/O.
//!
//! ```text
//!            Registered            Heartbeat
//!  (any) ───────────────► Joining ──────────► Up ◄──────┐
//!                            │                 │ Late    │ Heartbeat
//!                            │                 ▼         │
//!                            │              Suspect ─────┘
//!                            │ Silent / StreamEnded │ Silent / StreamEnded
//!                            └──────────► Down ◄────┘
//! ```
//! Every event but `Registered` carries the session it belongs to; events of an older session
//! (a stream that a newer registration superseded) never change the state.

use std::fmt;

/// Liveness state of a node as the master sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Registered; health stream not yet delivering heartbeats.
    Joining,
    /// Heartbeats arrive on time.
    Up,
    /// Heartbeats are late; the node is still searched.
    Suspect,
    /// Stream ended or heartbeats stopped; the node is skipped.
    Down,
}

impl NodeState {
    /// Whether a federated search should ask this node.
    pub fn is_searchable(self) -> bool {
        matches!(self, NodeState::Up | NodeState::Suspect | NodeState::Joining)
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Joining => "joining",
            NodeState::Up => "up",
            NodeState::Suspect => "suspect",
            NodeState::Down => "down",
        })
    }
}

/// Identifies one registration of a node; a new registration supersedes the old session.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub String);

impl SessionId {
    /// A fresh random session id.
    pub fn random() -> Self {
        SessionId(format!("{:032x}", rand::random::<u128>()))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Something that happened to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LivenessEvent {
    /// The node registered and got this new session.
    Registered(SessionId),
    /// A heartbeat arrived on the session's stream.
    Heartbeat(SessionId),
    /// The heartbeat is overdue (past the suspect threshold).
    Late(SessionId),
    /// No heartbeat for the whole timeout.
    Silent(SessionId),
    /// The session's health stream ended (closed, reset or broken).
    StreamEnded(SessionId),
}

/// Liveness of one node: its state, the session that owns it and why it is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liveness {
    /// Current state.
    pub state: NodeState,
    /// Session of the latest registration; `None` until the node registers with this master.
    pub session: Option<SessionId>,
    /// Why the node is down, when it is.
    pub down_reason: Option<String>,
}

impl Liveness {
    /// A node known from the persisted registry but not (yet) connected to this master process.
    pub fn restored() -> Self {
        Liveness {
            state: NodeState::Down,
            session: None,
            down_reason: Some("master restarted: waiting for the node to reconnect".to_owned()),
        }
    }

    /// Applies an event; returns whether the state changed. `reason` explains a move to down.
    pub fn apply(&mut self, event: &LivenessEvent, reason: &str) -> bool {
        let before = self.state;
        if let LivenessEvent::Registered(session) = event {
            self.session = Some(session.clone());
            self.state = NodeState::Joining;
            self.down_reason = None;
            return before != self.state;
        }
        let session = match event {
            LivenessEvent::Heartbeat(s)
            | LivenessEvent::Late(s)
            | LivenessEvent::Silent(s)
            | LivenessEvent::StreamEnded(s) => s,
            LivenessEvent::Registered(_) => unreachable!("handled above"),
        };
        if self.session.as_ref() != Some(session) {
            return false; // a superseded stream speaks: ignore it
        }
        let next = match (event, self.state) {
            (LivenessEvent::Heartbeat(_), _) => NodeState::Up,
            (LivenessEvent::Late(_), NodeState::Up) => NodeState::Suspect,
            (LivenessEvent::Late(_), state) => state,
            (LivenessEvent::Silent(_) | LivenessEvent::StreamEnded(_), _) => NodeState::Down,
            (LivenessEvent::Registered(_), _) => unreachable!("handled above"),
        };
        if next == NodeState::Down && before != NodeState::Down {
            self.down_reason = Some(reason.to_owned());
        }
        if next != NodeState::Down {
            self.down_reason = None;
        }
        self.state = next;
        before != next
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn s(n: u8) -> SessionId {
        SessionId(format!("s{n}"))
    }

    fn event() -> impl Strategy<Value = LivenessEvent> {
        (0u8..5, 0u8..3).prop_map(|(kind, session)| match kind {
            0 => LivenessEvent::Registered(s(session)),
            1 => LivenessEvent::Heartbeat(s(session)),
            2 => LivenessEvent::Late(s(session)),
            3 => LivenessEvent::Silent(s(session)),
            _ => LivenessEvent::StreamEnded(s(session)),
        })
    }

    #[test]
    fn happy_path_joining_up_suspect_up_down() {
        let mut live = Liveness::restored();
        assert!(live.apply(&LivenessEvent::Registered(s(1)), ""));
        assert_eq!(live.state, NodeState::Joining);
        live.apply(&LivenessEvent::Heartbeat(s(1)), "");
        assert_eq!(live.state, NodeState::Up);
        live.apply(&LivenessEvent::Late(s(1)), "");
        assert_eq!(live.state, NodeState::Suspect);
        live.apply(&LivenessEvent::Heartbeat(s(1)), "");
        assert_eq!(live.state, NodeState::Up);
        live.apply(&LivenessEvent::StreamEnded(s(1)), "stream closed");
        assert_eq!(live.state, NodeState::Down);
        assert_eq!(live.down_reason.as_deref(), Some("stream closed"));
    }

    #[test]
    fn a_superseded_stream_ending_does_not_take_the_node_down() {
        let mut live = Liveness::restored();
        live.apply(&LivenessEvent::Registered(s(1)), "");
        live.apply(&LivenessEvent::Registered(s(2)), "");
        live.apply(&LivenessEvent::Heartbeat(s(2)), "");
        assert!(!live.apply(&LivenessEvent::StreamEnded(s(1)), "old stream"));
        assert_eq!(live.state, NodeState::Up);
    }

    #[test]
    fn late_never_revives_a_down_node() {
        let mut live = Liveness::restored();
        live.apply(&LivenessEvent::Registered(s(1)), "");
        live.apply(&LivenessEvent::Silent(s(1)), "silent");
        live.apply(&LivenessEvent::Late(s(1)), "");
        assert_eq!(live.state, NodeState::Down);
    }

    proptest! {
        #[test]
        fn events_of_other_sessions_never_change_anything(events in proptest::collection::vec(event(), 0..40)) {
            let mut live = Liveness::restored();
            live.apply(&LivenessEvent::Registered(s(9)), "");
            for event in &events {
                if matches!(event, LivenessEvent::Registered(_)) { continue; }
                let before = live.clone();
                prop_assert!(!live.apply(event, "x"));
                prop_assert_eq!(&live, &before);
            }
        }

        #[test]
        fn state_is_down_exactly_when_a_down_reason_is_set(events in proptest::collection::vec(event(), 0..40)) {
            let mut live = Liveness::restored();
            for event in &events {
                live.apply(event, "reason");
                prop_assert_eq!(live.state == NodeState::Down, live.down_reason.is_some());
            }
        }

        #[test]
        fn the_last_session_event_decides(events in proptest::collection::vec(event(), 1..40)) {
            let mut live = Liveness::restored();
            for event in &events {
                live.apply(event, "reason");
            }
            // Replaying only the current session's events from its registration gives the same state.
            if let Some(session) = live.session.clone() {
                let start = events.iter().rposition(|e| *e == LivenessEvent::Registered(session.clone()));
                if let Some(start) = start {
                    let mut replay = Liveness::restored();
                    for event in &events[start..] {
                        replay.apply(event, "reason");
                    }
                    prop_assert_eq!(replay.state, live.state);
                }
            }
        }
    }
}
