//! Exit codes, and the markers that separate "you invoked me wrongly" (64) from "something
//! failed at run time" (1) and, for actions, "the call was accepted but did not succeed on every
//! node" (2) or "has not finished yet" (3).
//!
//! The subcommands return `anyhow::Error`s whose messages say what to do; a usage or
//! configuration problem is an error that is (or wraps) a [`UsageError`]; an action's outcome
//! that is not a success everywhere is an [`ActionIncomplete`].

/// Exit status of a successful run.
pub const EXIT_OK: u8 = 0;
/// Exit status of a runtime failure (unreachable master, failed RPC, a daemon that died).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status of a usage or configuration error (bad flag, missing certificate), as in
/// sysexits.h `EX_USAGE`; the daemons use the same code for bad configuration.
pub const EXIT_USAGE: u8 = 64;

/// Exit status of an action call the master accepted and ran, but that did not end ok on every
/// selected node (failed, timed out, errored, not started, unknown), or of an aborted
/// transaction.
pub const EXIT_ACTION_FAILED: u8 = 2;
/// Exit status of a job still running or a transaction not decided yet: the outcome is not known.
pub const EXIT_ACTION_PENDING: u8 = 3;

/// An action's outcome that is not a success everywhere; the message summarises it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ActionIncomplete {
    /// [`EXIT_ACTION_FAILED`] or [`EXIT_ACTION_PENDING`].
    pub code: u8,
    /// What did not succeed, e.g. `job-7: 1 of 3 nodes did not run ok (agent-2: failed)`.
    pub message: String,
}

/// A problem with the command line or the files it names; the message says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Shorthand for an `anyhow::Error` holding a [`UsageError`].
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// The exit status for `err`: an [`ActionIncomplete`]'s code, [`EXIT_USAGE`] if any link of its
/// chain is a [`UsageError`], else [`EXIT_FAILURE`].
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(incomplete) = err.chain().find_map(|link| link.downcast_ref::<ActionIncomplete>()) {
        return incomplete.code;
    }
    if err.chain().any(|link| link.is::<UsageError>()) { EXIT_USAGE } else { EXIT_FAILURE }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn usage_errors_map_to_64_even_with_context() {
        let err = Err::<(), _>(usage("pass --node")).context("ingest").expect_err("error");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        assert_eq!(format!("{err:#}"), "ingest: pass --node");
    }

    #[test]
    fn incomplete_actions_map_to_their_own_code() {
        let failed = anyhow::Error::new(ActionIncomplete { code: EXIT_ACTION_FAILED, message: "job-1".into() });
        assert_eq!(exit_code(&failed.context("action run")), EXIT_ACTION_FAILED);
        let pending = anyhow::Error::new(ActionIncomplete { code: EXIT_ACTION_PENDING, message: "job-1".into() });
        assert_eq!(exit_code(&pending), EXIT_ACTION_PENDING);
        let codes = [EXIT_OK, EXIT_FAILURE, EXIT_ACTION_FAILED, EXIT_ACTION_PENDING, EXIT_USAGE];
        let distinct: std::collections::BTreeSet<u8> = codes.into_iter().collect();
        assert_eq!(distinct.len(), codes.len(), "every outcome has its own code");
    }

    #[test]
    fn other_errors_map_to_1() {
        assert_eq!(exit_code(&anyhow::anyhow!("master unreachable")), EXIT_FAILURE);
    }
}
