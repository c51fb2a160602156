//! BM25 with configurable `k1` and `b`: tantivy 0.27 hard-codes `k1 = 1.2, b = 0.75`, so other
//! values are scored by a term query of our own that replaces tantivy's term queries in the
//! parsed query tree.
//!
//! [`rewrite`] walks the tree the query parser built: boolean queries are rebuilt around their
//! rewritten clauses, a term query on a text field becomes a [`Bm25TermQuery`] carrying that
//! field's boost (the parser is built without field boosts for this path, see
//! `DocumentIndex::open_with`), and every other leaf is kept as tantivy built it, wrapped in the
//! title boost when all of its terms are title terms. Those other leaves (phrases, explicit
//! `^` boosts, ranges) are therefore scored with tantivy's constants: documented, and the same
//! on every node.
//!
//! A [`Bm25TermQuery`] reads its statistics from the same [`tantivy::query::Bm25StatisticsProvider`]
//! tantivy's would (the searcher, or given global statistics), and computes every number in the
//! same order and precision as tantivy's `Bm25Weight`, so at `k1 = 1.2, b = 0.75` a term's score
//! is bit-for-bit tantivy's (the `custom_scoring_at_tantivys_constants_equals_tantivy` property
//! test). What it gives up is block-max WAND: top-k searches visit every matching document. The
//! index therefore uses tantivy's native path whenever the parameters are tantivy's.

use std::sync::Arc;

use tantivy::fieldnorm::FieldNormReader;
use tantivy::postings::{Postings, SegmentPostings};
use tantivy::query::{
    BooleanQuery, BoostQuery, EmptyScorer, EnableScoring, Explanation, Query, Scorer, TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, DocSet, Score, SegmentReader, TantivyError, Term};

use crate::analysis::Bm25Params;

/// Rewrites `query` so that its text-field term queries score with `params`. `fields` lists the
/// text fields with their boosts; term queries on other fields (collection and ACL filters) are
/// kept as they are.
pub(super) fn rewrite(query: Box<dyn Query>, params: Bm25Params, fields: &[(Field, Score)]) -> Box<dyn Query> {
    if let Some(boolean) = query.downcast_ref::<BooleanQuery>() {
        let clauses = boolean.clauses().iter().map(|(occur, sub)| (*occur, rewrite(sub.box_clone(), params, fields)));
        return Box::new(BooleanQuery::with_minimum_required_clauses(
            clauses.collect(),
            boolean.get_minimum_number_should_match(),
        ));
    }
    if let Some(term) = query.downcast_ref::<TermQuery>() {
        let field = term.term().field();
        if let Some((_, boost)) = fields.iter().find(|(known, _)| *known == field) {
            return Box::new(Bm25TermQuery { term: term.term().clone(), params, boost: *boost });
        }
        return query;
    }
    // Any other leaf keeps tantivy's scoring; it still gets its field's boost.
    let mut leaf_fields = Vec::new();
    query.query_terms(&mut |term, _| leaf_fields.push(term.field()));
    let Some(first) = leaf_fields.first().copied() else { return query };
    if leaf_fields.iter().any(|field| *field != first) {
        return query;
    }
    match fields.iter().find(|(known, _)| *known == first) {
        Some((_, boost)) if *boost != 1.0 => Box::new(BoostQuery::new(query, *boost)),
        _ => query,
    }
}

/// A single-term query scored with BM25 under configurable `k1` and `b`.
#[derive(Debug, Clone)]
pub(super) struct Bm25TermQuery {
    term: Term,
    params: Bm25Params,
    /// The term's field boost (the title's boost, or 1).
    boost: Score,
}

impl Query for Bm25TermQuery {
    fn weight(&self, enable_scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let EnableScoring::Enabled { statistics_provider, .. } = enable_scoring else {
            // No scores wanted: tantivy's term query matches the same documents.
            return TermQuery::new(self.term.clone(), IndexRecordOption::Basic).weight(enable_scoring);
        };
        let field = self.term.field();
        let total_docs = statistics_provider.total_num_docs()?;
        let total_tokens = statistics_provider.total_num_tokens(field)?;
        let doc_freq = statistics_provider.doc_freq(&self.term)?;
        if doc_freq > total_docs {
            return Err(TantivyError::InvalidArgument(format!(
                "term in {doc_freq} documents of only {total_docs}: inconsistent statistics"
            )));
        }
        // The same operations, in the same f32 order, as tantivy's Bm25Weight.
        let average_fieldnorm = total_tokens as Score / total_docs as Score;
        let x = ((total_docs - doc_freq) as Score + 0.5) / (doc_freq as Score + 0.5);
        let idf = (1.0 + x).ln();
        let Bm25Params { k1, b } = self.params;
        let mut cache = [0.0; 256];
        for (fieldnorm_id, norm) in cache.iter_mut().enumerate() {
            let fieldnorm = FieldNormReader::id_to_fieldnorm(fieldnorm_id as u8);
            *norm = k1 * (1.0 - b + b * fieldnorm as Score / average_fieldnorm);
        }
        Ok(Box::new(Bm25TermWeight {
            term: self.term.clone(),
            weight: idf * (1.0 + k1),
            boost: self.boost,
            cache: Arc::new(cache),
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        visitor(&self.term, false);
    }
}

struct Bm25TermWeight {
    term: Term,
    /// `idf * (1 + k1)`.
    weight: Score,
    boost: Score,
    /// `k1 * (1 - b + b * dl / avgdl)` per field-norm id.
    cache: Arc<[Score; 256]>,
}

impl Bm25TermWeight {
    fn term_scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Option<Bm25TermScorer>> {
        let field = self.term.field();
        let inverted = reader.inverted_index(field)?;
        let Some(info) = inverted.get_term_info(&self.term)? else { return Ok(None) };
        let postings = inverted.read_postings_from_terminfo(&info, IndexRecordOption::WithFreqs)?;
        let fieldnorms = match reader.fieldnorms_readers().get_field(field)? {
            Some(fieldnorms) => fieldnorms,
            None => FieldNormReader::constant(reader.max_doc(), 1),
        };
        let boost = boost * self.boost;
        let weight = if boost == 1.0 { self.weight } else { self.weight * boost };
        Ok(Some(Bm25TermScorer { postings, fieldnorms, weight, cache: Arc::clone(&self.cache) }))
    }
}

impl Weight for Bm25TermWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(match self.term_scorer(reader, boost)? {
            Some(scorer) => Box::new(scorer),
            None => Box::new(EmptyScorer),
        })
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let not_matching = || TantivyError::InvalidArgument(format!("document #({doc}) does not match"));
        let mut scorer = self.term_scorer(reader, 1.0)?.ok_or_else(not_matching)?;
        if scorer.doc() > doc || scorer.seek(doc) != doc {
            return Err(not_matching());
        }
        let mut explanation = Explanation::new("BM25 with configured k1 and b", scorer.score());
        explanation.add_const("freq, occurrences of term within document", scorer.postings.term_freq() as Score);
        explanation.add_const("dl, length of field", scorer.fieldnorms.fieldnorm(doc) as Score);
        explanation.add_context(format!("Term={:?}", self.term));
        Ok(explanation)
    }
}

struct Bm25TermScorer {
    postings: SegmentPostings,
    fieldnorms: FieldNormReader,
    weight: Score,
    cache: Arc<[Score; 256]>,
}

impl DocSet for Bm25TermScorer {
    fn advance(&mut self) -> DocId {
        self.postings.advance()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        self.postings.seek(target)
    }

    fn doc(&self) -> DocId {
        self.postings.doc()
    }

    fn size_hint(&self) -> u32 {
        self.postings.size_hint()
    }
}

impl Scorer for Bm25TermScorer {
    fn score(&mut self) -> Score {
        let term_freq = self.postings.term_freq() as Score;
        let norm = self.cache[usize::from(self.fieldnorms.fieldnorm_id(self.postings.doc()))];
        self.weight * (term_freq / (term_freq + norm))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use tantivy::DocAddress;
    use tantivy::collector::TopDocs;
    use tantivy::query::QueryParser;

    use super::*;
    use crate::analysis::{AnalysisSettings, Profile, StopWords};
    use crate::index::{DocumentIndex, query_parser};
    use crate::test_data::{doc, open_temp};
    use crate::{IndexError, SearchQuery, Viewer};

    const VOCABULARY: &[&str] = &["apple", "banana", "cherry", "delta", "echo", "fox", "golf", "hotel"];

    fn settings(k1: f32, b: f32) -> AnalysisSettings {
        AnalysisSettings { bm25: Bm25Params::new(k1, b).expect("valid parameters"), ..AnalysisSettings::default() }
    }

    fn open_temp_with(settings: AnalysisSettings) -> (tempfile::TempDir, DocumentIndex) {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = DocumentIndex::open_with(dir.path(), settings).expect("open");
        (dir, index)
    }

    fn query(text: &str) -> SearchQuery {
        SearchQuery { query: text.to_owned(), limit: 1000, viewer: Viewer::Unrestricted, ..SearchQuery::default() }
    }

    /// Every (document, score) `query` finds.
    fn scores(index: &DocumentIndex, query: &dyn Query) -> BTreeMap<DocAddress, Score> {
        let searcher = index.snapshot().searcher;
        let top = searcher.search(query, &TopDocs::with_limit(10_000).order_by_score()).expect("search");
        top.into_iter().map(|(score, address)| (address, score)).collect()
    }

    fn words(range: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(VOCABULARY.to_vec()), range).prop_map(|words| words.join(" "))
    }

    fn arb_query() -> impl Strategy<Value = String> {
        let word = prop::sample::select(VOCABULARY.to_vec());
        let clause = prop_oneof![
            4 => word.clone().prop_map(str::to_owned),
            1 => word.clone().prop_map(|w| format!("+{w}")),
            1 => word.clone().prop_map(|w| format!("title:{w}")),
            1 => (word.clone(), word).prop_map(|(a, b)| format!("\"{a} {b}\"")),
        ];
        prop::collection::vec(clause, 1..5).prop_map(|clauses| clauses.join(" "))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// At tantivy's constants the rewritten query (own term scorer, parser without field
        /// boosts) scores like tantivy's own scoring of the boosted parse: a single term (in
        /// both fields, or in the title) bit for bit; a composite query finds the same documents
        /// with scores equal up to float rounding (tantivy's block-max WAND adds the clause
        /// scores in another order than the plain union: at most an ulp or two).
        #[test]
        fn custom_scoring_at_tantivys_constants_equals_tantivy(
            docs in prop::collection::vec((words(0..4), words(1..16)), 1..40),
            queries in prop::collection::vec(arb_query(), 1..4),
        ) {
            let (_dir, index) = open_temp();
            let all: Vec<_> =
                docs.iter().enumerate().map(|(i, (title, body))| doc("c", &format!("d{i}"), title, body)).collect();
            let half = all.len() / 2;
            for part in [&all[..half], &all[half..]] {
                if !part.is_empty() {
                    index.upsert(part.to_vec()).expect("upsert");
                }
            }
            let tantivy_index = index.snapshot().searcher.index().clone();
            let native_parser = query_parser(&tantivy_index, index.fields.default_pair());
            let plain_parser = QueryParser::for_index(&tantivy_index, vec![index.fields.default_pair().title, index.fields.default_pair().body]);
            let both = |text: &str| {
                let native = native_parser.parse_query(text).expect("parse");
                let plain = plain_parser.parse_query(text).expect("parse");
                let custom = rewrite(plain, Bm25Params::default(), &index.fields.default_pair().boosts());
                (scores(&index, &*custom), scores(&index, &*native))
            };
            for word in VOCABULARY {
                for text in [word.to_string(), format!("title:{word}"), format!("body:{word}")] {
                    let (custom, native) = both(&text);
                    prop_assert_eq!(custom, native, "query {:?}", text);
                }
            }
            for text in &queries {
                let (custom, native) = both(text);
                prop_assert_eq!(custom.keys().collect::<Vec<_>>(), native.keys().collect::<Vec<_>>(), "query {:?}", text);
                for (address, score) in &custom {
                    let want = native[address];
                    prop_assert!((score - want).abs() <= 1e-6 * want.abs(), "{:?}: {} vs {} ({:?})", address, score, want, text);
                }
            }
        }
    }

    #[test]
    fn other_parameters_score_as_the_bm25_formula_says() {
        let (k1, b) = (0.5_f32, 0.3_f32);
        let corpus = || {
            vec![
                doc("c", "short", "", "apple banana"),
                doc("c", "long", "", "apple apple cherry delta echo fox golf hotel"),
                doc("c", "none", "", "cherry"),
            ]
        };
        let (_dir, index) = open_temp_with(settings(k1, b));
        index.upsert(corpus()).expect("upsert");
        let hits = index.search(&query("apple")).expect("search").hits;
        let got: BTreeMap<&str, f32> = hits.iter().map(|hit| (hit.id.as_str(), hit.score)).collect();
        // N = 3, n = 2, body lengths 2, 8, 1: avgdl = 11 / 3.
        let idf = (1.0 + (3.0 - 2.0 + 0.5) / (2.0 + 0.5_f32)).ln();
        let expected = |tf: f32, dl: f32| idf * (1.0 + k1) * tf / (tf + k1 * (1.0 - b + b * dl / (11.0 / 3.0)));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!((got["short"] - expected(1.0, 2.0)).abs() < 1e-5, "{got:?} vs {}", expected(1.0, 2.0));
        assert!((got["long"] - expected(2.0, 8.0)).abs() < 1e-5, "{got:?} vs {}", expected(2.0, 8.0));
        // With these parameters the long document's second occurrence outweighs its length...
        assert!(got["long"] > got["short"], "{got:?}");
        // ...while tantivy's b = 0.75 penalises length enough to rank the short one first.
        let (_default_dir, default) = open_temp();
        default.upsert(corpus()).expect("upsert");
        let default_hits = default.search(&query("apple")).expect("search").hits;
        assert_eq!(default_hits.first().map(|hit| hit.id.as_str()), Some("short"), "{default_hits:?}");
    }

    #[test]
    fn titles_stay_boosted_and_phrases_still_match_under_other_parameters() {
        let (_dir, index) = open_temp_with(settings(0.9, 0.4));
        index
            .upsert(vec![doc("c", "in-title", "apple", "banana cherry"), doc("c", "in-body", "banana", "apple cherry")])
            .expect("upsert");
        let hits = index.search(&query("apple")).expect("search").hits;
        assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["in-title", "in-body"]);
        let phrase = index.search(&query("\"apple cherry\"")).expect("search").hits;
        assert_eq!(phrase.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["in-body"]);
        assert!(phrase[0].snippet.contains("<b>apple</b>"), "{}", phrase[0].snippet);
    }

    #[test]
    fn global_statistics_with_other_parameters_score_like_one_index() {
        let params = settings(0.9, 0.4);
        let (_a_dir, a) = open_temp_with(params);
        let (_b_dir, b) = open_temp_with(params);
        let (_one_dir, one) = open_temp_with(params);
        let docs: Vec<_> = (0..12)
            .map(|i| {
                let body: Vec<&str> = VOCABULARY.iter().cycle().skip(i).step_by(3).take(2 + i % 5).copied().collect();
                doc("c", &format!("d{i}"), VOCABULARY[i % 8], &body.join(" "))
            })
            .collect();
        one.upsert(docs.clone()).expect("upsert one");
        a.upsert(docs[..5].to_vec()).expect("upsert a");
        b.upsert(docs[5..].to_vec()).expect("upsert b");
        let q = query("apple delta fox");
        let mut stats = a.term_statistics(&q).expect("stats a");
        stats.merge(&b.term_statistics(&q).expect("stats b"));
        assert_eq!(stats, one.term_statistics(&q).expect("stats one"));
        let mut federated: Vec<(String, f32)> = Vec::new();
        for shard in [&a, &b] {
            let hits = shard.search_with_statistics(&q, &stats).expect("search with statistics").hits;
            federated.extend(hits.into_iter().map(|hit| (hit.id, hit.score)));
        }
        let single: BTreeMap<String, f32> =
            one.search(&q).expect("search").hits.into_iter().map(|hit| (hit.id, hit.score)).collect();
        assert!(!single.is_empty());
        assert_eq!(federated.len(), single.len(), "{federated:?} vs {single:?}");
        for (id, score) in federated {
            assert!((score - single[&id]).abs() <= 1e-5 * single[&id].abs(), "{id}: {score} vs {}", single[&id]);
        }
    }

    #[test]
    fn an_index_built_with_another_profile_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = DocumentIndex::open(dir.path()).expect("open");
        index.upsert(vec![doc("c", "1", "", "the replicas")]).expect("upsert");
        drop(index);
        let stop = AnalysisSettings {
            profile: Profile { stop_words: StopWords::English, ..Profile::default() },
            ..AnalysisSettings::default()
        };
        let err = DocumentIndex::open_with(dir.path(), stop).expect_err("another profile");
        assert!(
            matches!(&err, IndexError::ProfileMismatch { stored, configured, .. }
            if stored == "en_stem" && configured == "stem-english_stop-english"),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("snapshot") && message.contains("set stemming and stop_words back"), "{message}");
        // Other BM25 parameters need no rebuild.
        let reopened = DocumentIndex::open_with(dir.path(), settings(0.9, 0.4)).expect("same profile");
        assert_eq!(reopened.search(&query("replica")).expect("search").hits.len(), 1);
    }

    #[test]
    fn a_stop_word_profile_indexes_and_searches_without_stop_words() {
        let stop = AnalysisSettings {
            profile: Profile { stop_words: StopWords::English, ..Profile::default() },
            ..AnalysisSettings::default()
        };
        let (_dir, index) = open_temp_with(stop);
        assert_eq!(index.analyzer_name(), "stem-english_stop-english");
        index.upsert(vec![doc("c", "1", "", "the theory of replicas")]).expect("upsert");
        assert!(index.search(&query("the")).expect("search").hits.is_empty());
        assert_eq!(index.search(&query("theory of replication")).expect("search").hits.len(), 1);
        let (_plain_dir, plain) = open_temp();
        plain.upsert(vec![doc("c", "1", "", "the theory of replicas")]).expect("upsert");
        assert_eq!(plain.search(&query("the")).expect("search").hits.len(), 1);
    }
}
