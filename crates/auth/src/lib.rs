//! ragmesh identity and access core: who a caller is and what it may do, with no secret shared
//! between nodes.
//!
//! - [`Capability`], [`Claims`] and [`Principal`]: what a token grants and what a verified one yields.
//! - [`KeyRing`] (master only): Ed25519 [`SigningKey`]s with rotation; issues access tokens and
//!   signed request context ([`ContextToken`]) for agents.
//! - [`Verifier`] (master and agents): checks tokens against the master's [`PublicKey`]s;
//!   [`VerifiedMemo`] and [`ContextMemo`] spare repeated Ed25519 work on the search path.
//! - [`RefreshStore`]: opaque refresh tokens, rotated on use, stored hashed, reuse revokes the family.
//! - [`JoinTokenStore`]: operator-created agent admission tokens, stored hashed, spent atomically.
//!
//! Tokens are signed and their signatures verified by `jsonwebtoken` (EdDSA, RustCrypto backend);
//! the checks around it (header, `kid`, claims, with a message for each rejection) are ours.
//!
//! Everything here is synchronous and takes the time (`now`, unix seconds) as an argument, so the
//! gRPC services stay thin shells and the tests control the clock:
//!
//! ```
//! # fn main() -> Result<(), ragmesh_auth::AuthError> {
//! use std::time::Duration;
//! use ragmesh_auth::{Capability, KeyRing, KeyRingConfig, unix_now};
//!
//! let now = unix_now();
//! let ring = KeyRing::generate(KeyRingConfig::new("master-1", "ragmesh"), now)?;
//! let (token, _claims) = ring.issue("alice", "acme", [Capability::Search], Duration::from_secs(900), now)?;
//! let verifier = ring.verifier("ragmesh", now); // agents build theirs from ring.public_keys(now)
//! let principal = verifier.verify(token.as_str(), now)?;
//! principal.require(Capability::Search)?;
//! assert!(principal.require(Capability::Ingest).is_err());
//! # Ok(())
//! # }
//! ```

mod claims;
mod crypto;
mod error;
mod join;
mod jwt;
mod keyring;
mod keys;
mod memo;
mod records;
mod refresh;
mod tokens;
mod verifier;

pub use claims::{Capability, Claims, Principal};
pub use error::AuthError;
pub use join::{JoinTokenInfo, JoinTokenStatus, JoinTokenStore, MAX_JOIN_USES};
pub use jwt::{Header, MAX_TOKEN_LEN, parse_unverified_header};
pub use keyring::{
    CONTEXT_AUDIENCE, DEFAULT_ACCESS_TTL, DEFAULT_CONTEXT_TTL, DEFAULT_MAX_TOKEN_LIFETIME, KeyRing, KeyRingConfig,
    RetiredKey,
};
pub use keys::{ALG_EDDSA, Jwk, PublicKey, SigningKey};
pub use memo::{CONTEXT_REUSE, ContextMemo, DEFAULT_MEMO_CAPACITY, ExpiringMap, VerifiedMemo};
pub use refresh::{DEFAULT_REFRESH_TTL, Grant, RefreshConfig, RefreshStore};
pub use tokens::{AccessToken, ContextToken, JoinToken, RefreshToken};
pub use verifier::{DEFAULT_LEEWAY, Verifier, VerifierConfig};

/// The current time in unix seconds, for the `now` arguments (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}
