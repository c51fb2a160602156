//! Declarations: TOML parsing (shape) and `validate_spec` (meaning), every problem at once.

use std::time::Duration;

use ragmesh_actions::{ActionSpec, ArgKind, ArgvItem, Step, Steps, validate_spec, validate_specs};

#[derive(Debug, serde::Deserialize)]
struct File {
    actions: Vec<ActionSpec>,
}

fn parse(text: &str) -> Result<Vec<ActionSpec>, String> {
    toml::from_str::<File>(text).map(|file| file.actions).map_err(|err| err.to_string())
}

const GOOD: &str = r#"
[[actions]]
name = "greet"
description = "say hello"
tenants = ["*"]
timeout_ms = 5000
[[actions.args]]
name = "who"
type = "string"
required = true
pattern = "[a-z]+"
max_len = 20
[[actions.args]]
name = "times"
type = "integer"
default = 1
min = 1
max = 10
[actions.run.exec]
program = "/bin/echo"
argv = ["hello", "{who}", "--times", "{times}"]
env = { GREETING = "1" }

[[actions]]
name = "clear-cache"
tenants = ["acme", "globex"]
capability = "ops"
[[actions.args]]
name = "region"
type = "string"
enum = ["eu", "us"]
[actions.run.http]
url = "http://127.0.0.1:8000/internal/clear-cache/{region}"
headers = { x-token = "fixed" }

[[actions]]
name = "migrate"
tenants = []
[actions.prepare.exec]
program = "/usr/bin/true"
[actions.commit.exec]
program = "/usr/bin/true"
[actions.abort.http]
method = "DELETE"
url = "http://127.0.0.1:8000/migration"
body = "none"
"#;

#[test]
fn a_good_file_parses_with_defaults_and_validates_clean() {
    let actions = parse(GOOD).expect("parses");
    assert_eq!(validate_specs(&actions), Vec::<String>::new());
    let greet = &actions[0];
    assert_eq!(greet.timeout, Duration::from_secs(5));
    assert_eq!(greet.capability, "actions", "default capability");
    assert_eq!(greet.arg("times").map(|arg| (arg.kind, arg.default.as_deref())), Some((ArgKind::Integer, Some("1"))));
    let Steps::Run(Step::Exec(exec)) = &greet.steps else { panic!("exec run step: {:?}", greet.steps) };
    assert_eq!(exec.argv[1], ArgvItem::Arg("who".into()));
    assert_eq!(exec.argv[2], ArgvItem::Literal("--times".into()));
    assert!(!greet.is_transactional());

    let cache = &actions[1];
    assert_eq!(cache.timeout, Duration::from_secs(30), "default timeout");
    assert!(cache.allows_tenant("acme") && !cache.allows_tenant("initech"));
    assert!(greet.allows_tenant("anyone"), "\"*\" admits every tenant");

    let migrate = &actions[2];
    assert!(migrate.is_transactional());
    assert!(!migrate.allows_tenant("acme"), "an empty tenant list admits no tenant (operators only)");
}

#[test]
fn steps_must_be_run_or_all_three_transaction_steps() {
    let text = r#"
[[actions]]
name = "half"
tenants = ["*"]
[actions.prepare.exec]
program = "/bin/true"
[actions.commit.exec]
program = "/bin/true"
"#;
    let err = parse(text).expect_err("abort missing");
    assert!(err.contains("declare either one `run` step or all three of `prepare`, `commit` and `abort`"), "{err}");
    let both =
        GOOD.replace("[actions.prepare.exec]", "[actions.run.exec]\nprogram = \"/bin/true\"\n[actions.prepare.exec]");
    assert!(parse(&both).is_err(), "run beside prepare/commit/abort is refused");
}

#[test]
fn unknown_keys_and_a_missing_tenant_list_are_refused() {
    let typo = GOOD.replacen("timeout_ms = 5000", "timeout = 5000", 1);
    assert!(parse(&typo).expect_err("unknown key").contains("unknown field `timeout`"));
    let arg_typo = GOOD.replacen("max_len = 20", "maxlen = 20", 1);
    assert!(parse(&arg_typo).expect_err("unknown key").contains("maxlen"));
    let no_tenants = GOOD.replacen("tenants = [\"*\"]\n", "", 1);
    assert!(parse(&no_tenants).expect_err("tenants required").contains("tenants"));
}

#[test]
fn every_problem_is_listed_at_once_with_a_fix() {
    let text = r#"
[[actions]]
name = "node.restart"
tenants = ["*", "acme"]
timeout_ms = 0
[[actions.args]]
name = "Bad"
type = "string"
pattern = "(unclosed"
[[actions.args]]
name = "n"
type = "integer"
min = 5
max = 1
default = 9
enum = ["x"]
[[actions.args]]
name = "n"
type = "boolean"
max_len = 3
[[actions.args]]
name = "key"
type = "string"
secret = true
[actions.run.exec]
program = "bin/tool"
argv = ["--x={n}", "{nope}"]
cwd = "relative"

[[actions]]
name = "web"
tenants = ["*"]
timeout_ms = 3600001
[actions.prepare.http]
url = "https://127.0.0.1/x"
[actions.commit.http]
url = "http://{host}:80/x"
[actions.abort.http]
url = "http://127.0.0.1:80/x/{key}?q={n}"
method = "NOT A METHOD"
headers = { Host = "elsewhere" }
"#;
    let actions = parse(text).expect("shape is fine");
    let problems = validate_specs(&actions);
    let all = problems.join("\n");
    for needle in [
        "action \"node.restart\": names starting with \"node.\" are reserved for built-in actions",
        "timeout_ms 0 is out of range: use 1..=3600000",
        "\"*\" already admits every tenant",
        "argument \"Bad\": invalid name",
        "argument \"Bad\": pattern is not a valid regular expression",
        "argument \"n\": min 5 is greater than max 1: swap them",
        "argument \"n\": the default does not fit the argument's own rules",
        "enum entry \"x\" is not a valid integer",
        "argument \"n\" is declared twice",
        "pattern, min_len and max_len apply to strings only",
        "run step: program bin/tool is a relative path: give an absolute path",
        "run step: cwd relative is a relative path",
        "argv item \"--x={n}\" mixes a placeholder with other text",
        "run step: placeholder {nope} names no declared argument",
        "action \"web\": timeout_ms 3600001 is out of range",
        "prepare step: url \"https://127.0.0.1/x\": https is not supported",
        "commit step: url \"http://{host}:80/x\": the host part must be a fixed HOST:PORT",
        "abort step: method \"NOT A METHOD\" is not an HTTP method",
        "placeholders are allowed in the path only, not in the query",
        "abort step: placeholder {key} names no declared argument",
        "abort step: header \"Host\" is set by the runner from the url and body: remove it",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn a_secret_in_a_url_path_and_duplicate_action_names_are_problems() {
    let text = r#"
[[actions]]
name = "a"
tenants = ["*"]
[[actions.args]]
name = "token"
type = "string"
secret = true
[actions.run.http]
url = "http://127.0.0.1:1/x/{token}"

[[actions]]
name = "a"
tenants = ["*"]
[actions.run.exec]
program = "/bin/true"
argv = ["{json: not a placeholder}", "{}"]
"#;
    let actions = parse(text).expect("shape is fine");
    let problems = validate_specs(&actions);
    assert!(problems.iter().any(|p| p.contains("puts a secret argument in the URL")), "{problems:#?}");
    assert!(problems.iter().any(|p| p.contains("action \"a\" is declared twice")), "{problems:#?}");
    assert_eq!(problems.len(), 2, "literal braces that are not placeholders are fine: {problems:#?}");
    assert!(validate_spec(&actions[1]).is_empty());
}
