//! The exec runner: a program run directly (never through a shell) in its own process group,
//! with argv placeholders substituted as whole items, stdin closed, a cleared environment, and
//! stdout/stderr read concurrently into bounded buffers (so a chatty child never blocks on a
//! full pipe). On timeout the whole group is killed with SIGKILL and the child reaped.

use std::process::{ExitStatus, Stdio};
use std::time::Instant;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::oneshot;

use super::{Capture, RunLimits, StepOutcome, StepStatus};
use crate::schema::ValidArgs;
use crate::spec::{ArgvItem, ExecStep};

/// Variables a step inherits from the agent; everything else is cleared.
const INHERITED_ENV: &[&str] = &["PATH", "LANG"];

/// The argv after the program name: literals as written, each placeholder replaced by its
/// argument's canonical text as one whole item; an absent optional argument drops its item.
pub(crate) fn substitute_argv(argv: &[ArgvItem], args: &ValidArgs) -> Vec<String> {
    let mut items = Vec::with_capacity(argv.len());
    for item in argv {
        match item {
            ArgvItem::Literal(text) => items.push(text.clone()),
            ArgvItem::Arg(name) => {
                if let Some(value) = args.get(name) {
                    items.push(value.text());
                }
            }
        }
    }
    items
}

/// How the child ended.
enum End {
    Exited(ExitStatus),
    TimedOut,
    WaitFailed(std::io::Error),
}

/// Kills every process left in the group led by `leader`. Errors are ignored: ESRCH (the group
/// is already empty) is the normal case after a clean exit.
fn kill_group(leader: Option<Pid>) {
    if let Some(leader) = leader {
        let _ = kill_process_group(leader, Signal::KILL);
    }
}

/// Kills the group when dropped while armed: a caller that gives up on a step (drops its
/// future) leaves no process of it running. The child itself is then reaped by tokio
/// (`kill_on_drop`, reaped in the background).
struct GroupGuard {
    leader: Option<Pid>,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            kill_group(self.leader);
        }
    }
}

/// Reads `reader` to its end into `capture` (which keeps a bounded prefix and counts the rest).
async fn drain<R: AsyncRead + Unpin>(reader: Option<R>, capture: &mut Capture) {
    let Some(mut reader) = reader else {
        return;
    };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => capture.push(&chunk[..read]),
        }
    }
}

/// Runs an exec step; see the module documentation.
pub(crate) async fn run(step: &ExecStep, args: &ValidArgs, limits: RunLimits) -> StepOutcome {
    let started = Instant::now();
    let mut command = tokio::process::Command::new(&step.program);
    command
        .args(substitute_argv(&step.argv, args))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group (pgid = its pid), so a timeout kills its children too.
        .process_group(0)
        // Should this future be dropped (the caller gave up), the child does not live on.
        .kill_on_drop(true);
    for key in INHERITED_ENV {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    command.envs(&step.env);
    if let Some(cwd) = &step.cwd {
        command.current_dir(cwd);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let message = format!("cannot start {}: {err}", step.program.display());
            return StepOutcome::error(message, started.elapsed());
        }
    };
    let leader = child.id().and_then(|id| i32::try_from(id).ok()).and_then(Pid::from_raw);
    let mut guard = GroupGuard { leader, armed: true };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut out = Capture::new(limits.max_output_bytes);
    let mut err = Capture::new(limits.max_output_bytes);
    let (ended_tx, ended_rx) = oneshot::channel::<()>();

    let waiter = async {
        let waited = tokio::time::timeout(limits.timeout, child.wait()).await;
        // Everything of the group on timeout; background children left behind otherwise. After
        // a clean exit the leader is already reaped; its pid stays the group's id while any
        // member lives (the kernel does not reuse it), and with no member left this is ESRCH.
        kill_group(leader);
        let end = match waited {
            Ok(Ok(status)) => End::Exited(status),
            Ok(Err(err)) => End::WaitFailed(err),
            Err(_elapsed) => match child.wait().await {
                // Reaped: no zombie is left behind.
                Ok(_) => End::TimedOut,
                Err(err) => End::WaitFailed(err),
            },
        };
        let _ = ended_tx.send(());
        end
    };
    let readers = async {
        let read_all = async {
            tokio::join!(drain(stdout, &mut out), drain(stderr, &mut err));
        };
        // The pipes close when every process holding them is gone; one that left the group
        // (setsid) could hold them for ever, so reading stops a grace period after the end.
        let grace = async {
            let _ = ended_rx.await;
            tokio::time::sleep(limits.drain_grace).await;
        };
        tokio::select! {
            () = read_all => {}
            () = grace => {}
        }
    };
    let (end, ()) = tokio::join!(waiter, readers);
    guard.armed = false;

    let duration = started.elapsed();
    let (status, exit_code, message) = match end {
        End::Exited(status) => match status.code() {
            Some(0) => (StepStatus::Ok, Some(0), String::new()),
            Some(code) => (StepStatus::Failed, Some(code), format!("exited with status {code}")),
            None => {
                use std::os::unix::process::ExitStatusExt as _;
                let signal = status.signal().unwrap_or_default();
                (StepStatus::Failed, None, format!("killed by signal {signal}"))
            }
        },
        End::TimedOut => (
            StepStatus::Timeout,
            None,
            format!("did not finish within {} ms: its process group was killed", limits.timeout.as_millis()),
        ),
        End::WaitFailed(err) => (StepStatus::Error, None, format!("waiting for the program failed: {err}")),
    };
    tracing::debug!(
        action.program = %step.program.display(),
        action.status = status.as_str(),
        action.exit_code = exit_code,
        duration_ms = duration.as_millis() as u64,
        "action.exec ended"
    );
    StepOutcome { status, exit_code, http_status: None, stdout: out.finish(), stderr: err.finish(), duration, message }
}
