//! [`KeyRing`], the master's signing keys: the current key signs access and context tokens,
//! retired keys keep verifying until every token they signed has expired, so rotation needs no
//! downtime. A plain struct: the master owns it, persists it with [`KeyRing::save`] after each
//! change and publishes [`KeyRing::public_keys`] to agents.

use std::time::Duration;

use ragmesh_store::StateStore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use crate::claims::check_name;
use crate::crypto::{b64url_decode, b64url_encode, random_b64url};
use crate::verifier::DEFAULT_LEEWAY;
use crate::{
    AccessToken, AuthError, Capability, Claims, ContextToken, Principal, PublicKey, SigningKey, Verifier,
    VerifierConfig,
};

/// Audience of forwarded request context (master → agent); access tokens never carry it, so an
/// access token cannot pass as context and vice versa.
pub const CONTEXT_AUDIENCE: &str = "ragmesh-agent";
/// Default lifetime of a context token: enough for one forwarded request.
pub const DEFAULT_CONTEXT_TTL: Duration = Duration::from_secs(30);
/// Default lifetime of an access token.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Default maximum lifetime of any token the ring signs (and so how long a retired key lingers).
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// State tree and key of the persisted ring.
const KEYS_TREE: &str = "signing_keys";
const KEYS_KEY: &[u8] = b"keyring";

/// Issuing parameters of a [`KeyRing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRingConfig {
    /// `iss` of every token: the master's name.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// Longest lifetime a token may be issued with; a retired key verifies for this long (plus the
    /// leeway) after its retirement.
    pub max_token_lifetime: Duration,
    /// Clock-skew allowance, added to a retired key's window and used by [`KeyRing::verifier`].
    pub leeway: Duration,
}

impl KeyRingConfig {
    /// Issues as `issuer` for `audience`, with default lifetimes.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            max_token_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
            leeway: DEFAULT_LEEWAY,
        }
    }
}

/// A key that no longer signs but still verifies until `verify_until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredKey {
    /// The public key, with `verify_until` set.
    pub public: PublicKey,
    /// When it stopped signing, unix seconds.
    pub retired_at: u64,
}

/// The master's signing keys: one current, some retired.
#[derive(Debug)]
pub struct KeyRing {
    config: KeyRingConfig,
    current: SigningKey,
    current_since: u64,
    retired: Vec<RetiredKey>,
}

impl KeyRing {
    /// A ring whose current key is `key`, in use since `now`.
    pub fn new(config: KeyRingConfig, key: SigningKey, now: u64) -> Self {
        Self { config, current: key, current_since: now, retired: Vec::new() }
    }

    /// A ring with a freshly generated key.
    pub fn generate(config: KeyRingConfig, now: u64) -> Result<Self, AuthError> {
        Ok(Self::new(config, SigningKey::generate()?, now))
    }

    /// Its configuration.
    pub fn config(&self) -> &KeyRingConfig {
        &self.config
    }

    /// Id of the key that signs new tokens.
    pub fn current_kid(&self) -> &str {
        self.current.kid()
    }

    /// Retired keys still held (call [`Self::prune`] to drop expired ones).
    pub fn retired(&self) -> &[RetiredKey] {
        &self.retired
    }

    /// Replaces the current key with a fresh one; returns the new kid. The old key's private half
    /// is dropped; its public half verifies until `now + max_token_lifetime + leeway`.
    pub fn rotate(&mut self, now: u64) -> Result<String, AuthError> {
        self.rotate_to(SigningKey::generate()?, now);
        Ok(self.current.kid().to_owned())
    }

    /// Replaces the current key with `key` (see [`Self::rotate`]).
    pub fn rotate_to(&mut self, key: SigningKey, now: u64) {
        let window = self.config.max_token_lifetime.as_secs().saturating_add(self.config.leeway.as_secs());
        let old = std::mem::replace(&mut self.current, key);
        let retired = RetiredKey {
            public: old.public_key().with_verify_until(Some(now.saturating_add(window))),
            retired_at: now,
        };
        self.current_since = now;
        let new_kid = self.current.kid().to_owned();
        self.retired.retain(|r| r.public.kid() != new_kid && r.public.kid() != retired.public.kid());
        if retired.public.kid() != new_kid {
            self.retired.push(retired);
        }
    }

    /// Drops retired keys whose window ended before `now`; returns how many.
    pub fn prune(&mut self, now: u64) -> usize {
        let before = self.retired.len();
        self.retired.retain(|r| r.public.is_acceptable_at(now));
        before - self.retired.len()
    }

    /// The keys verifiers should hold at `now`: the current one and retired ones within their window.
    pub fn public_keys(&self, now: u64) -> Vec<PublicKey> {
        let mut keys = vec![self.current.public_key()];
        for retired in &self.retired {
            if retired.public.is_acceptable_at(now) {
                keys.push(retired.public.clone());
            }
        }
        keys
    }

    /// A verifier over [`Self::public_keys`] expecting this ring's issuer and `audience`.
    pub fn verifier(&self, audience: impl Into<String>, now: u64) -> Verifier {
        let config = VerifierConfig {
            issuer: self.config.issuer.clone(),
            audience: audience.into(),
            leeway: self.config.leeway,
        };
        Verifier::new(self.public_keys(now), config)
    }

    /// Issues an access token for `subject` of `tenant` with `caps`, valid for `ttl` from `now`.
    pub fn issue(
        &self,
        subject: &str,
        tenant: &str,
        caps: impl IntoIterator<Item = Capability>,
        ttl: Duration,
        now: u64,
    ) -> Result<(AccessToken, Claims), AuthError> {
        check_name("subject", subject)?;
        check_name("tenant", tenant)?;
        let ttl = self.check_ttl(ttl)?;
        let mut caps: Vec<Capability> = caps.into_iter().collect();
        caps.sort_unstable();
        caps.dedup();
        let claims = Claims {
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: subject.to_owned(),
            exp: now.saturating_add(ttl),
            iat: now,
            nbf: None,
            jti: random_b64url::<16>()?,
            tenant: tenant.to_owned(),
            caps,
        };
        let token = self.current.sign(&claims)?;
        Ok((AccessToken::new(token), claims))
    }

    /// Signs `principal`'s identity for forwarding to agents (audience [`CONTEXT_AUDIENCE`]).
    /// It expires after `ttl` or with the principal's own token, whichever comes first.
    pub fn sign_context(&self, principal: &Principal, ttl: Duration, now: u64) -> Result<ContextToken, AuthError> {
        let ttl = self.check_ttl(ttl)?;
        let claims = Claims {
            iss: self.config.issuer.clone(),
            aud: CONTEXT_AUDIENCE.to_owned(),
            sub: principal.subject.clone(),
            exp: now.saturating_add(ttl).min(principal.expires_at),
            iat: now,
            nbf: None,
            jti: random_b64url::<16>()?,
            tenant: principal.tenant.clone(),
            caps: principal.capabilities.iter().copied().collect(),
        };
        Ok(ContextToken::new(self.current.sign(&claims)?))
    }

    fn check_ttl(&self, ttl: Duration) -> Result<u64, AuthError> {
        let requested = ttl.as_secs();
        let max = self.config.max_token_lifetime.as_secs();
        if requested == 0 {
            return Err(AuthError::InvalidInput { field: "ttl", problem: "must be at least one second".into() });
        }
        if requested > max {
            return Err(AuthError::TtlTooLong { requested, max });
        }
        Ok(requested)
    }

    /// Writes the ring to `store` (tree `signing_keys`). The current private key is stored as
    /// PKCS#8 PEM, so the store must be as private as any key file; retired keys are stored public only.
    pub fn save(&self, store: &dyn StateStore) -> Result<(), AuthError> {
        let stored = StoredKeyRing {
            version: 1,
            current_pkcs8_pem: self.current.to_pkcs8_pem().to_string(),
            current_since: self.current_since,
            retired: self
                .retired
                .iter()
                .map(|r| StoredRetiredKey {
                    kid: r.public.kid().to_owned(),
                    public_key: b64url_encode(r.public.raw()),
                    retired_at: r.retired_at,
                    verify_until: r.public.verify_until().unwrap_or(r.retired_at),
                })
                .collect(),
        };
        let bytes = Zeroizing::new(serde_json::to_vec(&stored).map_err(|e| corrupt(e.to_string()))?);
        store.put(KEYS_TREE, KEYS_KEY, &bytes)?;
        Ok(())
    }

    /// Reads the ring saved in `store`, if any.
    pub fn load(store: &dyn StateStore, config: KeyRingConfig) -> Result<Option<Self>, AuthError> {
        let Some(bytes) = store.get(KEYS_TREE, KEYS_KEY)? else {
            return Ok(None);
        };
        let bytes = Zeroizing::new(bytes);
        let stored: StoredKeyRing = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if stored.version != 1 {
            return Err(corrupt(format!("unsupported version {}", stored.version)));
        }
        let current = SigningKey::from_pkcs8_pem(&stored.current_pkcs8_pem).map_err(|e| corrupt(e.to_string()))?;
        let mut retired = Vec::with_capacity(stored.retired.len());
        for key in &stored.retired {
            let raw = b64url_decode(&key.public_key).map_err(|e| corrupt(e.to_string()))?;
            let public = PublicKey::new(&key.kid, crate::keys::ALG_EDDSA, &raw, Some(key.verify_until))
                .map_err(|e| corrupt(e.to_string()))?;
            retired.push(RetiredKey { public, retired_at: key.retired_at });
        }
        Ok(Some(Self { config, current, current_since: stored.current_since, retired }))
    }

    /// Loads the saved ring, or generates and saves one on first start.
    pub fn load_or_generate(store: &dyn StateStore, config: KeyRingConfig, now: u64) -> Result<Self, AuthError> {
        if let Some(ring) = Self::load(store, config.clone())? {
            return Ok(ring);
        }
        let ring = Self::generate(config, now)?;
        ring.save(store)?;
        Ok(ring)
    }
}

/// Persisted form of a [`KeyRing`].
#[derive(Serialize, Deserialize)]
struct StoredKeyRing {
    version: u32,
    /// Secret; wiped on drop.
    current_pkcs8_pem: String,
    current_since: u64,
    retired: Vec<StoredRetiredKey>,
}

impl Drop for StoredKeyRing {
    fn drop(&mut self) {
        self.current_pkcs8_pem.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
struct StoredRetiredKey {
    kid: String,
    /// Raw public key, base64url.
    public_key: String,
    retired_at: u64,
    verify_until: u64,
}

fn corrupt(reason: String) -> AuthError {
    AuthError::CorruptRecord { tree: KEYS_TREE, reason }
}
