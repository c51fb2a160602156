//! Webhook delivery: one task per webhook reads the outbox in order and POSTs each event it
//! wants, retrying a failed delivery with capped, jittered exponential backoff until it succeeds
//! (or the master stops; the next master resumes from the outbox). A slow or dead receiver only
//! delays its own queue: nothing else waits on it.
//!
//! Each POST carries the event's JSON and these headers:
//! - `X-Ragmesh-Event-Id: evt-<seq>` (deduplicate on it: delivery is at least once),
//! - `X-Ragmesh-Event-Kind: node_down`,
//! - `X-Ragmesh-Timestamp: <unix seconds>`,
//! - `X-Ragmesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! A receiver recomputes the HMAC over the exact body bytes, compares in constant time, and
//! refuses a `t` outside its replay window (e.g. 300 s; see [`verify`]). Any 2xx answer is
//! success; anything else (or no answer within the webhook's timeout) is retried.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use ragmesh_config::WebhookConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Event, Outbox};

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-ragmesh-signature";
/// Header carrying the event id.
pub const ID_HEADER: &str = "x-ragmesh-event-id";
/// Header carrying the event kind.
pub const KIND_HEADER: &str = "x-ragmesh-event-kind";
/// Header carrying the signing time (unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-ragmesh-timestamp";
/// First wait after a failed delivery.
pub const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// Outbox entries read at once by a delivery task.
const BATCH: usize = 64;

/// Why a delivery failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The URL cannot be used.
    #[error("webhook url {url:?} is not usable: {message}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// Connecting or talking HTTP failed.
    #[error("webhook {url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The receiver answered with a status other than 2xx.
    #[error("webhook {url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// Its answer.
        status: u16,
    },
    /// No answer in time.
    #[error("webhook {url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The deadline.
        timeout: Duration,
    },
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<unix>,v1=<hex>`.
    #[error("signature header is malformed: expected t=<unix seconds>,v1=<hex hmac>")]
    Malformed,
    /// The timestamp is outside the replay window.
    #[error("signature timestamp {t} is outside the replay window of {window} s around {now}")]
    Stale {
        /// Signed time.
        t: u64,
        /// Receiver's time.
        now: u64,
        /// Allowed distance.
        window: u64,
    },
    /// The HMAC does not match (wrong secret or a modified body).
    #[error("signature does not match the body")]
    Mismatch,
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn signed_payload(t: u64, body: &[u8]) -> Vec<u8> {
    let mut payload = format!("{t}.").into_bytes();
    payload.extend_from_slice(body);
    payload
}

/// The `X-Ragmesh-Signature` value of `body` signed at `t` (unix seconds).
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, &signed_payload(t, body));
    format!("t={t},v1={}", hex(tag.as_ref()))
}

/// Verifies `header` over `body` as a receiver does: the HMAC matches (constant-time) and `t` is
/// within `window` seconds of `now`.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: u64, window: u64) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = unhex(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return Err(SignatureError::Malformed) };
    if t.abs_diff(now) > window {
        return Err(SignatureError::Stale { t, now, window });
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, &signed_payload(t, body), &v1).map_err(|_| SignatureError::Mismatch)
}

/// The wait before retry number `attempt` (0 for the first retry): `base * 2^attempt` capped at
/// `cap`, of which the upper half is jittered by `jitter` in [0, 1) ("equal jitter": never less
/// than half the exponential wait, so a dead receiver is not hammered, and receivers that failed
/// together do not retry together).
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(attempt.min(31))).min(cap);
    let half = exponential / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

fn unix_secs() -> u64 {
    super::now_ms() / 1000
}

/// POSTs `event` to `webhook` once.
pub async fn deliver(webhook: &WebhookConfig, event: &Event) -> Result<(), DeliveryError> {
    let url = webhook.url.clone();
    let body = serde_json::to_vec(event).expect("an event of plain fields always serializes");
    let attempt = post(webhook, event, body);
    match tokio::time::timeout(webhook.timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(DeliveryError::Timeout { url, timeout: webhook.timeout }),
    }
}

async fn post(webhook: &WebhookConfig, event: &Event, body: Vec<u8>) -> Result<(), DeliveryError> {
    let url = &webhook.url;
    let bad_url = |message: &str| DeliveryError::Url { url: url.clone(), message: message.to_owned() };
    let transport = |message: String| DeliveryError::Transport { url: url.clone(), message };
    let uri: http::Uri = url.parse().map_err(|_| bad_url("it does not parse"))?;
    let authority = uri.authority().ok_or_else(|| bad_url("it has no host"))?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| transport(format!("cannot connect: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(format!("http handshake: {e}")))?;
    let connection = tokio::spawn(connection);
    let t = unix_secs();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::post(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, concat!("ragmesh-master/", env!("CARGO_PKG_VERSION")))
        .header(ID_HEADER, &event.id)
        .header(KIND_HEADER, event.kind.as_str())
        .header(TIMESTAMP_HEADER, t.to_string())
        .header(SIGNATURE_HEADER, sign(webhook.secret.0.as_bytes(), t, &body))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| bad_url(&e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| transport(format!("request: {e}")))?;
    let status = response.status();
    // Read the answer to its end so the receiver is not cut off mid-write; its content is ignored.
    let _ = response.into_body().collect().await;
    connection.abort();
    if status.is_success() { Ok(()) } else { Err(DeliveryError::Status { url: url.clone(), status: status.as_u16() }) }
}

/// The delivery task of one webhook: takes the outbox in order, delivers what the webhook wants
/// (retrying until it succeeds), moves past each entry; sleeps until `written` moves. Ends at
/// `shutdown` (an undelivered event stays in the outbox for the next master).
pub async fn run(
    webhook: WebhookConfig,
    outbox: Arc<Outbox>,
    mut written: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let name = webhook.name.clone();
    loop {
        written.borrow_and_update();
        let reader = outbox.clone();
        let reading = name.clone();
        let pending = match tokio::task::spawn_blocking(move || reader.pending(&reading, BATCH)).await {
            Ok(Ok(pending)) => pending,
            Ok(Err(error)) => {
                tracing::error!(webhook = %name, %error, "cannot read the webhook outbox");
                Vec::new()
            }
            Err(error) => {
                tracing::error!(webhook = %name, %error, "webhook outbox task failed");
                Vec::new()
            }
        };
        if pending.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = written.changed() => if changed.is_err() { return },
            }
            continue;
        }
        for entry in pending {
            if let Some(event) = &entry.event
                && !deliver_until_done(&webhook, event, &shutdown).await
            {
                return;
            }
            let writer = outbox.clone();
            let advancing = name.clone();
            match tokio::task::spawn_blocking(move || writer.advance(&advancing, entry.seq)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(webhook = %name, %error, "webhook position not persisted"),
                Err(error) => tracing::error!(webhook = %name, %error, "webhook outbox task failed"),
            }
        }
    }
}

/// Delivers `event`, retrying with backoff; `false` when the master stops first.
async fn deliver_until_done(webhook: &WebhookConfig, event: &Event, shutdown: &CancellationToken) -> bool {
    let mut attempt = 0u32;
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return false,
            outcome = deliver(webhook, event) => outcome,
        };
        match outcome {
            Ok(()) => {
                tracing::debug!(webhook = %webhook.name, event.seq = event.seq, attempt, "event delivered");
                return true;
            }
            Err(error) => {
                let wait = backoff(attempt, BASE_BACKOFF, webhook.max_backoff, rand::random::<f64>());
                tracing::warn!(
                    webhook = %webhook.name, event.seq = event.seq, attempt, %error,
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "webhook delivery failed"
                );
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef";

    #[test]
    fn a_signature_matches_an_independent_hmac_and_verifies() {
        let body = br#"{"id":"evt-1","seq":1}"#;
        let header = sign(SECRET, 1_700_000_000, body);
        // Python: hmac.new(b"0123456789abcdef", b'1700000000.{"id":"evt-1","seq":1}', hashlib.sha256).hexdigest()
        assert_eq!(header, "t=1700000000,v1=e179213f8283f29ef55e93ec4630b4e06a1bdda64fd28017a0876afb57c7445f");
        assert_eq!(verify(SECRET, &header, body, 1_700_000_100, 300), Ok(()));
    }

    #[test]
    fn a_tampered_body_a_wrong_secret_or_an_old_timestamp_fails() {
        let body = br#"{"kind":"node_down"}"#;
        let header = sign(SECRET, 1000, body);
        assert_eq!(verify(SECRET, &header, br#"{"kind":"node_up"}"#, 1000, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"another-secret-16", &header, body, 1000, 300), Err(SignatureError::Mismatch));
        assert_eq!(
            verify(SECRET, &header, body, 1301, 300),
            Err(SignatureError::Stale { t: 1000, now: 1301, window: 300 })
        );
        assert_eq!(verify(SECRET, "v1=00", body, 1000, 300), Err(SignatureError::Malformed));
        assert_eq!(verify(SECRET, "t=1000,v1=zz", body, 1000, 300), Err(SignatureError::Malformed));
        // The timestamp is signed too: moving it breaks the signature.
        let moved = header.replacen("t=1000", "t=1001", 1);
        assert_eq!(verify(SECRET, &moved, body, 1000, 300), Err(SignatureError::Mismatch));
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let base = Duration::from_millis(250);
        let cap = Duration::from_secs(60);
        let top: Vec<u64> = (0..10).map(|a| backoff(a, base, cap, 1.0).as_millis() as u64).collect();
        assert_eq!(top, [250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
        assert_eq!(backoff(0, base, cap, 0.0), Duration::from_millis(125));
        assert_eq!(backoff(u32::MAX, base, cap, 0.5), Duration::from_millis(45_000));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_half_and_all_of_the_capped_exponential(
            attempt in 0u32..100, jitter in 0.0f64..1.0, cap_ms in 250u64..3_600_000,
        ) {
            let base = BASE_BACKOFF;
            let cap = Duration::from_millis(cap_ms);
            let wait = backoff(attempt, base, cap, jitter);
            let exponential = base.saturating_mul(2u32.saturating_pow(attempt.min(31))).min(cap);
            prop_assert!(wait <= exponential && wait <= cap);
            prop_assert!(wait >= exponential / 2);
            prop_assert!(backoff(attempt + 1, base, cap, 0.0) >= backoff(attempt, base, cap, 0.0));
        }

        #[test]
        fn any_change_to_the_body_fails_verification(body in proptest::collection::vec(any::<u8>(), 1..200), flip in any::<usize>()) {
            let header = sign(SECRET, 5000, &body);
            prop_assert_eq!(verify(SECRET, &header, &body, 5000, 300), Ok(()));
            let mut tampered = body.clone();
            let i = flip % tampered.len();
            tampered[i] ^= 0x01;
            prop_assert_eq!(verify(SECRET, &header, &tampered, 5000, 300), Err(SignatureError::Mismatch));
        }
    }
}
