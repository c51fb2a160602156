//! Runs `ragmeshctl demo --agents 2 --no-wait` (and `--agents 4 --replicas 2`) against the real daemons when they have been
//! built next to `ragmeshctl` (`cargo build --bins`); cargo builds only this package's binary
//! for its tests, so the test is skipped, saying so, when they are missing.

use std::path::Path;
use std::process::Command;

#[test]
fn demo_with_replicas_kills_a_replica_and_gets_the_same_answer() {
    let exe = Path::new(env!("CARGO_BIN_EXE_ragmeshctl"));
    let bin_dir = exe.parent().expect("the binary lives in a directory");
    if ["ragmesh-master", "ragmesh-agent"].iter().any(|d| !bin_dir.join(d).is_file()) {
        println!("skipped: build the daemons first (cargo build --bins)");
        return;
    }
    let output =
        Command::new(exe).args(["demo", "--agents", "4", "--replicas", "2", "--no-wait"]).output().expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("shard-1: agent-1, agent-2; shard-2: agent-3, agent-4"), "{stdout}");
    assert!(stdout.contains("Killing agent-2 (kill -9)"), "{stdout}");
    assert!(stdout.contains("Same hits, every shard group answered"), "{stdout}");
    // Both searches: every group answered, by one replica each.
    let answered = stdout.lines().filter(|l| l.starts_with("shard-") && l.split_whitespace().nth(1) == Some("ok"));
    assert_eq!(answered.count(), 4, "two groups, two searches:\n{stdout}");
    assert!(!stdout.contains("incomplete"), "{stdout}");
}

#[test]
fn demo_starts_a_mesh_searches_every_agent_and_stops_cleanly() {
    let exe = Path::new(env!("CARGO_BIN_EXE_ragmeshctl"));
    let bin_dir = exe.parent().expect("the binary lives in a directory");
    let daemons = [bin_dir.join("ragmesh-master"), bin_dir.join("ragmesh-agent")];
    if daemons.iter().any(|d| !d.is_file()) {
        println!("skipped: build the daemons first (cargo build --bins)");
        return;
    }

    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("demo");
    let output = Command::new(exe)
        .args(["demo", "--agents", "2", "--no-wait", "--dir"])
        .arg(&dir)
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");

    // One "ok" line per agent in the per-node status table.
    for agent in ["agent-1", "agent-2"] {
        let ok = stdout.lines().any(|line| line.split_whitespace().take(2).eq([agent, "ok"]));
        assert!(ok, "{agent} did not answer ok:\n{stdout}");
    }
    assert!(stdout.contains("from 2 of 2 shard groups"), "{stdout}");
    assert!(!stdout.contains("incomplete"), "{stdout}");

    let master_addr = std::fs::read_to_string(dir.join("master.addr")).expect("master.addr");
    let master_addr = master_addr.trim();
    assert!(master_addr.starts_with("127.0.0.1:"), "{master_addr}");
    assert!(stdout.contains(&format!("{master_addr} ragmesh.v1.MasterService/Search")), "grpcurl hint:\n{stdout}");
    for file in ["ca.pem", "client.pem", "client.key", "master.pem", "agent-1.pem", "agent-2.key"] {
        assert!(dir.join("certs").join(file).is_file(), "certs/{file} missing");
    }

    for name in ["master", "agent-1", "agent-2"] {
        let pid = std::fs::read_to_string(dir.join(format!("{name}.pid"))).expect("pid file");
        let pid: u32 = pid.trim().parse().expect("pid file holds a pid");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) is still running after the demo exited"
        );
        assert!(dir.join("logs").join(format!("{name}.log")).is_file(), "{name}.log missing");
    }
}
