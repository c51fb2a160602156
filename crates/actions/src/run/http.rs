//! The http runner: one plain-http request (HTTP/1.1 over hyper) to the local application
//! beside the agent. `{name}` placeholders in the URL path are percent-encoded, the body is the
//! JSON object of the validated arguments, the response body is kept up to a bound, a status of
//! 400 or more is `failed`, and the whole exchange (connect included) is under the timeout.
//! https is not supported: the application is local, and a declaration with https is refused.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use super::{Capture, Captured, RunLimits, StepOutcome, StepStatus};
use crate::schema::ValidArgs;
use crate::spec::{HttpBody, HttpStep, placeholders};

/// Percent-encodes everything but unreserved characters; `.` too, so a value of `..` can never
/// become a dot segment of the path.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The URL with each `{name}` replaced by its argument's percent-encoded canonical text (an
/// absent optional argument becomes the empty string).
pub(crate) fn substitute_url(url: &str, args: &ValidArgs) -> String {
    let mut text = url.to_owned();
    for name in placeholders(url) {
        let value = args.get(name).map(|value| percent_encode(&value.text())).unwrap_or_default();
        text = text.replace(&format!("{{{name}}}"), &value);
    }
    text
}

/// Aborts the connection task when the request is done or abandoned (timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends the request; the status and the bounded body, or why it could not.
async fn exchange(step: &HttpStep, args: &ValidArgs, max_body: usize) -> Result<(u16, Captured), String> {
    let url = substitute_url(&step.url, args);
    let uri: http::Uri = url.parse().map_err(|err| format!("url {url:?} is invalid: {err}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("url {url:?}: only http:// is supported"));
    }
    let authority = uri.authority().ok_or_else(|| format!("url {url:?} has no host"))?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|err| format!("cannot connect to {authority}: {err}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("http handshake with {authority} failed: {err}"))?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));

    let method = http::Method::from_bytes(step.method.as_bytes())
        .map_err(|_| format!("method {:?} is not an HTTP method", step.method))?;
    let target = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let mut request =
        http::Request::builder().method(method).uri(target).header(http::header::HOST, authority.as_str());
    let body = match step.body {
        HttpBody::Args => {
            if !step.headers.keys().any(|name| name.eq_ignore_ascii_case("content-type")) {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
            }
            Bytes::from(args.to_json().to_string())
        }
        HttpBody::None => Bytes::new(),
    };
    for (name, value) in &step.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Full::new(body)).map_err(|err| format!("cannot build the request: {err}"))?;
    let response = sender.send_request(request).await.map_err(|err| format!("request to {authority} failed: {err}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut capture = Capture::new(max_body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| format!("reading the response body from {authority} failed: {err}"))?;
        if let Some(data) = frame.data_ref() {
            capture.push(data);
        }
    }
    Ok((status, capture.finish()))
}

/// Runs an http step; see the module documentation.
pub(crate) async fn run(step: &HttpStep, args: &ValidArgs, limits: RunLimits) -> StepOutcome {
    let started = Instant::now();
    let result = tokio::time::timeout(limits.timeout, exchange(step, args, limits.max_output_bytes)).await;
    let duration = started.elapsed();
    let outcome = match result {
        Ok(Ok((status, body))) => StepOutcome {
            status: if status >= 400 { StepStatus::Failed } else { StepStatus::Ok },
            exit_code: None,
            http_status: Some(status),
            stdout: body,
            stderr: Captured::default(),
            duration,
            message: if status >= 400 { format!("the application answered HTTP {status}") } else { String::new() },
        },
        Ok(Err(message)) => StepOutcome::error(message, duration),
        Err(_elapsed) => StepOutcome {
            status: StepStatus::Timeout,
            message: format!("no complete answer within {} ms: the request was dropped", limits.timeout.as_millis()),
            ..StepOutcome::error(String::new(), duration)
        },
    };
    tracing::debug!(
        action.url = %step.url,
        action.status = outcome.status.as_str(),
        http.status_code = outcome.http_status,
        duration_ms = duration.as_millis() as u64,
        "action.http ended"
    );
    outcome
}
