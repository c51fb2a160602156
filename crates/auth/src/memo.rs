//! Memos that spare the Ed25519 work on the search path, without changing what is accepted.
//!
//! - [`VerifiedMemo`]: a [`Verifier`] that remembers the tokens it has verified. A token seen
//!   again, byte for byte, yields the same [`Principal`] without checking its signature again; its
//!   expiry is still checked on every use, with the verifier's leeway, exactly as a full check
//!   would. A memo belongs to one key set: build a new one when the keys change (a rotation, an
//!   agent receiving new keys), so a key withdrawn from the set takes its tokens with it.
//! - [`ContextMemo`]: the master's signed contexts per caller. A caller searching again within
//!   [`CONTEXT_REUSE`] forwards the same context token instead of a fresh signature; a context is
//!   reused only while it outlives the request's own budget, and is forgotten when the signing
//!   key changes (call [`ContextMemo::clear`]).
//!
//! Both are bounded ([`ExpiringMap`]): past their capacity they drop expired entries, and if all
//! are alive they start over empty, which costs a signature or a verification per entry, never a
//! wrong answer. A verified token costs about 60 µs to check and a context about 27 µs to sign
//! (issue 11); a memo hit costs a hash of the token and a copy of the principal.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::{AuthError, Capability, KeyRing, Principal, Verifier};

/// How long a context the master signs for reuse stays valid: later searches of the same caller
/// within this window forward the same token. It bounds how long a context seen by an agent
/// could be replayed by a holder of a mesh certificate; the verifiers' leeway (30 s) adds to it
/// as it does to every token.
pub const CONTEXT_REUSE: Duration = Duration::from_secs(30);

/// Entries each memo holds at most by default: a token or context is a few hundred bytes, so a
/// full memo stays around a megabyte.
pub const DEFAULT_MEMO_CAPACITY: usize = 4096;

/// A bounded map whose entries carry a unix-seconds expiry.
#[derive(Debug)]
pub struct ExpiringMap<K, V> {
    entries: Mutex<HashMap<K, (V, u64)>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> ExpiringMap<K, V> {
    /// An empty map holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// The value under `key` if `alive(expires)` holds for it.
    pub fn get<Q>(&self, key: &Q, alive: impl FnOnce(u64) -> bool) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(key).filter(|(_, expires)| alive(*expires)).map(|(value, _)| value.clone())
    }

    /// Stores `value` under `key` until `expires`; when full, first drops the entries expired at
    /// `now`, and if none were, every entry.
    pub fn insert(&self, key: K, value: V, expires: u64, now: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, at)| *at > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, expires));
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether the map holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A [`Verifier`] remembering the tokens it verified (see the module docs).
#[derive(Debug)]
pub struct VerifiedMemo {
    verifier: Verifier,
    verified: ExpiringMap<Box<str>, Principal>,
}

impl VerifiedMemo {
    /// Remembers up to `capacity` tokens verified by `verifier`.
    pub fn new(verifier: Verifier, capacity: usize) -> Self {
        Self { verifier, verified: ExpiringMap::new(capacity) }
    }

    /// The verifier behind the memo.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// [`Verifier::verify`], answered from the memo when `token` was verified before and has not
    /// expired at `now` (with the verifier's leeway).
    pub fn verify(&self, token: &str, now: u64) -> Result<Principal, AuthError> {
        let leeway = self.verifier.config().leeway.as_secs();
        // The same test as a full verification's: valid while now < exp + leeway.
        let alive = |exp: u64| u128::from(now) < u128::from(exp) + u128::from(leeway);
        if let Some(principal) = self.verified.get(token, alive) {
            return Ok(principal);
        }
        let principal = self.verifier.verify(token, now)?;
        self.verified.insert(token.into(), principal.clone(), principal.expires_at, now);
        Ok(principal)
    }

    /// Tokens remembered now.
    pub fn len(&self) -> usize {
        self.verified.len()
    }

    /// Whether no token is remembered.
    pub fn is_empty(&self) -> bool {
        self.verified.is_empty()
    }
}

/// What a context token says about its caller: two principals with the same key get the same
/// context.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ContextKey {
    subject: String,
    tenant: String,
    capabilities: BTreeSet<Capability>,
    /// The caller's own token expiry, which caps the context's.
    expires_at: u64,
}

/// The master's signed contexts per caller (see the module docs).
#[derive(Debug)]
pub struct ContextMemo {
    signed: ExpiringMap<ContextKey, Arc<str>>,
}

impl ContextMemo {
    /// Remembers up to `capacity` callers' contexts.
    pub fn new(capacity: usize) -> Self {
        Self { signed: ExpiringMap::new(capacity) }
    }

    /// A context token for `principal` valid at least `ttl` from `now` (or until the principal's
    /// own expiry, if sooner): a remembered one if it lives long enough, else a fresh one signed
    /// by `ring` for the longer of `ttl` and [`CONTEXT_REUSE`] (within the ring's maximum).
    pub fn context(
        &self,
        ring: &KeyRing,
        principal: &Principal,
        ttl: Duration,
        now: u64,
    ) -> Result<Arc<str>, AuthError> {
        let needed = ttl.max(Duration::from_secs(1));
        let wanted_until = now.saturating_add(needed.as_secs()).min(principal.expires_at);
        let key = ContextKey {
            subject: principal.subject.clone(),
            tenant: principal.tenant.clone(),
            capabilities: principal.capabilities.clone(),
            expires_at: principal.expires_at,
        };
        if let Some(token) = self.signed.get(&key, |exp| exp >= wanted_until && exp > now) {
            return Ok(token);
        }
        let lifetime = needed.max(CONTEXT_REUSE.min(ring.config().max_token_lifetime));
        let token: Arc<str> = ring.sign_context(principal, lifetime, now)?.into_string().into();
        let expires = now.saturating_add(lifetime.as_secs()).min(principal.expires_at);
        self.signed.insert(key, Arc::clone(&token), expires, now);
        Ok(token)
    }

    /// Forgets every context (the signing key changed).
    pub fn clear(&self) {
        self.signed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CONTEXT_AUDIENCE, KeyRingConfig};

    const NOW: u64 = 1_800_000_000;

    fn ring() -> KeyRing {
        KeyRing::generate(KeyRingConfig::new("master", "ragmesh"), NOW).expect("ring")
    }

    fn principal(subject: &str, expires_at: u64) -> Principal {
        Principal {
            subject: subject.into(),
            tenant: "acme".into(),
            capabilities: [Capability::Search].into(),
            token_id: format!("jti-{subject}"),
            expires_at,
            issued_at: NOW - 10,
        }
    }

    #[test]
    fn a_remembered_token_still_expires_with_the_leeway() {
        let ring = ring();
        let (token, _) =
            ring.issue("alice", "acme", [Capability::Search], Duration::from_secs(60), NOW).expect("issue");
        let memo = VerifiedMemo::new(ring.verifier("ragmesh", NOW), 8);
        let first = memo.verify(token.as_str(), NOW).expect("fresh token");
        assert_eq!(memo.len(), 1);
        assert_eq!(memo.verify(token.as_str(), NOW + 1).expect("remembered"), first);
        let leeway = memo.verifier().config().leeway.as_secs();
        assert!(memo.verify(token.as_str(), NOW + 60 + leeway - 1).is_ok(), "within the leeway");
        let expired = memo.verify(token.as_str(), NOW + 60 + leeway).expect_err("past exp + leeway");
        assert!(matches!(expired, AuthError::Expired { .. }), "{expired:?}");
    }

    #[test]
    fn a_token_differing_in_one_byte_is_verified_not_remembered() {
        let ring = ring();
        let (token, _) =
            ring.issue("alice", "acme", [Capability::Search], Duration::from_secs(60), NOW).expect("issue");
        let memo = VerifiedMemo::new(ring.verifier("ragmesh", NOW), 8);
        memo.verify(token.as_str(), NOW).expect("fresh token");
        let mut forged = token.as_str().to_owned();
        let last = forged.pop().expect("non-empty");
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(memo.verify(&forged, NOW).is_err(), "a changed signature must be checked, not looked up");
        assert_eq!(memo.len(), 1, "a refused token is not remembered");
    }

    #[test]
    fn a_memo_of_other_keys_refuses_what_another_memo_remembers() {
        let (old, new) = (ring(), ring());
        let (token, _) = old.issue("alice", "acme", [Capability::Search], Duration::from_secs(60), NOW).expect("issue");
        let before = VerifiedMemo::new(old.verifier("ragmesh", NOW), 8);
        before.verify(token.as_str(), NOW).expect("signed by the old key");
        let after = VerifiedMemo::new(new.verifier("ragmesh", NOW), 8);
        assert!(after.verify(token.as_str(), NOW).is_err(), "a new key set starts with an empty memo");
    }

    #[test]
    fn contexts_are_reused_while_they_outlive_the_budget() {
        let ring = ring();
        let memo = ContextMemo::new(8);
        let alice = principal("alice", NOW + 3600);
        let first = memo.context(&ring, &alice, Duration::from_secs(5), NOW).expect("context");
        let again = memo.context(&ring, &alice, Duration::from_secs(5), NOW + 20).expect("context");
        assert_eq!(first, again, "25 s left of 30 cover a 5 s budget");
        let renewed = memo.context(&ring, &alice, Duration::from_secs(5), NOW + 26).expect("context");
        assert_ne!(first, renewed, "4 s left do not cover 5 s");
        let long = memo.context(&ring, &alice, Duration::from_secs(120), NOW + 26).expect("context");
        assert_ne!(renewed, long, "a budget longer than the reuse window gets its own token");
        let verifier = ring.verifier(CONTEXT_AUDIENCE, NOW);
        let claims = verifier.verify(&long, NOW + 26).expect("the context verifies");
        assert!(claims.expires_at >= NOW + 26 + 120);
        let bob =
            memo.context(&ring, &principal("bob", NOW + 3600), Duration::from_secs(5), NOW + 26).expect("context");
        assert_eq!(verifier.verify(&bob, NOW + 26).expect("verify").subject, "bob", "callers never share a context");
    }

    #[test]
    fn a_context_never_outlives_its_caller() {
        let ring = ring();
        let memo = ContextMemo::new(8);
        let short = principal("alice", NOW + 10);
        let token = memo.context(&ring, &short, Duration::from_secs(5), NOW).expect("context");
        let verifier = ring.verifier(CONTEXT_AUDIENCE, NOW);
        assert_eq!(verifier.verify(&token, NOW).expect("verify").expires_at, NOW + 10);
        // At NOW + 8 the remembered context (exp NOW + 10) still covers what the caller has left.
        assert_eq!(memo.context(&ring, &short, Duration::from_secs(5), NOW + 8).expect("context"), token);
        memo.clear();
        assert_ne!(memo.context(&ring, &short, Duration::from_secs(5), NOW + 8).expect("context"), token, "cleared");
    }

    #[test]
    fn a_full_map_drops_expired_entries_then_everything() {
        let map = ExpiringMap::new(2);
        map.insert("a", 1, NOW + 1, NOW);
        map.insert("b", 2, NOW + 100, NOW);
        map.insert("c", 3, NOW + 100, NOW + 5); // "a" expired: dropped
        assert_eq!((map.len(), map.get("a", |_| true), map.get("b", |_| true)), (2, None, Some(2)));
        map.insert("d", 4, NOW + 100, NOW + 5); // none expired: start over
        assert_eq!((map.len(), map.get("b", |_| true), map.get("d", |_| true)), (1, None, Some(4)));
        map.insert("d", 5, NOW + 100, NOW + 5);
        assert_eq!(map.get("d", |exp| exp > NOW + 200), None, "the caller decides what is alive");
    }
}
