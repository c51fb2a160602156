//! Errors of the agent's service and their one mapping to `tonic::Status`.

use std::path::PathBuf;

use ragmesh_index::IndexError;
use ragmesh_proto::ErrorKind;
use tonic::Status;

/// Everything an agent RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The index is still being opened.
    #[error("index is still opening: retry shortly")]
    NotReady,
    /// The index refused or failed the operation.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The request carries no signed context from the master.
    #[error("missing request context: agents answer only the master, which signs each request (x-ragmesh-context)")]
    NoContext,
    /// The master's verification keys have not arrived yet.
    #[error("not yet attached to the master (no verification keys): retry shortly")]
    NoKeys,
    /// The context was refused (bad signature, expired, missing capability...).
    #[error("request context refused: {0}")]
    Auth(#[from] ragmesh_auth::AuthError),
    /// Every slot for index work is taken (some by work whose callers already gave up).
    #[error(
        "overloaded: {limit} index operations are still running (--max-concurrent-requests {limit}); retry with backoff, or raise --max-concurrent-requests"
    )]
    Overloaded {
        /// The configured limit.
        limit: usize,
    },
    /// A write without a log position: writes reach agents only as entries of their group's log.
    #[error("writes reach an agent only through the master's write log (no log position)")]
    NoPosition,
    /// At startup: the index holds another shard group's data than `--shard` names.
    #[error(
        "index at {} holds shard group {held}'s data; start with --shard {held}, or use a fresh --data-dir to serve {wanted}",
        dir.display()
    )]
    ShardMismatch {
        /// The data directory.
        dir: PathBuf,
        /// The shard group the index holds.
        held: String,
        /// The shard group `--shard` names.
        wanted: String,
    },
    /// An operator drained this node from search (`node.drain`).
    #[error("drained by an operator: run node.undrain")]
    Drained,
    /// The action asked for is not one this agent offers.
    #[error("this agent offers no action {name:?}; it offers: {offered}")]
    UnknownAction {
        /// The name asked for (shortened).
        name: String,
        /// Every action offered.
        offered: String,
    },
    /// The call's arguments do not fit the action's schema.
    #[error("invalid arguments for {action}: {}: see `ragmeshctl action list` for the schema", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidArguments {
        /// The action.
        action: String,
        /// Every problem.
        problems: Vec<ragmesh_actions::ArgProblem>,
    },
    /// The caller may not run the action.
    #[error("not allowed to run {action}: {reason}")]
    NotAllowed {
        /// The action.
        action: String,
        /// What is missing (capability, tenant).
        reason: String,
    },
    /// A `RunAction` without a call.
    #[error("the request names no action (call is empty)")]
    NoCall,
    /// A call id reused for another call.
    #[error("call id {call_id:?} was already used for another call (other action or arguments): use a fresh call id")]
    CallIdReused {
        /// The id (shortened).
        call_id: String,
    },
    /// An action that cannot take part in a transaction.
    #[error("action {action:?} is not transactional")]
    NotTransactional {
        /// The action.
        action: String,
    },
    /// A transaction request that is malformed.
    #[error("invalid transaction request: {0}")]
    BadTransaction(String),
    /// A decision that arrived before this node's prepare of the transaction finished.
    #[error(
        "the decision is not applied here yet (the transaction is {phase} on this node); it will be applied when the prepare ends: send it again"
    )]
    DecisionPending {
        /// Where the transaction is on this node.
        phase: &'static str,
    },
    /// The participant log failed.
    #[error(transparent)]
    TxLog(#[from] ragmesh_coordinator::CoordinatorError),
    /// At startup: another process holds the participant log.
    #[error("transaction log {path} is held by another process: is another agent running with this --data-dir?")]
    TxLogLocked {
        /// The log's directory.
        path: String,
    },
    /// At startup: the node state files (drain flag, labels) are unusable.
    #[error("node state in {}: {source}", dir.display())]
    NodeState {
        /// The data directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A blocking index task panicked or was cancelled.
    #[error("index task failed: {0}")]
    Task(String),
}

impl AgentError {
    /// The kind of this error; [`ErrorKind::code`] turns it into the gRPC code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::NotReady | AgentError::NoKeys => ErrorKind::Unavailable,
            AgentError::NoContext => ErrorKind::Unauthenticated,
            AgentError::Overloaded { .. } => ErrorKind::ResourceExhausted,
            AgentError::Auth(auth) => auth.kind(),
            AgentError::NoPosition => ErrorKind::InvalidArgument,
            AgentError::ShardMismatch { .. } => ErrorKind::FailedPrecondition,
            AgentError::Index(err) => index_kind(err),
            AgentError::Task(_) => ErrorKind::Internal,
            AgentError::Drained | AgentError::DecisionPending { .. } => ErrorKind::Unavailable,
            AgentError::UnknownAction { .. } => ErrorKind::NotFound,
            AgentError::InvalidArguments { .. }
            | AgentError::NoCall
            | AgentError::CallIdReused { .. }
            | AgentError::NotTransactional { .. }
            | AgentError::BadTransaction(_) => ErrorKind::InvalidArgument,
            AgentError::NotAllowed { .. } => ErrorKind::PermissionDenied,
            AgentError::TxLog(_) | AgentError::NodeState { .. } => ErrorKind::Internal,
            AgentError::TxLogLocked { .. } => ErrorKind::FailedPrecondition,
        }
    }
}

/// The kind of an index error.
fn index_kind(err: &IndexError) -> ErrorKind {
    match err {
        IndexError::InvalidDocument { .. }
        | IndexError::InvalidBatch(_)
        | IndexError::InvalidQuery(_)
        | IndexError::QueryTooComplex(_) => ErrorKind::InvalidArgument,
        IndexError::Forbidden { .. } => ErrorKind::PermissionDenied,
        IndexError::LogGap { .. } | IndexError::WrongShard { .. } => ErrorKind::FailedPrecondition,
        IndexError::EntryRefused { refusal, .. } => index_kind(refusal),
        _ => ErrorKind::Internal,
    }
}

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Status {
        let kind = err.kind();
        if kind == ErrorKind::Internal {
            tracing::error!(error = %err, "internal error");
        }
        let mut status = kind.status(err.to_string());
        // The master resets its cursor for this replica from the metadata, without parsing text.
        // So does a refused entry, which the replica applied as a no-op.
        if let AgentError::Index(IndexError::LogGap { applied: seq, .. } | IndexError::EntryRefused { seq, .. }) = err {
            status.metadata_mut().insert(APPLIED_SEQ_METADATA, seq.into());
        }
        status
    }
}

pub use ragmesh_proto::APPLIED_SEQ_METADATA;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_failed_precondition_with_the_applied_seq_in_metadata() {
        let status = Status::from(AgentError::Index(IndexError::LogGap { applied: 41, got: 43 }));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("up to seq 41; entry 43 would leave a gap"), "{}", status.message());
        let applied = status.metadata().get(APPLIED_SEQ_METADATA).expect("metadata").to_str().expect("ascii");
        assert_eq!(applied, "41");
    }

    #[test]
    fn a_refused_entry_keeps_its_kind_and_reports_the_seq_it_consumed() {
        let refusal = IndexError::InvalidBatch("empty".into());
        let status = Status::from(AgentError::Index(IndexError::EntryRefused { seq: 7, refusal: Box::new(refusal) }));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "empty");
        assert_eq!(status.metadata().get(APPLIED_SEQ_METADATA).expect("metadata").to_str().expect("ascii"), "7");
    }

    #[test]
    fn a_wrong_shard_is_failed_precondition_naming_both_groups() {
        let status = Status::from(AgentError::Index(IndexError::WrongShard { held: "g1".into(), got: "g2".into() }));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("\"g1\"") && status.message().contains("\"g2\""), "{}", status.message());
        assert!(status.metadata().get(APPLIED_SEQ_METADATA).is_none());
    }

    #[test]
    fn a_write_without_a_position_is_invalid_argument() {
        let status = Status::from(AgentError::NoPosition);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "writes reach an agent only through the master's write log (no log position)");
    }
}
