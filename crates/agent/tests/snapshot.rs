//! `index.snapshot` and `index.restore` over gRPC on a real agent (plaintext, on loopback)
//! attached to a stand-in master (a real tonic MembershipService that hands out verification
//! keys and records registrations), called with contexts signed as the master signs them:
//! ingest, snapshot, ingest more, restore, and the search shows the snapshot's documents.

use ragmesh_auth::Capability;
use ragmesh_proto::v1::{self, agent_service_client::AgentServiceClient};
use tonic::Code;
use tonic::transport::Channel;

mod common;

use common::{Master, WAIT, client, signed};

fn run(action: &str, args: &[(&str, &str)]) -> v1::RunActionRequest {
    v1::RunActionRequest {
        call: Some(v1::ActionCall {
            action: action.into(),
            arguments: args.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }),
        call_id: String::new(),
    }
}

/// The write-log entry `seq` of this agent's group (its name: no --shard) upserting `docs`.
fn entry(seq: u64, docs: Vec<v1::Document>) -> v1::UpsertDocumentsRequest {
    v1::UpsertDocumentsRequest { documents: docs, position: Some(v1::LogPosition { shard: "agent-a".into(), seq }) }
}

fn doc(id: &str, tenants: &[&str]) -> v1::Document {
    v1::Document {
        id: id.into(),
        collection: "notes".into(),
        title: format!("note {id}"),
        body: "snapshot words".into(),
        acl: Some(v1::DocumentAcl {
            public: false,
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            subjects: Vec::new(),
        }),
        ..Default::default()
    }
}

async fn visible(client: &mut AgentServiceClient<Channel>, context: &str) -> (Vec<String>, u64) {
    let search = v1::NodeSearchRequest { query: "snapshot".into(), limit: 20, ..Default::default() };
    let found = client.node_search(signed(search, context)).await.expect("search").into_inner();
    let mut ids: Vec<String> = found.hits.into_iter().map(|hit| hit.doc_id).collect();
    ids.sort();
    (ids, found.generation)
}

/// Runs a built-in and returns its result (status, output, message).
async fn action(
    client: &mut AgentServiceClient<Channel>,
    context: &str,
    name: &str,
    args: &[(&str, &str)],
) -> v1::ActionResult {
    let response = client.run_action(signed(run(name, args), context)).await.expect("RunAction answers");
    response.into_inner().result.expect("a result")
}

#[tokio::test]
async fn ingest_snapshot_ingest_more_restore_and_search_shows_the_snapshots_documents() {
    let mut master = Master::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let agent = common::start_agent("agent-a", &master.addr, &data).await;
    let mut client = client(&agent).await;
    let operator = master.operator();
    let acme = master.context("acme", &[Capability::Ingest, Capability::Search, Capability::Actions]);

    // Discovery: both built-ins are listed with their schema, operators only.
    let listed = client.list_actions(signed(v1::ListActionsRequest::default(), &operator)).await.expect("list");
    let listed = listed.into_inner().actions;
    for name in ["index.snapshot", "index.restore"] {
        let found = listed.iter().find(|a| a.name == name).unwrap_or_else(|| panic!("{name} listed: {listed:?}"));
        assert!(found.builtin && found.tenants.is_empty() && found.capability == "actions", "{found:?}");
        assert!(found.arguments.iter().any(|arg| arg.name == "name" && arg.required), "{found:?}");
    }

    client.upsert_documents(signed(entry(1, vec![doc("a", &["acme"]), doc("b", &["acme"])]), &acme)).await.expect("1");
    let (ids, generation) = visible(&mut client, &acme).await;
    assert_eq!((ids.as_slice(), generation), (["a".to_owned(), "b".to_owned()].as_slice(), 1));

    let written = action(&mut client, &operator, "index.snapshot", &[("name", "before")]).await;
    assert_eq!(written.status, v1::ActionStatus::Ok as i32, "{written:?}");
    let snapshot_file = data.join("snapshots").join("before.snap");
    let output = &written.steps[0].stdout;
    assert!(output.contains(&format!("path={}", snapshot_file.display())), "{output}");
    assert!(output.contains("documents=2") && output.contains("applied=agent-a:1"), "{output}");
    assert!(snapshot_file.is_file());
    let again = action(&mut client, &operator, "index.snapshot", &[("name", "before")]).await;
    assert_eq!(again.status, v1::ActionStatus::Error as i32, "an existing snapshot is kept: {again:?}");
    assert!(again.steps[0].message.contains("overwrite=true"), "{again:?}");

    // Refused before running: a path instead of a name, and a tenant's token (operators only).
    let escape = client.run_action(signed(run("index.snapshot", &[("name", "../escape")]), &operator)).await;
    assert_eq!(escape.expect_err("a path is not a name").code(), Code::InvalidArgument);
    let tenant = client.run_action(signed(run("index.restore", &[("name", "before")]), &acme)).await;
    assert_eq!(tenant.expect_err("operators only").code(), Code::PermissionDenied);

    client.upsert_documents(signed(entry(2, vec![doc("c", &["acme"])]), &acme)).await.expect("2");
    let delete = v1::DeleteDocumentsRequest {
        refs: vec![v1::DocumentRef { collection: "notes".into(), id: "a".into() }],
        position: Some(v1::LogPosition { shard: "agent-a".into(), seq: 3 }),
    };
    client.delete_documents(signed(delete, &acme)).await.expect("3");
    let (ids, generation) = visible(&mut client, &acme).await;
    assert_eq!((ids.as_slice(), generation), (["b".to_owned(), "c".to_owned()].as_slice(), 3));

    let checked = action(&mut client, &operator, "index.restore", &[("name", "before"), ("check_only", "true")]).await;
    assert_eq!(checked.status, v1::ActionStatus::Ok as i32, "{checked:?}");
    let output = &checked.steps[0].stdout;
    assert!(
        output.starts_with("intact: documents=2") && output.contains("applied=agent-a:1 (the index is at agent-a:3)"),
        "{output}"
    );
    assert_eq!(visible(&mut client, &acme).await.1, 3, "a check changes nothing");

    while master.registrations.try_recv().is_ok() {}
    let restored = action(&mut client, &operator, "index.restore", &[("name", "before")]).await;
    assert_eq!(restored.status, v1::ActionStatus::Ok as i32, "{restored:?}");
    let output = &restored.steps[0].stdout;
    assert!(output.contains("generation=4 (was 3"), "{output}");
    assert!(output.contains("from seq 2"), "says where the master resumes: {output}");
    let (ids, generation) = visible(&mut client, &acme).await;
    assert_eq!((ids.as_slice(), generation), (["a".to_owned(), "b".to_owned()].as_slice(), 4));
    // ACLs came back: another tenant sees none of them.
    let globex = master.context("globex", &[Capability::Search]);
    assert_eq!(visible(&mut client, &globex).await.0, Vec::<String>::new());
    // The master learns the position moved back at the re-registration that follows.
    let registration =
        tokio::time::timeout(WAIT, master.registrations.recv()).await.expect("re-registers").expect("open");
    assert_eq!((registration.applied_seq, registration.generation), (1, 4), "{registration:?}");
    // The log resumes after the snapshot: entry 2 applies again (not acknowledged as a duplicate).
    let resent = client.upsert_documents(signed(entry(2, vec![doc("c", &["acme"])]), &acme)).await.expect("2 again");
    assert!(!resent.into_inner().already_applied);

    // A damaged snapshot is refused and the index stays as it is.
    let mut bytes = std::fs::read(&snapshot_file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(data.join("snapshots").join("damaged.snap"), &bytes).expect("write");
    let damaged = action(&mut client, &operator, "index.restore", &[("name", "damaged")]).await;
    assert_eq!(damaged.status, v1::ActionStatus::Error as i32, "{damaged:?}");
    assert!(damaged.steps[0].message.contains("unusable"), "{damaged:?}");
    let (ids, generation) = visible(&mut client, &acme).await;
    assert_eq!((ids.as_slice(), generation), (["a".to_owned(), "b".to_owned(), "c".to_owned()].as_slice(), 5));
    agent.shutdown().await.expect("clean shutdown");
}
