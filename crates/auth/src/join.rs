//! [`JoinTokenStore`]: operator-created tokens that admit agents, single- or multi-use and expiring,
//! stored only as SHA-256 hashes; each use is one compare-and-swap, so racing agents cannot overspend.

use std::sync::Arc;
use std::time::Duration;

use ragmesh_store::StateStore;
use serde::{Deserialize, Serialize};

use crate::claims::check_name;
use crate::crypto::{b64url_decode, b64url_encode, random_bytes, sha256};
use crate::records::{decode, encode};
use crate::{AuthError, JoinToken};

const JOIN_TREE: &str = "join_tokens";
const TOKEN_PREFIX: &str = "rmj_";
/// `rmj_` and 32 bytes in unpadded base64url.
const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 43;
/// Most uses one join token may grant (each use records the node's name).
pub const MAX_JOIN_USES: u32 = 10_000;

/// Where a join token stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinTokenStatus {
    /// Can admit more nodes.
    Active,
    /// All uses spent.
    Exhausted,
    /// Past its expiry.
    Expired,
}

/// What an operator may see of a join token: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenInfo {
    /// Public id, for listing and revoking.
    pub id: String,
    /// The operator's note.
    pub note: String,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// Uses left.
    pub uses_left: u32,
    /// Names of the nodes admitted with it, in order.
    pub used_by: Vec<String>,
    /// Status at the time of the call.
    pub status: JoinTokenStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JoinRecord {
    id: String,
    note: String,
    created_at: u64,
    expires_at: u64,
    uses_left: u32,
    used_by: Vec<String>,
}

impl JoinRecord {
    fn info(&self, now: u64) -> JoinTokenInfo {
        let status = if now >= self.expires_at {
            JoinTokenStatus::Expired
        } else if self.uses_left == 0 {
            JoinTokenStatus::Exhausted
        } else {
            JoinTokenStatus::Active
        };
        JoinTokenInfo {
            id: self.id.clone(),
            note: self.note.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            uses_left: self.uses_left,
            used_by: self.used_by.clone(),
            status,
        }
    }
}

/// Join tokens over a [`StateStore`] (tree `join_tokens`, keyed by the token's SHA-256).
#[derive(Debug, Clone)]
pub struct JoinTokenStore {
    store: Arc<dyn StateStore>,
}

impl JoinTokenStore {
    /// Join tokens kept in `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self { store }
    }

    /// Creates a token valid for `ttl` from `now`, for `uses` admissions (`None`: one).
    pub fn create(
        &self,
        ttl: Duration,
        uses: Option<u32>,
        now: u64,
        note: &str,
    ) -> Result<(JoinToken, JoinTokenInfo), AuthError> {
        let uses = uses.unwrap_or(1);
        if uses == 0 || uses > MAX_JOIN_USES {
            return Err(AuthError::InvalidInput {
                field: "uses",
                problem: format!("must be between 1 and {MAX_JOIN_USES}"),
            });
        }
        if ttl.as_secs() == 0 {
            return Err(AuthError::InvalidInput { field: "ttl", problem: "must be at least one second".into() });
        }
        if note.len() > 1024 {
            return Err(AuthError::InvalidInput { field: "note", problem: "must be at most 1024 bytes".into() });
        }
        let token = format!("{TOKEN_PREFIX}{}", b64url_encode(&random_bytes::<32>()?));
        let record = JoinRecord {
            id: hex(&random_bytes::<6>()?),
            note: note.to_owned(),
            created_at: now,
            expires_at: now.saturating_add(ttl.as_secs()),
            uses_left: uses,
            used_by: Vec::new(),
        };
        let key = sha256(token.as_bytes());
        self.store.put(JOIN_TREE, &key, &encode(JOIN_TREE, &record)?)?;
        Ok((JoinToken::new(token), record.info(now)))
    }

    /// Spends one use of `token` to admit `node_name` (none if it already admitted that node);
    /// returns the token's state afterwards.
    pub fn consume(&self, token: &str, node_name: &str, now: u64) -> Result<JoinTokenInfo, AuthError> {
        check_name("node name", node_name)?;
        let key = token_key(token).ok_or(AuthError::UnknownJoinToken)?;
        loop {
            let Some(current) = self.store.get(JOIN_TREE, &key)? else {
                return Err(AuthError::UnknownJoinToken);
            };
            let record: JoinRecord = decode(JOIN_TREE, &current)?;
            if now >= record.expires_at {
                return Err(AuthError::JoinTokenExpired { id: record.id, expired_at: record.expires_at });
            }
            // The same node retrying (its answer was lost, or it gave up waiting while the
            // master admitted it) spends no second use: its name is certified by its certificate.
            if record.used_by.iter().any(|name| name == node_name) {
                return Ok(record.info(now));
            }
            if record.uses_left == 0 {
                return Err(AuthError::JoinTokenExhausted { id: record.id });
            }
            let mut spent = record.clone();
            spent.uses_left -= 1;
            spent.used_by.push(node_name.to_owned());
            if self.store.compare_and_swap(JOIN_TREE, &key, Some(&current), Some(&encode(JOIN_TREE, &spent)?))?.is_ok()
            {
                tracing::info!(security_event = "join_token_used", join_token.id = %spent.id, node.name = node_name, uses_left = spent.uses_left, "join token admitted a node");
                return Ok(spent.info(now));
            }
            // Another node spent a use between our read and our swap: read again and re-check.
        }
    }

    /// Every join token, oldest first, as operators may see them (never the token).
    pub fn list(&self, now: u64) -> Result<Vec<JoinTokenInfo>, AuthError> {
        let mut infos = Vec::new();
        for (_, value) in self.store.scan(JOIN_TREE)? {
            let record: JoinRecord = decode(JOIN_TREE, &value)?;
            infos.push(record.info(now));
        }
        infos.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(infos)
    }

    /// Deletes the token with `id`; returns whether it existed.
    pub fn revoke(&self, id: &str) -> Result<bool, AuthError> {
        for (key, value) in self.store.scan(JOIN_TREE)? {
            let record: JoinRecord = decode(JOIN_TREE, &value)?;
            if record.id == id {
                self.store.remove(JOIN_TREE, &key)?;
                tracing::info!(security_event = "join_token_revoked", join_token.id = id, "join token revoked");
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes tokens expired at `now`; returns how many.
    pub fn purge_expired(&self, now: u64) -> Result<usize, AuthError> {
        let mut deleted = 0;
        for (key, value) in self.store.scan(JOIN_TREE)? {
            let record: JoinRecord = decode(JOIN_TREE, &value)?;
            if now >= record.expires_at && self.store.compare_and_swap(JOIN_TREE, &key, Some(&value), None)?.is_ok() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// The store key of a presented token, or `None` when it cannot be one of ours.
fn token_key(token: &str) -> Option<[u8; 32]> {
    if token.len() != TOKEN_LEN {
        return None;
    }
    b64url_decode(token.strip_prefix(TOKEN_PREFIX)?).ok()?;
    Some(sha256(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}
