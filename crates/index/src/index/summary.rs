//! The index side of routing by term summaries: the [`NodeSummary`] of a [`DocumentIndex`]
//! snapshot (one Bloom filter per collection, built from the title and body term dictionaries
//! and the postings of live documents) and [`routing_query`], which reduces a query text to the
//! [`RoutingQuery`] the summary decides on, through the very parser and analyzer `search` uses.
//!
//! Both sides share the collection's analysis profile (`crate::analysis`, by default tantivy's
//! `en_stem`): indexed terms are read from the term dictionaries of the collection's own
//! title/body fields (already analyzed), and each collection's filter names its profile; query terms come out of the same `QueryParser` on the
//! same schema with that profile's analyzer ([`routing_query_for`]), so a query term and an
//! indexed term are the same bytes exactly when `search` would match one with the other.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};

use ragmesh_search::{MAX_FILTER_BYTES, MAX_NODE_FILTER_BYTES, NodeSummary, RoutingQuery, TermFilter};
use ragmesh_types::query::QueryLimits;
use tantivy::query::{BooleanQuery, EmptyQuery, Occur, PhraseQuery, Query, QueryParser, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::tokenizer::TokenizerManager;
use tantivy::{DocId, DocSet, SegmentReader, TERMINATED, TantivyError, Term};

use super::stats::FieldTerm;
use super::{DocumentIndex, Fields, MAX_QUERY_BYTES, TextPair};
use crate::analysis::Profile;
use crate::{AppliedLog, IndexError};

/// Deepest query tree [`routing_query`] descends into; deeper parts are
/// [`RoutingQuery::Anything`]. (The text is bounded by `ragmesh_types::query::check` first.)
const MAX_ROUTING_DEPTH: usize = 64;
/// Most (term, collection) pairs collected while building one summary: about what the node's
/// filter budget holds at 1 %; past it the largest collections are given up as "may contain
/// anything", so building a summary needs bounded memory on any index.
const MAX_COLLECTED_TERMS: usize = MAX_NODE_FILTER_BYTES * 8 / 9;

/// Marks a document of no collection (deleted, or not yet seen) in the per-segment map.
const NO_COLLECTION: u32 = u32::MAX;

/// Reduces `text` to what a term summary can decide, exactly as [`DocumentIndex::search`]
/// reads it: the same lenient `QueryParser` over title and body (OR by default, `+`/`AND`
/// required, `-`/`NOT` excluded), the default profile's `en_stem` analysis. Field boosts are left out: they
/// change scores, never which documents match. Whatever a summary cannot reason about (match-all,
/// phrase prefixes, ranges, sets, regexes, other fields, user boosts, a query `search` refuses)
/// is [`RoutingQuery::Anything`], so the node is asked. A phrase requires each of its terms.
pub fn routing_query(text: &str) -> RoutingQuery {
    RoutingParser::new(&Profile::default()).query(text)
}

/// [`routing_query`] for the collections analyzed by `analyzer` (the name a summary lists per
/// collection, a [`Profile::name`]): `None` for an analyzer this build does not know, and the
/// router then asks every node holding such a collection. Builds a [`RoutingParser`] each call:
/// a router reducing many queries keeps one per profile instead.
pub fn routing_query_for(analyzer: &str, text: &str) -> Option<RoutingQuery> {
    Profile::from_name(analyzer).map(|profile| RoutingParser::new(&profile).query(text))
}

/// [`routing_query`] with one profile's analysis, its schema and parser built once: the parser
/// `search` builds for an index of that profile (field boosts, the only difference between its
/// parsers, play no part in routing).
pub struct RoutingParser {
    parser: QueryParser,
    schema: tantivy::schema::Schema,
    fields: Fields,
}

impl std::fmt::Debug for RoutingParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingParser").finish_non_exhaustive()
    }
}

impl RoutingParser {
    /// The parser of `profile`.
    pub fn new(profile: &Profile) -> Self {
        let (schema, fields) = Fields::schema_for_profiles(&[*profile]);
        let pair = fields.default_pair();
        let tokenizers = TokenizerManager::default();
        tokenizers.register(&profile.name(), profile.text_analyzer());
        let parser = QueryParser::new(schema.clone(), vec![pair.title, pair.body], tokenizers);
        RoutingParser { parser, schema, fields }
    }

    /// What a term summary can decide about `text` (see [`routing_query`]); a one-off
    /// [`RoutingParser::read`] that only routes.
    pub fn query(&self, text: &str) -> RoutingQuery {
        match self.parse(text) {
            Some(parsed) => lower(parsed.as_ref(), &self.fields, 0),
            None => RoutingQuery::Anything,
        }
    }

    /// `text` parsed once for everything the master needs from it under this profile: the
    /// routing query ([`RoutingParser::query`]) and the distinct terms [`QueryAnalyzer::terms`]
    /// reports for an index of this profile, each derived from that parse when first asked
    /// for. Field boosts, the one difference from the index's parser, change no term.
    ///
    /// [`QueryAnalyzer::terms`]: super::stats::QueryAnalyzer::terms
    pub fn read(self: &Arc<Self>, text: &str) -> QueryReading {
        QueryReading {
            parser: Arc::clone(self),
            parsed: self.parse(text),
            starred: super::stats::starred(text),
            routing: OnceLock::new(),
            terms: OnceLock::new(),
        }
    }

    /// `text` parsed as `search` parses it, after the checks of `search` (`None`: refused, so
    /// the node is asked anyway and reports the error).
    fn parse(&self, text: &str) -> Option<Box<dyn Query>> {
        let trimmed = text.trim();
        if trimmed.is_empty() || text.len() > MAX_QUERY_BYTES {
            return None;
        }
        ragmesh_types::query::check(trimmed, &QueryLimits::default()).ok()?;
        Some(self.parser.parse_query_lenient(trimmed).0)
    }
}

/// One query text parsed under one analysis profile by [`RoutingParser::read`]; what the
/// master needs from it is derived from that parse on first use, so a search that never asks
/// for the terms (reciprocal-rank fusion) never extracts them.
#[derive(Debug)]
pub struct QueryReading {
    parser: Arc<RoutingParser>,
    /// `None`: a query `search` refuses (the nodes are asked anyway and report why).
    parsed: Option<Box<dyn Query>>,
    /// Whether the text may hold a phrase prefix ([`super::stats::starred`]).
    starred: bool,
    routing: OnceLock<RoutingQuery>,
    terms: OnceLock<Option<Vec<FieldTerm>>>,
}

impl QueryReading {
    /// What a term summary can decide about the query ([`RoutingParser::query`]).
    pub fn routing(&self) -> &RoutingQuery {
        self.routing.get_or_init(|| match &self.parsed {
            Some(parsed) => lower(parsed.as_ref(), &self.parser.fields, 0),
            None => RoutingQuery::Anything,
        })
    }

    /// Its distinct analysed terms, sorted; `None` when the index would refuse it.
    pub fn terms(&self) -> Option<&[FieldTerm]> {
        self.terms
            .get_or_init(|| {
                let parsed = self.parsed.as_ref()?;
                super::stats::sorted_terms(&self.parser.schema, self.starred, parsed.as_ref()).ok()
            })
            .as_deref()
    }
}

/// A term summary together with the write-log position of the snapshot it describes: the
/// router trusts it only while no later write of the node's group was acknowledged.
#[derive(Debug, Clone)]
pub struct RoutingSummary {
    /// The summary, stamped with the snapshot's generation.
    pub summary: NodeSummary,
    /// The last write-log position applied as of that same snapshot.
    pub applied: AppliedLog,
}

/// The routing form of one parsed query node.
fn lower(query: &dyn Query, fields: &Fields, depth: usize) -> RoutingQuery {
    if depth > MAX_ROUTING_DEPTH {
        return RoutingQuery::Anything;
    }
    if let Some(term) = query.downcast_ref::<TermQuery>() {
        return lower_term(term.term(), fields);
    }
    if let Some(phrase) = query.downcast_ref::<PhraseQuery>() {
        // A phrase (with or without slop) matches only documents holding every one of its terms
        // in that field, so each term is required.
        return RoutingQuery::All(phrase.phrase_terms().iter().map(|term| lower_term(term, fields)).collect());
    }
    if query.downcast_ref::<EmptyQuery>().is_some() {
        return RoutingQuery::Nothing;
    }
    if let Some(boolean) = query.downcast_ref::<BooleanQuery>() {
        let mut required = Vec::new();
        let mut optional = Vec::new();
        for (occur, clause) in boolean.clauses() {
            match occur {
                Occur::Must => required.push(lower(clause.as_ref(), fields, depth + 1)),
                Occur::Should => optional.push(lower(clause.as_ref(), fields, depth + 1)),
                // An exclusion only removes documents: it never makes one match.
                Occur::MustNot => {}
            }
        }
        // tantivy: with a required clause, optional ones only add to the score; without one, a
        // document must match at least one optional clause; exclusions alone match nothing
        // (answered "ask", which is never wrong).
        return if !required.is_empty() {
            RoutingQuery::All(required)
        } else if !optional.is_empty() {
            RoutingQuery::Any(optional)
        } else {
            RoutingQuery::Anything
        };
    }
    RoutingQuery::Anything
}

/// A term of the title or body field; a term of any other field is not summarised.
fn lower_term(term: &Term, fields: &Fields) -> RoutingQuery {
    if !fields.is_text(term.field()) {
        return RoutingQuery::Anything;
    }
    match term.value().as_str() {
        Some(text) => RoutingQuery::Term(text.to_owned()),
        None => RoutingQuery::Anything,
    }
}

/// Terms collected for one collection; `None` once it has more than a filter can hold.
type Collected = Option<HashSet<Vec<u8>>>;

impl DocumentIndex {
    /// The term summary of the current snapshot, stamped with its generation: per collection
    /// holding live documents, a Bloom filter (at `fp_rate`, at most
    /// [`ragmesh_search::MAX_FILTER_BYTES`]) of the title and body terms of its live documents.
    /// Deleted documents' terms are left out. Cost: one pass over the title and body postings
    /// (a term stops being read once every collection of its segment holds it).
    pub fn term_summary(&self, fp_rate: f64) -> Result<NodeSummary, IndexError> {
        Ok(self.routing_summary(fp_rate)?.summary)
    }

    /// [`DocumentIndex::term_summary`] with the write-log position applied as of the same
    /// snapshot, so the pair (generation, applied sequence) describes exactly the terms
    /// summarised. Blocking (reads every title and body posting list): call it off the async
    /// runtime.
    pub fn routing_summary(&self, fp_rate: f64) -> Result<RoutingSummary, IndexError> {
        let _span = tracing::debug_span!("index.term_summary").entered();
        let snapshot = self.snapshot();
        let max_terms = TermFilter::max_terms(fp_rate, MAX_FILTER_BYTES);
        let mut collected: BTreeMap<String, Collected> = BTreeMap::new();
        let mut total = 0usize;
        for segment in snapshot.searcher.segment_readers() {
            self.collect_segment(segment, max_terms, &mut collected, &mut total)?;
        }
        let mut filters = Vec::with_capacity(collected.len());
        let mut summarised_terms = 0usize;
        for (name, terms) in collected {
            let filter = match terms {
                Some(terms) => {
                    summarised_terms += terms.len();
                    let terms: Vec<Vec<u8>> = terms.into_iter().collect();
                    TermFilter::for_terms(&terms, fp_rate, MAX_FILTER_BYTES)
                }
                None => TermFilter::Everything,
            };
            let analyzer = self.analyzer_name_of(&name);
            filters.push((name, analyzer, filter));
        }
        let summary = NodeSummary::with_analyzers(snapshot.generation, filters);
        tracing::debug!(
            index.generation = snapshot.generation,
            summary.collections = summary.collections().count(),
            summary.terms = summarised_terms,
            log.applied_seq = snapshot.applied.seq,
            "term summary built"
        );
        Ok(RoutingSummary { summary, applied: snapshot.applied })
    }

    /// Adds the live terms of one segment to `collected`.
    fn collect_segment(
        &self,
        segment: &SegmentReader,
        max_terms: usize,
        collected: &mut BTreeMap<String, Collected>,
        total: &mut usize,
    ) -> Result<(), IndexError> {
        let (names, owner) = self.segment_collections(segment)?;
        if names.is_empty() {
            return Ok(());
        }
        for name in &names {
            collected.entry(name.clone()).or_insert_with(|| Some(HashSet::new()));
        }
        // Every pair indexes every document; a collection's terms are read from the pair of its
        // own profile only, the analysis its filter names: the other collections are marked seen
        // from the start.
        let pairs: Vec<TextPair> = names.iter().map(|name| self.pair_of_collection(name)).collect();
        let mut seen = vec![false; names.len()];
        for pair in &self.fields.pairs {
            let elsewhere: Vec<bool> = pairs.iter().map(|theirs| theirs != pair).collect();
            let skipped = elsewhere.iter().filter(|skip| **skip).count();
            if skipped == names.len() {
                continue;
            }
            for field in [pair.title, pair.body] {
                let inverted = segment.inverted_index(field).map_err(IndexError::tantivy("read summary terms"))?;
                let mut terms = inverted.terms().stream().map_err(|err| IndexError::Tantivy {
                    context: "read summary terms",
                    source: TantivyError::from(err),
                })?;
                while terms.advance() {
                    seen.copy_from_slice(&elsewhere);
                    let mut seen_count = skipped;
                    let mut postings = inverted
                        .read_postings_from_terminfo(terms.value(), IndexRecordOption::Basic)
                        .map_err(|err| IndexError::Tantivy {
                            context: "read summary postings",
                            source: TantivyError::from(err),
                        })?;
                    let mut doc: DocId = postings.doc();
                    while doc != TERMINATED && seen_count < names.len() {
                        let collection = owner.get(doc as usize).copied().unwrap_or(NO_COLLECTION);
                        if collection != NO_COLLECTION && !seen[collection as usize] {
                            seen[collection as usize] = true;
                            seen_count += 1;
                            let name = &names[collection as usize];
                            add_term(collected, name, terms.key(), max_terms, total);
                        }
                        doc = postings.advance();
                    }
                }
            }
        }
        Ok(())
    }

    /// The collections of the live documents of `segment` and, per document, the index of its
    /// collection in that list (`NO_COLLECTION` for deleted documents).
    fn segment_collections(&self, segment: &SegmentReader) -> Result<(Vec<String>, Vec<u32>), IndexError> {
        let alive = segment.alive_bitset();
        let inverted =
            segment.inverted_index(self.fields.collection).map_err(IndexError::tantivy("read collection terms"))?;
        let mut terms = inverted
            .terms()
            .stream()
            .map_err(|err| IndexError::Tantivy { context: "read collection terms", source: TantivyError::from(err) })?;
        let mut owner = vec![NO_COLLECTION; segment.max_doc() as usize];
        let mut names = Vec::new();
        while terms.advance() {
            let mut postings =
                inverted.read_postings_from_terminfo(terms.value(), IndexRecordOption::Basic).map_err(|err| {
                    IndexError::Tantivy { context: "read collection postings", source: TantivyError::from(err) }
                })?;
            let index = u32::try_from(names.len()).expect("fewer collections than documents in a segment");
            let mut live = false;
            let mut doc = postings.doc();
            while doc != TERMINATED {
                if alive.is_none_or(|bits| bits.is_alive(doc))
                    && let Some(slot) = owner.get_mut(doc as usize)
                {
                    *slot = index;
                    live = true;
                }
                doc = postings.advance();
            }
            if live {
                names.push(String::from_utf8_lossy(terms.key()).into_owned());
            }
        }
        Ok((names, owner))
    }
}

/// Records `term` for collection `name`, keeping memory bounded: a collection past `max_terms`
/// (or the largest one, once all collections together pass `MAX_COLLECTED_TERMS`) stops
/// collecting and will be summarised as "may contain anything".
fn add_term(collected: &mut BTreeMap<String, Collected>, name: &str, term: &[u8], max_terms: usize, total: &mut usize) {
    let Some(Some(terms)) = collected.get_mut(name) else { return };
    if !terms.insert(term.to_vec()) {
        return;
    }
    *total += 1;
    if terms.len() > max_terms {
        *total -= terms.len();
        collected.insert(name.to_owned(), None);
    }
    while *total > MAX_COLLECTED_TERMS {
        let largest =
            collected.iter().filter_map(|(name, terms)| terms.as_ref().map(|terms| (terms.len(), name.clone()))).max();
        let Some((len, name)) = largest else { break };
        *total -= len;
        collected.insert(name, None);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use ragmesh_search::DEFAULT_FALSE_POSITIVE_RATE;

    use super::*;
    use crate::test_data::{doc, open_temp};
    use crate::{DocRef, Document, SearchQuery};

    fn term(text: &str) -> RoutingQuery {
        RoutingQuery::Term(text.to_owned())
    }

    #[test]
    fn queries_are_lowered_like_the_search_parses_them() {
        // Default OR, stemmed and lower-cased like the indexed terms.
        assert_eq!(
            routing_query("Replicas running"),
            RoutingQuery::Any(vec![
                RoutingQuery::Any(vec![term("replica"), term("replica")]),
                RoutingQuery::Any(vec![term("run"), term("run")]),
            ])
        );
        // Required and excluded terms.
        assert_eq!(
            routing_query("+cats -dogs"),
            RoutingQuery::All(vec![RoutingQuery::Any(vec![term("cat"), term("cat")])])
        );
        assert_eq!(routing_query("title:cats AND body:dogs"), RoutingQuery::All(vec![term("cat"), term("dog")]));
        // A phrase needs each of its terms (in one field or the other).
        assert_eq!(
            routing_query("\"big cats\""),
            RoutingQuery::Any(vec![
                RoutingQuery::All(vec![term("big"), term("cat")]),
                RoutingQuery::All(vec![term("big"), term("cat")]),
            ])
        );
        let unknowable = ["*", "\"big ca\"*", "id:x", "collection:notes", "title:[a TO c]", "cat^2", ""];
        let lowered: Vec<(&str, RoutingQuery)> = unknowable.iter().map(|q| (*q, routing_query(q))).collect();
        // Asked even on a node whose collection holds no term at all.
        assert!(lowered.iter().all(|(_, r)| r.may_match(&TermFilter::Empty)), "{lowered:?}");
        // tantivy's grammar keeps `*` in the word and the analyzer drops it: `cat*` searches `cat`.
        assert_eq!(routing_query("cat*"), routing_query("cat"));
        // tantivy turns exclusions alone into "everything but": asked.
        assert!(routing_query("-dogs").may_match(&TermFilter::Empty), "{:?}", routing_query("-dogs"));
        assert_eq!(routing_query("!!!"), RoutingQuery::Nothing, "no term at all");
        assert_eq!(routing_query(&"(".repeat(500)), RoutingQuery::Anything, "refused by search: ask");
    }

    #[test]
    fn the_router_lowers_only_for_the_analyzers_it_knows() {
        assert_eq!(routing_query_for("en_stem", "cats"), Some(routing_query("cats")));
        assert_eq!(routing_query_for("fr_stem", "chats"), None, "unknown analyzer: the router asks");
        assert_eq!(ragmesh_search::DEFAULT_ANALYZER, Profile::default().name(), "one name for the default");
    }

    #[test]
    fn a_summary_names_its_profile_and_the_router_analyses_queries_with_it() {
        use crate::analysis::{AnalysisSettings, Stemming, StopWords};
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = Profile { stemming: Stemming::None, stop_words: StopWords::English };
        let settings = AnalysisSettings { profile, ..AnalysisSettings::default() };
        let index = DocumentIndex::open_with(dir.path(), settings).expect("open");
        index.upsert(vec![doc("papers", "1", "Replicas", "the replicas agree")]).expect("upsert");
        let summary = index.term_summary(DEFAULT_FALSE_POSITIVE_RATE).expect("summary");
        assert_eq!(summary.analyzer("papers"), Some(profile.name().as_str()));
        let routed = |text| routing_query_for(&profile.name(), text).expect("a known profile");
        // Unstemmed: "replicas" is held, "replica" is not (en_stem would have matched both).
        assert!(summary.may_match(&[], &routed("replicas")));
        assert!(!summary.may_match(&[], &routed("replica")));
        // Read with en_stem, "replicas" would be "replica": a false skip the profile name prevents.
        assert!(!summary.may_match(&[], &routing_query("replicas")), "en_stem's reading differs");
        // A stop word is no term at all: "+the +replicas" requires only "replicas".
        assert_eq!(routed("the"), RoutingQuery::Nothing);
        assert!(summary.may_match(&[], &routed("+the +replicas")));
        let hits = index.search(&crate::SearchQuery { query: "replica".into(), ..Default::default() }).expect("search");
        assert!(hits.hits.is_empty(), "the index agrees: no hit for the unstemmed miss");
    }

    #[test]
    fn a_routing_summary_carries_the_log_position_of_its_snapshot() {
        let (_dir, index) = open_temp();
        let at = |seq| crate::LogPosition { shard: "g".into(), seq };
        index.apply_upsert(&at(1), vec![doc("papers", "1", "Attention", "cats")], &crate::Writer::Operator).expect("1");
        index.apply_upsert(&at(2), vec![doc("papers", "2", "Garden", "dogs")], &crate::Writer::Operator).expect("2");
        let routed = index.routing_summary(DEFAULT_FALSE_POSITIVE_RATE).expect("summary");
        assert_eq!(routed.applied.seq, 2);
        assert_eq!(routed.summary.generation(), index.generation());
        assert_eq!(routed.summary.analyzer("papers"), Some("en_stem"));
        assert!(routed.summary.may_match(&[], &routing_query("dogs")));
    }

    #[test]
    fn summaries_are_per_collection_of_live_documents_and_stamped() {
        let (_dir, index) = open_temp();
        index
            .upsert(vec![
                doc("papers", "1", "Attention", "transformers replicate sequences"),
                doc("notes", "2", "Garden", "tomatoes need sun"),
                doc("gone", "3", "Deleted", "ephemeral words"),
            ])
            .expect("upsert");
        index.delete(vec![DocRef { collection: "gone".into(), id: "3".into() }]).expect("delete");
        let summary = index.term_summary(DEFAULT_FALSE_POSITIVE_RATE).expect("summary");
        assert_eq!(summary.generation(), index.generation());
        let names: Vec<&str> = summary.collections().map(|(name, _)| name).collect();
        assert_eq!(names, vec!["notes", "papers"], "a collection without live documents is not listed");
        let papers = summary.collection("papers").expect("papers");
        assert!(papers.may_contain("transform") && papers.may_contain("attent") && papers.may_contain("replic"));
        let only = |name: &str| vec![name.to_owned()];
        assert!(summary.may_match(&only("papers"), &routing_query("Replication")), "stemmed alike");
        assert!(!summary.may_match(&only("papers"), &routing_query("tomatoes")), "another collection's term");
        assert!(!summary.may_match(&[], &routing_query("ephemeral")), "a deleted document's term");
        assert!(!summary.may_match(&[], &routing_query("+sun +transformers")), "no collection holds both");
        assert!(summary.may_match(&[], &routing_query("sun transformers")));
        let decoded = NodeSummary::decode(&summary.encode()).expect("round trip");
        assert_eq!(decoded, summary);
    }

    #[test]
    fn an_empty_index_has_an_empty_summary() {
        let (_dir, index) = open_temp();
        let summary = index.term_summary(DEFAULT_FALSE_POSITIVE_RATE).expect("summary");
        assert_eq!((summary.generation(), summary.collections().count()), (0, 0));
        assert!(!summary.may_match(&[], &routing_query("*")));
    }

    #[test]
    fn collecting_stops_at_the_term_budget() {
        let mut collected =
            BTreeMap::from([("a".to_owned(), Some(HashSet::new())), ("b".to_owned(), Some(HashSet::new()))]);
        let mut total = 0;
        for i in 0..5 {
            add_term(&mut collected, "a", format!("t{i}").as_bytes(), 3, &mut total);
        }
        add_term(&mut collected, "b", b"x", 3, &mut total);
        assert_eq!(collected["a"], None, "past max_terms: may contain anything");
        assert_eq!(collected["b"].as_ref().map(HashSet::len), Some(1));
        assert_eq!(total, 1, "the given-up collection's terms are no longer counted");
    }

    /// Words with shared stems, case variants and punctuation, so analysis matters.
    const VOCABULARY: &[&str] = &[
        "replica",
        "replicas",
        "Replication",
        "run",
        "running",
        "RUNS",
        "cat",
        "cats",
        "dog",
        "big",
        "index",
        "indexes",
        "tree",
        "trees",
        "foo-bar",
        "x.y",
        "sun",
        "garden",
        "attention",
        "ünïcode",
    ];

    fn word() -> impl Strategy<Value = String> {
        proptest::sample::select(VOCABULARY).prop_map(str::to_owned)
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(word(), 0..max).prop_map(|words| words.join(" "))
    }

    /// Queries in the syntax users type: plain words, required, excluded, AND/OR/NOT, phrases
    /// (with slop), fields, groups, prefixes and boosts.
    fn query() -> impl Strategy<Value = String> {
        let clause = prop_oneof![
            4 => word(),
            2 => word().prop_map(|w| format!("+{w}")),
            1 => word().prop_map(|w| format!("-{w}")),
            1 => (word(), word()).prop_map(|(a, b)| format!("\"{a} {b}\"")),
            1 => (word(), word()).prop_map(|(a, b)| format!("\"{a} {b}\"~2")),
            1 => word().prop_map(|w| format!("title:{w}")),
            1 => word().prop_map(|w| format!("body:{w}")),
            1 => word().prop_map(|w| format!("{w}*")),
            1 => word().prop_map(|w| format!("{w}^2")),
            1 => (word(), word()).prop_map(|(a, b)| format!("({a} OR {b})")),
            1 => (word(), word()).prop_map(|(a, b)| format!("{a} AND {b}")),
            1 => (word(), word()).prop_map(|(a, b)| format!("{a} AND NOT {b}")),
            1 => (word(), word()).prop_map(|(a, b)| format!("+({a} {b})")),
        ];
        proptest::collection::vec(clause, 1..4).prop_map(|clauses| clauses.join(" "))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The routing property: whenever a search finds something, the summary says "may match"
        /// (for every collection restriction); a false skip would fail here.
        #[test]
        fn a_summary_never_excludes_an_index_that_has_a_hit(
            docs in proptest::collection::vec((0..3usize, text(4), text(8)), 1..12),
            deletes in proptest::collection::vec(0..12usize, 0..3),
            queries in proptest::collection::vec(query(), 1..12),
        ) {
            let (_dir, index) = open_temp();
            let names = ["alpha", "beta", "gamma"];
            let batch: Vec<Document> = docs
                .iter()
                .enumerate()
                .map(|(i, (c, title, body))| doc(names[*c], &format!("d{i}"), title, body))
                .collect();
            index.upsert(batch).expect("upsert");
            let refs: Vec<DocRef> = deletes
                .iter()
                .filter(|i| **i < docs.len())
                .map(|i| DocRef { collection: names[docs[*i].0].to_owned(), id: format!("d{i}") })
                .collect();
            if !refs.is_empty() {
                index.delete(refs).expect("delete");
            }
            let summary = index.term_summary(DEFAULT_FALSE_POSITIVE_RATE).expect("summary");
            prop_assert_eq!(summary.generation(), index.generation());
            let restrictions: Vec<Vec<String>> = vec![
                vec![],
                vec!["alpha".to_owned()],
                vec!["beta".to_owned(), "gamma".to_owned()],
            ];
            for text in &queries {
                let routing = routing_query(text);
                for collections in &restrictions {
                    let search = SearchQuery { query: text.clone(), collections: collections.clone(), ..SearchQuery::default() };
                    let Ok(results) = index.search(&search) else { continue };
                    if results.total_matches > 0 {
                        prop_assert!(
                            summary.may_match(collections, &routing),
                            "false skip: {text:?} in {collections:?} has {} hits, routing {routing:?}",
                            results.total_matches
                        );
                    }
                }
            }
        }
    }

    /// The property above must be able to fail: on the same kind of corpora, the summary does
    /// skip (a summary that always says "ask" would pass it trivially).
    #[test]
    fn summaries_do_skip_nodes_without_the_terms() {
        let (_dir, index) = open_temp();
        index
            .upsert(vec![doc("alpha", "1", "cats", "big trees"), doc("beta", "2", "dogs", "garden sun")])
            .expect("upsert");
        let summary = index.term_summary(DEFAULT_FALSE_POSITIVE_RATE).expect("summary");
        let mut skipped = 0;
        for text in
            ["replicas", "+cats +sun", "\"cats garden\"", "title:sun", "running OR attention", "cats AND NOT dogs"]
        {
            let hits = index.search(&SearchQuery { query: text.to_owned(), ..SearchQuery::default() }).expect("search");
            let may = summary.may_match(&[], &routing_query(text));
            assert!(may || hits.total_matches == 0, "{text}");
            skipped += usize::from(!may);
        }
        // "title:sun" and "cats AND NOT dogs" may match (sun is in a body; the summary ignores
        // exclusions): asked. The other four are proven absent.
        assert_eq!(skipped, 4);
    }

    #[test]
    fn a_phrase_prefix_has_no_terms_to_gather_statistics_for() {
        let parser = Arc::new(RoutingParser::new(&Profile::default()));
        assert_eq!(parser.read(r#""radar echo"*"#).terms(), None);
        assert_eq!(parser.read(r#"moon title:"radar echo"*"#).terms(), None);
        let plain = parser.read(r#""radar echo" moon"#);
        assert_eq!(plain.terms().map(<[_]>::len), Some(6), "three words in title and body: {:?}", plain.terms());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// One parse serves both of the master's uses: `read` gives exactly the routing query
        /// of `query` and the terms of a `QueryAnalyzer` for that profile, refusals included.
        #[test]
        fn one_reading_equals_the_routing_query_and_the_analyzers_terms(
            text in prop_oneof![
                4 => query(),
                1 => (word(), word()).prop_map(|(a, b)| format!("\"{a} {b}\"*")),
                1 => Just(String::new()),
                1 => Just("((((((((((x))))))))))".repeat(40)),
            ],
            stop_words in any::<bool>(),
        ) {
            let profile = Profile {
                stop_words: if stop_words { crate::analysis::StopWords::English } else { crate::analysis::StopWords::None },
                ..Profile::default()
            };
            let parser = Arc::new(RoutingParser::new(&profile));
            let analyzer = crate::QueryAnalyzer::for_settings(&crate::AnalysisSettings { profile, ..Default::default() });
            let q = SearchQuery { query: text.clone(), ..SearchQuery::default() };
            let read = parser.read(&text);
            prop_assert_eq!(read.routing(), &parser.query(&text));
            let expected = analyzer.terms(&q).ok();
            prop_assert_eq!(read.terms(), expected.as_deref());
        }
    }
}
