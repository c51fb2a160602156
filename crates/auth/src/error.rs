//! The one error type of the crate, and the kind each error is in the workspace's shared
//! vocabulary ([`ErrorKind`], which the one table in ragmesh-proto maps to gRPC codes).

use ragmesh_proto::ErrorKind;
use ragmesh_store::StoreError;

/// Errors of identity and access: token rejections, credential store failures, bad input.
///
/// Messages are safe to return to the caller: they never contain key material or token text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is longer than [`crate::MAX_TOKEN_LEN`]; it is rejected before any parsing.
    #[error("token is {len} bytes, more than the {max} allowed: send the access token exactly as issued")]
    TokenTooLong {
        /// Length of the presented token.
        len: usize,
        /// Maximum accepted length.
        max: usize,
    },
    /// The token is not three base64url parts, or its header is not a JSON object.
    #[error(
        "malformed token ({reason}): send the access token exactly as issued, three base64url parts separated by dots"
    )]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// The header says `alg: none` (an unsigned token).
    #[error("token is unsigned (alg \"none\"): unsigned tokens are never accepted; get a token from the master")]
    AlgNone,
    /// The header names an algorithm other than EdDSA (for instance HS256: the key-confusion attack).
    #[error("token algorithm \"{alg}\" is not accepted: only EdDSA tokens signed by the master are; get a new token")]
    AlgorithmNotAllowed {
        /// Algorithm named by the header.
        alg: String,
    },
    /// The header lists critical extensions (`crit`) that this verifier does not implement.
    #[error("token header requires extensions (\"crit\") that are not supported: get a token from the master")]
    UnsupportedCritical,
    /// The header has no `kid`.
    #[error("token header has no key id (\"kid\"): get a token from the master")]
    MissingKeyId,
    /// The `kid` names no key this verifier holds (never known, retired past its window, or pruned).
    #[error("token signed by unknown key id \"{kid}\": the master may have rotated keys; get a new token")]
    UnknownKeyId {
        /// Key id named by the header (truncated to 64 characters).
        kid: String,
    },
    /// The signature does not verify with the key named by `kid`.
    #[error(
        "token signature does not verify: the token was altered or not issued by this mesh's master; get a new token"
    )]
    BadSignature,
    /// The signed payload is not a JSON object of claims of the expected types.
    #[error("token claims are malformed ({reason}): get a new token from the master")]
    MalformedClaims {
        /// What is wrong with them.
        reason: String,
    },
    /// A required claim is absent.
    #[error("token lacks the required claim \"{claim}\": get a new token from the master")]
    MissingClaim {
        /// Name of the claim.
        claim: &'static str,
    },
    /// A claim that must name someone (`sub`, `tenant`, `jti`) is empty.
    #[error("token claim \"{claim}\" is empty: get a new token from the master")]
    EmptyClaim {
        /// Name of the claim.
        claim: &'static str,
    },
    /// `exp` is in the past, beyond the leeway.
    #[error("token expired at {exp} (unix seconds; now {now}, leeway {leeway}s): refresh it or get a new token")]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The verifier's clock.
        now: u64,
        /// Clock-skew allowance in seconds.
        leeway: u64,
    },
    /// `iat` or `nbf` is in the future, beyond the leeway.
    #[error(
        "token is not valid before {at} (claim \"{claim}\", unix seconds; now {now}): check the clocks of this host and of the master"
    )]
    NotYetValid {
        /// `iat` or `nbf`.
        claim: &'static str,
        /// Its value.
        at: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// `aud` does not contain the audience this verifier serves.
    #[error("token is for audience {found:?}, not \"{expected}\": use a token issued for this service")]
    WrongAudience {
        /// Audience this verifier expects.
        expected: String,
        /// Audiences named by the token.
        found: Vec<String>,
    },
    /// `iss` is not the expected issuer.
    #[error("token was issued by \"{found}\", not \"{expected}\": use a token from this mesh's master")]
    WrongIssuer {
        /// Issuer this verifier expects.
        expected: String,
        /// Issuer named by the token.
        found: String,
    },
    /// The token grants a capability this build does not know.
    #[error(
        "token grants unknown capability \"{value}\": known ones are search, ingest, actions, admin; get a new token from the master"
    )]
    UnknownTokenCapability {
        /// The unknown capability string (truncated to 64 characters).
        value: String,
    },
    /// A capability name given as input (flag, config) is unknown.
    #[error("unknown capability \"{value}\": use one of search, ingest, actions, admin")]
    UnknownCapability {
        /// The unknown capability string (truncated to 64 characters).
        value: String,
    },
    /// A verified principal lacks the capability a call needs.
    #[error(
        "token for subject \"{subject}\" lacks capability \"{capability}\": ask an operator for a token with --cap {capability}"
    )]
    MissingCapability {
        /// Subject of the token.
        subject: String,
        /// The capability the call needs.
        capability: crate::Capability,
    },
    /// An argument to issue/create is invalid.
    #[error("invalid {field}: {problem}")]
    InvalidInput {
        /// Which argument.
        field: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
    /// A requested lifetime exceeds the configured maximum.
    #[error("requested lifetime of {requested}s exceeds the maximum of {max}s: ask for a shorter ttl")]
    TtlTooLong {
        /// Requested lifetime in seconds.
        requested: u64,
        /// Maximum in seconds.
        max: u64,
    },
    /// A private key could not be loaded.
    #[error(
        "invalid signing key ({reason}): provide an unencrypted Ed25519 private key in PKCS#8 PEM (\"PRIVATE KEY\")"
    )]
    InvalidSigningKey {
        /// What is wrong.
        reason: String,
    },
    /// A public key could not be loaded.
    #[error("invalid public key ({reason}): send the master's keys exactly as it published them")]
    InvalidPublicKey {
        /// What is wrong.
        reason: String,
    },
    /// The refresh token was never issued here, or has been purged.
    #[error("refresh token is not recognised: sign in again to get a new one")]
    UnknownRefreshToken,
    /// The refresh token expired.
    #[error("refresh token expired at {expired_at} (unix seconds): sign in again to get a new one")]
    RefreshExpired {
        /// When it expired.
        expired_at: u64,
    },
    /// The refresh token's family was revoked (by an operator, or after reuse was detected).
    #[error("refresh token belongs to revoked family \"{family}\": sign in again to get a new one")]
    RefreshFamilyRevoked {
        /// The family.
        family: String,
    },
    /// An already-used refresh token was presented again: its whole family is now revoked.
    #[error(
        "refresh token was already used, so every token of its family \"{family}\" is now revoked (possible theft): sign in again"
    )]
    RefreshReuse {
        /// The revoked family.
        family: String,
    },
    /// The join token was never created, was revoked, or was purged.
    #[error("join token is not recognised: ask an operator for a new one (ragmeshctl token join)")]
    UnknownJoinToken,
    /// The join token expired.
    #[error(
        "join token {id} expired at {expired_at} (unix seconds): ask an operator for a new one (ragmeshctl token join)"
    )]
    JoinTokenExpired {
        /// Id of the join token.
        id: String,
        /// When it expired.
        expired_at: u64,
    },
    /// The join token has no uses left.
    #[error("join token {id} has already been used up: ask an operator for a new one (ragmeshctl token join)")]
    JoinTokenExhausted {
        /// Id of the join token.
        id: String,
    },
    /// The state store failed.
    #[error("auth state: {source}")]
    Store {
        /// The store's error.
        #[from]
        source: StoreError,
    },
    /// A stored record cannot be decoded.
    #[error(
        "corrupt record in state tree \"{tree}\" ({reason}): restore the master's data directory from a backup or remove the record"
    )]
    CorruptRecord {
        /// Tree of the record.
        tree: &'static str,
        /// Decoder's message.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: check that getrandom(2) or /dev/urandom works on this host")]
    Random,
}

impl AuthError {
    /// The kind of this error, which decides its status code (through ragmesh-proto's table).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::TokenTooLong { .. }
            | Self::Malformed { .. }
            | Self::AlgNone
            | Self::AlgorithmNotAllowed { .. }
            | Self::UnsupportedCritical
            | Self::MissingKeyId
            | Self::UnknownKeyId { .. }
            | Self::BadSignature
            | Self::MalformedClaims { .. }
            | Self::MissingClaim { .. }
            | Self::EmptyClaim { .. }
            | Self::Expired { .. }
            | Self::NotYetValid { .. }
            | Self::WrongAudience { .. }
            | Self::WrongIssuer { .. }
            | Self::UnknownTokenCapability { .. }
            | Self::UnknownRefreshToken
            | Self::RefreshExpired { .. }
            | Self::RefreshFamilyRevoked { .. }
            | Self::RefreshReuse { .. }
            | Self::UnknownJoinToken
            | Self::JoinTokenExpired { .. }
            | Self::JoinTokenExhausted { .. } => ErrorKind::Unauthenticated,
            Self::MissingCapability { .. } => ErrorKind::PermissionDenied,
            Self::UnknownCapability { .. }
            | Self::InvalidInput { .. }
            | Self::TtlTooLong { .. }
            | Self::InvalidSigningKey { .. }
            | Self::InvalidPublicKey { .. } => ErrorKind::InvalidArgument,
            Self::Store { .. } | Self::CorruptRecord { .. } | Self::Random => ErrorKind::Internal,
        }
    }
}

/// Shortens attacker-controlled text before it goes into an error message or a log line.
pub(crate) fn truncate_for_message(value: &str) -> String {
    const MAX_CHARS: usize = 64;
    if value.chars().count() <= MAX_CHARS {
        return value.to_owned();
    }
    let mut short: String = value.chars().take(MAX_CHARS).collect();
    short.push('…');
    short
}
