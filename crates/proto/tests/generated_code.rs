//! Regenerates the checked-in gRPC code from `proto/` with protox and fails on any difference,
//! so the generated code can never drift from the wire contract.
//! Run `RAGMESH_UPDATE_PROTO=1 cargo test -p ragmesh-proto` after editing a .proto file.

use std::path::{Path, PathBuf};

use prost::Message as _;

const PROTO_FILES: &[&str] = &[
    "ragmesh/v1/types.proto",
    "ragmesh/v1/actions.proto",
    "ragmesh/v1/agent.proto",
    "ragmesh/v1/membership.proto",
    "ragmesh/v1/master.proto",
];

fn proto_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

fn gen_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gen")
}

/// Generates code and descriptor set into `out`, returning the paths written.
fn generate(out: &Path) -> Vec<PathBuf> {
    let fds = protox::compile(PROTO_FILES, [proto_root()]).expect("proto files compile");
    std::fs::write(out.join("ragmesh_descriptor.bin"), fds.encode_to_vec()).expect("write descriptor");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out)
        .compile_fds(fds)
        .expect("code generation succeeds");
    vec![out.join("ragmesh.v1.rs"), out.join("ragmesh_descriptor.bin")]
}

#[test]
fn generated_code_matches_proto_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fresh = generate(tmp.path());
    let update = std::env::var_os("RAGMESH_UPDATE_PROTO").is_some();
    let mut stale = Vec::new();
    for path in fresh {
        let name = path.file_name().expect("file name");
        let checked_in = gen_dir().join(name);
        let new = std::fs::read(&path).expect("read generated");
        let old = std::fs::read(&checked_in).unwrap_or_default();
        if new != old {
            if update {
                std::fs::write(&checked_in, &new).expect("write generated file");
            } else {
                stale.push(checked_in.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "generated code is stale: {stale:?}; run `RAGMESH_UPDATE_PROTO=1 cargo test -p ragmesh-proto --test generated_code` and commit the result"
    );
}
