//! The master's cache of merged search answers: what a key is made of ([`Scope`], [`Freshness`],
//! [`result_key`], pure) and the bounded, coalescing store around the fan-out ([`ResultCache`]).
//!
//! Freshness without invalidation: a key holds, for every shard group the search considers,
//! the last sequence its write log had ASSIGNED when the search began, plus the registry's
//! epoch (bumped by every registration and removal). A write is appended to its group's log,
//! and so changes that group's `last`, before it is acknowledged; a search that starts after
//! the acknowledgement therefore builds a key no earlier search could have stored under. The
//! other half is the store rule: an answer is stored only when it is complete (every group
//! answered) and every replica that answered had applied its group's `last` as read before the
//! fan-out ([`Freshness::holds`]), so a stored answer holds every write its key names.
//!
//! The key also holds the caller's visibility ([`Scope`]: what the agents filter documents by),
//! the normalised request and the plan (which replicas may answer and why the others are
//! skipped), so a cached answer reports the same nodes a fresh fan-out would have asked. Keys
//! are kept whole (bytes, compared in full): no hash collision can hand one caller another's
//! answer.
//!
//! Coalescing: concurrent misses of one key run one fan-out (moka's `or_try_insert_with`).
//! Waiters of a complete answer get it from the cache; waiters of an incomplete answer whose
//! answering replicas were fresh share it; any other outcome (a failure, or an answer from a
//! replica that was behind) is not shared: each waiter runs its own fan-out. The fan-out runs in
//! the first caller's request, under its deadline: if that caller goes away mid-flight, moka
//! hands the flight to one of the waiters, which runs it again under its own deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use prost::Message as _;
use ragmesh_auth::{Capability, Principal};
use ragmesh_proto::v1;

use crate::federation::{Plan, SkipReason};
use crate::merge;
use crate::metrics::MasterMetrics;
use crate::registry::NodeView;

/// The `cache` label of this cache's series.
const CACHE_LABEL: &str = "result";

/// Whose documents a caller may read: exactly what the agents filter by (operators read
/// everything, anyone else what their tenant and subject are granted), so two callers with the
/// same scope see the same documents and may share answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    /// An operator (admin capability): no filter.
    All,
    /// A subject of a tenant: public documents, its tenant's and its own.
    Subject {
        /// The tenant.
        tenant: String,
        /// The subject.
        subject: String,
    },
}

impl Scope {
    /// The scope of `principal`, decided as the agents decide their viewer.
    pub(crate) fn of(principal: &Principal) -> Scope {
        if principal.has(Capability::Admin) {
            Scope::All
        } else {
            Scope::Subject { tenant: principal.tenant.clone(), subject: principal.subject.clone() }
        }
    }
}

/// Where each considered shard group's write log stood when a search began, which replicas had
/// applied it, and the registry's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Freshness {
    epoch: u64,
    groups: BTreeMap<String, GroupStamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct GroupStamp {
    /// Last sequence assigned in the group's log.
    last: u64,
    /// Replicas the registry knew to have applied `last`.
    applied: BTreeSet<String>,
}

impl Freshness {
    /// Reads the stamps of `groups`: `last_of` gives a group's last assigned sequence, read
    /// after (or with) the `nodes` snapshot, so a replica counted as having applied it had
    /// applied it before any call of the search was made.
    pub(crate) fn read<'a>(
        epoch: u64,
        nodes: &[NodeView],
        groups: impl IntoIterator<Item = &'a str>,
        last_of: impl Fn(&str) -> u64,
    ) -> Freshness {
        let mut stamps = BTreeMap::new();
        for group in groups {
            if stamps.contains_key(group) {
                continue;
            }
            let last = last_of(group);
            let applied = nodes
                .iter()
                .filter(|n| n.record.group() == group && n.applied_seq >= last)
                .map(|n| n.record.name.clone())
                .collect();
            stamps.insert(group.to_owned(), GroupStamp { last, applied });
        }
        Freshness { epoch, groups: stamps }
    }

    /// Whether `node` had applied every write `group` had been assigned when the search began.
    pub(crate) fn holds(&self, group: &str, node: &str) -> bool {
        self.groups.get(group).is_some_and(|stamp| stamp.applied.contains(node))
    }

    /// The registry epoch read.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last sequence `group` had been assigned (0 for a group not considered).
    pub(crate) fn last(&self, group: &str) -> u64 {
        self.groups.get(group).map_or(0, |stamp| stamp.last)
    }
}

/// A cache key: the encoded fields, kept whole and compared in full.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey(Box<[u8]>);

impl CacheKey {
    /// Its size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Builds a key from length-prefixed fields, so no two field lists encode alike.
#[derive(Debug, Default)]
pub(crate) struct KeyWriter(Vec<u8>);

impl KeyWriter {
    /// Starts a key of kind `tag` (each cache its own).
    pub(crate) fn new(tag: u8) -> Self {
        KeyWriter(vec![tag])
    }

    /// Appends a string.
    pub(crate) fn text(&mut self, value: &str) -> &mut Self {
        self.number(value.len() as u64);
        self.0.extend_from_slice(value.as_bytes());
        self
    }

    /// Appends a number.
    pub(crate) fn number(&mut self, value: u64) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends a list of strings.
    pub(crate) fn texts<'a>(&mut self, values: impl ExactSizeIterator<Item = &'a str>) -> &mut Self {
        self.number(values.len() as u64);
        for value in values {
            self.text(value);
        }
        self
    }

    /// Appends the caller's scope.
    pub(crate) fn scope(&mut self, scope: &Scope) -> &mut Self {
        match scope {
            Scope::All => self.number(0),
            Scope::Subject { tenant, subject } => self.number(1).text(tenant).text(subject),
        }
    }

    /// The key.
    pub(crate) fn finish(self) -> CacheKey {
        CacheKey(self.0.into_boxed_slice())
    }
}

const RESULT_KEY: u8 = 1;

fn skip_code(reason: SkipReason) -> u64 {
    match reason {
        SkipReason::Down => 1,
        SkipReason::NotRouted => 2,
        SkipReason::BreakerOpen => 3,
        SkipReason::NotInSync => 4,
        SkipReason::OtherReplica => 5,
        SkipReason::NoMatch => 6,
    }
}

/// The key of a search: `scope`, the request as it is answered (collections and nodes sorted
/// and deduplicated, limit defaulted, the merge strategy parsed; not the timeout nor the bypass
/// flag), the plan and the freshness stamps.
pub(crate) fn result_key(
    scope: &Scope,
    request: &v1::SearchRequest,
    limit: u32,
    strategy: merge::Strategy,
    plan: &Plan,
    freshness: &Freshness,
) -> CacheKey {
    let collections: BTreeSet<&str> = request.collections.iter().map(String::as_str).collect();
    let nodes: BTreeSet<&str> = request.nodes.iter().map(String::as_str).collect();
    // -0.0 and 0.0 filter alike.
    let min_score = if request.min_score == 0.0 { 0.0f64 } else { request.min_score };
    let mut key = KeyWriter::new(RESULT_KEY);
    key.scope(scope)
        .text(&request.query)
        .texts(collections.into_iter())
        .texts(nodes.into_iter())
        .number(u64::from(limit))
        .number(min_score.to_bits())
        .text(strategy.as_str());
    key.number(plan.targets.len() as u64);
    for target in &plan.targets {
        key.text(&target.group)
            .text(&target.target.to_string())
            .texts(target.readable.iter().map(String::as_str))
            .texts(target.breaker_open.iter().map(String::as_str));
    }
    key.number(plan.skipped.len() as u64);
    for (node, reason) in &plan.skipped {
        key.text(node).number(skip_code(*reason));
    }
    key.number(plan.unanswerable.len() as u64);
    for group in &plan.unanswerable {
        key.text(&group.group).number(skip_code(group.reason));
    }
    key.texts(plan.not_routed.iter().map(String::as_str));
    // Calls a term summary proved useless: reported as skipped, so part of the answer.
    let no_match: Vec<String> = plan.no_match.iter().map(ToString::to_string).collect();
    key.texts(no_match.iter().map(String::as_str));
    key.number(freshness.epoch).number(freshness.groups.len() as u64);
    for (group, stamp) in &freshness.groups {
        key.text(group).number(stamp.last);
    }
    key.finish()
}

/// A fan-out's answer, with what decides whether it may be stored or shared.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The merged answer.
    pub(crate) response: v1::SearchResponse,
    /// Every routed group answered.
    pub(crate) complete: bool,
    /// Every replica that answered had applied its group's `last` (see [`Freshness::holds`]).
    pub(crate) fresh: bool,
}

impl Answer {
    fn storable(&self) -> bool {
        self.complete && self.fresh
    }
}

/// How a call got its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// From the cache.
    Hit,
    /// From another caller's concurrent fan-out of the same key.
    Shared,
    /// From its own fan-out.
    Searched,
}

impl Served {
    /// Whether the answer came from somewhere else than this call's own fan-out.
    pub(crate) fn cached(self) -> bool {
        !matches!(self, Served::Searched)
    }
}

/// What waiters of a flight get when its answer is not stored.
#[derive(Debug)]
enum NotStored {
    /// An incomplete answer of fresh replicas: valid for every caller of the key.
    Share(Arc<v1::SearchResponse>),
    /// A failure, or an answer of a replica that was behind: each waiter searches itself.
    Rerun,
}

/// The bounded store of merged answers; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ResultCache {
    cache: Option<moka::future::Cache<CacheKey, Arc<v1::SearchResponse>>>,
    metrics: MasterMetrics,
}

/// Bytes an entry weighs: its key and its encoded answer.
fn weigh(key: &CacheKey, value: &Arc<v1::SearchResponse>) -> u32 {
    u32::try_from(key.len().saturating_add(value.encoded_len())).unwrap_or(u32::MAX)
}

impl ResultCache {
    /// A cache of at most `max_bytes` (keys and answers); 0 turns it off.
    pub(crate) fn new(max_bytes: u64, metrics: MasterMetrics) -> Self {
        let cache =
            (max_bytes > 0).then(|| moka::future::Cache::builder().max_capacity(max_bytes).weigher(weigh).build());
        ResultCache { cache, metrics }
    }

    /// Answers a search: from the cache when `key` is there (and `bypass` is not set), else by
    /// `search` (once per key however many callers miss it at once), storing a storable answer.
    /// `key` is `None` when the search cannot be keyed (nothing is looked up or stored).
    pub(crate) async fn serve<E, S, Fut>(
        &self,
        key: Option<CacheKey>,
        bypass: bool,
        search: S,
    ) -> Result<(v1::SearchResponse, Served), E>
    where
        E: Send,
        S: Fn() -> Fut,
        Fut: Future<Output = Result<Answer, E>>,
    {
        let (Some(cache), Some(key)) = (&self.cache, key) else {
            return Ok((search().await?.response, Served::Searched));
        };
        if bypass {
            self.metrics.cache_lookup(CACHE_LABEL, "bypass");
            return Ok((self.search_and_store(cache, key, &search).await?, Served::Searched));
        }
        if let Some(hit) = cache.get(&key).await {
            self.metrics.cache_lookup(CACHE_LABEL, "hit");
            return Ok((hit.as_ref().clone(), Served::Hit));
        }
        // The flight's own outcome when it is not stored: only the caller that ran it reads it.
        let own: Mutex<Option<Result<Answer, E>>> = Mutex::new(None);
        let flight = async {
            match search().await {
                Ok(answer) if answer.storable() => Ok(Arc::new(answer.response)),
                Ok(answer) => {
                    let shared = answer.fresh.then(|| Arc::new(answer.response.clone()));
                    put(&own, Ok(answer));
                    Err(shared.map_or(NotStored::Rerun, NotStored::Share))
                }
                Err(error) => {
                    put(&own, Err(error));
                    Err(NotStored::Rerun)
                }
            }
        };
        let outcome = cache.entry(key.clone()).or_try_insert_with(flight).await;
        if let Some(mine) = take(&own) {
            self.metrics.cache_lookup(CACHE_LABEL, "miss");
            return Ok((mine?.response, Served::Searched));
        }
        match outcome {
            Ok(entry) if entry.is_fresh() => {
                self.metrics.cache_lookup(CACHE_LABEL, "miss");
                self.record_size(cache).await;
                Ok((entry.into_value().as_ref().clone(), Served::Searched))
            }
            Ok(entry) => {
                self.metrics.cache_lookup(CACHE_LABEL, "coalesced");
                Ok((entry.into_value().as_ref().clone(), Served::Shared))
            }
            Err(not_stored) => match not_stored.as_ref() {
                NotStored::Share(response) => {
                    self.metrics.cache_lookup(CACHE_LABEL, "coalesced");
                    Ok((response.as_ref().clone(), Served::Shared))
                }
                NotStored::Rerun => {
                    self.metrics.cache_lookup(CACHE_LABEL, "miss");
                    Ok((self.search_and_store(cache, key, &search).await?, Served::Searched))
                }
            },
        }
    }

    /// Runs `search` outside the coalescing, storing a storable answer.
    async fn search_and_store<E, S, Fut>(
        &self,
        cache: &moka::future::Cache<CacheKey, Arc<v1::SearchResponse>>,
        key: CacheKey,
        search: &S,
    ) -> Result<v1::SearchResponse, E>
    where
        S: Fn() -> Fut,
        Fut: Future<Output = Result<Answer, E>>,
    {
        let answer = search().await?;
        if answer.storable() {
            cache.insert(key, Arc::new(answer.response.clone())).await;
            self.record_size(cache).await;
        }
        Ok(answer.response)
    }

    async fn record_size(&self, cache: &moka::future::Cache<CacheKey, Arc<v1::SearchResponse>>) {
        // Insertions are rare (a miss costs a fan-out), so settling moka's pending work here is
        // cheap and keeps the size series exact.
        cache.run_pending_tasks().await;
        self.metrics.cache_size(CACHE_LABEL, cache.entry_count(), cache.weighted_size());
    }
}

fn put<T>(slot: &Mutex<Option<T>>, value: T) {
    *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::federation::plan::tests::replica;
    use crate::node::NodeState;

    fn request(query: &str, collections: &[&str]) -> v1::SearchRequest {
        v1::SearchRequest {
            query: query.into(),
            collections: collections.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn subject(tenant: &str, subject: &str) -> Scope {
        Scope::Subject { tenant: tenant.into(), subject: subject.into() }
    }

    fn stamps(lasts: &[(&str, u64)]) -> Freshness {
        Freshness::read(7, &[], lasts.iter().map(|(g, _)| *g), |g| {
            lasts.iter().find(|(name, _)| *name == g).map_or(0, |(_, last)| *last)
        })
    }

    fn key(scope: &Scope, request: &v1::SearchRequest, freshness: &Freshness) -> CacheKey {
        let strategy = merge::Strategy::parse(&request.merge).expect("strategy");
        result_key(scope, request, 10, strategy, &Plan::default(), freshness)
    }

    #[test]
    fn scope_request_and_stamps_each_change_the_key() {
        let base = request("rust mesh", &["docs", "faq"]);
        let fresh = stamps(&[("a", 3), ("b", 5)]);
        let k = key(&Scope::All, &base, &fresh);
        assert_ne!(k, key(&subject("acme", "ann"), &base, &fresh), "scope");
        assert_ne!(key(&subject("acme", "ann"), &base, &fresh), key(&subject("acme", "bob"), &base, &fresh));
        assert_ne!(key(&subject("acme", "ann"), &base, &fresh), key(&subject("other", "ann"), &base, &fresh));
        assert_ne!(k, key(&Scope::All, &request("rust", &["docs", "faq"]), &fresh), "query");
        assert_ne!(k, key(&Scope::All, &request("rust mesh", &["docs"]), &fresh), "collections");
        assert_ne!(k, key(&Scope::All, &v1::SearchRequest { min_score: 0.5, ..base.clone() }, &fresh));
        assert_ne!(k, key(&Scope::All, &v1::SearchRequest { merge: "rrf".into(), ..base.clone() }, &fresh));
        assert_ne!(k, key(&Scope::All, &v1::SearchRequest { nodes: vec!["a1".into()], ..base.clone() }, &fresh));
        assert_ne!(k, key(&Scope::All, &base, &stamps(&[("a", 4), ("b", 5)])), "a write to a");
        assert_ne!(k, key(&Scope::All, &base, &stamps(&[("a", 3), ("b", 5), ("c", 0)])), "a new group");
        let mut other_epoch = fresh.clone();
        other_epoch.epoch += 1;
        assert_ne!(k, key(&Scope::All, &base, &other_epoch), "a registration");
        // Fields cannot run into each other: "ab"+"c" is not "a"+"bc".
        assert_ne!(
            key(&Scope::All, &request("q", &["ab", "c"]), &fresh),
            key(&Scope::All, &request("q", &["a", "bc"]), &fresh)
        );
    }

    #[test]
    fn collection_order_duplicates_timeout_bypass_and_the_default_merge_do_not_change_the_key() {
        let fresh = stamps(&[("a", 3)]);
        let k = key(&Scope::All, &request("q", &["docs", "faq"]), &fresh);
        assert_eq!(k, key(&Scope::All, &request("q", &["faq", "docs", "faq"]), &fresh));
        let same = v1::SearchRequest {
            timeout_ms: 900,
            bypass_cache: true,
            merge: "global_bm25".into(),
            ..request("q", &["docs", "faq"])
        };
        assert_eq!(k, key(&Scope::All, &same, &fresh));
    }

    #[test]
    fn a_different_plan_changes_the_key() {
        let up = [replica("a1", "a", true, true, &["docs"]), replica("b1", "b", true, true, &["docs"])];
        let down = [replica("a1", "a", true, true, &["docs"]), replica("b1", "b", false, true, &["docs"])];
        let fresh = stamps(&[("a", 1), ("b", 1)]);
        let req = request("q", &[]);
        let plan_up = crate::federation::plan(&up, &[], &[]).expect("plan");
        let plan_down = crate::federation::plan(&down, &[], &[]).expect("plan");
        let strategy = merge::Strategy::GlobalBm25;
        assert_ne!(
            result_key(&Scope::All, &req, 10, strategy, &plan_up, &fresh),
            result_key(&Scope::All, &req, 10, strategy, &plan_down, &fresh)
        );
    }

    #[test]
    fn only_replicas_that_applied_last_hold_the_stamp() {
        let mut a1 = NodeView::for_tests("a1", NodeState::Up, &["docs"]);
        std::sync::Arc::make_mut(&mut a1.record).shard = "a".into();
        a1.applied_seq = 5;
        let mut a2 = NodeView::for_tests("a2", NodeState::Up, &["docs"]);
        std::sync::Arc::make_mut(&mut a2.record).shard = "a".into();
        a2.applied_seq = 4;
        let fresh = Freshness::read(1, &[a1, a2], ["a", "b"], |g| if g == "a" { 5 } else { 0 });
        assert!(fresh.holds("a", "a1"));
        assert!(!fresh.holds("a", "a2"), "a2 misses write 5");
        assert!(!fresh.holds("b", "a1"), "not a replica of b");
        assert_eq!(fresh.last("a"), 5);
    }

    fn answer(query: &str, complete: bool, fresh: bool) -> Answer {
        Answer { response: v1::SearchResponse { merge_strategy: query.into(), ..Default::default() }, complete, fresh }
    }

    fn test_key(name: &str) -> CacheKey {
        let mut key = KeyWriter::new(0);
        key.text(name);
        key.finish()
    }

    #[tokio::test]
    async fn a_complete_answer_is_stored_and_served_as_a_hit() {
        let cache = ResultCache::new(1 << 20, MasterMetrics::detached());
        let runs = AtomicUsize::new(0);
        let search = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(answer("one", true, true))
        };
        let (first, served) = cache.serve(Some(test_key("k")), false, search).await.expect("first");
        assert_eq!(served, Served::Searched);
        let (second, served) = cache.serve(Some(test_key("k")), false, search).await.expect("second");
        assert_eq!(served, Served::Hit);
        assert_eq!(first, second);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let (_, served) = cache.serve(Some(test_key("k")), true, search).await.expect("bypass");
        assert_eq!(served, Served::Searched, "bypass skips the lookup");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn incomplete_stale_or_failed_answers_are_never_stored() {
        let cache = ResultCache::new(1 << 20, MasterMetrics::detached());
        for (name, outcome) in [
            ("incomplete", Ok(answer("x", false, true))),
            ("stale", Ok(answer("x", true, false))),
            ("failed", Err("boom".to_owned())),
        ] {
            let runs = AtomicUsize::new(0);
            let search = || {
                runs.fetch_add(1, Ordering::SeqCst);
                let outcome = outcome.clone();
                async move { outcome }
            };
            for _ in 0..2 {
                let served = cache.serve(Some(test_key(name)), false, search).await.map(|(_, s)| s);
                assert!(matches!(served, Ok(Served::Searched) | Err(_)), "{name}: {served:?}");
            }
            assert_eq!(runs.load(Ordering::SeqCst), 2, "{name}: searched every time");
        }
    }

    /// Concurrent misses of one key: one fan-out; waiters of a complete answer get it, waiters of
    /// an incomplete fresh answer share it (nothing stored), waiters of a failure search
    /// themselves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_fan_out_and_incomplete_answers_reach_every_waiter() {
        let cache = ResultCache::new(1 << 20, MasterMetrics::detached());
        for (name, complete, fail_first, expected_runs) in
            [("complete", true, false, 1), ("incomplete", false, false, 1), ("failed", true, true, 5)]
        {
            let runs = Arc::new(AtomicUsize::new(0));
            let gate = Arc::new(tokio::sync::Notify::new());
            let mut callers = tokio::task::JoinSet::new();
            for _ in 0..5 {
                let (cache, runs, gate) = (cache.clone(), runs.clone(), gate.clone());
                callers.spawn(async move {
                    let search = || {
                        let run = runs.fetch_add(1, Ordering::SeqCst);
                        let gate = gate.clone();
                        async move {
                            // The first flight waits until every caller is queued behind it.
                            if run == 0 {
                                gate.notified().await;
                                if fail_first {
                                    return Err("first flight failed".to_owned());
                                }
                            }
                            Ok(answer(name, complete, true))
                        }
                    };
                    cache.serve(Some(test_key(name)), false, search).await
                });
            }
            // Let the five callers reach the cache; the first one's flight holds the key.
            for _ in 0..2000 {
                if runs.load(Ordering::SeqCst) > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Generous: the other four only have to reach the cache's waiter list.
            tokio::time::sleep(Duration::from_millis(500)).await;
            gate.notify_one();
            let mut answers = 0;
            while let Some(joined) = callers.join_next().await {
                match joined.expect("caller") {
                    Ok((response, _)) => {
                        assert_eq!(response.merge_strategy, name);
                        answers += 1;
                    }
                    Err(message) => assert!(fail_first, "{name}: {message}"),
                }
            }
            assert_eq!(answers, if fail_first { 4 } else { 5 }, "{name}: every waiter got an answer");
            assert_eq!(runs.load(Ordering::SeqCst), expected_runs, "{name}: fan-outs run");
            let stored = cache.cache.as_ref().expect("on").get(&test_key(name)).await.is_some();
            // After a failed flight the waiters' own complete answers are stored.
            assert_eq!(stored, complete, "{name}: stored");
        }
    }

    #[tokio::test]
    async fn a_cache_of_zero_bytes_is_off() {
        let cache = ResultCache::new(0, MasterMetrics::detached());
        let runs = AtomicUsize::new(0);
        let search = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(answer("x", true, true))
        };
        for _ in 0..2 {
            let (_, served) = cache.serve(Some(test_key("k")), false, search).await.expect("search");
            assert_eq!(served, Served::Searched);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
