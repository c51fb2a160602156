//! ragmesh master: the node registry (persisted in sled), the agents' health streams, and
//! federated search with an honest per-node status. `main.rs` only parses config and calls
//! [`start`]; tests call [`start`] with a listener bound to `127.0.0.1:0`.

pub mod api;
pub mod clients;
mod convert;
pub mod error;
pub mod federation;
pub mod merge;
pub mod node;
pub mod registry;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;

use ragmesh_config::MasterConfig;
use ragmesh_proto::v1::{
    master_service_server::MasterServiceServer, membership_service_server::MembershipServiceServer,
};
use ragmesh_store::SledStore;
use ragmesh_tls::LoadedTls;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use registry::Registry;

/// How long shutdown waits for connections to drain before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the master could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS files are unusable.
    #[error("{0}")]
    Tls(#[from] ragmesh_tls::TlsError),
    /// The listener is unusable.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The server could not be configured.
    #[error("server setup: {0}")]
    Server(#[from] tonic::transport::Error),
}

/// A running master.
#[derive(Debug)]
pub struct MasterHandle {
    local_addr: SocketAddr,
    registry: Arc<OnceLock<Registry>>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl MasterHandle {
    /// Address the master serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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

/// How often a locked registry store is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(200);

/// Opens the registry store and loads it. While another process holds the store (a previous
/// master still shutting down), waits and retries, serving NOT_SERVING meanwhile; returns
/// `None` if shut down first. Any other failure is fatal.
async fn load_registry(data_dir: &std::path::Path, stop: &CancellationToken) -> anyhow::Result<Option<Registry>> {
    let path = data_dir.join("registry");
    let mut warned = false;
    loop {
        let attempt_path = path.clone();
        let opened = tokio::task::spawn_blocking(move || SledStore::open(&attempt_path)).await?;
        match opened {
            Ok(store) => {
                let registry = tokio::task::spawn_blocking(move || Registry::load(Arc::new(store))).await?;
                return Ok(Some(registry.context("cannot load the node registry")?));
            }
            Err(err @ ragmesh_store::StoreError::Locked { .. }) => {
                if !warned {
                    tracing::warn!(error = %err, "waiting for the registry store; serving NOT_SERVING until it is free");
                    warned = true;
                }
            }
            Err(err) => return Err(anyhow::Error::new(err).context("cannot open the node registry")),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(LOCK_RETRY) => {}
        }
    }
}

/// Starts serving on `listener`. Health reports NOT_SERVING until the registry is loaded.
pub async fn start(config: MasterConfig, listener: TcpListener) -> Result<MasterHandle, StartError> {
    let local_addr = listener.local_addr()?;
    let tls = load_tls(&config)?;
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();
    let registry = Arc::new(OnceLock::new());
    let tasks = tokio_util::task::TaskTracker::new();
    let context = api::Context {
        tasks: tasks.clone(),
        registry: registry.clone(),
        clients: clients::NodeClients::new(tls.clone(), config.max_search_timeout.max(Duration::from_secs(60))),
        config: config.clone(),
        shutdown: shutdown.clone(),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<MasterServiceServer<api::MasterApi>>().await;
    health.set_not_serving::<MembershipServiceServer<api::MembershipApi>>().await;
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    let (reflection_v1, reflection_v1alpha) =
        ragmesh_proto::reflection::services(&["ragmesh.v1.MasterService", "ragmesh.v1.MembershipService"]);

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    match &tls {
        Some(tls) => builder = builder.tls_config(tls.server_config())?,
        None => tracing::warn!(
            listen = %local_addr,
            "plaintext mode (--insecure): no TLS, no client authentication; anyone who can reach this port can register nodes and search"
        ),
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(MasterServiceServer::new(api::MasterApi(context.clone())))
        .add_service(MembershipServiceServer::new(api::MembershipApi(context)));

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = shutdown.clone();
    let serve_stop = shutdown.clone();
    let data_dir = config.data_dir.clone();
    let loaded = registry.clone();
    let task = tokio::spawn(async move {
        let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, serve_stop.cancelled_owned()));
        let Some(loaded_registry) = load_registry(&data_dir, &stop).await? else {
            return Ok(()); // shut down while waiting for the store
        };
        tracing::info!(nodes = loaded_registry.snapshot().len(), "registry loaded");
        let _ = loaded.set(loaded_registry);
        health.set_serving::<MasterServiceServer<api::MasterApi>>().await;
        health.set_serving::<MembershipServiceServer<api::MembershipApi>>().await;
        health.set_service_status("", tonic_health::ServingStatus::Serving).await;
        stop.cancelled().await;
        tracing::info!("master shutting down");
        tasks.close();
        let drained = async {
            tasks.wait().await;
            (&mut server).await
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, drained).await {
            Ok(joined) => joined??,
            Err(_) => {
                tracing::warn!(
                    grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
                    "connections did not drain in time; closing them"
                );
                server.abort();
            }
        }
        Ok(())
    });
    tracing::info!(listen = %local_addr, tls = tls.is_some(), "master serving");
    Ok(MasterHandle { local_addr, registry, shutdown, task })
}
