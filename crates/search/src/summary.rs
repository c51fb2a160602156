//! Term summaries for routing: per collection, a Bloom filter of the analyzed terms a node's
//! documents contain and the name of the analyzer that produced them, stamped with the index
//! generation it describes, with a stable versioned byte encoding, and the decision whether a
//! query may match a node at all.
//!
//! Soundness rule: [`NodeSummary::may_match`] answers `false` ("skip, no_match") only when no
//! document of that generation can match; a Bloom filter has no false negatives, a collection the
//! summary does not list holds no live document, and any query part the summary cannot reason
//! about is [`RoutingQuery::Anything`]. A summary of generation `g` proves nothing about any other
//! generation: the router must compare [`NodeSummary::generation`] with the node's current one
//! and ask the node when they differ.

use std::collections::BTreeMap;

/// Version of the byte encoding written by [`NodeSummary::encode`]; a reader refuses any other
/// (the hash function and the layout are part of the version).
/// Version 2 added the analyzer name of each collection; version 1 is refused.
pub const ENCODING_VERSION: u8 = 2;
/// First bytes of every encoded summary.
const MAGIC: [u8; 4] = *b"RMTS";
/// Largest Bloom filter of one collection, in bytes; a collection with more terms than fit at
/// the configured false-positive rate gets a [`TermFilter::Everything`] ("may contain anything").
pub const MAX_FILTER_BYTES: usize = 256 * 1024;
/// Largest sum of the filters of one node, in bytes (a summary rides on the health stream): the
/// largest filters become [`TermFilter::Everything`] until the rest fits.
pub const MAX_NODE_FILTER_BYTES: usize = 1024 * 1024;
/// Most collections one summary lists; past it the summary is marked as overflowing (an unlisted
/// collection may then match anything).
pub const MAX_COLLECTIONS: usize = 4096;
/// Longest collection name accepted in an encoded summary, in bytes.
const MAX_NAME_BYTES: usize = 1024;
/// Longest analyzer name accepted in a summary, in bytes; a collection whose analyzer has a
/// longer name is left out (and the summary marked as overflowing).
pub const MAX_ANALYZER_BYTES: usize = 64;
/// The analyzer of a collection built by [`NodeSummary::new`]: the index's default analysis
/// (tantivy's `en_stem`).
pub const DEFAULT_ANALYZER: &str = "en_stem";
/// Target false-positive rate of a filter: 1 % (about 9.6 bits per term).
pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 0.01;
/// Most hash functions per filter (reached only at very low false-positive rates).
const MAX_HASHES: u32 = 16;
/// Lowest accepted false-positive rate; lower requests are raised to it.
const MIN_FALSE_POSITIVE_RATE: f64 = 1e-6;
/// Highest accepted false-positive rate; higher requests are lowered to it.
const MAX_FALSE_POSITIVE_RATE: f64 = 0.5;

const KIND_EMPTY: u8 = 0;
const KIND_BLOOM: u8 = 1;
const KIND_EVERYTHING: u8 = 2;
const FLAG_OVERFLOW: u8 = 1;

/// Why an encoded summary cannot be read. The router treats every one of them as "no summary":
/// it asks the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    /// Not a term summary at all.
    #[error("not a term summary (bad magic bytes)")]
    BadMagic,
    /// Written by a build with another encoding version.
    #[error(
        "term summary encoding version {found} is not supported by this build (it reads version {supported}): \
         run the same ragmesh version on master and agents; until then the node is always asked"
    )]
    UnsupportedVersion {
        /// Version found in the bytes.
        found: u8,
        /// Version this build reads and writes.
        supported: u8,
    },
    /// The bytes end before the summary does.
    #[error("term summary is truncated: {what} missing")]
    Truncated {
        /// The part that is missing.
        what: &'static str,
    },
    /// The bytes are a summary of this version but break one of its rules.
    #[error("term summary is malformed: {0}")]
    Malformed(String),
}

/// The terms of one collection on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermFilter {
    /// The collection has live documents but no indexed term: no term query can match.
    Empty,
    /// A Bloom filter: a term not in it is surely absent.
    Bloom(Bloom),
    /// Too many terms to summarise within the size cap: any term may be present.
    Everything,
}

/// Bit count, hash count and term count only: the words would flood a log line.
impl std::fmt::Debug for Bloom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bloom")
            .field("bits", &self.bit_len())
            .field("hashes", &self.hashes)
            .field("terms", &self.terms)
            .finish()
    }
}

/// A Bloom filter over term bytes: `hashes` probes by double hashing into `64 * words.len()` bits.
#[derive(Clone, PartialEq, Eq)]
pub struct Bloom {
    words: Vec<u64>,
    hashes: u32,
    /// Terms it was sized for (informational: the decision never reads it).
    terms: u32,
}

impl Bloom {
    fn bit_len(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    fn insert(&mut self, term: &[u8]) {
        let bits = self.bit_len();
        let (first, step) = hash_pair(term);
        for i in 0..u64::from(self.hashes) {
            let bit = first.wrapping_add(i.wrapping_mul(step)) % bits;
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    fn contains(&self, term: &[u8]) -> bool {
        let bits = self.bit_len();
        let (first, step) = hash_pair(term);
        for i in 0..u64::from(self.hashes) {
            let bit = first.wrapping_add(i.wrapping_mul(step)) % bits;
            if self.words[(bit / 64) as usize] & (1 << (bit % 64)) == 0 {
                return false;
            }
        }
        true
    }
}

/// Bits and hash count of a filter for `terms` terms at `fp_rate` (the textbook optimum:
/// m = -n ln p / ln² 2, k = m/n ln 2), bits rounded up to whole 64-bit words.
fn filter_shape(terms: usize, fp_rate: f64) -> (usize, u32) {
    let fp_rate = clamp_rate(fp_rate);
    let ln2 = std::f64::consts::LN_2;
    let bits = (terms as f64 * -fp_rate.ln() / (ln2 * ln2)).ceil().max(64.0);
    let words = (bits / 64.0).ceil() as usize;
    let real_bits = words as f64 * 64.0;
    let hashes = (real_bits / terms.max(1) as f64 * ln2).round().clamp(1.0, f64::from(MAX_HASHES)) as u32;
    (words, hashes)
}

fn clamp_rate(fp_rate: f64) -> f64 {
    if fp_rate.is_nan() {
        return DEFAULT_FALSE_POSITIVE_RATE;
    }
    fp_rate.clamp(MIN_FALSE_POSITIVE_RATE, MAX_FALSE_POSITIVE_RATE)
}

impl TermFilter {
    /// The filter of a collection whose distinct analyzed terms are `terms`, sized for their
    /// number at `fp_rate`; [`TermFilter::Everything`] when that exceeds `max_bytes`.
    /// (Repeated terms only make the filter larger than needed.)
    pub fn for_terms<T: AsRef<[u8]>>(terms: &[T], fp_rate: f64, max_bytes: usize) -> TermFilter {
        if terms.is_empty() {
            return TermFilter::Empty;
        }
        let (words, hashes) = filter_shape(terms.len(), fp_rate);
        if words.saturating_mul(8) > max_bytes.min(MAX_FILTER_BYTES) {
            return TermFilter::Everything;
        }
        let count = u32::try_from(terms.len()).unwrap_or(u32::MAX);
        let mut bloom = Bloom { words: vec![0; words], hashes, terms: count };
        for term in terms {
            bloom.insert(term.as_ref());
        }
        TermFilter::Bloom(bloom)
    }

    /// The most distinct terms [`TermFilter::for_terms`] summarises within `max_bytes` at
    /// `fp_rate`: a builder can stop collecting a collection's terms past it (it will be
    /// [`TermFilter::Everything`] anyway).
    pub fn max_terms(fp_rate: f64, max_bytes: usize) -> usize {
        let max_bytes = max_bytes.min(MAX_FILTER_BYTES);
        let ln2 = std::f64::consts::LN_2;
        let mut terms = ((max_bytes * 8) as f64 * ln2 * ln2 / -clamp_rate(fp_rate).ln()).floor() as usize;
        // The formula and the rounding in `filter_shape` may disagree by a term or two.
        while terms > 0 && filter_shape(terms, fp_rate).0 * 8 > max_bytes {
            terms -= 1;
        }
        terms
    }

    /// Whether `term` (analyzed exactly like indexed terms) may be present: `false` is a proof
    /// of absence.
    pub fn may_contain(&self, term: &str) -> bool {
        match self {
            TermFilter::Empty => false,
            TermFilter::Everything => true,
            TermFilter::Bloom(bloom) => bloom.contains(term.as_bytes()),
        }
    }

    /// Bytes of filter data (0 for [`TermFilter::Empty`] and [`TermFilter::Everything`]).
    pub fn filter_bytes(&self) -> usize {
        match self {
            TermFilter::Bloom(bloom) => bloom.words.len() * 8,
            TermFilter::Empty | TermFilter::Everything => 0,
        }
    }
}

/// The query, reduced to what a term summary can decide: analyzed terms (the exact bytes the
/// index holds: stemmed, lower-cased) combined with AND and OR. Everything else is
/// [`RoutingQuery::Anything`]. Built on the index side from the parsed query (the only place
/// that knows the query syntax and the analysis), so it matches the search exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingQuery {
    /// The summary cannot reason about this part (match-all, ranges, prefixes, fuzzy, regexes,
    /// boosts, other fields, an unparsable query): it may match any document.
    Anything,
    /// Matches no document anywhere (for example a query that analyzes to no term).
    Nothing,
    /// Matches only documents containing this analyzed term.
    Term(String),
    /// Matches only documents matching every part (required terms, `+a +b`, `a AND b`, a phrase).
    All(Vec<RoutingQuery>),
    /// Matches only documents matching at least one part (the default OR of `a b`).
    Any(Vec<RoutingQuery>),
}

impl RoutingQuery {
    /// OR semantics (the parser's default): a document matches when it holds any of `terms`.
    pub fn any_of<I: IntoIterator<Item = S>, S: Into<String>>(terms: I) -> RoutingQuery {
        RoutingQuery::Any(terms.into_iter().map(|t| RoutingQuery::Term(t.into())).collect())
    }

    /// Required terms (`+a +b`, `a AND b`): a document matches only when it holds all of `terms`.
    pub fn all_of<I: IntoIterator<Item = S>, S: Into<String>>(terms: I) -> RoutingQuery {
        RoutingQuery::All(terms.into_iter().map(|t| RoutingQuery::Term(t.into())).collect())
    }

    /// Whether a collection whose terms are `filter` may hold a matching document: OR needs one
    /// part that may match, AND is skipped as soon as one part surely cannot.
    pub fn may_match(&self, filter: &TermFilter) -> bool {
        match self {
            RoutingQuery::Anything => true,
            RoutingQuery::Nothing => false,
            RoutingQuery::Term(term) => filter.may_contain(term),
            RoutingQuery::All(parts) => parts.iter().all(|part| part.may_match(filter)),
            RoutingQuery::Any(parts) => parts.iter().any(|part| part.may_match(filter)),
        }
    }
}

/// The term summary of one node's index at one generation: a filter per collection holding live
/// documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    generation: u64,
    collections: BTreeMap<String, Summarised>,
    /// Some collections were left out to stay within [`MAX_COLLECTIONS`]: an unlisted collection
    /// may then hold anything.
    overflow: bool,
}

/// One collection of a summary: the analyzer its terms went through, and their filter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summarised {
    analyzer: String,
    filter: TermFilter,
}

impl NodeSummary {
    /// The summary of generation `generation` with one filter per collection that has live
    /// documents, every collection analyzed by [`DEFAULT_ANALYZER`]. See
    /// [`NodeSummary::with_analyzers`].
    pub fn new(generation: u64, collections: impl IntoIterator<Item = (String, TermFilter)>) -> NodeSummary {
        let collections = collections.into_iter().map(|(name, filter)| (name, DEFAULT_ANALYZER.to_owned(), filter));
        NodeSummary::with_analyzers(generation, collections)
    }

    /// The summary of generation `generation` with, per collection that has live documents, the
    /// name of the analyzer its terms went through and their filter. Bounded: past
    /// [`MAX_COLLECTIONS`] collections (or for a name past its length cap) the rest are left out
    /// (and the summary says so); the largest filters become [`TermFilter::Everything`] until
    /// their sum fits in [`MAX_NODE_FILTER_BYTES`].
    pub fn with_analyzers(
        generation: u64,
        collections: impl IntoIterator<Item = (String, String, TermFilter)>,
    ) -> NodeSummary {
        let mut kept = BTreeMap::new();
        let mut overflow = false;
        for (name, analyzer, filter) in collections {
            if kept.len() >= MAX_COLLECTIONS || name.len() > MAX_NAME_BYTES || analyzer.len() > MAX_ANALYZER_BYTES {
                overflow = true;
                continue;
            }
            kept.insert(name, Summarised { analyzer, filter });
        }
        let mut total: usize = kept.values().map(|c| c.filter.filter_bytes()).sum();
        while total > MAX_NODE_FILTER_BYTES {
            let Some((_, largest)) = kept.iter_mut().max_by_key(|(_, c)| c.filter.filter_bytes()) else { break };
            total -= largest.filter.filter_bytes();
            largest.filter = TermFilter::Everything;
        }
        NodeSummary { generation, collections: kept, overflow }
    }

    /// The index generation this summary describes (and only that one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The filter of `collection`, if listed.
    pub fn collection(&self, collection: &str) -> Option<&TermFilter> {
        self.collections.get(collection).map(|c| &c.filter)
    }

    /// The analyzer the terms of `collection` went through, if listed.
    pub fn analyzer(&self, collection: &str) -> Option<&str> {
        self.collections.get(collection).map(|c| c.analyzer.as_str())
    }

    /// The distinct analyzers of the listed collections, sorted.
    pub fn analyzers(&self) -> std::collections::BTreeSet<&str> {
        self.collections.values().map(|c| c.analyzer.as_str()).collect()
    }

    /// The listed collections and their filters, sorted by name.
    pub fn collections(&self) -> impl Iterator<Item = (&str, &TermFilter)> {
        self.collections.iter().map(|(name, c)| (name.as_str(), &c.filter))
    }

    /// [`NodeSummary::may_match_routed`] with one routing query for every analyzer: right only
    /// when `query` was built by the analysis of every collection asked (tests, and indexes of
    /// one analyzer).
    pub fn may_match(&self, collections: &[String], query: &RoutingQuery) -> bool {
        self.may_match_routed(collections, |_| Some(query))
    }

    /// The routing decision: may a search restricted to `collections` (empty: all) find a
    /// document on this node at [`NodeSummary::generation`]? `query_for(analyzer)` is the query
    /// reduced by that analyzer, `None` when the caller cannot analyze it that way: such a
    /// collection may match anything. `false` means the node can be skipped (`skipped:
    /// no_match`). A collection the summary does not list holds no live document (unless the
    /// summary overflowed).
    pub fn may_match_routed<'q>(
        &self,
        collections: &[String],
        query_for: impl Fn(&str) -> Option<&'q RoutingQuery>,
    ) -> bool {
        let may = |c: &Summarised| query_for(&c.analyzer).is_none_or(|query| query.may_match(&c.filter));
        if collections.is_empty() {
            return self.overflow || self.collections.values().any(may);
        }
        for name in collections {
            let may = match self.collections.get(name) {
                Some(collection) => may(collection),
                None => self.overflow,
            };
            if may {
                return true;
            }
        }
        false
    }

    /// The summary in the stable byte encoding of [`ENCODING_VERSION`] (little-endian):
    /// magic `RMTS`, version u8, generation u64, flags u8 (bit 0: overflow), collection count
    /// u32, then per collection: name length u16, name (UTF-8), analyzer name length u8,
    /// analyzer name (UTF-8), kind u8 (0 empty, 1 Bloom,
    /// 2 everything), and for a Bloom filter: hash count u8, term count u32, word count u32,
    /// the words (u64 each). Hash: FNV-1a 64 of the term bytes, two splitmix64 finalisers, double
    /// hashing modulo the bit count.
    pub fn encode(&self) -> Vec<u8> {
        let filter_bytes: usize = self.collections.values().map(|c| c.filter.filter_bytes() + c.analyzer.len()).sum();
        let mut out = Vec::with_capacity(18 + filter_bytes + self.collections.len() * 32);
        out.extend_from_slice(&MAGIC);
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.push(if self.overflow { FLAG_OVERFLOW } else { 0 });
        let count = u32::try_from(self.collections.len()).expect("at most MAX_COLLECTIONS collections");
        out.extend_from_slice(&count.to_le_bytes());
        for (name, Summarised { analyzer, filter }) in &self.collections {
            let len = u16::try_from(name.len()).expect("names longer than MAX_NAME_BYTES are never kept");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(
                u8::try_from(analyzer.len()).expect("analyzer names longer than MAX_ANALYZER_BYTES are never kept"),
            );
            out.extend_from_slice(analyzer.as_bytes());
            match filter {
                TermFilter::Empty => out.push(KIND_EMPTY),
                TermFilter::Everything => out.push(KIND_EVERYTHING),
                TermFilter::Bloom(bloom) => {
                    out.push(KIND_BLOOM);
                    out.push(u8::try_from(bloom.hashes).expect("at most MAX_HASHES hashes"));
                    out.extend_from_slice(&bloom.terms.to_le_bytes());
                    let words = u32::try_from(bloom.words.len()).expect("at most MAX_FILTER_BYTES / 8 words");
                    out.extend_from_slice(&words.to_le_bytes());
                    for word in &bloom.words {
                        out.extend_from_slice(&word.to_le_bytes());
                    }
                }
            }
        }
        out
    }

    /// Reads [`NodeSummary::encode`]'s bytes, refusing another version, trailing bytes, and
    /// anything past the size caps (the bytes come from the network).
    pub fn decode(bytes: &[u8]) -> Result<NodeSummary, SummaryError> {
        let mut reader = Reader { bytes };
        if reader.take(4, "magic")? != MAGIC {
            return Err(SummaryError::BadMagic);
        }
        let version = reader.u8("version")?;
        if version != ENCODING_VERSION {
            return Err(SummaryError::UnsupportedVersion { found: version, supported: ENCODING_VERSION });
        }
        let generation = reader.u64("generation")?;
        let flags = reader.u8("flags")?;
        if flags & !FLAG_OVERFLOW != 0 {
            return Err(SummaryError::Malformed(format!("unknown flags {flags:#04x}")));
        }
        let count = reader.u32("collection count")? as usize;
        if count > MAX_COLLECTIONS {
            return Err(SummaryError::Malformed(format!("{count} collections, more than {MAX_COLLECTIONS}")));
        }
        let mut collections = BTreeMap::new();
        let mut total_filter_bytes = 0usize;
        for _ in 0..count {
            let len = usize::from(reader.u16("collection name length")?);
            if len > MAX_NAME_BYTES {
                return Err(SummaryError::Malformed(format!("collection name of {len} bytes")));
            }
            let name = std::str::from_utf8(reader.take(len, "collection name")?)
                .map_err(|_| SummaryError::Malformed("collection name is not UTF-8".to_owned()))?
                .to_owned();
            let len = usize::from(reader.u8("analyzer name length")?);
            if len > MAX_ANALYZER_BYTES {
                return Err(SummaryError::Malformed(format!("analyzer name of {len} bytes")));
            }
            let analyzer = std::str::from_utf8(reader.take(len, "analyzer name")?)
                .map_err(|_| SummaryError::Malformed("analyzer name is not UTF-8".to_owned()))?
                .to_owned();
            let filter = match reader.u8("filter kind")? {
                KIND_EMPTY => TermFilter::Empty,
                KIND_EVERYTHING => TermFilter::Everything,
                KIND_BLOOM => {
                    let hashes = u32::from(reader.u8("hash count")?);
                    if hashes == 0 || hashes > MAX_HASHES {
                        return Err(SummaryError::Malformed(format!("{hashes} hashes, expected 1 to {MAX_HASHES}")));
                    }
                    let terms = reader.u32("term count")?;
                    let words = reader.u32("word count")? as usize;
                    if words == 0 || words * 8 > MAX_FILTER_BYTES {
                        return Err(SummaryError::Malformed(format!(
                            "filter of {words} words, expected 1 to {}",
                            MAX_FILTER_BYTES / 8
                        )));
                    }
                    total_filter_bytes += words * 8;
                    if total_filter_bytes > MAX_NODE_FILTER_BYTES {
                        return Err(SummaryError::Malformed(format!(
                            "filters add up to more than {MAX_NODE_FILTER_BYTES} bytes"
                        )));
                    }
                    let data = reader.take(words * 8, "filter words")?;
                    let words = data
                        .chunks_exact(8)
                        .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("chunks of exactly 8 bytes")))
                        .collect();
                    TermFilter::Bloom(Bloom { words, hashes, terms })
                }
                other => return Err(SummaryError::Malformed(format!("unknown filter kind {other}"))),
            };
            if collections.insert(name, Summarised { analyzer, filter }).is_some() {
                return Err(SummaryError::Malformed("a collection is listed twice".to_owned()));
            }
        }
        if !reader.bytes.is_empty() {
            return Err(SummaryError::Malformed(format!("{} bytes after the summary", reader.bytes.len())));
        }
        Ok(NodeSummary { generation, collections, overflow: flags & FLAG_OVERFLOW != 0 })
    }
}

/// A cursor over untrusted bytes: every read checks the length first.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], SummaryError> {
        if self.bytes.len() < len {
            return Err(SummaryError::Truncated { what });
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, SummaryError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, SummaryError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, SummaryError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, SummaryError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
}

/// FNV-1a 64: stable across builds and platforms (part of the encoding version).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The splitmix64 finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// First probe and (odd) step of the double hashing.
fn hash_pair(term: &[u8]) -> (u64, u64) {
    let hash = fnv1a(term);
    (mix(hash), mix(hash ^ 0x9e37_79b9_7f4a_7c15) | 1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn terms(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn bloom(words: &[&str]) -> TermFilter {
        TermFilter::for_terms(words, DEFAULT_FALSE_POSITIVE_RATE, MAX_FILTER_BYTES)
    }

    fn sample() -> NodeSummary {
        NodeSummary::new(
            7,
            [
                ("papers".to_owned(), bloom(&["transform", "attent", "model"])),
                ("notes".to_owned(), bloom(&["garden", "tomato"])),
                ("blank".to_owned(), TermFilter::Empty),
                ("huge".to_owned(), TermFilter::Everything),
            ],
        )
    }

    #[test]
    fn hash_is_pinned_by_the_encoding_version() {
        // Changing these values changes which bits every summary sets: bump ENCODING_VERSION.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash_pair(b"attent"), hash_pair(b"attent"));
        let encoded = NodeSummary::new(1, [("c".to_owned(), bloom(&["x"]))]).encode();
        assert_eq!(encoded[..5], *b"RMTS\x02");
    }

    #[test]
    fn or_queries_are_skipped_only_when_no_term_may_be_present() {
        let filter = bloom(&["transform", "attent"]);
        assert!(RoutingQuery::any_of(["attent", "zebra"]).may_match(&filter));
        assert!(!RoutingQuery::any_of(["zebra", "giraff"]).may_match(&filter));
        assert!(!RoutingQuery::any_of(Vec::<String>::new()).may_match(&filter), "no alternative at all");
    }

    #[test]
    fn required_terms_are_skipped_when_any_is_surely_absent() {
        let filter = bloom(&["transform", "attent"]);
        assert!(RoutingQuery::all_of(["transform", "attent"]).may_match(&filter));
        assert!(!RoutingQuery::all_of(["transform", "zebra"]).may_match(&filter));
        let nested = RoutingQuery::All(vec![
            RoutingQuery::Term("transform".into()),
            RoutingQuery::Any(vec![RoutingQuery::Term("zebra".into()), RoutingQuery::Anything]),
        ]);
        assert!(nested.may_match(&filter), "an unknown alternative may match");
        assert!(!RoutingQuery::Nothing.may_match(&TermFilter::Everything));
        assert!(RoutingQuery::Anything.may_match(&TermFilter::Empty), "match-all matches term-less documents");
        assert!(!RoutingQuery::Term("x".into()).may_match(&TermFilter::Empty));
        assert!(RoutingQuery::Term("x".into()).may_match(&TermFilter::Everything));
    }

    #[test]
    fn node_decision_covers_the_asked_collections_only() {
        let summary = sample();
        let q = |t: &str| RoutingQuery::Term(t.to_owned());
        let names = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert!(summary.may_match(&[], &q("tomato")), "all collections");
        assert!(summary.may_match(&[], &q("zebra")), "the everything filter may hold it");
        assert!(summary.may_match(&names(&["notes"]), &q("tomato")));
        assert!(!summary.may_match(&names(&["papers"]), &q("tomato")));
        assert!(!summary.may_match(&names(&["papers", "blank"]), &q("tomato")));
        assert!(!summary.may_match(&names(&["absent"]), &RoutingQuery::Anything), "no document there");
        assert!(summary.may_match(&names(&["blank"]), &RoutingQuery::Anything));
        let empty = NodeSummary::new(3, []);
        assert!(!empty.may_match(&[], &RoutingQuery::Anything), "an empty index matches nothing");
    }

    #[test]
    fn too_many_collections_overflow_and_then_unlisted_ones_may_match() {
        let many = (0..MAX_COLLECTIONS + 5).map(|i| (format!("c{i:05}"), TermFilter::Empty));
        let summary = NodeSummary::new(1, many);
        assert_eq!(summary.collections().count(), MAX_COLLECTIONS);
        assert!(summary.may_match(&["zzz".to_owned()], &RoutingQuery::Term("x".into())));
        let decoded = NodeSummary::decode(&summary.encode()).expect("decode");
        assert_eq!(decoded, summary);
    }

    #[test]
    fn encoding_round_trips() {
        let summary = sample();
        let decoded = NodeSummary::decode(&summary.encode()).expect("decode");
        assert_eq!(decoded, summary);
        assert_eq!(decoded.generation(), 7);
        assert!(decoded.collection("papers").expect("listed").may_contain("attent"));
    }

    #[test]
    fn another_version_is_refused_clearly() {
        let mut bytes = sample().encode();
        bytes[4] = 1;
        let err = NodeSummary::decode(&bytes).expect_err("version 1 (no analyzer names)");
        assert_eq!(err, SummaryError::UnsupportedVersion { found: 1, supported: 2 });
        assert!(err.to_string().contains("version 1 is not supported"), "{err}");
        assert!(err.to_string().contains("always asked"), "says what happens meanwhile: {err}");
        let mut bytes = sample().encode();
        bytes[0] = b'X';
        assert_eq!(NodeSummary::decode(&bytes), Err(SummaryError::BadMagic));
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(NodeSummary::decode(&bytes[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(NodeSummary::decode(&longer), Err(SummaryError::Malformed(_))));
    }

    #[test]
    fn oversized_filters_are_refused_on_decode() {
        let mut bytes = NodeSummary::new(1, [("c".to_owned(), bloom(&["x"]))]).encode();
        // Header 18 bytes, name length 2 + name 1, analyzer length 1 + "en_stem" 7, kind 1,
        // hashes 1, terms 4: word count next.
        let at = 18 + 3 + 8 + 1 + 1 + 4;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(NodeSummary::decode(&bytes), Err(SummaryError::Malformed(_))), "{bytes:?}");
    }

    #[test]
    fn a_collection_beyond_the_size_cap_may_contain_anything() {
        let max = TermFilter::max_terms(DEFAULT_FALSE_POSITIVE_RATE, MAX_FILTER_BYTES);
        assert!((200_000..230_000).contains(&max), "about 9.6 bits per term in 256 KiB: {max}");
        let fits = TermFilter::for_terms(&terms("t", max), DEFAULT_FALSE_POSITIVE_RATE, MAX_FILTER_BYTES);
        assert!(matches!(fits, TermFilter::Bloom(_)));
        assert!(fits.filter_bytes() <= MAX_FILTER_BYTES);
        let over = TermFilter::for_terms(&terms("t", max + 1), DEFAULT_FALSE_POSITIVE_RATE, MAX_FILTER_BYTES);
        assert_eq!(over, TermFilter::Everything);
        assert!(over.may_contain("anything"));
        assert_eq!(TermFilter::for_terms(&terms("t", 1000), 0.01, 64), TermFilter::Everything, "a smaller cap");
    }

    #[test]
    fn a_node_over_its_total_cap_gives_up_its_largest_filters() {
        let big = TermFilter::for_terms(&terms("t", 150_000), DEFAULT_FALSE_POSITIVE_RATE, MAX_FILTER_BYTES);
        let small = bloom(&["x"]);
        let many = (0..6).map(|i| (format!("big{i}"), big.clone())).chain([("small".to_owned(), small.clone())]);
        let summary = NodeSummary::new(1, many);
        let total: usize = summary.collections().map(|(_, f)| f.filter_bytes()).sum();
        assert!(total <= MAX_NODE_FILTER_BYTES, "{total}");
        assert_eq!(summary.collection("small"), Some(&small));
        let everything = summary.collections().filter(|(_, f)| **f == TermFilter::Everything).count();
        assert!((1..6).contains(&everything), "{everything} of 6 given up");
        assert!(NodeSummary::decode(&summary.encode()).is_ok());
    }

    #[test]
    fn false_positive_rate_is_roughly_as_configured() {
        for (rate, low, high) in [(0.01, 0.003, 0.02), (0.05, 0.025, 0.08)] {
            let filter = TermFilter::for_terms(&terms("in", 10_000), rate, MAX_FILTER_BYTES);
            let probes = 100_000;
            let hits = (0..probes).filter(|i| filter.may_contain(&format!("out{i}"))).count();
            let measured = hits as f64 / probes as f64;
            assert!((low..high).contains(&measured), "target {rate}: measured {measured}");
        }
    }

    #[test]
    fn each_collection_is_decided_by_the_query_of_its_analyzer() {
        let summary = NodeSummary::with_analyzers(
            4,
            [
                ("en".to_owned(), "en_stem".to_owned(), bloom(&["cat"])),
                ("fr".to_owned(), "fr_stem".to_owned(), bloom(&["chat"])),
            ],
        );
        assert_eq!(summary.analyzer("fr"), Some("fr_stem"));
        assert_eq!(summary.analyzers().into_iter().collect::<Vec<_>>(), ["en_stem", "fr_stem"]);
        let en = RoutingQuery::Term("dog".into());
        let fr = RoutingQuery::Term("chien".into());
        let both = |analyzer: &str| match analyzer {
            "en_stem" => Some(&en),
            "fr_stem" => Some(&fr),
            _ => None,
        };
        assert!(!summary.may_match_routed(&[], both), "neither collection holds its query's term");
        let fr_unknown = |analyzer: &str| (analyzer == "en_stem").then_some(&en);
        assert!(summary.may_match_routed(&[], fr_unknown), "an analyzer the router cannot run: ask");
        assert!(!summary.may_match_routed(&["en".to_owned()], fr_unknown), "only the asked collection counts");
        let decoded = NodeSummary::decode(&summary.encode()).expect("round trip");
        assert_eq!(decoded, summary);
        let long = "x".repeat(MAX_ANALYZER_BYTES + 1);
        let over = NodeSummary::with_analyzers(1, [("c".to_owned(), long, TermFilter::Empty)]);
        assert!(over.collection("c").is_none());
        assert!(over.may_match(&["c".to_owned()], &RoutingQuery::Nothing), "left out, so it may hold anything");
    }

    proptest! {
        #[test]
        fn a_filter_never_forgets_a_term(words in proptest::collection::btree_set("[a-z0-9]{1,12}", 1..300)) {
            let words: Vec<String> = words.into_iter().collect();
            let filter = TermFilter::for_terms(&words, DEFAULT_FALSE_POSITIVE_RATE, MAX_FILTER_BYTES);
            let decoded = NodeSummary::decode(&NodeSummary::new(9, [("c".to_owned(), filter)]).encode())
                .expect("round trip");
            let filter = decoded.collection("c").expect("listed");
            for word in &words {
                prop_assert!(filter.may_contain(word), "{word} forgotten");
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = NodeSummary::decode(&bytes);
            let mut valid = sample().encode();
            let at = bytes.len() % valid.len();
            valid[at] ^= bytes.first().copied().unwrap_or(1);
            let _ = NodeSummary::decode(&valid);
        }
    }
}
