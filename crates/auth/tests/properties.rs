//! Property tests: the verdict on time claims matches a reference predicate for arbitrary values,
//! no input makes the parsers panic, and no single changed byte of a genuine token is accepted.

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use ragmesh_auth::{AuthError, Capability, Claims, SigningKey, Verifier, VerifierConfig, parse_unverified_header};

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Valid,
    Expired,
    NotYetValid,
}

/// The rule, stated as simply as possible in exact (u128) arithmetic.
fn reference(exp: u64, iat: u64, nbf: Option<u64>, now: u64, leeway: u64) -> Verdict {
    let (exp, iat, now, leeway) = (exp as u128, iat as u128, now as u128, leeway as u128);
    if now >= exp + leeway {
        Verdict::Expired
    } else if iat > now + leeway || nbf.is_some_and(|nbf| nbf as u128 > now + leeway) {
        Verdict::NotYetValid
    } else {
        Verdict::Valid
    }
}

/// Times mostly within a few seconds of `NOW` (where verdicts flip, boundaries included), sometimes
/// anywhere in u64 or at its edges (where sums overflow).
fn time() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (NOW - 8)..=(NOW + 8),
        1 => any::<u64>(),
        1 => prop_oneof![Just(0u64), Just(1), Just(u64::MAX - 1), Just(u64::MAX)],
    ]
}

fn leeway() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..=8, 1 => any::<u64>(), 1 => Just(u64::MAX)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn time_claim_verdict_matches_the_reference(
        exp in time(), iat in time(), nbf in proptest::option::of(time()), now in time(), leeway in leeway(),
    ) {
        let key = signing_key();
        let claims = Claims {
            iss: ISSUER.into(), aud: AUDIENCE.into(), sub: "alice".into(), exp, iat, nbf,
            jti: "j".into(), tenant: "acme".into(), caps: vec![Capability::Search],
        };
        let token = key.sign(&claims).expect("sign");
        let config = VerifierConfig { leeway: Duration::from_secs(leeway), ..VerifierConfig::new(ISSUER, AUDIENCE) };
        let verdict = match Verifier::new([key.public_key()], config).verify(&token, now) {
            Ok(principal) => {
                prop_assert_eq!(principal.expires_at, exp);
                Verdict::Valid
            }
            Err(AuthError::Expired { .. }) => Verdict::Expired,
            Err(AuthError::NotYetValid { .. }) => Verdict::NotYetValid,
            Err(other) => return Err(TestCaseError::fail(format!("unexpected error {other:?}"))),
        };
        prop_assert_eq!(verdict, reference(exp, iat, nbf, now, leeway));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_unverified_header(&text);
        prop_assert!(verifier_of_fixed_key().verify(&text, NOW).is_err());
    }

    #[test]
    fn token_shaped_strings_never_panic(text in "[A-Za-z0-9_=+/.-]{0,400}") {
        let _ = parse_unverified_header(&text);
        prop_assert!(verifier_of_fixed_key().verify(&text, NOW).is_err());
    }

    #[test]
    fn arbitrary_headers_and_payloads_never_panic(
        header in proptest::collection::vec(any::<u8>(), 0..200),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let token = format!("{}.{}.{}", b64(&header), b64(&payload), b64(&signature));
        let _ = parse_unverified_header(&token);
        prop_assert!(verifier_of_fixed_key().verify(&token, NOW).is_err());
    }

    #[test]
    fn json_headers_with_arbitrary_fields_are_rejected_for_the_right_reason(
        alg in prop_oneof![Just("EdDSA".to_owned()), Just("none".to_owned()), Just("HS256".to_owned()), ".{0,12}"],
        kid in proptest::option::of(prop_oneof![Just(signing_key().kid().to_owned()), ".{0,50}"]),
        // Not empty: an empty payload part is malformed before the header is looked at.
        payload in ".{1,300}",
    ) {
        let header = serde_json::json!({ "alg": alg, "kid": kid }).to_string();
        let key = signing_key();
        let token = signed(key, &header, &payload);
        let parsed = parse_unverified_header(&token).expect("the header is a JSON object with an alg");
        prop_assert_eq!(&parsed.alg, &alg);
        let err = Verifier::new([key.public_key()], VerifierConfig::new(ISSUER, AUDIENCE))
            .verify(&token, NOW)
            .expect_err("an arbitrary payload is never a valid token");
        prop_assert_eq!(err.kind(), ragmesh_proto::ErrorKind::Unauthenticated);
        // The header decides first: a properly signed token naming another algorithm is refused for it.
        if alg.eq_ignore_ascii_case("none") {
            prop_assert!(matches!(err, AuthError::AlgNone), "alg {:?}: {:?}", alg, err);
        } else if alg != "EdDSA" {
            prop_assert!(
                matches!(err, AuthError::AlgorithmNotAllowed { alg: ref named } if *named == alg),
                "alg {:?}: {:?}", alg, err
            );
        } else if kid.as_deref().is_none_or(str::is_empty) {
            prop_assert!(matches!(err, AuthError::MissingKeyId), "{:?}", err);
        } else if kid.as_deref() != Some(key.kid()) {
            prop_assert!(matches!(err, AuthError::UnknownKeyId { .. }), "{:?}", err);
        } else {
            // Genuinely signed, so only the claims can be wrong.
            prop_assert!(
                matches!(err, AuthError::MalformedClaims { .. } | AuthError::MissingClaim { .. }),
                "{:?}", err
            );
        }
    }

    #[test]
    fn any_single_changed_byte_of_a_genuine_token_is_rejected(index in any::<prop::sample::Index>(), replacement in 0x21u8..0x7f) {
        let (token, verifier) = genuine_token();
        let mut bytes = token.clone().into_bytes();
        let at = index.index(bytes.len());
        prop_assume!(bytes[at] != replacement);
        bytes[at] = replacement;
        let tampered = String::from_utf8(bytes).expect("ascii");
        prop_assert!(verifier.verify(&tampered, NOW).is_err(), "accepted {} (byte {} changed)", tampered, at);
    }
}

/// One key for the whole run (generation is not what is under test).
fn signing_key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("generate"))
}

fn verifier_of_fixed_key() -> Verifier {
    Verifier::new([signing_key().public_key()], VerifierConfig::new(ISSUER, AUDIENCE))
}

fn genuine_token() -> (String, Verifier) {
    let key = signing_key();
    let claims = Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: "alice".into(),
        exp: NOW + 600,
        iat: NOW,
        nbf: None,
        jti: "j".into(),
        tenant: "acme".into(),
        caps: vec![Capability::Search],
    };
    let token = key.sign(&claims).expect("sign");
    let verifier = verifier_of_fixed_key();
    verifier.verify(&token, NOW).expect("the untampered token verifies");
    (token, verifier)
}
