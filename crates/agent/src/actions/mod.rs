//! What this agent offers as actions, and `RunAction`: the operator-declared actions of its config
//! (`[[actions]]`) plus built-ins (`node.drain`, `node.undrain`, `node.labels`, `index.compact`,
//! `index.snapshot`, `index.restore`), by name.
//!
//! Who may run what, decided here by [`ragmesh_actions::authorize`] (the master decides the same
//! way only to refuse early):
//! - the caller's token (from the master's signed context) must carry the capability the action
//!   declares (`actions` by default; built-ins need `actions`);
//! - an **operator** (a principal holding `admin`) passes every tenant list: tenant lists limit
//!   tenants, and operators run the node. Its tenant plays no part (the verifier already refuses
//!   a context whose tenant claim is empty, so "an operator without a tenant" is one whose
//!   tenant is simply ignored);
//! - anyone else needs its tenant listed by the action (or `*`); an empty list (and so every
//!   built-in) means operators only, as `ActionDescriptor.tenants` documents;
//! - an action this agent's config does not declare is never run, whatever the context says.

pub mod calls;
pub mod node;
pub mod participant;
pub mod snapshot;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ragmesh_actions::{
    ActionOutcome, ActionSpec, ArgKind, ArgSpec, Captured, RunLimits, StepOutcome, StepRole, StepStatus, ValidArgs,
};
use ragmesh_auth::Principal;
use ragmesh_index::{DocumentIndex, SnapshotLimits};
use ragmesh_proto::v1;

use crate::error::AgentError;
use calls::{Begin, CallCache};
use node::NodeState;

/// Capability every built-in requires.
pub const BUILTIN_CAPABILITY: &str = "actions";
/// Timeout of a built-in.
const BUILTIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of `index.snapshot` and `index.restore`, which read or write every document.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The built-in actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Stop answering searches (the master's node client uses another replica).
    Drain,
    /// Answer searches again.
    Undrain,
    /// Set (or remove) labels; the master learns them at the re-registration that follows.
    Labels,
    /// Merge the index's segments and remove unused files.
    Compact,
    /// Write every live document to `<data-dir>/snapshots/<name>.snap`.
    Snapshot,
    /// Replace the index's content with a snapshot, in one commit.
    Restore,
}

impl Builtin {
    /// Every built-in, in listing order.
    pub const ALL: [Builtin; 6] =
        [Builtin::Drain, Builtin::Undrain, Builtin::Labels, Builtin::Compact, Builtin::Snapshot, Builtin::Restore];

    /// The name callers use.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Drain => "node.drain",
            Builtin::Undrain => "node.undrain",
            Builtin::Labels => "node.labels",
            Builtin::Compact => "index.compact",
            Builtin::Snapshot => "index.snapshot",
            Builtin::Restore => "index.restore",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Builtin::Drain => {
                "stop answering searches (UNAVAILABLE, so the master asks another replica) until node.undrain; survives a restart"
            }
            Builtin::Undrain => "answer searches again after node.drain",
            Builtin::Compact => {
                "merge the index's segments into one (dropping deleted documents) and remove unused files"
            }
            Builtin::Snapshot => {
                "write every live document of the current generation (ACLs, owners, metadata, log position included) to <data-dir>/snapshots/<name>.snap"
            }
            Builtin::Restore => {
                "replace the index's content with <data-dir>/snapshots/<name>.snap in one commit, after checking the whole file; the master then re-sends the writes after the snapshot's log position"
            }
            Builtin::Labels => {
                "set labels: set=k=v,k2=v2 (k= removes k); the agent re-registers so the master learns them; survives a restart"
            }
        }
    }

    /// The argument schema.
    pub fn args(self) -> Vec<ArgSpec> {
        match self {
            Builtin::Drain | Builtin::Undrain | Builtin::Compact => Vec::new(),
            Builtin::Labels => {
                let mut set = ArgSpec::new("set", ArgKind::String);
                set.description = "labels to set, k=v,k2=v2 (k= removes k)".to_owned();
                set.required = true;
                set.min_len = Some(1);
                set.max_len = Some(4096);
                vec![set]
            }
            Builtin::Snapshot => vec![snapshot::name_arg(), snapshot::overwrite_arg()],
            Builtin::Restore => vec![snapshot::name_arg(), snapshot::check_only_arg()],
        }
    }

    /// How long a call may take.
    pub fn timeout(self) -> Duration {
        match self {
            Builtin::Snapshot | Builtin::Restore => SNAPSHOT_TIMEOUT,
            _ => BUILTIN_TIMEOUT,
        }
    }

    /// The descriptor `ListActions` answers.
    pub fn descriptor(self) -> v1::ActionDescriptor {
        v1::ActionDescriptor {
            name: self.name().to_owned(),
            description: self.description().to_owned(),
            arguments: self.args().iter().map(ragmesh_actions::wire::argument_descriptor).collect(),
            timeout_ms: u32::try_from(self.timeout().as_millis()).unwrap_or(u32::MAX),
            capability: BUILTIN_CAPABILITY.to_owned(),
            tenants: Vec::new(),
            transactional: false,
            builtin: true,
        }
    }
}

/// One action this agent offers.
#[derive(Debug, Clone)]
pub enum Offered {
    /// Declared in the agent's config.
    Declared(Arc<ActionSpec>),
    /// Built in.
    Builtin(Builtin),
}

impl Offered {
    fn name(&self) -> &str {
        match self {
            Offered::Declared(spec) => &spec.name,
            Offered::Builtin(builtin) => builtin.name(),
        }
    }

    fn capability(&self) -> &str {
        match self {
            Offered::Declared(spec) => &spec.capability,
            Offered::Builtin(_) => BUILTIN_CAPABILITY,
        }
    }

    fn tenants(&self) -> &[String] {
        match self {
            Offered::Declared(spec) => &spec.tenants,
            Offered::Builtin(_) => &[],
        }
    }

    /// Validates a call's arguments against the action's schema (every problem at once).
    fn validate(&self, arguments: &BTreeMap<String, String>) -> Result<ValidArgs, AgentError> {
        let validated = match self {
            Offered::Declared(spec) => ragmesh_actions::validate(spec, arguments),
            Offered::Builtin(builtin) => ragmesh_actions::validate_args(builtin.name(), &builtin.args(), arguments),
        };
        validated.map_err(|problems| AgentError::InvalidArguments { action: self.name().to_owned(), problems })
    }
}

/// The actions of this agent and what running them needs.
#[derive(Debug)]
pub struct Actions {
    declared: BTreeMap<String, Arc<ActionSpec>>,
    /// Drain flag and labels.
    pub node: NodeState,
    /// The index (`index.*` built-ins), once open.
    index: Arc<OnceLock<Arc<DocumentIndex>>>,
    calls: CallCache,
    /// Where `index.snapshot` writes and `index.restore` reads, and their limits; `None` until
    /// [`Actions::with_snapshots`] (tests of the service alone).
    snapshots: Option<(std::path::PathBuf, SnapshotLimits)>,
    /// Bumped by each restore: the master link re-registers so the master learns the log
    /// position moved back.
    restores: tokio::sync::watch::Sender<u64>,
}

impl Actions {
    /// The agent's actions: `declared` (already validated by the config) and the built-ins.
    pub fn new(declared: Vec<ActionSpec>, node: NodeState, index: Arc<OnceLock<Arc<DocumentIndex>>>) -> Self {
        let declared = declared.into_iter().map(|spec| (spec.name.clone(), Arc::new(spec))).collect();
        Actions {
            declared,
            node,
            index,
            calls: CallCache::default(),
            snapshots: None,
            restores: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The same actions with `index.snapshot` and `index.restore` using `dir` and `limits`.
    pub fn with_snapshots(mut self, dir: std::path::PathBuf, limits: SnapshotLimits) -> Self {
        self.snapshots = Some((dir, limits));
        self
    }

    /// Counts restores: changes when `index.restore` replaced the index's content.
    pub fn watch_restores(&self) -> tokio::sync::watch::Receiver<u64> {
        self.restores.subscribe()
    }

    /// The action called `name`, if offered.
    pub fn find(&self, name: &str) -> Option<Offered> {
        if let Some(builtin) = Builtin::ALL.into_iter().find(|builtin| builtin.name() == name) {
            return Some(Offered::Builtin(builtin));
        }
        self.declared.get(name).cloned().map(Offered::Declared)
    }

    /// Names of every action offered, for "not found" messages.
    pub fn names(&self) -> Vec<String> {
        let builtins = Builtin::ALL.into_iter().map(|builtin| builtin.name().to_owned());
        builtins.chain(self.declared.keys().cloned()).collect()
    }

    /// What `ListActions` answers: built-ins first, then the declared actions by name.
    pub fn descriptors(&self) -> Vec<v1::ActionDescriptor> {
        let builtins = Builtin::ALL.into_iter().map(Builtin::descriptor);
        builtins.chain(self.declared.values().map(|spec| ragmesh_actions::wire::descriptor(spec, false))).collect()
    }

    /// Looks `call` up, checks `principal` may run it and validates its arguments.
    pub fn admit(&self, principal: &Principal, call: &v1::ActionCall) -> Result<(Offered, ValidArgs), AgentError> {
        let Some(offered) = self.find(&call.action) else {
            return Err(AgentError::UnknownAction { name: shorten(&call.action), offered: self.names().join(", ") });
        };
        ragmesh_actions::authorize(principal, offered.capability(), offered.tenants())
            .map_err(|reason| AgentError::NotAllowed { action: offered.name().to_owned(), reason })?;
        let arguments: BTreeMap<String, String> = call.arguments.clone().into_iter().collect();
        let args = offered.validate(&arguments)?;
        Ok((offered, args))
    }

    /// `RunAction`: admits the call, then runs it once per `call_id` (see [`calls`]).
    pub async fn run(
        self: &Arc<Self>,
        principal: &Principal,
        request: v1::RunActionRequest,
    ) -> Result<v1::RunActionResponse, AgentError> {
        let call = request.call.ok_or(AgentError::NoCall)?;
        let (offered, args) = self.admit(principal, &call)?;
        tracing::info!(
            action = offered.name(),
            call_id = %request.call_id,
            caller.subject = %principal.subject,
            caller.tenant = %principal.tenant,
            args = ?args,
            "action.run"
        );
        if request.call_id.is_empty() {
            return Ok(v1::RunActionResponse { result: Some(self.execute(offered, args).await), repeated_call: false });
        }
        let mut fingerprint = offered.name().as_bytes().to_vec();
        fingerprint.push(0);
        fingerprint.extend(ragmesh_actions::digest::encode(&args));
        match self.calls.begin(&request.call_id, fingerprint, tokio::time::Instant::now()) {
            Begin::Conflict => Err(AgentError::CallIdReused { call_id: shorten(&request.call_id) }),
            Begin::Repeat(slot) => {
                tracing::info!(call_id = %request.call_id, "action.repeated_call");
                let result = calls::wait(slot)
                    .await
                    .ok_or_else(|| AgentError::Task("the first run of this call id failed".to_owned()))?;
                Ok(v1::RunActionResponse { result: Some(result), repeated_call: true })
            }
            Begin::First(publish) => {
                let mut slot = publish.subscribe();
                let this = Arc::clone(self);
                // Its own task: a caller that gives up does not stop (or repeat) the run.
                tokio::spawn(async move {
                    let result = this.execute(offered, args).await;
                    publish.send_replace(Some(result));
                });
                let result = slot
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| AgentError::Task("the action's task ended without a result".to_owned()))?
                    .clone()
                    .ok_or_else(|| AgentError::Task("no result".to_owned()))?;
                Ok(v1::RunActionResponse { result: Some(result), repeated_call: false })
            }
        }
    }

    /// Runs an admitted action: a declared one with [`ragmesh_actions::run_single`].
    async fn execute(&self, offered: Offered, args: ValidArgs) -> v1::ActionResult {
        let outcome = match &offered {
            Offered::Declared(spec) => ragmesh_actions::run_single(spec, &args, RunLimits::for_action(spec)).await,
            Offered::Builtin(builtin) => self.run_builtin(*builtin, &args).await,
        };
        let result = ragmesh_actions::wire::action_result(&outcome);
        tracing::info!(
            action = offered.name(),
            status = outcome.status().as_str(),
            duration_ms = result.duration_ms,
            "action.finished"
        );
        result
    }

    async fn run_builtin(&self, builtin: Builtin, args: &ValidArgs) -> ActionOutcome {
        let started = Instant::now();
        let done = match builtin {
            Builtin::Drain => self.node.set_drained(true).map(|changed| {
                if changed { "drained: searches answer UNAVAILABLE until node.undrain" } else { "already drained" }
                    .to_owned()
            }),
            Builtin::Undrain => self.node.set_drained(false).map(|changed| {
                if changed { "undrained: answering searches again" } else { "was not drained" }.to_owned()
            }),
            Builtin::Labels => self.set_labels(args),
            Builtin::Compact => self.compact().await,
            Builtin::Snapshot => self.snapshot(args).await,
            Builtin::Restore => self.restore(args).await,
        };
        let (status, stdout, message) = match done {
            Ok(text) => (StepStatus::Ok, text, String::new()),
            Err(err) => (StepStatus::Error, String::new(), err.to_string()),
        };
        if status == StepStatus::Ok {
            tracing::info!(action = builtin.name(), outcome = %stdout, "action.builtin");
        }
        let step = StepOutcome {
            status,
            exit_code: None,
            http_status: None,
            stdout: Captured { text: stdout, truncated_bytes: 0 },
            stderr: Captured::default(),
            duration: started.elapsed(),
            message,
        };
        ActionOutcome { steps: vec![(StepRole::Run, step)] }
    }

    async fn compact(&self) -> std::io::Result<String> {
        let Some(index) = self.index.get().cloned() else {
            return Err(std::io::Error::other("the index is still opening: retry shortly"));
        };
        let compacted = tokio::task::spawn_blocking(move || index.compact()).await.map_err(std::io::Error::other)?;
        let (before, after) = compacted.map_err(std::io::Error::other)?;
        Ok(format!("compacted: {before} segments before, {after} after"))
    }

    fn set_labels(&self, args: &ValidArgs) -> std::io::Result<String> {
        let text = args.get("set").map(ragmesh_actions::ArgValue::text).unwrap_or_default();
        let changes = node::parse_label_changes(&text)
            .map_err(|problems| std::io::Error::new(std::io::ErrorKind::InvalidInput, problems.join("; ")))?;
        let mut labels = self.node.labels();
        for (key, value) in changes {
            match value {
                Some(value) => labels.insert(key, value),
                None => labels.remove(&key),
            };
        }
        if labels.len() > node::MAX_LABELS {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} labels: at most {}", labels.len(), node::MAX_LABELS),
            ));
        }
        let shown = labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        self.node.set_labels(labels)?;
        Ok(format!("labels now {shown}; re-registering with the master"))
    }
}

/// A caller-given name, shortened for messages.
fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use ragmesh_auth::Capability;

    use super::*;

    fn principal(tenant: &str, capabilities: &[Capability]) -> Principal {
        Principal {
            subject: "someone".into(),
            tenant: tenant.into(),
            capabilities: capabilities.iter().copied().collect(),
            token_id: "t".into(),
            expires_at: 0,
            issued_at: 0,
        }
    }

    #[tokio::test]
    async fn unknown_actions_and_bad_arguments_are_refused_before_running() {
        let actions = Arc::new(Actions::new(Vec::new(), NodeState::in_memory(BTreeMap::new()), Arc::default()));
        let operator = principal("", &[Capability::Actions, Capability::Admin]);
        let call = |action: &str, args: &[(&str, &str)]| v1::RunActionRequest {
            call: Some(v1::ActionCall {
                action: action.into(),
                arguments: args.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            }),
            call_id: String::new(),
        };
        let unknown = actions.run(&operator, call("cache.clear", &[])).await.expect_err("unknown");
        assert!(unknown.to_string().contains("node.drain"), "{unknown}");
        let bad = actions.run(&operator, call("node.labels", &[("nope", "1")])).await.expect_err("bad args");
        let message = bad.to_string();
        assert!(message.contains("\"nope\"") && message.contains("\"set\""), "every problem: {message}");
        let ran = actions.run(&operator, call("node.drain", &[])).await.expect("drain");
        assert_eq!(ran.result.expect("result").status, v1::ActionStatus::Ok as i32);
        assert!(actions.node.is_drained());
    }
}
