//! The `ragmesh-agent` binary writes plain log lines when stderr is not a terminal (a pipe here,
//! journald or a file in production): no ANSI colour codes.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

/// Regression: logs carried ANSI colour codes whatever stderr was, so journald stored escape codes.
#[tokio::test]
async fn logs_carry_ansi_colour_codes_when_stderr_is_not_a_terminal() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ragmesh-agent"))
        .args(["--insecure", "--name", "colour-test", "--listen", "127.0.0.1:0"])
        // Nothing listens on port 1: the agent logs its retries, which is all this test needs.
        .args(["--master", "127.0.0.1:1", "--log", "info"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env_remove("NO_COLOR")
        .env_remove("RAGMESH_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start ragmesh-agent");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            let done = line.contains("agent serving");
            seen.push(line);
            if done {
                break;
            }
        }
    })
    .await;
    child.kill().await.expect("stop ragmesh-agent");
    assert!(read.is_ok(), "no \"agent serving\" line within 30 s; stderr so far: {seen:#?}");
    assert!(seen.iter().any(|line| line.contains("WARN")), "the plaintext warning is logged: {seen:#?}");
    for line in &seen {
        assert!(!line.contains("\x1b["), "ANSI escape code in a piped log line: {line:?}");
    }
}
