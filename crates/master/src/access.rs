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
//!
//! State kept here stays bounded: a subject revocation is forgotten once no token it refuses can
//! verify anymore (see [`revocation_is_spent`]), and refused join attempts are capped in number
//! and age (see [`prune_pending`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use ragmesh_auth::{
    AuthError, Capability, ContextMemo, DEFAULT_MEMO_CAPACITY, JoinTokenStore, KeyRing, KeyRingConfig, Principal,
    PublicKey, RefreshConfig, RefreshStore, VerifiedMemo, unix_now,
};
use ragmesh_config::AccessConfig;
use ragmesh_proto::v1;
use ragmesh_store::StateStore;
use tokio::sync::watch;
use tonic::metadata::AsciiMetadataValue;

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
    pub(crate) last_attempt: SystemTime,
    pub(crate) reason: String,
}

/// The master's identity and access state; one owner, shared by the services.
#[derive(Debug)]
pub struct AccessControl {
    keyring: RwLock<KeyRing>,
    /// Verifies access tokens, remembering verified ones; rebuilt with the key ring's keys.
    access_tokens: RwLock<Arc<VerifiedMemo>>,
    /// Signed contexts per caller, reused across their searches; cleared when the key changes.
    contexts: ContextMemo,
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

/// A memo verifying access tokens against `ring`'s keys at `now` (retired keys within their window).
fn access_memo(ring: &KeyRing, now: u64) -> Arc<VerifiedMemo> {
    Arc::new(VerifiedMemo::new(ring.verifier(AUDIENCE, now), DEFAULT_MEMO_CAPACITY))
}

/// Tree of revoked subjects (subject -> unix seconds, big-endian).
const REVOKED_TREE: &str = "revoked_subjects";

impl AccessControl {
    /// Loads (or creates, on first start) the signing keys from `store`, and forgets spent
    /// revocations. Blocking.
    pub fn load(store: Arc<dyn StateStore>, config: AccessConfig, tls: bool) -> Result<Self, AuthError> {
        Self::load_at(store, config, tls, unix_now())
    }

    /// [`AccessControl::load`] at `now` (unix seconds).
    fn load_at(store: Arc<dyn StateStore>, config: AccessConfig, tls: bool, now: u64) -> Result<Self, AuthError> {
        let keyring = KeyRing::load_or_generate(store.as_ref(), keyring_config(&config), now)?;
        let keys = watch::Sender::new(keyring.public_keys(now));
        let mut revoked = BTreeMap::new();
        for (subject, at) in store.scan(REVOKED_TREE)? {
            // An unreadable time revokes forever (and is never pruned): the safe reading.
            let at = <[u8; 8]>::try_from(at.as_slice()).map(u64::from_be_bytes).unwrap_or(u64::MAX);
            revoked.insert(String::from_utf8_lossy(&subject).into_owned(), at);
        }
        let horizon = revocation_horizon(&config);
        forget_revocations(store.as_ref(), &prune_revocations(&mut revoked, horizon, now))?;
        Ok(AccessControl {
            access_tokens: RwLock::new(access_memo(&keyring, now)),
            contexts: ContextMemo::new(DEFAULT_MEMO_CAPACITY),
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
            let verifier = Arc::clone(&self.access_tokens.read().unwrap_or_else(std::sync::PoisonError::into_inner));
            let principal = verifier.verify(token.trim(), now)?;
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

    /// Refuses every access token of `subject` issued until now (persisted), and forgets spent
    /// revocations of other subjects. Blocking.
    pub(crate) fn revoke_subject_tokens(&self, subject: &str) -> Result<(), MasterError> {
        self.revoke_subject_tokens_at(subject, unix_now())
    }

    /// [`AccessControl::revoke_subject_tokens`] at `now` (unix seconds).
    fn revoke_subject_tokens_at(&self, subject: &str, now: u64) -> Result<(), MasterError> {
        self.store.put(REVOKED_TREE, subject.as_bytes(), &now.to_be_bytes()).map_err(AuthError::from)?;
        let spent = {
            let mut revoked = self.revoked.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            revoked.insert(subject.to_owned(), now);
            prune_revocations(&mut revoked, revocation_horizon(&self.config), now)
        };
        tracing::warn!(security_event = "subject_revoked", subject, "access tokens of subject revoked");
        forget_revocations(self.store.as_ref(), &spent)?;
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

    /// A context token carrying `principal` to agents, valid for at least `ttl` (at most the
    /// token's own life), as the metadata value calls carry: the caller's remembered one while it
    /// lives long enough (see [`ContextMemo`]), else a fresh signature.
    pub(crate) fn context(&self, principal: &Principal, ttl: Duration) -> Result<AsciiMetadataValue, MasterError> {
        let token = self.contexts.context(&self.keyring(), principal, ttl, unix_now())?;
        AsciiMetadataValue::try_from(&*token).map_err(|_| {
            MasterError::Refused(tonic::Status::internal("the signed request context is not valid metadata"))
        })
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
        *self.access_tokens.write().unwrap_or_else(std::sync::PoisonError::into_inner) = access_memo(&ring, now);
        self.contexts.clear();
        self.keys.send_replace(ring.public_keys(now));
        tracing::info!(kid = %kid, "signing key rotated");
        Ok(kid)
    }

    /// The public keys agents verify context tokens with.
    pub(crate) fn public_keys(&self) -> Vec<v1::VerificationKey> {
        self.keyring().public_keys(unix_now()).iter().map(PublicKey::to_wire).collect()
    }

    /// Key changes, for the health streams.
    pub(crate) fn subscribe_keys(&self) -> watch::Receiver<Vec<PublicKey>> {
        self.keys.subscribe()
    }

    /// Whether agents must present a join token (false only in `--insecure` mode).
    pub(crate) fn admission_required(&self) -> bool {
        self.tls
    }

    /// Remembers a refused join attempt (within the configured count and age).
    pub(crate) fn record_pending(&self, name: &str, address: &str, reason: &str) {
        self.record_pending_at(name, address, reason, SystemTime::now());
    }

    /// [`AccessControl::record_pending`] at `now`.
    fn record_pending_at(&self, name: &str, address: &str, reason: &str, now: SystemTime) {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.insert(
            name.to_owned(),
            Pending { address: address.to_owned(), last_attempt: now, reason: reason.to_owned() },
        );
        prune_pending(&mut pending, now, self.config.pending_join_ttl, self.config.max_pending_joins);
    }

    /// Forgets a pending node (it was admitted).
    pub(crate) fn clear_pending(&self, name: &str) {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
    }

    /// Refused join attempts, the aged-out ones forgotten.
    pub(crate) fn pending(&self) -> BTreeMap<String, Pending> {
        self.pending_at(SystemTime::now())
    }

    /// [`AccessControl::pending`] at `now`.
    fn pending_at(&self, now: SystemTime) -> BTreeMap<String, Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        prune_pending(&mut pending, now, self.config.pending_join_ttl, self.config.max_pending_joins);
        pending.clone()
    }

    /// Longest access-token lifetime.
    pub(crate) fn max_ttl(&self) -> Duration {
        self.config.max_access_token_ttl
    }
}

/// The key ring's settings; its leeway is the one every access-token verifier of the master uses
/// (`--token-leeway-secs`), and it also extends a retired key's window.
fn keyring_config(config: &AccessConfig) -> KeyRingConfig {
    let mut ring = KeyRingConfig::new(ISSUER, AUDIENCE);
    ring.max_token_lifetime = config.max_access_token_ttl;
    ring.leeway = config.token_leeway;
    ring
}

/// How long after a revocation a token it refuses may still verify, in seconds: the token was
/// issued at or before the revocation, lives at most the longest access-token lifetime the master
/// issues, and is accepted for the leeway past its expiry.
fn revocation_horizon(config: &AccessConfig) -> u64 {
    config.max_access_token_ttl.as_secs().saturating_add(config.token_leeway.as_secs())
}

/// Whether a revocation made at `revoked_at` can be forgotten at `now`: no token issued until
/// then can verify anymore (`revoked_at + horizon < now`).
pub(crate) fn revocation_is_spent(revoked_at: u64, horizon: u64, now: u64) -> bool {
    revoked_at.saturating_add(horizon) < now
}

/// Drops spent revocations from `revoked`; returns their subjects (to remove from the store).
fn prune_revocations(revoked: &mut BTreeMap<String, u64>, horizon: u64, now: u64) -> Vec<String> {
    let mut spent = Vec::new();
    revoked.retain(|subject, &mut revoked_at| {
        let keep = !revocation_is_spent(revoked_at, horizon, now);
        if !keep {
            spent.push(subject.clone());
        }
        keep
    });
    spent
}

/// Removes the revocations of `spent` subjects (already dropped from memory) from the store.
fn forget_revocations(store: &dyn StateStore, spent: &[String]) -> Result<(), AuthError> {
    for subject in spent {
        store.remove(REVOKED_TREE, subject.as_bytes())?;
    }
    if !spent.is_empty() {
        tracing::info!(forgotten = spent.len(), "spent subject revocations forgotten");
    }
    Ok(())
}

/// Bounds the refused join attempts: forgets those not repeated within `ttl` of `now`, then the
/// oldest ones until at most `cap` remain.
pub(crate) fn prune_pending(pending: &mut BTreeMap<String, Pending>, now: SystemTime, ttl: Duration, cap: usize) {
    // An attempt stamped in the future (the clock went back) is kept: it is not old.
    pending.retain(|_, attempt| now.duration_since(attempt.last_attempt).map_or(true, |age| age <= ttl));
    if pending.len() <= cap {
        return;
    }
    let mut by_age: Vec<(SystemTime, String)> =
        pending.iter().map(|(name, attempt)| (attempt.last_attempt, name.clone())).collect();
    by_age.sort();
    let excess = pending.len() - cap;
    for (_, name) in by_age.into_iter().take(excess) {
        pending.remove(&name);
    }
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

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use ragmesh_store::SledStore;

    use super::*;

    /// A fixed "now" (2026-01-01T00:00:00Z).
    const T0: u64 = 1_767_225_600;

    fn config() -> AccessConfig {
        AccessConfig {
            max_access_token_ttl: Duration::from_secs(100),
            token_leeway: Duration::from_secs(10),
            max_pending_joins: 3,
            pending_join_ttl: Duration::from_secs(100),
            ..AccessConfig::default()
        }
    }

    fn store() -> (tempfile::TempDir, Arc<dyn StateStore>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open sled");
        (dir, Arc::new(store))
    }

    fn stored_subjects(store: &dyn StateStore) -> Vec<String> {
        let entries = store.scan(REVOKED_TREE).expect("scan");
        entries.into_iter().map(|(subject, _)| String::from_utf8(subject).expect("utf8")).collect()
    }

    fn held_subjects(access: &AccessControl) -> Vec<String> {
        access.revoked.read().expect("lock").keys().cloned().collect()
    }

    #[test]
    fn a_revocation_outlives_every_token_it_refuses() {
        let config = config();
        let horizon = revocation_horizon(&config);
        assert_eq!(horizon, 110);
        // The longest-lived token the revocation refuses: issued in the second of the revocation.
        let ring = KeyRing::generate(keyring_config(&config), T0).expect("ring");
        let (token, _) =
            ring.issue("alice", "acme", [Capability::Search], config.max_access_token_ttl, T0).expect("issue");
        let verifier = ring.verifier(AUDIENCE, T0);
        assert!(verifier.verify(token.as_str(), T0 + horizon - 1).is_ok(), "still verifies (leeway)");
        assert!(!revocation_is_spent(T0, horizon, T0 + horizon - 1), "so the revocation is kept");
        assert!(matches!(verifier.verify(token.as_str(), T0 + horizon), Err(AuthError::Expired { .. })));
        assert!(!revocation_is_spent(T0, horizon, T0 + horizon), "kept one more second, to be safe");
        assert!(revocation_is_spent(T0, horizon, T0 + horizon + 1));
        assert!(!revocation_is_spent(u64::MAX, horizon, u64::MAX), "an unreadable time revokes forever");
    }

    #[test]
    fn spent_revocations_are_pruned_on_write_and_at_startup_in_memory_and_in_sled() {
        let (_dir, store) = store();
        let access = AccessControl::load_at(store.clone(), config(), false, T0).expect("load");
        access.revoke_subject_tokens_at("alice", T0).expect("revoke");
        access.revoke_subject_tokens_at("bob", T0 + 50).expect("revoke");
        access.revoke_subject_tokens_at("carol", T0 + 110).expect("revoke");
        assert_eq!(held_subjects(&access), ["alice", "bob", "carol"], "alice's longest token still verifies");

        access.revoke_subject_tokens_at("dave", T0 + 111).expect("revoke");
        assert_eq!(held_subjects(&access), ["bob", "carol", "dave"], "alice's revocation is spent");
        assert_eq!(stored_subjects(store.as_ref()), ["bob", "carol", "dave"]);

        // A restart long after bob's revocation forgets it without any write.
        drop(access);
        let access = AccessControl::load_at(store.clone(), config(), false, T0 + 161).expect("reload");
        assert_eq!(held_subjects(&access), ["carol", "dave"]);
        assert_eq!(stored_subjects(store.as_ref()), ["carol", "dave"]);
        assert_eq!(access.revoked.read().expect("lock").get("dave"), Some(&(T0 + 111)));
    }

    #[test]
    fn memos_keep_revocations_and_rotations_in_force() {
        let (_dir, store) = store();
        let access = AccessControl::load(store, config(), false).expect("load");
        let (token, _) =
            access.issue("alice", "acme", vec![Capability::Search], Some(Duration::from_secs(60))).expect("issue");
        let bearer = format!("Bearer {token}");
        let alice = access.authenticate_parts(Some(Ok(&bearer)), None).expect("verified");
        assert_eq!(access.authenticate_parts(Some(Ok(&bearer)), None).expect("remembered"), alice);

        let context = access.context(&alice, Duration::from_secs(5)).expect("context");
        assert_eq!(access.context(&alice, Duration::from_secs(5)).expect("context"), context, "reused");
        let kid = |value: &AsciiMetadataValue| {
            ragmesh_auth::parse_unverified_header(value.to_str().expect("ascii")).expect("header").kid
        };
        let new_kid = access.rotate().expect("rotate");
        let after = access.context(&alice, Duration::from_secs(5)).expect("context");
        assert_ne!(after, context, "a rotation forgets the contexts signed with the old key");
        assert_eq!(kid(&after).as_deref(), Some(new_kid.as_str()));
        assert_ne!(kid(&context).as_deref(), Some(new_kid.as_str()));

        access.revoke_subject_tokens("alice").expect("revoke");
        let refused = access.authenticate_parts(Some(Ok(&bearer)), None).expect_err("revoked");
        assert!(matches!(refused, MasterError::Revoked { .. }), "{refused:?}");
    }

    #[test]
    fn pending_joins_are_capped_oldest_first() {
        let (_dir, store) = store();
        let access = AccessControl::load_at(store, config(), true, T0).expect("load");
        let t0 = UNIX_EPOCH + Duration::from_secs(T0);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            access.record_pending_at(name, "10.0.0.1:7401", "no join token", at(i as u64));
        }
        let names = |now| access.pending_at(now).into_keys().collect::<Vec<_>>();
        assert_eq!(names(at(3)), ["b", "c", "d"], "the cap is 3: the oldest attempt (a) went first");

        // A repeated attempt is young again: c is now the oldest.
        access.record_pending_at("b", "10.0.0.1:7401", "join token expired", at(4));
        access.record_pending_at("e", "10.0.0.2:7401", "no join token", at(5));
        assert_eq!(names(at(5)), ["b", "d", "e"]);
        assert_eq!(access.pending_at(at(5))["b"].reason, "join token expired");
    }

    #[test]
    fn pending_joins_age_out() {
        let (_dir, store) = store();
        let access = AccessControl::load_at(store, config(), true, T0).expect("load");
        let t0 = UNIX_EPOCH + Duration::from_secs(T0);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        access.record_pending_at("old", "10.0.0.1:7401", "no join token", at(0));
        access.record_pending_at("new", "10.0.0.2:7401", "no join token", at(50));
        let names = |now| access.pending_at(now).into_keys().collect::<Vec<_>>();
        assert_eq!(names(at(100)), ["new", "old"], "100 s old is within the 100 s ttl");
        assert_eq!(names(at(101)), ["new"], "older than the ttl: forgotten when listed");
        assert!(names(at(151)).is_empty());

        // Written with a clock that later went back: kept, not treated as old.
        access.record_pending_at("future", "10.0.0.3:7401", "no join token", at(500));
        assert_eq!(names(at(200)), ["future"]);
    }
}
