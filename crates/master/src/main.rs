//! `ragmesh-master`: parse and validate config (exit 64 on any problem, before binding
//! anything), bind, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser as _;
use ragmesh_config::MasterArgs;
use ragmesh_server::daemon;

const PROGRAM: &str = "ragmesh-master";

#[tokio::main]
async fn main() -> ExitCode {
    let config = match MasterArgs::parse().resolve() {
        Ok(config) => config,
        Err(errors) => return daemon::config_error(PROGRAM, errors),
    };
    ragmesh_telemetry::init(&config.log);
    if let Err(err) = ragmesh_master::load_tls(&config) {
        return daemon::config_error(PROGRAM, err);
    }
    let listener = match daemon::bind(PROGRAM, config.listen).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let handle = match ragmesh_master::start(config, listener).await {
        Ok(handle) => handle,
        Err(err) => return daemon::exit(PROGRAM, Err(err.into())),
    };
    daemon::stop_on_signal(handle.shutdown_token());
    daemon::exit(PROGRAM, handle.wait().await)
}
