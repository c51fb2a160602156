//! Key rotation without downtime, persistence of the key ring, and the agent side of key delivery.

mod common;

use std::sync::Arc;

use common::*;
use ragmesh_auth::{AuthError, Capability, KeyRing, PublicKey, Verifier, VerifierConfig, parse_unverified_header};
use ragmesh_store::{SledStore, StateStore};

#[test]
fn token_issued_before_rotation_verifies_until_the_retired_window_ends() {
    let mut ring = ring(); // max token lifetime 1 h, leeway 30 s
    let old_kid = ring.current_kid().to_owned();
    let (old_token, _) = ring.issue("alice", "acme", [Capability::Search], ttl(3600), NOW).expect("issue");

    let rotated_at = NOW + 100;
    let new_kid = ring.rotate(rotated_at).expect("rotate");
    assert_ne!(new_kid, old_kid);
    assert_eq!(ring.current_kid(), new_kid);
    let (new_token, _) = ring.issue("alice", "acme", [Capability::Search], ttl(600), rotated_at).expect("issue");
    assert_eq!(parse_unverified_header(new_token.as_str()).expect("header").kid.as_deref(), Some(new_kid.as_str()));

    // Verifiers refreshed after the rotation accept both generations of tokens.
    let verifier = ring.verifier(AUDIENCE, rotated_at);
    assert_eq!(verifier.kids().count(), 2);
    verifier.verify(old_token.as_str(), rotated_at + 10).expect("old token still verifies after rotate");
    verifier.verify(new_token.as_str(), rotated_at + 10).expect("new token verifies");
    verifier.verify(old_token.as_str(), NOW + 3600 + 29).expect("old token verifies until its own expiry");

    let window_end = rotated_at + 3600 + 30;
    assert_eq!(ring.retired()[0].public.verify_until(), Some(window_end));
    assert_eq!(ring.prune(window_end), 0, "the retired key is kept through the last second of its window");
    assert_eq!(ring.prune(window_end + 1), 1, "and dropped after it");

    let after = window_end + 1;
    let err = ring.verifier(AUDIENCE, after).verify(old_token.as_str(), after).expect_err("pruned key");
    assert!(matches!(err, AuthError::UnknownKeyId { ref kid } if *kid == old_kid), "{err:?}");
    // A verifier that was never refreshed also stops trusting the retired key after its window.
    let err = verifier.verify(old_token.as_str(), after).expect_err("window over");
    assert!(matches!(err, AuthError::UnknownKeyId { .. }), "{err:?}");

    let (fresh, _) = ring.issue("alice", "acme", [Capability::Search], ttl(600), after).expect("issue");
    ring.verifier(AUDIENCE, after).verify(fresh.as_str(), after).expect("tokens of the current key keep working");
}

#[test]
fn rotating_twice_keeps_both_retired_keys_until_their_windows_end() {
    let mut ring = ring();
    let (first, _) = ring.issue("a", "t", [], ttl(3600), NOW).expect("issue");
    ring.rotate(NOW + 10).expect("rotate");
    let (second, _) = ring.issue("a", "t", [], ttl(3600), NOW + 10).expect("issue");
    ring.rotate(NOW + 20).expect("rotate");
    assert_eq!(ring.retired().len(), 2);
    let verifier = ring.verifier(AUDIENCE, NOW + 30);
    verifier.verify(first.as_str(), NOW + 30).expect("first generation");
    verifier.verify(second.as_str(), NOW + 30).expect("second generation");
    assert_eq!(ring.prune(NOW + 10 + 3630 + 1), 1, "only the first retired key's window is over");
}

#[test]
fn issue_refuses_bad_requests() {
    let ring = ring();
    let err = ring.issue("alice", "acme", [], ttl(3601), NOW).expect_err("ttl over the max");
    assert_eq!(err.to_string(), "requested lifetime of 3601s exceeds the maximum of 3600s: ask for a shorter ttl");
    assert!(matches!(ring.issue("", "acme", [], ttl(60), NOW), Err(AuthError::InvalidInput { field: "subject", .. })));
    assert!(matches!(ring.issue("a", "", [], ttl(60), NOW), Err(AuthError::InvalidInput { field: "tenant", .. })));
    assert!(matches!(ring.issue("a\n", "t", [], ttl(60), NOW), Err(AuthError::InvalidInput { .. })));
    assert!(matches!(ring.issue("a", "t", [], ttl(0), NOW), Err(AuthError::InvalidInput { field: "ttl", .. })));
    let (_, claims) =
        ring.issue("a", "t", [Capability::Admin, Capability::Search, Capability::Admin], ttl(60), NOW).expect("issue");
    assert_eq!(claims.caps, vec![Capability::Search, Capability::Admin], "sorted and deduplicated");
    assert_eq!((claims.iss.as_str(), claims.aud.as_str(), claims.iat, claims.exp), (ISSUER, AUDIENCE, NOW, NOW + 60));
    let (_, again) = ring.issue("a", "t", [], ttl(60), NOW).expect("issue");
    assert_ne!(claims.jti, again.jti, "every token gets a fresh jti");
}

#[test]
fn agents_verify_with_keys_received_as_parts() {
    let mut ring = ring();
    let (token, _) = ring.issue("alice", "acme", [Capability::Search], ttl(600), NOW).expect("issue");
    ring.rotate(NOW + 1).expect("rotate");
    // What the master sends over the health stream, field by field, and what the agent rebuilds.
    let received: Vec<PublicKey> = ring
        .public_keys(NOW + 1)
        .iter()
        .map(|k| PublicKey::new(k.kid(), k.alg(), k.raw(), k.verify_until()).expect("valid key"))
        .collect();
    let agent = Verifier::new(received, VerifierConfig::new(ISSUER, AUDIENCE));
    assert_eq!(agent.verify(token.as_str(), NOW + 2).expect("verify").subject, "alice");
}

#[test]
fn key_ring_survives_a_restart_and_stores_only_the_current_private_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_token, first_kid, current_kid);
    {
        let store = SledStore::open(dir.path()).expect("open");
        let mut ring = KeyRing::load_or_generate(&store, config(), NOW).expect("first start generates");
        first_kid = ring.current_kid().to_owned();
        old_token = ring.issue("alice", "acme", [Capability::Search], ttl(600), NOW).expect("issue").0;
        current_kid = ring.rotate(NOW + 5).expect("rotate");
        ring.save(&store).expect("save");

        let stored = store.get("signing_keys", b"keyring").expect("get").expect("saved");
        let text = String::from_utf8(stored).expect("utf8");
        assert_eq!(text.matches("BEGIN PRIVATE KEY").count(), 1, "retired keys are stored public only");
    }
    let store: Arc<dyn StateStore> = Arc::new(SledStore::open(dir.path()).expect("reopen"));
    let ring = KeyRing::load_or_generate(store.as_ref(), config(), NOW + 10).expect("restart loads");
    assert_eq!(ring.current_kid(), current_kid);
    assert_eq!(ring.retired().len(), 1);
    assert_eq!(ring.retired()[0].public.kid(), first_kid);
    ring.verifier(AUDIENCE, NOW + 10).verify(old_token.as_str(), NOW + 10).expect("pre-restart token still verifies");
    let (token, _) = ring.issue("bob", "acme", [], ttl(60), NOW + 10).expect("issue");
    assert_eq!(parse_unverified_header(token.as_str()).expect("header").kid.as_deref(), Some(current_kid.as_str()));
}

#[test]
fn a_corrupt_stored_ring_is_reported_not_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    store.put("signing_keys", b"keyring", b"{not json").expect("put");
    let err = KeyRing::load_or_generate(&store, config(), NOW).expect_err("corrupt");
    assert!(matches!(err, AuthError::CorruptRecord { tree: "signing_keys", .. }), "{err:?}");
}
