//! Puts the request-decoding failures of tonic's codec in the gRPC status vocabulary: they are
//! the caller's fault, and tonic 0.14 reports them as the server's.
//!
//! What tonic's codec (`tonic::codec::decode`, `tonic_prost::ProstCodec`) answers, and what this
//! layer makes of it:
//!
//! | request                          | tonic                                                                                          | after this layer |
//! |----------------------------------|------------------------------------------------------------------------------------------------|------------------|
//! | body is not valid protobuf       | INTERNAL `failed to decode Protobuf message: <detail>`                                         | INVALID_ARGUMENT `request to <path> is not a valid protobuf message for that method (<detail>): check that the client uses the server's .proto files` |
//! | message over the decoding limit  | OUT_OF_RANGE `Error, decoded message length too large: found <n> bytes, the limit is: <m> bytes` | RESOURCE_EXHAUSTED `request message of <n> bytes exceeds the limit of <m> bytes (<setting>): send smaller messages (fewer documents per call) or raise <setting> on the server` |
//!
//! For unary and server-streaming methods tonic decodes the request before the handler runs and
//! answers a failure as a trailers-only response (the status in the response headers); for
//! client- and bidirectional-streaming methods the failure reaches the handler through
//! `Streaming::message()`, and if the handler passes it on it ends the response, in the headers
//! or in the trailers. This layer looks at both places.
//!
//! Only statuses tonic's codec produced are rewritten, never one a handler made for its own
//! reasons with the same code: a status is taken for the codec's when (1) its code and message
//! are exactly the codec's format above, and (2) the request body had not been read to its end
//! when the status was written. (2) holds for every codec failure (the decoder stops at the bad
//! message and never reads on), and never for a status a unary or server-streaming handler
//! returns, since tonic reads the whole request body before it calls the handler.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::codegen::Bytes;
use tonic::{Code, Status};
use tower::{BoxError, Layer, Service};

/// Prefix of the message tonic-prost gives a request that is not valid protobuf (INTERNAL).
const DECODE_ERROR_PREFIX: &str = "failed to decode Protobuf message: ";
/// Start of the message tonic gives a request message over the decoding limit (OUT_OF_RANGE).
const TOO_LARGE_PREFIX: &str = "Error, decoded message length too large: found ";

/// Applies [`WireErrors`] to a whole server (`Server::builder().layer(...)`).
#[derive(Debug, Clone)]
pub struct WireErrorsLayer {
    setting: &'static str,
}

impl WireErrorsLayer {
    /// `setting` is the flag that sets the message-size limit (e.g. `--max-message-bytes`), named
    /// in the RESOURCE_EXHAUSTED message.
    pub fn new(setting: &'static str) -> Self {
        Self { setting }
    }
}

impl<S> Layer<S> for WireErrorsLayer {
    type Service = WireErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WireErrors { inner, setting: self.setting }
    }
}

/// Rewrites the statuses of tonic's request decoding (see the [module](self) documentation).
#[derive(Debug, Clone)]
pub struct WireErrors<S> {
    inner: S,
    setting: &'static str,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for WireErrors<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    ReqBody: HttpBody<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
{
    type Response = http::Response<WireErrorsBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = Arc::new(CallInfo {
            request_ended: AtomicBool::new(false),
            uri: request.uri().clone(),
            setting: self.setting,
        });
        let ended = Arc::clone(&call);
        let request = request.map(|body| tonic::body::Body::new(ReadToEnd { inner: body, call: ended }));
        ResponseFuture { inner: self.inner.call(request), call: Some(call) }
    }
}

/// What the rewrite needs to know about one call.
#[derive(Debug)]
struct CallInfo {
    /// Whether the request body was read to its end (by tonic, before a handler ran).
    request_ended: AtomicBool,
    /// The request's URI (a reference-counted copy), for its path.
    uri: http::Uri,
    setting: &'static str,
}

impl CallInfo {
    /// Rewrites the status in `headers` (response headers or trailers) if tonic's codec made it;
    /// returns the new status then.
    fn rewrite(&self, headers: &mut HeaderMap) -> Option<Status> {
        let status = Status::from_header_map(headers)?;
        let ended = self.request_ended.load(Ordering::Acquire);
        let rewritten = rewrite(&status, ended, self.uri.path(), self.setting)?;
        tracing::debug!(rpc.method = %self.uri.path(), from = ?status.code(), to = ?rewritten.code(), "request decoding status rewritten");
        let mut replaced = HeaderMap::new();
        if rewritten.add_header(&mut replaced).is_err() {
            return None; // cannot happen for a status without metadata; keep tonic's answer then
        }
        for name in [Status::GRPC_STATUS, Status::GRPC_MESSAGE, Status::GRPC_STATUS_DETAILS] {
            headers.remove(name);
        }
        headers.extend(replaced);
        Some(rewritten)
    }
}

/// The status to send instead of `status`, when `status` is tonic's answer to a request it could
/// not decode: the code and message are exactly tonic's, and the request body was not read to its
/// end (a handler's status comes after tonic read it all). `None` leaves `status` as it is.
pub fn rewrite(status: &Status, request_ended: bool, path: &str, setting: &str) -> Option<Status> {
    if request_ended {
        return None;
    }
    match status.code() {
        Code::Internal => {
            let detail = status.message().strip_prefix(DECODE_ERROR_PREFIX)?;
            Some(Status::invalid_argument(format!(
                "request to {path} is not a valid protobuf message for that method ({detail}): check that the client uses the server's .proto files"
            )))
        }
        Code::OutOfRange => {
            let (found, limit) = too_large(status.message())?;
            Some(Status::resource_exhausted(format!(
                "request message of {found} bytes exceeds the limit of {limit} bytes ({setting}): send smaller messages (fewer documents per call) or raise {setting} on the server"
            )))
        }
        _ => None,
    }
}

/// `(found, limit)` from tonic's "Error, decoded message length too large: found {found} bytes,
/// the limit is: {limit} bytes"; `None` for any other text.
fn too_large(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix(TOO_LARGE_PREFIX)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

pin_project! {
    /// The request body, noting in its call when it has been read to its end.
    struct ReadToEnd<B> {
        #[pin]
        inner: B,
        call: Arc<CallInfo>,
    }
}

impl<B: HttpBody> HttpBody for ReadToEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let at_end = match &frame {
            None => true,
            Some(Ok(frame)) => frame.is_trailers(),
            Some(Err(_)) => false,
        };
        if at_end {
            this.call.request_ended.store(true, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        let at_end = self.inner.is_end_stream();
        if at_end {
            // An empty body is read to its end before anything reads it.
            self.call.request_ended.store(true, Ordering::Release);
        }
        at_end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The response of [`WireErrors`]: the inner response, its status headers rewritten if needed.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Arc<CallInfo>>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<WireErrorsBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let call = this.call.take().expect("a response future is polled only until it is ready");
        let trailers_only = response.headers().contains_key(Status::GRPC_STATUS);
        if trailers_only && let Some(rewritten) = call.rewrite(response.headers_mut()) {
            // Keep the in-process copy of the status tonic attaches in step with the headers.
            response.extensions_mut().insert(rewritten);
        }
        // A trailers-only response has no status to come; otherwise watch its trailers.
        let call = (!trailers_only).then_some(call);
        Poll::Ready(Ok(response.map(|inner| WireErrorsBody { inner, call })))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("call", &self.call).finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body whose trailing status is rewritten if tonic's codec made it.
    pub struct WireErrorsBody<B> {
        #[pin]
        inner: B,
        call: Option<Arc<CallInfo>>,
    }
}

impl<B: HttpBody> HttpBody for WireErrorsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut frame = ready!(this.inner.poll_frame(cx));
        if let (Some(call), Some(Ok(frame))) = (this.call.as_ref(), frame.as_mut())
            && let Some(trailers) = frame.trailers_mut()
        {
            let _rewritten = call.rewrite(trailers);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for WireErrorsBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireErrorsBody").field("call", &self.call).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::body::Body;
    use tower::{ServiceExt as _, service_fn};

    use super::*;

    const PATH: &str = "/ragmesh.v1.AgentService/NodeSearch";
    const SETTING: &str = "--max-message-bytes";

    fn decode_error() -> Status {
        Status::internal("failed to decode Protobuf message: invalid wire type value: 7")
    }

    fn too_large_error() -> Status {
        Status::out_of_range("Error, decoded message length too large: found 70000 bytes, the limit is: 65536 bytes")
    }

    #[test]
    fn invalid_protobuf_becomes_invalid_argument() {
        let rewritten = rewrite(&decode_error(), false, PATH, SETTING).expect("rewritten");
        assert_eq!(rewritten.code(), Code::InvalidArgument);
        assert_eq!(
            rewritten.message(),
            "request to /ragmesh.v1.AgentService/NodeSearch is not a valid protobuf message for that method (invalid wire type value: 7): check that the client uses the server's .proto files"
        );
    }

    #[test]
    fn an_oversized_message_becomes_resource_exhausted_naming_the_limit_and_the_flag() {
        let rewritten = rewrite(&too_large_error(), false, PATH, SETTING).expect("rewritten");
        assert_eq!(rewritten.code(), Code::ResourceExhausted);
        assert_eq!(
            rewritten.message(),
            "request message of 70000 bytes exceeds the limit of 65536 bytes (--max-message-bytes): send smaller messages (fewer documents per call) or raise --max-message-bytes on the server"
        );
    }

    #[test]
    fn statuses_after_the_whole_request_was_read_are_the_handlers_and_stay() {
        assert!(rewrite(&decode_error(), true, PATH, SETTING).is_none());
        assert!(rewrite(&too_large_error(), true, PATH, SETTING).is_none());
    }

    #[test]
    fn other_codes_and_texts_stay() {
        for status in [
            Status::internal("index task failed: boom"),
            Status::internal("Missing request message."),
            Status::out_of_range("page 7 is past the end"),
            Status::out_of_range("Error, decoded message length too large: found many bytes, the limit is: 1 bytes"),
            Status::out_of_range(
                "Error, encoded message length too large: found 70000 bytes, the limit is: 65536 bytes",
            ),
            Status::invalid_argument("failed to decode Protobuf message: x"),
            Status::unavailable("failed to decode Protobuf message: x"),
        ] {
            assert!(rewrite(&status, false, PATH, SETTING).is_none(), "{status:?}");
        }
    }

    /// A body of the given frames, ready at once.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// A request body of one (gRPC-framed, here arbitrary) data frame.
    fn one_message() -> Body {
        Body::new(Frames([Frame::data(Bytes::from_static(b"\0\0\0\0\x02\xff\xff"))].into()))
    }

    /// A streaming-style response: headers without a status, then `status` in the trailers.
    fn trailers_response(status: &Status) -> http::Response<Body> {
        let mut trailers = HeaderMap::new();
        status.add_header(&mut trailers).expect("plain status");
        http::Response::new(Body::new(Frames([Frame::trailers(trailers)].into())))
    }

    async fn read_to_end(body: &mut Body) {
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            frame.expect("frame");
        }
    }

    /// Calls the layer over a handler that reads the request to its end first, or not at all,
    /// then ends its response with `status` in the trailers; returns the status the caller sees.
    async fn trailing_status(read_request: bool, status: Status) -> Status {
        let handler = service_fn(move |mut request: http::Request<Body>| {
            let status = status.clone();
            async move {
                if read_request {
                    read_to_end(request.body_mut()).await;
                }
                Ok::<_, Infallible>(trailers_response(&status))
            }
        });
        let service = WireErrorsLayer::new(SETTING).layer(handler);
        let request = http::Request::builder().uri(PATH).body(one_message()).expect("request");
        let response = service.oneshot(request).await.expect("infallible");
        assert!(!response.headers().contains_key(Status::GRPC_STATUS), "not trailers-only");
        let mut body = response.into_body();
        let mut seen = None;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if let Ok(trailers) = frame.expect("frame").into_trailers() {
                seen = Status::from_header_map(&trailers);
            }
        }
        seen.expect("a status in the trailers")
    }

    #[tokio::test]
    async fn a_codec_status_in_the_trailers_of_a_streaming_call_is_rewritten() {
        // The handler passed on what `Streaming::message()` gave it; the decoder stopped reading.
        let status = trailing_status(false, decode_error()).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let status = trailing_status(false, too_large_error()).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }

    #[tokio::test]
    async fn a_lookalike_status_after_the_request_was_read_to_its_end_is_left_alone() {
        let status = trailing_status(true, decode_error()).await;
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert_eq!(status.message(), decode_error().message());
    }
}
