//! The declaration of an operator-defined action (`[[actions]]` in an agent's TOML) and
//! [`validate_spec`], which lists every problem of a declaration at once.
//!
//! A declaration parses in two stages: serde checks the shape (unknown keys, types, which steps
//! are present), then [`validate_spec`] checks the meaning (names, placeholders, patterns,
//! bounds, paths, URLs) and says how to fix each problem.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::schema::ArgSpec;

/// Prefixes of built-in action names (`index.compact`, `node.drain`, ...): a declaration may not
/// use them, so an operator can never shadow a built-in.
pub const RESERVED_PREFIXES: &[&str] = &["index.", "node.", "ragmesh.", "builtin."];

/// Longest timeout an action may declare.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Timeout of an action that declares none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Capability an action requires when it declares none.
pub const DEFAULT_CAPABILITY: &str = "actions";

/// The tenant entry that admits every tenant.
pub const ANY_TENANT: &str = "*";

/// Most arguments one action may declare (also the most a call may pass).
pub const MAX_DECLARED_ARGS: usize = 64;

/// One operator-declared action.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "ActionFile")]
pub struct ActionSpec {
    /// Name callers use: `[a-z][a-z0-9_.-]{0,63}`, not starting with a [`RESERVED_PREFIXES`] entry.
    pub name: String,
    /// One line for humans (`ragmeshctl action list`).
    pub description: String,
    /// The arguments a call may pass, in declaration order.
    pub args: Vec<ArgSpec>,
    /// How long one step may run before it is killed (TOML: `timeout_ms`, default 30 s, at most 1 h).
    pub timeout: Duration,
    /// Capability the caller's token must carry (default `"actions"`).
    pub capability: String,
    /// Tenants whose callers may run it. Required in the TOML so nobody gets access by omission:
    /// an empty list admits no tenant (operators only: callers holding `admin`, as the agent
    /// enforces), `["*"]` admits every tenant (the capability still applies), otherwise exactly
    /// the tenants listed.
    pub tenants: Vec<String>,
    /// What it does.
    pub steps: Steps,
}

impl ActionSpec {
    /// Whether a caller of `tenant` may run this action (see [`ActionSpec::tenants`]); operators
    /// are admitted by the agent whatever this says.
    pub fn allows_tenant(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|allowed| allowed == ANY_TENANT || allowed == tenant)
    }

    /// Whether the action has prepare/commit/abort steps, so it can join a transaction.
    pub fn is_transactional(&self) -> bool {
        matches!(self.steps, Steps::Transactional { .. })
    }

    /// The declared argument called `name`.
    pub fn arg(&self, name: &str) -> Option<&ArgSpec> {
        self.args.iter().find(|arg| arg.name == name)
    }

    /// Every step with the role it plays.
    pub fn steps(&self) -> Vec<(StepRole, &Step)> {
        match &self.steps {
            Steps::Run(step) => vec![(StepRole::Run, step)],
            Steps::Transactional { prepare, commit, abort } => {
                vec![(StepRole::Prepare, prepare), (StepRole::Commit, commit), (StepRole::Abort, abort)]
            }
        }
    }
}

/// What an action does: one step, or the three steps of a transactional action.
#[derive(Debug, Clone, PartialEq)]
pub enum Steps {
    /// A plain action: one step (TOML: `[actions.run.exec]` or `[actions.run.http]`).
    Run(Step),
    /// A transactional action (TOML: `[actions.prepare.*]`, `[actions.commit.*]`,
    /// `[actions.abort.*]`). On one node it runs prepare, then commit, or abort when prepare fails.
    Transactional {
        /// Does the work so it can still be undone; success is a yes vote.
        prepare: Step,
        /// Makes prepared work final.
        commit: Step,
        /// Undoes prepared work (also run when prepare failed part-way).
        abort: Step,
    },
}

/// The role a step plays in its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StepRole {
    /// The only step of a plain action.
    Run,
    /// Phase one of a transactional action.
    Prepare,
    /// Phase two, after every participant prepared.
    Commit,
    /// Phase two, when any participant failed to prepare.
    Abort,
}

impl StepRole {
    /// The TOML key of the step.
    pub fn as_str(self) -> &'static str {
        match self {
            StepRole::Run => "run",
            StepRole::Prepare => "prepare",
            StepRole::Commit => "commit",
            StepRole::Abort => "abort",
        }
    }
}

/// One step: a program or a request to the local application.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Step {
    /// Run a program directly (never through a shell).
    Exec(ExecStep),
    /// Send one HTTP request.
    Http(HttpStep),
}

/// Runs `program` with `argv`, stdin closed, a cleared environment (PATH and LANG kept) plus `env`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStep {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Arguments after the program name; each item a literal or a whole `{name}` placeholder.
    #[serde(default)]
    pub argv: Vec<ArgvItem>,
    /// Fixed environment variables, added to PATH and LANG.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Absolute working directory [default: the agent's].
    pub cwd: Option<PathBuf>,
}

/// One item of an argv template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgvItem {
    /// Passed as written.
    Literal(String),
    /// Replaced by the argument's value as one whole argv item (an absent optional argument
    /// without a default drops the item).
    Arg(String),
}

impl<'de> Deserialize<'de> for ArgvItem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(ArgvItem::parse(text))
    }
}

impl ArgvItem {
    /// `{name}` (the whole item) is a placeholder; anything else is a literal, which
    /// [`validate_spec`] refuses when it mixes a placeholder with other text.
    pub fn parse(text: String) -> ArgvItem {
        match text.strip_prefix('{').and_then(|rest| rest.strip_suffix('}')) {
            Some(name) if valid_name(name) => ArgvItem::Arg(name.to_owned()),
            _ => ArgvItem::Literal(text),
        }
    }
}

/// Sends `method url` to the local application; the body is the JSON object of the validated
/// arguments (`body = "args"`, the default) or empty (`body = "none"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    /// HTTP method [default: POST].
    #[serde(default = "default_method")]
    pub method: String,
    /// `http://host:port/path`; `{name}` placeholders allowed in the path only, percent-encoded
    /// when substituted. Plain http only (the application runs beside the agent).
    pub url: String,
    /// Fixed request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// What the request body holds.
    #[serde(default)]
    pub body: HttpBody,
}

fn default_method() -> String {
    "POST".to_owned()
}

/// The request body of an [`HttpStep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpBody {
    /// `application/json`: an object of the validated arguments, typed (numbers as numbers).
    #[default]
    Args,
    /// No body.
    None,
}

/// The TOML shape of an action, before the steps are sorted out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    args: Vec<ArgSpec>,
    timeout_ms: Option<u64>,
    capability: Option<String>,
    tenants: Vec<String>,
    run: Option<Step>,
    prepare: Option<Step>,
    commit: Option<Step>,
    abort: Option<Step>,
}

impl TryFrom<ActionFile> for ActionSpec {
    type Error = String;

    fn try_from(file: ActionFile) -> Result<Self, Self::Error> {
        let steps = match (file.run, file.prepare, file.commit, file.abort) {
            (Some(run), None, None, None) => Steps::Run(run),
            (None, Some(prepare), Some(commit), Some(abort)) => Steps::Transactional { prepare, commit, abort },
            _ => {
                return Err(format!(
                    "action {:?}: declare either one `run` step or all three of `prepare`, `commit` and `abort`",
                    file.name
                ));
            }
        };
        Ok(ActionSpec {
            name: file.name,
            description: file.description,
            args: file.args,
            timeout: file.timeout_ms.map(Duration::from_millis).unwrap_or(DEFAULT_TIMEOUT),
            capability: file.capability.unwrap_or_else(|| DEFAULT_CAPABILITY.to_owned()),
            tenants: file.tenants,
            steps,
        })
    }
}

/// `[a-z][a-z0-9_.-]{0,63}`: the rule for action and argument names.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    name.len() <= 64
        && first.is_ascii_lowercase()
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `text` contains something shaped like a `{placeholder}`.
fn contains_placeholder(text: &str) -> bool {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        if let Some(close) = after.find('}')
            && valid_name(&after[..close])
        {
            return true;
        }
        rest = after;
    }
    false
}

/// Every `{name}` in `text` (used for URL paths).
pub(crate) fn placeholders(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if valid_name(&after[..close]) => {
                found.push(&after[..close]);
                rest = &after[close + 1..];
            }
            _ => rest = after,
        }
    }
    found
}

/// Headers the http runner sets itself; a declaration may not override them.
const MANAGED_HEADERS: &[&str] = &["host", "content-length", "transfer-encoding", "connection"];

/// Splits an `http://authority/path?query` URL; `None` when it is not plain http.
pub(crate) fn split_http_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
    Some((&rest[..path_start], &rest[path_start..]))
}

/// Checks one declaration; every problem at once, each naming the action and how to fix it.
pub fn validate_spec(spec: &ActionSpec) -> Vec<String> {
    let mut problems = Vec::new();
    let action = &spec.name;
    let mut push = |problem: String| problems.push(format!("action {action:?}: {problem}"));

    if !valid_name(&spec.name) {
        push("invalid name: use 1-64 characters of a-z, 0-9, '_', '.' and '-', starting with a letter".to_owned());
    }
    if let Some(prefix) = RESERVED_PREFIXES.iter().find(|prefix| spec.name.starts_with(**prefix)) {
        push(format!("names starting with {prefix:?} are reserved for built-in actions: choose another name"));
    }
    if spec.timeout.is_zero() || spec.timeout > MAX_TIMEOUT {
        push(format!("timeout_ms {} is out of range: use 1..=3600000 (1 hour)", spec.timeout.as_millis()));
    }
    if !valid_name(&spec.capability) {
        push(format!(
            "capability {:?} is invalid: use a capability name like \"actions\" (a-z, 0-9, '_', '.', '-')",
            spec.capability
        ));
    }
    if spec.tenants.len() > 1 && spec.tenants.iter().any(|t| t == ANY_TENANT) {
        push("tenants lists \"*\" beside other tenants: \"*\" already admits every tenant, keep only it".to_owned());
    }
    for tenant in &spec.tenants {
        if tenant.is_empty() || tenant.len() > 128 || tenant.chars().any(char::is_control) {
            push(format!("tenant {tenant:?} is invalid: use a tenant name as in tokens (1-128 characters)"));
        }
    }
    if spec.args.len() > MAX_DECLARED_ARGS {
        push(format!("declares {} arguments: at most {MAX_DECLARED_ARGS} are allowed", spec.args.len()));
    }
    let mut seen = BTreeSet::new();
    for arg in &spec.args {
        if !seen.insert(arg.name.as_str()) {
            push(format!("argument {:?} is declared twice: remove or rename one", arg.name));
        }
        for problem in arg.check() {
            push(problem);
        }
    }
    let declared: BTreeMap<&str, &ArgSpec> = spec.args.iter().map(|arg| (arg.name.as_str(), arg)).collect();
    for (role, step) in spec.steps() {
        for problem in check_step(step, &declared) {
            push(format!("{} step: {problem}", role.as_str()));
        }
    }
    problems
}

/// Checks a list of declarations: each one, and names used twice.
pub fn validate_specs(specs: &[ActionSpec]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for spec in specs {
        if !seen.insert(spec.name.as_str()) {
            problems.push(format!("action {:?} is declared twice: remove or rename one", spec.name));
        }
        problems.extend(validate_spec(spec));
    }
    problems
}

fn check_step(step: &Step, declared: &BTreeMap<&str, &ArgSpec>) -> Vec<String> {
    let mut problems = Vec::new();
    let unknown = |name: &str| {
        format!("placeholder {{{name}}} names no declared argument: declare it under args or fix the spelling")
    };
    match step {
        Step::Exec(exec) => {
            if !exec.program.is_absolute() {
                problems.push(format!(
                    "program {} is a relative path: give an absolute path (no PATH lookup, no shell)",
                    exec.program.display()
                ));
            }
            if let Some(cwd) = &exec.cwd
                && !cwd.is_absolute()
            {
                problems.push(format!("cwd {} is a relative path: give an absolute directory", cwd.display()));
            }
            for item in &exec.argv {
                match item {
                    ArgvItem::Arg(name) if !declared.contains_key(name.as_str()) => problems.push(unknown(name)),
                    ArgvItem::Arg(_) => {}
                    ArgvItem::Literal(text) if contains_placeholder(text) => problems.push(format!(
                        "argv item {text:?} mixes a placeholder with other text: a placeholder must be a whole item, e.g. [\"--name\", \"{{name}}\"]"
                    )),
                    ArgvItem::Literal(text) if text.contains('\0') => {
                        problems.push(format!("argv item {text:?} contains a NUL byte: remove it"));
                    }
                    ArgvItem::Literal(_) => {}
                }
            }
            for (key, value) in &exec.env {
                if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                    problems.push(format!("env {key:?} is invalid: names must be non-empty without '=' or NUL"));
                }
            }
        }
        Step::Http(http) => {
            if http::Method::from_bytes(http.method.as_bytes()).is_err() {
                problems.push(format!("method {:?} is not an HTTP method: use e.g. POST", http.method));
            }
            match split_http_url(&http.url) {
                None if http.url.starts_with("https://") => problems.push(format!(
                    "url {:?}: https is not supported for the local application: use http://127.0.0.1:PORT/...",
                    http.url
                )),
                None => problems.push(format!(
                    "url {:?} is not an http URL: use http://HOST:PORT/PATH, e.g. http://127.0.0.1:8000/internal/clear-cache",
                    http.url
                )),
                Some((authority, path)) => {
                    if authority.contains(['{', '}']) || authority.parse::<http::uri::Authority>().is_err() {
                        problems.push(format!(
                            "url {:?}: the host part must be a fixed HOST:PORT (placeholders go in the path only)",
                            http.url
                        ));
                    }
                    let query = path.find('?').map(|at| &path[at..]).unwrap_or("");
                    if query.contains('{') {
                        problems.push(format!(
                            "url {:?}: placeholders are allowed in the path only, not in the query",
                            http.url
                        ));
                    }
                    for name in placeholders(path) {
                        if !declared.contains_key(name) {
                            problems.push(unknown(name));
                        } else if declared.get(name).is_some_and(|arg| arg.secret) {
                            problems.push(format!(
                                "placeholder {{{name}}} puts a secret argument in the URL, where logs and proxies see it: send it in the body"
                            ));
                        }
                    }
                    let sample: String = substitute_sample(&http.url);
                    if sample.parse::<http::Uri>().is_err() {
                        problems.push(format!("url {:?} is not a valid URL: check the characters in it", http.url));
                    }
                }
            }
            for (name, value) in &http.headers {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(value).is_err()
                {
                    problems.push(format!("header {name:?} has an invalid name or value: use visible ASCII"));
                } else if MANAGED_HEADERS.iter().any(|managed| name.eq_ignore_ascii_case(managed)) {
                    problems.push(format!("header {name:?} is set by the runner from the url and body: remove it"));
                }
            }
        }
    }
    problems
}

/// The URL with every placeholder replaced by a harmless sample, to check its syntax.
fn substitute_sample(url: &str) -> String {
    let mut text = url.to_owned();
    for name in placeholders(url) {
        text = text.replace(&format!("{{{name}}}"), "x");
    }
    text
}
