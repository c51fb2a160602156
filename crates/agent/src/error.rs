//! Errors of the agent's service and their one mapping to `tonic::Status`.

use ragmesh_index::IndexError;
use tonic::{Code, Status};

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
    /// A blocking index task panicked or was cancelled.
    #[error("index task failed: {0}")]
    Task(String),
}

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Status {
        let code = match &err {
            AgentError::NotReady | AgentError::NoKeys => Code::Unavailable,
            AgentError::NoContext => Code::Unauthenticated,
            AgentError::Auth(auth) => match auth.category() {
                ragmesh_auth::ErrorCategory::PermissionDenied => Code::PermissionDenied,
                ragmesh_auth::ErrorCategory::Internal => Code::Internal,
                _ => Code::Unauthenticated,
            },
            AgentError::Index(
                IndexError::InvalidDocument { .. }
                | IndexError::InvalidBatch(_)
                | IndexError::InvalidQuery(_)
                | IndexError::QueryTooComplex(_),
            ) => Code::InvalidArgument,
            AgentError::Index(IndexError::Forbidden { .. }) => Code::PermissionDenied,
            AgentError::Index(_) | AgentError::Task(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error");
        }
        Status::new(code, err.to_string())
    }
}
