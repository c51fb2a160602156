//! The node client's view of the mesh, derived from membership: every node that is not down,
//! its address and shard group, and whether it may serve reads (searchable liveness and in sync
//! with its group's write log). One task follows the registry's watch and publishes the
//! directory on a watch of its own, which the node client's balancers read (a `Discover` stream
//! per group): joins, deaths and sync changes reach them without a rebuild. A reload of the TLS
//! material bumps the directory's generation, so per-node stacks are rebuilt with the new
//! certificate; breaker and load state live in the health book and survive that.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ragmesh_stack::discover::{Directory, DirectoryNode};
use ragmesh_stack::node_call::NodeClient;
use ragmesh_stack::node_client::{self, ClientConfig};
use ragmesh_stack::node_health::HealthBook;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clients::NodeClients;
use crate::node::NodeState;
use crate::registry::{Membership, NodeView};

/// How often the follower looks for a reloaded TLS generation.
const TLS_POLL: Duration = Duration::from_secs(1);

/// The directory of `membership` with per-node stacks built for `tls_generation` (pure).
///
/// A suspect replica (its heartbeats are late: frozen, partitioned, overloaded) is readable only
/// while its group has no replica that is up and in sync: it is avoided while another is
/// healthy, and still used when it is the group's last hope.
pub fn directory_of(membership: &Membership, tls_generation: u64) -> Directory {
    let in_sync = |view: &NodeView| view.state.is_searchable() && view.sync.is_in_sync();
    let healthy_groups: BTreeSet<&str> = membership
        .values()
        .filter(|view| view.state == NodeState::Up && in_sync(view))
        .map(|view| view.record.group())
        .collect();
    let nodes = membership
        .values()
        .filter(|view| view.state != NodeState::Down)
        .map(|view| {
            let group = view.record.group();
            let avoided = view.state == NodeState::Suspect && healthy_groups.contains(group);
            let node = DirectoryNode {
                address: view.record.address.clone(),
                group: group.to_owned(),
                readable: in_sync(view) && !avoided,
            };
            (view.record.name.clone(), node)
        })
        .collect();
    Directory { nodes, tls_generation }
}

/// An empty directory watch and the node client reading it.
pub fn node_client(
    clients: &NodeClients,
    health: HealthBook,
    config: ClientConfig,
) -> (watch::Sender<Arc<Directory>>, NodeClient) {
    let (directory_tx, directory_rx) = watch::channel(Arc::new(Directory::default()));
    let client = node_client::build(directory_rx, clients.channel_factory(), health, clients.uses_tls(), config);
    (directory_tx, client)
}

/// Publishes the directory of every membership change (and of every TLS reload) on `to`, and
/// forgets the health of evicted nodes, until `shutdown`.
pub async fn follow(
    mut membership: watch::Receiver<Membership>,
    clients: NodeClients,
    health: HealthBook,
    to: watch::Sender<Arc<Directory>>,
    shutdown: CancellationToken,
) {
    let mut tls_poll = tokio::time::interval(TLS_POLL);
    tls_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let current = membership.borrow_and_update().clone();
        let directory = directory_of(&current, clients.tls_generation());
        to.send_if_modified(|old| {
            let changed = **old != directory;
            if changed {
                *old = Arc::new(directory);
            }
            changed
        });
        health.retain(|node| current.contains_key(node));
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = membership.changed() => if changed.is_err() { return },
            _ = tls_poll.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::registry::SyncState;

    #[test]
    fn down_nodes_are_left_out_and_only_in_sync_searchable_nodes_are_readable() {
        let mut up = NodeView::for_tests("a1", NodeState::Up, &[]);
        std::sync::Arc::make_mut(&mut up.record).shard = "a".into();
        let mut behind = NodeView::for_tests("a2", NodeState::Up, &[]);
        std::sync::Arc::make_mut(&mut behind.record).shard = "a".into();
        behind.sync = SyncState::CatchingUp;
        let down = NodeView::for_tests("b1", NodeState::Down, &[]);
        let joining = NodeView::for_tests("c1", NodeState::Joining, &[]);
        let membership: Membership = Arc::new(BTreeMap::from([
            ("a1".to_owned(), up),
            ("a2".to_owned(), behind),
            ("b1".to_owned(), down),
            ("c1".to_owned(), joining),
        ]));
        let directory = directory_of(&membership, 3);
        assert_eq!(directory.tls_generation, 3);
        let view: Vec<(&str, &str, bool)> =
            directory.nodes.iter().map(|(n, d)| (n.as_str(), d.group.as_str(), d.readable)).collect();
        assert_eq!(view, [("a1", "a", true), ("a2", "a", false), ("c1", "c1", true)]);
    }

    #[test]
    fn a_suspect_replica_is_avoided_while_its_group_has_a_healthy_one() {
        let replica = |name: &str, state| {
            let mut view = NodeView::for_tests(name, state, &[]);
            std::sync::Arc::make_mut(&mut view.record).shard = "a".into();
            (name.to_owned(), view)
        };
        let readable = |membership: BTreeMap<String, NodeView>| {
            let directory = directory_of(&Arc::new(membership), 0);
            directory.nodes.into_iter().map(|(name, node)| (name, node.readable)).collect::<Vec<_>>()
        };
        let both = BTreeMap::from([replica("a1", NodeState::Up), replica("a2", NodeState::Suspect)]);
        assert_eq!(readable(both), [("a1".to_owned(), true), ("a2".to_owned(), false)]);
        let last_hope = BTreeMap::from([replica("a1", NodeState::Down), replica("a2", NodeState::Suspect)]);
        assert_eq!(readable(last_hope), [("a2".to_owned(), true)]);
    }
}
