//! Test fixtures shared by the integration tests: a mesh CA created at test time (plus unrelated
//! CAs for negative tests), waiting on a condition with a deadline instead of sleeping, a log
//! subscriber that writes through the test harness's capture, and a gRPC client that sends raw
//! bytes (requests no generated client can produce).

pub mod daemon;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ragmesh_tls::{DevCa, TlsFiles};
use tokio::time::Instant;

/// A throwaway certificate authority and the certificates it issued, in a temporary directory.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: DevCa,
}

impl TestPki {
    /// A fresh CA.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir for the test CA");
        let ca = DevCa::generate().expect("generate a test CA");
        ca.write(dir.path(), false).expect("write the test CA");
        TestPki { dir, ca }
    }

    /// Directory holding `ca.pem` and issued certificates.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the CA certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues (or re-uses) a certificate for `name`, valid for loopback, and returns TLS files
    /// trusting this CA.
    pub fn issue(&self, name: &str) -> TlsFiles {
        self.issue_for_days(name, 30)
    }

    /// Like [`TestPki::issue`] with a validity of `days`, in a directory of its own.
    pub fn issue_for_days(&self, name: &str, days: u32) -> TlsFiles {
        let out = if days == 30 { self.dir.path().to_owned() } else { self.dir.path().join(format!("{days}d")) };
        std::fs::create_dir_all(&out).expect("certificate directory");
        let paths =
            ragmesh_tls::devca::issue_with_ca(&self.ca, name, &[], &out, days).expect("issue a test certificate");
        paths.tls_files(self.ca_pem())
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// Installs a compact log subscriber once per test binary (`RUST_LOG` overrides the default).
pub fn trace_init() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,ragmesh_master=info,ragmesh_agent=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `timeout` naming `what`.
/// Returns the value and how long it took.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return (value, started.elapsed());
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A gRPC codec whose messages are raw bytes, to send what no generated client would: bytes that
/// are not protobuf, or a message of an exact size.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytesCodec;

impl tonic::codec::Codec for RawBytesCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawBytesCodec;
    type Decoder = RawBytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for RawBytesCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: bytes::Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytesCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Sends `message` as the request of the unary method `path` (e.g. `/grpc.health.v1.Health/Check`)
/// and returns the raw response message or the status.
pub async fn unary_raw(
    channel: tonic::transport::Channel,
    path: &'static str,
    message: bytes::Bytes,
) -> Result<bytes::Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|err| tonic::Status::unavailable(format!("channel not ready: {err}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(message), path, RawBytesCodec).await.map(tonic::Response::into_inner)
}

/// Like [`unary_raw`] for a server-streaming method: the status of the call, or the first message.
pub async fn server_streaming_raw(
    channel: tonic::transport::Channel,
    path: &'static str,
    message: bytes::Bytes,
) -> Result<Option<bytes::Bytes>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|err| tonic::Status::unavailable(format!("channel not ready: {err}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let mut stream = grpc.server_streaming(tonic::Request::new(message), path, RawBytesCodec).await?.into_inner();
    stream.message().await
}

/// The vaswani (NPL) test collection, `../shared/data/vaswani` beside the repository, when its
/// documents, topics and qrels are all there. Absent (a user's clone), it prints that the test
/// is skipped and returns `None`; under `CI` (which always has it) its absence fails the test.
pub fn vaswani_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/vaswani");
    if ["doc-text.trec", "query-text.trec", "qrels"].iter().all(|file| dir.join(file).is_file()) {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must have ../shared/data/vaswani");
    println!("skipped: ../shared/data/vaswani not present");
    None
}
