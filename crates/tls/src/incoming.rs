//! TLS termination for tonic servers: accepts TCP connections, runs each TLS handshake in its
//! own task with the server config current at accept time, and yields only the connections
//! whose handshake succeeded.
//!
//! tonic's own `Server::tls_config` fixes its certificate at startup. Handing tonic a stream of
//! finished `TlsStream`s instead lets [`crate::ReloadableTls`] swap certificates under a running
//! server: each new connection gets the certificate of the moment, and established connections
//! (with their open gRPC streams) are never touched. tonic still fills `Request::peer_certs()`
//! from these streams, so [`crate::peer_identity_of`] works as before.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::reload::ReloadableTls;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait in the listen backlog, so a
/// flood of slow clients costs bounded memory.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 1024;
/// How long a refused client gets to read our alert and hang up; see [`close_gently`].
const LINGER: Duration = Duration::from_secs(1);
/// Pause after an accept error that is not about one connection (out of file descriptors),
/// instead of spinning on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connections accepted on `listener` whose mutual TLS handshake, with the server config
/// `tls` holds at accept time, succeeded; for tonic's `serve_with_incoming_shutdown`.
///
/// Failed handshakes (no client certificate, an unknown CA, plaintext, a timeout) are logged
/// with the peer's address and dropped; they never end the stream, so a bad client cannot
/// stop the server. The stream never yields an error. Dropping it (tonic does on shutdown)
/// closes the listener and abandons handshakes in progress.
pub fn tls_incoming(
    listener: TcpListener,
    tls: ReloadableTls,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> + Send + 'static {
    let acceptor = Acceptor { listener, tls, handshakes: JoinSet::new() };
    futures::stream::unfold(acceptor, |mut acceptor| async move {
        let stream = acceptor.next().await;
        Some((Ok(stream), acceptor))
    })
}

/// The accept loop's state; owned by the stream.
struct Acceptor {
    listener: TcpListener,
    tls: ReloadableTls,
    handshakes: JoinSet<Option<TlsStream<TcpStream>>>,
}

impl Acceptor {
    /// The next connection with a finished handshake.
    async fn next(&mut self) -> TlsStream<TcpStream> {
        loop {
            let room_for_more = self.handshakes.len() < MAX_CONCURRENT_HANDSHAKES;
            tokio::select! {
                accepted = self.listener.accept(), if room_for_more => match accepted {
                    Ok((tcp, peer)) => self.start_handshake(tcp, peer),
                    Err(err) => accept_failed(err).await,
                },
                // join_next() is None while no handshake runs, which disables this branch.
                Some(finished) = self.handshakes.join_next() => match finished {
                    Ok(Some(stream)) => return stream,
                    Ok(None) => {} // failed, and logged by its task
                    Err(err) => tracing::warn!(error = %err, "tls handshake task failed"),
                },
            }
        }
    }

    fn start_handshake(&mut self, tcp: TcpStream, peer: SocketAddr) {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(net.peer.addr = %peer, error = %err, "cannot set TCP_NODELAY");
        }
        // The config of this moment: a reload after this point applies to the next connection.
        let acceptor = TlsAcceptor::from(self.tls.server_config());
        self.handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp).into_fallible()).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err((err, tcp))) => {
                    log_handshake_failure(peer, &err);
                    close_gently(tcp).await;
                    None
                }
                Err(_elapsed) => {
                    tracing::debug!(
                        net.peer.addr = %peer,
                        timeout_ms = HANDSHAKE_TIMEOUT.as_millis() as u64,
                        "tls handshake timed out"
                    );
                    None
                }
            }
        });
    }
}

/// A refused certificate is worth an info line (someone is knocking with the wrong key); the
/// rest (port scanners, plaintext clients, dropped connections) is debug noise.
fn log_handshake_failure(peer: SocketAddr, err: &io::Error) {
    let rustls_error = err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let about_certificates = matches!(
        rustls_error,
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::AlertReceived(_)
        )
    );
    if about_certificates {
        tracing::info!(net.peer.addr = %peer, error = %err, "tls handshake refused");
    } else {
        tracing::debug!(net.peer.addr = %peer, error = %err, "tls handshake failed");
    }
}

/// Closes a connection whose handshake failed so that the client can read our alert (say,
/// "certificate required"): a TLS 1.3 client sends its first request right after its
/// certificate, and closing a socket with that request unread makes the kernel send RST, which
/// can destroy the alert before the client reads it ("broken pipe" instead of a reason). So:
/// FIN after the alert, then read and discard until the client hangs up, for at most [`LINGER`].
async fn close_gently(mut tcp: TcpStream) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut discard = [0u8; 4096];
    let drain = async {
        loop {
            match tcp.read(&mut discard).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Errors about one connection (reset before we got to it) need nothing; anything else
/// (out of file descriptors) would repeat at once, so pause before accepting again.
async fn accept_failed(err: io::Error) {
    let one_connection = matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    );
    if one_connection {
        tracing::debug!(error = %err, "accept failed for one connection");
        return;
    }
    tracing::warn!(error = %err, pause_ms = ACCEPT_ERROR_PAUSE.as_millis() as u64, "accept failed; pausing");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}
