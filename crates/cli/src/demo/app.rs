//! The demo's stand-in for the application each agent runs beside: a tiny HTTP server on
//! loopback, one per agent, that the agents' declared `http` actions call (see
//! [`super::actions`]). It keeps a little state so the actions have visible effects: cache
//! regions with entries, a maintenance switch, and a release that is staged (prepare), made live
//! (commit) or dropped (abort) — refused while in maintenance, which is how the demo shows a
//! transaction aborting because one node says no.
//!
//! [`App::handle`] is the whole behaviour, pure; [`serve`] is the HTTP/1.1 shell around it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// Largest request body the app reads.
const MAX_BODY: usize = 64 * 1024;
/// The cache regions the app has, and how many entries each starts with.
pub const REGIONS: [&str; 3] = ["sessions", "search", "templates"];

/// One application's state.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    name: String,
    cache: BTreeMap<String, u64>,
    maintenance: bool,
    live: String,
    staged: Option<String>,
}

impl App {
    /// A fresh app named `name` (its agent's name), release `v1.0.0` live.
    pub fn new(name: &str) -> Self {
        let cache = REGIONS.iter().zip([120_u64, 48, 9]).map(|(r, n)| ((*r).to_owned(), n)).collect();
        App { name: name.to_owned(), cache, maintenance: false, live: "v1.0.0".to_owned(), staged: None }
    }

    /// Answers one request: status and JSON body.
    pub fn handle(&mut self, method: &Method, path: &str, body: &[u8]) -> (StatusCode, Value) {
        let args: Value = if body.is_empty() { json!({}) } else { serde_json::from_slice(body).unwrap_or(Value::Null) };
        if args.is_null() {
            return (StatusCode::BAD_REQUEST, json!({"error": "the body is not JSON"}));
        }
        match (method, path) {
            (&Method::GET, "/internal/health") => self.health(),
            (&Method::POST, "/internal/maintenance") => match args.get("on").and_then(Value::as_bool) {
                Some(on) => {
                    self.maintenance = on;
                    (StatusCode::OK, json!({"app": self.name, "maintenance": on}))
                }
                None => (StatusCode::BAD_REQUEST, json!({"error": "body must be {\"on\": true|false}"})),
            },
            (&Method::POST, "/internal/release/prepare") => self.prepare(&args),
            (&Method::POST, "/internal/release/commit") => self.commit(&args),
            (&Method::POST, "/internal/release/abort") => {
                let dropped = self.staged.take();
                (StatusCode::OK, json!({"app": self.name, "dropped": dropped, "live": self.live}))
            }
            (&Method::POST, path) if path.starts_with("/internal/clear-cache/") => {
                let region = &path["/internal/clear-cache/".len()..];
                match self.cache.get_mut(region) {
                    Some(entries) => {
                        let cleared = std::mem::take(entries);
                        (StatusCode::OK, json!({"app": self.name, "region": region, "cleared": cleared}))
                    }
                    None => (StatusCode::NOT_FOUND, json!({"error": format!("no cache region {region:?}")})),
                }
            }
            _ => (StatusCode::NOT_FOUND, json!({"error": format!("no route {method} {path}")})),
        }
    }

    fn health(&self) -> (StatusCode, Value) {
        if self.maintenance {
            (StatusCode::SERVICE_UNAVAILABLE, json!({"app": self.name, "status": "maintenance", "live": self.live}))
        } else {
            (StatusCode::OK, json!({"app": self.name, "status": "ok", "live": self.live}))
        }
    }

    fn prepare(&mut self, args: &Value) -> (StatusCode, Value) {
        let Some(version) = args.get("version").and_then(Value::as_str) else {
            return (StatusCode::BAD_REQUEST, json!({"error": "body must name a version"}));
        };
        if self.maintenance {
            return (
                StatusCode::CONFLICT,
                json!({"app": self.name, "error": format!("in maintenance: will not stage {version}")}),
            );
        }
        self.staged = Some(version.to_owned());
        (StatusCode::OK, json!({"app": self.name, "staged": version, "live": self.live}))
    }

    fn commit(&mut self, args: &Value) -> (StatusCode, Value) {
        let version = args.get("version").and_then(Value::as_str);
        match (self.staged.take(), version) {
            (Some(staged), Some(version)) if staged == version => {
                self.live = staged;
                (StatusCode::OK, json!({"app": self.name, "live": self.live}))
            }
            // Already live: a repeated commit (after a lost answer) changes nothing.
            (None, Some(version)) if self.live == version => {
                (StatusCode::OK, json!({"app": self.name, "live": self.live}))
            }
            (staged, _) => {
                self.staged = staged;
                (StatusCode::CONFLICT, json!({"app": self.name, "error": "nothing staged for this version"}))
            }
        }
    }
}

/// Serves `app` on `listener` until the task is dropped or aborted.
pub async fn serve(listener: tokio::net::TcpListener, app: App) {
    let app = Arc::new(Mutex::new(app));
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| respond(app.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn respond(
    app: Arc<Mutex<App>>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let (status, value) = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            let body = collected.to_bytes();
            app.lock().unwrap_or_else(PoisonError::into_inner).handle(&parts.method, parts.uri.path(), &body)
        }
        Err(_) => (StatusCode::PAYLOAD_TOO_LARGE, json!({"error": "body too large"})),
    };
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Starts one app per name on loopback; returns each one's address (the tasks end with the
/// runtime, which is when the demo ends).
pub async fn start(names: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::with_capacity(names.len());
    for name in names {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|err| anyhow::anyhow!("cannot start the demo app of {name} on 127.0.0.1: {err}"))?;
        addrs.push(listener.local_addr()?);
        tokio::spawn(serve(listener, App::new(name)));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(app: &mut App, path: &str, body: Value) -> (StatusCode, Value) {
        app.handle(&Method::POST, path, body.to_string().as_bytes())
    }

    #[test]
    fn a_release_is_staged_then_made_live_or_dropped_and_refused_in_maintenance() {
        let mut app = App::new("agent-1");
        assert_eq!(post(&mut app, "/internal/release/prepare", json!({"version": "v2.0.0"})).0, StatusCode::OK);
        assert_eq!(post(&mut app, "/internal/release/abort", json!({"version": "v2.0.0"})).0, StatusCode::OK);
        assert_eq!(app.live, "v1.0.0");
        assert_eq!(app.staged, None);

        post(&mut app, "/internal/release/prepare", json!({"version": "v2.0.0"}));
        let (status, body) = post(&mut app, "/internal/release/commit", json!({"version": "v2.0.0"}));
        assert_eq!((status, body["live"].as_str()), (StatusCode::OK, Some("v2.0.0")));
        // A repeated commit is harmless; a commit of something never staged is refused.
        assert_eq!(post(&mut app, "/internal/release/commit", json!({"version": "v2.0.0"})).0, StatusCode::OK);
        assert_eq!(post(&mut app, "/internal/release/commit", json!({"version": "v3.0.0"})).0, StatusCode::CONFLICT);

        post(&mut app, "/internal/maintenance", json!({"on": true}));
        let (status, body) = post(&mut app, "/internal/release/prepare", json!({"version": "v3.0.0"}));
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(body["error"].as_str().is_some_and(|e| e.contains("maintenance")), "{body}");
        assert_eq!(app.handle(&Method::GET, "/internal/health", b"").0, StatusCode::SERVICE_UNAVAILABLE);
        post(&mut app, "/internal/maintenance", json!({"on": false}));
        assert_eq!(app.handle(&Method::GET, "/internal/health", b"").0, StatusCode::OK);
    }

    #[test]
    fn clearing_a_cache_region_empties_it_once_and_unknown_routes_are_404() {
        let mut app = App::new("agent-1");
        let (status, body) = post(&mut app, "/internal/clear-cache/sessions", json!({"region": "sessions"}));
        assert_eq!((status, body["cleared"].as_u64()), (StatusCode::OK, Some(120)));
        let (_, body) = post(&mut app, "/internal/clear-cache/sessions", json!({}));
        assert_eq!(body["cleared"].as_u64(), Some(0));
        assert_eq!(post(&mut app, "/internal/clear-cache/nope", json!({})).0, StatusCode::NOT_FOUND);
        assert_eq!(app.handle(&Method::GET, "/elsewhere", b"").0, StatusCode::NOT_FOUND);
        assert_eq!(app.handle(&Method::POST, "/internal/maintenance", b"{not json").0, StatusCode::BAD_REQUEST);
    }
}
