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
    /// A blocking index task panicked or was cancelled.
    #[error("index task failed: {0}")]
    Task(String),
}

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Status {
        let code = match &err {
            AgentError::NotReady => Code::Unavailable,
            AgentError::Index(
                IndexError::InvalidDocument { .. } | IndexError::InvalidBatch(_) | IndexError::InvalidQuery(_),
            ) => Code::InvalidArgument,
            AgentError::Index(_) | AgentError::Task(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error");
        }
        Status::new(code, err.to_string())
    }
}
