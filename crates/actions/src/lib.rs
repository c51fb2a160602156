//! What a ragmesh action is and how an agent runs one.
//!
//! - [`spec`]: the declaration of an operator-defined action (`[[actions]]` in the agent's
//!   TOML) and [`validate_spec`].
//! - [`schema`]: argument types and constraints, and [`validate`] for a call's arguments.
//! - [`mod@digest`]: [`redacted`] arguments for logs and the keyed [`digest()`] for idempotency
//!   and audit.
//! - [`run`]: the exec and http runners ([`run_step`], [`run_single`]).
//! - [`wire`]: descriptors and results as the protobuf messages of the actions RPCs.
//!
//! Plain types (and their wire form) both the master (validation, redaction, digests) and the agent
//! (validation again, running) use.
#![forbid(unsafe_code)]

pub mod access;
pub mod digest;
pub mod run;
pub mod schema;
pub mod spec;
pub mod wire;

pub use access::authorize;
pub use digest::{REDACTED, digest, redacted, redacted_args};
pub use run::{ActionOutcome, Captured, RunLimits, StepOutcome, StepStatus, run_single, run_step};
pub use schema::{ArgKind, ArgProblem, ArgProblemKind, ArgSpec, ArgValue, Bound, ValidArgs, validate, validate_args};
pub use spec::{
    ActionSpec, ArgvItem, ExecStep, HttpBody, HttpStep, Step, StepRole, Steps, validate_spec, validate_specs,
};

/// Errors of this crate, for callers that want one error value rather than the problem lists.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A declaration is invalid.
    #[error("invalid action declaration: {}: fix the agent's [[actions]] config", .0.join("; "))]
    Spec(Vec<String>),
    /// A call's arguments do not fit the action's schema.
    #[error("invalid arguments: {}: see `ragmeshctl action list` for the schema", join(.0))]
    Args(Vec<ArgProblem>),
}

fn join(problems: &[ArgProblem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
