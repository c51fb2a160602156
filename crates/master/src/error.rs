//! Errors of the master's services and their one mapping to `tonic::Status`.

use std::collections::BTreeSet;

use ragmesh_proto::ErrorKind;
use tonic::Status;

use crate::actions::RecordError;
use crate::actions::selector::SelectError;
use crate::registry::RegistryError;
use crate::replication::ReplicationError;

/// Everything a master RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The request is malformed; the message says what to change.
    #[error("{0}")]
    InvalidArgument(String),
    /// Named nodes are not in the registry.
    #[error("unknown node(s) {unknown:?}: known nodes are {known:?} (see `ragmeshctl nodes`)")]
    UnknownNodes {
        /// Names not found.
        unknown: Vec<String>,
        /// Names that exist.
        known: Vec<String>,
    },
    /// The node a write targets is down.
    #[error("node {node} is down ({reason}): writes need a live node; check the agent and retry")]
    NodeDown {
        /// Node name.
        node: String,
        /// Why it is down.
        reason: String,
    },
    /// The node answered a forwarded call with an error, or could not be reached.
    #[error("node {node}: {message}")]
    NodeCall {
        /// Node name.
        node: String,
        /// What kind of failure (from the node's status, or unavailable for a transport failure).
        kind: ErrorKind,
        /// Its message.
        message: String,
    },
    /// No agent has registered with this master yet.
    #[error(
        "no agent has registered with this master yet: start agents with --master pointing here (see `ragmeshctl nodes`)"
    )]
    NoNodes,
    /// No node, up or down, holds any of the requested collections.
    #[error("{}", no_such_collections(requested, existing))]
    NoSuchCollections {
        /// Collections asked for.
        requested: Vec<String>,
        /// Collections that exist.
        existing: BTreeSet<String>,
    },
    /// Nodes were asked but none answered.
    #[error("no node answered the search: {summary}")]
    NoAnswer {
        /// How the search failed.
        kind: ErrorKind,
        /// Each node's outcome.
        summary: String,
    },
    /// The agent speaks another protocol major version.
    #[error(
        "agent {node} speaks protocol {agent_major}.{agent_minor} but this master speaks {master_major}.{master_minor}: run agent and master releases with the same protocol major version"
    )]
    ProtocolMismatch {
        /// Node name.
        node: String,
        /// Agent's major.
        agent_major: u32,
        /// Agent's minor.
        agent_minor: u32,
        /// Master's major.
        master_major: u32,
        /// Master's minor.
        master_minor: u32,
    },
    /// The caller's certificate names another node.
    #[error(
        "certificate names {cert_name:?} but the agent registers as {claimed:?}: start the agent with --name {cert_name} or issue it a certificate for {claimed}"
    )]
    IdentityMismatch {
        /// Name in the certificate.
        cert_name: String,
        /// Name claimed in the request.
        claimed: String,
    },
    /// A certificate that names no admitted agent opened a health stream.
    #[error(
        "certificate {name:?} does not belong to an admitted agent: only agents open health streams, after they Register"
    )]
    NotAnAgent {
        /// Name in the certificate.
        name: String,
    },
    /// No usable client certificate.
    #[error("no client certificate: connect with a certificate issued by the mesh CA")]
    NoPeerIdentity,
    /// The health stream quotes a session this master does not know (for example after a restart).
    #[error("unknown session for node {node}: register again")]
    UnknownSession {
        /// Node name.
        node: String,
    },
    /// A credential was presented and refused (bad token, missing capability, used refresh token...).
    #[error("{0}")]
    Auth(#[from] ragmesh_auth::AuthError),
    /// The `authorization` header is malformed.
    #[error("{0}")]
    BadCredentials(String),
    /// No acceptable credential at all.
    #[error("{}", no_credentials(certificate.as_deref()))]
    NoCredentials {
        /// Name in the caller's certificate, when it has one.
        certificate: Option<String>,
    },
    /// An agent that is not (or no longer) admitted tried to register.
    #[error(
        "node {node} is not admitted: {reason}; create a join token with `ragmeshctl token join` and start the agent with --join-token"
    )]
    NotAdmitted {
        /// Node name.
        node: String,
        /// Why its join token (if any) was refused.
        reason: String,
    },
    /// Authentication already failed in the auth layer; this is its answer.
    #[error("{}", .0.message())]
    Refused(tonic::Status),
    /// No join token has this id.
    #[error("no join token with id {0:?}: see `ragmeshctl token join --list`")]
    UnknownJoinToken(String),
    /// The token's subject was revoked after the token was issued.
    #[error("token of subject {subject:?} was revoked by an operator at {revoked_at} (unix seconds): get a new token")]
    Revoked {
        /// Subject.
        subject: String,
        /// When it was revoked.
        revoked_at: u64,
    },
    /// The master is still starting.
    #[error("master is still loading its registry: retry shortly")]
    NotReady,
    /// The registry store failed.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// A replicated write was not acknowledged.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The action records refused or failed (idempotency keys, jobs, audit log).
    #[error(transparent)]
    Records(#[from] RecordError),
    /// An action's node selector selects nothing usable.
    #[error(transparent)]
    Selection(#[from] SelectError),
    /// The transaction log or its driver failed.
    #[error(transparent)]
    Transactions(#[from] crate::actions::transactions::TxError),
    /// A transaction's action part that its node would refuse (it does not offer the action,
    /// the action is not transactional, or the caller may not run it there): nothing prepared.
    #[error("node {node} cannot take part in the transaction: {reason}; nothing was prepared")]
    CannotTakePart {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
}

impl MasterError {
    /// The kind of this error; [`ErrorKind::code`] turns it into the gRPC code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MasterError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            MasterError::UnknownNodes { .. } | MasterError::UnknownJoinToken(_) => ErrorKind::NotFound,
            MasterError::NoSuchCollections { .. } => ErrorKind::NotFound,
            MasterError::NodeDown { .. } | MasterError::NotReady | MasterError::NoNodes => ErrorKind::Unavailable,
            MasterError::NodeCall { kind, .. } | MasterError::NoAnswer { kind, .. } => *kind,
            MasterError::ProtocolMismatch { .. }
            | MasterError::UnknownSession { .. }
            | MasterError::CannotTakePart { .. } => ErrorKind::FailedPrecondition,
            MasterError::IdentityMismatch { .. } | MasterError::NotAdmitted { .. } | MasterError::NotAnAgent { .. } => {
                ErrorKind::PermissionDenied
            }
            MasterError::NoPeerIdentity
            | MasterError::BadCredentials(_)
            | MasterError::NoCredentials { .. }
            | MasterError::Revoked { .. } => ErrorKind::Unauthenticated,
            MasterError::Registry(_) => ErrorKind::Internal,
            MasterError::Auth(auth) => auth.kind(),
            MasterError::Refused(status) => ErrorKind::of(status),
            MasterError::Replication(err) => match err {
                ReplicationError::NoTarget { .. } => ErrorKind::InvalidArgument,
                ReplicationError::UnknownGroup { .. } | ReplicationError::UnknownNode { .. } => ErrorKind::NotFound,
                ReplicationError::NoReplicas { .. } | ReplicationError::QuorumNotReached { .. } => {
                    ErrorKind::Unavailable
                }
                ReplicationError::Refused { kind, .. } => *kind,
                ReplicationError::Log(_) | ReplicationError::Task(_) => ErrorKind::Internal,
            },
            MasterError::Records(err) => match err {
                RecordError::KeyReused { .. } => ErrorKind::FailedPrecondition,
                // Answered ABORTED (see `From<MasterError> for Status`); FAILED_PRECONDITION is
                // the nearest kind of the shared table.
                RecordError::OutcomeUnknown { .. } => ErrorKind::FailedPrecondition,
                RecordError::TooManyKeys { .. } => ErrorKind::ResourceExhausted,
                RecordError::KeyBusy { .. } => ErrorKind::Unavailable,
                RecordError::NoSuchJob { .. } => ErrorKind::NotFound,
                RecordError::Store(_) | RecordError::Corrupt { .. } | RecordError::Task(_) => ErrorKind::Internal,
            },
            MasterError::Transactions(_) => ErrorKind::Internal,
            MasterError::Selection(err) => match err {
                SelectError::UnknownNodes { .. } | SelectError::UnknownShards { .. } => ErrorKind::NotFound,
                SelectError::NoCriteria | SelectError::Empty { .. } => ErrorKind::InvalidArgument,
            },
        }
    }
}

impl From<MasterError> for Status {
    fn from(err: MasterError) -> Status {
        if let MasterError::Refused(status) = err {
            return status;
        }
        if let MasterError::Records(RecordError::OutcomeUnknown { .. }) = err {
            // The earlier call may or may not have run: the caller's transaction is aborted.
            return Status::aborted(err.to_string());
        }
        let kind = err.kind();
        if kind == ErrorKind::Internal {
            tracing::error!(error = %err, "internal error");
        }
        kind.status(err.to_string())
    }
}

fn no_such_collections(requested: &[String], existing: &BTreeSet<String>) -> String {
    let existing = if existing.is_empty() {
        "no node holds any collection yet (ingest documents first)".to_owned()
    } else {
        format!("collections that exist: {}", existing.iter().cloned().collect::<Vec<_>>().join(", "))
    };
    format!("no node holds collection(s) {}: {existing}", requested.join(", "))
}

fn no_credentials(certificate: Option<&str>) -> String {
    match certificate {
        Some(name) => format!(
            "no access token, and certificate {name:?} is not an operator: send `authorization: Bearer <token>` (get one with `ragmeshctl token issue`) or add {name} to the master's --operators"
        ),
        None => {
            "no credentials: send `authorization: Bearer <token>` (get one with `ragmeshctl token issue`)".to_owned()
        }
    }
}
