//! `ragmesh-agent`: parse and validate config (exit 64 on any problem), bind, run until
//! SIGINT/SIGTERM.

use clap::Parser as _;
use ragmesh_config::{AgentArgs, EXIT_CONFIG};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match AgentArgs::parse().resolve() {
        Ok(config) => config,
        Err(errors) => {
            eprint!("ragmesh-agent: {errors}");
            return std::process::ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    ragmesh_telemetry::init(&config.log);
    // Validate TLS material and the name before binding anything.
    match ragmesh_agent::identity(&config) {
        Ok((name, Some(tls))) if !tls.identity().is(&name) => {
            eprintln!(
                "ragmesh-agent: --name {name} does not match the certificate, which names {:?}: drop --name or issue a certificate for {name}",
                tls.identity_name()
            );
            return std::process::ExitCode::from(EXIT_CONFIG as u8);
        }
        Ok(_) => {}
        Err(err) => {
            eprintln!("ragmesh-agent: {err}");
            return std::process::ExitCode::from(EXIT_CONFIG as u8);
        }
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("ragmesh-agent: cannot listen on {}: {err} (is another process using the port?)", config.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let handle = match ragmesh_agent::start(config, listener).await {
        Ok(handle) => handle,
        Err(err) => {
            eprintln!("ragmesh-agent: {err}");
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
            eprintln!("ragmesh-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
