//! The replica directory and, per shard group, a [`tower::discover::Discover`] stream of that
//! group's readable replicas, driven by a `watch` of the directory. The balancer of a group
//! reads it, so joins, deaths and sync changes reach the balancer without rebuilding it: a
//! replica that becomes readable is an `Insert`, one that stops being readable (or leaves) a
//! `Remove`, and a replica whose address or the TLS generation changed a `Remove` followed by
//! an `Insert` of a freshly built per-node stack (its health cell, outside the stack, stays).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tower::discover::Change;

/// One node as the node client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryNode {
    /// Address it serves the agent API on (`host:port`).
    pub address: String,
    /// Shard group it replicates.
    pub group: String,
    /// Whether it may serve reads: searchable and in sync with its group's write log.
    pub readable: bool,
}

/// Every node the master may call, derived by the master from membership. Nodes that are down
/// are left out. Whoever feeds the directory bumps `tls_generation` when the TLS material is
/// reloaded, so that new connections present the new certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    /// Nodes by name.
    pub nodes: BTreeMap<String, DirectoryNode>,
    /// Generation of the TLS material the per-node stacks are built with (0 without TLS).
    pub tls_generation: u64,
}

impl Directory {
    /// The readable replicas of `group`.
    pub fn readable<'a>(&'a self, group: &'a str) -> impl Iterator<Item = (&'a String, &'a DirectoryNode)> + 'a {
        self.nodes.iter().filter(move |(_, node)| node.readable && node.group == group)
    }

    /// Whether any node serves `group`.
    pub fn has_group(&self, group: &str) -> bool {
        self.nodes.values().any(|node| node.group == group)
    }
}

/// Builds the per-node service of a node (`name`, its directory entry, the TLS generation).
pub type MakeStack<S> = Box<dyn FnMut(&str, &DirectoryNode, u64) -> Result<S, String> + Send>;

/// The readable replicas of one group as a stream of changes.
pub struct GroupDiscover<S> {
    group: String,
    directory: WatchStream<Arc<Directory>>,
    /// What the balancer holds: node -> (address, TLS generation) it was built with.
    current: HashMap<String, (String, u64)>,
    changes: VecDeque<Change<String, S>>,
    make: MakeStack<S>,
}

impl<S> std::fmt::Debug for GroupDiscover<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupDiscover").field("group", &self.group).field("current", &self.current).finish()
    }
}

impl<S> GroupDiscover<S> {
    /// The replicas of `group` in `directory`, each served by `make`'s stack.
    pub fn new(group: impl Into<String>, directory: watch::Receiver<Arc<Directory>>, make: MakeStack<S>) -> Self {
        GroupDiscover {
            group: group.into(),
            directory: WatchStream::new(directory),
            current: HashMap::new(),
            changes: VecDeque::new(),
            make,
        }
    }

    /// Queues the changes that turn the current set into `directory`'s readable replicas.
    fn update(&mut self, directory: &Directory) {
        let generation = directory.tls_generation;
        let wanted: HashMap<&String, &DirectoryNode> = directory.readable(&self.group).collect();
        let mut gone = Vec::new();
        for (name, (address, built_with)) in &self.current {
            match wanted.get(name) {
                Some(node) if node.address == *address && *built_with == generation => {}
                _ => gone.push(name.clone()),
            }
        }
        for name in gone {
            self.current.remove(&name);
            tracing::debug!(shard.group = %self.group, node.id = %name, "replica leaves the balancer");
            self.changes.push_back(Change::Remove(name));
        }
        for (name, node) in wanted {
            if self.current.contains_key(name) {
                continue;
            }
            match (self.make)(name, node, generation) {
                Ok(service) => {
                    tracing::debug!(shard.group = %self.group, node.id = %name, "replica joins the balancer");
                    self.current.insert(name.clone(), (node.address.clone(), generation));
                    self.changes.push_back(Change::Insert(name.clone(), service));
                }
                Err(error) => {
                    tracing::warn!(shard.group = %self.group, node.id = %name, %error, "replica left out of the balancer")
                }
            }
        }
    }
}

// Nothing of `S` is ever pinned: services are only queued and handed out by value.
impl<S> Unpin for GroupDiscover<S> {}

impl<S> Stream for GroupDiscover<S> {
    type Item = Result<Change<String, S>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.changes.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match Pin::new(&mut this.directory).poll_next(cx) {
                Poll::Ready(Some(directory)) => this.update(&directory),
                // The directory's sender is gone (shutdown): the set stays as it is.
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;

    fn node(address: &str, group: &str, readable: bool) -> DirectoryNode {
        DirectoryNode { address: address.into(), group: group.into(), readable }
    }

    fn directory(nodes: &[(&str, DirectoryNode)], tls_generation: u64) -> Arc<Directory> {
        let nodes = nodes.iter().map(|(name, node)| (name.to_string(), node.clone())).collect();
        Arc::new(Directory { nodes, tls_generation })
    }

    /// Builds "name@address#generation" so that the test sees which stack was built.
    fn labels() -> MakeStack<String> {
        Box::new(|name, node, generation| Ok(format!("{name}@{}#{generation}", node.address)))
    }

    fn show(change: Change<String, String>) -> String {
        match change {
            Change::Insert(_, service) => format!("+{service}"),
            Change::Remove(name) => format!("-{name}"),
        }
    }

    async fn next(discover: &mut GroupDiscover<String>) -> String {
        let change = tokio::time::timeout(std::time::Duration::from_secs(1), discover.next())
            .await
            .expect("a change is due")
            .expect("stream open")
            .expect("infallible");
        show(change)
    }

    async fn quiet(discover: &mut GroupDiscover<String>) {
        let more = tokio::time::timeout(std::time::Duration::from_millis(50), discover.next()).await;
        assert!(more.is_err(), "no further change expected, got {:?}", more.map(|c| c.map(|c| c.map(show))));
    }

    #[tokio::test]
    async fn only_readable_replicas_of_the_group_are_inserted_and_changes_follow_the_watch() {
        let (tx, rx) = watch::channel(directory(
            &[("a", node("h:1", "g", true)), ("b", node("h:2", "g", false)), ("c", node("h:3", "other", true))],
            0,
        ));
        let mut discover = GroupDiscover::new("g", rx, labels());
        assert_eq!(next(&mut discover).await, "+a@h:1#0");
        quiet(&mut discover).await;

        // b caught up, a stopped being readable.
        tx.send(directory(&[("a", node("h:1", "g", false)), ("b", node("h:2", "g", true))], 0)).expect("send");
        let mut changes = vec![next(&mut discover).await, next(&mut discover).await];
        changes.sort();
        assert_eq!(changes, ["+b@h:2#0", "-a"]);
        quiet(&mut discover).await;

        // b moved: remove the old stack, insert a new one at the new address.
        tx.send(directory(&[("b", node("h:9", "g", true))], 0)).expect("send");
        assert_eq!(next(&mut discover).await, "-b");
        assert_eq!(next(&mut discover).await, "+b@h:9#0");

        // TLS reload: same address, new generation.
        tx.send(directory(&[("b", node("h:9", "g", true))], 1)).expect("send");
        assert_eq!(next(&mut discover).await, "-b");
        assert_eq!(next(&mut discover).await, "+b@h:9#1");

        // An unchanged directory changes nothing.
        tx.send(directory(&[("b", node("h:9", "g", true))], 1)).expect("send");
        quiet(&mut discover).await;

        // The group's last replica leaves.
        tx.send(directory(&[], 1)).expect("send");
        assert_eq!(next(&mut discover).await, "-b");
        drop(tx);
        assert!(discover.next().await.is_none(), "the stream ends with the directory");
    }
}
