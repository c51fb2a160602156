//! Identity and access on the master: the one place a request becomes a [`Principal`].
//!
//! A caller is, in this order:
//! 1. the subject of a bearer access token (`authorization: Bearer <jwt>`, EdDSA, verified
//!    against the master's key ring);
//! 2. an operator, when its mTLS client certificate names one of `--operators`;
//! 3. in `--insecure` development mode only, an operator by default.
//!
//! Anything else is UNAUTHENTICATED. The master forwards the caller to agents as a short-lived
//! context token signed with the same key ring, so agents filter by tenant without trusting any
//! request field and without a shared secret.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ragmesh_auth::{
    AuthError, Capability, JoinTokenStore, KeyRing, KeyRingConfig, Principal, PublicKey, RefreshConfig, RefreshStore,
    unix_now,
};
use ragmesh_config::AccessConfig;
use ragmesh_proto::v1;
use ragmesh_store::StateStore;
use tokio::sync::watch;

use crate::error::MasterError;

/// `iss` of every token the master signs.
pub const ISSUER: &str = "ragmesh-master";
/// `aud` of access tokens for the master's API.
pub const AUDIENCE: &str = "ragmesh";
/// Metadata key carrying the signed caller context to agents.
pub const CONTEXT_METADATA: &str = "x-ragmesh-context";
/// Tenant recorded for operators (they read every tenant's documents).
const OPERATOR_TENANT: &str = "operators";

/// The outcome of authentication, left in the request extensions by [`crate::auth_layer`] so
/// that it runs once per call (and before the rate limiter, which keys on it).
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Result<Principal, tonic::Status>);

/// A refused join attempt, kept in memory for `ListPendingNodes`.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) address: String,
    pub(crate) last_attempt: std::time::SystemTime,
    pub(crate) reason: String,
}

/// The master's identity and access state; one owner, shared by the services.
#[derive(Debug)]
pub struct AccessControl {
    keyring: RwLock<KeyRing>,
    store: Arc<dyn StateStore>,
    pub(crate) refresh: RefreshStore,
    pub(crate) joins: JoinTokenStore,
    config: AccessConfig,
    tls: bool,
    keys: watch::Sender<Vec<PublicKey>>,
    pending: Mutex<BTreeMap<String, Pending>>,
    /// Subjects revoked by an operator, and when: their tokens issued until then are refused.
    revoked: RwLock<BTreeMap<String, u64>>,
}

/// Tree of revoked subjects (subject -> unix seconds, big-endian).
const REVOKED_TREE: &str = "revoked_subjects";

impl AccessControl {
    /// Loads (or creates, on first start) the signing keys from `store`. Blocking.
    pub fn load(store: Arc<dyn StateStore>, config: AccessConfig, tls: bool) -> Result<Self, AuthError> {
        let now = unix_now();
        let keyring = KeyRing::load_or_generate(store.as_ref(), keyring_config(&config), now)?;
        let keys = watch::Sender::new(keyring.public_keys(now));
        let mut revoked = BTreeMap::new();
        for (subject, at) in store.scan(REVOKED_TREE)? {
            let at = <[u8; 8]>::try_from(at.as_slice()).map(u64::from_be_bytes).unwrap_or(u64::MAX);
            revoked.insert(String::from_utf8_lossy(&subject).into_owned(), at);
        }
        Ok(AccessControl {
            revoked: RwLock::new(revoked),
            refresh: RefreshStore::new(store.clone(), RefreshConfig { ttl: config.refresh_token_ttl }),
            joins: JoinTokenStore::new(store.clone()),
            keyring: RwLock::new(keyring),
            store,
            config,
            tls,
            keys,
            pending: Mutex::new(BTreeMap::new()),
        })
    }

    fn keyring(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        self.keyring.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Who is calling. See the module docs for the order of credentials.
    pub(crate) fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Principal, MasterError> {
        if let Some(caller) = request.extensions().get::<Caller>() {
            return caller.0.clone().map_err(MasterError::Refused);
        }
        let authorization = request.metadata().get("authorization").map(|v| v.to_str().map_err(drop));
        self.authenticate_parts(authorization, ragmesh_tls::peer_identity_of(request))
    }

    /// [`AccessControl::authenticate`] over the parts of a request: the `authorization` header
    /// (`Err` when it is not visible ASCII) and the peer certificate's identity.
    pub(crate) fn authenticate_parts(
        &self,
        authorization: Option<Result<&str, ()>>,
        peer: Option<ragmesh_tls::PeerIdentity>,
    ) -> Result<Principal, MasterError> {
        if let Some(value) = authorization {
            let token = value
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| MasterError::BadCredentials("authorization must be `Bearer <access token>`".into()))?;
            let now = unix_now();
            let principal = self.keyring().verifier(AUDIENCE, now).verify(token.trim(), now)?;
            let revoked = self.revoked.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(&revoked_at) = revoked.get(&principal.subject)
                && principal.issued_at <= revoked_at
            {
                return Err(MasterError::Revoked { subject: principal.subject, revoked_at });
            }
            return Ok(principal);
        }
        if let Some(identity) = peer {
            if self.config.operators.contains(&identity.name) {
                return Ok(operator(&identity.name));
            }
            return Err(MasterError::NoCredentials { certificate: Some(identity.name) });
        }
        if !self.tls {
            return Ok(operator("insecure"));
        }
        Err(MasterError::NoCredentials { certificate: None })
    }

    /// Refuses every access token of `subject` issued until now (persisted). Blocking.
    pub(crate) fn revoke_subject_tokens(&self, subject: &str) -> Result<(), MasterError> {
        let now = unix_now();
        self.store.put(REVOKED_TREE, subject.as_bytes(), &now.to_be_bytes()).map_err(AuthError::from)?;
        self.revoked.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(subject.to_owned(), now);
        tracing::warn!(security_event = "subject_revoked", subject, "access tokens of subject revoked");
        Ok(())
    }

    /// Whether `name` is an operator certificate.
    pub(crate) fn is_operator(&self, name: &str) -> bool {
        self.config.operators.contains(name)
    }

    /// Authenticates and checks one capability.
    pub(crate) fn require<T>(
        &self,
        request: &tonic::Request<T>,
        capability: Capability,
    ) -> Result<Principal, MasterError> {
        let principal = self.authenticate(request)?;
        principal.require(capability)?;
        Ok(principal)
    }

    /// A context token carrying `principal` to agents, valid for `ttl` (at most the token's own life).
    pub(crate) fn context(&self, principal: &Principal, ttl: Duration) -> Result<String, MasterError> {
        let ttl = ttl.max(Duration::from_secs(1));
        Ok(self.keyring().sign_context(principal, ttl, unix_now())?.into_string())
    }

    /// Issues an access token.
    pub(crate) fn issue(
        &self,
        subject: &str,
        tenant: &str,
        caps: Vec<Capability>,
        ttl: Option<Duration>,
    ) -> Result<(String, ragmesh_auth::Claims), MasterError> {
        let ttl = ttl.unwrap_or(self.config.access_token_ttl);
        let (token, claims) = self.keyring().issue(subject, tenant, caps, ttl, unix_now())?;
        Ok((token.into_string(), claims))
    }

    /// Starts signing with a new key, persists the ring, and tells every agent.
    pub(crate) fn rotate(&self) -> Result<String, MasterError> {
        let now = unix_now();
        let mut ring = self.keyring.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let kid = ring.rotate(now)?;
        ring.prune(now);
        ring.save(self.store.as_ref())?;
        self.keys.send_replace(ring.public_keys(now));
        tracing::info!(kid = %kid, "signing key rotated");
        Ok(kid)
    }

    /// The public keys agents verify context tokens with.
    pub(crate) fn public_keys(&self) -> Vec<v1::VerificationKey> {
        self.keyring().public_keys(unix_now()).iter().map(verification_key).collect()
    }

    /// Key changes, for the health streams.
    pub(crate) fn subscribe_keys(&self) -> watch::Receiver<Vec<PublicKey>> {
        self.keys.subscribe()
    }

    /// Whether agents must present a join token (false only in `--insecure` mode).
    pub(crate) fn admission_required(&self) -> bool {
        self.tls
    }

    /// Remembers a refused join attempt.
    pub(crate) fn record_pending(&self, name: &str, address: &str, reason: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.insert(
            name.to_owned(),
            Pending {
                address: address.to_owned(),
                last_attempt: std::time::SystemTime::now(),
                reason: reason.to_owned(),
            },
        );
    }

    /// Forgets a pending node (it was admitted).
    pub(crate) fn clear_pending(&self, name: &str) {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
    }

    /// Refused join attempts.
    pub(crate) fn pending(&self) -> BTreeMap<String, Pending> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Longest access-token lifetime.
    pub(crate) fn max_ttl(&self) -> Duration {
        self.config.max_access_token_ttl
    }
}

fn keyring_config(config: &AccessConfig) -> KeyRingConfig {
    let mut ring = KeyRingConfig::new(ISSUER, AUDIENCE);
    ring.max_token_lifetime = config.max_access_token_ttl;
    ring
}

/// The principal of an operator certificate (or of any caller in `--insecure` mode).
fn operator(name: &str) -> Principal {
    Principal {
        subject: format!("operator:{name}"),
        tenant: OPERATOR_TENANT.to_owned(),
        capabilities: Capability::ALL.into_iter().collect(),
        token_id: String::new(),
        // Bounds the context tokens derived from this principal.
        expires_at: unix_now().saturating_add(3600),
        issued_at: unix_now(),
    }
}

/// Wire form of a public key.
pub(crate) fn verification_key(key: &PublicKey) -> v1::VerificationKey {
    v1::VerificationKey {
        kid: key.kid().to_owned(),
        algorithm: key.alg().to_owned(),
        public_key: key.raw().to_vec(),
        verify_until: key.verify_until().unwrap_or(0),
    }
}
