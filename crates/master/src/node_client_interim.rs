//! A stand-in node client while the resilient one (balance, retry, hedge, breaker) is built:
//! every shard group is a group of one (its node's name), every call goes straight to the node's
//! [`NodeEndpoint`] over a cached mTLS channel. Replaced by `ragmesh_stack::node_client`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ragmesh_stack::endpoint::NodeEndpoint;
use ragmesh_stack::node_call::{CallError, NodeCall, NodeClient, Target};
use tokio::sync::watch;
use tonic::transport::Channel;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;

use crate::clients::NodeClients;
use crate::registry::Membership;

/// The node client over `membership` (the registry's watch, or a copy of it).
pub(crate) fn build(clients: NodeClients, membership: watch::Receiver<Membership>) -> NodeClient {
    let channels: Arc<Mutex<HashMap<String, (String, Channel)>>> = Arc::default();
    BoxCloneSyncService::new(tower::service_fn(move |call: NodeCall| {
        let clients = clients.clone();
        let channels = channels.clone();
        let node = match &call.target {
            Target::Group(name) | Target::Node(name) => name.clone(),
        };
        let view = membership.borrow().get(&node).cloned();
        async move {
            let view = view.ok_or_else(|| CallError::Unavailable(format!("{} is not known", call.target)))?;
            let address = view.record.address.clone();
            let channel = {
                let mut channels = channels.lock().unwrap_or_else(|p| p.into_inner());
                match channels.get(&node) {
                    Some((cached, channel)) if *cached == address => channel.clone(),
                    _ => {
                        let channel = clients.channel(&node, &address).map_err(CallError::Unavailable)?;
                        channels.insert(node.clone(), (address, channel.clone()));
                        channel
                    }
                }
            };
            NodeEndpoint::new(node, channel, clients.uses_tls()).oneshot(call).await
        }
    }))
}
