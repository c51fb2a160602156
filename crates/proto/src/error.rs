//! One table from error kind to gRPC status code, used both ways: servers turn their error
//! kinds into codes with it, and clients (the master reading an agent's answer, `ragmeshctl`
//! reading the master's) turn codes back into kinds with it, so no two parts of the mesh can
//! disagree about what a code means.

use tonic::{Code, Status};

/// What went wrong, in the vocabulary every ragmesh crate shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or asks for the impossible: the caller must change it.
    InvalidArgument,
    /// A named thing (node, join token, collection) does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// No acceptable credential was presented.
    Unauthenticated,
    /// The credential is valid but does not allow the call.
    PermissionDenied,
    /// A limit was hit (rate, message size, concurrency): retry later or send less.
    ResourceExhausted,
    /// The system is not in a state that allows the call (protocol mismatch, stale session).
    FailedPrecondition,
    /// A party could not be reached or is not ready: retrying may help.
    Unavailable,
    /// The deadline passed before an answer.
    DeadlineExceeded,
    /// The caller gave up on the call.
    Cancelled,
    /// The server does not offer this call.
    Unimplemented,
    /// A fault on the answering side.
    Internal,
    /// A code outside this table (or a status without one).
    Unknown,
}

/// The table. Every kind appears once and every code at most once, so it reads both ways.
const TABLE: [(ErrorKind, Code); 13] = [
    (ErrorKind::InvalidArgument, Code::InvalidArgument),
    (ErrorKind::NotFound, Code::NotFound),
    (ErrorKind::AlreadyExists, Code::AlreadyExists),
    (ErrorKind::Unauthenticated, Code::Unauthenticated),
    (ErrorKind::PermissionDenied, Code::PermissionDenied),
    (ErrorKind::ResourceExhausted, Code::ResourceExhausted),
    (ErrorKind::FailedPrecondition, Code::FailedPrecondition),
    (ErrorKind::Unavailable, Code::Unavailable),
    (ErrorKind::DeadlineExceeded, Code::DeadlineExceeded),
    (ErrorKind::Cancelled, Code::Cancelled),
    (ErrorKind::Unimplemented, Code::Unimplemented),
    (ErrorKind::Internal, Code::Internal),
    (ErrorKind::Unknown, Code::Unknown),
];

impl ErrorKind {
    /// The gRPC code servers answer with for this kind.
    pub fn code(self) -> Code {
        TABLE.iter().find(|(kind, _)| *kind == self).map_or(Code::Unknown, |(_, code)| *code)
    }

    /// The kind a gRPC code stands for. Codes ragmesh never sends map to the nearest kind:
    /// `OUT_OF_RANGE` is a bad argument, `ABORTED` and `DATA_LOSS` are faults of the server.
    pub fn from_code(code: Code) -> ErrorKind {
        if let Some((kind, _)) = TABLE.iter().find(|(_, c)| *c == code) {
            return *kind;
        }
        match code {
            Code::OutOfRange => ErrorKind::InvalidArgument,
            Code::Aborted | Code::DataLoss => ErrorKind::Internal,
            _ => ErrorKind::Unknown,
        }
    }

    /// The kind of a status a client received. A status that carries a source error was made
    /// by the local transport (connection refused or reset, TLS failure, stream broken) rather
    /// than sent by the peer: the peer was unreachable, whatever code the transport chose.
    ///
    /// The one transport failure that is not "unreachable" is the channel enforcing the call's
    /// own `grpc-timeout` ([`tonic::TimeoutExpired`] in the source chain): the deadline passed.
    pub fn of(status: &Status) -> ErrorKind {
        use std::error::Error as _;
        let mut source = status.source();
        if source.is_none() {
            return ErrorKind::from_code(status.code());
        }
        while let Some(err) = source {
            if err.is::<tonic::TimeoutExpired>() {
                return ErrorKind::DeadlineExceeded;
            }
            source = err.source();
        }
        if status.code() == Code::DeadlineExceeded { ErrorKind::DeadlineExceeded } else { ErrorKind::Unavailable }
    }

    /// A status of this kind with `message`.
    pub fn status(self, message: impl Into<String>) -> Status {
        Status::new(self.code(), message)
    }

    /// Whether the caller, not the server, has to change something (request, credential).
    pub fn is_callers_fault(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidArgument
                | ErrorKind::NotFound
                | ErrorKind::AlreadyExists
                | ErrorKind::Unauthenticated
                | ErrorKind::PermissionDenied
        )
    }

    /// The lowercase name used in messages and JSON (`invalid_argument`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Unimplemented => "unimplemented",
            ErrorKind::Internal => "internal",
            ErrorKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY_CODE: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    #[test]
    fn the_table_reads_both_ways() {
        for (kind, code) in TABLE {
            assert_eq!(kind.code(), code, "{kind}");
            assert_eq!(ErrorKind::from_code(code), kind, "{code:?}");
        }
        let mut codes: Vec<i32> = TABLE.iter().map(|(_, c)| *c as i32).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len(), "every code appears once");
    }

    #[test]
    fn every_code_has_a_kind_whose_code_is_itself_or_a_code_ragmesh_sends() {
        for code in EVERY_CODE {
            let kind = ErrorKind::from_code(code);
            assert!(TABLE.iter().any(|(k, _)| *k == kind), "{code:?}");
        }
        assert_eq!(ErrorKind::from_code(Code::OutOfRange), ErrorKind::InvalidArgument);
    }

    #[test]
    fn a_transport_failure_is_unavailable_whatever_its_code() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
        let mut status = Status::unknown("transport error");
        status.set_source(std::sync::Arc::new(reset));
        assert_eq!(ErrorKind::of(&status), ErrorKind::Unavailable);
        assert_eq!(ErrorKind::of(&Status::unknown("the agent said so")), ErrorKind::Unknown);
        let mut expired = Status::cancelled("transport error");
        expired.set_source(std::sync::Arc::new(tonic::TimeoutExpired(())));
        assert_eq!(ErrorKind::of(&expired), ErrorKind::DeadlineExceeded, "the call's own deadline passed");
        assert_eq!(ErrorKind::of(&Status::invalid_argument("bad")), ErrorKind::InvalidArgument);
    }
}
