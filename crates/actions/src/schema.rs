//! The argument schema of an action and [`validate`], which turns a call's string arguments
//! (`--arg k=v`) into typed [`ValidArgs`] or lists every problem at once.
//!
//! Input is bounded before anything else is looked at ([`MAX_CALL_ARGS`], [`MAX_VALUE_BYTES`],
//! [`MAX_TOTAL_BYTES`]); patterns run on the regex crate (linear time). Problem messages name
//! the argument and what is allowed, and never contain a secret argument's value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

use crate::spec::{ActionSpec, valid_name};

/// Most arguments one call may pass.
pub const MAX_CALL_ARGS: usize = 64;
/// Longest argument value, bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most bytes of names and values of one call together.
pub const MAX_TOTAL_BYTES: usize = 256 * 1024;
/// Compiled size limit of an argument pattern: a declaration cannot make validation expensive.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Longest value echoed back in a problem message (never for secrets).
const ECHO_CHARS: usize = 64;

/// The type of an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgKind {
    /// Any text (bounded by `min_len`/`max_len`, `pattern`, `enum`).
    String,
    /// A signed 64-bit integer in decimal.
    Integer,
    /// A finite floating-point number.
    Number,
    /// `true` or `false`.
    Boolean,
}

impl ArgKind {
    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ArgKind::String => "string",
            ArgKind::Integer => "integer",
            ArgKind::Number => "number",
            ArgKind::Boolean => "boolean",
        }
    }
}

/// A numeric bound as written in the TOML (`min = 1` or `min = 0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Bound {
    /// An integer bound.
    Integer(i64),
    /// A fractional bound (numbers only).
    Number(f64),
}

impl Bound {
    fn as_f64(self) -> f64 {
        match self {
            Bound::Integer(value) => value as f64,
            Bound::Number(value) => value,
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Integer(value) => write!(f, "{value}"),
            Bound::Number(value) => write!(f, "{value}"),
        }
    }
}

/// A scalar written in the TOML for a default or an enum entry; kept as the text a call would pass.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TomlScalar {
    Boolean(bool),
    Integer(i64),
    Number(f64),
    String(String),
}

impl TomlScalar {
    fn into_text(self) -> String {
        match self {
            TomlScalar::Boolean(value) => value.to_string(),
            TomlScalar::Integer(value) => value.to_string(),
            TomlScalar::Number(value) => value.to_string(),
            TomlScalar::String(value) => value,
        }
    }
}

fn scalar_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<TomlScalar>::deserialize(deserializer)?.map(TomlScalar::into_text))
}

fn scalar_texts<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<TomlScalar>::deserialize(deserializer)?.into_iter().map(TomlScalar::into_text).collect())
}

/// One declared argument (`[[actions.args]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgSpec {
    /// `[a-z][a-z0-9_.-]{0,63}`.
    pub name: String,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// The type (TOML key `type`).
    #[serde(rename = "type")]
    pub kind: ArgKind,
    /// A call must pass it.
    #[serde(default)]
    pub required: bool,
    /// Value used when a call omits it, as a call would write it.
    #[serde(default, deserialize_with = "scalar_text")]
    pub default: Option<String>,
    /// The only values allowed (TOML key `enum`); empty: any value of the type.
    #[serde(default, rename = "enum", deserialize_with = "scalar_texts")]
    pub allowed: Vec<String>,
    /// Regular expression the whole value must match (strings only; anchored for you).
    pub pattern: Option<String>,
    /// Fewest characters (strings only).
    pub min_len: Option<usize>,
    /// Most characters (strings only).
    pub max_len: Option<usize>,
    /// Smallest value (integers and numbers).
    pub min: Option<Bound>,
    /// Largest value (integers and numbers).
    pub max: Option<Bound>,
    /// Never logged, echoed or shown: redacted as `***`.
    #[serde(default)]
    pub secret: bool,
}

impl ArgSpec {
    /// A plain argument of `kind` with no constraints (for tests and built-ins).
    pub fn new(name: &str, kind: ArgKind) -> ArgSpec {
        ArgSpec {
            name: name.to_owned(),
            description: String::new(),
            kind,
            required: false,
            default: None,
            allowed: Vec::new(),
            pattern: None,
            min_len: None,
            max_len: None,
            min: None,
            max: None,
            secret: false,
        }
    }

    /// The pattern compiled to match a whole value.
    fn compiled_pattern(&self) -> Option<Result<regex::Regex, regex::Error>> {
        let pattern = self.pattern.as_ref()?;
        Some(
            regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
                .size_limit(PATTERN_SIZE_LIMIT)
                .dfa_size_limit(PATTERN_SIZE_LIMIT)
                .build(),
        )
    }

    /// Problems of the declaration itself (names, bounds, defaults, enum entries, pattern).
    pub(crate) fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name = &self.name;
        if !valid_name(name) {
            problems.push(format!(
                "argument {name:?}: invalid name: use 1-64 characters of a-z, 0-9, '_', '.' and '-', starting with a letter"
            ));
        }
        let is_string = self.kind == ArgKind::String;
        let is_numeric = matches!(self.kind, ArgKind::Integer | ArgKind::Number);
        if !is_string && (self.pattern.is_some() || self.min_len.is_some() || self.max_len.is_some()) {
            problems.push(format!(
                "argument {name:?}: pattern, min_len and max_len apply to strings only: remove them or use type = \"string\""
            ));
        }
        if !is_numeric && (self.min.is_some() || self.max.is_some()) {
            problems.push(format!(
                "argument {name:?}: min and max apply to integers and numbers only: remove them or change the type"
            ));
        }
        if self.kind == ArgKind::Integer
            && [self.min, self.max].iter().any(|bound| matches!(bound, Some(Bound::Number(_))))
        {
            problems.push(format!("argument {name:?}: an integer's min and max must be integers"));
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min.as_f64() > max.as_f64()
        {
            problems.push(format!("argument {name:?}: min {min} is greater than max {max}: swap them"));
        }
        if [self.min, self.max].iter().flatten().any(|bound| !bound.as_f64().is_finite()) {
            problems.push(format!("argument {name:?}: min and max must be finite numbers"));
        }
        if let (Some(min_len), Some(max_len)) = (self.min_len, self.max_len)
            && min_len > max_len
        {
            problems.push(format!("argument {name:?}: min_len {min_len} is greater than max_len {max_len}: swap them"));
        }
        if self.max_len.is_some_and(|max_len| max_len > MAX_VALUE_BYTES) {
            problems.push(format!(
                "argument {name:?}: max_len is above {MAX_VALUE_BYTES}, the longest value a call may pass: lower it"
            ));
        }
        if let Some(Err(err)) = self.compiled_pattern() {
            let reason = err.to_string();
            let reason = reason.lines().last().unwrap_or_default().trim().to_owned();
            problems.push(format!("argument {name:?}: pattern is not a valid regular expression: {reason}"));
        }
        if self.required && self.default.is_some() {
            problems.push(format!(
                "argument {name:?}: required with a default: the default is never used, drop one of them"
            ));
        }
        if let Some(default) = &self.default
            && let Err((_, message)) = self.check_value(default)
        {
            problems.push(format!("argument {name:?}: the default does not fit the argument's own rules: {message}"));
        }
        for entry in &self.allowed {
            if ArgValue::parse(self.kind, entry).is_none() {
                problems.push(format!(
                    "argument {name:?}: enum entry {entry:?} is not a valid {}: fix the entry or the type",
                    self.kind.as_str()
                ));
            }
        }
        problems
    }

    /// How a value is shown in a message: quoted and shortened, or not at all for a secret.
    fn shown(&self, text: &str) -> String {
        if self.secret {
            return "the value".to_owned();
        }
        let short: String = text.chars().take(ECHO_CHARS).collect();
        if short.len() < text.len() { format!("{short:?}...") } else { format!("{short:?}") }
    }

    /// Parses and checks one value against this argument's type and constraints.
    fn check_value(&self, text: &str) -> Result<ArgValue, (ArgProblemKind, String)> {
        if text.len() > MAX_VALUE_BYTES {
            return Err((
                ArgProblemKind::TooLarge,
                format!("{} bytes is too long: at most {MAX_VALUE_BYTES} bytes", text.len()),
            ));
        }
        let Some(value) = ArgValue::parse(self.kind, text) else {
            let expected = match self.kind {
                ArgKind::String => "text",
                ArgKind::Integer => "a whole number (64-bit, decimal)",
                ArgKind::Number => "a finite number",
                ArgKind::Boolean => "true or false",
            };
            return Err((ArgProblemKind::WrongType, format!("{} is not {expected}", self.shown(text))));
        };
        if !self.allowed.is_empty() {
            let canonical = value.text();
            let listed = self
                .allowed
                .iter()
                .any(|entry| ArgValue::parse(self.kind, entry).is_some_and(|allowed| allowed.text() == canonical));
            if !listed {
                let choices = if self.secret { "the declared values".to_owned() } else { self.allowed.join(", ") };
                return Err((ArgProblemKind::NotInEnum, format!("{} is not one of: {choices}", self.shown(text))));
            }
        }
        match &value {
            ArgValue::String(string) => {
                let chars = string.chars().count();
                if let Some(min_len) = self.min_len
                    && chars < min_len
                {
                    return Err((
                        ArgProblemKind::OutOfBounds,
                        format!("{chars} characters is too short: at least {min_len}"),
                    ));
                }
                if let Some(max_len) = self.max_len
                    && chars > max_len
                {
                    return Err((
                        ArgProblemKind::OutOfBounds,
                        format!("{chars} characters is too long: at most {max_len}"),
                    ));
                }
                if let Some(Ok(pattern)) = self.compiled_pattern()
                    && !pattern.is_match(string)
                {
                    let pattern_text = self.pattern.as_deref().unwrap_or_default();
                    return Err((
                        ArgProblemKind::PatternMismatch,
                        format!("{} does not match the pattern {pattern_text:?}", self.shown(text)),
                    ));
                }
            }
            ArgValue::Integer(number) => self.check_range(*number as f64, Some(*number), text)?,
            ArgValue::Number(number) => self.check_range(*number, None, text)?,
            ArgValue::Boolean(_) => {}
        }
        Ok(value)
    }

    fn check_range(&self, value: f64, integer: Option<i64>, text: &str) -> Result<(), (ArgProblemKind, String)> {
        // Integers compare exactly with integer bounds (an f64 loses precision above 2^53).
        let below = |bound: Bound| match (integer, bound) {
            (Some(value), Bound::Integer(bound)) => value < bound,
            _ => value < bound.as_f64(),
        };
        let above = |bound: Bound| match (integer, bound) {
            (Some(value), Bound::Integer(bound)) => value > bound,
            _ => value > bound.as_f64(),
        };
        let allowed = match (self.min, self.max) {
            (Some(min), Some(max)) => format!("{min}..={max}"),
            (Some(min), None) => format!(">= {min}"),
            (None, Some(max)) => format!("<= {max}"),
            (None, None) => return Ok(()),
        };
        if self.min.is_some_and(below) || self.max.is_some_and(above) {
            return Err((ArgProblemKind::OutOfBounds, format!("{} is out of range: use {allowed}", self.shown(text))));
        }
        Ok(())
    }
}

/// A validated, typed argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    /// Text.
    String(String),
    /// A 64-bit integer.
    Integer(i64),
    /// A finite number.
    Number(f64),
    /// A boolean.
    Boolean(bool),
}

impl ArgValue {
    /// Parses `text` as `kind`; `None` when it is not one.
    pub fn parse(kind: ArgKind, text: &str) -> Option<ArgValue> {
        match kind {
            ArgKind::String => Some(ArgValue::String(text.to_owned())),
            ArgKind::Integer => text.parse().ok().map(ArgValue::Integer),
            ArgKind::Number => {
                // -0 and 0 are one value, so they have one canonical text (and one digest).
                let number = text.parse::<f64>().ok().filter(|n| n.is_finite())?;
                Some(ArgValue::Number(if number == 0.0 { 0.0 } else { number }))
            }
            ArgKind::Boolean => match text {
                "true" => Some(ArgValue::Boolean(true)),
                "false" => Some(ArgValue::Boolean(false)),
                _ => None,
            },
        }
    }

    /// The type of the value.
    pub fn kind(&self) -> ArgKind {
        match self {
            ArgValue::String(_) => ArgKind::String,
            ArgValue::Integer(_) => ArgKind::Integer,
            ArgValue::Number(_) => ArgKind::Number,
            ArgValue::Boolean(_) => ArgKind::Boolean,
        }
    }

    /// The canonical text (what an argv placeholder becomes): `+7` and `7` are both `7`.
    pub fn text(&self) -> String {
        match self {
            ArgValue::String(text) => text.clone(),
            ArgValue::Integer(value) => value.to_string(),
            ArgValue::Number(value) => value.to_string(),
            ArgValue::Boolean(value) => value.to_string(),
        }
    }

    /// The JSON form (the body of an http step).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ArgValue::String(text) => serde_json::Value::String(text.clone()),
            ArgValue::Integer(value) => serde_json::Value::from(*value),
            ArgValue::Number(value) => serde_json::Value::from(*value),
            ArgValue::Boolean(value) => serde_json::Value::Bool(*value),
        }
    }
}

/// The arguments of one call after [`validate`]: typed, defaults filled in, secrets known.
/// Its `Debug` output redacts secrets.
#[derive(Clone, PartialEq, Default)]
pub struct ValidArgs {
    values: BTreeMap<String, ArgValue>,
    secrets: BTreeSet<String>,
}

impl fmt::Debug for ValidArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl ValidArgs {
    /// The value of `name`, if passed or defaulted.
    pub fn get(&self, name: &str) -> Option<&ArgValue> {
        self.values.get(name)
    }

    /// Every value, by name.
    pub fn values(&self) -> &BTreeMap<String, ArgValue> {
        &self.values
    }

    /// Whether `name` is a secret argument.
    pub fn is_secret(&self, name: &str) -> bool {
        self.secrets.contains(name)
    }

    /// Canonical texts with secrets replaced by `***`: for logs, audit and echo.
    pub fn redacted(&self) -> BTreeMap<String, String> {
        let mut shown = BTreeMap::new();
        for (name, value) in &self.values {
            let text = if self.is_secret(name) { crate::digest::REDACTED.to_owned() } else { value.text() };
            shown.insert(name.clone(), text);
        }
        shown
    }

    /// The JSON object of the values (secrets included: this goes to the application).
    pub fn to_json(&self) -> serde_json::Value {
        let object = self.values.iter().map(|(name, value)| (name.clone(), value.to_json())).collect();
        serde_json::Value::Object(object)
    }
}

/// What is wrong with an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArgProblemKind {
    /// The action declares no such argument.
    Unknown,
    /// A required argument is absent.
    Missing,
    /// The value does not parse as the declared type.
    WrongType,
    /// The value is not one of the enum entries.
    NotInEnum,
    /// The value does not match the pattern.
    PatternMismatch,
    /// Length or range out of bounds.
    OutOfBounds,
    /// The call passes too much (count or size).
    TooLarge,
}

/// One problem with a call's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgProblem {
    /// The argument concerned (shortened if the caller sent a very long name); empty for the
    /// call as a whole.
    pub argument: String,
    /// What kind of problem.
    pub kind: ArgProblemKind,
    /// What is wrong and what is allowed; never a secret's value.
    pub message: String,
}

impl fmt::Display for ArgProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.argument.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "argument {:?}: {}", self.argument, self.message)
        }
    }
}

/// Validates a call's arguments against the action's schema: all problems at once.
pub fn validate(spec: &ActionSpec, args: &BTreeMap<String, String>) -> Result<ValidArgs, Vec<ArgProblem>> {
    validate_args(&spec.name, &spec.args, args)
}

/// [`validate`] against the argument schema `schema` of action `action` alone (the master
/// knows an action's schema from the node's descriptor, not its steps).
pub fn validate_args(
    action: &str,
    schema: &[ArgSpec],
    args: &BTreeMap<String, String>,
) -> Result<ValidArgs, Vec<ArgProblem>> {
    let total: usize = args.iter().map(|(name, value)| name.len() + value.len()).sum();
    if args.len() > MAX_CALL_ARGS || total > MAX_TOTAL_BYTES {
        return Err(vec![ArgProblem {
            argument: String::new(),
            kind: ArgProblemKind::TooLarge,
            message: format!(
                "the call passes {} arguments of {total} bytes: at most {MAX_CALL_ARGS} arguments and {MAX_TOTAL_BYTES} bytes",
                args.len()
            ),
        }]);
    }
    let mut problems = Vec::new();
    let mut valid = ValidArgs::default();
    // The value of an unknown argument is never looked at: it might be a misspelt secret.
    for name in args.keys() {
        if !schema.iter().any(|arg| arg.name == *name) {
            let declared: Vec<&str> = schema.iter().map(|arg| arg.name.as_str()).collect();
            let declared = if declared.is_empty() { "none".to_owned() } else { declared.join(", ") };
            let shown: String = name.chars().take(ECHO_CHARS).collect();
            problems.push(ArgProblem {
                argument: shown,
                kind: ArgProblemKind::Unknown,
                message: format!("action {:?} declares no such argument; it takes: {declared}", action),
            });
        }
    }
    for arg in schema {
        if arg.secret {
            valid.secrets.insert(arg.name.clone());
        }
        let text = match (args.get(&arg.name), &arg.default) {
            (Some(text), _) => text,
            (None, Some(default)) => default,
            (None, None) if arg.required => {
                problems.push(ArgProblem {
                    argument: arg.name.clone(),
                    kind: ArgProblemKind::Missing,
                    message: format!("is required: pass --arg {}=<{}>", arg.name, arg.kind.as_str()),
                });
                continue;
            }
            (None, None) => continue,
        };
        match arg.check_value(text) {
            Ok(value) => {
                valid.values.insert(arg.name.clone(), value);
            }
            Err((kind, message)) => problems.push(ArgProblem { argument: arg.name.clone(), kind, message }),
        }
    }
    if problems.is_empty() { Ok(valid) } else { Err(problems) }
}
