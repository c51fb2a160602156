//! Running the steps of a declared action on the agent: [`run_step`] for one step, and
//! [`run_single`] for a whole action on one node (a transactional action runs prepare, then
//! commit, or abort when prepare did not succeed).

mod exec;
mod http;

use std::time::Duration;

use crate::schema::ValidArgs;
use crate::spec::{ActionSpec, Step, StepRole, Steps};

/// Bounds of one step's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Wall-clock limit of the step; the process group is killed (or the request dropped) after it.
    pub timeout: Duration,
    /// Bytes of stdout, of stderr and of an HTTP body kept; the rest is read, counted and dropped.
    pub max_output_bytes: usize,
    /// How long to keep reading output after the program ended (a process outside its group may
    /// hold the pipe open).
    pub drain_grace: Duration,
}

/// Default of [`RunLimits::max_output_bytes`].
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;

impl RunLimits {
    /// The action's timeout with default output bounds.
    pub fn for_action(spec: &ActionSpec) -> RunLimits {
        RunLimits {
            timeout: spec.timeout,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            drain_grace: Duration::from_secs(1),
        }
    }
}

/// How a step ended, in the mesh's status vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepStatus {
    /// Exit status 0, or an HTTP status below 400.
    Ok,
    /// Ran and reported failure: non-zero exit, killed by a signal, or HTTP status >= 400.
    Failed,
    /// Did not finish in time; the process group was killed, or the request dropped.
    Timeout,
    /// Could not run at all (program missing, connection refused, ...): see the message.
    Error,
}

impl StepStatus {
    /// The one word for the status (`ok`, `failed`, `timeout`, `error`).
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Ok => "ok",
            StepStatus::Failed => "failed",
            StepStatus::Timeout => "timeout",
            StepStatus::Error => "error",
        }
    }
}

/// Output kept from a stream: the first bytes, as lossy UTF-8, and how many bytes were dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Captured {
    /// The first [`RunLimits::max_output_bytes`] bytes (invalid UTF-8 replaced).
    pub text: String,
    /// Bytes read beyond the kept ones.
    pub truncated_bytes: u64,
}

/// Accumulates a stream into a [`Captured`].
#[derive(Debug)]
pub(crate) struct Capture {
    kept: Vec<u8>,
    limit: usize,
    dropped: u64,
}

impl Capture {
    pub(crate) fn new(limit: usize) -> Capture {
        Capture { kept: Vec::new(), limit, dropped: 0 }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.kept.len());
        let keep = room.min(bytes.len());
        self.kept.extend_from_slice(&bytes[..keep]);
        self.dropped += (bytes.len() - keep) as u64;
    }

    pub(crate) fn finish(self) -> Captured {
        Captured { text: String::from_utf8_lossy(&self.kept).into_owned(), truncated_bytes: self.dropped }
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// How it ended.
    pub status: StepStatus,
    /// Exit code of an exec step that exited (none when killed by a signal or not started).
    pub exit_code: Option<i32>,
    /// Response status of an http step that got one.
    pub http_status: Option<u16>,
    /// Standard output of an exec step; the response body of an http step.
    pub stdout: Captured,
    /// Standard error of an exec step; empty for http.
    pub stderr: Captured,
    /// Wall-clock time taken.
    pub duration: Duration,
    /// Why, for `failed` by signal, `timeout` and `error`; empty otherwise.
    pub message: String,
}

impl StepOutcome {
    pub(crate) fn error(message: String, duration: Duration) -> StepOutcome {
        StepOutcome {
            status: StepStatus::Error,
            exit_code: None,
            http_status: None,
            stdout: Captured::default(),
            stderr: Captured::default(),
            duration,
            message,
        }
    }
}

/// Runs one step with the validated arguments.
pub async fn run_step(step: &Step, args: &ValidArgs, limits: RunLimits) -> StepOutcome {
    match step {
        Step::Exec(exec) => exec::run(exec, args, limits).await,
        Step::Http(http) => http::run(http, args, limits).await,
    }
}

/// What a whole action did on one node: each step run, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionOutcome {
    /// The steps run, with their roles: `run`; or `prepare` then `commit` or `abort`.
    pub steps: Vec<(StepRole, StepOutcome)>,
}

impl ActionOutcome {
    /// `ok` when the action took effect: its run step, or prepare and commit, succeeded. A
    /// transactional action whose prepare failed reports prepare's status (its abort ran). One
    /// phase of a transaction alone (its commit or its abort step) reports that step's status;
    /// no step at all is an error.
    pub fn status(&self) -> StepStatus {
        let status_of = |role| self.steps.iter().find(|(r, _)| *r == role).map(|(_, outcome)| outcome.status);
        match (status_of(StepRole::Run), status_of(StepRole::Prepare), status_of(StepRole::Commit)) {
            (Some(run), _, _) => run,
            (None, Some(StepStatus::Ok), Some(commit)) => commit,
            (None, Some(prepare), _) => prepare,
            (None, None, _) => self.steps.last().map_or(StepStatus::Error, |(_, outcome)| outcome.status),
        }
    }

    /// Total time of the steps.
    pub fn duration(&self) -> Duration {
        self.steps.iter().map(|(_, outcome)| outcome.duration).sum()
    }
}

/// Runs an action on this node alone: its `run` step, or prepare then commit (abort when
/// prepare did not succeed). Each step gets `limits`.
pub async fn run_single(spec: &ActionSpec, args: &ValidArgs, limits: RunLimits) -> ActionOutcome {
    let mut steps = Vec::new();
    match &spec.steps {
        Steps::Run(step) => steps.push((StepRole::Run, run_step(step, args, limits).await)),
        Steps::Transactional { prepare, commit, abort } => {
            let prepared = run_step(prepare, args, limits).await;
            let next =
                if prepared.status == StepStatus::Ok { (StepRole::Commit, commit) } else { (StepRole::Abort, abort) };
            steps.push((StepRole::Prepare, prepared));
            steps.push((next.0, run_step(next.1, args, limits).await));
        }
    }
    ActionOutcome { steps }
}
