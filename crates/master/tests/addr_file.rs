//! The `ragmesh-master` binary started with `--listen 127.0.0.1:0 --addr-file FILE` writes the
//! address it really bound into FILE, and that address answers gRPC: what supervisors such as
//! `ragmeshctl demo` rely on instead of picking a free port and racing other processes for it.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How long the master may take to bind and write its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two looks at the address file.
const POLL: Duration = Duration::from_millis(50);

/// Waits for `addr_file` to appear while `child` runs; panics with `log` if it dies or times out.
async fn wait_for_addr(child: &mut Child, addr_file: &Path, log: &Path) -> String {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("poll the master") {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the master exited ({status}) before writing {}:\n{log}", addr_file.display());
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

#[tokio::test]
async fn listen_port_zero_writes_the_bound_address_to_the_addr_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr_file = dir.path().join("master.addr");
    let log = dir.path().join("master.log");
    let log_file = File::create(&log).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ragmesh-master"));
    command
        .args(["--insecure", "--listen", "127.0.0.1:0", "--log", "info"])
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RAGMESH_") {
            command.env_remove(key);
        }
    }
    let mut child = command.spawn().expect("start ragmesh-master");

    let text = wait_for_addr(&mut child, &addr_file, &log).await;
    assert!(text.ends_with('\n') && text.lines().count() == 1, "one line, newline-terminated: {text:?}");
    let addr: SocketAddr = text.trim_end().parse().expect("the file holds IP:PORT");
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 0, "the bound port, not the requested 0");

    // The address is the master's: a gRPC health check there is answered.
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
        .expect("the master answers a health check on the reported address");

    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["data", "master.addr", "master.log"], "no temporary file left behind");
    child.kill().await.expect("stop ragmesh-master");
}
