//! Fuzz target for the token parser: arbitrary bytes go to `parse_unverified_header` and
//! `Verifier::verify` (which must return, never panic); the same bytes, split into a header and a
//! payload and signed with the verifier's key, reach the claim checks that forged input cannot.
//! Inputs starting with 0xfe are structure-aware: the rest is expanded into JSON tokens and their
//! repeat counts (see `common/expand.rs` of the index fuzz crate), so a few bytes make deeply
//! nested or long repeated header and payload JSON, signed, within the token length limit.
//!
//! Run: `cd crates/auth/fuzz && cargo +nightly fuzz run token_parse -- -max_total_time=600`

#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use ragmesh_auth::{SigningKey, Verifier, VerifierConfig, parse_unverified_header};
use ring::signature::Ed25519KeyPair;

#[path = "../../../index/fuzz/common/expand.rs"]
mod expand;

/// JSON pieces of headers and claims: nesting, repetition, the fields the verifier reads.
const JSON_TOKENS: &[&str] = &[
    "{", "}", "[", "]", ",", ":", "\"", "\"alg\":\"EdDSA\"", "\"kid\":", "\"crit\":", "\"sub\":\"a\"",
    "\"exp\":", "\"aud\":", "\"caps\":", "1", "1e999", "-0", "null", "true", "\"\\u0000\"", "\\", "\"x\"", " ",
];
/// Header and payload JSON each stay under this, so that the base64 token fits the 8 KiB limit
/// and reaches the parsers instead of the length check.
const MAX_JSON_BYTES: usize = 2900;

/// RFC 8410 section 10.3 example key: fixed, so that runs are reproducible.
const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
const NOW: u64 = 1_767_225_600;

struct Fixture {
    verifier: Verifier,
    signer: Ed25519KeyPair,
    kid: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = SigningKey::from_pkcs8_pem(KEY_PEM).expect("fixed key");
        let pkcs8 = base64::engine::general_purpose::STANDARD
            .decode("MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC")
            .expect("der");
        Fixture {
            verifier: Verifier::new([key.public_key()], VerifierConfig::new("master", "ragmesh")),
            signer: Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).expect("pkcs8"),
            kid: key.kid().to_owned(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_unverified_header(text);
        let _ = fixture.verifier.verify(text, NOW);
    }

    // Signed path: bytes before the first 0xff are the payload JSON, the rest picks a header.
    let (structured, data) = match data.split_first() {
        Some((0xfe, rest)) => (true, rest),
        _ => (false, data),
    };
    let (payload, rest) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let shaped = |bytes: &[u8]| -> Vec<u8> {
        if structured { expand::expand(bytes, JSON_TOKENS, MAX_JSON_BYTES).into_bytes() } else { bytes.to_vec() }
    };
    let payload = shaped(payload);
    let header = match rest.first() {
        Some(0) | None => format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, fixture.kid),
        Some(_) => String::from_utf8_lossy(&shaped(&rest[1..])).into_owned(),
    };
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let signature = fixture.signer.sign(signing_input.as_bytes());
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
    let _ = fixture.verifier.verify(&token, NOW);
});
