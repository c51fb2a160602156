//! The `ragmesh-agent` binary started with `--listen 127.0.0.1:0 --addr-file FILE` writes the
//! address it really bound into FILE, and that address answers gRPC: what supervisors such as
//! `ragmeshctl demo` rely on instead of picking a free port and racing other processes for it.

use std::path::Path;

#[tokio::test]
async fn listen_port_zero_writes_the_bound_address_to_the_addr_file() {
    let exe = Path::new(env!("CARGO_BIN_EXE_ragmesh-agent"));
    // Nothing listens on port 1: the agent retries its master in the background and serves regardless.
    let args = ["--insecure", "--name", "addr-file-test", "--master", "127.0.0.1:1"];
    ragmesh_test_util::daemon::assert_addr_file_reports_the_bound_address(exe, "agent", &args).await;
}
