//! ragmesh node agent: serves its local tantivy index (`AgentService`) to the master, and keeps
//! itself registered with the master over a bidirectional health stream. `main.rs` only parses
//! config and calls [`start`]; tests call [`start`] with a listener bound to `127.0.0.1:0`.

pub mod actions;
pub mod error;
pub mod link;
pub mod metrics;
pub mod service;
pub mod statistics;
pub mod writer_idle;

use std::net::SocketAddr;
use std::sync::Arc;

use ragmesh_config::AgentConfig;
use ragmesh_index::DocumentIndex;
use ragmesh_proto::v1::agent_service_server::AgentServiceServer;
use ragmesh_stack::overload::{Overload, OverloadLayer};
use ragmesh_tls::{LoadedTls, ReloadableTls};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

pub use link::LinkStatus;
use service::{AgentApi, AgentState};

pub use ragmesh_server::StartError;

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    name: String,
    shard: String,
    link: watch::Receiver<LinkStatus>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl AgentHandle {
    /// Address the agent serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Address `/metrics` is served on (`--metrics-listen`), if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shard group served (`--shard`, else the node name).
    pub fn shard(&self) -> &str {
        &self.shard
    }

    /// Status of the link to the master.
    pub fn link_status(&self) -> watch::Receiver<LinkStatus> {
        self.link.clone()
    }

    /// Token that stops the agent when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops the agent: closes the health stream (the master marks it down at once), drains, exits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the agent stops.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.map_err(|e| anyhow::anyhow!("agent task failed: {e}"))?
    }
}

/// Loads TLS material (validated) and settles the node name: the flag, else the certificate's name.
pub fn identity(config: &AgentConfig) -> Result<(String, Option<Arc<LoadedTls>>), StartError> {
    let tls = config.tls.as_ref().map(|files| files.load().map(Arc::new)).transpose()?;
    let name = match (&config.name, &tls) {
        (Some(name), _) => name.clone(),
        (None, Some(tls)) => tls.identity_name(),
        (None, None) => return Err(StartError::Config("--name is required with --insecure".to_owned())),
    };
    Ok((name, tls))
}

/// The agent API as served: messages up to `--max-message-bytes` each way, at most
/// `--max-concurrent-requests` calls at once. Overload protection wraps this service only:
/// grpc.health.v1 and reflection sit beside it in the router, unwrapped, so probes keep answering
/// while searches are shed; the health stream to the master is a call the agent makes (see
/// [`link`]), not one it serves, so the limit cannot shed it either. The limit sits outside the
/// service, so a shed request is refused before its body is read or decoded.
fn agent_api(state: AgentState, config: &AgentConfig) -> Overload<AgentServiceServer<AgentApi>> {
    let service = AgentServiceServer::new(AgentApi(state))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    OverloadLayer::new(config.max_concurrent_requests, "--max-concurrent-requests").layer(service)
}

/// Starts serving on `listener` and attaching to the master. Health reports NOT_SERVING until
/// the index is open.
pub async fn start(config: AgentConfig, listener: TcpListener) -> Result<AgentHandle, StartError> {
    start_with_metrics(config, listener, None).await
}

/// [`start`], also serving Prometheus metrics on `metrics` (`--metrics-listen`, bound by the
/// caller) until the agent stops.
pub async fn start_with_metrics(
    config: AgentConfig,
    listener: TcpListener,
    metrics: Option<TcpListener>,
) -> Result<AgentHandle, StartError> {
    let local_addr = listener.local_addr()?;
    let metrics_addr = metrics.as_ref().map(TcpListener::local_addr).transpose()?;
    let (name, tls) = identity(&config)?;
    let tls = tls.map(ReloadableTls::new).transpose()?;
    let shutdown = CancellationToken::new();
    ragmesh_server::watch_tls(tls.as_ref(), &shutdown);
    let shard = config.shard.clone().unwrap_or_else(|| name.clone());
    let state = AgentState::new(name.clone(), shard.clone(), config.max_concurrent_requests);
    let state = open_actions(state, &config)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<AgentServiceServer<AgentApi>>().await;
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    ragmesh_server::report_certificate_health(tls.as_ref(), health.clone(), &shutdown);
    let (reflection_v1, reflection_v1alpha) = ragmesh_proto::reflection::services(&["ragmesh.v1.AgentService"]);
    // Every service decodes at most --max-message-bytes, so a refusal names the limit that applied.
    let max = config.max_message_bytes;
    // The daemon's metrics registry: filled here, served (with --metrics-listen) as it is.
    let mut metrics_registry = ragmesh_telemetry::metrics::Registry::default();
    metrics_registry.register_collector(Box::new(metrics::IndexCollector { index: state.index.clone() }));
    ragmesh_stack::metrics::certificate_expiry(&mut metrics_registry, tls.as_ref());
    let grpc_metrics = ragmesh_stack::metrics::GrpcMetricsLayer::register(
        &mut metrics_registry,
        ragmesh_stack::metrics::KnownMethods::from_descriptor_sets(&ragmesh_proto::reflection::DESCRIPTOR_SETS),
    );
    if let Some(metrics) = metrics {
        ragmesh_telemetry::metrics::serve(metrics, Arc::new(metrics_registry), shutdown.clone());
    }
    // The server span of every call, continuing the master's trace (ragmesh_stack::trace).
    let mut builder =
        ragmesh_server::builder(tls.as_ref(), local_addr, grpc_metrics).layer(ragmesh_stack::trace::TraceLayer::new());
    let router = builder
        .add_service(health_service.max_decoding_message_size(max))
        .add_service(reflection_v1.max_decoding_message_size(max))
        .add_service(reflection_v1alpha.max_decoding_message_size(max))
        .add_service(agent_api(state.clone(), &config));

    let advertise = config.advertise.clone().unwrap_or_else(|| local_addr.to_string());
    let (status_tx, status_rx) = watch::channel(LinkStatus::Connecting(None));
    let link = link::Link {
        state: state.clone(),
        master: config.master.clone(),
        advertise,
        join_token: config.join_token.clone(),
        interval: config.heartbeat_interval,
        tls: tls.clone(),
        status: status_tx,
        shutdown: shutdown.clone(),
    };

    let serve_tls = tls.clone();
    let stop = shutdown.clone();
    let data_dir = config.data_dir.clone();
    let settings = analysis_settings(&config.analysis);
    let writer_options = ragmesh_index::WriterOptions { heap_bytes: config.writer_heap_bytes };
    let writer_idle_release = config.writer_idle_release;
    let task = tokio::spawn(async move {
        let server = tokio::spawn(ragmesh_server::serve(router, listener, serve_tls, stop.clone().cancelled_owned()));
        let index_dir = data_dir.join("index");
        let opened = ragmesh_server::open_when_free(
            "local index",
            &stop,
            move || match &settings {
                Ok(analysis) => DocumentIndex::open_with_writer(&index_dir, analysis.clone(), writer_options),
                Err(reason) => Err(ragmesh_index::IndexError::InvalidQuery(reason.clone())),
            },
            |err| matches!(err, ragmesh_index::IndexError::Locked { .. }),
        )
        .await;
        let index = match opened {
            Ok(Some(index)) => index,
            Ok(None) => return ragmesh_server::drain(server).await, // stopped while waiting
            Err(err) => {
                // An agent without its index must not linger half-alive: stop serving, report why.
                stop.cancel();
                let _ = ragmesh_server::drain(server).await;
                return Err(err);
            }
        };
        if let Err(err) = check_shard(&index, &state.shard, &data_dir) {
            // Serving another group's data under this group's name would mix two logs: refuse,
            // touching nothing, and say which flag or directory fixes it.
            drop(index);
            stop.cancel();
            let _ = ragmesh_server::drain(server).await;
            return Err(err.into());
        }
        let applied = index.applied();
        tracing::info!(
            documents = index.doc_count(),
            generation = index.generation(),
            log.shard = %state.shard,
            log.applied_seq = applied.seq,
            "index open"
        );
        let index = Arc::new(index);
        let _ = state.index.set(Arc::clone(&index));
        let release =
            writer_idle_release.map(|idle| tokio::spawn(writer_idle::release_idle_writer(index, idle, stop.clone())));
        health.set_serving::<AgentServiceServer<AgentApi>>().await;
        health.set_service_status("", tonic_health::ServingStatus::Serving).await;
        let mut link = tokio::spawn(link.run());
        tokio::select! {
            // The link returns by itself only once `stop` is cancelled: checked first.
            biased;
            () = stop.cancelled() => {}
            ended = &mut link => {
                // The link only returns on shutdown: ending before it is a bug (a panic). An agent
                // cut off from the master must not go on serving unregistered: stop, and say why,
                // so its supervisor restarts it.
                let reason = match ended {
                    Err(err) if err.is_panic() => "the link to the master panicked".to_owned(),
                    Err(err) => format!("the link to the master failed: {err}"),
                    Ok(()) => "the link to the master ended".to_owned(),
                };
                tracing::error!(reason = %reason, "agent stopping: it can no longer report to the master");
                stop.cancel();
                let _ = ragmesh_server::drain(server).await;
                return Err(anyhow::anyhow!("{reason}; the agent stopped (see the log above), restart it"));
            }
        }
        tracing::info!("agent shutting down");
        let _ = link.await;
        if let Some(release) = release {
            let _ = release.await; // ends on `stop`
        }
        ragmesh_server::drain(server).await?;
        Ok(())
    });
    tracing::info!(listen = %local_addr, node.id = %name, node.shard = %shard, tls = tls.is_some(), "agent serving");
    Ok(AgentHandle { local_addr, metrics_addr, name, shard, link: status_rx, shutdown, task })
}

/// The agent's actions (declared and built-in) over its persisted node state, and its
/// participant log: refused (before serving anything) when another process holds the log.
fn open_actions(state: AgentState, config: &AgentConfig) -> Result<AgentState, StartError> {
    // A capability no token can carry would make its action unrunnable: refuse the config.
    let unknown: Vec<String> = config
        .actions
        .iter()
        .filter(|spec| spec.capability.parse::<ragmesh_auth::Capability>().is_err())
        .map(|spec| {
            let known: Vec<&str> = ragmesh_auth::Capability::ALL.iter().map(|c| c.as_str()).collect();
            format!("action {:?}: capability {:?} is not one of {}", spec.name, spec.capability, known.join(", "))
        })
        .collect();
    if !unknown.is_empty() {
        return Err(StartError::Config(unknown.join("; ")));
    }
    let node = actions::node::NodeState::load(&config.data_dir, config.labels.clone())
        .map_err(|source| error::AgentError::NodeState { dir: config.data_dir.clone(), source })
        .map_err(|err| StartError::Config(err.to_string()))?;
    // A document the agent accepted fitted in one message, so no snapshot record of it is larger.
    let snapshot_limits = ragmesh_index::SnapshotLimits {
        max_record_bytes: config.max_message_bytes,
        ..ragmesh_index::SnapshotLimits::default()
    };
    let actions = actions::Actions::new(config.actions.clone(), node, Arc::clone(&state.index))
        .with_snapshots(config.data_dir.join(actions::snapshot::SNAPSHOT_DIR), snapshot_limits);
    let actions = Arc::new(actions);
    let participants = actions::participant::Participants::open(
        &config.data_dir.join(actions::participant::TX_DIR),
        Arc::clone(&actions),
        Arc::clone(&state.index),
    )
    .map_err(|err| StartError::Config(err.to_string()))?;
    Ok(state.with_actions(actions, Some(Arc::new(participants))))
}

/// Refuses an index that already follows another shard group's log than `shard`; a fresh index
/// (no position yet) takes whichever group the agent serves.
fn check_shard(index: &DocumentIndex, shard: &str, data_dir: &std::path::Path) -> Result<(), error::AgentError> {
    match index.applied().shard {
        Some(held) if held != shard => {
            Err(error::AgentError::ShardMismatch { dir: data_dir.to_path_buf(), held, wanted: shard.to_owned() })
        }
        _ => Ok(()),
    }
}

/// The index analysis of a validated `[analysis]` and its `[analysis.collections.NAME]` tables
/// (ragmesh-config checks the same names and ranges, so an error here means the two lists
/// drifted apart: the agent refuses to start).
fn analysis_settings(config: &ragmesh_config::AnalysisConfig) -> Result<ragmesh_index::IndexAnalysis, String> {
    let default = index_settings("[analysis]", &config.stemming, &config.stop_words, config.k1, config.b)?;
    let mut overrides = std::collections::BTreeMap::new();
    for (name, collection) in &config.collections {
        let table = format!("[analysis.collections.{name}]");
        let settings =
            index_settings(&table, &collection.stemming, &collection.stop_words, collection.k1, collection.b)?;
        overrides.insert(name.clone(), settings);
    }
    ragmesh_index::IndexAnalysis::new(default, overrides).map_err(|reason| format!("[analysis.collections]: {reason}"))
}

/// The index settings of one analysis table.
fn index_settings(
    table: &str,
    stemming: &str,
    stop_words: &str,
    k1: f32,
    b: f32,
) -> Result<ragmesh_index::AnalysisSettings, String> {
    use ragmesh_index::analysis::{Profile, Stemming, StopWords};
    let invalid = |reason: String| format!("{table}: {reason}");
    let profile = Profile {
        stemming: Stemming::parse(stemming).map_err(invalid)?,
        stop_words: StopWords::parse(stop_words).map_err(invalid)?,
    };
    let bm25 = ragmesh_index::Bm25Params::new(k1, b).map_err(invalid)?;
    Ok(ragmesh_index::AnalysisSettings { profile, bm25 })
}

#[cfg(test)]
mod analysis_tests {
    use super::*;

    #[test]
    fn config_and_index_accept_the_same_stemmers() {
        let mut config_names: Vec<&str> = ragmesh_config::STEMMING_NAMES.to_vec();
        let mut index_names = ragmesh_index::analysis::Stemming::names();
        config_names.sort_unstable();
        index_names.sort_unstable();
        assert_eq!(config_names, index_names);
        let default = analysis_settings(&ragmesh_config::AnalysisConfig::default()).expect("default");
        assert_eq!(default, ragmesh_index::IndexAnalysis::default(), "config and index defaults agree");
        let porter = ragmesh_config::AnalysisConfig { stemming: "porter".into(), k1: 0.9, ..Default::default() };
        let settings = analysis_settings(&porter).expect("valid");
        assert_eq!(settings.default_settings().profile.name(), "stem-porter_stop-none");
        assert!(!settings.has_overrides());
    }

    #[test]
    fn collection_tables_become_index_overrides() {
        let collection = |stemming: &str, k1: f32| ragmesh_config::CollectionAnalysisConfig {
            stemming: stemming.into(),
            stop_words: "english".into(),
            k1,
            b: 0.75,
        };
        let mut config = ragmesh_config::AnalysisConfig::default();
        config.collections.insert("logs".into(), collection("none", 1.2));
        config.collections.insert(
            "same".into(),
            ragmesh_config::CollectionAnalysisConfig {
                stemming: "english".into(),
                stop_words: "none".into(),
                k1: 1.2,
                b: 0.75,
            },
        );
        let analysis = analysis_settings(&config).expect("valid");
        assert_eq!(analysis.for_collection("logs").profile.name(), "stem-none_stop-english");
        assert_eq!(analysis.for_collection("other"), ragmesh_index::AnalysisSettings::default());
        assert_eq!(analysis.overrides().count(), 1, "an override equal to [analysis] is none");
        config.collections.insert("bad".into(), collection("klingon", 1.2));
        let err = analysis_settings(&config).expect_err("drifted names are refused");
        assert!(err.contains("[analysis.collections.bad]"), "{err}");
    }
}
