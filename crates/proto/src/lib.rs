//! The ragmesh wire contract: code generated from `proto/ragmesh/v1/*.proto`, the encoded file
//! descriptor set served by gRPC reflection, and the protocol version agents and master compare.
//!
//! The generated files under `src/gen/` are checked in; `tests/generated_code.rs` regenerates them
//! with protox and fails when they differ (run it with `RAGMESH_UPDATE_PROTO=1` to rewrite them).

/// Generated types and services of package `ragmesh.v1`.
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all)]
    include!("gen/ragmesh.v1.rs");
}

/// Encoded `FileDescriptorSet` of every ragmesh proto file and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/ragmesh_descriptor.bin");

/// Wire protocol major version. Peers with a different major are refused.
pub const PROTOCOL_MAJOR: u32 = 1;
/// Wire protocol minor version. Minor versions are backwards compatible within a major.
pub const PROTOCOL_MINOR: u32 = 0;
