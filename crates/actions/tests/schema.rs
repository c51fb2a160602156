//! Argument validation: each problem kind with a helpful message, all problems at once,
//! secrets never echoed, input bounds; property tests over generated schemas and values.

use std::collections::BTreeMap;

use proptest::prelude::*;
use ragmesh_actions::schema::{MAX_CALL_ARGS, MAX_TOTAL_BYTES, MAX_VALUE_BYTES};
use ragmesh_actions::{
    ActionSpec, ArgKind, ArgProblemKind, ArgSpec, ArgValue, Bound, Step, Steps, ValidArgs, digest, redacted, validate,
};

fn spec_with(args: Vec<ArgSpec>) -> ActionSpec {
    let step: Step = toml::from_str::<BTreeMap<String, Step>>("[s.exec]\nprogram = \"/bin/true\"\n")
        .expect("step")
        .remove("s")
        .expect("step");
    ActionSpec {
        name: "t".into(),
        description: String::new(),
        args,
        timeout: std::time::Duration::from_secs(1),
        capability: "actions".into(),
        tenants: vec!["*".into()],
        steps: Steps::Run(step),
    }
}

fn rich_spec() -> ActionSpec {
    let mut name = ArgSpec::new("name", ArgKind::String);
    name.required = true;
    name.pattern = Some("[a-z]+".into());
    name.max_len = Some(8);
    let mut count = ArgSpec::new("count", ArgKind::Integer);
    count.min = Some(Bound::Integer(1));
    count.max = Some(Bound::Integer(10));
    count.default = Some("3".into());
    let mut ratio = ArgSpec::new("ratio", ArgKind::Number);
    ratio.min = Some(Bound::Number(0.0));
    ratio.max = Some(Bound::Number(1.0));
    let mut mode = ArgSpec::new("mode", ArgKind::String);
    mode.allowed = vec!["fast".into(), "safe".into()];
    let force = ArgSpec::new("force", ArgKind::Boolean);
    let mut token = ArgSpec::new("token", ArgKind::String);
    token.secret = true;
    token.pattern = Some("[a-z]{8}".into());
    token.allowed = vec![];
    spec_with(vec![name, count, ratio, mode, force, token])
}

fn call(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn valid_arguments_are_typed_and_defaults_filled() {
    let valid = validate(&rich_spec(), &call(&[("name", "abc"), ("ratio", "0.5"), ("force", "true")])).expect("ok");
    assert_eq!(valid.get("name"), Some(&ArgValue::String("abc".into())));
    assert_eq!(valid.get("count"), Some(&ArgValue::Integer(3)), "default");
    assert_eq!(valid.get("ratio"), Some(&ArgValue::Number(0.5)));
    assert_eq!(valid.get("force"), Some(&ArgValue::Boolean(true)));
    assert_eq!(valid.get("mode"), None, "optional, no default");
}

#[test]
fn every_problem_is_reported_at_once_naming_the_argument_and_what_is_allowed() {
    let problems = validate(
        &rich_spec(),
        &call(&[
            ("count", "11"),
            ("ratio", "abc"),
            ("mode", "slow"),
            ("force", "yes"),
            ("colour", "crimson-VALUE"),
            ("token", "SECRET-VALUE"),
        ]),
    )
    .expect_err("invalid");
    let found: Vec<(String, ArgProblemKind)> = problems.iter().map(|p| (p.argument.clone(), p.kind)).collect();
    for expected in [
        ("colour", ArgProblemKind::Unknown),
        ("name", ArgProblemKind::Missing),
        ("count", ArgProblemKind::OutOfBounds),
        ("ratio", ArgProblemKind::WrongType),
        ("mode", ArgProblemKind::NotInEnum),
        ("force", ArgProblemKind::WrongType),
        ("token", ArgProblemKind::PatternMismatch),
    ] {
        assert!(found.contains(&(expected.0.to_owned(), expected.1)), "missing {expected:?} in {found:?}");
    }
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let all = text.join("\n");
    for needle in [
        "argument \"colour\": action \"t\" declares no such argument; it takes: name, count, ratio, mode, force, token",
        "argument \"name\": is required: pass --arg name=<string>",
        "argument \"count\": \"11\" is out of range: use 1..=10",
        "argument \"ratio\": \"abc\" is not a finite number",
        "argument \"mode\": \"slow\" is not one of: fast, safe",
        "argument \"force\": \"yes\" is not true or false",
        "argument \"token\": the value does not match the pattern",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(!all.contains("SECRET-VALUE"), "a secret is never echoed:\n{all}");
    assert!(!all.contains("crimson-VALUE"), "an unknown argument's value is not echoed either:\n{all}");
}

#[test]
fn lengths_count_characters_and_patterns_match_the_whole_value() {
    let spec = rich_spec();
    assert!(validate(&spec, &call(&[("name", "abcdefgh")])).is_ok(), "8 chars is the max");
    let long = validate(&spec, &call(&[("name", "abcdefghi")])).expect_err("9 chars");
    assert_eq!(long[0].message, "9 characters is too long: at most 8");
    let partial = validate(&spec, &call(&[("name", "abc1")])).expect_err("anchored");
    assert_eq!(partial[0].kind, ArgProblemKind::PatternMismatch, "a prefix match is not enough");
    let mut emoji = ArgSpec::new("e", ArgKind::String);
    emoji.max_len = Some(2);
    assert!(validate(&spec_with(vec![emoji]), &call(&[("e", "éé")])).is_ok(), "two chars, four bytes");
}

#[test]
fn oversized_calls_are_refused_before_any_value_is_looked_at() {
    let spec = rich_spec();
    let many: BTreeMap<String, String> = (0..=MAX_CALL_ARGS).map(|i| (format!("a{i}"), String::new())).collect();
    let problems = validate(&spec, &many).expect_err("too many");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, ArgProblemKind::TooLarge);
    let huge = call(&[("name", &"a".repeat(MAX_TOTAL_BYTES + 1))]);
    assert_eq!(validate(&spec, &huge).expect_err("too big")[0].kind, ArgProblemKind::TooLarge);
    let big = call(&[("name", &"a".repeat(MAX_VALUE_BYTES + 1))]);
    let problems = validate(&spec, &big).expect_err("value too big");
    assert_eq!((problems[0].argument.as_str(), problems[0].kind), ("name", ArgProblemKind::TooLarge));
}

#[test]
fn integer_bounds_are_exact_at_the_extremes() {
    let mut big = ArgSpec::new("n", ArgKind::Integer);
    big.max = Some(Bound::Integer(i64::MAX - 1));
    let spec = spec_with(vec![big]);
    assert!(validate(&spec, &call(&[("n", &(i64::MAX - 1).to_string())])).is_ok());
    // As f64 both are 2^63: only an exact comparison tells them apart.
    assert!(validate(&spec, &call(&[("n", &i64::MAX.to_string())])).is_err());
}

#[test]
fn redaction_hides_secrets_and_undeclared_arguments() {
    let spec = rich_spec();
    let shown = redacted(&spec, &call(&[("name", "abc"), ("token", "hunter22"), ("pasword", "typo")]));
    assert_eq!(shown, call(&[("name", "abc"), ("token", "***"), ("pasword", "***")]));
    let valid = validate(&spec, &call(&[("name", "abc"), ("token", "abcdefgh")])).expect("ok");
    let debug = format!("{valid:?}");
    assert!(debug.contains("***") && !debug.contains("abcdefgh"), "{debug}");
    assert_eq!(valid.redacted().get("token").map(String::as_str), Some("***"));
}

#[test]
fn digests_depend_on_values_not_on_spelling_or_order() {
    let spec = rich_spec();
    let key = b"audit-key";
    let first = validate(&spec, &call(&[("name", "abc"), ("count", "+7"), ("ratio", "0.50")])).expect("ok");
    let mut reordered = BTreeMap::new();
    reordered.insert("ratio".to_owned(), "5e-1".to_owned());
    reordered.insert("count".to_owned(), "7".to_owned());
    reordered.insert("name".to_owned(), "abc".to_owned());
    let second = validate(&spec, &reordered).expect("ok");
    assert_eq!(digest(key, &first), digest(key, &second), "same values, other spelling and order");
    let other = validate(&spec, &call(&[("name", "abd"), ("count", "7"), ("ratio", "0.5")])).expect("ok");
    assert_ne!(digest(key, &first), digest(key, &other));
    assert_ne!(digest(key, &first), digest(b"another-key", &first), "keyed");
    // The default is part of what runs, so it is part of the digest.
    let defaulted = validate(&spec, &call(&[("name", "abc"), ("ratio", "0.5")])).expect("ok");
    let explicit = validate(&spec, &call(&[("name", "abc"), ("ratio", "0.5"), ("count", "3")])).expect("ok");
    assert_eq!(digest(key, &defaulted), digest(key, &explicit));
}

#[test]
fn the_encoding_is_unambiguous_across_name_and_value_boundaries() {
    let spec = spec_with(vec![ArgSpec::new("a", ArgKind::String), ArgSpec::new("ab", ArgKind::String)]);
    let one = validate(&spec, &call(&[("a", "bc")])).expect("ok");
    let two = validate(&spec, &call(&[("ab", "c")])).expect("ok");
    assert_ne!(digest(b"k", &one), digest(b"k", &two));
    let typed = spec_with(vec![ArgSpec::new("a", ArgKind::Integer)]);
    let text = spec_with(vec![ArgSpec::new("a", ArgKind::String)]);
    let as_int = validate(&typed, &call(&[("a", "1")])).expect("ok");
    let as_text = validate(&text, &call(&[("a", "1")])).expect("ok");
    assert_ne!(digest(b"k", &as_int), digest(b"k", &as_text), "the type is encoded");
}

/// A declared argument and a value that satisfies it.
fn inside() -> impl Strategy<Value = (ArgSpec, String)> {
    let string =
        (0usize..4, 0usize..12, prop::sample::select(vec!["[a-z]", "[A-Za-z0-9_.-]", "[^\\x00]"]), any::<bool>())
            .prop_flat_map(|(min_len, extra, class, with_enum)| {
                let max_len = min_len + extra;
                let value = prop::string::string_regex(&format!("{class}{{{min_len},{max_len}}}")).expect("regex");
                (Just((min_len, max_len, class, with_enum)), value)
            })
            .prop_map(|((min_len, max_len, class, with_enum), value)| {
                let mut arg = ArgSpec::new("s", ArgKind::String);
                arg.min_len = Some(min_len);
                arg.max_len = Some(max_len);
                arg.pattern = Some(format!("{class}*"));
                if with_enum {
                    arg.allowed = vec!["zz-not-it".into(), value.clone()];
                }
                (arg, value)
            });
    let integer = (any::<i64>(), any::<i64>(), any::<bool>()).prop_flat_map(|(a, b, plus)| {
        let (min, max) = (a.min(b), a.max(b));
        (min..=max).prop_map(move |value| {
            let mut arg = ArgSpec::new("i", ArgKind::Integer);
            arg.min = Some(Bound::Integer(min));
            arg.max = Some(Bound::Integer(max));
            let text = if plus && value >= 0 { format!("+{value}") } else { value.to_string() };
            (arg, text)
        })
    });
    let number = (-1e9f64..1e9, 0f64..1e9, 0f64..=1.0, any::<bool>()).prop_map(|(min, width, at, exp)| {
        let max = min + width;
        let value = (min + width * at).clamp(min, max);
        let mut arg = ArgSpec::new("n", ArgKind::Number);
        arg.min = Some(Bound::Number(min));
        arg.max = Some(Bound::Number(max));
        let text = if exp { format!("{value:e}") } else { format!("{value}") };
        (arg, text)
    });
    let boolean = any::<bool>().prop_map(|value| (ArgSpec::new("b", ArgKind::Boolean), value.to_string()));
    prop_oneof![string, integer, number, boolean]
}

/// A declared argument and a value that breaks it, with the kind of problem expected.
fn outside() -> impl Strategy<Value = (ArgSpec, String, ArgProblemKind)> {
    let too_long = (0usize..10, 1usize..5).prop_map(|(max_len, over)| {
        let mut arg = ArgSpec::new("s", ArgKind::String);
        arg.max_len = Some(max_len);
        (arg, "a".repeat(max_len + over), ArgProblemKind::OutOfBounds)
    });
    let bad_char = ("[a-z]{0,5}", "[A-Z0-9 ]", "[a-z]{0,5}").prop_map(|(head, bad, tail)| {
        let mut arg = ArgSpec::new("s", ArgKind::String);
        arg.pattern = Some("[a-z]*".into());
        (arg, format!("{head}{bad}{tail}"), ArgProblemKind::PatternMismatch)
    });
    let not_listed = "[a-z]{1,6}".prop_map(|value| {
        let mut arg = ArgSpec::new("s", ArgKind::String);
        arg.allowed = vec![format!("{value}x"), "0".into()];
        (arg, value, ArgProblemKind::NotInEnum)
    });
    let out_of_range = (-1000i64..1000, 0i64..1000, 1i64..1000, any::<bool>()).prop_map(|(min, width, by, below)| {
        let mut arg = ArgSpec::new("i", ArgKind::Integer);
        arg.min = Some(Bound::Integer(min));
        arg.max = Some(Bound::Integer(min + width));
        let value = if below { min - by } else { min + width + by };
        (arg, value.to_string(), ArgProblemKind::OutOfBounds)
    });
    let not_integer = prop::sample::select(vec!["1.5", "", "1e3", "0x10", "9223372036854775808", " 1", "one"])
        .prop_map(|text| (ArgSpec::new("i", ArgKind::Integer), text.to_owned(), ArgProblemKind::WrongType));
    let not_number = prop::sample::select(vec!["NaN", "inf", "-infinity", "1e999", "", "1,5", "abc"])
        .prop_map(|text| (ArgSpec::new("n", ArgKind::Number), text.to_owned(), ArgProblemKind::WrongType));
    let not_boolean = "\\PC{0,6}"
        .prop_filter("not a boolean", |text| text != "true" && text != "false")
        .prop_map(|text| (ArgSpec::new("b", ArgKind::Boolean), text, ArgProblemKind::WrongType));
    prop_oneof![too_long, bad_char, not_listed, out_of_range, not_integer, not_number, not_boolean]
}

proptest! {
    #[test]
    fn a_value_inside_the_schema_always_validates((arg, value) in inside(), required in any::<bool>(), secret in any::<bool>()) {
        let mut arg = arg;
        arg.required = required;
        arg.secret = secret;
        let name = arg.name.clone();
        let spec = spec_with(vec![arg]);
        prop_assert_eq!(ragmesh_actions::validate_spec(&spec), Vec::<String>::new());
        let valid = validate(&spec, &call(&[(&name, &value)]));
        prop_assert!(valid.is_ok(), "{:?} refused: {:?}", value, valid);
    }

    #[test]
    fn a_value_outside_the_schema_always_fails((arg, value, kind) in outside(), secret in any::<bool>()) {
        let mut arg = arg;
        arg.secret = secret;
        let name = arg.name.clone();
        let spec = spec_with(vec![arg]);
        let problems = validate(&spec, &call(&[(&name, &value)])).expect_err("outside the schema");
        prop_assert_eq!(problems.len(), 1);
        prop_assert_eq!(&problems[0].argument, &name);
        prop_assert_eq!(problems[0].kind, kind);
        if secret {
            // A value is echoed quoted (`"abc"`); the bare text may occur in the message by
            // chance, e.g. "-47" inside the allowed range "-474..=-191".
            let quoted = format!("{:?}", value.chars().take(64).collect::<String>());
            let opening = &quoted[..quoted.len() - 1];
            prop_assert!(!problems[0].message.contains(opening), "secret echoed: {}", problems[0].message);
        }
    }

    #[test]
    fn validation_never_panics_and_never_echoes_a_secret(
        raw in prop::collection::btree_map("\\PC{0,12}|name|count|ratio|mode|force|token", "\\PC{0,40}", 0..12),
        secret in "\\PC{0,20}",
    ) {
        let spec = rich_spec();
        let mut raw = raw;
        let marked = format!("SECRET-{secret}");
        raw.insert("token".into(), marked.clone());
        match validate(&spec, &raw) {
            Ok(valid) => {
                let shown = format!("{valid:?}");
                prop_assert!(!shown.contains(&marked), "{}", shown);
            }
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                for problem in &problems {
                    prop_assert!(!problem.to_string().contains("SECRET-"), "{}", problem);
                }
            }
        }
        let _ = redacted(&spec, &raw);
    }

    #[test]
    fn equal_arguments_have_equal_digests_and_different_ones_differ(
        a in prop::collection::btree_map("[a-c]", "[a-c0-9]{0,3}", 0..4),
        b in prop::collection::btree_map("[a-c]", "[a-c0-9]{0,3}", 0..4),
    ) {
        let spec = spec_with(["a", "b", "c"].iter().map(|n| ArgSpec::new(n, ArgKind::String)).collect());
        let va: ValidArgs = validate(&spec, &a).expect("ok");
        let vb: ValidArgs = validate(&spec, &b).expect("ok");
        prop_assert_eq!(digest(b"k", &va) == digest(b"k", &vb), a == b);
    }
}
