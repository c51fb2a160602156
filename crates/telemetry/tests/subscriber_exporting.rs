//! The subscriber [`ragmesh_telemetry::init`] installs when traces are exported, in a process of
//! its own (it is global): the transport crates' trace-level spans are still never created, and
//! ragmesh's spans are (the exporter takes them whatever the log filter says).

use ragmesh_telemetry::TraceSettings;

#[tokio::test]
async fn callsites_no_layer_wants_are_disabled_when_traces_are_exported() {
    let settings = TraceSettings {
        // Nothing listens there: the exporter connects lazily and only its exports fail.
        otlp_endpoint: Some("http://127.0.0.1:9".to_owned()),
        sample_ratio: None,
        service_name: "ragmesh-test",
        instance_id: None,
    };
    let guard = ragmesh_telemetry::init("warn", Some(&settings));
    assert!(guard.exporting());
    let transport = tracing::trace_span!(target: "h2::proto::streams", "popped");
    assert!(transport.is_disabled(), "a transport crate's trace span is never created");
    assert!(!tracing::enabled!(target: "h2::proto::streams", tracing::Level::TRACE));
    let ours = tracing::info_span!(target: "ragmesh_master", "search");
    assert!(!ours.is_disabled(), "exported although the log filter is warn");
    drop(ours);
    guard.shutdown().await;
}
