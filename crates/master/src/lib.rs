//! ragmesh master: the node registry (persisted in sled), the agents' health streams, and
//! federated search with an honest per-node status. `main.rs` only parses config and calls
//! [`start`]; tests call [`start`] with a listener bound to `127.0.0.1:0`.

pub mod access;
pub mod actions;
pub mod api;
mod auth_api;
pub mod auth_layer;
pub mod breakers;
pub mod clients;
mod convert;
pub mod directory;
pub mod error;
pub mod events;
pub mod federation;
mod membership;
pub mod merge;
pub mod metrics;
pub mod node;
mod pace;
mod profiles;
pub mod registry;
pub mod replication;
mod result_cache;
pub mod stats;
mod stats_cache;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;

use ragmesh_config::MasterConfig;
use ragmesh_proto::v1::{
    auth_service_server::AuthServiceServer, master_service_server::MasterServiceServer,
    membership_service_server::MembershipServiceServer,
};
use ragmesh_stack::node_client::ClientConfig;
use ragmesh_stack::node_health::{HealthBook, HealthConfig};
use ragmesh_stack::rate_limit::{KeyExtractor as _, RateLimitLayer, RateLimits, key_from_extension, key_from_peer_ip};
use ragmesh_store::SledStore;
use ragmesh_tls::{LoadedTls, ReloadableTls};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use registry::Registry;

/// Deadline of one forward of a log entry to a replica.
const REPLICA_SEND_TIMEOUT: Duration = Duration::from_secs(30);

pub use ragmesh_server::StartError;

/// A running master.
#[derive(Debug)]
pub struct MasterHandle {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    registry: Arc<OnceLock<Registry>>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl MasterHandle {
    /// Address the master serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Address `/metrics` is served on (`--metrics-listen`), if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The registry, once loaded.
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.get()
    }

    /// Token that stops the master when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops the master: ends health streams, drains connections, closes the registry.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the master stops (by its token or by a fatal error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.map_err(|e| anyhow::anyhow!("master task failed: {e}"))?
    }
}

/// Loads TLS material (validated: readable, matching key, within validity).
pub fn load_tls(config: &MasterConfig) -> Result<Option<Arc<LoadedTls>>, ragmesh_tls::TlsError> {
    config.tls.as_ref().map(|files| files.load().map(Arc::new)).transpose()
}

/// The message-size limits every ragmesh service gets (requests larger than `max_message_bytes`
/// are refused before they are decoded: RESOURCE_EXHAUSTED naming the limit, see
/// `ragmesh_stack::wire_errors`).
trait Limits {
    fn with_limits(self, max: usize) -> Self;
}

macro_rules! impl_limits {
    ($($server:ident),*) => {$(
        impl<T> Limits for $server<T> {
            fn with_limits(self, max: usize) -> Self {
                self.max_decoding_message_size(max).max_encoding_message_size(max)
            }
        }
    )*};
}
impl_limits!(MasterServiceServer, MembershipServiceServer, AuthServiceServer);

fn limits<S: Limits>(service: S, config: &MasterConfig) -> S {
    service.with_limits(config.access.max_message_bytes)
}

/// The node client's tuning from the master's settings.
fn resilience(config: &ragmesh_config::ResilienceConfig) -> (HealthConfig, ClientConfig) {
    let mut health = HealthConfig::default();
    health.breaker.failure_threshold = config.breaker_failures;
    health.breaker.min_wait = config.breaker_min_wait;
    health.breaker.max_wait = config.breaker_max_wait;
    let mut client = ClientConfig::default();
    client.retry.ratio = config.retry_budget_percent as f32 / 100.0;
    client.retry.min_per_sec = config.retry_min_per_second;
    client.hedge.ratio = config.hedge_budget_percent as f32 / 100.0;
    if config.hedge_budget_percent == 0 {
        client.hedge.min_per_sec = 0;
    }
    (health, client)
}

/// How often expired idempotency keys and old audit records are swept.
const SWEEP_PERIOD: Duration = Duration::from_secs(60);

/// Starts the sweepers of the action records (tracked, stopped by `shutdown`).
fn start_sweepers(
    records: &actions::service::Actions,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &CancellationToken,
) {
    let keys = records.keys().clone();
    tasks.spawn(actions::run_sweeper(
        "idempotency",
        SWEEP_PERIOD,
        actions::unix_now_ms,
        move |now_ms| keys.sweep(now_ms),
        shutdown.clone(),
    ));
    let audit = records.audit().clone();
    tasks.spawn(actions::run_sweeper(
        "audit",
        SWEEP_PERIOD,
        actions::unix_now_ms,
        move |now_ms| audit.prune(now_ms),
        shutdown.clone(),
    ));
}

/// Starts serving on `listener`. Health reports NOT_SERVING until the registry is loaded.
pub async fn start(config: MasterConfig, listener: TcpListener) -> Result<MasterHandle, StartError> {
    start_with_metrics(config, listener, None).await
}

/// [`start`], also serving Prometheus metrics on `metrics` (`--metrics-listen`, bound by the
/// caller) until the master stops.
pub async fn start_with_metrics(
    config: MasterConfig,
    listener: TcpListener,
    metrics: Option<TcpListener>,
) -> Result<MasterHandle, StartError> {
    let local_addr = listener.local_addr()?;
    let metrics_addr = metrics.as_ref().map(TcpListener::local_addr).transpose()?;
    let tls = load_tls(&config)?.map(ReloadableTls::new).transpose()?;
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();
    ragmesh_server::watch_tls(tls.as_ref(), &shutdown);
    let registry = Arc::new(OnceLock::new());
    let access = Arc::new(OnceLock::new());
    let replication = Arc::new(OnceLock::new());
    let actions = Arc::new(OnceLock::new());
    let transactions = Arc::new(OnceLock::new());
    let tasks = tokio_util::task::TaskTracker::new();
    let node_clients = clients::NodeClients::new(tls.clone());
    // Breaker and load state of every node, outside the per-node stacks; breaker transitions
    // go to one writer, which persists them once the store is open.
    let (breaker_tx, breaker_rx) = tokio::sync::mpsc::unbounded_channel();
    let (health_config, client_config) = resilience(&config.resilience);
    // Transitions pass through a counter on their way to the writer.
    let (counted_tx, mut counted_rx) =
        tokio::sync::mpsc::unbounded_channel::<ragmesh_stack::node_health::BreakerUpdate>();
    let health_book = HealthBook::new(health_config, Some(counted_tx));
    // The daemon's metrics registry: filled here, served (with --metrics-listen) as it is.
    let mut metrics_registry = ragmesh_telemetry::metrics::Registry::default();
    let master_metrics = metrics::MasterMetrics::register(&mut metrics_registry, registry.clone(), health_book.clone());
    ragmesh_stack::metrics::certificate_expiry(&mut metrics_registry, tls.as_ref());
    let grpc_metrics = ragmesh_stack::metrics::GrpcMetricsLayer::register(
        &mut metrics_registry,
        ragmesh_stack::metrics::KnownMethods::from_descriptor_sets(&ragmesh_proto::reflection::DESCRIPTOR_SETS),
    );
    let transitions = master_metrics.clone();
    tokio::spawn(async move {
        while let Some(update) = counted_rx.recv().await {
            transitions.breaker_transition(&update.node, &update.state);
            if breaker_tx.send(update).is_err() {
                return;
            }
        }
    });
    // The node client's directory is empty until the registry is loaded and followed.
    let (directory_tx, node_client) = directory::node_client(&node_clients, health_book.clone(), client_config);
    // Sources publish from now on; events queue until the store is open and their owner runs.
    let (events, events_owner) = events::Events::new();
    if let Some(tls) = &tls {
        tasks.spawn(events::sources::watch_certificate(tls.clone(), events.clone(), shutdown.clone()));
    }
    let context = api::Context {
        node_client: node_client.clone(),
        health: health_book.clone(),
        tasks: tasks.clone(),
        registry: registry.clone(),
        access: access.clone(),
        replication: replication.clone(),
        actions: actions.clone(),
        transactions: transactions.clone(),
        clients: node_clients,
        config: config.clone(),
        shutdown: shutdown.clone(),
        events: events.clone(),
        metrics: master_metrics.clone(),
        result_cache: result_cache::ResultCache::new(config.cache.result_bytes, master_metrics.clone()),
        stats_cache: stats_cache::StatisticsCache::new(config.cache.statistics_bytes, master_metrics.clone()),
        routing: federation::RoutingParsers::default(),
        registrations: Arc::new(tokio::sync::Semaphore::new(api::MAX_CONCURRENT_REGISTRATIONS)),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<MasterServiceServer<api::MasterApi>>().await;
    health.set_not_serving::<MembershipServiceServer<api::MembershipApi>>().await;
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    ragmesh_server::report_certificate_health(tls.as_ref(), health.clone(), &shutdown);
    let (reflection_v1, reflection_v1alpha) = ragmesh_proto::reflection::services(&[
        "ragmesh.v1.MasterService",
        "ragmesh.v1.MembershipService",
        "ragmesh.v1.AuthService",
    ]);

    let rate_limits = RateLimits::from_config(config.access.rate_limit_rps, config.access.rate_limit_burst)
        .map_err(|e| StartError::Config(e.to_string()))?;
    // Authentication runs first (outermost) so the rate limiter keys on the verified caller.
    // The server span of every call sits outside everything but the gRPC metrics (refusals are in
    // the trace too).
    let mut builder = ragmesh_server::builder(tls.as_ref(), local_addr, grpc_metrics)
        .layer(ragmesh_stack::trace::TraceLayer::new())
        .max_concurrent_streams(config.access.max_streams_per_connection)
        .layer(auth_layer::AuthLayer::new(access.clone()))
        .layer(
            RateLimitLayer::new(rate_limits, key_from_extension().or(key_from_peer_ip()))
                .with_refusals(master_metrics.rate_limit_refusals()),
        );
    // Health and reflection decode at most --max-message-bytes too, so a refusal names the limit
    // that applied; their responses stay unlimited (reflection's descriptors can be large).
    let max = config.access.max_message_bytes;
    let router = builder
        .add_service(health_service.max_decoding_message_size(max))
        .add_service(reflection_v1.max_decoding_message_size(max))
        .add_service(reflection_v1alpha.max_decoding_message_size(max))
        .add_service(limits(MasterServiceServer::new(api::MasterApi(context.clone())), &config))
        .add_service(limits(MembershipServiceServer::new(api::MembershipApi(context.clone())), &config))
        .add_service(limits(AuthServiceServer::new(auth_api::AuthApi(context.clone())), &config));

    let serve_tls = tls.clone();
    let stop = shutdown.clone();
    let serve_stop = shutdown.clone();
    let data_dir = config.data_dir.clone();
    let loaded = registry.clone();
    let loaded_access = access.clone();
    let access_config = config.access.clone();
    let tls_on = tls.is_some();
    let loaded_replication = replication.clone();
    let loaded_actions = actions.clone();
    let loaded_transactions = transactions.clone();
    let recovery_context = context.clone();
    let actions_config = config.actions;
    let sweeper_tasks = tasks.clone();
    let directory_clients = context.clients.clone();
    let replication_tasks = tasks.clone();
    let replication_config = config.replication;
    let events_config = config.events.clone();
    let webhooks = config.events.webhooks.clone();
    let event_tasks = tasks.clone();
    if let Some(metrics) = metrics {
        ragmesh_telemetry::metrics::serve(metrics, Arc::new(metrics_registry), shutdown.clone());
    }
    let task = tokio::spawn(async move {
        let server = tokio::spawn(ragmesh_server::serve(router, listener, serve_tls, serve_stop.cancelled_owned()));
        let store_dir = data_dir.join("state");
        let ready = async {
            let opened = ragmesh_server::open_when_free(
                "state store",
                &stop,
                move || SledStore::open(&store_dir),
                |err| matches!(err, ragmesh_store::StoreError::Locked { .. }),
            )
            .await?;
            let Some(store) = opened else {
                return anyhow::Ok(()); // shut down while waiting for the store
            };
            let store: Arc<dyn ragmesh_store::StateStore> = Arc::new(store);
            let breaker_store = store.clone();
            let restore_book = health_book.clone();
            let coordinator_store = breaker_store.clone();
            let (loaded_registry, access_control, write_log, outbox, action_records) =
                tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                    let registry = Registry::load(store.clone()).context("cannot load the node registry")?;
                    let restored =
                        breakers::load(store.as_ref(), &restore_book).context("cannot load the circuit breakers")?;
                    tracing::info!(breakers = restored, "circuit breakers restored");
                    let write_log =
                        replication::log::WriteLog::open(store.clone()).context("cannot open the write logs")?;
                    let outbox =
                        events::open_outbox(store.clone(), &events_config).context("cannot open the webhook outbox")?;
                    let action_records = actions::service::Actions::open(store.clone(), &actions_config)
                        .context("cannot open the action records (idempotency keys, audit log, jobs)")?;
                    let access = access::AccessControl::load(store, access_config, tls_on)
                        .context("cannot load the signing keys")?;
                    Ok((registry, access, write_log, outbox, action_records))
                })
                .await??;
            let access_control = Arc::new(access_control);
            let _ = loaded_access.set(access_control.clone());
            // Replication publishes the logs' state to the registry before the registry serves.
            tokio::spawn(breakers::run_writer(
                breaker_store,
                events::sources::tee_breakers(breaker_rx, events.clone()),
            ));
            events::start(events::Parts {
                owner: events_owner,
                events: &events,
                outbox,
                webhooks: &webhooks,
                membership: loaded_registry.subscribe(),
                keys: access_control.subscribe_keys(),
                tasks: &event_tasks,
                shutdown: &stop,
            });
            tokio::spawn(metrics::forget_departed(loaded_registry.subscribe(), master_metrics.clone(), stop.clone()));
            tokio::spawn(directory::follow(
                loaded_registry.subscribe(),
                directory_clients,
                health_book.clone(),
                directory_tx,
                stop.clone(),
            ));
            let client = node_client;
            let parts = replication::Parts {
                registry: loaded_registry.clone(),
                log: write_log,
                client,
                access: access_control,
                config: replication_config,
                send_timeout: REPLICA_SEND_TIMEOUT,
                metrics: master_metrics.clone(),
                shutdown: stop.clone(),
                tasks: replication_tasks,
            };
            let _ = loaded_replication.set(replication::Replication::start(parts));
            start_sweepers(&action_records, &sweeper_tasks, &stop);
            let _ = loaded_actions.set(action_records);
            // Unfinished transactions resume once replication and the node client can serve them.
            let coordinator = actions::transactions::Transactions::new(coordinator_store);
            let resumed = actions::tx_service::recover(&recovery_context, &coordinator)
                .await
                .context("cannot resume the unfinished transactions")?;
            if resumed > 0 {
                tracing::warn!(transactions = resumed, "unfinished transactions resumed");
            }
            let compacted = coordinator.clone();
            sweeper_tasks.spawn(actions::run_sweeper(
                "transactions",
                SWEEP_PERIOD,
                actions::unix_now_ms,
                move |now_ms| {
                    let retention = u64::try_from(actions::transactions::RETENTION.as_millis()).unwrap_or(u64::MAX);
                    compacted.compact(now_ms, retention).map_err(|e| actions::RecordError::Task(e.to_string()))
                },
                stop.clone(),
            ));
            let _ = loaded_transactions.set(coordinator);
            tracing::info!(nodes = loaded_registry.snapshot().len(), "registry loaded");
            let _ = loaded.set(loaded_registry);
            health.set_serving::<MasterServiceServer<api::MasterApi>>().await;
            health.set_serving::<MembershipServiceServer<api::MembershipApi>>().await;
            health.set_service_status("", tonic_health::ServingStatus::Serving).await;
            Ok(())
        };
        if let Err(err) = ready.await {
            // A master without its registry must not linger half-alive: stop serving, report why.
            stop.cancel();
            let _ = ragmesh_server::drain(server).await;
            return Err(err);
        }
        stop.cancelled().await;
        tracing::info!("master shutting down");
        tasks.close();
        // Health streams end on the shutdown token; wait for them before draining connections.
        if tokio::time::timeout(ragmesh_server::SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
            tracing::warn!("health streams did not end in time");
        }
        ragmesh_server::drain(server).await?;
        Ok(())
    });
    tracing::info!(listen = %local_addr, tls = tls.is_some(), "master serving");
    Ok(MasterHandle { local_addr, metrics_addr, registry, shutdown, task })
}
