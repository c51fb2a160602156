//! Collection-wide BM25 statistics, so that a search federated over several indexes ranks like
//! one index holding every document.
//!
//! BM25 weighs a matching term by its document frequency against the number of documents, and
//! a field match by the field's length against the average field length. Each index knows these
//! numbers only for itself, so scores from different indexes are not comparable and a merged
//! ranking is skewed by how documents happen to be spread. The fix has two phases:
//! [`DocumentIndex::term_statistics`] reports, for exactly the terms a query analyses to, the
//! index's numbers as a [`TermStatistics`]; the caller sums the reports of every index
//! ([`TermStatistics::merge`]) and hands the sum to each index's
//! [`DocumentIndex::search_with_statistics`], which scores with it instead of its own numbers.
//! Every hit then gets the score it would get in one index holding all documents, so merging
//! hits by score gives that index's ranking (the property test below checks this on random
//! corpora split over 1-4 indexes).
//!
//! For a caller that caches statistics (per node, generation and viewer scope, so a repeated
//! term costs no round trip): [`DocumentIndex::term_statistics_at_generation`] returns the
//! generation the numbers were read at (they stay valid exactly as long as it does),
//! [`QueryAnalyzer`] names a query's terms without an index, exactly as every index analyses
//! them, and [`DocumentIndex::statistics_of_terms`] answers for just the terms missing from the
//! cache.
//!
//! A term of the query that the given statistics lack is an error, never scored with local
//! numbers (which would silently break the ranking), and so is a doc frequency above the
//! document count. Phrase-prefix queries (`"big wo"*`) are refused: tantivy scores them with
//! the local index's numbers whatever statistics it is given. Under given statistics the
//! collection and ACL filters add nothing to a score (under [`DocumentIndex::search`] they add
//! their own term weights, which depend on the local index).
//!
//! # Tenancy
//!
//! Statistics describe only documents the caller may read. For a restricted viewer (anonymous,
//! or a tenant's principal) every number is counted over the live documents its ACL filter
//! admits: the document count and the field lengths in one pass over those documents, each doc
//! frequency by counting "term AND filter". Field lengths are summed from the length norms
//! tantivy stores per document (exact for fields of up to 40 tokens, rounded down above that,
//! the same per-document value BM25 uses for the length of a match). Every number is thus a
//! function of the documents the viewer can already retrieve, so adding, changing or deleting
//! a document the viewer cannot read changes none of them: nothing about another tenant's
//! documents can be learnt from statistics (the `statistics_do_not_see_other_tenants` test).
//! Unrestricted viewers (operators) may read everything anyway and get tantivy's own
//! index-wide numbers, read from index metadata (these count deleted documents not yet merged
//! away, exactly like tantivy's own scoring), so an operator's
//! [`DocumentIndex::search_with_statistics`] with one index's own statistics equals
//! [`DocumentIndex::search`]. Statistics cover the documents the viewer may read in every
//! collection: a collection filter restricts hits, not statistics, as in a plain search.
//!
//! # Cost
//!
//! For an operator: per term one term-dictionary lookup per segment. For a restricted viewer:
//! one pass over the readable documents (a length-norm byte per field and document) plus one
//! posting-list intersection per term; `statistics_on_vaswani_match_one_index_and_their_cost`
//! prints timings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use tantivy::collector::{Collector, Count, SegmentCollector};
use tantivy::fieldnorm::FieldNormReader;
use tantivy::query::{AllQuery, Bm25StatisticsProvider, Query, QueryParser, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema};
use tantivy::{DocId, Index, Score, Searcher, SegmentOrdinal, SegmentReader, TantivyError, Term};

use super::{DocumentIndex, Fields, any_of, check_query, parse_lenient, query_parser};
use crate::analysis::{AnalysisSettings, IndexAnalysis};
use crate::{IndexError, SearchQuery, SearchResults, Viewer};

/// Most `(field, term)` entries accepted in given statistics: a query of at most
/// [`crate::MAX_QUERY_BYTES`] bytes analyses to at most half as many terms per field, in two
/// default fields.
pub const MAX_STATISTICS_TERMS: usize = crate::MAX_QUERY_BYTES;

/// BM25 statistics of a query's terms over some set of documents: the document count, the
/// total number of tokens per field and the document frequency per `(field, term)`.
///
/// Fields and terms are named as the index analyses them (field `"body"`, stemmed lowercase
/// term `"replic"`), so the value can travel over the wire. Statistics of disjoint document sets
/// add up: [`TermStatistics::merge`] sums them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TermStatistics {
    total_docs: u64,
    total_tokens: BTreeMap<String, u64>,
    doc_freqs: BTreeMap<String, BTreeMap<String, u64>>,
}

impl TermStatistics {
    /// Statistics over `total_docs` documents, with no field or term yet.
    pub fn new(total_docs: u64) -> Self {
        TermStatistics { total_docs, ..TermStatistics::default() }
    }

    /// Number of documents the statistics describe.
    pub fn total_docs(&self) -> u64 {
        self.total_docs
    }

    /// Total tokens in `field` over all documents, if known.
    pub fn total_tokens(&self, field: &str) -> Option<u64> {
        self.total_tokens.get(field).copied()
    }

    /// Number of documents containing `term` in `field`, if known.
    pub fn doc_freq(&self, field: &str, term: &str) -> Option<u64> {
        self.doc_freqs.get(field).and_then(|terms| terms.get(term)).copied()
    }

    /// Sets the total tokens of `field`.
    pub fn set_total_tokens(&mut self, field: impl Into<String>, tokens: u64) {
        self.total_tokens.insert(field.into(), tokens);
    }

    /// Sets the document frequency of `term` in `field`.
    pub fn set_doc_freq(&mut self, field: impl Into<String>, term: impl Into<String>, doc_freq: u64) {
        self.doc_freqs.entry(field.into()).or_default().insert(term.into(), doc_freq);
    }

    /// `(field, total tokens)`, sorted by field.
    pub fn fields(&self) -> impl Iterator<Item = (&str, u64)> {
        self.total_tokens.iter().map(|(field, tokens)| (field.as_str(), *tokens))
    }

    /// `(field, term, document frequency)`, sorted by field then term.
    pub fn doc_freqs(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.doc_freqs
            .iter()
            .flat_map(|(field, terms)| terms.iter().map(move |(term, df)| (field.as_str(), term.as_str(), *df)))
    }

    /// Number of `(field, term)` entries.
    pub fn term_count(&self) -> usize {
        self.doc_freqs.values().map(BTreeMap::len).sum()
    }

    /// Adds `other`, the statistics of a disjoint set of documents: counts are summed
    /// (saturating), a field or term known to one side only is taken as is. Associative and
    /// commutative, so reports can be merged in any order.
    pub fn merge(&mut self, other: &TermStatistics) {
        self.total_docs = self.total_docs.saturating_add(other.total_docs);
        for (field, tokens) in &other.total_tokens {
            let sum = self.total_tokens.entry(field.clone()).or_default();
            *sum = sum.saturating_add(*tokens);
        }
        for (field, terms) in &other.doc_freqs {
            let mine = self.doc_freqs.entry(field.clone()).or_default();
            for (term, df) in terms {
                let sum = mine.entry(term.clone()).or_default();
                *sum = sum.saturating_add(*df);
            }
        }
    }
}

/// A term as an index analyses it: the field and the analysed text (`body`, `replic`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldTerm {
    /// Field name.
    pub field: String,
    /// Analysed term text.
    pub term: String,
}

impl DocumentIndex {
    /// The BM25 statistics of the terms `q` analyses to, over the documents `q.viewer` may read
    /// (see the module docs on tenancy); `q.collections`, `limit` and `min_score` play no part.
    /// With per-collection analysis, the terms of every profile in use, each in its profile's
    /// fields (`"body"`, `"body@stem-none_stop-english"`...).
    ///
    /// Fails like [`DocumentIndex::search`] on an invalid query, and on a phrase-prefix query.
    pub fn term_statistics(&self, q: &SearchQuery) -> Result<TermStatistics, IndexError> {
        Ok(self.term_statistics_at_generation(q)?.1)
    }

    /// [`DocumentIndex::term_statistics`] with the generation it was read at, both from one
    /// snapshot: statistics stay valid exactly as long as the generation does.
    pub fn term_statistics_at_generation(&self, q: &SearchQuery) -> Result<(u64, TermStatistics), IndexError> {
        let _span = tracing::debug_span!("index.term_statistics").entered();
        let parsed = self.parse_all_profiles(q)?;
        refuse_phrase_prefix(starred(&q.query), &*parsed)?;
        let snapshot = self.snapshot();
        let terms = analysed_terms(snapshot.searcher.schema(), &*parsed)?;
        let stats = self.statistics_at(&snapshot.searcher, &terms, &q.viewer)?;
        Ok((snapshot.generation, stats))
    }

    /// The statistics of already analysed `terms` (as [`QueryAnalyzer::terms`] or
    /// [`TermStatistics::doc_freqs`] name them) over the documents `viewer` may read, with the
    /// generation they were read at: lets a caller that caches statistics per term ask only for
    /// the terms it lacks. Fails on more than [`MAX_STATISTICS_TERMS`] terms or a field that
    /// holds no searchable text.
    pub fn statistics_of_terms(
        &self,
        terms: &[FieldTerm],
        viewer: &Viewer,
    ) -> Result<(u64, TermStatistics), IndexError> {
        let _span = tracing::debug_span!("index.statistics_of_terms", stats.terms = terms.len()).entered();
        if terms.len() > MAX_STATISTICS_TERMS {
            return Err(IndexError::InvalidQuery(format!(
                "{} terms asked for, more than the {MAX_STATISTICS_TERMS} one query can have",
                terms.len()
            )));
        }
        let snapshot = self.snapshot();
        let schema = snapshot.searcher.schema();
        let mut resolved = Vec::with_capacity(terms.len());
        for FieldTerm { field, term } in terms.iter().collect::<BTreeSet<_>>() {
            let searchable = schema.get_field(field).ok().filter(|found| {
                let entry = schema.get_field_entry(*found);
                entry.is_indexed() && entry.field_type().value_type() == tantivy::schema::Type::Str
            });
            let Some(found) = searchable else {
                return Err(IndexError::InvalidQuery(format!("field {field:?} holds no searchable text")));
            };
            resolved.push((Term::from_field_text(found, term), field.clone(), term.clone()));
        }
        let stats = self.statistics_at(&snapshot.searcher, &resolved, viewer)?;
        Ok((snapshot.generation, stats))
    }

    /// The statistics of `terms` (each with its field name and text) in `searcher`, over the
    /// documents `viewer` may read.
    fn statistics_at(
        &self,
        searcher: &Searcher,
        terms: &[(Term, String, String)],
        viewer: &Viewer,
    ) -> Result<TermStatistics, IndexError> {
        let schema = searcher.schema();
        let fields: Vec<Field> =
            terms.iter().map(|(term, _, _)| term.field()).collect::<BTreeSet<_>>().into_iter().collect();
        let stats = match viewer.granting_terms() {
            None => {
                // tantivy's own numbers, exactly what `search` scores with.
                let total_docs =
                    Bm25StatisticsProvider::total_num_docs(searcher).map_err(IndexError::tantivy("count documents"))?;
                let mut stats = TermStatistics::new(total_docs);
                for field in &fields {
                    let tokens = Bm25StatisticsProvider::total_num_tokens(searcher, *field)
                        .map_err(IndexError::tantivy("count tokens"))?;
                    stats.set_total_tokens(schema.get_field_name(*field), tokens);
                }
                for (term, field, text) in terms {
                    let df = searcher.doc_freq(term).map_err(IndexError::tantivy("read document frequency"))?;
                    stats.set_doc_freq(field.as_str(), text.as_str(), df);
                }
                stats
            }
            Some(_) => {
                let readable = self.with_access_filter(Box::new(AllQuery), viewer);
                let (total_docs, tokens) = searcher
                    .search(&*readable, &LengthSums { fields: fields.clone() })
                    .map_err(IndexError::tantivy("sum readable field lengths"))?;
                let mut stats = TermStatistics::new(total_docs);
                for (field, tokens) in fields.iter().zip(tokens) {
                    stats.set_total_tokens(schema.get_field_name(*field), tokens);
                }
                for (term, field, text) in terms {
                    let matching = TermQuery::new(term.clone(), IndexRecordOption::Basic);
                    let readable_matching = self.with_access_filter(Box::new(matching), viewer);
                    let df = searcher
                        .search(&*readable_matching, &Count)
                        .map_err(IndexError::tantivy("count readable documents with a term"))?;
                    stats.set_doc_freq(field.as_str(), text.as_str(), df as u64);
                }
                stats
            }
        };
        tracing::debug!(stats.docs = stats.total_docs, stats.terms = stats.term_count(), "term statistics gathered");
        Ok(stats)
    }

    /// [`DocumentIndex::search`], scored with `stats` (normally the merged
    /// [`DocumentIndex::term_statistics`] of every index searched) instead of this index's own
    /// numbers.
    ///
    /// Fails with [`IndexError::InvalidQuery`] when `stats` lacks a term or field of the query,
    /// holds a doc frequency above its document count or more than [`MAX_STATISTICS_TERMS`]
    /// entries, or when the query is a phrase prefix.
    pub fn search_with_statistics(&self, q: &SearchQuery, stats: &TermStatistics) -> Result<SearchResults, IndexError> {
        self.search_scored(q, Some(stats))
    }
}

/// Analyses queries exactly like every [`DocumentIndex`] does, without one: lets a caller (the
/// master) learn a query's terms locally, to look them up in a statistics cache before asking
/// any node. Cheap to keep and `Send + Sync`; build one and reuse it.
pub struct QueryAnalyzer {
    /// One parser per profile in use, over its title/body pair.
    parsers: Vec<QueryParser>,
    schema: Schema,
}

impl fmt::Debug for QueryAnalyzer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryAnalyzer").finish_non_exhaustive()
    }
}

impl Default for QueryAnalyzer {
    fn default() -> Self {
        QueryAnalyzer::new()
    }
}

impl QueryAnalyzer {
    /// An analyzer over the index schema (in memory, no documents), for indexes opened with
    /// the default analysis settings.
    pub fn new() -> Self {
        QueryAnalyzer::for_settings(&AnalysisSettings::default())
    }

    /// An analyzer naming terms as an index opened with `settings` does: a caller caching
    /// statistics for nodes with another analysis profile must use this one.
    pub fn for_settings(settings: &AnalysisSettings) -> Self {
        QueryAnalyzer::for_analysis(&IndexAnalysis::uniform(*settings))
    }

    /// An analyzer naming terms as an index opened with `analysis` does (the terms of every
    /// profile in use, each in its own fields).
    pub fn for_analysis(analysis: &IndexAnalysis) -> Self {
        let (schema, fields) = Fields::schema_for_profiles(&analysis.profiles());
        let index = Index::create_in_ram(schema.clone());
        for pair in &fields.pairs {
            index.tokenizers().register(&pair.profile.name(), pair.profile.text_analyzer());
        }
        let parsers = fields.pairs.iter().map(|pair| query_parser(&index, *pair)).collect();
        QueryAnalyzer { parsers, schema }
    }

    /// The distinct terms `q` analyses to, sorted, as [`DocumentIndex::term_statistics`] reports
    /// them. Fails like [`DocumentIndex::term_statistics`].
    pub fn terms(&self, q: &SearchQuery) -> Result<Vec<FieldTerm>, IndexError> {
        let (text, _) = check_query(q)?;
        let parsed = any_of(self.parsers.iter().map(|parser| parse_lenient(parser, text)).collect());
        sorted_terms(&self.schema, starred(text), &*parsed)
    }
}

/// The distinct terms of `parsed`, sorted, as [`QueryAnalyzer::terms`] reports them; refuses
/// what collection-wide statistics cannot score (`starred`: see [`refuse_phrase_prefix`]).
pub(super) fn sorted_terms(schema: &Schema, starred: bool, parsed: &dyn Query) -> Result<Vec<FieldTerm>, IndexError> {
    refuse_phrase_prefix(starred, parsed)?;
    let terms = analysed_terms(schema, parsed)?;
    let mut terms: Vec<FieldTerm> = terms.into_iter().map(|(_, field, term)| FieldTerm { field, term }).collect();
    terms.sort();
    Ok(terms)
}

/// Given statistics as tantivy's BM25 source, checked against the query before use.
pub(super) struct GivenStatistics<'a> {
    stats: &'a TermStatistics,
    schema: Schema,
}

impl<'a> GivenStatistics<'a> {
    /// Checks that `stats` covers every term and field of `query` consistently.
    pub(super) fn for_query(
        stats: &'a TermStatistics,
        schema: &Schema,
        starred: bool,
        query: &dyn Query,
    ) -> Result<Self, IndexError> {
        refuse_phrase_prefix(starred, query)?;
        if stats.term_count() > MAX_STATISTICS_TERMS {
            return Err(IndexError::InvalidQuery(format!(
                "the given statistics hold {} terms, more than the {MAX_STATISTICS_TERMS} one query can have",
                stats.term_count()
            )));
        }
        for (_, field, text) in analysed_terms(schema, query)? {
            let Some(df) = stats.doc_freq(&field, &text) else {
                return Err(missing(&format!("term {text:?} of field {field:?}")));
            };
            if stats.total_tokens(&field).is_none() {
                return Err(missing(&format!("the token count of field {field:?}")));
            }
            if df > stats.total_docs {
                return Err(IndexError::InvalidQuery(format!(
                    "the given statistics are inconsistent: term {text:?} of field {field:?} is in {df} documents \
                     but they count only {} documents",
                    stats.total_docs
                )));
            }
        }
        Ok(GivenStatistics { stats, schema: schema.clone() })
    }
}

fn missing(what: &str) -> IndexError {
    IndexError::InvalidQuery(format!(
        "the given statistics lack {what}: gather term statistics for this exact query from every index, \
         merge them and search again (a term is never scored with one index's own statistics)"
    ))
}

impl Bm25StatisticsProvider for GivenStatistics<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        let name = self.schema.get_field_name(field);
        self.stats
            .total_tokens(name)
            .ok_or_else(|| TantivyError::InvalidArgument(format!("no token count for field {name:?}")))
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.stats.total_docs)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let field = self.schema.get_field_name(term.field());
        let value = term.value();
        let text = value.as_str().unwrap_or_default();
        self.stats
            .doc_freq(field, text)
            .ok_or_else(|| TantivyError::InvalidArgument(format!("no document frequency for {text:?} in {field:?}")))
    }
}

/// The distinct terms `query` would score, with their field names and texts.
fn analysed_terms(schema: &Schema, query: &dyn Query) -> Result<Vec<(Term, String, String)>, IndexError> {
    let mut seen = BTreeSet::new();
    query.query_terms(&mut |term, _| {
        seen.insert(term.clone());
    });
    let mut terms = Vec::with_capacity(seen.len());
    for term in seen {
        let field = schema.get_field_name(term.field()).to_owned();
        let Some(text) = term.value().as_str().map(str::to_owned) else {
            return Err(IndexError::InvalidQuery(format!(
                "field {field:?} holds no text terms: search title or body words"
            )));
        };
        terms.push((term, field, text));
    }
    Ok(terms)
}

/// Whether a query text may hold a phrase prefix (`"..."*`): the query language has none
/// without a `*`.
pub(super) fn starred(text: &str) -> bool {
    text.contains('*')
}

/// Refuses phrase-prefix queries: tantivy scores them with the local index's statistics
/// whatever it is given. Found through the debug form because the parser wraps boosted clauses
/// in queries that do not expose their inner query; only when the text `query` was parsed from
/// is [`starred`] (the debug form of a long query took about 1 % of a search's CPU on the
/// master and on the agents).
fn refuse_phrase_prefix(starred: bool, query: &dyn Query) -> Result<(), IndexError> {
    if starred && format!("{query:?}").contains("PhrasePrefixQuery") {
        return Err(IndexError::InvalidQuery(
            "a phrase prefix (\"...\"*) cannot be scored with collection-wide statistics: drop the `*`".to_owned(),
        ));
    }
    Ok(())
}

/// Counts matching documents and sums their stored length norms per field.
struct LengthSums {
    fields: Vec<Field>,
}

/// [`LengthSums`] within one segment.
struct SegmentLengthSums {
    norms: Vec<FieldNormReader>,
    docs: u64,
    tokens: Vec<u64>,
}

impl Collector for LengthSums {
    type Fruit = (u64, Vec<u64>);
    type Child = SegmentLengthSums;

    fn for_segment(&self, _segment: SegmentOrdinal, reader: &SegmentReader) -> tantivy::Result<SegmentLengthSums> {
        let norms =
            self.fields.iter().map(|field| reader.get_fieldnorms_reader(*field)).collect::<Result<Vec<_>, _>>()?;
        Ok(SegmentLengthSums { tokens: vec![0; norms.len()], norms, docs: 0 })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<(u64, Vec<u64>)>) -> tantivy::Result<(u64, Vec<u64>)> {
        let mut docs = 0u64;
        let mut tokens = vec![0u64; self.fields.len()];
        for (segment_docs, segment_tokens) in fruits {
            docs += segment_docs;
            for (sum, add) in tokens.iter_mut().zip(segment_tokens) {
                *sum += add;
            }
        }
        Ok((docs, tokens))
    }
}

impl SegmentCollector for SegmentLengthSums {
    type Fruit = (u64, Vec<u64>);

    fn collect(&mut self, doc: DocId, _score: Score) {
        self.docs += 1;
        for (sum, norms) in self.tokens.iter_mut().zip(&self.norms) {
            *sum += u64::from(norms.fieldnorm(doc));
        }
    }

    fn harvest(self) -> (u64, Vec<u64>) {
        (self.docs, self.tokens)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;
    use crate::test_data::open_temp;
    use crate::{Acl, Document, SubjectRef};

    const VOCABULARY: [&str; 8] = ["apple", "banana", "cherry", "delta", "echo", "falcon", "grape", "harbor"];
    /// In no corpus: a query word absent everywhere.
    const ABSENT: &str = "zulu";

    fn doc(id: &str, title: &str, body: &str, acl: Acl) -> Document {
        Document {
            id: id.to_owned(),
            collection: "c".to_owned(),
            title: title.to_owned(),
            body: body.to_owned(),
            metadata: BTreeMap::new(),
            acl,
        }
    }

    fn public(id: &str, title: &str, body: &str) -> Document {
        doc(id, title, body, Acl::public())
    }

    fn query(text: &str, viewer: Viewer) -> SearchQuery {
        SearchQuery { query: text.to_owned(), viewer, limit: crate::MAX_LIMIT, ..SearchQuery::default() }
    }

    fn tenant(name: &str) -> Viewer {
        Viewer::Principal(SubjectRef { tenant: name.to_owned(), subject: "someone".to_owned() })
    }

    fn merged(indexes: &[&DocumentIndex], q: &SearchQuery) -> TermStatistics {
        let mut stats = TermStatistics::default();
        for index in indexes {
            stats.merge(&index.term_statistics(q).expect("term statistics"));
        }
        stats
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1e-6)
    }

    /// Hits of several indexes searched with `stats`, ordered like one index orders them.
    fn federated(indexes: &[&DocumentIndex], q: &SearchQuery, stats: &TermStatistics) -> Vec<(String, f32)> {
        let mut hits = Vec::new();
        for index in indexes {
            let results = index.search_with_statistics(q, stats).expect("search with statistics");
            hits.extend(results.hits.into_iter().map(|hit| (hit.id, hit.score)));
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        hits
    }

    /// Asserts that `got` has the documents and scores of `want` (both all hits of a query)
    /// and that their top 10 agree, ties at the cut aside.
    fn assert_same_ranking(got: &[(String, f32)], want: &[(String, f32)]) -> Result<(), TestCaseError> {
        let want_scores: HashMap<&str, f32> = want.iter().map(|(id, score)| (id.as_str(), *score)).collect();
        prop_assert_eq!(got.len(), want.len(), "same matches: {:?} vs {:?}", got, want);
        for (id, score) in got {
            let Some(single) = want_scores.get(id.as_str()) else {
                return Err(TestCaseError::fail(format!("{id} matched only when federated")));
            };
            prop_assert!(close(*score, *single), "{}: federated {} vs single {}", id, score, single);
        }
        let (got10, want10) = (&got[..got.len().min(10)], &want[..want.len().min(10)]);
        for (g, w) in got10.iter().zip(want10) {
            prop_assert!(close(g.1, w.1), "top-10 scores differ: {:?} vs {:?}", got10, want10);
        }
        if let Some(cut) = want10.last().map(|(_, score)| *score) {
            let clear = |hits: &[(String, f32)]| -> BTreeSet<String> {
                hits.iter().filter(|(_, score)| !close(*score, cut)).map(|(id, _)| id.clone()).collect()
            };
            prop_assert_eq!(clear(got10), clear(want10), "top 10 differ beyond ties");
        }
        Ok(())
    }

    fn all_hits(results: SearchResults) -> Vec<(String, f32)> {
        results.hits.into_iter().map(|hit| (hit.id, hit.score)).collect()
    }

    fn arb_stats() -> impl Strategy<Value = TermStatistics> {
        let field = prop::sample::select(vec!["title", "body"]);
        let term = prop::sample::select(VOCABULARY.to_vec());
        (
            0u64..1000,
            prop::collection::vec((field.clone(), 0u64..1000), 0..3),
            prop::collection::vec((field, term, 0u64..100), 0..6),
        )
            .prop_map(|(docs, tokens, dfs)| {
                let mut stats = TermStatistics::new(docs);
                for (field, n) in tokens {
                    stats.set_total_tokens(field, n);
                }
                for (field, term, df) in dfs {
                    stats.set_doc_freq(field, term, df);
                }
                stats
            })
    }

    /// A short text of vocabulary words.
    fn words(range: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(VOCABULARY.to_vec()), range).prop_map(|words| words.join(" "))
    }

    /// A corpus document: title, body and ACL (0 public, 1 tenant a, 2 tenant b).
    fn arb_doc() -> impl Strategy<Value = (String, String, u8)> {
        (words(0..4), words(1..12), 0u8..3)
    }

    fn arb_query() -> impl Strategy<Value = String> {
        let mut words = VOCABULARY.to_vec();
        words.push(ABSENT);
        prop::collection::vec(prop::sample::select(words), 1..4).prop_map(|words| words.join(" "))
    }

    fn arb_viewer() -> impl Strategy<Value = Viewer> {
        prop_oneof![Just(Viewer::Unrestricted), Just(Viewer::Anonymous), Just(tenant("a")), Just(tenant("b"))]
    }

    fn acl_of(choice: u8) -> Acl {
        match choice {
            0 => Acl::public(),
            1 => Acl::tenant("a"),
            _ => Acl::tenant("b"),
        }
    }

    proptest! {
        #[test]
        fn merge_is_commutative_and_associative(a in arb_stats(), b in arb_stats(), c in arb_stats()) {
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab;
            ab_c.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut with_empty = a.clone();
            with_empty.merge(&TermStatistics::default());
            prop_assert_eq!(with_empty, a);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
        /// THE property: a random corpus split over 1-4 indexes, searched with the merged
        /// statistics, ranks and scores like one index holding it all. For an operator the
        /// reference is that index's plain `search`; for a restricted viewer its search with its
        /// own statistics (plain `search` adds ACL filter weights and counts unreadable
        /// documents, see the module docs).
        #[test]
        fn sharded_search_with_merged_statistics_equals_one_index(
            docs in prop::collection::vec(arb_doc(), 1..40),
            placement in prop::collection::vec(0usize..4, 40),
            shard_count in 1usize..=4,
            queries in prop::collection::vec(arb_query(), 1..4),
            viewer in arb_viewer(),
        ) {
            let (_single_dir, single) = open_temp();
            let shards: Vec<(tempfile::TempDir, DocumentIndex)> = (0..shard_count).map(|_| open_temp()).collect();
            let mut per_shard: Vec<Vec<Document>> = vec![Vec::new(); shard_count];
            let mut all = Vec::new();
            for (i, (title, body, acl)) in docs.iter().enumerate() {
                let document = doc(&format!("d{i:02}"), title, body, acl_of(*acl));
                per_shard[placement[i] % shard_count].push(document.clone());
                all.push(document);
            }
            // Two commits, so the single index has segments the shards do not mirror.
            let half = all.len() / 2;
            for part in [&all[..half], &all[half..]] {
                if !part.is_empty() {
                    single.upsert(part.to_vec()).expect("upsert single");
                }
            }
            for ((_, shard), docs) in shards.iter().zip(per_shard) {
                if !docs.is_empty() {
                    shard.upsert(docs).expect("upsert shard");
                }
            }
            let shard_refs: Vec<&DocumentIndex> = shards.iter().map(|(_, shard)| shard).collect();

            for text in &queries {
                let q = query(text, viewer.clone());
                let stats = merged(&shard_refs, &q);
                let own = single.term_statistics(&q).expect("single statistics");
                prop_assert_eq!(&stats, &own, "the merged statistics are the single index's");
                let want = all_hits(single.search_with_statistics(&q, &own).expect("single with statistics"));
                if viewer == Viewer::Unrestricted {
                    let plain = all_hits(single.search(&q).expect("plain search"));
                    prop_assert_eq!(&want, &plain, "an operator's own statistics score like search");
                }
                assert_same_ranking(&federated(&shard_refs, &q, &stats), &want)?;
                let mut top10 = q.clone();
                top10.limit = 10;
                let got10 = federated(&shard_refs, &top10, &stats);
                let got10 = &got10[..got10.len().min(10)];
                let want10 = all_hits(single.search_with_statistics(&top10, &own).expect("single top 10"));
                prop_assert_eq!(got10.len(), want10.len());
                for (g, w) in got10.iter().zip(&want10) {
                    prop_assert!(close(g.1, w.1), "top-10: {:?} vs {:?}", got10, want10);
                }
            }
        }
    }

    #[test]
    fn a_term_absent_everywhere_has_frequency_zero_and_scores_nothing() {
        let (_a_dir, a) = open_temp();
        let (_b_dir, b) = open_temp();
        a.upsert(vec![public("1", "apple", "apple banana")]).expect("upsert");
        b.upsert(vec![public("2", "cherry", "banana delta")]).expect("upsert");
        let q = query("zulu banana", Viewer::Unrestricted);
        let stats = merged(&[&a, &b], &q);
        assert_eq!(stats.doc_freq("body", "zulu"), Some(0));
        assert_eq!(stats.doc_freq("title", "zulu"), Some(0));
        assert_eq!(stats.doc_freq("body", "banana"), Some(2));
        assert_eq!(stats.total_docs(), 2);
        let only_absent = query("zulu", Viewer::Unrestricted);
        let absent_stats = merged(&[&a, &b], &only_absent);
        assert!(a.search_with_statistics(&only_absent, &absent_stats).expect("search").hits.is_empty());
        let hits = federated(&[&a, &b], &q, &stats);
        assert_eq!(hits.len(), 2, "{hits:?}");
        assert!(close(hits[0].1, hits[1].1), "banana once in each body, equal lengths: {hits:?}");
    }

    #[test]
    fn a_term_missing_from_the_given_statistics_is_an_error() {
        let (_dir, index) = open_temp();
        index.upsert(vec![public("1", "apple", "apple banana")]).expect("upsert");
        let stats = index.term_statistics(&query("apple", Viewer::Unrestricted)).expect("stats");
        let err = index
            .search_with_statistics(&query("apple bananas", Viewer::Unrestricted), &stats)
            .expect_err("lacks banana");
        assert!(matches!(err, IndexError::InvalidQuery(_)), "{err:?}");
        assert!(err.to_string().contains(r#"the given statistics lack term "banana""#), "{err}");

        let mut no_tokens = TermStatistics::new(1);
        no_tokens.set_doc_freq("title", "appl", 1);
        no_tokens.set_doc_freq("body", "appl", 1);
        let err =
            index.search_with_statistics(&query("apple", Viewer::Unrestricted), &no_tokens).expect_err("no tokens");
        assert!(err.to_string().contains("token count of field"), "{err}");

        let mut inconsistent = stats.clone();
        inconsistent.set_doc_freq("body", "appl", 5);
        let err =
            index.search_with_statistics(&query("apple", Viewer::Unrestricted), &inconsistent).expect_err("df > docs");
        assert!(err.to_string().contains("inconsistent"), "{err}");

        let err = index.term_statistics(&query(r#""apple ban"*"#, Viewer::Unrestricted)).expect_err("phrase prefix");
        assert!(err.to_string().contains("phrase prefix"), "{err}");
        let err =
            index.search_with_statistics(&query(r#""apple ban"*"#, Viewer::Unrestricted), &stats).expect_err("prefix");
        assert!(err.to_string().contains("phrase prefix"), "{err}");
    }

    #[test]
    fn an_empty_index_reports_zeros_and_finds_nothing_with_merged_statistics() {
        let (_empty_dir, empty) = open_temp();
        let (_full_dir, full) = open_temp();
        full.upsert(vec![public("1", "apple", "apple banana"), public("2", "", "banana")]).expect("upsert");
        for viewer in [Viewer::Unrestricted, Viewer::Anonymous] {
            let q = query("banana", viewer);
            let nothing = empty.term_statistics(&q).expect("stats of an empty index");
            assert_eq!(nothing.total_docs(), 0);
            assert_eq!(nothing.doc_freq("body", "banana"), Some(0));
            assert_eq!(nothing.total_tokens("body"), Some(0));
            let stats = merged(&[&empty, &full], &q);
            assert_eq!(stats, full.term_statistics(&q).expect("stats"), "an empty index adds nothing");
            assert!(empty.search_with_statistics(&q, &stats).expect("search empty").hits.is_empty());
            assert_eq!(full.search_with_statistics(&q, &stats).expect("search full").hits.len(), 2);
            let alone = empty.search_with_statistics(&q, &nothing).expect("empty with its own zeros");
            assert!(alone.hits.is_empty());
        }
    }

    #[test]
    fn statistics_count_only_what_the_viewer_may_read() {
        let (_dir, index) = open_temp();
        index
            .upsert(vec![
                public("p", "", "apple banana"),
                doc("a1", "", "apple apple apple", Acl::tenant("a")),
                doc("b1", "", "apple cherry cherry cherry cherry", Acl::tenant("b")),
                doc("op", "", "apple", Acl::default()),
            ])
            .expect("upsert");
        let stats = |viewer| index.term_statistics(&query("apple", viewer)).expect("stats");
        let everyone = stats(Viewer::Unrestricted);
        assert_eq!(
            (everyone.total_docs(), everyone.doc_freq("body", "appl"), everyone.total_tokens("body")),
            (4, Some(4), Some(11))
        );
        let anonymous = stats(Viewer::Anonymous);
        assert_eq!(
            (anonymous.total_docs(), anonymous.doc_freq("body", "appl"), anonymous.total_tokens("body")),
            (1, Some(1), Some(2))
        );
        let a = stats(tenant("a"));
        assert_eq!((a.total_docs(), a.doc_freq("body", "appl"), a.total_tokens("body")), (2, Some(2), Some(5)));
        // Filters restrict hits and add nothing to scores: one index holding only what tenant a
        // may read scores its hits the same.
        let (_alone_dir, alone) = open_temp();
        alone
            .upsert(vec![public("p", "", "apple banana"), doc("a1", "", "apple apple apple", Acl::tenant("a"))])
            .expect("upsert");
        let q = query("apple", tenant("a"));
        let scored = all_hits(index.search_with_statistics(&q, &a).expect("search"));
        let reference = all_hits(alone.search(&query("apple", Viewer::Unrestricted)).expect("reference"));
        assert_eq!(scored.len(), 2);
        for ((id, score), (ref_id, ref_score)) in scored.iter().zip(&reference) {
            assert_eq!(id, ref_id);
            assert!(close(*score, *ref_score), "{id}: {score} vs {ref_score}");
        }
    }

    #[test]
    fn statistics_do_not_see_other_tenants() {
        let (_dir, index) = open_temp();
        index
            .upsert(vec![public("p", "apple", "apple banana"), doc("a1", "", "apple", Acl::tenant("a"))])
            .expect("upsert");
        let q = query("apple banana zulu", tenant("a"));
        let before = index.term_statistics(&q).expect("before");
        let anonymous_before = index.term_statistics(&query("apple banana zulu", Viewer::Anonymous)).expect("anon");
        // Tenant b writes, replaces and deletes documents full of the same words.
        let b = crate::Writer::Tenant("b".to_owned());
        let theirs: Vec<Document> = (0..20)
            .map(|i| doc(&format!("b{i}"), "apple zulu", &"banana apple zulu ".repeat(i + 1), Acl::tenant("b")))
            .collect();
        index.upsert_as(theirs, &b).expect("tenant b writes");
        index.upsert_as(vec![doc("b0", "", "zulu", Acl::tenant("b"))], &b).expect("tenant b replaces");
        index.delete_as(vec![crate::DocRef { collection: "c".into(), id: "b1".into() }], &b).expect("tenant b deletes");
        assert_eq!(index.term_statistics(&q).expect("after"), before, "tenant a learns nothing of tenant b");
        let anonymous_after = index.term_statistics(&query("apple banana zulu", Viewer::Anonymous)).expect("anon");
        assert_eq!(anonymous_after, anonymous_before);
        assert_ne!(index.term_statistics(&query("apple", Viewer::Unrestricted)).expect("operator").total_docs(), 2);
    }

    #[test]
    fn the_analyzer_and_per_term_statistics_agree_with_the_index() {
        let (_dir, index) = open_temp();
        index
            .upsert(vec![
                public("1", "Replicas", "replicated logs replicate"),
                doc("2", "", "replication of apples", Acl::tenant("a")),
            ])
            .expect("upsert");
        let analyzer = QueryAnalyzer::new();
        for viewer in [Viewer::Unrestricted, Viewer::Anonymous, tenant("a")] {
            let q = query(r#"Replication "apple logs" -zulu title:replicas"#, viewer.clone());
            let (generation, stats) = index.term_statistics_at_generation(&q).expect("stats");
            assert_eq!(generation, index.generation());
            let terms = analyzer.terms(&q).expect("analyse");
            let reported: Vec<FieldTerm> = stats
                .doc_freqs()
                .map(|(field, term, _)| FieldTerm { field: field.to_owned(), term: term.to_owned() })
                .collect();
            assert_eq!(terms, reported, "the analyzer names exactly the index's terms");
            assert!(terms.contains(&FieldTerm { field: "body".into(), term: "replic".into() }), "{terms:?}");
            // Asking term by term gives the same numbers.
            for term in &terms {
                let (at, one) = index.statistics_of_terms(std::slice::from_ref(term), &viewer).expect("one term");
                assert_eq!(at, generation);
                assert_eq!(one.total_docs(), stats.total_docs());
                assert_eq!(one.doc_freq(&term.field, &term.term), stats.doc_freq(&term.field, &term.term));
                assert_eq!(one.total_tokens(&term.field), stats.total_tokens(&term.field));
            }
            let (_, all) = index.statistics_of_terms(&terms, &viewer).expect("all terms");
            assert_eq!(all, stats);
        }
        index.upsert(vec![public("3", "", "more replicas")]).expect("write");
        let (after, _) = index.term_statistics_at_generation(&query("replicas", Viewer::Anonymous)).expect("stats");
        assert_eq!(after, index.generation(), "a write moves the generation the statistics carry");

        for field in ["metadata", "nosuch"] {
            let bad = [FieldTerm { field: field.into(), term: "x".into() }];
            let err = index.statistics_of_terms(&bad, &Viewer::Anonymous).expect_err("not searchable");
            assert!(err.to_string().contains("holds no searchable text"), "{err}");
        }
        let too_many: Vec<FieldTerm> =
            (0..=MAX_STATISTICS_TERMS).map(|i| FieldTerm { field: "body".into(), term: i.to_string() }).collect();
        assert!(index.statistics_of_terms(&too_many, &Viewer::Anonymous).is_err());
        assert!(analyzer.terms(&query("", Viewer::Anonymous)).is_err(), "an empty query fails like a search");
    }

    /// Realistic scale: vaswani (11,429 abstracts) split over three indexes ranks like one, and
    /// the cost of gathering statistics is printed (run with --nocapture; no timing asserted).
    #[test]
    fn statistics_on_vaswani_match_one_index_and_their_cost() {
        let Some(text) = crate::test_data::vaswani_file("doc-text.trec") else {
            return;
        };
        let mut docs = crate::ingest::parse_trec(&text, "vaswani").expect("parse");
        for (i, document) in docs.iter_mut().enumerate() {
            document.acl = if i % 2 == 0 { Acl::public() } else { Acl::tenant("a") };
        }
        let (_single_dir, single) = open_temp();
        let shards: Vec<(tempfile::TempDir, DocumentIndex)> = (0..3).map(|_| open_temp()).collect();
        for batch in docs.chunks(crate::MAX_BATCH) {
            single.upsert(batch.to_vec()).expect("upsert single");
        }
        for (n, (_, shard)) in shards.iter().enumerate() {
            let part: Vec<Document> = docs.iter().skip(n).step_by(3).cloned().collect();
            shard.upsert(part).expect("upsert shard");
        }
        let shard_refs: Vec<&DocumentIndex> = shards.iter().map(|(_, shard)| shard).collect();
        let texts = [
            "MEASUREMENT OF DIELECTRIC CONSTANT OF LIQUIDS BY THE USE OF MICROWAVE TECHNIQUES",
            "electron density in the ionosphere",
            "transistor amplifier noise",
        ];
        for viewer in [Viewer::Unrestricted, Viewer::Anonymous, tenant("a")] {
            for text in texts {
                let mut q = query(text, viewer.clone());
                q.limit = 10;
                let rounds: u32 = 20;
                let started = Instant::now();
                for _ in 0..rounds {
                    single.term_statistics(&q).expect("stats");
                }
                let per_call = started.elapsed() / rounds;
                let own = single.term_statistics(&q).expect("stats");
                let started = Instant::now();
                let want = all_hits(single.search_with_statistics(&q, &own).expect("single"));
                let search_time = started.elapsed();
                println!(
                    "vaswani {viewer:?} {:?}: term_statistics {per_call:?} per call ({} terms, {} readable docs), search {search_time:?}",
                    &text[..text.len().min(24)],
                    own.term_count(),
                    own.total_docs()
                );
                let stats = merged(&shard_refs, &q);
                assert_eq!(stats, own);
                let got = federated(&shard_refs, &q, &stats);
                let got = &got[..got.len().min(10)];
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert!(close(g.1, w.1), "{viewer:?} {text}: {got:?} vs {want:?}");
                }
                if viewer == Viewer::Unrestricted {
                    assert_eq!(want, all_hits(single.search(&q).expect("plain")), "operator: same as search");
                }
            }
        }
    }
}
