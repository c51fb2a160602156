//! Join tokens on a real sled store: single-use races, multi-use counts, expiry, listing, restart.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::NOW;
use ragmesh_auth::{AuthError, JoinTokenStatus, JoinTokenStore};
use ragmesh_store::{SledStore, StateStore};

fn open(dir: &std::path::Path) -> Arc<dyn StateStore> {
    Arc::new(SledStore::open(dir).expect("open sled"))
}

const HOUR: Duration = Duration::from_secs(3600);

/// Eight agents race to consume `token`; returns the outcomes.
fn race(joins: &JoinTokenStore, token: &str) -> Vec<Result<ragmesh_auth::JoinTokenInfo, AuthError>> {
    let barrier = Barrier::new(8);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    joins.consume(token, &format!("node-{i}"), NOW + 1)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    })
}

#[test]
fn single_use_token_raced_by_eight_agents_admits_exactly_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let joins = JoinTokenStore::new(open(dir.path()));
    let (token, info) = joins.create(HOUR, None, NOW, "rack 4").expect("create");
    assert_eq!(info.uses_left, 1);

    let outcomes = race(&joins, token.as_str());
    let winners: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    for outcome in &outcomes {
        if let Err(err) = outcome {
            assert!(matches!(err, AuthError::JoinTokenExhausted { .. }), "{err:?}");
        }
    }
    let listed = joins.list(NOW + 2).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].used_by, winners[0].used_by);
    assert_eq!(listed[0].used_by.len(), 1);
    assert_eq!(listed[0].status, JoinTokenStatus::Exhausted);
}

#[test]
fn multi_use_token_counts_down_even_under_races() {
    let dir = tempfile::tempdir().expect("tempdir");
    let joins = JoinTokenStore::new(open(dir.path()));
    let (token, _) = joins.create(HOUR, Some(3), NOW, "").expect("create");
    for (i, left) in [2, 1, 0].into_iter().enumerate() {
        let info = joins.consume(token.as_str(), &format!("n{i}"), NOW).expect("use");
        assert_eq!(info.uses_left, left);
    }
    let err = joins.consume(token.as_str(), "n3", NOW).expect_err("exhausted");
    assert!(matches!(err, AuthError::JoinTokenExhausted { ref id } if *id == joins.list(NOW).expect("list")[0].id));
    assert!(
        err.to_string().ends_with("has already been used up: ask an operator for a new one (ragmeshctl token join)"),
        "{err}"
    );

    let (token, _) = joins.create(HOUR, Some(3), NOW, "").expect("create");
    let outcomes = race(&joins, token.as_str());
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 3, "{outcomes:?}");
}

#[test]
fn a_node_retrying_its_join_spends_no_second_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let joins = JoinTokenStore::new(open(dir.path()));
    let (token, _) = joins.create(HOUR, Some(2), NOW, "").expect("create");
    assert_eq!(joins.consume(token.as_str(), "n0", NOW).expect("first").uses_left, 1);
    let again = joins.consume(token.as_str(), "n0", NOW).expect("the same node again");
    assert_eq!((again.uses_left, again.used_by.len()), (1, 1), "{again:?}");
    assert_eq!(joins.consume(token.as_str(), "n1", NOW).expect("another node").uses_left, 0);
    assert!(joins.consume(token.as_str(), "n0", NOW).is_ok(), "n0 may retry even now the token is spent");
    let err = joins.consume(token.as_str(), "n2", NOW).expect_err("a third node");
    assert!(matches!(err, AuthError::JoinTokenExhausted { .. }), "{err:?}");
    let expired = joins.consume(token.as_str(), "n0", NOW + 2 * 3600).expect_err("expired");
    assert!(matches!(expired, AuthError::JoinTokenExpired { .. }), "{expired:?}");
}

#[test]
fn expired_unknown_and_revoked_tokens_fail_distinctly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let joins = JoinTokenStore::new(open(dir.path()));
    let (token, info) = joins.create(Duration::from_secs(60), Some(5), NOW, "").expect("create");
    let err = joins.consume(token.as_str(), "late", NOW + 60).expect_err("expired");
    assert!(matches!(err, AuthError::JoinTokenExpired { expired_at, .. } if expired_at == NOW + 60), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "join token {} expired at {} (unix seconds): ask an operator for a new one (ragmeshctl token join)",
            info.id,
            NOW + 60
        )
    );
    joins.consume(token.as_str(), "on-time", NOW + 59).expect("one second before expiry");
    assert_eq!(joins.list(NOW + 60).expect("list")[0].status, JoinTokenStatus::Expired);

    for bogus in ["", "rmj_nope", "rmj_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let err = joins.consume(bogus, "n", NOW).expect_err("unknown");
        assert!(matches!(err, AuthError::UnknownJoinToken), "{err:?}");
    }
    assert_eq!(
        AuthError::UnknownJoinToken.to_string(),
        "join token is not recognised: ask an operator for a new one (ragmeshctl token join)"
    );

    let (token, info) = joins.create(HOUR, None, NOW, "").expect("create");
    assert!(joins.revoke(&info.id).expect("revoke"));
    assert!(!joins.revoke(&info.id).expect("revoke again"));
    assert!(matches!(joins.consume(token.as_str(), "n", NOW), Err(AuthError::UnknownJoinToken)));
}

#[test]
fn list_never_exposes_token_material() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let joins = JoinTokenStore::new(Arc::clone(&store));
    let (token, _) = joins.create(HOUR, Some(2), NOW, "for the new rack").expect("create");
    joins.consume(token.as_str(), "node-a", NOW).expect("use");
    let secret = token.as_str().trim_start_matches("rmj_");

    let listed = joins.list(NOW).expect("list");
    assert_eq!(listed[0].note, "for the new rack");
    assert_eq!(listed[0].used_by, vec!["node-a".to_owned()]);
    assert_eq!(listed[0].status, JoinTokenStatus::Active);
    let shown = format!("{listed:?} {token:?}");
    assert!(!shown.contains(secret), "{shown}");
    for (key, value) in store.scan("join_tokens").expect("scan") {
        assert_eq!(key.len(), 32, "stored under its SHA-256");
        assert!(!String::from_utf8_lossy(&value).contains(secret));
    }
}

#[test]
fn join_tokens_survive_reopening_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = {
        let joins = JoinTokenStore::new(open(dir.path()));
        let (token, _) = joins.create(HOUR, Some(2), NOW, "").expect("create");
        joins.consume(token.as_str(), "before-restart", NOW).expect("use");
        token
    };
    let joins = JoinTokenStore::new(open(dir.path()));
    let info = joins.consume(token.as_str(), "after-restart", NOW + 1).expect("use");
    assert_eq!(info.used_by, vec!["before-restart".to_owned(), "after-restart".to_owned()]);
    assert!(matches!(joins.consume(token.as_str(), "third", NOW + 2), Err(AuthError::JoinTokenExhausted { .. })));
}

#[test]
fn create_and_consume_validate_their_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let joins = JoinTokenStore::new(open(dir.path()));
    assert!(matches!(joins.create(HOUR, Some(0), NOW, ""), Err(AuthError::InvalidInput { field: "uses", .. })));
    assert!(matches!(joins.create(Duration::ZERO, None, NOW, ""), Err(AuthError::InvalidInput { field: "ttl", .. })));
    let (token, _) = joins.create(HOUR, None, NOW, "").expect("create");
    assert!(matches!(joins.consume(token.as_str(), "", NOW), Err(AuthError::InvalidInput { .. })));
    assert_eq!(joins.purge_expired(NOW + 3600).expect("purge"), 1);
    assert!(joins.list(NOW).expect("list").is_empty());
}
