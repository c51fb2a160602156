//! Crash points for tests of recovery: a named place in the code where the process kills itself
//! with SIGKILL when the environment variable [`ENV`] names it, so a test can stop a real daemon
//! at an exact step (say, after a decision is logged and before anyone hears it) and check what
//! the restarted daemon makes of its durable state.
//!
//! Nothing happens unless [`ENV`] is set; a daemon started with it set says so at start
//! ([`warn_if_armed`]). SIGKILL (the shell's `kill -9`), not a panic or an exit: no destructor,
//! flush or shutdown hook runs, exactly as when an operator or the kernel kills the process.

use std::process::Command;

/// The variable naming the one crash point that is armed (e.g. `coordinator.after_decision_logged`).
pub const ENV: &str = "RAGMESH_FAILPOINT";

/// Kills this process with SIGKILL if [`ENV`] names `point`; otherwise returns at once.
pub fn crash_at(point: &str) {
    if std::env::var_os(ENV).is_none_or(|armed| armed != point) {
        return;
    }
    tracing::error!(failpoint = point, "failpoint reached: killing this process with SIGKILL");
    let pid = std::process::id().to_string();
    // The shell's builtin `kill` is everywhere `sh` is; if it cannot run, abort is the closest.
    let _ = Command::new("sh").args(["-c", &format!("kill -9 {pid}")]).status();
    std::process::abort();
}

/// Logs a warning when a crash point is armed (called once at start by each daemon).
pub fn warn_if_armed(program: &str) {
    if let Some(point) = std::env::var_os(ENV) {
        tracing::warn!(
            program,
            failpoint = %point.to_string_lossy(),
            "{ENV} is set: this process kills itself at that point (a test aid; unset it in production)"
        );
    }
}
