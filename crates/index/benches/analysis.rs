//! Cost of analysing text with a profile's analyzer, with the process's stem memo (what indexing,
//! query parsing and snippets use) against the same chain stemming every word afresh, side by
//! side in one run: rounds alternate between the two over the same documents, and the run
//! checks first that both give the same terms.
//!
//! The text is the vaswani (NPL) collection's documents when `../shared` is beside the
//! repository, else a generated corpus whose words follow Zipf's law.
//!
//! Run: `cargo bench -p ragmesh-index --bench analysis` (optionally `-- ROUNDS`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ragmesh_index::Profile;
use ragmesh_index::analysis::{all_terms, text_analyzer_without_stem_memo};
use tantivy::tokenizer::{TextAnalyzer, TokenStream as _};

const DEFAULT_ROUNDS: usize = 7;

fn main() {
    let rounds = std::env::args().skip(1).find_map(|arg| arg.parse::<usize>().ok()).unwrap_or(DEFAULT_ROUNDS);
    let (source, documents) = corpus();
    let words: usize = documents.iter().map(|d| d.split_whitespace().count()).sum();
    println!("corpus: {source}, {} documents, {words} words; {rounds} rounds per variant", documents.len());
    for profile in [Profile::default(), Profile::from_name("stem-porter_stop-english").expect("a known profile")] {
        let mut memo = profile.text_analyzer();
        let mut fresh = text_analyzer_without_stem_memo(&profile);
        for document in documents.iter().take(500) {
            assert_eq!(all_terms(&mut memo, document), all_terms(&mut fresh, document), "the memo changes no term");
        }
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let mut tokens = 0;
        for _ in 0..rounds {
            let (took, count) = analyse_all(&mut memo, &documents);
            with.push(took);
            without.push(analyse_all(&mut fresh, &documents).0);
            tokens = count;
        }
        let per_token = |d: Duration| d.as_nanos() as f64 / tokens as f64;
        let (with, without) = (median(with), median(without));
        println!(
            "{:<26} {tokens} tokens: with the memo {:>6.1} ns/token, stemming each {:>6.1} ns/token: {:.2}x",
            profile.name(),
            per_token(with),
            per_token(without),
            with.as_secs_f64() / without.as_secs_f64()
        );
    }
}

/// Time to analyse every document, and the tokens seen.
fn analyse_all(analyzer: &mut TextAnalyzer, documents: &[String]) -> (Duration, usize) {
    let started = Instant::now();
    let mut tokens = 0;
    for document in documents {
        let mut stream = analyzer.token_stream(document);
        while stream.advance() {
            black_box(&stream.token().text);
            tokens += 1;
        }
    }
    (started.elapsed(), tokens)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The vaswani documents, else 11,000 generated ones of 40 to 80 words.
fn corpus() -> (&'static str, Vec<String>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/vaswani/doc-text.trec");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return ("vaswani (NPL)", text.split("</DOC>").map(str::to_owned).filter(|d| !d.trim().is_empty()).collect());
    }
    // Zipf over 20,000 made-up words with English-like endings, from a fixed seed.
    let endings = ["", "s", "ed", "ing", "ation", "ly", "ness", "ies", "ement", "ational"];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vocabulary: Vec<String> = (0..20_000u64)
        .map(|i| {
            let stem: String = (0..3 + i % 6).map(|j| (b'a' + ((i * 7 + j * 13) % 26) as u8) as char).collect();
            format!("{stem}{}", endings[(i % endings.len() as u64) as usize])
        })
        .collect();
    // Cumulative Zipf weights: a uniform draw's place among them is a word's rank.
    let cumulative: Vec<f64> = (1..=vocabulary.len())
        .scan(0.0, |sum, rank| {
            *sum += 1.0 / rank as f64;
            Some(*sum)
        })
        .collect();
    let total = cumulative[cumulative.len() - 1];
    let documents = (0..11_000)
        .map(|_| {
            let length = 40 + next() % 41;
            let words: Vec<&str> = (0..length)
                .map(|_| {
                    let draw = (next() % 1_000_000) as f64 / 1_000_000.0 * total;
                    let rank = cumulative.partition_point(|&c| c < draw).min(vocabulary.len() - 1);
                    vocabulary[rank].as_str()
                })
                .collect();
            words.join(" ")
        })
        .collect();
    ("generated (Zipf)", documents)
}
