//! Rate-limit keys: the principal a request is charged to, and the ways of finding it in a request.

use std::borrow::Borrow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::{Extensions, HeaderMap, HeaderName, Request};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The longest principal taken from a header; longer values are charged to one shared key so that
/// a client can neither skip the limit nor fill memory with long keys.
pub const MAX_HEADER_KEY_LEN: usize = 256;

/// The principal a request is charged to, such as `subject:alice`, `node:agent-1` or
/// `peer:127.0.0.1`.
///
/// Cheap to clone (a shared string). An authentication layer that runs before the rate limiter can
/// insert the verified principal into the request's extensions; [`key_from_extension`] reads it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RateKey(Arc<str>);

impl RateKey {
    /// A key from a principal string used as is.
    pub fn new(principal: impl Into<Arc<str>>) -> Self {
        Self(principal.into())
    }

    /// The key of an authenticated subject: `subject:<name>`.
    pub fn subject(name: &str) -> Self {
        Self::new(format!("subject:{name}"))
    }

    /// The key of a mesh node: `node:<id>`.
    pub fn node(id: &str) -> Self {
        Self::new(format!("node:{id}"))
    }

    /// The key of a network peer: `peer:<ip>`.
    pub fn peer(ip: IpAddr) -> Self {
        Self::new(format!("peer:{ip}"))
    }

    /// The principal string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for RateKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for RateKey {
    fn from(principal: &str) -> Self {
        Self::new(principal)
    }
}

impl From<String> for RateKey {
    fn from(principal: String) -> Self {
        Self::new(principal)
    }
}

/// Finds the principal a request is charged to. `None` means the request is not rate limited.
///
/// Implemented by [`key_from_header`], [`key_from_extension`], [`key_from_peer_ip`] and
/// [`key_fn`]; combine them with [`KeyExtractor::or`].
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key for this request, or `None` to let it through unlimited.
    fn extract<B>(&self, request: &Request<B>) -> Option<RateKey>;

    /// Tries `self` first and `fallback` when `self` finds no key.
    fn or<K: KeyExtractor>(self, fallback: K) -> Or<Self, K>
    where
        Self: Sized,
    {
        Or { first: self, fallback }
    }
}

/// Keys requests by the value of one header; see [`key_from_header`].
#[derive(Clone, Debug)]
pub struct HeaderKey {
    name: HeaderName,
    invalid: RateKey,
}

/// Keys requests by the value of header `name`, used as the principal as is.
///
/// Requests without the header are not limited. Values that are not visible ASCII or are longer
/// than [`MAX_HEADER_KEY_LEN`] all share the key `invalid:<header name>`.
///
/// A header is whatever the client says it is: key by a header only when something trusted sets
/// it (a proxy, or a test), and prefer [`key_from_extension`] after authentication.
pub fn key_from_header(name: HeaderName) -> HeaderKey {
    let invalid = RateKey::new(format!("invalid:{name}"));
    HeaderKey { name, invalid }
}

impl KeyExtractor for HeaderKey {
    fn extract<B>(&self, request: &Request<B>) -> Option<RateKey> {
        let value = request.headers().get(&self.name)?;
        match value.to_str() {
            Ok(principal) if principal.len() <= MAX_HEADER_KEY_LEN => Some(RateKey::from(principal)),
            _ => Some(self.invalid.clone()),
        }
    }
}

/// Keys requests by a [`RateKey`] request extension; see [`key_from_extension`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtensionKey;

/// Keys requests by the [`RateKey`] an earlier layer (authentication) inserted into the request's
/// extensions. Requests without one are not limited.
pub fn key_from_extension() -> ExtensionKey {
    ExtensionKey
}

impl KeyExtractor for ExtensionKey {
    fn extract<B>(&self, request: &Request<B>) -> Option<RateKey> {
        request.extensions().get::<RateKey>().cloned()
    }
}

/// Keys requests by the remote IP address; see [`key_from_peer_ip`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerIpKey;

/// Keys requests by the remote IP address tonic's server records for each connection
/// (`peer:<ip>`), over plain TCP and over TLS. Requests on other transports are not limited.
pub fn key_from_peer_ip() -> PeerIpKey {
    PeerIpKey
}

impl KeyExtractor for PeerIpKey {
    fn extract<B>(&self, request: &Request<B>) -> Option<RateKey> {
        let extensions = request.extensions();
        let tcp = match extensions.get::<TcpConnectInfo>() {
            Some(tcp) => tcp,
            None => extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?.get_ref(),
        };
        Some(RateKey::peer(tcp.remote_addr()?.ip()))
    }
}

/// Keys requests with a closure; see [`key_fn`].
#[derive(Clone)]
pub struct FnKey<F>(F);

/// Keys requests with a closure over the request's headers and extensions.
///
/// ```
/// use ragmesh_stack::rate_limit::{key_fn, RateKey};
///
/// // Charge only nodes here; clients are limited by another layer.
/// let nodes_only = key_fn(|_headers, extensions| {
///     extensions.get::<RateKey>().filter(|key| key.as_str().starts_with("node:")).cloned()
/// });
/// # let _ = nodes_only;
/// ```
pub fn key_fn<F>(f: F) -> FnKey<F>
where
    F: Fn(&HeaderMap, &Extensions) -> Option<RateKey> + Send + Sync + 'static,
{
    FnKey(f)
}

impl<F> KeyExtractor for FnKey<F>
where
    F: Fn(&HeaderMap, &Extensions) -> Option<RateKey> + Send + Sync + 'static,
{
    fn extract<B>(&self, request: &Request<B>) -> Option<RateKey> {
        (self.0)(request.headers(), request.extensions())
    }
}

impl<F> fmt::Debug for FnKey<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnKey").finish_non_exhaustive()
    }
}

/// Tries one extractor, then another; see [`KeyExtractor::or`].
#[derive(Clone, Debug)]
pub struct Or<A, B> {
    first: A,
    fallback: B,
}

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for Or<A, B> {
    fn extract<Body>(&self, request: &Request<Body>) -> Option<RateKey> {
        self.first.extract(request).or_else(|| self.fallback.extract(request))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn request_with_header(name: &'static str, value: &str) -> Request<()> {
        Request::builder().header(name, value).body(()).expect("valid request")
    }

    #[test]
    fn header_key_uses_the_value_as_the_principal() {
        let extractor = key_from_header(HeaderName::from_static("x-ragmesh-principal"));
        let key = extractor.extract(&request_with_header("x-ragmesh-principal", "subject:alice"));
        assert_eq!(key, Some(RateKey::from("subject:alice")));
        assert_eq!(extractor.extract(&Request::new(())), None);
    }

    #[test]
    fn overlong_or_binary_header_values_share_one_key() {
        let extractor = key_from_header(HeaderName::from_static("x-ragmesh-principal"));
        let long = "a".repeat(MAX_HEADER_KEY_LEN + 1);
        let key = extractor.extract(&request_with_header("x-ragmesh-principal", &long));
        assert_eq!(key, Some(RateKey::from("invalid:x-ragmesh-principal")));

        let mut binary = Request::new(());
        let value = http::HeaderValue::from_bytes(b"\xffalice").expect("opaque bytes are a valid header value");
        binary.headers_mut().insert("x-ragmesh-principal", value);
        assert_eq!(extractor.extract(&binary), Some(RateKey::from("invalid:x-ragmesh-principal")));
    }

    #[test]
    fn extension_key_then_peer_ip() {
        let extractor = key_from_extension().or(key_from_peer_ip());
        assert_eq!(extractor.extract(&Request::new(())), None);

        let mut request = Request::new(());
        let remote: SocketAddr = "10.1.2.3:4567".parse().expect("valid address");
        request.extensions_mut().insert(TcpConnectInfo { local_addr: None, remote_addr: Some(remote) });
        assert_eq!(extractor.extract(&request), Some(RateKey::from("peer:10.1.2.3")));

        request.extensions_mut().insert(RateKey::subject("alice"));
        assert_eq!(extractor.extract(&request), Some(RateKey::from("subject:alice")));
    }

    #[test]
    fn fn_key_sees_headers_and_extensions() {
        let extractor = key_fn(|headers, _| headers.get("x-tenant")?.to_str().ok().map(RateKey::from));
        assert_eq!(extractor.extract(&request_with_header("x-tenant", "acme")), Some(RateKey::from("acme")));
    }
}
