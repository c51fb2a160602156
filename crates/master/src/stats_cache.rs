//! The master's cache of BM25 statistics for the statistics phase of a global-BM25 search, kept
//! by TERM, in one entry per group replica, freshness stamp and caller scope:
//! `(scope, group, node, profile, stamp)` → a [`Slot`] holding
//!
//! - the node's generation, its document count and the total tokens of every field it has
//!   reported ([`Totals`]);
//! - for each `(field, term)` it has reported, the generation and the term's document
//!   frequency.
//!
//! One cache lookup per replica thus serves every term of a query (a search of 20 terms in two
//! fields over 4 groups had made about 170 lookups, and about a tenth of the master's CPU per
//! search went to them). A slot keeps at most [`MAX_SLOT_TERMS`] terms; past that it starts
//! over with the answer being stored.
//!
//! The stamp is the group's last assigned write-log sequence plus the registry epoch (see
//! [`crate::result_cache::Freshness`]): a write to group A changes A's `last`, so exactly A's
//! entries become unreachable; the other groups' entries keep answering. An entry is stored only
//! from a replica that had applied its group's `last` when the search began
//! ([`Freshness::holds`]).
//!
//! # Analysis on the master
//!
//! A query's terms are named as [`ragmesh_index::QueryAnalyzer`] names them (read once per
//! search and profile, [`crate::federation::QueryReadings`]) for the analysis profile the
//! group's replicas name in their term summaries ([`group_profile`]), exactly as an agent
//! analyses them; `k1` and `b` play no part in statistics, so the profile alone decides the
//! terms. A group whose readable replicas do not all have a summary, or whose summaries name
//! no profile, more than one profile, or a profile unknown here, is looked up by QUERY TEXT
//! instead (one entry per `(scope, query, group, target, stamp)`, the whole answer): only a
//! repeated query is free there. Multi-profile nodes (per-collection profiles) thus always fall
//! back to the query-text key: their statistics hold one set of fields per profile and the
//! master does not guess how an index lays them out.
//!
//! Two guards keep the cache from ever handing an agent statistics that lack a term it scores
//! (the agent refuses those) or that disagree with each other (the agent refuses a document
//! frequency above the document count):
//!
//! - an answer is split into term entries only when its terms are EXACTLY the terms the master
//!   analysed the query to ([`split_answer`]); otherwise the profile assumption is wrong for that
//!   node and the answer is stored under the query-text key only;
//! - every entry carries the generation its node counted it at, and a lookup assembles a
//!   group's statistics only from entries of ONE generation of ONE replica ([`assemble`]): a
//!   replica may have applied a write past the stamp while answering, and numbers from before
//!   and after that write are never mixed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use prost::Message as _;
use ragmesh_index::{FieldTerm, Profile, QueryReading};
use ragmesh_proto::v1;
use ragmesh_stack::node_call::Target;

use crate::federation::{GroupTarget, NodeTermSummary, QueryReadings};
use crate::metrics::MasterMetrics;
use crate::result_cache::{CacheKey, Freshness, KeyWriter, Scope};

/// The `cache` label of this cache's series.
const CACHE_LABEL: &str = "statistics";

const QUERY_KEY: u8 = 2;
const SLOT_KEY: u8 = 5;

/// Most terms one replica slot keeps (about 1.5 MiB, at the weight of 80 bytes plus the text
/// counted for each).
pub(crate) const MAX_SLOT_TERMS: usize = 16_384;

/// The query-text key of one target's whole statistics answer for `query`.
pub(crate) fn statistics_key(
    scope: &Scope,
    query: &str,
    group: &str,
    target: &Target,
    freshness: &Freshness,
) -> CacheKey {
    let mut key = KeyWriter::new(QUERY_KEY);
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

/// The key of the [`Slot`] of `node` of `group`, under `profile`, for a caller of `scope` at
/// the stamp in `freshness`: where that replica's term-level entries live.
pub(crate) fn slot_key(scope: &Scope, group: &str, node: &str, profile: &Profile, freshness: &Freshness) -> CacheKey {
    let mut key = KeyWriter::new(SLOT_KEY);
    key.scope(scope)
        .text(group)
        .text(node)
        .text(&profile.name())
        .number(freshness.last(group))
        .number(freshness.epoch());
    key.finish()
}

/// A replica's document count and field lengths at one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Totals {
    /// The node's index generation they were counted at.
    pub(crate) generation: u64,
    /// Documents the caller may read.
    pub(crate) total_docs: u64,
    /// Total tokens per field, for the fields reported so far.
    pub(crate) fields: BTreeMap<String, u64>,
}

impl Totals {
    /// `self` updated with `newer`: the fields of both when they describe one generation, else
    /// `newer` alone (numbers of two generations are never mixed).
    fn merged_with(&self, newer: Totals) -> Totals {
        if self.generation != newer.generation || self.total_docs != newer.total_docs {
            return newer;
        }
        let mut fields = self.fields.clone();
        fields.extend(newer.fields);
        Totals { fields, ..newer }
    }
}

/// One term's document frequency at one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TermEntry {
    /// The node's index generation it was counted at.
    pub(crate) generation: u64,
    /// Documents containing the term.
    pub(crate) doc_freq: u64,
}

/// What one replica slot has reported: its totals and its terms, each at the generation it was
/// counted at. Shared by the cache and its readers; changed in place under its lock, then
/// stored again so that the cache weighs it anew.
#[derive(Debug, Default)]
pub(crate) struct Slot(RwLock<SlotEntries>);

#[derive(Debug, Default)]
struct SlotEntries {
    totals: Option<Totals>,
    terms: HashMap<FieldTerm, TermEntry>,
}

impl Slot {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, SlotEntries> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The group statistics of `terms`, when the slot holds every one at its totals'
    /// generation (see [`assemble`]).
    fn statistics(&self, terms: &[FieldTerm]) -> Option<v1::TermStatistics> {
        let entries = self.read();
        let totals = entries.totals.as_ref()?;
        let found: Vec<_> = terms.iter().map(|term| (term, entries.terms.get(term).copied())).collect();
        assemble(totals, &found)
    }

    /// Takes in one answer split by [`split_answer`]. Totals of another generation replace the
    /// old ones, and the terms of any other generation go with them (they could never be
    /// assembled with the new totals).
    fn absorb(&self, totals: Totals, terms: Vec<(FieldTerm, TermEntry)>) {
        let mut entries = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let generation = totals.generation;
        entries.totals = Some(match entries.totals.take() {
            Some(old) => old.merged_with(totals),
            None => totals,
        });
        entries.terms.retain(|_, entry| entry.generation == generation);
        if entries.terms.len() + terms.len() > MAX_SLOT_TERMS {
            entries.terms.clear();
        }
        entries.terms.extend(terms);
    }

    /// Bytes it holds, about.
    fn weight(&self) -> usize {
        let entries = self.read();
        let totals = entries
            .totals
            .as_ref()
            .map_or(0, |totals| 24 + totals.fields.keys().map(|field| field.len() + 32).sum::<usize>());
        let terms: usize = entries.terms.keys().map(|term| term.field.len() + term.term.len() + 80).sum();
        totals + terms
    }
}

/// A stored value.
#[derive(Debug, Clone)]
enum Entry {
    /// A whole answer, under its query-text key.
    Answer(Arc<v1::NodeTermStatisticsResponse>),
    /// A replica's totals and terms, under its slot key.
    Slot(Arc<Slot>),
}

fn weigh(key: &CacheKey, value: &Entry) -> u32 {
    let value_bytes = match value {
        Entry::Answer(answer) => answer.encoded_len(),
        Entry::Slot(slot) => slot.weight(),
    };
    u32::try_from(key.len().saturating_add(value_bytes)).unwrap_or(u32::MAX)
}

/// The analysis profile every readable replica of `target` names for all its collections, from
/// their term summaries; `None` when one has no summary yet, or they name no profile, several,
/// or one unknown here (then the group is looked up by query text).
pub(crate) fn group_profile(target: &GroupTarget, summaries: &BTreeMap<String, NodeTermSummary>) -> Option<Profile> {
    let mut names = BTreeSet::new();
    for node in &target.readable {
        names.extend(summaries.get(node)?.summary.analyzers());
    }
    let mut names = names.into_iter();
    match (names.next(), names.next()) {
        (Some(only), None) => Profile::from_name(only),
        _ => None,
    }
}

/// The group statistics `totals` and the looked-up `terms` make, when every term was found at
/// the totals' generation and the totals know every field of the terms.
pub(crate) fn assemble(totals: &Totals, terms: &[(&FieldTerm, Option<TermEntry>)]) -> Option<v1::TermStatistics> {
    let mut fields = BTreeMap::new();
    let mut frequencies = Vec::with_capacity(terms.len());
    for (term, entry) in terms {
        let entry = (*entry).filter(|entry| entry.generation == totals.generation)?;
        let tokens = *totals.fields.get(&term.field)?;
        fields.insert(term.field.as_str(), tokens);
        frequencies.push(v1::TermFrequency {
            field: term.field.clone(),
            term: term.term.clone(),
            doc_freq: entry.doc_freq,
        });
    }
    Some(v1::TermStatistics {
        total_docs: totals.total_docs,
        fields: fields
            .into_iter()
            .map(|(field, total_tokens)| v1::FieldTokens { field: field.to_owned(), total_tokens })
            .collect(),
        terms: frequencies,
    })
}

/// `answer` split into totals and term entries, when its terms are exactly `expected` (the
/// master's analysis) and it reports the length of every field they name; `None` otherwise
/// (the node analyses differently: its answer must not be reused for other queries).
pub(crate) fn split_answer(
    expected: &[FieldTerm],
    answer: &v1::NodeTermStatisticsResponse,
) -> Option<(Totals, Vec<(FieldTerm, TermEntry)>)> {
    let statistics = answer.statistics.as_ref()?;
    let generation = answer.generation;
    let fields: BTreeMap<String, u64> =
        statistics.fields.iter().map(|field| (field.field.clone(), field.total_tokens)).collect();
    let reported: BTreeMap<FieldTerm, u64> = statistics
        .terms
        .iter()
        .map(|t| (FieldTerm { field: t.field.clone(), term: t.term.clone() }, t.doc_freq))
        .collect();
    let wanted: BTreeSet<&FieldTerm> = expected.iter().collect();
    if reported.len() != statistics.terms.len()
        || reported.len() != wanted.len()
        || !reported.keys().all(|term| wanted.contains(term))
        || !wanted.iter().all(|term| fields.contains_key(&term.field))
        || reported.values().any(|df| *df > statistics.total_docs)
    {
        return None;
    }
    let terms = reported.into_iter().map(|(term, doc_freq)| (term, TermEntry { generation, doc_freq })).collect();
    Some((Totals { generation, total_docs: statistics.total_docs, fields }, terms))
}

/// How a target's statistics are looked up and, when asked, stored.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    query_key: CacheKey,
    /// The group's profile and the query read under it, when its terms are known.
    terms: Option<(Profile, Arc<QueryReading>)>,
}

impl Lookup {
    fn terms(&self) -> Option<(&Profile, &[FieldTerm])> {
        let (profile, reading) = self.terms.as_ref()?;
        Some((profile, reading.terms()?))
    }
}

/// The bounded store of statistics; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct StatisticsCache {
    cache: Option<moka::future::Cache<CacheKey, Entry>>,
    metrics: MasterMetrics,
}

impl StatisticsCache {
    /// A cache of at most `max_bytes`; 0 turns it off.
    pub(crate) fn new(max_bytes: u64, metrics: MasterMetrics) -> Self {
        let cache =
            (max_bytes > 0).then(|| moka::future::Cache::builder().max_capacity(max_bytes).weigher(weigh).build());
        StatisticsCache { cache, metrics }
    }

    /// Prepares the lookup of `target`'s statistics for `query`: by term when `profile` is
    /// known (see [`group_profile`]) and the query analyses under it (read once per search and
    /// profile by `readings`), always also by query text.
    pub(crate) fn prepare(
        &self,
        scope: &Scope,
        query: &str,
        target: &GroupTarget,
        profile: Option<Profile>,
        freshness: &Freshness,
        readings: &QueryReadings,
    ) -> Lookup {
        let query_key = statistics_key(scope, query, &target.group, &target.target, freshness);
        let terms = profile.and_then(|profile| {
            let reading = readings.get(&profile.name())?;
            reading.terms()?;
            Some((profile, reading))
        });
        Lookup { query_key, terms }
    }

    /// `target`'s statistics if the cache holds them (the query-text entry, else one readable
    /// replica's term entries at one generation), counted as one hit or miss (nothing when off).
    pub(crate) async fn get(
        &self,
        lookup: &Lookup,
        scope: &Scope,
        target: &GroupTarget,
        freshness: &Freshness,
    ) -> Option<v1::TermStatistics> {
        let cache = self.cache.as_ref()?;
        let found = self.find(cache, lookup, scope, target, freshness).await;
        self.metrics.cache_lookup(CACHE_LABEL, if found.is_some() { "hit" } else { "miss" });
        found
    }

    async fn find(
        &self,
        cache: &moka::future::Cache<CacheKey, Entry>,
        lookup: &Lookup,
        scope: &Scope,
        target: &GroupTarget,
        freshness: &Freshness,
    ) -> Option<v1::TermStatistics> {
        if let Some((profile, terms)) = lookup.terms() {
            for node in &target.readable {
                let key = slot_key(scope, &target.group, node, profile, freshness);
                if let Some(Entry::Slot(slot)) = cache.get(&key).await
                    && let Some(statistics) = slot.statistics(terms)
                {
                    return Some(statistics);
                }
            }
        }
        match cache.get(&lookup.query_key).await {
            Some(Entry::Answer(answer)) => answer.statistics.clone(),
            _ => None,
        }
    }

    /// Stores `node`'s `answer` to `target`: per term when the lookup knew the group's profile,
    /// `node` is one of the replicas it read, and the answer names exactly the terms analysed
    /// ([`split_answer`]); else whole, under the query-text key.
    pub(crate) async fn insert(
        &self,
        lookup: Lookup,
        scope: &Scope,
        target: &GroupTarget,
        freshness: &Freshness,
        node: &str,
        answer: v1::NodeTermStatisticsResponse,
    ) {
        let Some(cache) = &self.cache else { return };
        let split = match lookup.terms() {
            Some((profile, terms)) if target.readable.iter().any(|r| r == node) => {
                let split = split_answer(terms, &answer).map(|split| (profile, split));
                if split.is_none() {
                    tracing::warn!(
                        node.id = node,
                        profile = %profile,
                        "statistics name other terms than the master's analysis: cached by query text only"
                    );
                }
                split
            }
            _ => None,
        };
        match split {
            Some((profile, (totals, terms))) => {
                let key = slot_key(scope, &target.group, node, profile, freshness);
                let slot = match cache.get_with(key.clone(), async { Entry::Slot(Arc::default()) }).await {
                    Entry::Slot(slot) => slot,
                    Entry::Answer(_) => Arc::default(), // never: slot keys have their own tag
                };
                slot.absorb(totals, terms);
                // Stored again, so that the cache weighs what it holds now.
                cache.insert(key, Entry::Slot(slot)).await;
            }
            None => cache.insert(lookup.query_key, Entry::Answer(Arc::new(answer))).await,
        }
        cache.run_pending_tasks().await;
        self.metrics.cache_size(CACHE_LABEL, cache.entry_count(), cache.weighted_size());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamps(a: u64, b: u64) -> Freshness {
        Freshness::read(3, &[], ["a", "b"], move |g| if g == "a" { a } else { b })
    }

    fn target(group: &str) -> GroupTarget {
        GroupTarget {
            group: group.into(),
            target: Target::Group(group.into()),
            readable: vec![format!("{group}1")],
            breaker_open: Vec::new(),
        }
    }

    /// What node `<group>1` of a one-document-per-word index answers for `query` (under the
    /// default profile): every word of `words` in one document each, in both fields.
    /// A search's readings of `query`, as the search handler makes them.
    fn readings(query: &str) -> QueryReadings {
        QueryReadings::new(&crate::federation::RoutingParsers::default(), query)
    }

    fn answer(query: &str, generation: u64, words: &[&str]) -> v1::NodeTermStatisticsResponse {
        let terms = readings(query)
            .get(&Profile::default().name())
            .and_then(|r| r.terms().map(<[_]>::to_vec))
            .expect("analyses");
        let total_docs = words.len() as u64 + 10;
        v1::NodeTermStatisticsResponse {
            statistics: Some(v1::TermStatistics {
                total_docs,
                fields: ["body", "title"]
                    .iter()
                    .map(|f| v1::FieldTokens { field: (*f).into(), total_tokens: 100 })
                    .collect(),
                terms: terms
                    .iter()
                    .map(|t| v1::TermFrequency {
                        field: t.field.clone(),
                        term: t.term.clone(),
                        doc_freq: u64::from(words.iter().any(|w| t.term == *w)) + t.term.len() as u64,
                    })
                    .collect(),
            }),
            generation,
        }
    }

    fn on() -> StatisticsCache {
        StatisticsCache::new(1 << 20, MasterMetrics::detached())
    }

    async fn ask_and_store(cache: &StatisticsCache, scope: &Scope, query: &str, group: &str, fresh: &Freshness) {
        let target = target(group);
        let lookup = cache.prepare(scope, query, &target, Some(Profile::default()), fresh, &readings(query));
        let reply = answer(query, 7, &["alpha", "beta"]);
        cache.insert(lookup, scope, &target, fresh, &format!("{group}1"), reply).await;
    }

    async fn lookup(
        cache: &StatisticsCache,
        scope: &Scope,
        query: &str,
        group: &str,
        profile: Option<Profile>,
        fresh: &Freshness,
    ) -> Option<v1::TermStatistics> {
        let target = target(group);
        let lookup = cache.prepare(scope, query, &target, profile, fresh, &readings(query));
        cache.get(&lookup, scope, &target, fresh).await
    }

    #[tokio::test]
    async fn a_query_is_free_once_other_queries_covered_every_term() {
        let cache = on();
        let fresh = stamps(4, 9);
        let default = Some(Profile::default());
        ask_and_store(&cache, &Scope::All, "alpha", "a", &fresh).await;
        assert!(lookup(&cache, &Scope::All, "alpha beta", "a", default, &fresh).await.is_none(), "beta unknown");
        ask_and_store(&cache, &Scope::All, "Beta", "a", &fresh).await;
        let got = lookup(&cache, &Scope::All, "beta ALPHA", "a", default, &fresh).await.expect("every term cached");
        // Exactly what the node would answer to "alpha beta" itself.
        assert_eq!(got, answer("alpha beta", 7, &["alpha", "beta"]).statistics.expect("statistics"));
        assert_eq!(got.terms.len(), 4, "two terms in two fields: {got:?}");
        // Word order, case and repetition do not matter; the field syntax does.
        assert!(lookup(&cache, &Scope::All, "alpha alpha", "a", default, &fresh).await.is_some());
        assert!(lookup(&cache, &Scope::All, "title:alpha", "a", default, &fresh).await.is_some());
        assert!(lookup(&cache, &Scope::All, "alpha gamma", "a", default, &fresh).await.is_none());
    }

    #[tokio::test]
    async fn a_write_to_one_group_invalidates_only_that_group() {
        let cache = on();
        let (before, after) = (stamps(4, 9), stamps(5, 9));
        let default = Some(Profile::default());
        for group in ["a", "b"] {
            ask_and_store(&cache, &Scope::All, "alpha", group, &before).await;
        }
        assert!(lookup(&cache, &Scope::All, "alpha", "a", default, &after).await.is_none(), "a was written");
        assert!(lookup(&cache, &Scope::All, "alpha", "b", default, &after).await.is_some(), "b was not");
        assert!(lookup(&cache, &Scope::All, "alpha", "a", default, &before).await.is_some());
    }

    #[tokio::test]
    async fn a_different_scope_misses() {
        let cache = on();
        let fresh = stamps(4, 9);
        ask_and_store(&cache, &Scope::All, "alpha", "a", &fresh).await;
        let tenant = Scope::Subject { tenant: "t".into(), subject: "s".into() };
        assert!(lookup(&cache, &tenant, "alpha", "a", Some(Profile::default()), &fresh).await.is_none());
        let other = Scope::Subject { tenant: "t".into(), subject: "s2".into() };
        ask_and_store(&cache, &tenant, "alpha", "a", &fresh).await;
        assert!(lookup(&cache, &tenant, "alpha", "a", Some(Profile::default()), &fresh).await.is_some());
        assert!(lookup(&cache, &other, "alpha", "a", Some(Profile::default()), &fresh).await.is_none());
    }

    #[tokio::test]
    async fn an_unknown_profile_is_asked_and_kept_by_query_text_only() {
        let cache = on();
        let fresh = stamps(4, 9);
        let target = target("a");
        for query in ["alpha", "beta"] {
            let lookup = cache.prepare(&Scope::All, query, &target, None, &fresh, &readings(query));
            assert!(cache.get(&lookup, &Scope::All, &target, &fresh).await.is_none(), "nothing yet: ask");
            let reply = answer(query, 7, &["alpha"]);
            cache.insert(lookup, &Scope::All, &target, &fresh, "a1", reply).await;
        }
        assert!(lookup(&cache, &Scope::All, "alpha", "a", None, &fresh).await.is_some(), "the same query text");
        assert!(lookup(&cache, &Scope::All, "alpha beta", "a", None, &fresh).await.is_none(), "no term-level reuse");
        let default = Some(Profile::default());
        assert!(lookup(&cache, &Scope::All, "alpha beta", "a", default, &fresh).await.is_none(), "none stored by term");
    }

    #[tokio::test]
    async fn an_answer_naming_other_terms_is_never_split() {
        let cache = on();
        let fresh = stamps(4, 9);
        let target = target("a");
        let default = Some(Profile::default());
        // A node stemming differently (or holding a second profile's fields) names other terms.
        let lookup = cache.prepare(&Scope::All, "replicas", &target, default, &fresh, &readings("replicas"));
        let mut reply = answer("replicas", 7, &[]);
        let stats = reply.statistics.as_mut().expect("statistics");
        stats.terms.push(v1::TermFrequency { field: "body_nostem".into(), term: "replicas".into(), doc_freq: 1 });
        cache.insert(lookup, &Scope::All, &target, &fresh, "a1", reply.clone()).await;
        assert!(self::lookup(&cache, &Scope::All, "replica", "a", default, &fresh).await.is_none(), "not by term");
        let again = self::lookup(&cache, &Scope::All, "replicas", "a", default, &fresh).await;
        assert_eq!(again, reply.statistics, "the exact query is still served whole");
    }

    #[tokio::test]
    async fn entries_of_two_generations_are_never_mixed() {
        let cache = on();
        let fresh = stamps(4, 9);
        let target = target("a");
        let default = Some(Profile::default());
        let store = |query: &'static str, generation: u64| {
            let cache = cache.clone();
            let (target, fresh) = (target.clone(), fresh.clone());
            async move {
                let lookup = cache.prepare(&Scope::All, query, &target, default, &fresh, &readings(query));
                let reply = answer(query, generation, &["alpha"]);
                cache.insert(lookup, &Scope::All, &target, &fresh, "a1", reply).await;
            }
        };
        store("alpha", 7).await;
        // The replica applied a write past the stamp before answering "beta".
        store("beta", 8).await;
        assert!(lookup(&cache, &Scope::All, "alpha beta", "a", default, &fresh).await.is_none());
        assert!(lookup(&cache, &Scope::All, "beta", "a", default, &fresh).await.is_some(), "the newer one");
        store("alpha", 8).await;
        assert!(lookup(&cache, &Scope::All, "alpha beta", "a", default, &fresh).await.is_some());
    }

    #[test]
    fn the_group_profile_comes_from_every_readable_replicas_summary() {
        use ragmesh_search::{NodeSummary, TermFilter};
        let summary = |analyzers: &[&str]| NodeTermSummary {
            summary: Arc::new(NodeSummary::with_analyzers(
                1,
                analyzers.iter().enumerate().map(|(i, a)| (format!("c{i}"), (*a).to_owned(), TermFilter::Everything)),
            )),
            applied_seq: 0,
            node_generation: 0,
            group_last_seq: 0,
        };
        let mut target = target("a");
        target.readable = vec!["a1".into(), "a2".into()];
        let of = |entries: &[(&str, &[&str])]| {
            let summaries = entries.iter().map(|(n, a)| ((*n).to_owned(), summary(a))).collect();
            group_profile(&target, &summaries)
        };
        let nostem = "stem-none_stop-english";
        assert_eq!(of(&[("a1", &["en_stem"]), ("a2", &["en_stem", "en_stem"])]), Some(Profile::default()));
        assert_eq!(of(&[("a1", &[nostem]), ("a2", &[nostem])]), Profile::from_name(nostem));
        assert!(Profile::from_name(nostem).is_some());
        assert_eq!(of(&[("a1", &["en_stem"])]), None, "a2 has no summary yet");
        assert_eq!(of(&[("a1", &["en_stem"]), ("a2", &[nostem])]), None, "replicas disagree");
        assert_eq!(of(&[("a1", &["en_stem", nostem]), ("a2", &["en_stem"])]), None, "a node of two profiles");
        assert_eq!(of(&[("a1", &["klingon"]), ("a2", &["klingon"])]), None, "unknown here");
        assert_eq!(of(&[("a1", &[]), ("a2", &[])]), None, "no collection names one");
    }

    fn split(generation: u64, terms: &[&str]) -> (Totals, Vec<(FieldTerm, TermEntry)>) {
        let totals = Totals { generation, total_docs: 100, fields: BTreeMap::from([("body".to_owned(), 1000)]) };
        let terms = body(terms).into_iter().map(|term| (term, TermEntry { generation, doc_freq: 1 })).collect();
        (totals, terms)
    }

    fn body(terms: &[&str]) -> Vec<FieldTerm> {
        terms.iter().map(|term| FieldTerm { field: "body".into(), term: (*term).into() }).collect()
    }

    #[test]
    fn a_slot_gathers_the_terms_of_one_generation_and_stays_bounded() {
        let slot = Slot::default();
        assert_eq!(slot.statistics(&body(&["alpha"])), None, "empty");
        let (totals, terms) = split(7, &["alpha"]);
        slot.absorb(totals, terms);
        let (totals, terms) = split(7, &["beta"]);
        slot.absorb(totals, terms);
        let both = slot.statistics(&body(&["alpha", "beta"])).expect("both terms at generation 7");
        assert_eq!((both.total_docs, both.terms.len()), (100, 2));
        let light = slot.weight();

        // A newer generation replaces the totals, and the older terms go.
        let (totals, terms) = split(8, &["gamma"]);
        slot.absorb(totals, terms);
        assert_eq!(slot.statistics(&body(&["alpha"])), None);
        assert!(slot.statistics(&body(&["gamma"])).is_some());
        assert!(slot.weight() < light, "the older terms were dropped");

        // Past the cap it starts over with the answer being stored.
        let many: Vec<String> = (0..MAX_SLOT_TERMS).map(|i| format!("t{i}")).collect();
        let (totals, terms) = split(8, &many.iter().map(String::as_str).collect::<Vec<_>>());
        slot.absorb(totals, terms);
        assert_eq!(slot.read().terms.len(), MAX_SLOT_TERMS, "gamma and the rest do not fit: it started over");
        assert_eq!(slot.statistics(&body(&["gamma"])), None);
        assert!(slot.statistics(&body(&["t0", "t16383"])).is_some());
        assert!(slot.weight() > MAX_SLOT_TERMS * 80, "weighed by what it holds");
    }

    #[test]
    fn keys_differ_by_every_part() {
        let fresh = stamps(4, 9);
        let slot =
            |scope: &Scope, group: &str, node: &str, profile: &Profile| slot_key(scope, group, node, profile, &fresh);
        let base = slot(&Scope::All, "a", "a1", &Profile::default());
        let tenant = Scope::Subject { tenant: "t".into(), subject: "s".into() };
        let nostem = Profile::from_name("stem-none_stop-none").expect("known");
        for other in [
            slot(&tenant, "a", "a1", &Profile::default()),
            slot(&Scope::All, "b", "a1", &Profile::default()),
            slot(&Scope::All, "a", "a2", &Profile::default()),
            slot(&Scope::All, "a", "a1", &nostem),
            slot_key(&Scope::All, "a", "a1", &Profile::default(), &stamps(5, 9)),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base, slot_key(&Scope::All, "a", "a1", &Profile::default(), &stamps(4, 1)));
    }
}
