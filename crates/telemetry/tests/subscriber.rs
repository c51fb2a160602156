//! The subscriber [`ragmesh_telemetry::init`] installs, in a process of its own (it is global):
//! a span or event that no layer wants is disabled at its callsite, so the transport crates'
//! trace-level spans (h2 opens several per frame) are never created. A regression here cost the
//! master about a fifth of its CPU per heartbeat and per node call: with nothing exported, an
//! absent OpenTelemetry layer claimed interest in every callsite.

#[test]
fn callsites_no_layer_wants_are_disabled_when_nothing_is_exported() {
    let _guard = ragmesh_telemetry::init("info", None);
    let transport = tracing::trace_span!(target: "h2::proto::streams", "popped");
    assert!(transport.is_disabled(), "a transport crate's trace span is never created");
    assert!(!tracing::enabled!(target: "h2::proto::streams", tracing::Level::TRACE));
    assert!(!tracing::enabled!(target: "ragmesh_master", tracing::Level::DEBUG), "below the log filter");
    let ours = tracing::info_span!(target: "ragmesh_master", "search");
    assert!(!ours.is_disabled(), "an info span of ragmesh gives log lines their context");
    assert!(tracing::enabled!(target: "ragmesh_master", tracing::Level::INFO));
}
