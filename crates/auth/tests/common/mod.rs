//! Helpers shared by the integration tests: a test mesh's key ring and hand-made (forged) tokens.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ragmesh_auth::{KeyRing, KeyRingConfig, SigningKey, Verifier};
use ring::signature::Ed25519KeyPair;

pub const ISSUER: &str = "master-test";
pub const AUDIENCE: &str = "ragmesh";
/// A fixed "now" (2026-01-01T00:00:00Z) so that tests control the clock.
pub const NOW: u64 = 1_767_225_600;

pub fn config() -> KeyRingConfig {
    KeyRingConfig::new(ISSUER, AUDIENCE)
}

pub fn ring() -> KeyRing {
    KeyRing::generate(config(), NOW).expect("generate key ring")
}

pub fn verifier(ring: &KeyRing) -> Verifier {
    ring.verifier(AUDIENCE, NOW)
}

pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).expect("base64url")
}

/// Signs arbitrary bytes with `key`'s private half (outside the crate's API, like a forger holding it).
pub fn raw_signer(key: &SigningKey) -> Ed25519KeyPair {
    let der = pem::parse(key.to_pkcs8_pem().as_bytes()).expect("pem").into_contents();
    Ed25519KeyPair::from_pkcs8(&der).expect("pkcs8")
}

/// A compact token with exactly this header and payload JSON, signed by `sign` over `header.payload`.
pub fn forge(header: &str, payload: &str, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let signature = sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&signature))
}

/// A token with this header and payload, properly signed with `key` (so only the claims are wrong).
pub fn signed(key: &SigningKey, header: &str, payload: &str) -> String {
    let pair = raw_signer(key);
    forge(header, payload, |input| pair.sign(input).as_ref().to_vec())
}

/// The standard header for `key`.
pub fn header_for(key: &SigningKey) -> String {
    format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#, key.kid())
}

/// Valid claims JSON with `overrides` merged in (a `null` value removes the claim).
pub fn claims_json(overrides: serde_json::Value) -> String {
    let mut claims = serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": NOW + 600,
        "iat": NOW,
        "jti": "jti-1",
        "tenant": "acme",
        "caps": ["search"],
    });
    let object = claims.as_object_mut().expect("object");
    for (name, value) in overrides.as_object().expect("overrides object") {
        if value.is_null() {
            object.remove(name);
        } else {
            object.insert(name.clone(), value.clone());
        }
    }
    claims.to_string()
}

pub fn ttl(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// A ring and a copy of its current signing key (to forge validly signed tokens with odd claims).
pub fn ring_with_key() -> (KeyRing, SigningKey) {
    let key = SigningKey::generate().expect("generate");
    let copy = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem()).expect("copy");
    (KeyRing::new(config(), key, NOW), copy)
}
