//! [`RefreshStore`]: opaque refresh tokens, rotated on every use and stored only as SHA-256 hashes.
//!
//! Each sign-in starts a *family*; every rotation marks the presented token used (with a
//! compare-and-swap, so two concurrent uses cannot both win) and issues the next token of the
//! family. Presenting a used token again means two parties hold it (theft, or a client replaying):
//! the whole family is revoked, so the thief's and the victim's newest tokens both stop working.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ragmesh_store::StateStore;
use serde::{Deserialize, Serialize};

use crate::claims::check_name;
use crate::crypto::{b64url_decode, random_b64url, random_bytes, sha256};
use crate::records::{decode, encode};
use crate::{AuthError, Capability, RefreshToken};

/// Default lifetime of a refresh token (each rotation starts a new one).
pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
const TOKENS_TREE: &str = "refresh_tokens";
const FAMILIES_TREE: &str = "refresh_families";
const TOKEN_PREFIX: &str = "rmr_";
/// `rmr_` and 32 bytes in unpadded base64url.
const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 43;

/// Settings of a [`RefreshStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshConfig {
    /// Lifetime of each refresh token.
    pub ttl: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self { ttl: DEFAULT_REFRESH_TTL }
    }
}

/// What a successful rotation entitles the caller to: a new access token for this identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who signed in.
    pub subject: String,
    /// Their tenant.
    pub tenant: String,
    /// Capabilities granted at sign-in.
    pub caps: BTreeSet<Capability>,
    /// The token family (for revocation).
    pub family: String,
}

/// Refresh tokens over a [`StateStore`] (trees `refresh_tokens` and `refresh_families`).
#[derive(Debug, Clone)]
pub struct RefreshStore {
    store: Arc<dyn StateStore>,
    config: RefreshConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TokenRecord {
    family: String,
    subject: String,
    tenant: String,
    caps: Vec<Capability>,
    issued_at: u64,
    expires_at: u64,
    used: bool,
    #[serde(default)]
    used_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FamilyRecord {
    subject: String,
    tenant: String,
    created_at: u64,
    #[serde(default)]
    revoked_at: Option<u64>,
    #[serde(default)]
    revoked_because: Option<String>,
}

impl RefreshStore {
    /// Refresh tokens kept in `store`.
    pub fn new(store: Arc<dyn StateStore>, config: RefreshConfig) -> Self {
        Self { store, config }
    }

    /// Like [`RefreshStore::issue`], also returning the new family id (for revocation).
    pub fn issue_with_family(
        &self,
        subject: &str,
        tenant: &str,
        caps: impl IntoIterator<Item = Capability>,
        now: u64,
    ) -> Result<(RefreshToken, String), AuthError> {
        check_name("subject", subject)?;
        check_name("tenant", tenant)?;
        let caps: BTreeSet<Capability> = caps.into_iter().collect();
        let family = random_b64url::<16>()?;
        let record = FamilyRecord {
            subject: subject.to_owned(),
            tenant: tenant.to_owned(),
            created_at: now,
            revoked_at: None,
            revoked_because: None,
        };
        self.store.put(FAMILIES_TREE, family.as_bytes(), &encode(FAMILIES_TREE, &record)?)?;
        let token = self.insert_token(&family, subject, tenant, &caps, now)?;
        Ok((token, family))
    }

    /// Starts a new token family for `subject` of `tenant` and returns its first refresh token.
    pub fn issue(
        &self,
        subject: &str,
        tenant: &str,
        caps: impl IntoIterator<Item = Capability>,
        now: u64,
    ) -> Result<RefreshToken, AuthError> {
        Ok(self.issue_with_family(subject, tenant, caps, now)?.0)
    }

    /// Exchanges `token` for the next token of its family and the identity it stands for.
    ///
    /// Fails with [`AuthError::RefreshReuse`] (and revokes the family) when `token` was already used,
    /// including when another caller is rotating it at the same moment.
    pub fn rotate(&self, token: &str, now: u64) -> Result<(RefreshToken, Grant), AuthError> {
        let key = token_key(token).ok_or(AuthError::UnknownRefreshToken)?;
        let Some(current) = self.store.get(TOKENS_TREE, &key)? else {
            return Err(AuthError::UnknownRefreshToken);
        };
        let record: TokenRecord = decode(TOKENS_TREE, &current)?;
        self.ensure_family_live(&record.family)?;
        if record.used {
            return Err(self.reuse_detected(&record, now));
        }
        if now >= record.expires_at {
            return Err(AuthError::RefreshExpired { expired_at: record.expires_at });
        }

        let used = TokenRecord { used: true, used_at: Some(now), ..record.clone() };
        match self.store.compare_and_swap(TOKENS_TREE, &key, Some(&current), Some(&encode(TOKENS_TREE, &used)?))? {
            Ok(()) => {}
            // Purged between our read and our swap.
            Err(conflict) if conflict.current.is_none() => return Err(AuthError::UnknownRefreshToken),
            // Someone else used the same token between our read and our swap: that is reuse too.
            Err(_) => return Err(self.reuse_detected(&record, now)),
        }
        // A revocation landing between the family check and the swap lets this one rotation through,
        // like an access token issued just before it; the family's next rotation fails. Checking
        // again here would let a losing concurrent racer (which revokes) fail the winner as well.

        let caps: BTreeSet<Capability> = record.caps.iter().copied().collect();
        let next = self.insert_token(&record.family, &record.subject, &record.tenant, &caps, now)?;
        let grant = Grant { subject: record.subject, tenant: record.tenant, caps, family: record.family };
        Ok((next, grant))
    }

    /// Revokes every token of `family`; returns whether it was live before.
    pub fn revoke_family(&self, family: &str, now: u64) -> Result<bool, AuthError> {
        self.revoke_family_because(family, "revoked by an operator", now)
    }

    /// Revokes every family of `subject`; returns how many were live.
    pub fn revoke_subject(&self, subject: &str, now: u64) -> Result<usize, AuthError> {
        let mut revoked = 0;
        for (key, value) in self.store.scan(FAMILIES_TREE)? {
            let record: FamilyRecord = decode(FAMILIES_TREE, &value)?;
            if record.subject != subject || record.revoked_at.is_some() {
                continue;
            }
            let family = String::from_utf8_lossy(&key);
            if self.revoke_family_because(&family, "subject revoked by an operator", now)? {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    /// Deletes token records expired at `now` and families left without tokens; returns how many
    /// records were deleted. A deleted family fails closed: a token still pointing to it is refused.
    pub fn purge_expired(&self, now: u64) -> Result<usize, AuthError> {
        let mut deleted = 0;
        let mut families_in_use = HashSet::new();
        for (key, value) in self.store.scan(TOKENS_TREE)? {
            let record: TokenRecord = decode(TOKENS_TREE, &value)?;
            if now < record.expires_at {
                families_in_use.insert(record.family);
                continue;
            }
            if self.store.compare_and_swap(TOKENS_TREE, &key, Some(&value), None)?.is_ok() {
                deleted += 1;
            }
        }
        for (key, value) in self.store.scan(FAMILIES_TREE)? {
            let record: FamilyRecord = decode(FAMILIES_TREE, &value)?;
            let family = String::from_utf8_lossy(&key).into_owned();
            // A family younger than one token lifetime may be mid-issue: keep it.
            let old_enough = now >= record.created_at.saturating_add(self.config.ttl.as_secs());
            if families_in_use.contains(&family) || !old_enough {
                continue;
            }
            if self.store.compare_and_swap(FAMILIES_TREE, &key, Some(&value), None)?.is_ok() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    fn insert_token(
        &self,
        family: &str,
        subject: &str,
        tenant: &str,
        caps: &BTreeSet<Capability>,
        now: u64,
    ) -> Result<RefreshToken, AuthError> {
        let token = format!("{TOKEN_PREFIX}{}", crate::crypto::b64url_encode(&random_bytes::<32>()?));
        let record = TokenRecord {
            family: family.to_owned(),
            subject: subject.to_owned(),
            tenant: tenant.to_owned(),
            caps: caps.iter().copied().collect(),
            issued_at: now,
            expires_at: now.saturating_add(self.config.ttl.as_secs()),
            used: false,
            used_at: None,
        };
        let key = sha256(token.as_bytes());
        self.store.put(TOKENS_TREE, &key, &encode(TOKENS_TREE, &record)?)?;
        Ok(RefreshToken::new(token))
    }

    /// Fails when the family is revoked or gone (fail closed).
    fn ensure_family_live(&self, family: &str) -> Result<(), AuthError> {
        let live = match self.store.get(FAMILIES_TREE, family.as_bytes())? {
            Some(bytes) => decode::<FamilyRecord>(FAMILIES_TREE, &bytes)?.revoked_at.is_none(),
            None => false,
        };
        if live { Ok(()) } else { Err(AuthError::RefreshFamilyRevoked { family: family.to_owned() }) }
    }

    fn reuse_detected(&self, record: &TokenRecord, now: u64) -> AuthError {
        tracing::warn!(
            security_event = "refresh_token_reuse",
            family = %record.family,
            subject = %record.subject,
            tenant = %record.tenant,
            "refresh token presented again after use; revoking its whole family"
        );
        match self.revoke_family_because(&record.family, "refresh token reuse", now) {
            Ok(_) => AuthError::RefreshReuse { family: record.family.clone() },
            // The caller is refused either way; the store failure is the more urgent news.
            Err(err) => err,
        }
    }

    fn revoke_family_because(&self, family: &str, because: &str, now: u64) -> Result<bool, AuthError> {
        loop {
            let Some(current) = self.store.get(FAMILIES_TREE, family.as_bytes())? else {
                return Ok(false);
            };
            let record: FamilyRecord = decode(FAMILIES_TREE, &current)?;
            if record.revoked_at.is_some() {
                return Ok(false);
            }
            let revoked = FamilyRecord { revoked_at: Some(now), revoked_because: Some(because.to_owned()), ..record };
            let swapped = self.store.compare_and_swap(
                FAMILIES_TREE,
                family.as_bytes(),
                Some(&current),
                Some(&encode(FAMILIES_TREE, &revoked)?),
            )?;
            if swapped.is_ok() {
                tracing::info!(
                    security_event = "refresh_family_revoked",
                    family,
                    reason = because,
                    "refresh token family revoked"
                );
                return Ok(true);
            }
            // Changed under us (another revocation): look again.
        }
    }
}

/// The store key of a presented token, or `None` when it cannot be one of ours.
fn token_key(token: &str) -> Option<[u8; 32]> {
    if token.len() != TOKEN_LEN {
        return None;
    }
    let secret = token.strip_prefix(TOKEN_PREFIX)?;
    b64url_decode(secret).ok()?;
    Some(sha256(token.as_bytes()))
}
