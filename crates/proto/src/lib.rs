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

pub mod error;
pub use error::ErrorKind;

/// Encoded `FileDescriptorSet` of every ragmesh proto file and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/ragmesh_descriptor.bin");

/// Metadata key on the status of a positioned write an agent did not apply: the last sequence
/// of its shard group's log that it applied, in decimal. Set for a gap (FAILED_PRECONDITION: the
/// master resends from there) and for an entry the agent refused as a whole (it still consumed
/// the entry's sequence, as every replica does).
pub const APPLIED_SEQ_METADATA: &str = "x-ragmesh-applied-seq";

/// Response metadata key of the trace a call was served in: the W3C trace id, 32 lowercase hex
/// digits, as Jaeger shows it. Set by both daemons when the call's trace is exported (sampled).
pub const TRACE_ID_METADATA: &str = "x-ragmesh-trace-id";

/// Wire protocol major version. Peers with a different major are refused.
pub const PROTOCOL_MAJOR: u32 = 1;
/// Wire protocol minor version. Minor versions are backwards compatible within a major.
/// 1.1: heartbeat acknowledgements carry the interval the master expects (heartbeat pacing); a
/// 1.0 agent keeps the interval it registered with, and the master never changes it.
pub const PROTOCOL_MINOR: u32 = 1;

/// gRPC server reflection for ragmesh and grpc.health.v1, in both protocol versions: v1 for
/// current tools, v1alpha for grpcurl 1.8 and other older clients.
pub mod reflection {
    use tonic_reflection::server::{v1, v1alpha};

    /// The encoded descriptor sets reflection serves: ragmesh's, grpc.health.v1's and
    /// reflection's own (also the methods the gRPC server metrics know by name).
    pub const DESCRIPTOR_SETS: [&[u8]; 4] = [
        crate::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];

    /// Services every ragmesh server offers besides its own.
    const COMMON: [&str; 3] =
        ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

    /// Builds the v1 and v1alpha reflection services listing exactly `served` (fully qualified
    /// names, e.g. `ragmesh.v1.MasterService`) plus health and reflection itself, so a tool never
    /// sees a service the server does not answer.
    pub fn services(
        served: &[&str],
    ) -> (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ) {
        let configure = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .include_reflection_service(false)
                .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
            for name in COMMON.iter().chain(served) {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        let v1 = configure().build_v1().expect("the checked-in descriptor sets are valid");
        let v1alpha = configure().build_v1alpha().expect("the checked-in descriptor sets are valid");
        (v1, v1alpha)
    }
}
