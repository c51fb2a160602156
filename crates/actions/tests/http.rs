//! The http runner against a tiny hyper server on 127.0.0.1:0: 2xx is ok with the body kept,
//! 500 is failed, a server that never answers times out, placeholders are percent-encoded,
//! the body is the JSON of the validated arguments, a large body is bounded.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ragmesh_actions::{ActionSpec, RunLimits, StepOutcome, StepStatus, run_step, validate, validate_spec};

/// What the server saw: method, path and query, content type, body.
type Seen = Arc<Mutex<Vec<(String, String, String, String)>>>;

async fn serve() -> (std::net::SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let method = request.method().to_string();
                        let target = request.uri().to_string();
                        let content_type = request
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let body = String::from_utf8_lossy(&body).into_owned();
                        record.lock().expect("lock").push((method, target.clone(), content_type, body));
                        let (status, reply) = if target.starts_with("/fail") {
                            (500, Bytes::from_static(b"boom"))
                        } else if target.starts_with("/big") {
                            (200, Bytes::from(vec![b'x'; 1_000_000]))
                        } else {
                            (200, Bytes::from_static(b"cleared"))
                        };
                        let response =
                            hyper::Response::builder().status(status).body(Full::new(reply)).expect("response");
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, seen)
}

fn action(url: &str) -> ActionSpec {
    let text = format!(
        r#"
[[actions]]
name = "web"
tenants = ["*"]
[[actions.args]]
name = "region"
type = "string"
[[actions.args]]
name = "count"
type = "integer"
default = 2
[[actions.args]]
name = "token"
type = "string"
secret = true
[actions.run.http]
url = "{url}"
headers = {{ x-fixed = "1" }}
"#
    );
    #[derive(serde::Deserialize)]
    struct File {
        actions: Vec<ActionSpec>,
    }
    let mut file: File = toml::from_str(&text).expect("test declaration parses");
    let spec = file.actions.remove(0);
    assert_eq!(validate_spec(&spec), Vec::<String>::new());
    spec
}

async fn call(spec: &ActionSpec, pairs: &[(&str, &str)], timeout: Duration) -> StepOutcome {
    let raw: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let valid = validate(spec, &raw).expect("valid arguments");
    let limits = RunLimits { timeout, max_output_bytes: 1024, drain_grace: Duration::from_secs(1) };
    run_step(spec.steps()[0].1, &valid, limits).await
}

#[tokio::test]
async fn a_2xx_answer_is_ok_with_the_arguments_as_json_and_the_path_encoded() {
    let (addr, seen) = serve().await;
    let spec = action(&format!("http://{addr}/clear/{{region}}?all=1"));
    let outcome = call(&spec, &[("region", "../eu west/é"), ("token", "s3cret")], Duration::from_secs(30)).await;
    assert_eq!(outcome.status, StepStatus::Ok, "{outcome:?}");
    assert_eq!(outcome.http_status, Some(200));
    assert_eq!(outcome.stdout.text, "cleared");
    let seen = seen.lock().expect("lock").clone();
    let [(method, target, content_type, body)] = &seen[..] else { panic!("one request: {seen:?}") };
    assert_eq!(method, "POST");
    assert_eq!(target, "/clear/%2E%2E%2Feu%20west%2F%C3%A9?all=1", "one path segment, no dot segment");
    assert_eq!(content_type, "application/json");
    let json: serde_json::Value = serde_json::from_str(body).expect("json body");
    assert_eq!(json, serde_json::json!({"region": "../eu west/é", "count": 2, "token": "s3cret"}));
}

#[tokio::test]
async fn a_500_answer_is_failed_with_its_status_and_body() {
    let (addr, _seen) = serve().await;
    let spec = action(&format!("http://{addr}/fail"));
    let outcome = call(&spec, &[], Duration::from_secs(30)).await;
    assert_eq!(outcome.status, StepStatus::Failed);
    assert_eq!(outcome.http_status, Some(500));
    assert_eq!(outcome.stdout.text, "boom");
}

#[tokio::test]
async fn a_large_body_is_bounded() {
    let (addr, _seen) = serve().await;
    let spec = action(&format!("http://{addr}/big"));
    let outcome = call(&spec, &[], Duration::from_secs(30)).await;
    assert_eq!(outcome.status, StepStatus::Ok);
    assert_eq!(outcome.stdout.text.len(), 1024);
    assert_eq!(outcome.stdout.truncated_bytes, 1_000_000 - 1024);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accepts and holds every connection without ever reading or answering.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let spec = action(&format!("http://{addr}/hang"));
    let started = Instant::now();
    let outcome = call(&spec, &[], Duration::from_millis(300)).await;
    let took = started.elapsed();
    assert_eq!(outcome.status, StepStatus::Timeout, "{outcome:?}");
    assert_eq!(outcome.http_status, None);
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(20), "{took:?}");
    holder.abort();
}

#[tokio::test]
async fn a_refused_connection_is_an_error() {
    // Bind then drop: nothing listens on the port any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let spec = action(&format!("http://{addr}/x"));
    let outcome = call(&spec, &[], Duration::from_secs(30)).await;
    assert_eq!(outcome.status, StepStatus::Error, "{outcome:?}");
    assert!(outcome.message.contains("cannot connect"), "{}", outcome.message);
}
