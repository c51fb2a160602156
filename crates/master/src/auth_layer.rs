//! Authentication as a tower layer. It runs before routing, verifies the caller once, and
//! leaves the outcome in the request extensions: handlers check capabilities against it, and
//! the rate limiter (the next layer) keys on it, so a principal's budget follows its verified
//! identity, never a claim it could forge.
//!
//! Rate keys: `subject:<tenant>/<subject>` for token holders, `operator:<name>` for operator
//! certificates, `node:<name>` for other certificates (agents), `peer:<ip>` for anything else
//! (including callers whose token was refused, so garbage tokens cannot dodge the limit).

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use ragmesh_stack::rate_limit::RateKey;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::access::{AccessControl, Caller};

/// Layer adding [`Auth`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    access: Arc<OnceLock<Arc<AccessControl>>>,
}

impl AuthLayer {
    /// Authenticates with `access` once it is loaded (until then requests pass untouched and
    /// the handlers answer UNAVAILABLE).
    pub(crate) fn new(access: Arc<OnceLock<Arc<AccessControl>>>) -> Self {
        AuthLayer { access }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, access: self.access.clone() }
    }
}

/// Authenticates each request; see the module docs.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    access: Arc<OnceLock<Arc<AccessControl>>>,
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(access) = self.access.get() {
            let (caller, key) = authenticate(access, &request);
            request.extensions_mut().insert(caller);
            if let Some(key) = key {
                request.extensions_mut().insert(key);
            }
        }
        self.inner.call(request)
    }
}

fn authenticate<B>(access: &AccessControl, request: &http::Request<B>) -> (Caller, Option<RateKey>) {
    let authorization = request.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().map_err(drop));
    let peer = peer_identity(request);
    let outcome = access.authenticate_parts(authorization, peer.clone());
    let key = match (&outcome, &peer) {
        (Ok(principal), _) if !principal.token_id.is_empty() => {
            Some(RateKey::subject(&format!("{}/{}", principal.tenant, principal.subject)))
        }
        (_, Some(identity)) if access.is_operator(&identity.name) => {
            Some(RateKey::new(format!("operator:{}", identity.name)))
        }
        (_, Some(identity)) => Some(RateKey::node(&identity.name)),
        // No certificate (plaintext mode) or an unusable one: the rate limiter falls back to the peer address.
        _ => None,
    };
    (Caller(outcome.map_err(tonic::Status::from)), key)
}

fn peer_identity<B>(request: &http::Request<B>) -> Option<ragmesh_tls::PeerIdentity> {
    let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    ragmesh_tls::peer_identity(&certs).ok()
}
