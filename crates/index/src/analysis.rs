//! Text analysis settings of an index: the analysis profile (stemmer and stop words) that turns
//! title and body text into terms, and the BM25 parameters `k1` and `b` that score them.
//!
//! A [`Profile`] has a canonical name ([`Profile::name`]): `"en_stem"` for today's default
//! (tantivy's built-in `en_stem`: Snowball English, no stop words) and
//! `"stem-<stemmer>_stop-<list>"` otherwise (`"stem-porter_stop-english"`, `"stem-none_stop-none"`).
//! The name is what the index schema records as the tokenizer of its text fields, what a node
//! can announce to the routing code, and what [`Profile::from_name`] reads back; the routing code
//! analyses query text for a profile name with [`Profile::text_analyzer`] or [`analyze`].
//!
//! The chain is always: tantivy's `SimpleTokenizer` (runs of letters and digits), tokens longer
//! than 40 bytes dropped, lowercase, then the stop-word filter, then the stemmer. With the default
//! profile this is exactly tantivy's `en_stem` (the `default_profile_is_tantivys_en_stem` test).
//!
//! [`Bm25Params`] are validated here; the scoring itself lives in the index (tantivy hard-codes
//! `k1 = 1.2`, `b = 0.75`; other values are scored by ragmesh's own term scorer). `k1` and `b`
//! must be identical on every node serving a collection: a federated global-BM25 ranking adds
//! statistics across nodes but each node scores its own hits with its own parameters.
//!
//! [`IndexAnalysis`] gives collections their own profile, `k1` and `b` (`[analysis.collections.NAME]`
//! in the agent file). The index has a title/body field pair per profile and every pair indexes
//! every document (only the default pair stores the text); a search parses the query once per
//! profile involved, matches each collection in its own profile's pair only and scores it with
//! its `k1`/`b`. Each pair's statistics therefore cover the whole index, exactly as a single
//! profile's do: no collection's scores depend on another collection's settings, a federated
//! global-BM25 ranking still equals one index's, and a collection may move to any profile the
//! index already has fields for without a rebuild. The price: indexing time and index size grow
//! with the number of profiles (on vaswani, two profiles: +50 % build time, +36 % bytes; see the
//! `per_collection` test). The same per-collection settings must be configured on every node
//! serving the collection, for the same reason as above.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::BuildHasher as _;
use std::mem;
use std::sync::{Arc, Mutex};

use tantivy::tokenizer::{
    LowerCaser, RemoveLongFilter, SimpleTokenizer, StopWordFilter, TextAnalyzer, Token, TokenFilter, TokenStream,
    Tokenizer,
};

/// Tokens longer than this many bytes are dropped (as in tantivy's `en_stem`).
const MAX_TOKEN_BYTES: usize = 40;
/// Most tokens [`analyze`] returns: a query of [`crate::MAX_QUERY_BYTES`] bytes has fewer.
pub const MAX_ANALYZED_TOKENS: usize = crate::MAX_QUERY_BYTES;
/// Canonical name of the default profile: tantivy's built-in English stemming analyzer.
pub const DEFAULT_PROFILE_NAME: &str = "en_stem";

/// The stemmers a profile may use: the Snowball algorithms tantivy ships, plus the original
/// Porter stemmer, by canonical (Snowball) name.
const STEMMERS: &[(&str, frostem::Algorithm)] = &[
    ("english", frostem::Algorithm::English),
    ("porter", frostem::Algorithm::Porter),
    ("arabic", frostem::Algorithm::Arabic),
    ("danish", frostem::Algorithm::Danish),
    ("dutch", frostem::Algorithm::Dutch),
    ("finnish", frostem::Algorithm::Finnish),
    ("french", frostem::Algorithm::French),
    ("german", frostem::Algorithm::German),
    ("greek", frostem::Algorithm::Greek),
    ("hungarian", frostem::Algorithm::Hungarian),
    ("italian", frostem::Algorithm::Italian),
    ("norwegian", frostem::Algorithm::Norwegian),
    ("portuguese", frostem::Algorithm::Portuguese),
    ("romanian", frostem::Algorithm::Romanian),
    ("russian", frostem::Algorithm::Russian),
    ("spanish", frostem::Algorithm::Spanish),
    ("swedish", frostem::Algorithm::Swedish),
    ("tamil", frostem::Algorithm::Tamil),
    ("turkish", frostem::Algorithm::Turkish),
];

/// How terms are reduced to a stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stemming {
    /// No stemming: "replicas" and "replica" are different terms.
    None,
    /// A Snowball stemmer, by canonical name (`"english"`, `"porter"`, `"german"`...).
    Snowball(&'static str),
}

impl Stemming {
    /// Parses a configured name: `"none"` or one of [`Stemming::names`] (case-insensitive).
    pub fn parse(name: &str) -> Result<Stemming, String> {
        let wanted = name.trim().to_ascii_lowercase();
        if wanted == "none" {
            return Ok(Stemming::None);
        }
        match STEMMERS.iter().find(|(known, _)| *known == wanted) {
            Some((known, _)) => Ok(Stemming::Snowball(known)),
            None => Err(format!("unknown stemming {name:?}: use \"none\" or one of {}", Stemming::names().join(", "))),
        }
    }

    /// The canonical name (`"none"`, `"english"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Stemming::None => "none",
            Stemming::Snowball(name) => name,
        }
    }

    /// Every stemmer name [`Stemming::parse`] accepts besides `"none"`.
    pub fn names() -> Vec<&'static str> {
        STEMMERS.iter().map(|(name, _)| *name).collect()
    }

    fn algorithm(self) -> Option<frostem::Algorithm> {
        let Stemming::Snowball(name) = self else { return None };
        STEMMERS.iter().find(|(known, _)| *known == name).map(|(_, algorithm)| *algorithm)
    }
}

/// Which words are dropped before stemming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopWords {
    /// Every word is kept.
    None,
    /// Lucene's English list (33 words: "a", "and", "of", "the", ...), as tantivy ships it.
    English,
}

impl StopWords {
    /// Parses a configured name: `"none"` or `"english"` (case-insensitive).
    pub fn parse(name: &str) -> Result<StopWords, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(StopWords::None),
            "english" => Ok(StopWords::English),
            _ => Err(format!("unknown stop_words {name:?}: use \"english\" or \"none\"")),
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            StopWords::None => "none",
            StopWords::English => "english",
        }
    }
}

/// An analysis profile: the stemmer and stop-word list applied to title and body text, at index
/// time and at query time alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Profile {
    /// The stemmer.
    pub stemming: Stemming,
    /// The stop-word list.
    pub stop_words: StopWords,
}

impl Default for Profile {
    /// Today's analysis: Snowball English stemming, no stop words (tantivy's `en_stem`).
    fn default() -> Self {
        Profile { stemming: Stemming::Snowball("english"), stop_words: StopWords::None }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Profile {
    /// The canonical name: [`DEFAULT_PROFILE_NAME`] for the default profile,
    /// `stem-<stemming>_stop-<stop words>` otherwise.
    pub fn name(&self) -> String {
        if *self == Profile::default() {
            return DEFAULT_PROFILE_NAME.to_owned();
        }
        format!("stem-{}_stop-{}", self.stemming.name(), self.stop_words.name())
    }

    /// The profile a canonical name (as [`Profile::name`] writes it) stands for; `None` for any
    /// other string.
    pub fn from_name(name: &str) -> Option<Profile> {
        if name == DEFAULT_PROFILE_NAME {
            return Some(Profile::default());
        }
        let rest = name.strip_prefix("stem-")?;
        let (stemming, stop_words) = rest.split_once("_stop-")?;
        let profile =
            Profile { stemming: Stemming::parse(stemming).ok()?, stop_words: StopWords::parse(stop_words).ok()? };
        // Only canonical spellings: a name must round-trip.
        (profile.name() == name || (profile == Profile::default() && name == "stem-english_stop-none"))
            .then_some(profile)
    }

    /// The tantivy analyzer of this profile (see the module docs for the chain).
    pub fn text_analyzer(&self) -> TextAnalyzer {
        self.analyzer(true)
    }

    fn analyzer(&self, memo: bool) -> TextAnalyzer {
        let mut builder = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
            .filter(LowerCaser)
            .dynamic();
        if self.stop_words == StopWords::English
            && let Some(filter) = StopWordFilter::new(tantivy::tokenizer::Language::English)
        {
            builder = builder.filter_dynamic(filter);
        }
        if let Some(algorithm) = self.stemming.algorithm() {
            builder = builder.filter_dynamic(SnowballFilter { algorithm, memo: memo.then(|| StemMemo::of(algorithm)) });
        }
        builder.build()
    }
}

/// The terms `text` analyses to under `profile`, in order, at most [`MAX_ANALYZED_TOKENS`].
pub fn analyze(profile: &Profile, text: &str) -> Vec<String> {
    let mut analyzer = profile.text_analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut terms = Vec::new();
    while terms.len() < MAX_ANALYZED_TOKENS && stream.advance() {
        terms.push(stream.token().text.clone());
    }
    terms
}

/// BM25's term-saturation (`k1`) and length-normalisation (`b`) parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    /// How fast repeated occurrences stop adding score: 0 counts presence only.
    pub k1: f32,
    /// How much a long field is penalised: 0 not at all, 1 fully.
    pub b: f32,
}

/// Largest accepted `k1` (scores saturate long before; larger values are typos).
pub const MAX_K1: f32 = 10.0;

impl Default for Bm25Params {
    /// tantivy's (and Lucene's) constants: `k1 = 1.2`, `b = 0.75`.
    fn default() -> Self {
        Bm25Params { k1: 1.2, b: 0.75 }
    }
}

impl Bm25Params {
    /// Checked parameters: `k1` in `0..=10`, `b` in `0..=1`, both finite.
    pub fn new(k1: f32, b: f32) -> Result<Bm25Params, String> {
        if !k1.is_finite() || !(0.0..=MAX_K1).contains(&k1) {
            return Err(format!("k1 = {k1} is out of range: use a value from 0 to {MAX_K1} (the usual is 1.2)"));
        }
        if !b.is_finite() || !(0.0..=1.0).contains(&b) {
            return Err(format!("b = {b} is out of range: use a value from 0 to 1 (the usual is 0.75)"));
        }
        Ok(Bm25Params { k1, b })
    }

    /// Whether these are tantivy's own constants, scored by tantivy's native (block-max WAND)
    /// path.
    pub fn is_tantivy_default(&self) -> bool {
        *self == Bm25Params::default()
    }
}

/// Everything about analysis and scoring an index is opened with.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AnalysisSettings {
    /// How title and body text becomes terms.
    pub profile: Profile,
    /// BM25 parameters.
    pub bm25: Bm25Params,
}

/// Most collections with their own analysis settings in one index.
pub const MAX_COLLECTION_OVERRIDES: usize = 1024;
/// Most distinct analysis profiles in one index: each adds a title and a body field (and a
/// length-norm byte per field and document).
pub const MAX_PROFILES: usize = 8;

/// The analysis of every collection of an index: default settings, and the collections that
/// override them (their own profile, `k1` and `b`).
///
/// Every profile in use has its own title and body fields (`"title"`/`"body"` for the default
/// profile, `"title@<profile>"`/`"body@<profile>"` for the others: the same names on every node,
/// so statistics keyed by field name add up across nodes), each indexing every document; a
/// collection is matched in its own profile's fields and scored with its `k1` and `b`. Like the
/// default settings, a collection's overrides must be identical on every node serving it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IndexAnalysis {
    default: AnalysisSettings,
    overrides: BTreeMap<String, AnalysisSettings>,
}

impl IndexAnalysis {
    /// Every collection analysed and scored with `settings`.
    pub fn uniform(settings: AnalysisSettings) -> Self {
        IndexAnalysis { default: settings, overrides: BTreeMap::new() }
    }

    /// `default` for every collection but those of `overrides`. An override equal to the default
    /// is dropped. Fails on an invalid collection name, more than [`MAX_COLLECTION_OVERRIDES`]
    /// overrides or more than [`MAX_PROFILES`] distinct profiles.
    pub fn new(default: AnalysisSettings, overrides: BTreeMap<String, AnalysisSettings>) -> Result<Self, String> {
        if overrides.len() > MAX_COLLECTION_OVERRIDES {
            return Err(format!(
                "{} collections override the analysis settings, more than the {MAX_COLLECTION_OVERRIDES} allowed",
                overrides.len()
            ));
        }
        if let Some(problem) = overrides.keys().find_map(|name| crate::document::collection_problem(name)) {
            return Err(problem);
        }
        let overrides: BTreeMap<String, AnalysisSettings> =
            overrides.into_iter().filter(|(_, settings)| *settings != default).collect();
        let analysis = IndexAnalysis { default, overrides };
        let profiles = analysis.profiles();
        if profiles.len() > MAX_PROFILES {
            let names: Vec<String> = profiles.iter().map(Profile::name).collect();
            return Err(format!(
                "{} distinct analysis profiles ({}), more than the {MAX_PROFILES} one index may hold: give more \
                 collections the same stemming and stop_words",
                profiles.len(),
                names.join(", ")
            ));
        }
        Ok(analysis)
    }

    /// The settings of every collection without an override.
    pub fn default_settings(&self) -> AnalysisSettings {
        self.default
    }

    /// The settings of collection `name`.
    pub fn for_collection(&self, name: &str) -> AnalysisSettings {
        self.overrides.get(name).copied().unwrap_or(self.default)
    }

    /// The collections with their own settings, sorted by name.
    pub fn overrides(&self) -> impl Iterator<Item = (&str, AnalysisSettings)> {
        self.overrides.iter().map(|(name, settings)| (name.as_str(), *settings))
    }

    /// Whether some collection has its own settings.
    pub fn has_overrides(&self) -> bool {
        !self.overrides.is_empty()
    }

    /// The distinct profiles in use: the default's first, then the others sorted by name.
    pub fn profiles(&self) -> Vec<Profile> {
        let mut others: Vec<Profile> = self.overrides.values().map(|settings| settings.profile).collect();
        others.retain(|profile| *profile != self.default.profile);
        others.sort_by_key(Profile::name);
        others.dedup();
        let mut profiles = vec![self.default.profile];
        profiles.extend(others);
        profiles
    }

    /// The distinct settings in use: the default's first, then the others in a fixed order.
    pub fn distinct_settings(&self) -> Vec<AnalysisSettings> {
        let mut settings = vec![self.default];
        for candidate in self.overrides.values() {
            if !settings.contains(candidate) {
                settings.push(*candidate);
            }
        }
        settings[1..].sort_by(|a, b| {
            a.profile
                .name()
                .cmp(&b.profile.name())
                .then(a.bm25.k1.total_cmp(&b.bm25.k1))
                .then(a.bm25.b.total_cmp(&b.bm25.b))
        });
        settings
    }

    /// The names of the title and body fields holding text analysed by `profile` in an index
    /// of this analysis (see the type docs).
    pub fn field_names(&self, profile: &Profile) -> (String, String) {
        text_field_names(profile, &self.default.profile)
    }
}

/// The title and body field names of `profile` in an index whose default profile is `default`.
pub(crate) fn text_field_names(profile: &Profile, default: &Profile) -> (String, String) {
    if profile == default {
        ("title".to_owned(), "body".to_owned())
    } else {
        (format!("title@{}", profile.name()), format!("body@{}", profile.name()))
    }
}

/// Shards of a stem memo (one lock each).
const STEM_MEMO_SHARDS: usize = 8;
/// Words one shard remembers the stem of; it is emptied when full.
const STEM_MEMO_SHARD_WORDS: usize = 1024;

/// A token filter applying a Snowball stemmer (like tantivy's `Stemmer`, for any frostem
/// algorithm, Porter included), through the process's [`StemMemo`] of that stemmer, if any.
#[derive(Clone)]
struct SnowballFilter {
    algorithm: frostem::Algorithm,
    memo: Option<Arc<StemMemo>>,
}

impl TokenFilter for SnowballFilter {
    type Tokenizer<T: Tokenizer> = SnowballTokenizer<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> SnowballTokenizer<T> {
        SnowballTokenizer { algorithm: self.algorithm, memo: self.memo, inner: tokenizer }
    }
}

#[derive(Clone)]
struct SnowballTokenizer<T> {
    algorithm: frostem::Algorithm,
    memo: Option<Arc<StemMemo>>,
    inner: T,
}

impl<T: Tokenizer> Tokenizer for SnowballTokenizer<T> {
    type TokenStream<'a> = SnowballStream<'a, T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        SnowballStream {
            tail: self.inner.token_stream(text),
            stemmer: frostem::Stemmer::new(self.algorithm),
            memo: self.memo.as_deref(),
            buffer: String::new(),
        }
    }
}

struct SnowballStream<'a, T> {
    tail: T,
    stemmer: frostem::Stemmer,
    memo: Option<&'a StemMemo>,
    buffer: String,
}

impl<T: TokenStream> TokenStream for SnowballStream<'_, T> {
    fn advance(&mut self) -> bool {
        if !self.tail.advance() {
            return false;
        }
        let token = self.tail.token_mut();
        match self.memo {
            Some(memo) => memo.stem(&self.stemmer, &mut token.text),
            None => stem_in_place(&self.stemmer, &mut token.text, &mut self.buffer),
        }
        true
    }

    fn token(&self) -> &Token {
        self.tail.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.tail.token_mut()
    }
}

/// Replaces `word` by its stem; `buffer` is spare room for a stem that borrows from `word`.
fn stem_in_place(stemmer: &frostem::Stemmer, word: &mut String, buffer: &mut String) {
    match stemmer.stem(word) {
        std::borrow::Cow::Owned(stemmed) => *word = stemmed,
        std::borrow::Cow::Borrowed(stemmed) => {
            buffer.clear();
            buffer.push_str(stemmed);
            mem::swap(word, buffer);
        }
    }
}

/// Recent stems of one stemmer, shared by every analyzer of the process that uses it.
///
/// Stemming a word costs a few hundred nanoseconds, and an agent stems every word of every hit
/// it builds a snippet for (tantivy's snippet generator analyses the hit's whole text), besides
/// every word it indexes or reads in a query: in a profile of an agent's searches, stemming was
/// 14 % of its CPU. Words follow Zipf's law, so a small memo answers most of them: up to
/// [`STEM_MEMO_SHARDS`] × [`STEM_MEMO_SHARD_WORDS`] words of at most 40 bytes (tokens are cut
/// there), about 1 MiB per stemmer in use, each shard forgetting all its words when full. It is one per
/// process, not one per thread, because an agent's searches run on as many blocking threads as
/// it has searches in flight (a memo per thread cost 8 MiB at 16 concurrent searches). The
/// maps are seeded per process (foldhash), so text cannot be written to make lookups collide.
struct StemMemo {
    hasher: foldhash::fast::RandomState,
    shards: [Mutex<foldhash::HashMap<Box<str>, Box<str>>>; STEM_MEMO_SHARDS],
}

impl StemMemo {
    /// The process's memo of `algorithm`.
    fn of(algorithm: frostem::Algorithm) -> Arc<StemMemo> {
        static MEMOS: Mutex<Vec<(frostem::Algorithm, Arc<StemMemo>)>> = Mutex::new(Vec::new());
        let mut memos = MEMOS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, memo)) = memos.iter().find(|(known, _)| *known == algorithm) {
            return memo.clone();
        }
        let memo = Arc::new(StemMemo { hasher: Default::default(), shards: Default::default() });
        memos.push((algorithm, memo.clone()));
        memo
    }

    /// Replaces `word` by its stem under `stemmer` (this memo's algorithm).
    fn stem(&self, stemmer: &frostem::Stemmer, word: &mut String) {
        let shard = &self.shards[(self.hasher.hash_one(word.as_str()) % STEM_MEMO_SHARDS as u64) as usize];
        let lock = || shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(stem) = lock().get(word.as_str()) {
            word.clear();
            word.push_str(stem);
            return;
        }
        let stem: Box<str> = stemmer.stem(word).into();
        let original = mem::replace(word, stem.to_string());
        let mut table = lock();
        if table.len() >= STEM_MEMO_SHARD_WORDS {
            table.clear();
        }
        table.insert(original.into_boxed_str(), stem);
    }

    /// Words remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().map_or(0, |table| table.len())).sum()
    }
}

/// The analyzer of `profile` without the stem memo: the baseline of the `analysis` bench.
#[doc(hidden)]
pub fn text_analyzer_without_stem_memo(profile: &Profile) -> TextAnalyzer {
    profile.analyzer(false)
}

/// Every term `analyzer` makes of `text`, uncapped (unlike [`analyze`]): how the `analysis`
/// bench and the tests compare two analyzers.
#[doc(hidden)]
pub fn all_terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut stream = analyzer.token_stream(text);
    let mut terms = Vec::new();
    while stream.advance() {
        terms.push(stream.token().text.clone());
    }
    terms
}

#[cfg(test)]
mod tests {
    use tantivy::tokenizer::TokenizerManager;

    use super::*;

    const SAMPLE: &str = "The Replicas of the replicated DATABASES were running, and it's a \
        supercalifragilisticexpialidocious-ly longwordthatgoesonandonandonforeverandeverandever \
        connections généralement 42nd";

    fn tantivy_terms(name: &str, text: &str) -> Vec<String> {
        all_terms(&mut TokenizerManager::default().get(name).expect("builtin tokenizer"), text)
    }

    #[test]
    fn default_profile_is_tantivys_en_stem() {
        assert_eq!(Profile::default().name(), "en_stem");
        assert_eq!(analyze(&Profile::default(), SAMPLE), tantivy_terms("en_stem", SAMPLE));
        assert!(analyze(&Profile::default(), SAMPLE).contains(&"replic".to_owned()));
    }

    #[test]
    fn no_stemming_no_stop_words_is_tantivys_default_tokenizer() {
        let plain = Profile { stemming: Stemming::None, stop_words: StopWords::None };
        assert_eq!(plain.name(), "stem-none_stop-none");
        assert_eq!(analyze(&plain, SAMPLE), tantivy_terms("default", SAMPLE));
    }

    #[test]
    fn stop_words_go_before_stemming_and_porter_differs_from_snowball_english() {
        let porter = Profile { stemming: Stemming::Snowball("porter"), stop_words: StopWords::English };
        let terms = analyze(&porter, "The generalizations of the running replicas");
        assert_eq!(terms, ["gener", "run", "replica"]);
        let english = Profile { stemming: Stemming::Snowball("english"), stop_words: StopWords::English };
        assert_eq!(analyze(&english, "The generalizations of the running replicas"), ["general", "run", "replica"]);
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_none() {
        for stemming in Stemming::names().into_iter().map(Stemming::Snowball).chain([Stemming::None]) {
            for stop_words in [StopWords::None, StopWords::English] {
                let profile = Profile { stemming, stop_words };
                assert_eq!(Profile::from_name(&profile.name()), Some(profile), "{}", profile.name());
            }
        }
        assert_eq!(Profile::from_name("stem-english_stop-none"), Some(Profile::default()));
        for bad in ["", "default", "stem-klingon_stop-none", "stem-porter_stop-french", "stem-PORTER_stop-none", "raw"]
        {
            assert_eq!(Profile::from_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn parse_errors_name_the_choices() {
        let err = Stemming::parse("klingon").expect_err("unknown");
        assert!(err.contains("porter") && err.contains("none"), "{err}");
        assert_eq!(Stemming::parse(" Porter "), Ok(Stemming::Snowball("porter")));
        assert!(StopWords::parse("french").expect_err("unknown").contains("english"));
    }

    #[test]
    fn bm25_params_are_checked() {
        assert!(Bm25Params::default().is_tantivy_default());
        assert!(Bm25Params::new(0.9, 0.4).is_ok());
        assert!(!Bm25Params::new(0.9, 0.4).expect("valid").is_tantivy_default());
        for (k1, b) in [(-0.1, 0.5), (11.0, 0.5), (f32::NAN, 0.5), (1.2, 1.5), (1.2, -0.01), (1.2, f32::INFINITY)] {
            assert!(Bm25Params::new(k1, b).is_err(), "k1={k1} b={b}");
        }
    }

    #[test]
    fn the_stem_memo_changes_no_term_when_full_or_shared_by_stemmers() {
        let english = Profile::default();
        let porter = Profile { stemming: Stemming::Snowball("porter"), stop_words: StopWords::None };
        // More distinct words than the memo holds, so that it is emptied midway, with words
        // whose English and Porter stems differ ("generously": "generous" and "gener").
        let mut text = String::from("generously generously running");
        for i in 0..(2 * STEM_MEMO_SHARDS * STEM_MEMO_SHARD_WORDS) {
            text.push_str(&format!(" relational{i}ly connections hopefulness{i}"));
        }
        for profile in [english, porter] {
            let fresh = all_terms(&mut text_analyzer_without_stem_memo(&profile), &text);
            assert_eq!(all_terms(&mut profile.text_analyzer(), &text), fresh, "{}", profile.name());
            // Again, now from a memo that holds the words.
            assert_eq!(all_terms(&mut profile.text_analyzer(), &text), fresh, "{}", profile.name());
        }
        assert_ne!(analyze(&english, "generously"), analyze(&porter, "generously"), "the stemmers differ here");
        for algorithm in [frostem::Algorithm::English, frostem::Algorithm::Porter] {
            let remembered = StemMemo::of(algorithm).len();
            assert!(remembered > 0 && remembered <= STEM_MEMO_SHARDS * STEM_MEMO_SHARD_WORDS, "bounded: {remembered}");
        }
        assert!(Arc::ptr_eq(&StemMemo::of(frostem::Algorithm::English), &StemMemo::of(frostem::Algorithm::English)));
    }

    proptest::proptest! {
        #[test]
        fn memoized_stems_are_the_stemmers_own(words in proptest::collection::vec("[a-zA-Z\u{e0}-\u{ff}]{1,14}", 1..40)) {
            let text = words.join(" ");
            for profile in [Profile::default(), Profile { stemming: Stemming::Snowball("porter"), stop_words: StopWords::English }] {
                let fresh = all_terms(&mut text_analyzer_without_stem_memo(&profile), &text);
                proptest::prop_assert_eq!(all_terms(&mut profile.text_analyzer(), &text), fresh);
            }
        }
    }
}
