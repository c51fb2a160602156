//! Our tokens are standard JWTs: jsonwebtoken verifies ours with our JWK, and we verify its EdDSA tokens.

mod common;

use common::*;
use ragmesh_auth::{Capability, SigningKey};

#[test]
fn jsonwebtoken_verifies_our_tokens_with_our_published_jwk() {
    let ring = ring();
    let (token, claims) = ring.issue("alice", "acme", [Capability::Search], ttl(600), NOW).expect("issue");
    let jwk_json = serde_json::to_string(&ring.public_keys(NOW)[0].to_jwk()).expect("jwk");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_str(&jwk_json).expect("jsonwebtoken reads our JWK");
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("decoding key");

    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    validation.validate_exp = false; // our clock is fixed in the past
    let decoded =
        jsonwebtoken::decode::<ragmesh_auth::Claims>(token.as_str(), &key, &validation).expect("standard EdDSA JWT");
    assert_eq!(decoded.claims, claims);
    assert_eq!(decoded.header.kid.as_deref(), Some(ring.current_kid()));
}

#[test]
fn we_verify_eddsa_tokens_signed_by_jsonwebtoken_with_our_key() {
    let (ring, key) = ring_with_key();
    let der = pem::parse(key.to_pkcs8_pem().as_bytes()).expect("pem").into_contents();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(key.kid().to_owned());
    let claims: serde_json::Value = serde_json::from_str(&claims_json(serde_json::json!({}))).expect("json");
    let token = jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ed_der(&der)).expect("encode");
    let principal = verifier(&ring).verify(&token, NOW).expect("verify");
    assert_eq!(principal.subject, "alice");

    // And a key jsonwebtoken can load from our PEM signs the same way ours does.
    let _: SigningKey = SigningKey::from_pkcs8_der(&der).expect("round trip");
}
