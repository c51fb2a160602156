//! The master's cache of per-group BM25 statistics for the statistics phase of a global-BM25
//! search: one entry per (caller scope, query text, call target, the target group's last
//! assigned log sequence, registry epoch). A write to group A changes A's `last`, so only A's
//! entries become unreachable; the other groups' entries keep answering. An entry is stored
//! only from a replica that had applied its group's `last` when the search began (see
//! [`crate::result_cache::Freshness::holds`]).
//!
//! The master does no text analysis, so the key is the query text: a repeated QUERY costs no
//! round trip per group; the same term inside a different query is asked again.

use std::sync::Arc;

use prost::Message as _;
use ragmesh_proto::v1;
use ragmesh_stack::node_call::Target;

use crate::metrics::MasterMetrics;
use crate::result_cache::{CacheKey, Freshness, KeyWriter, Scope};

/// The `cache` label of this cache's series.
const CACHE_LABEL: &str = "statistics";

const STATISTICS_KEY: u8 = 2;

/// The key of one target's statistics for `query`.
pub(crate) fn statistics_key(
    scope: &Scope,
    query: &str,
    group: &str,
    target: &Target,
    freshness: &Freshness,
) -> CacheKey {
    let mut key = KeyWriter::new(STATISTICS_KEY);
    let (kind, name) = match target {
        Target::Group(name) => (0, name),
        Target::Node(name) => (1, name),
    };
    key.scope(scope)
        .text(query)
        .text(group)
        .number(kind)
        .text(name)
        .number(freshness.last(group))
        .number(freshness.epoch());
    key.finish()
}

/// The bounded store of statistics answers; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct StatisticsCache {
    cache: Option<moka::future::Cache<CacheKey, Arc<v1::NodeTermStatisticsResponse>>>,
    metrics: MasterMetrics,
}

fn weigh(key: &CacheKey, value: &Arc<v1::NodeTermStatisticsResponse>) -> u32 {
    u32::try_from(key.len().saturating_add(value.encoded_len())).unwrap_or(u32::MAX)
}

impl StatisticsCache {
    /// A cache of at most `max_bytes`; 0 turns it off.
    pub(crate) fn new(max_bytes: u64, metrics: MasterMetrics) -> Self {
        let cache =
            (max_bytes > 0).then(|| moka::future::Cache::builder().max_capacity(max_bytes).weigher(weigh).build());
        StatisticsCache { cache, metrics }
    }

    /// The stored statistics of `key`, counted as a hit or a miss (nothing when off).
    pub(crate) async fn get(&self, key: &CacheKey) -> Option<Arc<v1::NodeTermStatisticsResponse>> {
        let cache = self.cache.as_ref()?;
        let found = cache.get(key).await;
        self.metrics.cache_lookup(CACHE_LABEL, if found.is_some() { "hit" } else { "miss" });
        found
    }

    /// Stores `value` under `key`.
    pub(crate) async fn insert(&self, key: CacheKey, value: v1::NodeTermStatisticsResponse) {
        let Some(cache) = &self.cache else { return };
        cache.insert(key, Arc::new(value)).await;
        cache.run_pending_tasks().await;
        self.metrics.cache_size(CACHE_LABEL, cache.entry_count(), cache.weighted_size());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_to_one_group_changes_only_that_groups_keys() {
        let read = |a: u64, b: u64| Freshness::read(3, &[], ["a", "b"], move |g| if g == "a" { a } else { b });
        let (before, after) = (read(4, 9), read(5, 9));
        let key = |group: &str, freshness: &Freshness| {
            statistics_key(&Scope::All, "rust", group, &Target::Group(group.into()), freshness)
        };
        assert_ne!(key("a", &before), key("a", &after));
        assert_eq!(key("b", &before), key("b", &after));
        let tenant = Scope::Subject { tenant: "t".into(), subject: "s".into() };
        assert_ne!(key("b", &before), statistics_key(&tenant, "rust", "b", &Target::Group("b".into()), &before));
        assert_ne!(key("b", &before), statistics_key(&Scope::All, "rust", "b", &Target::Node("b".into()), &before));
        assert_ne!(key("b", &before), statistics_key(&Scope::All, "rusty", "b", &Target::Group("b".into()), &before));
    }
}
