//! The real grpcurl binary (1.8.6, which speaks reflection v1alpha) inspects master and agent
//! over mTLS: lists services, describes Search, checks grpc.health.v1 and runs a search.
//! `scripts/fetch-grpcurl` installs it at tools/grpcurl (or set RAGMESH_GRPCURL); without it
//! the test is skipped, except under CI where a missing grpcurl is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use ragmesh_e2e::{Mesh, docs_for, trace_init};
use ragmesh_tls::TlsFiles;

fn grpcurl() -> Option<PathBuf> {
    let path = std::env::var_os("RAGMESH_GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/grpcurl"));
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "grpcurl not found at {}: CI must install it with scripts/fetch-grpcurl",
        path.display()
    );
    println!("skipped: grpcurl not found at {} (run scripts/fetch-grpcurl)", path.display());
    None
}

/// Runs `grpcurl <mTLS flags> <flags before "@"> addr <args after "@">` (all args go after the
/// address when there is no "@"); returns (success, stdout+stderr).
fn run(grpcurl: &Path, tls: Option<&TlsFiles>, addr: &str, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(grpcurl);
    if let Some(tls) = tls {
        command.arg("-cacert").arg(&tls.ca).arg("-cert").arg(&tls.cert).arg("-key").arg(&tls.key);
    }
    let (flags, verb) = match args.iter().position(|a| *a == "@") {
        Some(at) => (&args[..at], &args[at + 1..]),
        None => (&args[..0], args),
    };
    command.args(flags).arg(addr).args(verb);
    let output = command.output().expect("grpcurl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_checks_and_searches_over_mtls() {
    trace_init();
    let Some(grpcurl) = grpcurl() else { return };
    let mesh = Mesh::builder().agents(2).start().await;
    for i in 0..2 {
        mesh.ingest(i, docs_for(i, 3)).await;
    }
    let tls = mesh.client_tls();
    let master = mesh.master_addr().to_string();
    let bin = grpcurl.clone();
    let tls2 = tls.clone();
    let agent = mesh.agent_addr(0).to_string();

    let results = tokio::task::spawn_blocking(move || {
        let list = run(&bin, Some(&tls2), &master, &["list"]);
        let describe = run(&bin, Some(&tls2), &master, &["describe", "ragmesh.v1.MasterService.Search"]);
        let health = run(&bin, Some(&tls2), &master, &["grpc.health.v1.Health/Check"]);
        let service_health = run(
            &bin,
            Some(&tls2),
            &master,
            &["-d", r#"{"service":"ragmesh.v1.MasterService"}"#, "@", "grpc.health.v1.Health/Check"],
        );
        let search = run(
            &bin,
            Some(&tls2),
            &master,
            &["-d", r#"{"query":"mesh","limit":10}"#, "@", "ragmesh.v1.MasterService/Search"],
        );
        let agent_list = run(&bin, Some(&tls2), &agent, &["list"]);
        let agent_health = run(&bin, Some(&tls2), &agent, &["grpc.health.v1.Health/Check"]);
        let ca = tls2.ca.to_string_lossy().into_owned();
        // gRPC-go may keep redialling a refused connection until its connect timeout: bound it.
        let no_cert = run(&bin, None, &master, &["-connect-timeout", "2", "-cacert", &ca, "@", "list"]);
        (list, describe, health, service_health, search, agent_list, agent_health, no_cert)
    })
    .await
    .expect("grpcurl runs");
    let (list, describe, health, service_health, search, agent_list, agent_health, no_cert) = results;

    assert!(list.0, "{}", list.1);
    for service in [
        "ragmesh.v1.MasterService",
        "ragmesh.v1.MembershipService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(list.1.contains(service), "{service} missing from {}", list.1);
    }
    assert!(
        describe.0
            && describe.1.contains("rpc Search ( .ragmesh.v1.SearchRequest ) returns ( .ragmesh.v1.SearchResponse )"),
        "{}",
        describe.1
    );
    assert!(health.0 && health.1.contains("\"SERVING\""), "{}", health.1);
    assert!(service_health.0 && service_health.1.contains("\"SERVING\""), "{}", service_health.1);
    assert!(search.0, "{}", search.1);
    let response: serde_json::Value = serde_json::from_str(&search.1).expect("grpcurl prints JSON");
    assert_eq!(response["hits"].as_array().map(Vec::len), Some(6), "{}", search.1);
    let nodes = response["nodes"].as_array().expect("per-node statuses");
    assert_eq!(nodes.len(), 2);
    assert!(nodes.iter().all(|n| n["status"] == "OUTCOME_STATUS_OK"), "{}", search.1);
    assert!(!list.1.contains("ragmesh.v1.AgentService"), "the master lists only what it serves: {}", list.1);
    assert!(agent_list.0 && agent_list.1.contains("ragmesh.v1.AgentService"), "{}", agent_list.1);
    assert!(!agent_list.1.contains("MasterService"), "{}", agent_list.1);
    assert!(agent_health.0 && agent_health.1.contains("\"SERVING\""), "{}", agent_health.1);
    assert!(!no_cert.0, "a client without a certificate must be refused: {}", no_cert.1);
    println!("grpcurl without a client certificate: {}", no_cert.1.trim());
    mesh.shutdown().await;
}
