//! One client stack per node, built in one place. The master dials each agent at its advertised
//! address over mTLS and verifies that the agent's certificate names the node, so an address
//! that now belongs to another machine cannot answer for the node.
//!
//! ```text
//! caller ─► ConcurrencyLimit ─► Timeout ─► tonic Channel (mTLS, lazy connect) ─► agent
//! ```
//! * `ConcurrencyLimit` sits outside so that waiting for a slot counts against the caller's
//!   deadline (enforced by the fan-out's `timeout_at`), and a slow node can hold at most
//!   `MAX_IN_FLIGHT_PER_NODE` of the master's requests.
//! * `Timeout` is a ceiling for any single call, a backstop should a caller forget its deadline.
//! * The channel connects lazily and keeps the HTTP/2 connection alive with pings, so a dead
//!   connection is noticed even when no request is in flight.
//!
//! After a certificate reload a node's client is rebuilt on its next use, so new connections
//! present the new certificate; the old channel keeps serving calls already made with it until
//! the last clone of it is dropped.
//!
//! The cache holds clients of live nodes only: when a node is evicted or goes down, its client
//! (and with it the channel's connection and keep-alive pings) is dropped; a node that comes
//! back gets a new client on first use. So the cache never outgrows the set of live nodes.
//!
//! The typed node client of issue 7 (`ragmesh_stack::node_client::build`: retry, hedge, p2c
//! balancing, circuit breaker) dials nodes through [`NodeClients::channel_factory`], the same
//! mTLS endpoint with the same node-name check; [`NodeClients::client`] stays for the callers
//! that have not moved to it yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragmesh_proto::v1::agent_service_client::AgentServiceClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::node::NodeState;
use crate::registry::Membership;
use ragmesh_stack::node_client::ChannelFactory;
use ragmesh_tls::ReloadableTls;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimit;
use tower::timeout::Timeout;

/// Most requests the master keeps in flight to one node.
pub const MAX_IN_FLIGHT_PER_NODE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The per-node service stack.
pub type NodeStack = ConcurrencyLimit<Timeout<Channel>>;
/// A typed client over the per-node stack.
pub type NodeClient = AgentServiceClient<NodeStack>;

/// Per-node clients, created on first use and rebuilt when a node's address changes or the TLS
/// material is reloaded.
#[derive(Debug, Clone)]
pub struct NodeClients {
    tls: Option<ReloadableTls>,
    ceiling: Duration,
    clients: Arc<Mutex<HashMap<String, CachedClient>>>,
}

/// A node's client and what it was built from.
#[derive(Debug)]
struct CachedClient {
    address: String,
    /// [`ReloadableTls::generation`] of the material it was built with (0 without TLS).
    tls_generation: u64,
    client: NodeClient,
}

impl NodeClients {
    /// Clients that use `tls` (None = plaintext) and cap every call at `ceiling`.
    pub fn new(tls: Option<ReloadableTls>, ceiling: Duration) -> Self {
        NodeClients { tls, ceiling, clients: Arc::default() }
    }

    /// Whether the clients use mTLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The client of node `name` at `address`; cheap to clone, shares the connection.
    pub fn client(&self, name: &str, address: &str) -> Result<NodeClient, String> {
        let tls_generation = self.tls.as_ref().map_or(0, ReloadableTls::generation);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cached) = clients.get(name)
            && cached.address == address
            && cached.tls_generation == tls_generation
        {
            return Ok(cached.client.clone());
        }
        let client = self.build(name, address)?;
        let cached = CachedClient { address: address.to_owned(), tls_generation, client: client.clone() };
        clients.insert(name.to_owned(), cached);
        Ok(client)
    }

    /// Drops the clients of nodes that are not in `membership` or are down.
    pub fn retain_live(&self, membership: &Membership) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|name, _| membership.get(name).is_some_and(|view| view.state != NodeState::Down));
    }

    /// Number of cached clients.
    pub fn cached(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Keeps the cache to live nodes as membership changes, until `shutdown`.
    pub async fn follow(self, mut membership: watch::Receiver<Membership>, shutdown: CancellationToken) {
        loop {
            let current = membership.borrow_and_update().clone();
            self.retain_live(&current);
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = membership.changed() => if changed.is_err() { return },
            }
        }
    }

    /// [`ReloadableTls::generation`] of the current TLS material (0 without TLS): the node
    /// client's directory carries it, so that a reload rebuilds the per-node stacks.
    pub fn tls_generation(&self) -> u64 {
        self.tls.as_ref().map_or(0, ReloadableTls::generation)
    }

    /// A lazily connecting channel to node `name` at `address`: mTLS with the current material
    /// when TLS is on, and the agent's certificate must name the node.
    pub fn channel(&self, name: &str, address: &str) -> Result<Channel, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| format!("node {name} advertises an invalid address {address:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.current().client_config(name))
                .map_err(|e| format!("tls setup for node {name}: {e}"))?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// [`Self::channel`] as the channel factory of the typed node client
    /// ([`ragmesh_stack::node_client::build`]).
    pub fn channel_factory(&self) -> ChannelFactory {
        let clients = self.clone();
        Arc::new(move |name: &str, address: &str| clients.channel(name, address))
    }

    fn build(&self, name: &str, address: &str) -> Result<NodeClient, String> {
        let channel = self.channel(name, address)?;
        let stack =
            ServiceBuilder::new().concurrency_limit(MAX_IN_FLIGHT_PER_NODE).timeout(self.ceiling).service(channel);
        Ok(AgentServiceClient::new(stack))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::registry::NodeView;

    fn view(name: &str, state: NodeState) -> NodeView {
        NodeView::for_tests(name, state, &[])
    }

    #[tokio::test]
    async fn regression_clients_of_evicted_or_down_nodes_are_dropped() {
        let clients = NodeClients::new(None, Duration::from_secs(1));
        for name in ["a", "b", "c"] {
            clients.client(name, "127.0.0.1:1").expect("lazy client");
        }
        assert_eq!(clients.cached(), 3);
        // "c" was evicted (gone from membership), "b" is down.
        let membership: Membership = Arc::new(BTreeMap::from([
            ("a".to_owned(), view("a", NodeState::Up)),
            ("b".to_owned(), view("b", NodeState::Down)),
        ]));
        clients.retain_live(&membership);
        assert_eq!(clients.cached(), 1, "only the live node keeps its client");
        clients.client("b", "127.0.0.1:1").expect("a node that is back gets a new client");
        assert_eq!(clients.cached(), 2);
    }

    #[tokio::test]
    async fn the_channel_factory_refuses_an_invalid_address_and_names_the_node() {
        let factory = NodeClients::new(None, Duration::from_secs(1)).channel_factory();
        assert!(factory("a", "127.0.0.1:1").is_ok(), "lazy: no connection is made");
        let error = factory("a", "not a host:port").expect_err("invalid");
        assert!(error.starts_with("node a advertises an invalid address"), "{error}");
    }
}
