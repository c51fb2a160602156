//! A real agent (plaintext, on loopback) serving shard group `--shard`, attached to a stand-in
//! master (a real tonic MembershipService over a socket that hands out verification keys and
//! records registrations and heartbeats): positioned writes apply in order and each once, gaps
//! and other groups are refused in the wire vocabulary the master relies on, registration and
//! heartbeats report the applied sequence, and an agent refuses to start on another group's index.

use std::path::Path;
use std::time::Duration;

use ragmesh_agent::AgentHandle;
use ragmesh_agent::error::APPLIED_SEQ_METADATA;
use ragmesh_auth::Capability;
use ragmesh_config::AgentArgs;
use ragmesh_index::{AppliedLog, Document, DocumentIndex, LogPosition, Writer};
use ragmesh_proto::v1::{self};
use tokio::net::TcpListener;
use tonic::Code;

mod common;

use common::{Master, WAIT, client, signed, wait_attached};

/// An operator's context allowed to write, as the master attaches to agent calls.
fn writer_context(master: &Master) -> String {
    master.context("ops", &[Capability::Ingest, Capability::Admin])
}

/// Heartbeats until one reports `generation`; each must agree with itself on the way.
async fn heartbeat_at(master: &mut Master, generation: u64) -> v1::Heartbeat {
    loop {
        let beat = master.next_heartbeat(&format!("at generation {generation}")).await.heartbeat.expect("a heartbeat");
        // Every write in these tests is positioned, so generation and applied seq move together.
        assert_eq!(beat.applied_seq, beat.generation, "a heartbeat reports one snapshot: {beat:?}");
        if beat.generation == generation {
            return beat;
        }
    }
}

fn agent_args(name: &str, shard: Option<&str>, master: &str, data_dir: &Path) -> AgentArgs {
    let shard: Vec<&str> = shard.map(|shard| vec!["--shard", shard]).unwrap_or_default();
    common::agent_args(name, master, data_dir, &shard)
}

async fn start_agent(args: AgentArgs) -> AgentHandle {
    let config = args.resolve().expect("valid config");
    let listener = TcpListener::bind(config.listen).await.expect("bind");
    ragmesh_agent::start(config, listener).await.expect("agent starts")
}

fn wire_doc(id: &str) -> v1::Document {
    v1::Document {
        id: id.into(),
        collection: "notes".into(),
        title: format!("note {id}"),
        body: "replicated words".into(),
        ..Default::default()
    }
}

fn upsert(shard: &str, seq: u64, ids: &[&str]) -> v1::UpsertDocumentsRequest {
    v1::UpsertDocumentsRequest {
        documents: ids.iter().map(|id| wire_doc(id)).collect(),
        position: Some(v1::LogPosition { shard: shard.into(), seq }),
    }
}

#[tokio::test]
async fn positioned_writes_apply_once_in_order_over_a_real_socket_and_heartbeats_report_the_applied_seq() {
    let mut master = Master::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = start_agent(agent_args("replica-a", Some("group-1"), &master.addr, dir.path())).await;
    assert_eq!(agent.shard(), "group-1");
    let registration = master.next_registration().await;
    assert_eq!((registration.shard.as_str(), registration.applied_seq), ("group-1", 0));
    wait_attached(&agent).await;
    let context = writer_context(&master);
    let mut client = client(&agent).await;

    let first = client.upsert_documents(signed(upsert("group-1", 1, &["a", "b"]), &context)).await;
    let first = first.expect("entry 1 applies").into_inner();
    assert_eq!((first.upserted, first.generation, first.applied_seq, first.already_applied), (2, 1, 1, false));
    assert_eq!(first.collections, vec![v1::CollectionStats { name: "notes".into(), doc_count: 2 }]);

    // The master resends entry 1 (say, after its own crash): acknowledged, not applied again.
    let again = client.upsert_documents(signed(upsert("group-1", 1, &["c"]), &context)).await;
    let again = again.expect("duplicate acknowledged").into_inner();
    assert_eq!((again.generation, again.applied_seq, again.already_applied), (1, 1, true));
    assert_eq!(again.collections, first.collections, "the duplicate's document was not written");

    let delete = v1::DeleteDocumentsRequest {
        refs: vec![v1::DocumentRef { collection: "notes".into(), id: "a".into() }],
        position: Some(v1::LogPosition { shard: "group-1".into(), seq: 2 }),
    };
    let deleted = client.delete_documents(signed(delete, &context)).await.expect("entry 2 applies").into_inner();
    assert_eq!((deleted.deleted, deleted.generation, deleted.applied_seq, deleted.already_applied), (1, 2, 2, false));
    assert_eq!(deleted.collections, vec![v1::CollectionStats { name: "notes".into(), doc_count: 1 }]);

    let gap = client.upsert_documents(signed(upsert("group-1", 5, &["d"]), &context)).await.expect_err("gap");
    assert_eq!(gap.code(), Code::FailedPrecondition);
    assert!(gap.message().contains("up to seq 2; entry 5 would leave a gap"), "{}", gap.message());
    let applied = gap.metadata().get(APPLIED_SEQ_METADATA).expect("applied seq metadata");
    assert_eq!(applied.to_str().expect("ascii"), "2");

    let other = client.upsert_documents(signed(upsert("group-2", 3, &["d"]), &context)).await.expect_err("shard");
    assert_eq!(other.code(), Code::FailedPrecondition);
    assert!(other.message().contains("\"group-1\"") && other.message().contains("\"group-2\""), "{}", other.message());

    let unpositioned = v1::UpsertDocumentsRequest { documents: vec![wire_doc("d")], position: None };
    let unpositioned = client.upsert_documents(signed(unpositioned, &context)).await.expect_err("no position");
    assert_eq!(unpositioned.code(), Code::InvalidArgument);
    assert_eq!(unpositioned.message(), "writes reach an agent only through the master's write log (no log position)");
    let unpositioned_delete = v1::DeleteDocumentsRequest { refs: vec![], position: None };
    let refused = client.delete_documents(signed(unpositioned_delete, &context)).await.expect_err("no position");
    assert_eq!(refused.code(), Code::InvalidArgument);

    let beat = heartbeat_at(&mut master, 2).await;
    assert_eq!(beat.applied_seq, 2);
    assert_eq!(beat.collections, deleted.collections);

    // The position is durable: a restarted agent registers at the sequence it applied.
    agent.shutdown().await.expect("clean shutdown");
    let agent = start_agent(agent_args("replica-a", Some("group-1"), &master.addr, dir.path())).await;
    let registration = master.next_registration().await;
    assert_eq!((registration.shard.as_str(), registration.applied_seq, registration.generation), ("group-1", 2, 2));
    wait_attached(&agent).await;
    let mut client = self::client(&agent).await;
    let next = client.upsert_documents(signed(upsert("group-1", 3, &["e"]), &context)).await;
    assert_eq!(next.expect("entry 3 after the restart").into_inner().applied_seq, 3);
    agent.shutdown().await.expect("clean shutdown");
}

fn write_entry(index_dir: &Path, shard: &str) {
    let index = DocumentIndex::open(index_dir).expect("open index");
    let doc = Document {
        id: "kept".into(),
        collection: "notes".into(),
        title: String::new(),
        body: "kept words".into(),
        metadata: Default::default(),
        acl: ragmesh_index::Acl::public(),
    };
    index.apply_upsert(&LogPosition::new(shard, 1), vec![doc], &Writer::Operator).expect("entry 1");
}

#[tokio::test]
async fn an_agent_refuses_to_start_on_another_shard_groups_index_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entry(&dir.path().join("index"), "group-1");

    // Nothing listens on port 1: the refusal comes before the link would matter.
    let agent = start_agent(agent_args("replica-b", Some("group-2"), "127.0.0.1:1", dir.path())).await;
    let err = tokio::time::timeout(WAIT, agent.wait()).await.expect("stops in time").expect_err("refused");
    let expected = format!(
        "index at {} holds shard group group-1's data; start with --shard group-1, or use a fresh --data-dir to serve group-2",
        dir.path().display()
    );
    assert_eq!(format!("{err:#}"), expected);

    let index = DocumentIndex::open(&dir.path().join("index")).expect("the index is still there");
    assert_eq!(index.doc_count(), 1);
    assert_eq!(index.applied(), AppliedLog { shard: Some("group-1".into()), seq: 1 });
    drop(index);

    // Without --shard the node name is the group: a node named like the index's group serves it.
    let agent = start_agent(agent_args("group-1", None, "127.0.0.1:1", dir.path())).await;
    assert_eq!(agent.shard(), "group-1");
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", agent.local_addr()))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
        if status.expect("health answers").into_inner().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the matching agent never served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn the_agent_binary_exits_non_zero_on_another_shard_groups_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entry(&dir.path().join("index"), "group-1");
    let exe = env!("CARGO_BIN_EXE_ragmesh-agent");
    let data_dir = dir.path().to_str().expect("utf-8");
    let run = tokio::process::Command::new(exe)
        .args(["--insecure", "--name", "replica-c", "--shard", "group-2", "--listen", "127.0.0.1:0"])
        .args(["--master", "127.0.0.1:1", "--data-dir", data_dir])
        .env("RAGMESH_LOG", "error")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, run).await.expect("exits in time").expect("runs");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("holds shard group group-1's data; start with --shard group-1"), "{stderr}");
}
