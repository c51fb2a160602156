//! The node client: the one `Service<NodeCall>` through which the master calls agents, built by
//! [`build`]. See [`build`] for the layers and why each sits where it does.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;
use tower::balance::p2c::Balance;
use tower::hedge::Hedge;
use tower::limit::ConcurrencyLimit;
use tower::retry::Retry;
use tower::retry::budget::TpsBudget;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer as _, Service, ServiceExt as _};

use crate::breaker_layer::{CircuitBreaker, CircuitBreakerLayer};
use crate::discover::{Directory, DirectoryNode, GroupDiscover, MakeStack};
use crate::endpoint::NodeEndpoint;
use crate::hedge::{HedgeConfig, HedgePolicy};
use crate::load::{Measured, MeasuredLayer};
use crate::node_call::AttemptKind;
use crate::node_call::{CallError, NodeAnswer, NodeCall, NodeClient, Target};
use crate::node_health::HealthBook;
use crate::retry::{RetryConfig, RetryPolicy};
use crate::shared::Shared;

/// Dials node `name` at `address` (the master's: mTLS, certificate must name the node). The
/// channel should connect lazily: it is built when a node joins a balancer, not when called.
pub type ChannelFactory = Arc<dyn Fn(&str, &str) -> Result<Channel, String> + Send + Sync>;

/// The per-node stack (see [`build`]).
pub type NodeStack = CircuitBreaker<Measured<ConcurrencyLimit<NodeEndpoint>>>;

/// Tuning of the node client.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// Retries of failed reads and their budget.
    pub retry: RetryConfig,
    /// Hedged reads and their budget.
    pub hedge: HedgeConfig,
    /// Most calls in flight to one node.
    pub max_in_flight_per_node: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig { retry: RetryConfig::default(), hedge: HedgeConfig::default(), max_in_flight_per_node: 256 }
    }
}

/// Builds the node client.
///
/// ```text
/// NodeClient ─► router by Target
///    Target::Group(g) ─► [hedge] ─► [retry (budget)] ─► steer ─► p2c Balance over g's readable
///                         replicas (Discover fed by the directory watch) ─► per-node stack
///    Target::Node(n)  ─► per-node stack (no retry, no hedge: writes and explicit node picks)
/// per-node stack = [breaker] ─► [peak-EWMA load] ─► [concurrency limit] ─► NodeEndpoint ─► Channel
/// ```
/// * The router checks the `directory` first: a group without a readable replica fails at
///   once with `Unavailable` (tower's balancer would wait for an endpoint until the deadline),
///   and so does a node that is not in it; a group with one readable replica goes straight to
///   its per-node stack (nothing to balance, retry or hedge over). Every call is bounded by its
///   deadline here, so no balancer waiting for a replica outlives the caller.
/// * Hedge is outermost of the group path, so that the hedged copy is itself retried; it needs
///   a Clone inner service, which retry over the shared balancer is. Tower's hedge is not Clone
///   itself, so it is [`Shared`] too (one hedge and its latency histogram per group).
/// * Retry sits above the balancer, so that a retried read is balanced again and lands on
///   another replica (the failed one ranks last, see [`crate::load`]); [`Shared`] makes the
///   balancer Clone for retry and hedge without a worker task (tower's `Buffer` costs two task
///   hand-offs per call; see [`crate::shared`]). One retry budget and one hedge budget serve all groups.
/// * The balancer gets replicas from a `Discover` stream per group, fed by the `directory`
///   watch: joins, deaths and sync changes reach it without a rebuild; a changed address or TLS
///   generation swaps the replica's per-node stack.
/// * In the per-node stack the breaker is outermost, so a refused call neither counts as load
///   nor takes a concurrency slot, and it never waits: it fails at once with `BreakerOpen`
///   (retry then moves on). The load layer counts calls in flight and their RTT for p2c; the
///   concurrency limit caps what one slow node can hold of the master's calls; the endpoint
///   sends the RPC with the call's deadline and records each attempt.
/// * Breaker, failure count and RTT estimate live in `health` (outside the stacks), so a
///   rebuilt stack keeps them; per-node stacks are built once per (address, TLS generation)
///   and shared by the group path and the node path, so both count against one limit.
/// * When the directory changes, a task drops the stacks of nodes that left it (down, evicted)
///   and the services of groups that left it, with their channels (whose keep-alive pings
///   would otherwise go on for ever); it ends when the client or the directory's sender is gone.
/// * `channels` builds each node's channel (the master's: mTLS with a node-name check); `tls`
///   only sharpens the explanation of transport failures.
///
pub fn build(
    directory: watch::Receiver<Arc<Directory>>,
    channels: ChannelFactory,
    health: HealthBook,
    tls: bool,
    config: ClientConfig,
) -> NodeClient {
    let stacks =
        Arc::new(NodeStacks { channels, health, tls, limit: config.max_in_flight_per_node, cache: Mutex::default() });
    let shared = Arc::new(RouterShared {
        retry_budget: config.retry.budget(),
        hedge_budget: config.hedge.budget(),
        directory: directory.clone(),
        stacks,
        config,
        groups: Mutex::default(),
    });
    tokio::spawn(prune_on_change(Arc::downgrade(&shared), directory));
    BoxCloneSyncService::new(Router(shared))
}

/// Prunes the client's stacks and group services to each new directory (see [`build`]).
async fn prune_on_change(router: Weak<RouterShared>, mut directory: watch::Receiver<Arc<Directory>>) {
    loop {
        let current = directory.borrow_and_update().clone();
        match router.upgrade() {
            Some(router) => router.prune(&current),
            None => return,
        }
        if directory.changed().await.is_err() {
            return;
        }
    }
}

/// Per-node stacks, one per node, rebuilt when its address or the TLS generation changes.
struct NodeStacks {
    channels: ChannelFactory,
    health: HealthBook,
    tls: bool,
    limit: usize,
    cache: Mutex<StackCache>,
}

#[derive(Default)]
struct StackCache {
    /// The directory last pruned against: a stack is kept only for a node it holds (a call
    /// racing a prune with an older directory must not bring a dropped node's stack back).
    pruned_to: Option<Arc<Directory>>,
    built: HashMap<String, BuiltStack>,
}

struct BuiltStack {
    address: String,
    generation: u64,
    stack: NodeStack,
}

impl NodeStacks {
    fn lock(&self) -> MutexGuard<'_, StackCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stack of `name` (a clone sharing its connection and concurrency limit).
    fn get(&self, name: &str, node: &DirectoryNode, generation: u64) -> Result<NodeStack, String> {
        let mut cache = self.lock();
        if let Some(built) = cache.built.get(name)
            && built.address == node.address
            && built.generation == generation
        {
            return Ok(built.stack.clone());
        }
        let channel = (self.channels)(name, &node.address)?;
        let health = self.health.node(name);
        let endpoint = ConcurrencyLimit::new(NodeEndpoint::new(name, channel, self.tls), self.limit);
        let measured = MeasuredLayer::new(health.clone()).layer(endpoint);
        let stack = CircuitBreakerLayer::new(health, self.health.config().blame_min_budget).layer(measured);
        if cache.pruned_to.as_ref().is_none_or(|directory| directory.nodes.contains_key(name)) {
            let built = BuiltStack { address: node.address.clone(), generation, stack: stack.clone() };
            cache.built.insert(name.to_owned(), built);
        }
        Ok(stack)
    }

    fn prune(&self, directory: &Arc<Directory>) {
        let mut cache = self.lock();
        cache.built.retain(|name, _| directory.nodes.contains_key(name));
        cache.pruned_to = Some(directory.clone());
    }
}

struct RouterShared {
    directory: watch::Receiver<Arc<Directory>>,
    stacks: Arc<NodeStacks>,
    config: ClientConfig,
    retry_budget: Arc<TpsBudget>,
    hedge_budget: Arc<TpsBudget>,
    groups: Mutex<Groups>,
}

#[derive(Default)]
struct Groups {
    /// The directory the group services were last pruned against (as in [`StackCache`]).
    pruned_to: Option<Arc<Directory>>,
    services: HashMap<String, NodeClient>,
}

impl RouterShared {
    /// Drops the group services and per-node stacks that `directory` no longer has.
    fn prune(&self, directory: &Arc<Directory>) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.services.retain(|name, _| directory.has_group(name));
        groups.pruned_to = Some(directory.clone());
        drop(groups);
        self.stacks.prune(directory);
    }
}

/// Routes a call by its target; see [`build`].
#[derive(Clone)]
struct Router(Arc<RouterShared>);

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClientRouter").finish_non_exhaustive()
    }
}

type CallFuture = Pin<Box<dyn Future<Output = Result<NodeAnswer, CallError>> + Send>>;

impl Router {
    /// The group's service, built on first use (kept while the directory has the group).
    fn group(&self, group: &str) -> NodeClient {
        let mut groups = self.0.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(service) = groups.services.get(group) {
            return service.clone();
        }
        let service = self.build_group(group);
        if groups.pruned_to.as_ref().is_none_or(|directory| directory.has_group(group)) {
            groups.services.insert(group.to_owned(), service.clone());
        }
        service
    }

    fn build_group(&self, group: &str) -> NodeClient {
        let shared = &self.0;
        let stacks = shared.stacks.clone();
        let make: MakeStack<NodeStack> = Box::new(move |name, node, generation| stacks.get(name, node, generation));
        let discover = GroupDiscover::new(group, shared.directory.clone(), make);
        let balanced = Shared::new(Balance::new(discover)).map_err(to_call_error as fn(BoxError) -> CallError);
        let steered = Steer {
            group: group.to_owned(),
            balanced: BoxCloneSyncService::new(balanced),
            stacks: shared.stacks.clone(),
            directory: shared.directory.clone(),
        };
        let policy = RetryPolicy::new(shared.retry_budget.clone(), shared.directory.clone(), &shared.config.retry);
        let retried = Retry::new(policy, steered);
        let hedge = shared.config.hedge;
        let hedged = Hedge::new::<NodeCall>(
            retried,
            HedgePolicy::new(shared.hedge_budget.clone()),
            hedge.min_data_points,
            hedge.percentile,
            hedge.period,
        );
        let service = Shared::new(hedged).map_err(to_call_error as fn(BoxError) -> CallError);
        BoxCloneSyncService::new(service)
    }
}

impl Service<NodeCall> for Router {
    type Response = NodeAnswer;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // Readiness is per target: each call waits for its own group or node, within its deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: NodeCall) -> CallFuture {
        let directory = self.0.directory.borrow().clone();
        let route = match &call.target {
            Target::Group(group) => {
                let mut readable = directory.readable(group);
                match (readable.next(), readable.next()) {
                    (None, _) => {
                        let error =
                            CallError::Unavailable(format!("shard group {group} has no in-sync replica that is up"));
                        return Box::pin(std::future::ready(Err(error)));
                    }
                    // One readable replica: nothing to balance, and no other replica to retry
                    // or hedge on, so the call goes straight to its stack (a group of one, the
                    // default, pays no balancer, retry or hedge hop).
                    (Some((name, node)), None) => {
                        self.0.stacks.get(name, node, directory.tls_generation).map(Route::Stack)
                    }
                    (Some(_), Some(_)) => Ok(Route::Group(self.group(group))),
                }
            }
            Target::Node(node) => match directory.nodes.get(node) {
                None => Err(format!("node {node} is not up")),
                Some(entry) => self.0.stacks.get(node, entry, directory.tls_generation).map(Route::Stack),
            },
        };
        let deadline = call.deadline;
        let budget = call.budget(Instant::now());
        match route {
            Err(message) => Box::pin(std::future::ready(Err(CallError::Unavailable(message)))),
            // The endpoint bounds the call itself by the deadline (so that a timeout is recorded
            // as the node's); only the wait for the stack (a concurrency slot) is bounded here.
            Ok(Route::Stack(mut stack)) => Box::pin(async move {
                match tokio::time::timeout_at(deadline, stack.ready()).await {
                    Ok(Ok(_)) => stack.call(call).await,
                    Ok(Err(error)) => Err(error),
                    Err(_elapsed) => Err(CallError::Timeout { budget }),
                }
            }),
            // The group path may wait for its balancer, a hedge or a retry: bounded as a whole.
            Ok(Route::Group(service)) => Box::pin(async move {
                match tokio::time::timeout_at(deadline, service.oneshot(call)).await {
                    Ok(result) => result,
                    Err(_elapsed) => Err(CallError::Timeout { budget }),
                }
            }),
        }
    }
}

/// Where the router sends a call.
#[expect(
    clippy::large_enum_variant,
    reason = "a short-lived local moved into the call's future at once: boxing would add the allocation the direct path avoids"
)]
enum Route {
    /// Straight to one node's stack.
    Stack(NodeStack),
    /// Through a group's hedge, retry and balancer.
    Group(NodeClient),
}

/// Sends a group's first attempt through the balancer, and a retry or a hedge to the readable
/// replica with the lowest load that this call has not been sent to yet. The balancer cannot
/// exclude a replica: a hedge sent through it could land on the very replica the first attempt
/// is stuck on (one that just froze can still look cheaper than its busy sibling), and a retry
/// on the one that just failed. With every replica tried, a copy goes to the best one that has
/// not failed (a retry may join a hedge still in flight there), else through the balancer.
#[derive(Clone)]
struct Steer {
    group: String,
    balanced: NodeClient,
    stacks: Arc<NodeStacks>,
    directory: watch::Receiver<Arc<Directory>>,
}

impl Steer {
    /// The per-node stack of the best replica `call` has not tried, or else of the best one
    /// that has not failed it, if any.
    fn untried(&self, call: &NodeCall) -> Option<NodeStack> {
        let tried = call.attempts.tried_nodes();
        let failed = call.attempts.failed_nodes();
        let directory = self.directory.borrow().clone();
        let best = |excluded: &dyn Fn(&String) -> bool| {
            directory
                .readable(&self.group)
                .filter(|(name, _)| !excluded(name))
                .map(|(name, node)| (self.stacks.health.node(name).load(), name, node))
                .min_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal))
                .map(|(_, name, node)| (name.clone(), node.clone()))
        };
        let (name, node) = best(&|name| tried.contains(name)).or_else(|| best(&|name| failed.contains(name)))?;
        self.stacks.get(&name, &node, directory.tls_generation).ok()
    }
}

impl Service<NodeCall> for Steer {
    type Response = NodeAnswer;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // Each call waits for the service it is steered to (within its deadline).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: NodeCall) -> CallFuture {
        let steered = match call.kind {
            AttemptKind::First => None,
            AttemptKind::Retry | AttemptKind::Hedge => self.untried(&call),
        };
        match steered {
            Some(stack) => Box::pin(stack.oneshot(call)),
            None => Box::pin(self.balanced.clone().oneshot(call)),
        }
    }
}

/// The call's own error back from tower's boxed errors (balancer and hedge box them); anything
/// else (the balancer's discovery failing) means the replica set cannot be reached.
fn to_call_error(error: BoxError) -> CallError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(current) = source {
        if let Some(call_error) = current.downcast_ref::<CallError>() {
            return call_error.clone();
        }
        source = current.source();
    }
    CallError::Unavailable(format!("node client: {error}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ragmesh_proto::v1;

    use super::*;
    use crate::node_call::NodeRequest;
    use crate::node_health::HealthConfig;

    fn lazy(_name: &str, address: &str) -> Result<Channel, String> {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{address}")).map_err(|e| e.to_string())?;
        Ok(endpoint.connect_lazy())
    }

    #[tokio::test]
    async fn a_group_without_readable_replica_and_an_unknown_node_fail_at_once() {
        let nodes = BTreeMap::from([(
            "a".to_owned(),
            DirectoryNode { address: "127.0.0.1:1".into(), group: "g".into(), readable: false },
        )]);
        let (_tx, rx) = watch::channel(Arc::new(Directory { nodes, tls_generation: 0 }));
        let client =
            build(rx, Arc::new(lazy), HealthBook::new(HealthConfig::default(), None), false, ClientConfig::default());
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let search = || NodeRequest::Search(v1::NodeSearchRequest::default());
        for target in [Target::Group("g".into()), Target::Group("nope".into()), Target::Node("b".into())] {
            let started = Instant::now();
            let result = client.clone().oneshot(NodeCall::new(target.clone(), search(), deadline)).await;
            assert!(matches!(result, Err(CallError::Unavailable(_))), "{target}: {result:?}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "{target} failed fast");
        }
        let Err(CallError::Unavailable(message)) =
            client.clone().oneshot(NodeCall::new(Target::Group("g".into()), search(), deadline)).await
        else {
            panic!("unavailable")
        };
        assert_eq!(message, "shard group g has no in-sync replica that is up");
    }

    #[test]
    fn call_errors_come_back_out_of_tower_boxes() {
        let error = CallError::BreakerOpen { retry_in: std::time::Duration::from_secs(1) };
        assert_eq!(to_call_error(Box::new(error.clone())), error);
        assert!(matches!(to_call_error("worker gone".into()), CallError::Unavailable(_)));
    }
}
