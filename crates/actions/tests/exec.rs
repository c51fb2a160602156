//! The exec runner against real processes: whole-item substitution, a cleared environment,
//! timeouts that kill the whole process group, bounded output without deadlock, exit codes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ragmesh_actions::{
    ActionSpec, RunLimits, StepRole, StepStatus, ValidArgs, run_single, run_step, validate, validate_spec,
};

fn action(toml_text: &str) -> ActionSpec {
    #[derive(serde::Deserialize)]
    struct File {
        actions: Vec<ActionSpec>,
    }
    let mut file: File = toml::from_str(toml_text).expect("test declaration parses");
    let spec = file.actions.remove(0);
    assert_eq!(validate_spec(&spec), Vec::<String>::new(), "test declaration is valid");
    spec
}

fn args(spec: &ActionSpec, pairs: &[(&str, &str)]) -> ValidArgs {
    let raw: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    validate(spec, &raw).expect("valid test arguments")
}

fn limits(timeout: Duration) -> RunLimits {
    RunLimits { timeout, max_output_bytes: 64 * 1024, drain_grace: Duration::from_secs(1) }
}

async fn run(spec: &ActionSpec, valid: &ValidArgs, timeout: Duration) -> ragmesh_actions::StepOutcome {
    let step = &spec.steps()[0].1;
    run_step(step, valid, limits(timeout)).await
}

const ECHO: &str = r#"
[[actions]]
name = "echo"
tenants = ["*"]
[[actions.args]]
name = "who"
type = "string"
[[actions.args]]
name = "n"
type = "integer"
[actions.run.exec]
program = "/bin/echo"
argv = ["{who}"]
"#;

#[tokio::test]
async fn a_hostile_value_stays_one_literal_argv_item() {
    let spec = action(ECHO);
    let hostile = "\"; rm -rf / $(id) `id` *";
    let outcome = run(&spec, &args(&spec, &[("who", hostile)]), Duration::from_secs(30)).await;
    assert_eq!(outcome.status, StepStatus::Ok, "{outcome:?}");
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.stdout.text, format!("{hostile}\n"), "echoed verbatim: no shell expanded anything");

    // printf repeats its format per argument: one bracketed line per argv item.
    let printf = ECHO.replace("/bin/echo", "/usr/bin/printf").replace(r#"["{who}"]"#, r#"["[%s]\n", "{who}", "{n}"]"#);
    let spec = action(&printf);
    let outcome = run(&spec, &args(&spec, &[("who", "; rm -rf /"), ("n", "+7")]), Duration::from_secs(30)).await;
    assert_eq!(outcome.stdout.text, "[; rm -rf /]\n[7]\n", "two items, the integer canonical");
    let outcome = run(&spec, &args(&spec, &[("who", "a b")]), Duration::from_secs(30)).await;
    assert_eq!(outcome.stdout.text, "[a b]\n", "an absent optional argument drops its item");
}

#[tokio::test]
async fn the_environment_is_cleared_but_for_path_lang_and_the_declared_env() {
    let spec = action(
        r#"
[[actions]]
name = "env"
tenants = ["*"]
[actions.run.exec]
program = "/usr/bin/env"
env = { ACTION_FIXED = "yes" }
cwd = "/"
"#,
    );
    let outcome = run(&spec, &ValidArgs::default(), Duration::from_secs(30)).await;
    assert_eq!(outcome.status, StepStatus::Ok, "{outcome:?}");
    let keys: Vec<&str> = outcome.stdout.text.lines().filter_map(|line| line.split_once('=')).map(|(k, _)| k).collect();
    assert!(keys.contains(&"ACTION_FIXED"), "{keys:?}");
    for key in &keys {
        assert!(["PATH", "LANG", "ACTION_FIXED"].contains(key), "leaked variable {key} in {keys:?}");
    }
    assert!(std::env::var_os("CARGO").is_some() && !keys.contains(&"CARGO"), "the test's own env is not inherited");
}

#[tokio::test]
async fn a_non_zero_exit_is_failed_with_its_code_and_stderr() {
    let spec = action(
        r#"
[[actions]]
name = "fail"
tenants = ["*"]
[actions.run.exec]
program = "/bin/sh"
argv = ["-c", "echo oops >&2; exit 3"]
"#,
    );
    let outcome = run(&spec, &ValidArgs::default(), Duration::from_secs(30)).await;
    assert_eq!(outcome.status, StepStatus::Failed);
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.stderr.text, "oops\n");
    assert!(outcome.message.contains("exited with status 3"), "{}", outcome.message);
}

#[tokio::test]
async fn a_missing_program_is_an_error_not_a_panic() {
    let spec = action(ECHO.replace("/bin/echo", "/nonexistent/tool").as_str());
    let outcome = run(&spec, &ValidArgs::default(), Duration::from_secs(30)).await;
    assert_eq!(outcome.status, StepStatus::Error);
    assert!(outcome.message.contains("cannot start /nonexistent/tool"), "{}", outcome.message);
}

/// State letter of /proc/PID/stat, `None` when the process no longer exists.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name.
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group_and_reaps_the_child() {
    let spec = action(
        r#"
[[actions]]
name = "hang"
tenants = ["*"]
[actions.run.exec]
program = "/bin/sh"
argv = ["-c", "sleep 60 & echo $$ $!; wait"]
"#,
    );
    let started = Instant::now();
    let outcome = run(&spec, &ValidArgs::default(), Duration::from_millis(300)).await;
    let took = started.elapsed();
    assert_eq!(outcome.status, StepStatus::Timeout, "{outcome:?}");
    assert!(outcome.message.contains("process group was killed"), "{}", outcome.message);
    assert!(took >= Duration::from_millis(300), "not before the timeout: {took:?}");
    assert!(took < Duration::from_secs(20), "far from sleep 60: {took:?}");

    let pids: Vec<u32> = outcome.stdout.text.split_whitespace().map(|pid| pid.parse().expect("a pid")).collect();
    let [shell, sleeper] = pids[..] else { panic!("the script prints two pids: {:?}", outcome.stdout) };
    // The shell was our child: killed and reaped, so not even a zombie is left.
    assert_eq!(proc_state(shell), None, "the child is reaped");
    // The grandchild was killed with its group; it was re-parented, so its reaper is init, and it
    // may linger a moment as a zombie ('Z') but never runs on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = proc_state(sleeper);
        if matches!(state, None | Some('Z')) {
            break;
        }
        assert!(Instant::now() < deadline, "grandchild {sleeper} still alive: state {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ten_megabytes_on_both_pipes_are_bounded_and_do_not_hang() {
    let spec = action(
        r#"
[[actions]]
name = "chatty"
tenants = ["*"]
[actions.run.exec]
program = "/bin/sh"
argv = ["-c", "head -c 10000000 /dev/zero >&2; head -c 10000000 /dev/zero; echo done >&2"]
"#,
    );
    let outcome = run(&spec, &ValidArgs::default(), Duration::from_secs(60)).await;
    assert_eq!(outcome.status, StepStatus::Ok, "{}", outcome.message);
    assert_eq!(outcome.stdout.text.len(), 64 * 1024);
    assert_eq!(outcome.stdout.truncated_bytes, 10_000_000 - 64 * 1024);
    assert_eq!(outcome.stderr.text.len(), 64 * 1024);
    assert_eq!(outcome.stderr.truncated_bytes, 10_000_000 + 5 - 64 * 1024, "stderr was read to its end");
}

#[tokio::test]
async fn invalid_utf8_output_is_kept_lossily() {
    let spec = action(ECHO.replace("/bin/echo", "/usr/bin/printf").replace(r#"["{who}"]"#, r#"["a\\377b"]"#).as_str());
    let outcome = run(&spec, &ValidArgs::default(), Duration::from_secs(30)).await;
    assert_eq!(outcome.stdout.text, "a\u{FFFD}b");
}

const TX: &str = r#"
[[actions]]
name = "tx"
tenants = ["*"]
[actions.prepare.exec]
program = "PREPARE"
[actions.commit.exec]
program = "/bin/echo"
argv = ["committed"]
[actions.abort.exec]
program = "/bin/echo"
argv = ["aborted"]
"#;

#[tokio::test]
async fn a_transactional_action_on_one_node_commits_after_prepare_or_aborts() {
    let spec = action(&TX.replace("PREPARE", "/bin/true"));
    let outcome = run_single(&spec, &ValidArgs::default(), RunLimits::for_action(&spec)).await;
    let roles: Vec<StepRole> = outcome.steps.iter().map(|(role, _)| *role).collect();
    assert_eq!(roles, [StepRole::Prepare, StepRole::Commit]);
    assert_eq!(outcome.steps[1].1.stdout.text, "committed\n");
    assert_eq!(outcome.status(), StepStatus::Ok);

    let spec = action(&TX.replace("PREPARE", "/bin/false"));
    let outcome = run_single(&spec, &ValidArgs::default(), RunLimits::for_action(&spec)).await;
    let roles: Vec<StepRole> = outcome.steps.iter().map(|(role, _)| *role).collect();
    assert_eq!(roles, [StepRole::Prepare, StepRole::Abort]);
    assert_eq!(outcome.steps[1].1.stdout.text, "aborted\n");
    assert_eq!(outcome.status(), StepStatus::Failed, "prepare's failure is the action's outcome");
}

#[tokio::test]
async fn one_phase_of_a_transaction_alone_reports_its_own_step_status() {
    use ragmesh_actions::{ActionOutcome, Steps};
    let spec = action(&TX.replace("PREPARE", "/bin/true"));
    let Steps::Transactional { commit, abort, .. } = &spec.steps else { panic!("transactional") };
    for (role, step) in [(StepRole::Commit, commit), (StepRole::Abort, abort)] {
        let alone = ActionOutcome {
            steps: vec![(role, run_step(step, &ValidArgs::default(), RunLimits::for_action(&spec)).await)],
        };
        assert_eq!(alone.status(), StepStatus::Ok, "{role:?} alone");
    }
    let spec =
        action(&TX.replace("PREPARE", "/bin/true").replace("\"committed\"", "\"\"").replace("/bin/echo", "/bin/false"));
    let Steps::Transactional { commit, .. } = &spec.steps else { panic!("transactional") };
    let failed = ActionOutcome {
        steps: vec![(StepRole::Commit, run_step(commit, &ValidArgs::default(), RunLimits::for_action(&spec)).await)],
    };
    assert_eq!(failed.status(), StepStatus::Failed);
    assert_eq!(ActionOutcome { steps: Vec::new() }.status(), StepStatus::Error, "no step ran");
}

#[tokio::test]
async fn a_step_abandoned_by_its_caller_leaves_no_process_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = dir.path().join("pids");
    let text = format!(
        r#"
[[actions]]
name = "abandoned"
tenants = ["*"]
[actions.run.exec]
program = "/bin/sh"
argv = ["-c", "sleep 60 & echo $$ $! > {}; wait"]
"#,
        pids.display()
    );
    let spec = action(&text);
    let task = tokio::spawn(async move { run(&spec, &ValidArgs::default(), Duration::from_secs(120)).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    let written = loop {
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        if text.ends_with('\n') {
            break text;
        }
        assert!(Instant::now() < deadline, "the script never wrote its pids");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    let pids: Vec<u32> = written.split_whitespace().map(|pid| pid.parse().expect("a pid")).collect();
    for pid in pids {
        loop {
            let state = proc_state(pid);
            if matches!(state, None | Some('Z')) {
                break;
            }
            assert!(Instant::now() < deadline, "process {pid} still alive: state {state:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
