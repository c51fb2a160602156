//! `ragmesh-master`: parse and validate config (exit 64 on any problem), bind, run until
//! SIGINT/SIGTERM.

use clap::Parser as _;
use ragmesh_config::{EXIT_CONFIG, MasterArgs};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match MasterArgs::parse().resolve() {
        Ok(config) => config,
        Err(errors) => {
            eprint!("ragmesh-master: {errors}");
            return std::process::ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    ragmesh_telemetry::init(&config.log);
    if let Err(err) = ragmesh_master::load_tls(&config) {
        eprintln!("ragmesh-master: {err}");
        return std::process::ExitCode::from(EXIT_CONFIG as u8);
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("ragmesh-master: cannot listen on {}: {err} (is another process using the port?)", config.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let handle = match ragmesh_master::start(config, listener).await {
        Ok(handle) => handle,
        Err(err) => {
            eprintln!("ragmesh-master: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let token = handle.shutdown_token();
    tokio::spawn(async move {
        ragmesh_telemetry::shutdown_signal().await;
        token.cancel();
    });
    match handle.wait().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ragmesh-master: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
