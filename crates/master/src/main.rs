//! `ragmesh-master`: parse and validate config (exit 64 on any problem, before binding
//! anything), bind, serve (reporting the bound address with --addr-file) until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser as _;
use ragmesh_config::MasterArgs;
use ragmesh_server::daemon;

const PROGRAM: &str = "ragmesh-master";

fn main() -> ExitCode {
    daemon::main(PROGRAM, run)
}

async fn run(tuning: daemon::Tuning) -> ExitCode {
    let (config, process) = match MasterArgs::parse().resolve_daemon() {
        Ok(resolved) => resolved,
        Err(errors) => return daemon::config_error(PROGRAM, errors),
    };
    let tls = match ragmesh_master::load_tls(&config) {
        Ok(tls) => tls,
        Err(err) => return daemon::config_error(PROGRAM, err),
    };
    // service.instance.id: the name in the master's certificate.
    let instance_id = Some(tls.map_or_else(|| "master".to_owned(), |tls| tls.identity_name()));
    let traces = ragmesh_telemetry::TraceSettings {
        otlp_endpoint: process.trace.otlp_endpoint.clone(),
        sample_ratio: process.trace.sample_ratio,
        service_name: PROGRAM,
        instance_id,
    };
    let telemetry = ragmesh_telemetry::init(&config.log, Some(&traces));
    tracing::debug!(malloc.mmap_threshold = ?tuning.mmap_threshold, malloc.arena_max = ?tuning.arena_max, "allocator tuned");
    ragmesh_server::failpoint::warn_if_armed(PROGRAM);
    let listener = match daemon::bind(PROGRAM, config.listen).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let metrics = match process.metrics_listen {
        Some(addr) => match daemon::bind(PROGRAM, addr).await {
            Ok(listener) => Some(listener),
            Err(code) => return code,
        },
        None => None,
    };
    let handle = match ragmesh_master::start_with_metrics(config, listener, metrics).await {
        Ok(handle) => handle,
        Err(err) => return daemon::exit(PROGRAM, Err(err.into())),
    };
    daemon::stop_on_signal(handle.shutdown_token());
    // The metrics address first: a script that waits for --addr-file finds both in place.
    let reported = daemon::report_metrics_addr(
        process.metrics_addr_file.as_deref(),
        handle.metrics_addr(),
        &handle.shutdown_token(),
    )
    .and_then(|()| daemon::report_addr(process.addr_file.as_deref(), handle.local_addr(), &handle.shutdown_token()));
    let outcome = handle.wait().await;
    telemetry.shutdown().await;
    daemon::exit(PROGRAM, reported.and(outcome))
}
