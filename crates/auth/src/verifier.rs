//! [`Verifier`]: checks an access or context token against the master's public keys and turns it
//! into a [`Principal`]. Used by the master and by agents; it holds no secret.
//!
//! Order of checks: length, shape, `alg` (must be EdDSA: the verifier holds only Ed25519 keys and
//! never lets the header choose an algorithm), `crit`, `kid`, signature, and only then the claims.
//!
//! The signature is checked and the claims decoded by `jsonwebtoken::decode`, between checks of
//! our own: before it, the header checks above, so that `alg: none`, another algorithm, `crit` and
//! a missing or unknown `kid` each get their own message (jsonwebtoken cannot even parse a header
//! naming an algorithm it does not know); after it, the claim checks, because they take the
//! caller's `now` (jsonwebtoken reads the system clock), name the missing claim, and say which
//! audience or issuer was found. jsonwebtoken's own claim validation is therefore switched off.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use jsonwebtoken::errors::ErrorKind;

use crate::crypto::b64url_decode;
use crate::error::truncate_for_message;
use crate::jwt::{Parts, check_time_claims, json_reason, split};
use crate::keys::ALG_EDDSA;
use crate::{AuthError, Capability, Principal, PublicKey};

/// Default allowance for clock skew between master and verifiers.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// What a [`Verifier`] expects of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// Expected `iss`: the master's name.
    pub issuer: String,
    /// Expected `aud`: the service verifying (access tokens: the mesh's audience; context tokens:
    /// [`crate::CONTEXT_AUDIENCE`]).
    pub audience: String,
    /// Clock-skew allowance applied to `exp`, `iat` and `nbf`.
    pub leeway: Duration,
}

impl VerifierConfig {
    /// Expects `issuer` and `audience`, with the default leeway.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self { issuer: issuer.into(), audience: audience.into(), leeway: DEFAULT_LEEWAY }
    }
}

/// Verifies tokens signed by the master. Cheap to clone (the key set is shared).
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<BTreeMap<String, TrustedKey>>,
    config: VerifierConfig,
    /// jsonwebtoken's settings: EdDSA only, its claim checks off (ours follow it).
    validation: Arc<jsonwebtoken::Validation>,
}

/// A key the verifier holds, with its jsonwebtoken form made once.
#[derive(Clone)]
struct TrustedKey {
    public: PublicKey,
    decoding: jsonwebtoken::DecodingKey,
}

impl Verifier {
    /// A verifier accepting tokens signed by any of `keys` (each within its `verify_until`).
    pub fn new(keys: impl IntoIterator<Item = PublicKey>, config: VerifierConfig) -> Self {
        let mut by_kid: BTreeMap<String, PublicKey> = BTreeMap::new();
        for key in keys {
            // The same kid twice: keep the longer-lived entry (the current key has no end).
            let keep_existing =
                by_kid.get(key.kid()).is_some_and(|existing| match (existing.verify_until(), key.verify_until()) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(a), Some(b)) => a >= b,
                });
            if !keep_existing {
                by_kid.insert(key.kid().to_owned(), key);
            }
        }
        let keys = by_kid
            .into_iter()
            .map(|(kid, public)| (kid, TrustedKey { decoding: public.decoding_key(), public }))
            .collect();
        Self { keys: Arc::new(keys), config, validation: Arc::new(signature_only_validation()) }
    }

    /// The same keys, expecting another audience (e.g. an agent verifying forwarded context).
    pub fn with_audience(&self, audience: impl Into<String>) -> Self {
        let mut config = self.config.clone();
        config.audience = audience.into();
        Self { keys: Arc::clone(&self.keys), config, validation: Arc::clone(&self.validation) }
    }

    /// What this verifier expects.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Ids of the keys it holds.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Verifies `token` at `now` (unix seconds) and returns who it speaks for.
    pub fn verify(&self, token: &str, now: u64) -> Result<Principal, AuthError> {
        let parts = split(token)?;
        let header = &parts.header;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::AlgNone);
        }
        // Every key held is Ed25519, so the key decides: the header may only confirm it.
        if header.alg != ALG_EDDSA {
            return Err(AuthError::AlgorithmNotAllowed { alg: truncate_for_message(&header.alg) });
        }
        if header.crit.is_some() {
            return Err(AuthError::UnsupportedCritical);
        }
        let kid = match header.kid.as_deref() {
            None | Some("") => return Err(AuthError::MissingKeyId),
            Some(kid) => kid,
        };
        // A retired key past its window counts as unknown: its tokens have all expired anyway.
        let Some(key) = self.keys.get(kid).filter(|key| key.public.is_acceptable_at(now)) else {
            return Err(AuthError::UnknownKeyId { kid: truncate_for_message(kid) });
        };
        let decoded = jsonwebtoken::decode::<RawClaims>(token, &key.decoding, &self.validation)
            .map_err(|err| decode_error(&err, token, &parts))?;
        validate_claims(decoded.claims, &self.config, now)
    }
}

/// What `jsonwebtoken::decode` checks for us: the algorithm (EdDSA, already confirmed from the
/// header) and the signature, and it decodes the claims. Its claim checks are off: ours follow.
fn signature_only_validation() -> jsonwebtoken::Validation {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation
}

/// Our error for a token jsonwebtoken refused. Its header and shape passed our own checks, so what
/// is left is the signature (its encoding or its verdict) and the payload (its encoding or JSON).
fn decode_error(err: &jsonwebtoken::errors::Error, token: &str, parts: &Parts<'_>) -> AuthError {
    match err.kind() {
        // jsonwebtoken decodes the signature part before it verifies, the payload only after.
        ErrorKind::Base64(_) if b64url_decode(parts.signature_b64).is_err() => {
            AuthError::Malformed { reason: "signature is not base64url".into() }
        }
        ErrorKind::Base64(_) => AuthError::MalformedClaims { reason: "payload is not base64url".into() },
        // Its header type is stricter than ours (typed `jwk`, `x5c`, ...): a header only it refuses
        // is malformed; otherwise the JSON error is the payload's.
        ErrorKind::Json(json) => match jsonwebtoken::decode_header(token) {
            Err(_) => AuthError::Malformed {
                reason: format!("a header field is not of its standard type: {}", json_reason(json)),
            },
            Ok(_) => AuthError::MalformedClaims { reason: json_reason(json) },
        },
        ErrorKind::Utf8(_) => AuthError::MalformedClaims { reason: "payload is not UTF-8".into() },
        // InvalidSignature, and InvalidEddsaKey for 32 bytes that are no curve point: either way,
        // the token does not verify with the key its kid names.
        _ => AuthError::BadSignature,
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish()
    }
}

/// Claims as they arrive: everything optional, so that a missing claim gets its own error.
#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
    aud: Option<Audience>,
    sub: Option<String>,
    exp: Option<u64>,
    iat: Option<u64>,
    nbf: Option<u64>,
    jti: Option<String>,
    tenant: Option<String>,
    caps: Option<Vec<String>>,
}

/// RFC 7519 allows `aud` to be one string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

fn validate_claims(raw: RawClaims, config: &VerifierConfig, now: u64) -> Result<Principal, AuthError> {
    let sub = raw.sub.ok_or(AuthError::MissingClaim { claim: "sub" })?;
    let tenant = raw.tenant.ok_or(AuthError::MissingClaim { claim: "tenant" })?;
    let jti = raw.jti.ok_or(AuthError::MissingClaim { claim: "jti" })?;
    let exp = raw.exp.ok_or(AuthError::MissingClaim { claim: "exp" })?;
    let iat = raw.iat.ok_or(AuthError::MissingClaim { claim: "iat" })?;
    let iss = raw.iss.ok_or(AuthError::MissingClaim { claim: "iss" })?;
    let aud = raw.aud.ok_or(AuthError::MissingClaim { claim: "aud" })?;

    if iss != config.issuer {
        return Err(AuthError::WrongIssuer { expected: config.issuer.clone(), found: truncate_for_message(&iss) });
    }
    let audiences = match aud {
        Audience::One(one) => vec![one],
        Audience::Many(many) => many,
    };
    if !audiences.contains(&config.audience) {
        let found = audiences.iter().take(4).map(|a| truncate_for_message(a)).collect();
        return Err(AuthError::WrongAudience { expected: config.audience.clone(), found });
    }
    check_time_claims(exp, iat, raw.nbf, now, config.leeway.as_secs())?;

    for (claim, value) in [("sub", &sub), ("tenant", &tenant), ("jti", &jti)] {
        if value.is_empty() {
            return Err(AuthError::EmptyClaim { claim });
        }
    }
    let mut capabilities = BTreeSet::new();
    for name in raw.caps.unwrap_or_default() {
        let capability = name
            .parse::<Capability>()
            .map_err(|_| AuthError::UnknownTokenCapability { value: truncate_for_message(&name) })?;
        capabilities.insert(capability);
    }
    Ok(Principal { subject: sub, tenant, capabilities, token_id: jti, expires_at: exp, issued_at: iat })
}
