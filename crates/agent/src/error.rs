//! Errors of the agent's service and their one mapping to `tonic::Status`.

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
            AgentError::Index(
                IndexError::InvalidDocument { .. }
                | IndexError::InvalidBatch(_)
                | IndexError::InvalidQuery(_)
                | IndexError::QueryTooComplex(_),
            ) => ErrorKind::InvalidArgument,
            AgentError::Index(IndexError::Forbidden { .. }) => ErrorKind::PermissionDenied,
            AgentError::Index(_) | AgentError::Task(_) => ErrorKind::Internal,
        }
    }
}

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Status {
        let kind = err.kind();
        if kind == ErrorKind::Internal {
            tracing::error!(error = %err, "internal error");
        }
        kind.status(err.to_string())
    }
}
