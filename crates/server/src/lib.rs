//! Serving plumbing shared by both daemons, so master and agent start, wait and stop alike:
//! the tonic server builder (HTTP/2 keepalives, request-decoding errors in gRPC terms), serving over reloadable mTLS unless
//! `--insecure`, waiting for state that a previous process still holds, draining on shutdown,
//! and the pieces of a thin `main` (including reporting the bound address, `--addr-file`).

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ragmesh_tls::ReloadableTls;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{Bytes, Service};
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};
use tower::Layer;
use tower::layer::util::{Identity, Stack};

use ragmesh_stack::metrics::GrpcMetricsLayer;
use ragmesh_stack::wire_errors::WireErrorsLayer;

pub mod failpoint;

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS files are unusable.
    #[error("{0}")]
    Tls(#[from] ragmesh_tls::TlsError),
    /// A setting is unusable (a node name that contradicts its certificate, a zero rate limit...).
    #[error("{0}")]
    Config(String),
    /// The listener is unusable.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// How long shutdown waits for connections to drain before closing them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the daemons wait between looks at their TLS files for changes.
pub const TLS_RELOAD_INTERVAL: Duration = ragmesh_tls::DEFAULT_RELOAD_INTERVAL;
/// How often state held by another process is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(200);
/// HTTP/2 ping interval: a dead peer is noticed even on an idle connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long an HTTP/2 ping may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The flag both daemons set their message-size limit with, named when a request exceeds it.
pub const MAX_MESSAGE_BYTES_FLAG: &str = "--max-message-bytes";

/// The server [`builder`] returns: tonic's, with [`GrpcMetricsLayer`] outermost, then
/// [`WireErrorsLayer`].
pub type ServerBuilder = Server<Stack<WireErrorsLayer, Stack<GrpcMetricsLayer, Identity>>>;

/// A server builder with HTTP/2 keepalives. TLS is not configured here: [`serve`] terminates it,
/// so certificates can be reloaded while serving. Without `tls` (plaintext) it warns loudly.
///
/// Its first (outermost) layer puts tonic's answers to requests it cannot decode in gRPC terms
/// ([`ragmesh_stack::wire_errors`]): INVALID_ARGUMENT for a body that is not protobuf,
/// RESOURCE_EXHAUSTED naming [`MAX_MESSAGE_BYTES_FLAG`] for a message over the limit. Outermost,
/// because it must see every response, and the layers a daemon adds (authentication, rate
/// limits) never answer with the statuses it rewrites.
///
/// Outside it, `metrics` counts every call with the status the client gets (after the rewrite,
/// including the refusals of authentication and rate limits): `grpc_server_*` series.
pub fn builder(tls: Option<&ReloadableTls>, listen: SocketAddr, metrics: GrpcMetricsLayer) -> ServerBuilder {
    if tls.is_none() {
        tracing::warn!(
            %listen,
            "plaintext mode (--insecure): no TLS and no client authentication; anyone who can reach this port is trusted"
        );
    }
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(metrics)
        .layer(WireErrorsLayer::new(MAX_MESSAGE_BYTES_FLAG))
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
///
/// With `tls`, every connection is mutual TLS with the certificate `tls` holds when it is
/// accepted ([`ragmesh_tls::tls_incoming`]): a reload changes what new connections get and
/// leaves established ones, and their open streams, alone. Without it, plaintext TCP.
pub async fn serve<L, ResBody>(
    router: Router<L>,
    listener: TcpListener,
    tls: Option<ReloadableTls>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    L: Layer<Routes>,
    L::Service: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    <<L as Layer<Routes>>::Service as Service<Request<Body>>>::Future: Send,
    <<L as Layer<Routes>>::Service as Service<Request<Body>>>::Error: Into<tonic::codegen::StdError> + Send,
    ResBody: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    match tls {
        Some(tls) => router.serve_with_incoming_shutdown(ragmesh_tls::tls_incoming(listener, tls), shutdown).await,
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    }
}

/// Keeps `tls` current while the daemon runs ([`ragmesh_tls::spawn_reloader`]: file changes and
/// SIGHUP) until `shutdown`. In plaintext mode SIGHUP is only logged, so that a reload request
/// (`systemctl reload`) never ends the process by the signal's default action.
pub fn watch_tls(tls: Option<&ReloadableTls>, shutdown: &CancellationToken) {
    // Both tasks end with the shutdown token and hold nothing to drain.
    match tls {
        Some(tls) => {
            ragmesh_tls::spawn_reloader(tls.clone(), TLS_RELOAD_INTERVAL, shutdown.clone());
        }
        None => {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut hangup) = signal(SignalKind::hangup()) else { return };
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            received = hangup.recv() => {
                                if received.is_none() {
                                    return;
                                }
                                tracing::info!("SIGHUP ignored: plaintext mode (--insecure) has no certificates to reload");
                            }
                        }
                    }
                });
            }
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

/// grpc.health.v1 service name that reports this process's own certificate.
pub const CERTIFICATE_HEALTH: &str = "ragmesh.v1.Certificate";
/// How often the certificate health is re-evaluated (it also follows every reload).
const CERTIFICATE_CHECK: Duration = Duration::from_secs(60);

/// Reports the process's certificate under the health service name [`CERTIFICATE_HEALTH`]:
/// SERVING while it is valid for more than [`ragmesh_tls::EXPIRY_WARNING`], NOT_SERVING when it
/// expires within that window or has expired, so an ordinary gRPC health probe can alert before
/// the mesh breaks. The daemon's own services keep their status: an expiring certificate must
/// not take a node out of search by itself. Without TLS nothing is reported.
pub fn report_certificate_health(
    tls: Option<&ReloadableTls>,
    health: tonic_health::server::HealthReporter,
    shutdown: &CancellationToken,
) {
    let Some(tls) = tls.cloned() else { return };
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut reloads = tls.subscribe();
        let mut tick = tokio::time::interval(CERTIFICATE_CHECK);
        loop {
            let expiry = tls.current().expiry();
            let status = match expiry {
                ragmesh_tls::Expiry::Valid { .. } => tonic_health::ServingStatus::Serving,
                ragmesh_tls::Expiry::ExpiresSoon { .. } | ragmesh_tls::Expiry::Expired { .. } => {
                    tonic_health::ServingStatus::NotServing
                }
            };
            health.set_service_status(CERTIFICATE_HEALTH, status).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                changed = reloads.changed() => if changed.is_err() { return },
            }
        }
    });
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

    pub use ragmesh_malloc::Tuning;

    /// A daemon's whole `main` around its `run`: tunes the allocator before any thread starts
    /// (see ragmesh-malloc), then runs `run` on a multi-thread runtime.
    pub fn main<F, Fut>(program: &str, run: F) -> ExitCode
    where
        F: FnOnce(Tuning) -> Fut,
        Fut: std::future::Future<Output = ExitCode>,
    {
        let tuning = ragmesh_malloc::tune();
        match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(run(tuning)),
            Err(err) => exit(program, Err(anyhow::anyhow!("cannot start the async runtime: {err}"))),
        }
    }

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

    /// Reports the address the daemon serves on: with `--addr-file`, writes `addr` there
    /// ([`write_addr_file`]); without, does nothing. On failure it cancels `shutdown`, so the
    /// daemon stops rather than serve where no supervisor can find it, and returns the error to
    /// report once it has stopped.
    pub fn report_addr(
        addr_file: Option<&std::path::Path>,
        addr: SocketAddr,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        report("addr-file", addr_file, addr, shutdown)
    }

    /// [`report_addr`] for the metrics listener and `--metrics-addr-file`; nothing without a
    /// metrics listener.
    pub fn report_metrics_addr(
        addr_file: Option<&std::path::Path>,
        addr: Option<SocketAddr>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let Some(addr) = addr else { return Ok(()) };
        report("metrics-addr-file", addr_file, addr, shutdown)
    }

    fn report(
        flag: &str,
        addr_file: Option<&std::path::Path>,
        addr: SocketAddr,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let Some(path) = addr_file else { return Ok(()) };
        match write_addr_file(path, addr) {
            Ok(()) => {
                tracing::info!(%addr, path = %path.display(), flag, "bound address written");
                Ok(())
            }
            Err(err) => {
                shutdown.cancel();
                Err(anyhow::anyhow!("cannot write --{flag} {}: {err}", path.display()))
            }
        }
    }

    /// Writes `addr` and a newline (`127.0.0.1:40123\n`) to `path`, atomically: into a temporary
    /// file in the same directory, then renamed over `path`. A reader sees no file, the previous
    /// one, or the whole address, never a partial line.
    pub fn write_addr_file(path: &std::path::Path, addr: SocketAddr) -> std::io::Result<()> {
        let Some(name) = path.file_name() else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"));
        };
        // Hidden and named after this process, so two daemons never share a temporary file.
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.tmp", std::process::id()));
        let temp = path.with_file_name(temp_name);
        let written = std::fs::write(&temp, format!("{addr}\n")).and_then(|()| std::fs::rename(&temp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
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

#[cfg(test)]
mod tests {
    use super::daemon::{report_addr, write_addr_file};
    use std::net::SocketAddr;
    use tokio_util::sync::CancellationToken;

    fn names_in(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn addr_file_holds_the_address_and_a_newline_and_replaces_an_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.addr");
        std::fs::write(&path, "127.0.0.1:1\n").expect("stale file");
        let addr: SocketAddr = "127.0.0.1:40123".parse().expect("addr");
        write_addr_file(&path, addr).expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "127.0.0.1:40123\n");
        assert_eq!(names_in(dir.path()), ["master.addr"], "no temporary file left behind");

        let v6: SocketAddr = "[::1]:7400".parse().expect("addr");
        write_addr_file(&path, v6).expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "[::1]:7400\n");
    }

    #[test]
    fn an_unwritable_addr_file_stops_the_daemon_and_says_which_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gone").join("agent.addr");
        let shutdown = CancellationToken::new();
        let addr: SocketAddr = "127.0.0.1:40123".parse().expect("addr");
        let err = report_addr(Some(&path), addr, &shutdown).expect_err("no such directory");
        assert!(err.to_string().starts_with(&format!("cannot write --addr-file {}: ", path.display())), "{err}");
        assert!(shutdown.is_cancelled(), "a daemon nobody can find must not keep serving");
        assert_eq!(names_in(dir.path()), Vec::<String>::new(), "no temporary file left behind");

        let untouched = CancellationToken::new();
        report_addr(None, addr, &untouched).expect("nothing to write");
        assert!(!untouched.is_cancelled());
    }
}
