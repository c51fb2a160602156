//! Cost of verifying one access token: ragmesh-auth's EdDSA `Verifier::verify` (full checks: header,
//! kid, signature through jsonwebtoken, claims) against the replaced system's HS256 with
//! jsonwebtoken, run side by side. Also a bare `jsonwebtoken::decode` of the same EdDSA token
//! (RustCrypto ed25519-dalek) as a second reference point: the difference is our own checks.
//!
//! Run: `cargo bench -p ragmesh-auth --bench verify` (optionally `-- 50000` for the iteration count).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ragmesh_auth::{Capability, KeyRing, KeyRingConfig, SigningKey, unix_now};

const DEFAULT_ITERATIONS: u32 = 20_000;
const ROUNDS: u32 = 10;

fn main() {
    let iterations = std::env::args().skip(1).find_map(|arg| arg.parse::<u32>().ok()).unwrap_or(DEFAULT_ITERATIONS);
    let now = unix_now();

    // ragmesh: EdDSA through the full Verifier.
    let key = SigningKey::generate().expect("generate key");
    let der = pem::parse(key.to_pkcs8_pem().as_bytes()).expect("pem").into_contents();
    let ring = KeyRing::new(KeyRingConfig::new("master-1", "ragmesh"), key, now);
    let (token, claims) = ring
        .issue("alice", "acme", [Capability::Search, Capability::Ingest], Duration::from_secs(900), now)
        .expect("issue");
    let verifier = ring.verifier("ragmesh", now);
    let mut ours = || {
        let principal = verifier.verify(black_box(token.as_str()), now).expect("verify");
        black_box(principal);
    };

    // Baseline: HS256 with jsonwebtoken (one shared secret, as the replaced system did).
    let secret = b"the-one-secret-every-node-shared-in-the-old-system";
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["ragmesh"]);
    validation.set_issuer(&["master-1"]);
    let hs_token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret).expect("a non-empty HMAC key"),
    )
    .expect("encode HS256");
    let hs_key = jsonwebtoken::DecodingKey::from_secret(secret).expect("a non-empty HMAC key");
    let mut hs256 = || {
        let data = jsonwebtoken::decode::<ragmesh_auth::Claims>(black_box(&hs_token), &hs_key, &validation)
            .expect("verify HS256");
        black_box(data);
    };

    // Reference: EdDSA with jsonwebtoken's RustCrypto backend, same token format and key.
    let mut ed_validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    ed_validation.set_audience(&["ragmesh"]);
    ed_validation.set_issuer(&["master-1"]);
    let mut ed_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    ed_header.kid = Some(ring.current_kid().to_owned());
    let ed_token =
        jsonwebtoken::encode(&ed_header, &claims, &jsonwebtoken::EncodingKey::from_ed_der(&der)).expect("encode EdDSA");
    let ed_key = jsonwebtoken::DecodingKey::from_ed_der(ring.public_keys(now)[0].raw());
    let mut dalek = || {
        let data = jsonwebtoken::decode::<ragmesh_auth::Claims>(black_box(&ed_token), &ed_key, &ed_validation)
            .expect("verify EdDSA (jsonwebtoken)");
        black_box(data);
    };

    // Interleaved rounds, so that load from other processes hits all three alike; the median round
    // is the figure, the best round shows the cost on a quiet core.
    for _ in 0..1_000 {
        ours();
        hs256();
        dalek();
    }
    let per_round = (iterations / ROUNDS).max(1);
    let (mut ours_rounds, mut hs_rounds, mut dalek_rounds) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours_rounds.push(measure(per_round, &mut ours));
        hs_rounds.push(measure(per_round, &mut hs256));
        dalek_rounds.push(measure(per_round, &mut dalek));
    }
    let (ours, ours_best) = median_and_best(&mut ours_rounds);
    let (hs256, hs256_best) = median_and_best(&mut hs_rounds);
    let (dalek, dalek_best) = median_and_best(&mut dalek_rounds);

    println!(
        "token verification, {} iterations each in {ROUNDS} interleaved rounds (after 1,000 warm-up), token {} bytes",
        per_round * ROUNDS,
        token.as_str().len()
    );
    println!("                                                  median      best  (µs/verify)");
    println!("  ragmesh-auth Verifier::verify, EdDSA         {ours:>8.2}  {ours_best:>8.2}");
    println!("  jsonwebtoken decode, HS256 (old system)      {hs256:>8.2}  {hs256_best:>8.2}");
    println!("  jsonwebtoken decode, EdDSA (ed25519-dalek)   {dalek:>8.2}  {dalek_best:>8.2}");
    println!("  ratio ragmesh EdDSA / HS256 baseline         {:>7.1}x  {:>7.1}x", ours / hs256, ours_best / hs256_best);
    println!("  ratio ragmesh EdDSA / jsonwebtoken EdDSA     {:>7.2}x  {:>7.2}x", ours / dalek, ours_best / dalek_best);
}

/// Median and minimum of per-round figures.
fn median_and_best(rounds: &mut [f64]) -> (f64, f64) {
    rounds.sort_by(f64::total_cmp);
    (rounds[rounds.len() / 2], rounds[0])
}

/// Mean microseconds per call of `f` over `iterations` calls.
fn measure(iterations: u32, f: &mut impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}
