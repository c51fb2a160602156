//! Actions on the wire: an agent's declarations as `ActionDescriptor`s (what `ListActions`
//! answers), the argument schema read back from a descriptor (so the master validates a call
//! before it reaches the node), and run outcomes as `ActionResult`s.

use ragmesh_proto::v1;

use crate::run::{ActionOutcome, StepOutcome, StepStatus};
use crate::schema::{ArgKind, ArgSpec, Bound};
use crate::spec::{ActionSpec, StepRole};

/// The descriptor of a declared action (`builtin` for the agent's own).
pub fn descriptor(spec: &ActionSpec, builtin: bool) -> v1::ActionDescriptor {
    v1::ActionDescriptor {
        name: spec.name.clone(),
        description: spec.description.clone(),
        arguments: spec.args.iter().map(argument_descriptor).collect(),
        timeout_ms: u32::try_from(spec.timeout.as_millis()).unwrap_or(u32::MAX),
        capability: spec.capability.clone(),
        tenants: spec.tenants.clone(),
        transactional: spec.is_transactional(),
        builtin,
    }
}

/// The wire form of one argument's schema.
pub fn argument_descriptor(arg: &ArgSpec) -> v1::ArgumentDescriptor {
    let kind = match arg.kind {
        ArgKind::String => v1::ArgumentType::String,
        ArgKind::Integer => v1::ArgumentType::Integer,
        ArgKind::Number => v1::ArgumentType::Number,
        ArgKind::Boolean => v1::ArgumentType::Boolean,
    };
    v1::ArgumentDescriptor {
        name: arg.name.clone(),
        description: arg.description.clone(),
        r#type: kind as i32,
        required: arg.required,
        default_value: arg.default.clone(),
        allowed: arg.allowed.clone(),
        pattern: arg.pattern.clone().unwrap_or_default(),
        min_len: arg.min_len.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        max_len: arg.max_len.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        min: arg.min.map(bound_value),
        max: arg.max.map(bound_value),
        secret: arg.secret,
    }
}

fn bound_value(bound: Bound) -> f64 {
    match bound {
        Bound::Integer(value) => value as f64,
        Bound::Number(value) => value,
    }
}

/// A bound read back: integral values of an integer argument stay integers (exact within
/// 2^53, which is what a descriptor can carry).
fn bound(kind: ArgKind, value: f64) -> Bound {
    if kind == ArgKind::Integer && value.fract() == 0.0 && value.abs() < 9.007_199_254_740_992e15 {
        Bound::Integer(value as i64)
    } else {
        Bound::Number(value)
    }
}

/// The argument schema a descriptor carries, to validate a call on the master. A descriptor
/// from a newer agent with an argument type this build does not know is refused, naming it.
pub fn argument_schema(descriptor: &v1::ActionDescriptor) -> Result<Vec<ArgSpec>, String> {
    let mut schema = Vec::with_capacity(descriptor.arguments.len());
    for arg in &descriptor.arguments {
        let kind = match v1::ArgumentType::try_from(arg.r#type) {
            Ok(v1::ArgumentType::String) => ArgKind::String,
            Ok(v1::ArgumentType::Integer) => ArgKind::Integer,
            Ok(v1::ArgumentType::Number) => ArgKind::Number,
            Ok(v1::ArgumentType::Boolean) => ArgKind::Boolean,
            Ok(v1::ArgumentType::Unspecified) | Err(_) => {
                return Err(format!(
                    "action {:?}: argument {:?} has a type this master does not know ({}): upgrade the master",
                    descriptor.name, arg.name, arg.r#type
                ));
            }
        };
        schema.push(ArgSpec {
            name: arg.name.clone(),
            description: arg.description.clone(),
            kind,
            required: arg.required,
            default: arg.default_value.clone(),
            allowed: arg.allowed.clone(),
            pattern: Some(arg.pattern.clone()).filter(|p| !p.is_empty()),
            min_len: arg.min_len.map(|n| n as usize),
            max_len: arg.max_len.map(|n| n as usize),
            min: arg.min.map(|v| bound(kind, v)),
            max: arg.max.map(|v| bound(kind, v)),
            secret: arg.secret,
        });
    }
    Ok(schema)
}

/// The wire status of a step status.
pub fn status(status: StepStatus) -> v1::ActionStatus {
    match status {
        StepStatus::Ok => v1::ActionStatus::Ok,
        StepStatus::Failed => v1::ActionStatus::Failed,
        StepStatus::Timeout => v1::ActionStatus::Timeout,
        StepStatus::Error => v1::ActionStatus::Error,
    }
}

fn millis(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

/// One step's result.
pub fn step_result(role: StepRole, outcome: &StepOutcome) -> v1::StepResult {
    v1::StepResult {
        step: role.as_str().to_owned(),
        status: status(outcome.status) as i32,
        exit_code: outcome.exit_code,
        http_status: outcome.http_status.map(u32::from),
        stdout: outcome.stdout.text.clone(),
        stdout_truncated_bytes: outcome.stdout.truncated_bytes,
        stderr: outcome.stderr.text.clone(),
        stderr_truncated_bytes: outcome.stderr.truncated_bytes,
        duration_ms: millis(outcome.duration),
        message: outcome.message.clone(),
    }
}

/// A whole run's result: its status, every step, the total time, and the message of the step
/// that decided the status when it is not ok.
pub fn action_result(outcome: &ActionOutcome) -> v1::ActionResult {
    let status = outcome.status();
    let message = if status == StepStatus::Ok {
        String::new()
    } else {
        outcome
            .steps
            .iter()
            .find(|(_, step)| step.status == status && !step.message.is_empty())
            .map(|(role, step)| format!("{}: {}", role.as_str(), step.message))
            .unwrap_or_default()
    };
    v1::ActionResult {
        status: self::status(status) as i32,
        steps: outcome.steps.iter().map(|(role, step)| step_result(*role, step)).collect(),
        duration_ms: millis(outcome.duration()),
        message,
    }
}

/// A result for a call that never ran a step (refused arguments, an unknown action, a caller
/// that may not run it): `ERROR` with `message`.
pub fn refused(message: impl Into<String>) -> v1::ActionResult {
    v1::ActionResult {
        status: v1::ActionStatus::Error as i32,
        steps: Vec::new(),
        duration_ms: 0,
        message: message.into(),
    }
}

/// `text` with every occurrence of a `secrets` value replaced by `***` (longest first, so a
/// secret that contains another is masked whole).
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for secret in sorted {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), crate::REDACTED);
        }
    }
    out
}

/// The node's result with every secret argument's value masked in its outputs and messages.
pub fn mask_result(mut result: v1::ActionResult, secrets: &[String]) -> v1::ActionResult {
    if secrets.is_empty() {
        return result;
    }
    result.message = mask(&result.message, secrets);
    for step in &mut result.steps {
        step.stdout = mask(&step.stdout, secrets);
        step.stderr = mask(&step.stderr, secrets);
        step.message = mask(&step.message, secrets);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::schema::validate_args;

    fn spec() -> ActionSpec {
        let toml = r#"
            name = "cache.clear"
            description = "clears a cache"
            tenants = ["*"]
            timeout_ms = 1500
            [[args]]
            name = "region"
            type = "string"
            required = true
            enum = ["eu", "us"]
            [[args]]
            name = "count"
            type = "integer"
            min = -3
            max = 9007199254740
            [[args]]
            name = "ratio"
            type = "number"
            min = 0.5
            [[args]]
            name = "token"
            type = "string"
            secret = true
            pattern = "[a-z]+"
            min_len = 2
            max_len = 8
            [run.exec]
            program = "/bin/true"
            argv = []
        "#;
        toml::from_str(toml).expect("a valid declaration")
    }

    #[test]
    fn a_descriptor_carries_the_schema_and_reads_back_the_same() {
        let spec = spec();
        let wire = descriptor(&spec, false);
        assert_eq!((wire.name.as_str(), wire.timeout_ms, wire.transactional), ("cache.clear", 1500, false));
        let back = argument_schema(&wire).expect("known types");
        assert_eq!(back, spec.args, "the master validates with exactly the agent's schema");
        let args = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        for call in [args(&[("region", "eu")]), args(&[("region", "us"), ("count", "-3"), ("token", "ab")])] {
            assert!(validate_args("cache.clear", &back, &call).is_ok(), "{call:?}");
        }
        for call in [args(&[]), args(&[("region", "asia")]), args(&[("region", "eu"), ("count", "-4")])] {
            assert!(validate_args("cache.clear", &back, &call).is_err(), "{call:?}");
        }
    }

    #[test]
    fn an_unknown_argument_type_is_refused_with_what_to_do() {
        let mut wire = descriptor(&spec(), false);
        wire.arguments[0].r#type = 99;
        let err = argument_schema(&wire).expect_err("unknown type");
        assert!(err.contains("\"region\"") && err.contains("upgrade the master"), "{err}");
    }

    #[test]
    fn secret_values_are_masked_in_every_output_of_a_result() {
        let secrets = vec!["hunter2".to_owned(), "hunter2-long".to_owned(), String::new()];
        assert_eq!(mask("key=hunter2-long and hunter2.", &secrets), "key=*** and ***.");
        assert_eq!(mask("nothing here", &secrets), "nothing here", "an empty secret masks nothing");
        let result = v1::ActionResult {
            message: "failed with hunter2".into(),
            steps: vec![v1::StepResult {
                stdout: "alice:hunter2\n".into(),
                stderr: "hunter2".into(),
                message: "x hunter2".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let masked = mask_result(result, &secrets);
        assert!(!format!("{masked:?}").contains("hunter2"), "{masked:?}");
        assert_eq!(masked.steps[0].stdout, "alice:***\n");
    }
}
