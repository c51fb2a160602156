//! Refresh tokens on a real sled store: rotation chains, reuse detection, races, revocation, restart.

mod common;

use std::io::Write;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::NOW;
use ragmesh_auth::{AuthError, Capability, RefreshConfig, RefreshStore, RefreshToken};
use ragmesh_store::{SledStore, StateStore};

fn open(dir: &std::path::Path) -> Arc<dyn StateStore> {
    Arc::new(SledStore::open(dir).expect("open sled"))
}

fn refresh_store(store: &Arc<dyn StateStore>) -> RefreshStore {
    RefreshStore::new(Arc::clone(store), RefreshConfig::default())
}

fn issue(refresh: &RefreshStore, subject: &str) -> RefreshToken {
    refresh.issue(subject, "acme", [Capability::Search, Capability::Ingest], NOW).expect("issue")
}

#[test]
fn rotation_chain_yields_the_identity_and_a_new_token_each_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let refresh = refresh_store(&store);
    let mut token = issue(&refresh, "alice");
    let mut family = None;
    for step in 1..=5 {
        let (next, grant) = refresh.rotate(token.as_str(), NOW + step).expect("rotate");
        assert_eq!((grant.subject.as_str(), grant.tenant.as_str()), ("alice", "acme"));
        assert_eq!(grant.caps, [Capability::Search, Capability::Ingest].into_iter().collect());
        assert_eq!(family.get_or_insert_with(|| grant.family.clone()), &grant.family, "same family throughout");
        assert_ne!(next, token);
        assert!(next.as_str().starts_with("rmr_") && next.as_str().len() == 47);
        token = next;
    }
}

#[test]
fn reusing_a_used_token_revokes_the_whole_family_and_logs_a_security_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let refresh = refresh_store(&store);
    let other_family = issue(&refresh, "alice");
    let t0 = issue(&refresh, "alice");
    let (t1, grant) = refresh.rotate(t0.as_str(), NOW + 1).expect("rotate");
    let (t2, _) = refresh.rotate(t1.as_str(), NOW + 2).expect("rotate");

    let log = capture_logs(|| refresh.rotate(t1.as_str(), NOW + 3).expect_err("t1 was already used"));
    let (err, log) = log;
    assert!(matches!(err, AuthError::RefreshReuse { ref family } if *family == grant.family), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "refresh token was already used, so every token of its family \"{}\" is now revoked (possible theft): sign in again",
            grant.family
        )
    );
    assert!(log.contains("security_event=\"refresh_token_reuse\""), "{log}");
    assert!(log.contains(&grant.family) && log.contains("subject=alice"), "{log}");
    assert!(!log.contains(t1.as_str()), "the token itself is never logged");

    // The newest token of the family (held by the thief or the victim) is dead too.
    let err = refresh.rotate(t2.as_str(), NOW + 4).expect_err("family revoked");
    assert!(matches!(err, AuthError::RefreshFamilyRevoked { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("refresh token belongs to revoked family \"{}\": sign in again to get a new one", grant.family)
    );
    assert!(matches!(refresh.rotate(t0.as_str(), NOW + 4), Err(AuthError::RefreshFamilyRevoked { .. })));
    refresh.rotate(other_family.as_str(), NOW + 4).expect("other families of the subject are unaffected");
}

#[test]
fn concurrent_rotation_of_one_token_has_exactly_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let refresh = refresh_store(&store);
    let token = issue(&refresh, "alice");
    let barrier = Barrier::new(8);
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    refresh.rotate(token.as_str(), NOW + 1)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let winners: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    for outcome in &outcomes {
        if let Err(err) = outcome {
            assert!(
                matches!(err, AuthError::RefreshReuse { .. } | AuthError::RefreshFamilyRevoked { .. }),
                "losers see reuse: {err:?}"
            );
        }
    }
    assert!(outcomes.iter().any(|o| matches!(o, Err(AuthError::RefreshReuse { .. }))));
    // Two parties presented the same token at once: that is reuse, so the winner's token dies too.
    let (next, _) = winners[0];
    assert!(matches!(refresh.rotate(next.as_str(), NOW + 2), Err(AuthError::RefreshFamilyRevoked { .. })));
}

#[test]
fn unknown_and_expired_tokens_fail_distinctly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let refresh = RefreshStore::new(Arc::clone(&store), RefreshConfig { ttl: Duration::from_secs(100) });
    let token = refresh.issue("alice", "acme", [], NOW).expect("issue");

    for bogus in ["", "rmr_", "garbage", "rmr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &"x".repeat(10_000)] {
        let err = refresh.rotate(bogus, NOW).expect_err("unknown");
        assert!(matches!(err, AuthError::UnknownRefreshToken), "{err:?}");
    }
    assert_eq!(
        refresh.rotate("garbage", NOW).expect_err("unknown").to_string(),
        "refresh token is not recognised: sign in again to get a new one"
    );
    let err = refresh.rotate(token.as_str(), NOW + 100).expect_err("expired");
    assert!(matches!(err, AuthError::RefreshExpired { expired_at } if expired_at == NOW + 100), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("refresh token expired at {} (unix seconds): sign in again to get a new one", NOW + 100)
    );
    refresh.rotate(token.as_str(), NOW + 99).expect("valid one second before");
}

#[test]
fn revoke_family_and_revoke_subject() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let refresh = refresh_store(&store);
    let (a1, grant_a1) = refresh.rotate(issue(&refresh, "alice").as_str(), NOW).expect("rotate");
    let a2 = issue(&refresh, "alice");
    let a3 = issue(&refresh, "alice");
    let bob = issue(&refresh, "bob");

    assert!(refresh.revoke_family(&grant_a1.family, NOW).expect("revoke"));
    assert!(!refresh.revoke_family(&grant_a1.family, NOW).expect("revoke again"), "already revoked");
    assert!(!refresh.revoke_family("no-such-family", NOW).expect("revoke unknown"));
    assert!(matches!(refresh.rotate(a1.as_str(), NOW), Err(AuthError::RefreshFamilyRevoked { .. })));

    assert_eq!(refresh.revoke_subject("alice", NOW).expect("revoke subject"), 2, "the two live families of alice");
    assert_eq!(refresh.revoke_subject("alice", NOW).expect("again"), 0);
    for token in [&a2, &a3] {
        assert!(matches!(refresh.rotate(token.as_str(), NOW), Err(AuthError::RefreshFamilyRevoked { .. })));
    }
    refresh.rotate(bob.as_str(), NOW).expect("bob is unaffected");
}

#[test]
fn state_survives_reopening_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (t0, t1);
    {
        let store = open(dir.path());
        let refresh = refresh_store(&store);
        t0 = issue(&refresh, "alice");
        t1 = refresh.rotate(t0.as_str(), NOW + 1).expect("rotate").0;
    }
    let t2 = {
        let store = open(dir.path());
        let refresh = refresh_store(&store);
        let (t2, grant) = refresh.rotate(t1.as_str(), NOW + 2).expect("token issued before the restart rotates");
        assert_eq!(grant.subject, "alice");
        // Reuse is still detected across the restart.
        assert!(matches!(refresh.rotate(t0.as_str(), NOW + 3), Err(AuthError::RefreshReuse { .. })));
        t2
    };
    let store = open(dir.path());
    let refresh = refresh_store(&store);
    assert!(
        matches!(refresh.rotate(t2.as_str(), NOW + 4), Err(AuthError::RefreshFamilyRevoked { .. })),
        "the revocation was persisted"
    );
}

#[test]
fn only_hashes_are_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let refresh = refresh_store(&store);
    let token = issue(&refresh, "alice");
    let secret = token.as_str().trim_start_matches("rmr_");
    let entries = store.scan("refresh_tokens").expect("scan");
    assert_eq!(entries.len(), 1);
    for (key, value) in entries {
        assert_eq!(key.len(), 32, "key is a SHA-256");
        for bytes in [&key, &value] {
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains(secret), "token material stored: {text}");
        }
    }
}

#[test]
fn purge_removes_expired_tokens_and_their_families() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let refresh = RefreshStore::new(Arc::clone(&store), RefreshConfig { ttl: Duration::from_secs(100) });
    let old = refresh.issue("alice", "acme", [], NOW).expect("issue");
    let young = refresh.issue("bob", "acme", [], NOW + 50).expect("issue");
    assert_eq!(refresh.purge_expired(NOW + 99).expect("purge"), 0);
    assert_eq!(refresh.purge_expired(NOW + 100).expect("purge"), 2, "alice's token and family");
    assert!(matches!(refresh.rotate(old.as_str(), NOW + 100), Err(AuthError::UnknownRefreshToken)));
    refresh.rotate(young.as_str(), NOW + 100).expect("bob's token is kept");
}

/// Runs `f` with a tracing subscriber that writes into a buffer; returns `f`'s result and the text.
fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf8");
    (result, text)
}
