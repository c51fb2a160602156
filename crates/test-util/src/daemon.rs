//! Runs a daemon binary with `--listen 127.0.0.1:0 --addr-file FILE` and checks what it reports:
//! the address it really bound, one line, written atomically, answering gRPC health checks.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How long the daemon may take to bind and write its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two looks at the address file.
const POLL: Duration = Duration::from_millis(50);

/// Keeps the `RAGMESH_*` variables of the test's environment from reaching a daemon `command`
/// starts, so a developer's settings never change what a test runs.
pub fn without_ragmesh_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RAGMESH_") {
            command.env_remove(key);
        }
    }
}

/// Starts `exe` (named `role` in messages and files) with `args` plus `--listen 127.0.0.1:0
/// --addr-file DIR/<role>.addr --data-dir DIR/data`, and asserts that the file holds the bound
/// address, that a health check there is answered, and that no temporary file is left behind.
/// `RAGMESH_*` variables of the test's environment are not passed on.
pub async fn assert_addr_file_reports_the_bound_address(exe: &Path, role: &str, args: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr_file = dir.path().join(format!("{role}.addr"));
    let log = dir.path().join(format!("{role}.log"));
    let log_file = File::create(&log).expect("log file");
    let mut command = Command::new(exe);
    command
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--log", "info"])
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true);
    without_ragmesh_env(&mut command);
    let mut child = command.spawn().unwrap_or_else(|e| panic!("start {role}: {e}"));

    let text = wait_for_addr(&mut child, role, &addr_file, &log).await;
    assert!(text.ends_with('\n') && text.lines().count() == 1, "one line, newline-terminated: {text:?}");
    let addr: SocketAddr = text.trim_end().parse().expect("the file holds IP:PORT");
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 0, "the bound port, not the requested 0");

    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(START_TIMEOUT)
        .timeout(START_TIMEOUT)
        .connect()
        .await
        .expect("connect to the reported address");
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap_or_else(|e| panic!("the {role} answers a health check on the reported address: {e}"));

    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected = vec![format!("{role}.addr"), format!("{role}.log"), "data".to_owned()];
    expected.sort();
    assert_eq!(names, expected, "no temporary file left behind");
    child.kill().await.unwrap_or_else(|e| panic!("stop the {role}: {e}"));
}

/// Waits for `addr_file` to appear while `child` runs; panics with its log if it dies or times out.
async fn wait_for_addr(child: &mut Child, role: &str, addr_file: &Path, log: &Path) -> String {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("poll the daemon") {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the {role} exited ({status}) before writing {}:\n{log}", addr_file.display());
        }
        if let Ok(text) = std::fs::read_to_string(addr_file) {
            return text;
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("no {} within {START_TIMEOUT:?}:\n{log}", addr_file.display());
        }
        tokio::time::sleep(POLL).await;
    }
}
