//! Compact JWS tokens (RFC 7515/7519): encoding through jsonwebtoken, and the checks on untrusted
//! input that run before jsonwebtoken sees a token (length, three parts, a JSON header whose `alg`
//! may be anything, `"none"` included), so that every rejection has its own message. Total: every
//! malformed token is an error, never a panic.

use serde::{Deserialize, Serialize};

use crate::crypto::b64url_decode;
use crate::{AuthError, Claims};

/// Tokens longer than this are rejected before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// A token's JOSE header, as read by [`parse_unverified_header`].
///
/// Our own type rather than `jsonwebtoken::Header`: that one cannot hold an unknown `alg` (such as
/// `"none"`), so a token naming one could not be told apart from a malformed one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Signature algorithm named by the token (never trusted to choose the algorithm).
    pub alg: String,
    /// Media type, `JWT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    /// Id of the signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Extensions the verifier must understand; any is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crit: Option<Vec<String>>,
}

/// A compact token split into its decoded header and its signature part.
#[derive(Debug)]
pub(crate) struct Parts<'a> {
    pub(crate) header: Header,
    pub(crate) signature_b64: &'a str,
}

/// Reads a token's header without verifying anything. Total: any input gives `Ok` or `Err`.
pub fn parse_unverified_header(token: &str) -> Result<Header, AuthError> {
    split(token).map(|parts| parts.header)
}

/// Checks the length, splits the token into its three parts and decodes the header.
pub(crate) fn split(token: &str) -> Result<Parts<'_>, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TokenTooLong { len: token.len(), max: MAX_TOKEN_LEN });
    }
    let mut pieces = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
    else {
        return Err(malformed("not three parts separated by dots"));
    };
    if header_b64.is_empty() || payload_b64.is_empty() {
        return Err(malformed("empty header or payload"));
    }
    let header_json = b64url_decode(header_b64).map_err(|_| malformed("header is not base64url"))?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|e| AuthError::Malformed {
        reason: format!("header is not a JSON object with an alg: {}", json_reason(&e)),
    })?;
    Ok(Parts { header, signature_b64 })
}

/// Signs `claims` with `key` (an Ed25519 PKCS#8 key) into a compact JWS with header
/// `{"typ":"JWT","alg":"EdDSA","kid":kid}`.
pub(crate) fn encode(key: &jsonwebtoken::EncodingKey, kid: &str, claims: &Claims) -> Result<String, AuthError> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    let token = jsonwebtoken::encode(&header, claims, key).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::Json(json) => encode_error("claims", json),
        _ => AuthError::InvalidSigningKey { reason: e.to_string() },
    })?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::InvalidInput {
            field: "claims",
            problem: format!(
                "the token would be {} bytes, more than the {MAX_TOKEN_LEN} verifiers accept: use shorter names",
                token.len()
            ),
        });
    }
    Ok(token)
}

/// The verdict on a token's time claims: expired when `now >= exp + leeway`, not yet valid when
/// `iat` or `nbf` is later than `now + leeway`. Sums are taken in u128, so no value can overflow.
pub(crate) fn check_time_claims(exp: u64, iat: u64, nbf: Option<u64>, now: u64, leeway: u64) -> Result<(), AuthError> {
    let (now_wide, leeway_wide) = (u128::from(now), u128::from(leeway));
    if now_wide >= u128::from(exp) + leeway_wide {
        return Err(AuthError::Expired { exp, now, leeway });
    }
    let latest_acceptable_start = now_wide + leeway_wide;
    if u128::from(iat) > latest_acceptable_start {
        return Err(AuthError::NotYetValid { claim: "iat", at: iat, now });
    }
    if let Some(nbf) = nbf
        && u128::from(nbf) > latest_acceptable_start
    {
        return Err(AuthError::NotYetValid { claim: "nbf", at: nbf, now });
    }
    Ok(())
}

fn malformed(reason: &str) -> AuthError {
    AuthError::Malformed { reason: reason.to_owned() }
}

fn encode_error(what: &'static str, err: &serde_json::Error) -> AuthError {
    AuthError::InvalidInput { field: what, problem: format!("cannot be encoded as JSON: {err}") }
}

/// A serde_json error as a short message (its text can quote attacker-supplied values, so it is cut).
pub(crate) fn json_reason(err: &serde_json::Error) -> String {
    let text = err.to_string();
    const MAX_CHARS: usize = 120;
    if text.chars().count() <= MAX_CHARS {
        return text;
    }
    let mut short: String = text.chars().take(MAX_CHARS).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::b64url_encode;

    #[test]
    fn header_of_a_wellformed_token_is_read() {
        // {"alg":"EdDSA","typ":"JWT","kid":"k1"}
        let token = format!("{}.e30.c2ln", b64url_encode(br#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#));
        let header = parse_unverified_header(&token).expect("header");
        assert_eq!(header.alg, "EdDSA");
        assert_eq!(header.kid.as_deref(), Some("k1"));
    }

    #[test]
    fn malformed_shapes_are_errors() {
        let valid_header = b64url_encode(br#"{"alg":"EdDSA"}"#);
        for token in [
            String::new(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!("{valid_header}..sig"),
            ".e30.sig".into(),
            "!!!.e30.sig".into(),
            format!("{}.e30.sig", b64url_encode(b"[1,2]")),
            format!("{}.e30.sig", b64url_encode(br#"{"typ":"JWT"}"#)),
            format!("{}.e30.sig", b64url_encode(br#"{"alg":5}"#)),
            format!("{}.e30.sig", b64url_encode(&[0xff, 0xfe])),
        ] {
            let err = parse_unverified_header(&token).expect_err(&token);
            assert!(matches!(err, AuthError::Malformed { .. }), "{token}: {err:?}");
        }
    }

    #[test]
    fn overlong_token_is_rejected_before_parsing() {
        let token = "a".repeat(MAX_TOKEN_LEN + 1);
        let err = parse_unverified_header(&token).expect_err("too long");
        assert!(
            matches!(err, AuthError::TokenTooLong { len, max } if len == MAX_TOKEN_LEN + 1 && max == MAX_TOKEN_LEN)
        );
    }

    #[test]
    fn time_claims_boundaries() {
        assert!(check_time_claims(100, 50, None, 99, 0).is_ok());
        assert!(matches!(check_time_claims(100, 50, None, 100, 0), Err(AuthError::Expired { .. })));
        assert!(check_time_claims(100, 50, None, 129, 30).is_ok(), "leeway extends exp");
        assert!(matches!(check_time_claims(100, 50, None, 130, 30), Err(AuthError::Expired { .. })));
        assert!(check_time_claims(100, 80, None, 50, 30).is_ok(), "iat within leeway");
        assert!(matches!(
            check_time_claims(100, 81, None, 50, 30),
            Err(AuthError::NotYetValid { claim: "iat", at: 81, now: 50 })
        ));
        assert!(matches!(
            check_time_claims(100, 0, Some(90), 50, 30),
            Err(AuthError::NotYetValid { claim: "nbf", .. })
        ));
        assert!(check_time_claims(u64::MAX, 0, Some(u64::MAX), u64::MAX - 1, u64::MAX).is_ok(), "no overflow");
        assert!(check_time_claims(u64::MAX, 0, None, u64::MAX, 1).is_ok(), "exp + leeway beyond u64 does not saturate");
    }
}
