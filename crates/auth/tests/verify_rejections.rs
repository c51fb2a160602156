//! Every rejection of `Verifier::verify`, each with hand-made malicious tokens and its own error.

mod common;

use common::*;
use ragmesh_auth::{AuthError, Capability, MAX_TOKEN_LEN, SigningKey, Verifier};
use ragmesh_proto::ErrorKind;
use serde_json::json;

/// Verifies at NOW and returns the error (a test fails if the token is accepted).
fn reject(verifier: &Verifier, token: &str) -> AuthError {
    let err = verifier.verify(token, NOW).expect_err("the token must be rejected");
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    eprintln!("rejection: {err}");
    err
}

#[test]
fn a_genuine_token_verifies() {
    let ring = ring();
    let (token, claims) =
        ring.issue("alice", "acme", [Capability::Search, Capability::Ingest], ttl(900), NOW).expect("issue");
    let principal = verifier(&ring).verify(token.as_str(), NOW).expect("genuine token");
    assert_eq!(principal.subject, "alice");
    assert_eq!(principal.tenant, "acme");
    assert_eq!(principal.token_id, claims.jti);
    assert_eq!(principal.expires_at, NOW + 900);
    assert!(principal.has(Capability::Ingest) && !principal.has(Capability::Admin));
    let header = ragmesh_auth::parse_unverified_header(token.as_str()).expect("header");
    assert_eq!((header.alg.as_str(), header.kid.as_deref()), ("EdDSA", Some(ring.current_kid())));
}

#[test]
fn malformed_tokens_are_rejected() {
    let ring = ring();
    let verifier = verifier(&ring);
    for token in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.", "e30.e30.e30", "..", "\u{0}.\u{0}.\u{0}"] {
        let err = reject(&verifier, token);
        assert!(matches!(err, AuthError::Malformed { .. }), "{token:?}: {err:?}");
    }
    // The signature part is decoded once the key is known.
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, ring.current_kid());
    let token = format!("{}.e30.@@@", b64(header.as_bytes()));
    assert!(matches!(reject(&verifier, &token), AuthError::Malformed { .. }));
    let err = reject(&verifier, "abc");
    assert_eq!(
        err.to_string(),
        "malformed token (not three parts separated by dots): send the access token exactly as issued, three base64url parts separated by dots"
    );
}

#[test]
fn validly_signed_but_unparseable_payload_is_malformed_claims() {
    let (ring, key) = ring_with_key();
    let token = signed(&key, &header_for(&key), "not json");
    assert!(matches!(reject(&verifier(&ring), &token), AuthError::MalformedClaims { .. }));
    let token = signed(&key, &header_for(&key), &claims_json(json!({"exp": "tomorrow"})));
    assert!(matches!(reject(&verifier(&ring), &token), AuthError::MalformedClaims { .. }));
}

/// Signed tokens whose header passes our checks but not jsonwebtoken's stricter header type, or
/// whose payload part is not base64url: each gets the message of the part that is wrong.
#[test]
fn errors_from_jsonwebtoken_name_the_part_that_is_wrong() {
    let (ring, key) = ring_with_key();
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}","jwk":5}}"#, key.kid());
    let err = reject(&verifier(&ring), &signed(&key, &header, &claims_json(json!({}))));
    assert!(matches!(err, AuthError::Malformed { ref reason } if reason.contains("header field")), "{err:?}");

    let signing_input = format!("{}.{}", b64(header_for(&key).as_bytes()), "not*base64");
    let signature = raw_signer(&key).sign(signing_input.as_bytes());
    let err = reject(&verifier(&ring), &format!("{signing_input}.{}", b64(signature.as_ref())));
    assert!(matches!(err, AuthError::MalformedClaims { ref reason } if reason.contains("base64url")), "{err:?}");
}

#[test]
fn alg_none_with_empty_signature_is_rejected() {
    let ring = ring();
    for alg in ["none", "None", "NONE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{}"}}"#, ring.current_kid());
        let token = forge(&header, &claims_json(json!({"caps": ["admin"]})), |_| Vec::new());
        assert!(token.ends_with('.'), "empty signature part");
        let err = reject(&verifier(&ring), &token);
        assert!(matches!(err, AuthError::AlgNone), "{err:?}");
        assert_eq!(
            err.to_string(),
            "token is unsigned (alg \"none\"): unsigned tokens are never accepted; get a token from the master"
        );
    }
}

/// The classic key-confusion attack: the attacker knows the (public) verification key and signs
/// with HS256 using its bytes as the HMAC secret, hoping the verifier lets `alg` choose HMAC.
#[test]
fn hs256_signed_with_the_public_key_is_rejected() {
    let ring = ring();
    let verifier = verifier(&ring);
    let public = ring.public_keys(NOW).remove(0);
    let payload = claims_json(json!({"sub": "mallory", "caps": ["admin"]}));
    let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#, public.kid());

    // Every form of the public key an attacker might feed to HMAC: raw bytes, DER, PEM text.
    let secrets: [Vec<u8>; 3] = [public.raw().to_vec(), public.spki_der(), public.to_pem().into_bytes()];
    for secret in &secrets {
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let token = forge(&header, &payload, |input| ring::hmac::sign(&hmac_key, input).as_ref().to_vec());

        // The forgery is a genuine HS256 token: a verifier that trusts `alg` accepts it.
        let mut naive = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        naive.set_audience(&[AUDIENCE]);
        naive.validate_exp = false; // only the signature matters here
        let naive_key = jsonwebtoken::DecodingKey::from_secret(secret).expect("a non-empty HMAC key");
        jsonwebtoken::decode::<serde_json::Value>(&token, &naive_key, &naive)
            .expect("a naive HS256 verifier accepts the forgery");

        let err = reject(&verifier, &token);
        assert!(matches!(err, AuthError::AlgorithmNotAllowed { ref alg } if alg == "HS256"), "{err:?}");
        assert_eq!(
            err.to_string(),
            "token algorithm \"HS256\" is not accepted: only EdDSA tokens signed by the master are; get a new token"
        );
    }

    // The same attack built with jsonwebtoken itself.
    let mut jwt_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jwt_header.kid = Some(public.kid().to_owned());
    let claims: serde_json::Value = serde_json::from_str(&payload).expect("json");
    let token = jsonwebtoken::encode(
        &jwt_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(public.raw()).expect("a non-empty HMAC key"),
    )
    .expect("encode");
    assert!(matches!(reject(&verifier, &token), AuthError::AlgorithmNotAllowed { .. }));
}

#[test]
fn other_algorithms_are_rejected_whatever_the_signature() {
    let (ring, key) = ring_with_key();
    for alg in ["RS256", "ES256", "HS512", "PS256", "EdDSA ", "eddsa", "Ed25519"] {
        // Even a valid Ed25519 signature does not make another alg acceptable.
        let header = format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, key.kid());
        let token = signed(&key, &header, &claims_json(json!({})));
        let err = reject(&verifier(&ring), &token);
        assert!(matches!(err, AuthError::AlgorithmNotAllowed { .. }), "{alg}: {err:?}");
    }
}

#[test]
fn missing_and_unknown_kid_are_rejected() {
    let (ring, key) = ring_with_key();
    let verifier = verifier(&ring);
    for header in [r#"{"alg":"EdDSA","typ":"JWT"}"#, r#"{"alg":"EdDSA","kid":""}"#] {
        let err = reject(&verifier, &signed(&key, header, &claims_json(json!({}))));
        assert!(matches!(err, AuthError::MissingKeyId), "{err:?}");
        assert_eq!(err.to_string(), "token header has no key id (\"kid\"): get a token from the master");
    }
    let err = reject(&verifier, &signed(&key, r#"{"alg":"EdDSA","kid":"x"}"#, &claims_json(json!({}))));
    assert_eq!(
        err.to_string(),
        "token signed by unknown key id \"x\": the master may have rotated keys; get a new token"
    );

    // A token from another mesh's master (a key this verifier never saw).
    let stranger = SigningKey::generate().expect("generate");
    let err = reject(&verifier, &signed(&stranger, &header_for(&stranger), &claims_json(json!({}))));
    assert!(matches!(err, AuthError::UnknownKeyId { ref kid } if kid == stranger.kid()), "{err:?}");
}

#[test]
fn swapped_kid_fails_the_signature() {
    // Two trusted keys: a token signed by one but naming the other must not verify.
    let key_a = SigningKey::generate().expect("generate");
    let key_b = SigningKey::generate().expect("generate");
    let verifier =
        Verifier::new([key_a.public_key(), key_b.public_key()], ragmesh_auth::VerifierConfig::new(ISSUER, AUDIENCE));
    let token = signed(&key_a, &header_for(&key_b), &claims_json(json!({})));
    let err = reject(&verifier, &token);
    assert!(matches!(err, AuthError::BadSignature), "{err:?}");
    assert!(verifier.verify(&signed(&key_a, &header_for(&key_a), &claims_json(json!({}))), NOW).is_ok());
}

#[test]
fn tampered_payload_and_signature_are_rejected() {
    let ring = ring();
    let verifier = verifier(&ring);
    let (token, _) = ring.issue("alice", "acme", [Capability::Search], ttl(600), NOW).expect("issue");
    let token = token.into_string();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();

    // Re-encode the payload with a capability added: valid base64url and JSON, wrong signature.
    let mut claims: serde_json::Value = serde_json::from_slice(&unb64(&parts[1])).expect("claims");
    claims["caps"] = json!(["search", "admin"]);
    let escalated = format!("{}.{}.{}", parts[0], b64(claims.to_string().as_bytes()), parts[2]);
    let err = reject(&verifier, &escalated);
    assert!(matches!(err, AuthError::BadSignature), "{err:?}");
    assert_eq!(
        err.to_string(),
        "token signature does not verify: the token was altered or not issued by this mesh's master; get a new token"
    );

    // One byte of the payload flipped.
    let mut payload = unb64(&parts[1]);
    payload[10] ^= 0x01;
    parts[1] = b64(&payload);
    assert!(matches!(reject(&verifier, &parts.join(".")), AuthError::BadSignature));

    // Signature flipped, truncated, or empty.
    let good: Vec<&str> = token.split('.').collect();
    let mut signature = unb64(good[2]);
    signature[0] ^= 0x80;
    for bad in [b64(&signature), b64(&signature[..63]), String::new()] {
        let forged = format!("{}.{}.{}", good[0], good[1], bad);
        assert!(matches!(reject(&verifier, &forged), AuthError::BadSignature), "{forged}");
    }
}

#[test]
fn expired_and_not_yet_valid_tokens_are_rejected_beyond_the_leeway() {
    let (ring, key) = ring_with_key();
    let verifier = verifier(&ring); // leeway 30 s
    let header = header_for(&key);

    let token = signed(&key, &header, &claims_json(json!({"exp": NOW - 31})));
    let err = reject(&verifier, &token);
    assert!(matches!(err, AuthError::Expired { exp, now, leeway: 30 } if exp == NOW - 31 && now == NOW), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("token expired at {} (unix seconds; now {NOW}, leeway 30s): refresh it or get a new token", NOW - 31)
    );
    assert!(
        verifier.verify(&signed(&key, &header, &claims_json(json!({"exp": NOW - 29}))), NOW).is_ok(),
        "within leeway"
    );

    let token = signed(&key, &header, &claims_json(json!({"iat": NOW + 31})));
    let err = reject(&verifier, &token);
    assert!(matches!(err, AuthError::NotYetValid { claim: "iat", .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "token is not valid before {} (claim \"iat\", unix seconds; now {NOW}): check the clocks of this host and of the master",
            NOW + 31
        )
    );
    let token = signed(&key, &header, &claims_json(json!({"nbf": NOW + 300})));
    assert!(matches!(reject(&verifier, &token), AuthError::NotYetValid { claim: "nbf", .. }));
    assert!(verifier.verify(&signed(&key, &header, &claims_json(json!({"nbf": NOW + 30}))), NOW).is_ok());

    // A real token, checked after its expiry.
    let (token, _) = ring.issue("alice", "acme", [], ttl(60), NOW).expect("issue");
    assert!(matches!(verifier.verify(token.as_str(), NOW + 60 + 30), Err(AuthError::Expired { .. })));
    assert!(verifier.verify(token.as_str(), NOW + 60 + 29).is_ok());
}

#[test]
fn wrong_audience_and_issuer_are_rejected() {
    let (ring, key) = ring_with_key();
    let verifier = verifier(&ring);
    let header = header_for(&key);

    let err = reject(&verifier, &signed(&key, &header, &claims_json(json!({"aud": "billing"}))));
    assert_eq!(
        err.to_string(),
        "token is for audience [\"billing\"], not \"ragmesh\": use a token issued for this service"
    );
    let err = reject(&verifier, &signed(&key, &header, &claims_json(json!({"aud": ["billing", "crm"]}))));
    assert!(matches!(err, AuthError::WrongAudience { .. }), "{err:?}");
    assert!(
        verifier.verify(&signed(&key, &header, &claims_json(json!({"aud": ["billing", AUDIENCE]}))), NOW).is_ok(),
        "an audience array containing ours is accepted (RFC 7519)"
    );

    let err = reject(&verifier, &signed(&key, &header, &claims_json(json!({"iss": "evil-master"}))));
    assert!(matches!(err, AuthError::WrongIssuer { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "token was issued by \"evil-master\", not \"master-test\": use a token from this mesh's master"
    );
}

#[test]
fn missing_required_claims_are_rejected_by_name() {
    let (ring, key) = ring_with_key();
    let verifier = verifier(&ring);
    for claim in ["sub", "tenant", "jti", "exp", "iat", "iss", "aud"] {
        let token = signed(&key, &header_for(&key), &claims_json(json!({ claim: null })));
        let err = reject(&verifier, &token);
        assert!(matches!(err, AuthError::MissingClaim { claim: c } if c == claim), "{claim}: {err:?}");
        assert_eq!(
            err.to_string(),
            format!("token lacks the required claim \"{claim}\": get a new token from the master")
        );
    }
}

#[test]
fn empty_subject_tenant_or_jti_are_rejected() {
    let (ring, key) = ring_with_key();
    for claim in ["sub", "tenant", "jti"] {
        let token = signed(&key, &header_for(&key), &claims_json(json!({ claim: "" })));
        let err = reject(&verifier(&ring), &token);
        assert!(matches!(err, AuthError::EmptyClaim { claim: c } if c == claim), "{err:?}");
        assert_eq!(err.to_string(), format!("token claim \"{claim}\" is empty: get a new token from the master"));
    }
}

#[test]
fn unknown_capability_is_rejected() {
    let (ring, key) = ring_with_key();
    let token = signed(&key, &header_for(&key), &claims_json(json!({"caps": ["search", "root"]})));
    let err = reject(&verifier(&ring), &token);
    assert!(matches!(err, AuthError::UnknownTokenCapability { ref value } if value == "root"), "{err:?}");
    assert_eq!(
        err.to_string(),
        "token grants unknown capability \"root\": known ones are search, ingest, actions, admin; get a new token from the master"
    );
}

#[test]
fn critical_header_extensions_are_rejected() {
    let (ring, key) = ring_with_key();
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}","crit":["b64"],"b64":false}}"#, key.kid());
    let err = reject(&verifier(&ring), &signed(&key, &header, &claims_json(json!({}))));
    assert!(matches!(err, AuthError::UnsupportedCritical), "{err:?}");
}

#[test]
fn overlong_token_is_rejected_before_parsing() {
    let ring = ring();
    let token = format!("{}.e30.", "A".repeat(MAX_TOKEN_LEN));
    let err = reject(&verifier(&ring), &token);
    assert_eq!(
        err.to_string(),
        format!(
            "token is {} bytes, more than the 8192 allowed: send the access token exactly as issued",
            MAX_TOKEN_LEN + 5
        )
    );
}

#[test]
fn access_and_context_tokens_are_not_interchangeable() {
    let ring = ring();
    let access_verifier = verifier(&ring);
    let context_verifier = access_verifier.with_audience(ragmesh_auth::CONTEXT_AUDIENCE);
    let (access, _) = ring.issue("alice", "acme", [Capability::Search], ttl(600), NOW).expect("issue");
    let principal = access_verifier.verify(access.as_str(), NOW).expect("access token");

    let context = ring.sign_context(&principal, ragmesh_auth::DEFAULT_CONTEXT_TTL, NOW).expect("context");
    let forwarded = context_verifier.verify(context.as_str(), NOW).expect("agent accepts the context");
    assert_eq!((forwarded.subject.as_str(), forwarded.tenant.as_str()), ("alice", "acme"));
    assert_eq!(forwarded.capabilities, principal.capabilities);
    assert_eq!(forwarded.expires_at, NOW + 30);
    assert!(matches!(context_verifier.verify(context.as_str(), NOW + 61), Err(AuthError::Expired { .. })));

    assert!(
        matches!(reject(&context_verifier, access.as_str()), AuthError::WrongAudience { .. }),
        "access token as context"
    );
    assert!(
        matches!(reject(&access_verifier, context.as_str()), AuthError::WrongAudience { .. }),
        "context as access token"
    );
}

#[test]
fn context_never_outlives_the_callers_token() {
    let ring = ring();
    let (access, _) = ring.issue("alice", "acme", [Capability::Search], ttl(10), NOW).expect("issue");
    let principal = verifier(&ring).verify(access.as_str(), NOW).expect("verify");
    let context = ring.sign_context(&principal, ttl(30), NOW).expect("context");
    let forwarded =
        verifier(&ring).with_audience(ragmesh_auth::CONTEXT_AUDIENCE).verify(context.as_str(), NOW).expect("verify");
    assert_eq!(forwarded.expires_at, NOW + 10);
}
