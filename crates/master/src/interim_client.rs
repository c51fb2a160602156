//! An interim node client for replication (to be replaced by the real node client at merge):
//! `Target::Node(name)` is looked up in the registry, its channel built (mTLS with the master's
//! reloadable material and the node-name check, as in `clients.rs`) and cached per name,
//! address and TLS generation, and the call made by `ragmesh_stack::endpoint::NodeEndpoint`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragmesh_proto::ErrorKind;
use ragmesh_stack::endpoint::NodeEndpoint;
use ragmesh_stack::node_call::{CallError, NodeCall, NodeClient, Target};
use ragmesh_tls::ReloadableTls;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;

use crate::registry::Registry;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

type Cache = Arc<Mutex<HashMap<String, (String, u64, Channel)>>>;

/// A node client that reaches `Target::Node` calls over cached per-node channels.
pub fn node_client(registry: Registry, tls: Option<ReloadableTls>) -> NodeClient {
    let cache: Cache = Arc::default();
    BoxCloneSyncService::new(tower::service_fn(move |call: NodeCall| {
        let endpoint = endpoint_for(&registry, tls.as_ref(), &cache, &call.target);
        async move { endpoint?.oneshot(call).await }
    }))
}

fn endpoint_for(
    registry: &Registry,
    tls: Option<&ReloadableTls>,
    cache: &Cache,
    target: &Target,
) -> Result<NodeEndpoint, CallError> {
    let Target::Node(name) = target else {
        return Err(CallError::Error {
            kind: ErrorKind::Unimplemented,
            message: format!("the interim client only calls single nodes, not {target}"),
        });
    };
    let view = registry.get(name).ok_or_else(|| CallError::Unavailable(format!("node {name} is not registered")))?;
    let address = view.record.address;
    let generation = tls.map_or(0, ReloadableTls::generation);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((cached_address, cached_generation, channel)) = cache.get(name)
        && *cached_address == address
        && *cached_generation == generation
    {
        return Ok(NodeEndpoint::new(name.clone(), channel.clone(), tls.is_some()));
    }
    let channel = channel(name, &address, tls).map_err(CallError::Unavailable)?;
    cache.insert(name.clone(), (address, generation, channel.clone()));
    Ok(NodeEndpoint::new(name.clone(), channel, tls.is_some()))
}

fn channel(name: &str, address: &str, tls: Option<&ReloadableTls>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| format!("node {name} advertises an invalid address {address:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.current().client_config(name))
            .map_err(|e| format!("tls setup for node {name}: {e}"))?;
    }
    Ok(endpoint.connect_lazy())
}
