//! Serving plumbing shared by both daemons, so master and agent start, wait and stop alike:
//! the tonic server builder (mTLS unless `--insecure`, HTTP/2 keepalives), waiting for state that
//! a previous process still holds, draining on shutdown, and the pieces of a thin `main`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ragmesh_tls::LoadedTls;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

/// How long shutdown waits for connections to drain before closing them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often state held by another process is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(200);
/// HTTP/2 ping interval: a dead peer is noticed even on an idle connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long an HTTP/2 ping may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A server builder: mTLS with required client certificates when `tls` is given, else plaintext
/// with a loud warning.
pub fn builder(tls: Option<&LoadedTls>, listen: SocketAddr) -> Result<Server, tonic::transport::Error> {
    let builder = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    match tls {
        Some(tls) => builder.tls_config(tls.server_config()),
        None => {
            tracing::warn!(
                %listen,
                "plaintext mode (--insecure): no TLS and no client authentication; anyone who can reach this port is trusted"
            );
            Ok(builder)
        }
    }
}

/// Opens state that another process may still hold (a previous master's store, a previous
/// agent's index): retries while `is_locked` says so, warning once; returns `None` when `stop`
/// fires first. Any other error is returned.
pub async fn open_when_free<T, E>(
    what: &str,
    stop: &CancellationToken,
    open: impl Fn() -> Result<T, E> + Clone + Send + 'static,
    is_locked: impl Fn(&E) -> bool,
) -> anyhow::Result<Option<T>>
where
    T: Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut warned = false;
    loop {
        let attempt = open.clone();
        match tokio::task::spawn_blocking(attempt).await? {
            Ok(value) => return Ok(Some(value)),
            Err(err) if is_locked(&err) => {
                if !warned {
                    tracing::warn!(error = %err, "waiting for the {what}; health reports NOT_SERVING until it is free");
                    warned = true;
                }
            }
            Err(err) => return Err(anyhow::Error::new(err).context(format!("cannot open the {what}"))),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(LOCK_RETRY) => {}
        }
    }
}

/// Waits for a serving task that was told to stop; closes its connections after
/// [`SHUTDOWN_GRACE`] if they do not drain by themselves.
pub async fn drain(mut server: JoinHandle<Result<(), tonic::transport::Error>>) -> anyhow::Result<()> {
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(joined) => Ok(joined??),
        Err(_) => {
            tracing::warn!(
                grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
                "connections did not drain in time; closing them"
            );
            server.abort();
            Ok(())
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The shared steps of a daemon's `main`.
pub mod daemon {
    use super::*;

    /// Exit status for an invalid configuration (`EX_USAGE`), after printing `problem`.
    pub fn config_error(program: &str, problem: impl std::fmt::Display) -> ExitCode {
        eprint!("{program}: {problem}");
        if !problem.to_string().ends_with('\n') {
            eprintln!();
        }
        ExitCode::from(64)
    }

    /// Binds the listen address, or explains why not.
    pub async fn bind(program: &str, listen: SocketAddr) -> Result<TcpListener, ExitCode> {
        TcpListener::bind(listen).await.map_err(|err| {
            eprintln!("{program}: cannot listen on {listen}: {err} (is another process using the port?)");
            ExitCode::FAILURE
        })
    }

    /// Cancels `token` on SIGINT or SIGTERM.
    pub fn stop_on_signal(token: CancellationToken) {
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stop signal received");
            token.cancel();
        });
    }

    /// The exit status of a daemon that ran to its end.
    pub fn exit(program: &str, outcome: anyhow::Result<()>) -> ExitCode {
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("{program}: {err:#}");
                ExitCode::FAILURE
            }
        }
    }
}
