//! Exit codes, and the marker that separates "you invoked me wrongly" (64) from "something
//! failed at run time" (1).
//!
//! The subcommands return `anyhow::Error`s whose messages say what to do; a usage or
//! configuration problem is an error that is (or wraps) a [`UsageError`].

/// Exit status of a successful run.
pub const EXIT_OK: u8 = 0;
/// Exit status of a runtime failure (unreachable master, failed RPC, a daemon that died).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status of a usage or configuration error (bad flag, missing certificate), as in
/// sysexits.h `EX_USAGE`; the daemons use the same code for bad configuration.
pub const EXIT_USAGE: u8 = 64;

/// A problem with the command line or the files it names; the message says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Shorthand for an `anyhow::Error` holding a [`UsageError`].
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// The exit status for `err`: [`EXIT_USAGE`] if any link of its chain is a [`UsageError`],
/// else [`EXIT_FAILURE`].
pub fn exit_code(err: &anyhow::Error) -> u8 {
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
    fn other_errors_map_to_1() {
        assert_eq!(exit_code(&anyhow::anyhow!("master unreachable")), EXIT_FAILURE);
    }
}
