//! Identity and access end to end, on a real master and agents over mTLS: bearer tokens and
//! their rejections, capabilities, key rotation with tokens in flight (agents get the new keys
//! over their health streams), refresh rotation and reuse detection, tenant isolation through
//! every request field, agent admission (a single-use join token raced by two agents), eviction,
//! and per-principal rate limits.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ragmesh_agent::LinkStatus;
use ragmesh_e2e::{Expect, Mesh, assert_outcomes, trace_init};
use ragmesh_master::node::NodeState;
use ragmesh_proto::v1::{self, OutcomeStatus};
use tonic::Code;

fn doc(id: &str, body: &str, acl: Option<v1::DocumentAcl>) -> v1::Document {
    v1::Document {
        id: id.into(),
        collection: "docs".into(),
        title: id.into(),
        body: body.into(),
        acl,
        ..Default::default()
    }
}

/// Splits a JWT into its decoded header and payload JSON and its signature part.
fn parts(token: &str) -> (serde_json::Value, serde_json::Value, String) {
    let mut it = token.split('.');
    let header = B64.decode(it.next().expect("header")).expect("b64");
    let payload = B64.decode(it.next().expect("payload")).expect("b64");
    let signature = it.next().expect("signature").to_owned();
    (serde_json::from_slice(&header).expect("json"), serde_json::from_slice(&payload).expect("json"), signature)
}

fn encode(value: &serde_json::Value) -> String {
    B64.encode(serde_json::to_vec(value).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forged_or_wrong_token_is_refused_with_a_clear_reason() {
    trace_init();
    let mesh = Mesh::builder().agents(1).start().await;
    let issued = mesh.issue_token("alice", "acme", &["search"]).await;
    let good = issued.access_token.clone();
    let ok =
        mesh.client_with_token(&good).await.search(v1::SearchRequest { query: "x".into(), ..Default::default() }).await;
    let ok = ok.expect("a genuine token works").into_inner();
    // The agent accepted the master's context for this caller too: it searched, and had nothing.
    assert_outcomes(&ok, &[("agent-1", Expect::Ok { generation: 0, hits: 0 })]);

    let (header, payload, signature) = parts(&good);
    let keys = mesh.auth_client().await.get_verification_keys(v1::GetVerificationKeysRequest {}).await.expect("keys");
    let public_key = keys.into_inner().keys[0].public_key.clone();

    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    cases.push(("garbage", "not-a-jwt".into(), "malformed token"));
    let none = serde_json::json!({"alg": "none", "typ": "JWT"});
    cases.push(("alg none", format!("{}.{}.", encode(&none), encode(&payload)), "unsigned"));
    // The classic key confusion: HS256 with the master's public key as the HMAC secret.
    let hs = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": header["kid"]});
    let signing_input = format!("{}.{}", encode(&hs), encode(&payload));
    let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public_key), signing_input.as_bytes());
    cases.push(("HS256 with the public key", format!("{signing_input}.{}", B64.encode(mac.as_ref())), "HS256"));
    let mut tampered = payload.clone();
    tampered["tenant"] = "globex".into();
    cases.push((
        "tampered payload",
        format!("{}.{}.{signature}", encode(&header), encode(&tampered)),
        "signature does not verify",
    ));
    let mut unknown = header.clone();
    unknown["kid"] = "not-a-key".into();
    cases.push(("unknown kid", format!("{}.{}.{signature}", encode(&unknown), encode(&payload)), "unknown key id"));
    // Expiry is not among these forgeries (an edited exp only fails the signature): see
    // `a_genuine_token_is_refused_as_expired_once_its_ttl_has_passed`.

    for (what, token, needle) in cases {
        let status = mesh
            .client_with_token(&token)
            .await
            .search(v1::SearchRequest { query: "x".into(), ..Default::default() })
            .await
            .expect_err(what);
        println!("{what}: {:?}: {}", status.code(), status.message());
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(status.message().contains(needle), "{what}: {}", status.message());
    }

    // A certificate that is not an operator, without a token.
    let channel = mesh.channel_with(&mesh.pki.issue("app")).await.expect("connects");
    let status = v1::master_service_client::MasterServiceClient::new(channel)
        .search(v1::SearchRequest { query: "x".into(), ..Default::default() })
        .await
        .expect_err("no credentials");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("not an operator"), "{}", status.message());

    // A valid token without the capability.
    let status =
        mesh.client_with_token(&good).await.list_nodes(v1::ListNodesRequest {}).await.expect_err("needs admin");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("lacks capability \"admin\""), "{}", status.message());
    mesh.shutdown().await;
}

/// A real expiry over the wire: a genuine one-second token, on a master with no leeway, is
/// refused as expired (not as tampered) once its second has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_token_is_refused_as_expired_once_its_ttl_has_passed() {
    trace_init();
    let mesh = Mesh::builder().agents(1).token_leeway(Duration::ZERO).start().await;
    // One second is the shortest lifetime the master issues (ttl_seconds 0 means its default).
    let request = v1::IssueTokenRequest {
        subject: "alice".into(),
        tenant: "acme".into(),
        capabilities: vec!["search".into()],
        ttl_seconds: 1,
    };
    let issued = mesh.auth_client().await.issue_token(request).await.expect("issue").into_inner();
    let (_, payload, _) = parts(&issued.access_token);
    assert_eq!(payload["exp"].as_u64(), payload["iat"].as_u64().map(|iat| iat + 1), "a one-second token");

    let mut client = mesh.client_with_token(&issued.access_token).await;
    let search = || v1::SearchRequest { query: "x".into(), ..Default::default() };
    // Accepted until its second ends (unless that second already ended while it was issued).
    let status = ragmesh_e2e::wait_for("the token to expire", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { client.search(search()).await.err() }
    })
    .await
    .0;
    println!("expired: {:?}: {}", status.code(), status.message());
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("token expired at"), "{}", status.message());
    assert!(status.message().contains("leeway 0s"), "{}", status.message());
    // And it stays refused.
    let again = client.search(search()).await.expect_err("still expired");
    assert!(again.message().contains("token expired at"), "{}", again.message());
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_old_tokens_working_and_agents_learn_the_new_key() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    let before = mesh.issue_token("alice", "acme", &["search"]).await.access_token;
    let rotated = mesh.auth_client().await.rotate_signing_key(v1::RotateSigningKeyRequest {}).await.expect("rotate");
    let new_kid = rotated.into_inner().kid;
    let after = mesh.issue_token("alice", "acme", &["search"]).await.access_token;
    assert_eq!(parts(&after).0["kid"], new_kid.as_str());
    assert_ne!(parts(&before).0["kid"], new_kid.as_str());

    // Contexts are now signed with the new key: agents must have received it on their health
    // streams, or they would refuse the master's calls.
    for token in [&before, &after] {
        let response = ragmesh_e2e::wait_for("agents accept the new key", Duration::from_secs(5), || async {
            let response = mesh
                .client_with_token(token)
                .await
                .search(v1::SearchRequest { query: "x".into(), ..Default::default() })
                .await
                .expect("token still accepted")
                .into_inner();
            response.nodes.iter().all(|n| n.status() == OutcomeStatus::Ok).then_some(response)
        })
        .await
        .0;
        assert_eq!(response.nodes.len(), 2);
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    trace_init();
    let mesh = Mesh::builder().agents(1).start().await;
    let mut auth = mesh.auth_client().await;
    let first = mesh.issue_token("alice", "acme", &["search"]).await.refresh_token;
    let second = auth
        .refresh_token(v1::RefreshTokenRequest { refresh_token: first.clone() })
        .await
        .expect("first refresh")
        .into_inner();
    assert_ne!(second.refresh_token, first);
    assert!(!second.access_token.is_empty());

    let reuse = auth.refresh_token(v1::RefreshTokenRequest { refresh_token: first }).await.expect_err("reuse");
    println!("reuse: {:?}: {}", reuse.code(), reuse.message());
    assert_eq!(reuse.code(), Code::Unauthenticated);
    assert!(reuse.message().contains("already used"), "{}", reuse.message());
    let after_theft = auth
        .refresh_token(v1::RefreshTokenRequest { refresh_token: second.refresh_token })
        .await
        .expect_err("the family is revoked");
    assert!(after_theft.message().contains("revoked"), "{}", after_theft.message());

    // Revoking a family by its id (returned at issue time).
    let carol = mesh.issue_token("carol", "acme", &["search"]).await;
    assert!(!carol.family.is_empty());
    let revoked = auth
        .revoke_tokens(v1::RevokeTokensRequest {
            target: Some(v1::revoke_tokens_request::Target::Family(carol.family)),
        })
        .await
        .expect("revoke family")
        .into_inner()
        .revoked;
    assert_eq!(revoked, 1);
    auth.refresh_token(v1::RefreshTokenRequest { refresh_token: carol.refresh_token })
        .await
        .expect_err("family revoked");

    // Revoking a subject kills its live families and its access tokens issued so far.
    let bob = mesh.issue_token("bob", "acme", &["search"]).await;
    let live = bob.refresh_token;
    let mut bob_client = mesh.client_with_token(&bob.access_token).await;
    let works = bob_client.search(v1::SearchRequest { query: "x".into(), ..Default::default() }).await;
    assert_outcomes(&works.expect("bob works").into_inner(), &[("agent-1", Expect::Ok { generation: 0, hits: 0 })]);
    let revoked = auth
        .revoke_tokens(v1::RevokeTokensRequest {
            target: Some(v1::revoke_tokens_request::Target::Subject("bob".into())),
        })
        .await
        .expect("revoke")
        .into_inner()
        .revoked;
    assert_eq!(revoked, 1);
    auth.refresh_token(v1::RefreshTokenRequest { refresh_token: live }).await.expect_err("revoked subject");
    let refused = bob_client
        .search(v1::SearchRequest { query: "x".into(), ..Default::default() })
        .await
        .expect_err("bob's access token is revoked too");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("revoked"), "{}", refused.message());
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_read_or_touch_each_others_documents_through_any_field() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    let acme = mesh.issue_token("alice", "acme", &["search", "ingest"]).await.access_token;
    let globex = mesh.issue_token("gary", "globex", &["search", "ingest"]).await.access_token;
    let mut acme_client = mesh.client_with_token(&acme).await;
    let mut globex_client = mesh.client_with_token(&globex).await;

    let written = acme_client
        .ingest_documents(v1::IngestDocumentsRequest {
            shard: String::new(),
            node: "agent-1".into(),
            documents: vec![doc("secret-1", "quarterly merger plans", None)],
        })
        .await
        .expect("acme writes")
        .into_inner()
        .generation;
    // Routing by collection must know agent-1 holds "docs", or a search naming the collection
    // would skip it and find nothing for the wrong reason.
    mesh.wait_generation("agent-1", written).await;
    let found = acme_client
        .search(v1::SearchRequest { query: "merger".into(), ..Default::default() })
        .await
        .expect("search")
        .into_inner();
    // Every node searched: agent-1 the index holding the document, agent-2 its empty one.
    let with_the_document = Expect::Ok { generation: written, hits: 1 };
    let empty = Expect::Ok { generation: 0, hits: 0 };
    assert_outcomes(&found, &[("agent-1", with_the_document), ("agent-2", empty)]);
    assert_eq!(found.hits.len(), 1, "acme reads its own document");

    // globex tries every request field: plain query, the id, collections, node selection, limits.
    // Each must be answered by agent-1 from the generation holding the document, with no hits:
    // an empty answer from a node that failed, was skipped or searched an older index proves
    // nothing.
    let hidden = Expect::Ok { generation: written, hits: 0 };
    let attempts = [
        (
            v1::SearchRequest { query: "merger".into(), ..Default::default() },
            vec![("agent-1", hidden), ("agent-2", empty)],
        ),
        (
            v1::SearchRequest { query: "secret-1".into(), ..Default::default() },
            vec![("agent-1", hidden), ("agent-2", empty)],
        ),
        (
            v1::SearchRequest {
                query: "quarterly merger plans".into(),
                collections: vec!["docs".into()],
                ..Default::default()
            },
            vec![("agent-1", hidden), ("agent-2", Expect::Skipped(v1::SkipReason::NotRouted))],
        ),
        (
            v1::SearchRequest {
                query: "merger".into(),
                nodes: vec!["agent-1".into()],
                limit: 1000,
                min_score: -1.0,
                ..Default::default()
            },
            vec![("agent-1", hidden)],
        ),
    ];
    for (attempt, expected) in attempts {
        let response = globex_client.search(attempt.clone()).await.expect("search runs").into_inner();
        assert_outcomes(&response, &expected);
        assert!(response.hits.is_empty(), "globex must not see acme's document via {attempt:?}: {:?}", response.hits);
    }

    // globex cannot overwrite, delete, or grant itself access.
    let overwrite = globex_client
        .ingest_documents(v1::IngestDocumentsRequest {
            shard: String::new(),
            node: "agent-1".into(),
            documents: vec![doc("secret-1", "pwned", None)],
        })
        .await
        .expect_err("overwrite");
    assert_eq!(overwrite.code(), Code::PermissionDenied, "{overwrite:?}");
    assert!(overwrite.message().contains("belongs to tenant \"acme\""), "{}", overwrite.message());
    let delete = globex_client
        .remove_documents(v1::RemoveDocumentsRequest {
            shard: String::new(),
            node: "agent-1".into(),
            refs: vec![v1::DocumentRef { collection: "docs".into(), id: "secret-1".into() }],
        })
        .await
        .expect_err("delete");
    assert_eq!(delete.code(), Code::PermissionDenied);
    for acl in [
        v1::DocumentAcl { tenants: vec!["acme".into()], ..Default::default() },
        v1::DocumentAcl { public: true, ..Default::default() },
    ] {
        let grant = globex_client
            .ingest_documents(v1::IngestDocumentsRequest {
                shard: String::new(),
                node: "agent-2".into(),
                documents: vec![doc("g-1", "x", Some(acl))],
            })
            .await
            .expect_err("grant");
        assert_eq!(grant.code(), Code::PermissionDenied, "{grant:?}");
    }
    // Operators still see everything, and the refused writes changed nothing.
    let all = mesh.search(v1::SearchRequest { query: "merger".into(), ..Default::default() }).await;
    assert_outcomes(&all, &[("agent-1", with_the_document), ("agent-2", empty)]);
    assert_eq!(all.hits.len(), 1);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_join_token_admits_exactly_one_of_two_racing_agents() {
    trace_init();
    let mesh = Mesh::builder().agents(0).start().await;
    let token = mesh.create_join_token(1).await;
    let mut agents = Vec::new();
    for name in ["racer-1", "racer-2"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = mesh.agent_config(name, dir.path().to_owned());
        config.join_token = Some(ragmesh_config::Secret(token.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        agents.push((ragmesh_agent::start(config, listener).await.expect("agent starts"), dir));
    }
    let (winner, _) =
        ragmesh_e2e::wait_for("one racer admitted and the other refused", Duration::from_secs(10), || async {
            let registry = mesh.master().registry()?;
            let admitted: Vec<&str> =
                ["racer-1", "racer-2"].into_iter().filter(|n| registry.get(n).is_some()).collect();
            let refused = agents.iter().filter(
                |(a, _)| matches!(&*a.link_status().borrow(), LinkStatus::Connecting(Some(e)) if e.contains("used up")),
            );
            (admitted.len() == 1 && refused.count() == 1).then(|| admitted[0].to_owned())
        })
        .await;
    println!("admitted: {winner}");
    let pending = mesh.auth_client().await.list_pending_nodes(v1::ListPendingNodesRequest {}).await.expect("pending");
    let pending = pending.into_inner().nodes;
    assert_eq!(pending.len(), 1);
    assert_ne!(pending[0].name, winner);
    assert!(pending[0].reason.contains("used up"), "{}", pending[0].reason);
    for (agent, _dir) in agents {
        agent.shutdown().await.expect("stops");
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_node_is_cut_off_and_cannot_come_back_without_a_new_join_token() {
    trace_init();
    let mesh = Mesh::builder().agents(2).start().await;
    mesh.auth_client().await.evict_node(v1::EvictNodeRequest { name: "agent-1".into() }).await.expect("evict");
    // Its stream ends; it tries to register again with its spent token and is refused.
    let mut link = mesh.agent_link(0);
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        link.wait_for(
            |s| matches!(s, LinkStatus::Connecting(Some(e)) if e.contains("not admitted") && e.contains("evicted")),
        ),
    )
    .await
    .expect("the evicted agent is refused")
    .expect("link status")
    .clone();
    println!("evicted agent sees: {refused:?}");
    let nodes = mesh.client().await.list_nodes(v1::ListNodesRequest {}).await.expect("list").into_inner().nodes;
    assert_eq!(nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["agent-2"]);
    let unknown = mesh.auth_client().await.evict_node(v1::EvictNodeRequest { name: "agent-1".into() }).await;
    assert_eq!(unknown.expect_err("already gone").code(), Code::NotFound);
    assert_eq!(mesh.master().registry().expect("registry").get("agent-2").expect("still there").state, NodeState::Up);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_per_principal_under_concurrency_and_say_when_to_retry() {
    trace_init();
    let mesh = Mesh::builder().agents(1).rate_limit(5, 5).start().await;
    let token = mesh.issue_token("alice", "acme", &["search"]).await.access_token;
    let client = mesh.client_with_token(&token).await;
    let started = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let mut client = client.clone();
        calls.spawn(async move { client.search(v1::SearchRequest { query: "x".into(), ..Default::default() }).await });
    }
    let (mut admitted, mut limited) = (0u32, None);
    while let Some(outcome) = calls.join_next().await {
        match outcome.expect("task") {
            Ok(_) => admitted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                limited = Some(status);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ceiling = 5.0 + 5.0 * elapsed + 1.0;
    println!("admitted {admitted} of 40 in {elapsed:.3} s (ceiling {ceiling:.1})");
    assert!(f64::from(admitted) <= ceiling, "admitted {admitted} > {ceiling}");
    assert!(admitted >= 5, "the burst passes");
    let limited = limited.expect("some calls were limited");
    assert!(limited.message().contains("rate limit exceeded for subject:acme/alice"), "{}", limited.message());
    assert!(limited.metadata().get("retry-after-ms").is_some(), "{:?}", limited.metadata());
    // Another principal has its own budget.
    let other = mesh.issue_token("bob", "acme", &["search"]).await.access_token;
    mesh.client_with_token(&other)
        .await
        .search(v1::SearchRequest { query: "x".into(), ..Default::default() })
        .await
        .expect("bob is not limited by alice");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_without_harm() {
    trace_init();
    let mesh = Mesh::builder().agents(1).max_message_bytes(64 * 1024).start().await;
    let big = doc("big", &"word ".repeat(40_000), None);
    let status = mesh
        .client()
        .await
        .ingest_documents(v1::IngestDocumentsRequest {
            shard: String::new(),
            node: "agent-1".into(),
            documents: vec![big],
        })
        .await
        .expect_err("too large");
    println!("oversized: {:?}: {}", status.code(), status.message());
    // Refused before decoding (tonic's OUT_OF_RANGE, put in gRPC terms by ragmesh-server's
    // wire-errors layer); the message names the size, the limit and the flag.
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("exceeds the limit of 65536 bytes (--max-message-bytes)"),
        "{}",
        status.message()
    );
    // The master keeps serving, and so does the agent.
    let after = mesh.search(v1::SearchRequest { query: "x".into(), ..Default::default() }).await;
    assert_outcomes(&after, &[("agent-1", Expect::Ok { generation: 0, hits: 0 })]);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_survive_a_master_restart() {
    trace_init();
    let mut mesh = Mesh::builder().agents(1).start().await;
    let issued = mesh.issue_token("alice", "acme", &["search"]).await;
    mesh.restart_master().await;
    mesh.wait_state("agent-1", NodeState::Up, Duration::from_secs(15)).await;
    // The signing key came back from sled: the old access token still verifies, and agents
    // (re-registered, keys delivered again) accept the master's contexts.
    let response = mesh
        .client_with_token(&issued.access_token)
        .await
        .search(v1::SearchRequest { query: "x".into(), ..Default::default() })
        .await
        .expect("old token accepted after restart")
        .into_inner();
    assert_outcomes(&response, &[("agent-1", Expect::Ok { generation: 0, hits: 0 })]);
    // The refresh family came back too.
    mesh.auth_client()
        .await
        .refresh_token(v1::RefreshTokenRequest { refresh_token: issued.refresh_token })
        .await
        .expect("refresh after restart");
    mesh.shutdown().await;
}
