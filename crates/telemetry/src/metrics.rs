//! The `/metrics` endpoint of both daemons: a [`Registry`] the daemon creates in its `start`
//! and fills, encoded per scrape and served by a small hyper 1 HTTP/1.1 server on a listener
//! the caller binds (`--metrics-listen`), stopped by the daemon's shutdown token.
//!
//! The format follows the scraper's `Accept` header, as Prometheus's own exporters do:
//! OpenMetrics 1.0 (prometheus-client's encoding) when asked for, else the Prometheus text
//! format 0.0.4 ([`to_prometheus_text`]), which `curl` users and `promtool check metrics` read.
//!
//! No global statics: each daemon owns its registry, so two daemons in one test process never
//! share a counter.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use prometheus_client::registry::Registry;

/// The content type of OpenMetrics text, as prometheus-client encodes it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The path the metrics are served on.
pub const PATH: &str = "/metrics";

/// Encodes `registry` as OpenMetrics text (ends with `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail; a collector that fails leaves what it wrote so far.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(%error, "metrics encoding failed");
    }
    text
}

/// Serves `registry` on `listener` (`GET /metrics`; anything else is 404, or 405 for another
/// method on `/metrics`) until `shutdown` is cancelled; open connections end with it too (a
/// scrape is one short request, nothing to drain). The caller binds the listener, so tests use
/// `127.0.0.1:0` and read its address.
pub fn serve(listener: TcpListener, registry: Arc<Registry>, shutdown: CancellationToken) -> JoinHandle<()> {
    let listen = listener.local_addr().map(|addr| addr.to_string()).unwrap_or_default();
    tokio::spawn(async move {
        tracing::info!(%listen, path = PATH, "metrics serving");
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, _peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Per-connection errors (reset before accept, out of descriptors): keep serving.
                    tracing::debug!(%error, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(respond(&request, &registry)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    served = connection => if let Err(error) = served {
                        tracing::debug!(%error, "metrics connection ended with an error");
                    },
                }
            });
        }
    })
}

/// Rewrites OpenMetrics text (as prometheus-client writes it) in the Prometheus text format
/// 0.0.4: a counter family is named after its samples (`x_total`, where OpenMetrics names it
/// `x`), `unknown` is `untyped`, and `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut counters = std::collections::HashSet::new();
    for line in &lines {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name);
        }
    }
    for line in lines {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((prefix, name, text))
        });
        match descriptor {
            Some((prefix, name, text)) => {
                let text = if prefix == "# TYPE " && text == "unknown" { "untyped" } else { text };
                let suffix = if counters.contains(name) { "_total" } else { "" };
                out.push_str(&format!("{prefix}{name}{suffix} {text}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Whether the scraper asked for OpenMetrics (Prometheus does; curl and promtool do not).
fn wants_openmetrics(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .any(|value| value.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")))
}

fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, PATH) if wants_openmetrics(request) => {
            (StatusCode::OK, OPENMETRICS, encode(registry))
        }
        (&Method::GET | &Method::HEAD, PATH) => {
            (StatusCode::OK, PROMETHEUS_TEXT, to_prometheus_text(&encode(registry)))
        }
        (_, PATH) => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "text/plain", format!("metrics are served on {PATH}\n")),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn get(addr: std::net::SocketAddr, path: &str, accept: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\naccept: {accept}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read");
        text
    }

    #[tokio::test]
    async fn serves_the_registry_on_metrics_and_stops_with_the_token() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("ragmesh_test_things", "Things counted", counter.clone());
        counter.inc_by(3);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = serve(listener, Arc::new(registry), shutdown.clone());

        let text = get(addr, "/metrics", "application/openmetrics-text;version=1.0.0,*/*;q=0.1").await;
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains(OPENMETRICS), "{text}");
        assert!(text.contains("# TYPE ragmesh_test_things counter\nragmesh_test_things_total 3"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        let text = get(addr, "/metrics", "*/*").await;
        assert!(text.contains(PROMETHEUS_TEXT), "{text}");
        assert!(text.contains("# TYPE ragmesh_test_things_total counter\nragmesh_test_things_total 3"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let missing = get(addr, "/", "*/*").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), server).await.expect("stops").expect("no panic");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }
}
