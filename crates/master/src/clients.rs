//! How the master dials an agent: one place that builds a node's channel. The master dials each
//! agent at its advertised address over mTLS and verifies that the agent's certificate names
//! the node, so an address that now belongs to another machine cannot answer for the node. The
//! channel connects lazily and keeps its HTTP/2 connection alive with pings, so a dead
//! connection is noticed even when no request is in flight.
//!
//! The node client (`ragmesh_stack::node_client`, built in [`crate::directory`]) holds the
//! channels, one per node in its per-node stack; it dials through
//! [`NodeClients::channel_factory`]. After a certificate reload, [`NodeClients::tls_generation`]
//! changes, the directory carries the new generation, and the node client rebuilds each
//! node's stack with a channel presenting the new certificate; calls already made on the old
//! channel finish on it.

use std::sync::Arc;
use std::time::Duration;

use ragmesh_stack::node_client::ChannelFactory;
use ragmesh_tls::ReloadableTls;
use tonic::transport::{Channel, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Dials nodes with the master's (reloadable) TLS material.
#[derive(Debug, Clone)]
pub struct NodeClients {
    tls: Option<ReloadableTls>,
}

impl NodeClients {
    /// Dials with `tls` (None = plaintext).
    pub fn new(tls: Option<ReloadableTls>) -> Self {
        NodeClients { tls }
    }

    /// Whether the channels use mTLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
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

    /// [`Self::channel`] as the channel factory of the node client.
    pub fn channel_factory(&self) -> ChannelFactory {
        let clients = self.clone();
        Arc::new(move |name: &str, address: &str| clients.channel(name, address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_invalid_advertised_address_is_explained() {
        let clients = NodeClients::new(None);
        let err = clients.channel("a", "not an address\n").expect_err("invalid");
        assert!(err.contains("node a advertises an invalid address"), "{err}");
        clients.channel("a", "127.0.0.1:1").expect("a lazy channel needs no connection");
        assert_eq!(clients.tls_generation(), 0);
    }
}
